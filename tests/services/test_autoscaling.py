"""device gpu on an autoscaling cluster whose head has no GPU (services/autoscaling.py: Ray's fake multi-node
provider, a `gpu_worker` node type with 0 to 1 nodes): an extraction job and a training job each make the autoscaler
add a GPU node, their model actors / Ray Train worker run on it, and the node goes after the idle timeout.

Each test prints its timeline (pytest -s shows it): seconds from the job's start to the GPU node registering with
the GCS, the first actor on it starting, the job ending and the node leaving the GCS."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.autoscaling import GPU_TYPE, IDLE_TIMEOUT_MIN, autoscaling_cluster  # noqa: F401 - the fixture

pytestmark = pytest.mark.cluster
PROJECT = Path(__file__).resolve().parents[2]
JOB_TIMEOUT = 420.0
RELEASE_TIMEOUT = IDLE_TIMEOUT_MIN * 60 + 90  # idle timeout, the autoscaler's next update and the GCS noticing


def run_job(cluster, script: str, *args: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """`python jobs/<script> ARGS` as a driver attached to the cluster; (process, start, end) in epoch seconds."""
    start = time.time()
    job = subprocess.run([sys.executable, str(PROJECT / "jobs" / script), *args], cwd=PROJECT, env=cluster.env(),
                         capture_output=True, text=True, timeout=JOB_TIMEOUT)
    return job, start, time.time()


def timeline(cluster, start: float, end: float, actor: str, name: str) -> dict:
    """Wait until no GPU node is alive, then read the GCS: the GPU nodes that lived during the job, the ``actor``
    actors started by then, and the events in seconds after ``start`` (printed)."""
    cluster.wait_nodes(lambda ns: not any(n["node_type"] == GPU_TYPE for n in ns), RELEASE_TIMEOUT,
                       f"the {GPU_TYPE} node released after the {name} job")
    released_seen = time.time()
    state = cluster.state()
    gpu_nodes = [n for n in state["nodes"] if n["node_type"] == GPU_TYPE and n["start_ms"] / 1e3 >= start - 1]
    actors = [a for a in state["actors"] if actor in a["repr_name"] + a["class_name"]
              and a["start_ms"] / 1e3 >= start - 1]
    events = {
        "job submitted": start,
        "GPU node up (registered)": min((n["start_ms"] / 1e3 for n in gpu_nodes), default=float("nan")),
        f"first {actor} started": min((a["start_ms"] / 1e3 for a in actors), default=float("nan")),
        "job done": end,
        "GPU node released (dead in the GCS)": max((n["end_ms"] / 1e3 for n in gpu_nodes), default=float("nan")),
        "release seen by the test": released_seen,
    }
    print(f"\n{name} timeline (s after submission; idle timeout {IDLE_TIMEOUT_MIN * 60:.0f} s; {len(gpu_nodes)} "
          f"{GPU_TYPE} node(s) launched, {len(actors)} {actor} actor(s)):")
    for what, t in events.items():
        print(f"  {t - start:7.1f}  {what}")
    return {"gpu_nodes": gpu_nodes, "actors": actors, "events": events, "state": state}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from synthetic import write_corpus

    return write_corpus(tmp_path_factory.mktemp("gpu_corpus") / "audio", n_speakers=4, per_class=2)


@pytest.fixture(scope="module")
def gpu_extraction(autoscaling_cluster, corpus, tiny_model_dir, tmp_path_factory):  # noqa: F811
    """jobs/extract.py --device gpu on the cluster (float32: the fake GPU's model runs on the CPU)."""
    uri = str(tmp_path_factory.mktemp("gpu_store") / "store")
    assert not any(n["node_type"] == GPU_TYPE for n in autoscaling_cluster.alive_nodes())  # none before the job
    job, start, end = run_job(autoscaling_cluster, "extract.py", "--corpus", "csv", "--csv", str(corpus),
                              "--data-root", str(corpus.parent), "--model", str(tiny_model_dir), "--model-key", "tiny",
                              "--store", uri, "--conditions", "clean", "--device", "gpu", "--dtype", "float32",
                              "--batch-size", "4")
    assert job.returncode == 0, f"extraction failed:\n{job.stdout[-3000:]}\n{job.stderr[-3000:]}"
    return {"uri": uri, "job": job, **timeline(autoscaling_cluster, start, end, "EmbedStage", "extraction")}


def test_extraction_with_device_gpu_gets_a_gpu_node_from_the_autoscaler(gpu_extraction, corpus):
    from ray_ser.corpora import build_manifest
    from ray_ser.store.core import Store

    run = gpu_extraction
    assert ("waiting for the autoscaler to add a node with {GPU: 1} (node type gpu_worker) for the model actors "
            "(extract.device gpu)") in run["job"].stdout
    gpu_ids = {n["node_id"] for n in run["gpu_nodes"]}
    assert gpu_ids and all(n["resources"].get("GPU") == 1 and not n["is_head"] for n in run["gpu_nodes"])
    assert run["actors"] and {a["node_id"] for a in run["actors"]} <= gpu_ids  # every model actor ran on a GPU node
    ev = run["events"]
    assert ev["job submitted"] < ev["GPU node up (registered)"] <= ev["first EmbedStage started"] < ev["job done"]
    assert ev["job done"] <= ev["GPU node released (dead in the GCS)"]
    # every utterance once, with every layer; the table records the device and the dtype the run used
    store = Store(run["uri"])
    rows = store.embeddings("tiny").to_arrow().select(["utt_id", "condition", "layer"])
    keys = list(zip(*(rows.column(k).to_pylist() for k in rows.column_names)))
    utts = build_manifest("csv", corpus.parent, csv=str(corpus)).column("utt_id")
    assert len(keys) == len(set(keys)) and set(keys) == {(u, "clean", layer) for u in utts for layer in range(3)}
    options = store.extraction_meta("tiny")["options"]
    assert (options["device"], options["dtype"]) == ("gpu", "float32")


def test_training_with_device_gpu_gets_a_gpu_node_from_the_autoscaler(autoscaling_cluster, gpu_extraction,  # noqa: F811
                                                                      tmp_path):
    out = tmp_path / "run"
    job, start, end = run_job(autoscaling_cluster, "train.py", "--store", gpu_extraction["uri"], "--model", "tiny",
                              "--layer", "1", "--arch", "mlp", "--mlp-hidden", "16", "--epochs", "2", "--batch-size",
                              "8", "--cpus-per-worker", "0.5", "--folds", "0", "--device", "gpu", "--out", str(out),
                              "--no-test-report")
    assert job.returncode == 0, f"training failed:\n{job.stdout[-3000:]}\n{job.stderr[-3000:]}"
    run = timeline(autoscaling_cluster, start, end, "RayTrainWorker", "training")
    assert ("waiting for the autoscaler to add a node with {CPU: 0.5, GPU: 1} (node type gpu_worker) for each Ray "
            "Train worker (train.device gpu)") in job.stdout
    gpu_ids = {n["node_id"] for n in run["gpu_nodes"]}
    assert gpu_ids and run["actors"] and {a["node_id"] for a in run["actors"]} <= gpu_ids
    ev = run["events"]
    assert ev["job submitted"] < ev["GPU node up (registered)"] <= ev["first RayTrainWorker started"] < ev["job done"]
    config = json.loads((out / "fold_0" / "best" / "config.json").read_text())
    assert config["train"]["device"] == "gpu" and (out / "fold_0" / "best" / "model.pt").is_file()
