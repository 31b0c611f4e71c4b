"""ray_ser on a real two-node Ray cluster (tests/services/ray_cluster.py: a head and a worker node on this machine)
with the store on a real S3-compatible gateway: jobs go in with `ray job submit`, the storage options travel in
the config file only (no node has AWS_* variables), and a lost node or a second driver loses and duplicates nothing.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
from s3util import experiment, row_counts
from services.ray_cluster import ray_cli, submit

from ray_ser.storage import run_path
from ray_ser.store.core import Store

pytestmark = pytest.mark.cluster
PROJECT = Path(__file__).resolve().parents[2]
CONDS = ["clean", "5dB"]


def job(cluster, *args: str, wait: bool = True):
    """`ray job submit` of a ray_ser stage script from this checkout (``wait=False``: returns the job id)."""
    out = submit(cluster, *([] if wait else ["--no-wait"]), "--working-dir", str(PROJECT), "--", "python", *args)
    if wait:
        return out
    assert out.returncode == 0, out.stdout + out.stderr
    return next(w for w in (out.stdout + out.stderr).replace("'", " ").split() if w.startswith("raysubmit_"))


def job_status(cluster, job_id: str) -> str:
    """The job's state from the dashboard's REST API (what `ray job status` asks), with the token the CLI sends: a
    poll costs no `ray` process (about 1.4 s of CPU each, taken from the jobs it waits for on a 2-core machine)."""
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token")).read_text().strip()
    request = urllib.request.Request(f"{cluster.dashboard}/api/jobs/{job_id}",
                                     headers={"authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return str(json.load(r)["status"]).upper()  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    except (OSError, ValueError, KeyError):  # the dashboard busy or restarting: the caller polls again
        return "UNKNOWN"


def wait_job(cluster, job_id: str, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_status(cluster, job_id)
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            return state
        time.sleep(1)  # a poll is one HTTP request
    return "TIMEOUT"


def job_logs(cluster, job_id: str) -> str:
    out = ray_cli("job", "logs", "--address", cluster.dashboard, job_id, env=cluster.env(), timeout=60)
    return out.stdout + out.stderr


def tally(store: Store, utt_ids) -> dict[str, int]:
    """Expected, written, missing and duplicated (utterance, condition, layer) rows."""
    counts = row_counts(store)
    want = {(u, c, layer) for u in utt_ids for c in CONDS for layer in range(3)}
    return {"expected": len(want), "written": sum(counts.values()), "missing": len(want - set(counts)),
            "duplicated": sum(n - 1 for n in counts.values() if n > 1), "unexpected": len(set(counts) - want)}


@pytest.fixture(scope="module")
def setup(rgw, tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("twonode")
    config = experiment(tmp, rgw, tiny_model_dir, "twonode", store=rgw.uri("stores", "twonode"),
                        extract={"commit_seconds": 0, "batch_size": 2})
    return {"tmp": tmp, "config": str(config)}


@pytest.fixture(scope="module")
def extracted(two_node_cluster, rgw, setup):
    """The extraction job with its model actor pinned to the worker node (actors need the `worker` resource)."""
    done = job(two_node_cluster, "jobs/extract.py", "--config", setup["config"], "--write-mode", "fragments",
               "--pool-size", "1", "--actor-resources", json.dumps({"worker": 0.5}))
    return done


def test_extraction_runs_its_model_on_the_worker_node_and_writes_only_the_bucket(two_node_cluster, rgw, setup, extracted):
    assert extracted.returncode == 0, (extracted.stdout + extracted.stderr)[-5000:]
    store = Store(rgw.uri("stores", "twonode"), rgw.storage_options())
    counts = tally(store, store.manifest("synth").column("utt_id"))
    print("extraction on the worker node:", counts)
    assert counts["missing"] == counts["duplicated"] == counts["unexpected"] == 0
    actors = ray_cli("list", "actors", "--detail", "--format", "json", "--limit", "10000",
                     "--address", two_node_cluster.dashboard, env=two_node_cluster.env(), timeout=120)
    embed = [a for a in json.loads(actors.stdout) if "EmbedStage" in (a.get("class_name") or "")]
    assert embed and {a["node_id"] for a in embed} == {two_node_cluster.worker_node_id()}, embed
    for root in (two_node_cluster.head_temp, setup["tmp"]):  # no table, fragment or run folder on a node's disk
        assert not [p for p in Path(root).rglob("*.lance")], root
        assert not [p for p in Path(root).rglob("s3:*")], root


def test_a_killed_worker_node_then_a_rerun_leaves_every_row_once(two_node_cluster, rgw, setup, tmp_path):
    from synthetic import write_corpus

    write_corpus(tmp_path / "audio", n_speakers=6, per_class=5, seed=3)  # 90 utterances: time to kill it midway
    import yaml

    cfg = yaml.safe_load(Path(setup["config"]).read_text())
    cfg["data"]["csv"], cfg["data"]["data_root"] = str(tmp_path / "audio" / "synth.csv"), str(tmp_path)
    cfg["store"]["uri"] = uri = rgw.uri("stores", "killed")
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = ("jobs/extract.py", "--config", str(path), "--pool-size", "2")
    job_id = job(two_node_cluster, *args, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if row_counts(Store(uri, rgw.storage_options())):
                break
        except Exception:  # no table yet
            pass
        time.sleep(0.5)
    assert job_status(two_node_cluster, job_id) == "RUNNING", "finished before the node could be lost"
    two_node_cluster.kill_worker()
    two_node_cluster.wait_nodes(1)
    two_node_cluster.start_worker()  # a replacement node joins; the job goes on or stops with its reason
    state = wait_job(two_node_cluster, job_id)
    assert state in ("SUCCEEDED", "FAILED"), state
    if state == "FAILED":
        assert "Error" in job_logs(two_node_cluster, job_id)
    store = Store(uri, rgw.storage_options())
    first = tally(store, store.manifest("synth").column("utt_id"))
    rerun = job(two_node_cluster, *args)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    after = tally(store, store.manifest("synth").column("utt_id"))
    print(f"worker node killed: job {state}, then {first}; after the re-run {after}")
    assert after["missing"] == after["duplicated"] == after["unexpected"] == 0


def test_two_drivers_extracting_one_table_share_it_through_the_lease(two_node_cluster, rgw, setup):
    import yaml

    cfg = yaml.safe_load(Path(setup["config"]).read_text())
    cfg["store"]["uri"] = uri = rgw.uri("stores", "two-drivers")
    path = Path(setup["tmp"]) / "two-drivers.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ids = [job(two_node_cluster, "jobs/extract.py", "--config", str(path), "--wait-lease", "600", "--pool-size", "1",
               wait=False) for _ in range(2)]
    states = [wait_job(two_node_cluster, i) for i in ids]
    assert states == ["SUCCEEDED", "SUCCEEDED"], [job_logs(two_node_cluster, i)[-3000:] for i in ids]
    store = Store(uri, rgw.storage_options())
    counts = tally(store, store.manifest("synth").column("utt_id"))
    runs = store.runs().to_arrow().to_pylist()
    print("two drivers:", counts, [(r["extracted"], r["done_before"]) for r in runs])
    assert counts["missing"] == counts["duplicated"] == 0
    assert sorted(r["extracted"] for r in runs) == [0, 36 * len(CONDS)]  # one wrote it all, the other found it done


@pytest.fixture(scope="module")
def bucket_audio(two_node_cluster, rgw, setup, tmp_path_factory):
    """A corpus whose CSV and audio are only objects (the local copies deleted after the upload; speaker s1 in FLAC,
    one row whose object never arrives, one whose object is not audio), extracted by a job whose model actor runs on
    the worker node. The resume test trains and evaluates this store too: one training run serves both tests."""
    import shutil

    import fsspec
    import soundfile as sf
    import yaml
    from synthetic import write_corpus

    from ray_ser import storage

    tmp = tmp_path_factory.mktemp("bucket-audio")
    folder = tmp / "audio"
    local_csv = write_corpus(folder, n_speakers=4, per_class=2, seed=5)  # 24 utterances, relative paths
    text = local_csv.read_text()
    for wav in folder.glob("s1_*.wav"):  # speaker s1 in FLAC, the others in WAV
        samples, rate = sf.read(wav)
        sf.write(wav.with_suffix(".flac"), samples, rate, format="FLAC")
        wav.unlink()
        text = text.replace(wav.name, wav.with_suffix(".flac").name)
    # one row whose object never arrives, one whose object is not audio
    text += "s0_lost,lost.wav,s0,male,calm,10,0.80,0.10,0.10\ns1_junk,junk.flac,s1,female,sad,10,0.10,0.10,0.80\n"
    local_csv.write_text(text)
    (folder / "junk.flac").write_bytes(b"fLaC not really" * 40)
    prefix = rgw.uri("corpora", "bucket-audio")
    fs = fsspec.filesystem("s3", **storage.fsspec_kwargs(prefix, rgw.storage_options()))
    for f in folder.iterdir():
        fs.put_file(str(f), f"{prefix}/{f.name}")
    shutil.rmtree(folder)
    cfg = yaml.safe_load(Path(setup["config"]).read_text())
    cfg["name"] = "bucket-audio"
    cfg["data"].update(csv=f"{prefix}/synth.csv", data_root=str(tmp))
    cfg["store"]["uri"] = uri = rgw.uri("stores", "bucket-audio")
    config = tmp / "bucket-audio.yaml"
    config.write_text(yaml.safe_dump(cfg))
    extracted = job(two_node_cluster, "jobs/extract.py", "--config", str(config), "--pool-size", "1",
                    "--actor-resources", json.dumps({"worker": 0.5}))
    return {"tmp": tmp, "prefix": prefix, "uri": uri, "config": str(config), "extracted": extracted}


@pytest.fixture(scope="module")
def killed_training(two_node_cluster, rgw, bucket_audio):
    """A two-fold training job of the bucket-audio store stopped once fold 0's best checkpoint is on the bucket, the
    same job run again (the resume), then the evaluation job: what each step left, for the tests to check."""
    assert bucket_audio["extracted"].returncode == 0, (bucket_audio["extracted"].stdout
                                                       + bucket_audio["extracted"].stderr)[-5000:]
    out = rgw.uri("runs", "bucket-audio")
    args = ("jobs/train.py", "--config", bucket_audio["config"], "--out", out, "--layer", "1", "--epochs", "3",
            "--folds", "0,1")
    job_id = job(two_node_cluster, *args, wait=False)
    marker = run_path(out + "/fold_0/best/config.json", rgw.storage_options())
    deadline = time.time() + 600
    while time.time() < deadline and not marker.exists() and job_status(two_node_cluster, job_id) in (
            "PENDING", "RUNNING", "UNKNOWN"):  # UNKNOWN: the dashboard did not answer this poll
        time.sleep(1)
    assert marker.exists(), job_logs(two_node_cluster, job_id)[-3000:]
    stamp = marker.stat().st_mtime
    ray_cli("job", "stop", "--address", two_node_cluster.dashboard, job_id, env=two_node_cluster.env(), timeout=120)
    stopped = wait_job(two_node_cluster, job_id)
    resumed = job(two_node_cluster, *args)
    kept = marker.stat().st_mtime == stamp
    evaluated = job(two_node_cluster, "jobs/evaluate.py", "--config", bucket_audio["config"], "--run", out)
    return {"out": out, "stopped": stopped, "resumed": resumed, "kept": kept, "evaluated": evaluated}


def test_training_resumes_on_the_bucket_after_a_kill_then_evaluates(rgw, killed_training):
    out = killed_training["out"]
    assert killed_training["stopped"] in ("STOPPED", "SUCCEEDED")
    resumed = killed_training["resumed"]
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert killed_training["kept"]  # fold 0 was kept, not trained again
    for fold in range(2):
        assert run_path(f"{out}/fold_{fold}/best/model.pt", rgw.storage_options()).exists()
    evaluated = killed_training["evaluated"]
    assert evaluated.returncode == 0, (evaluated.stdout + evaluated.stderr)[-4000:]
    assert run_path(out + "/eval/metrics.parquet", rgw.storage_options()).exists()


def test_a_corpus_whose_audio_is_only_in_the_bucket_extracts_trains_and_evaluates(rgw, bucket_audio, killed_training):
    """No shared disk for the corpus: its CSV and audio are objects (the local copies deleted after the upload), the
    model actor on the worker node decodes them with the config file's options (no node has AWS_* variables), and
    a missing and a corrupt object end as named errors rows, as a bad local file does. The store then trains (the
    resume test's run) and evaluates, the bad rows left out."""
    import polars as pl

    prefix, extracted = bucket_audio["prefix"], bucket_audio["extracted"]
    logs = extracted.stdout + extracted.stderr
    assert extracted.returncode == 0, logs[-5000:]
    assert "48 extracted, 4 failed" in logs, logs[-3000:]
    assert rgw.secret_key not in logs
    store = Store(bucket_audio["uri"], rgw.storage_options())
    manifest = store.manifest("synth")
    assert len(manifest) == 26 and all(p.startswith(prefix + "/") for p in manifest.column("path"))
    durations = dict(zip(manifest.column("utt_id"), manifest.column("duration")))
    assert durations["synth/s0_lost"] is None and durations["synth/s1_junk"] is None  # no header to read
    assert all(d is not None for u, d in durations.items() if not u.endswith(("lost", "junk")))
    errors = {(e["utt_id"], e["condition"]): e for e in store.errors().to_arrow().to_pylist()}
    assert set(errors) == {(u, c) for u in ("synth/s0_lost", "synth/s1_junk") for c in CONDS}
    assert errors["synth/s0_lost", "clean"]["path"] == f"{prefix}/lost.wav"
    assert errors["synth/s0_lost", "clean"]["message"] == "object not found"
    assert errors["synth/s1_junk", "5dB"]["message"].startswith("corrupt audio header"), errors
    assert all(e["stage"] == "decode" for e in errors.values())
    assert tally(store, [u for u in manifest.column("utt_id") if not u.endswith(("lost", "junk"))])["missing"] == 0

    out, trained = killed_training["out"], killed_training["resumed"]
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]
    evaluated = killed_training["evaluated"]
    assert evaluated.returncode == 0, (evaluated.stdout + evaluated.stderr)[-4000:]
    metrics = pl.read_parquet(run_path(out + "/eval/metrics.parquet", rgw.storage_options()).read_bytes())
    print("bucket audio: 48 extracted, 4 failed; metrics of the two evaluated folds\n", metrics.head(4))
    overall = metrics.filter(pl.col("group_by") == "all")
    assert overall.height > 0 and set(overall["n"]) == {12}  # 2 speakers x 6 decodable utterances: no bad one
    assert not list(bucket_audio["tmp"].rglob("*.wav")) and not list(bucket_audio["tmp"].rglob("*.flac"))
