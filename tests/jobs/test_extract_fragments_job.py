"""Write mode "fragments" under a kill: the job dies mid-run, the re-run leaves every row exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_extract import assert_exactly_once, store_rows
from test_extract_job import PROJECT, cluster  # noqa: F401  (a `ray start --head` cluster for this module)

from ray_ser.corpora import build_manifest
from ray_ser.store.core import Store
from ray_ser.store.names import table_name

pytestmark = pytest.mark.cluster


def test_killed_fragment_writing_run_resumes_without_loss_or_duplicates(cluster, corpora, tiny_model_dir, tmp_path):  # noqa: F811
    uri = str(tmp_path / "store")
    conds = ["clean", "5dB"]
    cmd = [sys.executable, str(PROJECT / "jobs" / "extract.py"), "--corpus", "emodb", "--data-root", str(corpora),
           "--limit", "60", "--model", str(tiny_model_dir), "--model-key", "tiny", "--store", uri,
           "--conditions", ",".join(conds), "--batch-size", "2", "--commit-seconds", "0", "--write-mode", "fragments"]
    env = {**os.environ, "RAY_ADDRESS": cluster["gcs"], "RAY_AUTH_MODE": "token"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    name = table_name("tiny")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        store = Store(uri) if Path(uri).exists() else None
        if store is not None and store.has(name) and store.open(name).count_rows() > 0:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the extraction finished before it could be killed: give it more work"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies between commits, actors mid-write
    proc.wait()
    killed_at = Store(uri).open(name).count_rows()
    assert 0 < killed_at < 60 * len(conds) * 3 and killed_at % 3 == 0  # whole utterances only

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    utts = build_manifest("emodb", corpora).spread(60)
    assert_exactly_once(store_rows(uri, "tiny"), utts.column("utt_id"), conds, num_layers=3)
