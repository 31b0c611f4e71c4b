"""Every stage with its store, checkpoints, Tune state and run folders on a real S3-compatible server (Ceph's RADOS
Gateway, tests/services/rgw.py): the storage options come from the config file alone (the only AWS_* variable in
any process is a planted secret that the config's key overrides), nothing lands in the working directory, no secret
reaches a file, table, log or console line, and a store that cannot be used fails within seconds."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml
from s3util import assert_exactly_once, experiment, no_aws_env, row_counts

from ray_ser.storage import StoreUnavailable, run_path
from ray_ser.store.core import Store


ENV_SECRET = "planted-env-secret-7f3a9c2e51"
"""A secret in every stage's environment (read by ray_ser, overridden by the config's key, so never used)."""

CONSOLE: list[str] = []
"""Everything every stage of this module printed (stdout and stderr), for the secret grep."""


def ray_ser(*args: str, cwd, timeout: float = 1200) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "ray_ser.cli", *args], cwd=cwd, text=True, capture_output=True,
                          env={**no_aws_env(), "AWS_SECRET_ACCESS_KEY": ENV_SECRET}, timeout=timeout)
    CONSOLE.append(done.stdout + done.stderr)
    return done


def aliased(options: dict[str, str]) -> dict[str, str]:
    """The gateway's options with the secret under Lance's other spelling, ``aws_secret_access_key``."""
    out = dict(options)
    out["aws_secret_access_key"] = out.pop("secret_access_key")
    return out


def listing(gw, *parts: str) -> list[str]:
    root = run_path(gw.uri(*parts), gw.storage_options())
    return sorted(str(p)[len(str(root)) + 1:] for p in root.rglob("*"))


@pytest.fixture(scope="module")
def pipeline(rgw, tiny_model_dir, tmp_path_factory):
    """`ray-ser run` of the synthetic corpus with the store and the run folder on the bucket, from an empty folder."""
    tmp = tmp_path_factory.mktemp("bucket")
    cwd = tmp / "cwd"
    cwd.mkdir()
    config = experiment(tmp, rgw, tiny_model_dir, "onbucket", store=rgw.uri("stores", "synth"),
                        options=aliased(rgw.storage_options()),
                        # the frame path: Ray Train's checkpoints land on the bucket too; one outer fold shows it
                        # (what the tests read is fold 0's; the two-fold resume runs in test_two_node)
                        train={"pooled": False, "outer_folds": "0"})
    done = ray_ser("run", str(config), cwd=cwd, timeout=1500)
    return {"done": done, "config": config, "cwd": cwd, "tmp": tmp}


def test_the_pipeline_runs_with_everything_on_the_bucket(pipeline, rgw):
    done = pipeline["done"]
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert "[done] evaluate onbucket" in done.stdout + done.stderr
    assert list(pipeline["cwd"].iterdir()) == []  # no stray "s3:" or plots/ folder where the command ran
    files = listing(rgw, "runs", "onbucket")
    for name in ("config.yaml", "run.json", "epochs.parquet", "fold_0/best/model.pt", "fold_0/best/config.json",
                 "eval/metrics.parquet", "eval/predictions.parquet", "eval/report.html"):
        assert name in files, files
    assert any(f.startswith("tensorboard/fold_0/events.out.tfevents") for f in files)
    assert any(f.startswith("ray_train/fold_0-") and f.endswith("state.pt") for f in files)  # Ray Train's checkpoints
    saved = run_path(rgw.uri("runs", "onbucket", "config.yaml"), rgw.storage_options()).read_text()
    assert rgw.secret_key not in saved and "***" in saved  # secrets never reach a file


def test_the_store_on_the_bucket_holds_every_stage_s_tables(pipeline, rgw):
    assert pipeline["done"].returncode == 0
    store = Store(rgw.uri("stores", "synth"), rgw.storage_options())
    names = set(store.names())
    assert {"emb__tiny", "manifest__synth", "runs", "errors"} <= names
    assert any(n.startswith("saliency") for n in names) and any(n.startswith("centroids") for n in names)
    assert any(n.startswith("frame_clusters") for n in names)
    assert_exactly_once(row_counts(store), store.manifest("synth").column("utt_id"), ["clean", "5dB"])
    assert "plots/tiny_layers.png" in listing(rgw, "stores", "synth")  # the saliency plot beside the store


def test_fragments_mode_extracts_once_and_a_rerun_adds_nothing(pipeline, rgw):
    """Write mode "fragments": the model actors write Lance fragments to the bucket with the driver's options."""
    uri = rgw.uri("stores", "fragments")
    args = ["extract", "--config", str(pipeline["config"]), "--store", uri, "--write-mode", "fragments",
            "--commit-seconds", "0"]
    first = ray_ser(*args, cwd=pipeline["cwd"])
    assert first.returncode == 0, first.stderr[-4000:]
    again = ray_ser(*args, cwd=pipeline["cwd"])
    assert again.returncode == 0, again.stderr[-4000:]
    assert "0 extracted" in again.stdout + again.stderr and "72 done before" in again.stdout + again.stderr
    store = Store(uri, rgw.storage_options())
    assert_exactly_once(row_counts(store), store.manifest("synth").column("utt_id"), ["clean", "5dB"])
    assert list(pipeline["cwd"].iterdir()) == []


def test_tune_keeps_its_state_on_the_bucket_and_resumes(pipeline, rgw):
    assert pipeline["done"].returncode == 0
    out = rgw.uri("runs", "onbucket", "search")
    # one trial of one epoch: the state on the bucket and the resume from it are what this checks, not the search
    args = ["tune", "--config", str(pipeline["config"]), "--out", out, "--num-samples", "1", "--max-epochs", "1",
            "--held-out-folds", "0", "--search-folds", "1", "--cpus-per-trial", "0.5", "--max-concurrent", "1"]
    first = ray_ser(*args, cwd=pipeline["cwd"])
    assert first.returncode == 0, first.stderr[-4000:]
    files = listing(rgw, "runs", "onbucket", "search")
    assert {"trials.parquet", "best_config.json"} <= set(files)
    assert any(f.endswith("experiment_state.json") or "experiment_state" in f for f in files), files
    resumed = ray_ser(*args, "--resume", cwd=pipeline["cwd"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert list(pipeline["cwd"].iterdir()) == []


def test_evaluation_reads_the_bucket_and_writes_a_local_folder(pipeline, rgw, tmp_path):
    assert pipeline["done"].returncode == 0
    done = ray_ser("evaluate", "--config", str(pipeline["config"]), "--out", str(tmp_path / "eval"),
                   cwd=pipeline["cwd"])
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "eval" / "metrics.parquet").is_file() and (tmp_path / "eval" / "report.html").is_file()
    saved = yaml.safe_load((tmp_path / "eval" / "config.yaml").read_text())
    assert saved["store"]["options"]["aws_secret_access_key"] == "***"


@pytest.mark.parametrize("case", ["wrong secret", "no such bucket", "nothing listening"])
def test_a_store_that_cannot_be_used_fails_within_seconds_naming_it(rgw, case):
    from services.rgw import free_port

    options = rgw.storage_options()
    uri = rgw.uri("stores", "x")
    if case == "wrong secret":
        options["secret_access_key"] = "not-the-secret"
    elif case == "no such bucket":
        uri = "s3://no-such-bucket/stores/x"
    else:
        options["endpoint"] = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as e:
        Store(uri, options)
    assert time.monotonic() - t0 < 20
    assert uri in str(e.value)
    assert {"wrong secret": "SignatureDoesNotMatch", "no such bucket": "does not exist",
            "nothing listening": "cannot use the object store"}[case] in str(e.value), str(e.value)


def test_the_cli_says_why_in_one_line(rgw, tmp_path):
    done = subprocess.run([sys.executable, "-m", "ray_ser.cli", "status", "--store", "s3://no-such-bucket/s"],
                          env={**no_aws_env(), **rgw.env()}, cwd=tmp_path, text=True, capture_output=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "s3://no-such-bucket/s" in lines[0] and "does not exist" in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []


def test_pruned_frames_and_a_manifest_file_on_the_bucket(pipeline, rgw):
    assert pipeline["done"].returncode == 0
    pruned = ray_ser("prune", "--config", str(pipeline["config"]), "--layer", "1", "--keep-ratio", "0.5",
                     cwd=pipeline["cwd"])
    assert pruned.returncode == 0, pruned.stderr[-4000:]
    store = Store(rgw.uri("stores", "synth"), rgw.storage_options())
    assert any(n.startswith("pruned__tiny_L1") for n in store.names())
    cfg = yaml.safe_load(pipeline["config"].read_text())
    out = rgw.uri("manifests", "synth.parquet")
    made = ray_ser("manifest", "--config", str(pipeline["config"]), "--corpus", "csv", "--csv", cfg["data"]["csv"],
                   "--out", out, cwd=pipeline["cwd"])
    assert made.returncode == 0, made.stderr[-4000:]
    from ray_ser import storage
    from ray_ser.corpora.manifest import Manifest

    storage.register(out, rgw.storage_options())
    assert len(Manifest.read(out)) == 36
    assert list(pipeline["cwd"].iterdir()) == []


def test_no_secret_reaches_a_file_a_table_a_log_or_the_console(pipeline, rgw):
    """The config's secret (spelt aws_secret_access_key) and the environment's (AWS_SECRET_ACCESS_KEY), after every
    stage above ran: in no object on the bucket (raw bytes, and every string of every store table as Lance decodes
    it, since its files may be compressed), no local log or cache file, no file where the stages ran, no console."""
    import os
    from pathlib import Path

    assert pipeline["done"].returncode == 0
    secrets = [rgw.secret_key, ENV_SECRET]
    hits: list[str] = []

    def check(where: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        hits.extend(f"{where}: {secret[:7]}..." for secret in secrets if secret.encode() in raw)

    check("control", pipeline["config"].read_text() + ENV_SECRET)  # the grep sees both secrets where they are
    assert len(hits) == 2, hits
    hits.clear()

    import fsspec

    from ray_ser.storage import fsspec_kwargs

    fs = fsspec.filesystem("s3", skip_instance_cache=True, **fsspec_kwargs(rgw.uri(), rgw.storage_options()))
    objects = fs.find(rgw.bucket)  # a fresh client: no listing or ETag cached from before a rewrite
    assert len(objects) > 50  # the stores, run folders, checkpoints, Tune state and reports of every test above
    for key in objects:
        check(key, fs.cat_file(key))
    for uri in (rgw.uri("stores", "synth"), rgw.uri("stores", "fragments")):
        store = Store(uri, rgw.storage_options())
        for name in store.names():
            table = store.open(name).to_arrow()
            for column in table.column_names:
                if str(table.schema.field(column).type) in ("string", "large_string"):
                    check(f"{uri} {name}.{column}", "\n".join(v for v in table.column(column).to_pylist() if v))
            check(f"{uri} {name} schema", str(table.schema.metadata))
    own_configs = set(pipeline["tmp"].glob("*.yaml"))  # the test's own config files hold the secret by design
    local = [f for root in (Path(os.environ["RAY_SER_CACHE"]), pipeline["tmp"]) for f in root.rglob("*")
             if f.is_file() and f not in own_configs]
    assert any(f.name == "ray_ser.log" for f in local)  # the drivers' logs (a run folder on a bucket: the cache)
    for f in local:
        check(str(f), f.read_bytes())
    assert CONSOLE  # at least the pipeline's own run (every stage); the other tests' runs when they ran
    for i, text in enumerate(CONSOLE):
        check(f"console of stage run {i}", text)
    assert hits == [], hits
