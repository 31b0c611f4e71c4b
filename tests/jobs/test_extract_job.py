"""jobs/extract.py as users run it: submitted with `ray job submit` to a `ray start --head` cluster, and killed (both
write modes: the driver commits, or the model actors write fragments). One cluster serves the whole module."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_extract import CONDS, assert_exactly_once, direct_pooled, store_rows

from ray_ser.corpora import build_manifest
from ray_ser.store.core import Store, read_pooled
from ray_ser.store.names import table_name

pytestmark = pytest.mark.cluster
PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The cluster uses Ray's default token auth; the CLI reads the token `ray start` wrote. PATH starts with
    this interpreter's bin, as in an activated venv, so the job's `python` is the one with ray_ser's deps."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def ray_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = cli_env(**(env or {}))
    return subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head --block` in its own process group: teardown stops this cluster and no other Ray."""
    port, dash, agent, client = free_port(), free_port(), free_port(), free_port()
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         # the job agent's HTTP port (default 52365) and the client port (10001) are fixed: another Ray cluster on
         # this machine would hold them and every `ray job submit` would get "No available agent"
         f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
         "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=cli_env(RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0"),  # stop at once: no 30 s drain of a dying GCS
    )
    info = {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}"}
    try:
        deadline = time.time() + 180
        while ray_cli("job", "list", "--address", info["dashboard"], timeout=60).returncode != 0:
            if head.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray start --head did not come up; see {log.name}")
            time.sleep(2)
        yield info
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start` records its address here; drop ours
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


def submit(*args: str, address: str, attempts: int = 20) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the fresh cluster's job agent is still starting."""
    for _ in range(attempts):
        job = ray_cli("job", "submit", "--address", address, *args, timeout=600)
        if "No available agent" not in job.stdout + job.stderr:
            return job
        time.sleep(3)
    return job


def test_ray_job_submit_fills_the_store(cluster, corpora, tiny_model_dir, tmp_path):
    uri = str(tmp_path / "store")
    job = submit(
        "--working-dir", str(PROJECT), "--",
        "python", "jobs/extract.py", "--corpus", "emodb", "--data-root", str(corpora), "--limit", "4",
        "--model", str(tiny_model_dir), "--model-key", "tiny", "--store", uri, "--conditions", ",".join(CONDS),
        "--batch-size", "2", address=cluster["dashboard"],
    )
    assert job.returncode == 0, f"job failed:\n{job.stdout[-4000:]}\n{job.stderr[-4000:]}"
    assert "succeeded" in job.stdout + job.stderr
    utts = build_manifest("emodb", corpora).spread(4)
    assert_exactly_once(store_rows(uri, "tiny"), utts.column("utt_id"), CONDS, num_layers=3)
    df = read_pooled(uri, "tiny", condition="25dB", layer=1)
    for row in df.iter_rows(named=True):
        import numpy as np

        want = direct_pooled(tiny_model_dir, row["utt_id"], row["path"], "25dB")[1]
        np.testing.assert_allclose(np.asarray(row["mean"]), want, atol=2e-4, rtol=1e-3)


def test_killed_driver_then_rerun_loses_and_duplicates_nothing(cluster, corpora, tiny_model_dir, tmp_path):
    killed_then_rerun(cluster, corpora, tiny_model_dir, tmp_path, ["clean", "25dB", "15dB", "5dB"])


def test_killed_fragment_writing_run_resumes_without_loss_or_duplicates(cluster, corpora, tiny_model_dir, tmp_path):
    """Write mode "fragments": the driver dies between commits, the actors mid-write; whole utterances only."""
    killed_at = killed_then_rerun(cluster, corpora, tiny_model_dir, tmp_path, ["clean", "5dB"],
                                  "--write-mode", "fragments")
    assert killed_at % 3 == 0


KILL_LIMIT = 24
"""Utterances of a killed run: the kill comes at its first committed rows, so more only lengthen the re-run."""


def killed_then_rerun(cluster, corpora, model_dir, tmp_path, conds: list[str], *flags: str) -> int:
    """Run jobs/extract.py on the cluster, SIGKILL its process group once the table has rows, re-run it to the end
    and check every (utterance, condition, layer) row is stored once; returns the rows the kill left."""
    uri = str(tmp_path / "store")
    cmd = [sys.executable, str(PROJECT / "jobs" / "extract.py"), "--corpus", "emodb", "--data-root", str(corpora),
           "--limit", str(KILL_LIMIT), "--model", str(model_dir), "--model-key", "tiny", "--store", uri,
           "--conditions", ",".join(conds), "--batch-size", "2", "--commit-seconds", "0", *flags]
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
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-run, between or during commits
    proc.wait()
    killed_at = Store(uri).open(name).count_rows()
    assert 0 < killed_at < KILL_LIMIT * len(conds) * 3

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    utts = build_manifest("emodb", corpora).spread(KILL_LIMIT)
    assert_exactly_once(store_rows(uri, "tiny"), utts.column("utt_id"), conds, num_layers=3)
    return killed_at
