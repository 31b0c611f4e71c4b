"""``ray-ser run`` as a user sees it: a small pipeline (synthetic corpus, tiny model) whose console output stays
within a page, still names a planted bad file, ends with the summary, and leaves the detail in the run's log."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import yaml
from synthetic import CLASSES, write_corpus

LINE_BUDGET = 60


@pytest.fixture(scope="module")
def smoke_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    csv_path = write_corpus(tmp / "audio", n_speakers=4, per_class=3)
    (tmp / "audio" / "broken_take.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")  # a corrupt header
    with open(csv_path, "a", newline="") as fh:
        row = {"utt_id": "broken_take", "path": "broken_take.wav", "speaker": "s0", "gender": "male", "label": "calm",
               "n_raters": 10, **{f"p_{c}": p for c, p in zip(CLASSES, ("0.34", "0.33", "0.33"))}}
        csv.DictWriter(fh, fieldnames=list(row)).writerow(row)
    config = {
        "name": "smoke", "runs": str(tmp / "runs"),
        "data": {"corpora": ["csv"], "csv": str(csv_path), "data_root": str(tmp)},
        "store": {"uri": str(tmp / "store")},
        "extract": {"model": str(tiny_model_dir), "model_key": "tiny", "conditions": ["clean", "5dB"]},
        "analysis": {"mis": False, "probe": True, "probe_layers": "auto:2", "clusters": {"k": [4], "sample_frames": 2000}},
        "train": {"arch": "mlp", "mlp_hidden": 0, "auto_layers": 2, "epochs": 3, "patience": 3, "batch_size": 8,
                  "cpus_per_worker": 0.5, "spec_augment": False},
        "evaluate": {"n_boot": 20},
    }
    path = tmp / "smoke.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_SER_VERBOSE")}
    done = subprocess.run([sys.executable, "-m", "ray_ser.cli", "run", str(path)], env=env, capture_output=True,
                          text=True, timeout=1500)
    return done, tmp / "runs" / "smoke"


def test_console_stays_within_a_page(smoke_run):
    done, _ = smoke_run
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    lines = [line for line in out.splitlines() if line.strip()]
    print(f"console: {len(lines)} lines, {len(out)} characters\n{out}")
    assert len(lines) < LINE_BUDGET, out


def test_console_names_the_bad_file_and_ends_with_the_summary(smoke_run):
    done, _ = smoke_run
    out = done.stdout + done.stderr
    assert "broken_take" in out and "corrupt" in out.lower()
    assert "clean UAR, pooled over the outer folds" in out
    for stage in ("extract", "saliency", "frames", "train", "evaluate"):
        assert stage in out


def test_the_run_folder_keeps_the_log_and_the_resolved_config(smoke_run):
    done, run_dir = smoke_run
    log = (run_dir / "ray_ser.log").read_text(encoding="utf-8")
    assert len(log.splitlines()) > len((done.stdout + done.stderr).splitlines())
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["name"] == "smoke" and saved["train"]["epochs"] == 3 and saved["train"]["store"].endswith("store")
    assert (run_dir / "eval" / "metrics.parquet").is_file()
    from ray_ser.store.core import Store

    runs = Store(saved["store"]["uri"]).runs().to_arrow().to_pylist()
    assert [yaml.safe_load(r["config"])["name"] for r in runs] == ["smoke"]  # the extraction run records its config
