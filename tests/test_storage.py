"""ray_ser.storage without a server: which options a URI opens with (config over environment, a saved config's
masked secret kept), that secrets never reach a saved config, and that local paths stay plain paths."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from ray_ser import storage
from ray_ser.config import load, use_storage

ENV = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "env-key", "AWS_SECRET_ACCESS_KEY": "env-secret",
       "AWS_REGION": "eu-west-1"}


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for k in list(ENV) + ["AWS_ALLOW_HTTP", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"]:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(storage, "_REGISTERED", {})


def test_the_environment_fills_what_the_config_leaves_out(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    got = storage.resolve_options("s3://b/store", {"region": "us-east-1", "allow_http": True})
    assert got == {"endpoint": "http://127.0.0.1:9", "access_key_id": "env-key", "secret_access_key": "env-secret",
                   "region": "us-east-1", "allow_http": "true"}
    assert storage.resolve_options("store", {"region": "x"}) == {}  # a local folder takes none
    assert storage.resolve_options("s3://b", {"endpoint": "http://h:1"})["allow_http"] == "true"  # plain http allowed


def test_registered_options_reach_every_uri_of_the_scheme_and_a_masked_secret_is_kept(monkeypatch):
    use_storage(load(None, {"store.uri": "s3://b/store", "store.options": {"endpoint": "http://h:1",
                                                                          "access_key_id": "k", "secret_access_key": "s"}}).store)
    assert storage.options_for("s3://b/runs/x")["secret_access_key"] == "s"
    storage.register("s3://b/store", {"endpoint": "http://h:1", "access_key_id": "k",
                                      "secret_access_key": storage.REDACTED})  # a stage reading the saved config
    assert storage.options_for("s3://other/x")["secret_access_key"] == "s"
    saved = storage.snapshot()
    monkeypatch.setattr(storage, "_REGISTERED", {})
    storage.restore(saved)  # what a Ray worker on another node does
    assert storage.options_for("s3://b/y") == saved["s3"]
    assert storage.options_for("s3://b/y", {"endpoint": "http://other:2"})["endpoint"] == "http://other:2"


def test_a_saved_config_masks_secrets(tmp_path):
    cfg = load(None, {"store.uri": "s3://b/store", "store.options": {"access_key_id": "k", "secret_access_key": "s3cr3t",
                                                                    "session_token": "t0k3n-value", "region": "r"}})
    text = cfg.save(tmp_path).read_text()
    assert "s3cr3t" not in text and "t0k3n-value" not in text and "***" in text and "access_key_id: k" in text
    assert cfg.store.options["secret_access_key"] == "s3cr3t"  # the running config keeps it


def test_paths_and_uris():
    assert storage.is_uri("s3://b/x") and storage.is_uri("gs://b") and not storage.is_uri("runs/x")
    assert not storage.is_uri("file:///tmp/x") and not storage.is_uri(None)
    assert storage.join("s3://b/runs/", "exp", "/eval") == "s3://b/runs/exp/eval"
    assert storage.join("runs", "exp") == str(Path("runs", "exp"))
    assert isinstance(storage.run_path("runs/x"), Path)
    up = storage.run_path("s3://b/runs/x", {"endpoint": "http://127.0.0.1:9", "access_key_id": "k",
                                            "secret_access_key": "s"})
    assert str(up / "eval") == "s3://b/runs/x/eval" and up.name == "x"
    assert storage.redact({"secret_access_key": "s", "region": "r"}) == {"secret_access_key": "***", "region": "r"}


def test_a_store_travels_with_its_options_and_never_prints_its_secret(tmp_path):
    from ray_ser.store.core import Store

    store = Store(str(tmp_path / "s"))
    copy = pickle.loads(pickle.dumps(store))
    assert copy.uri == store.uri and copy.options == {} and copy.storage_options is None
    fake = Store.__new__(Store)  # an object-store Store as a worker receives it (no connection made here)
    fake.uri, fake.options = "s3://b/s", {"access_key_id": "k", "secret_access_key": "s3cr3t", "endpoint": "http://h:1"}
    assert "s3cr3t" not in repr(fake) and fake.__getstate__() == {"uri": "s3://b/s", "options": fake.options}
    assert fake.storage_options["aws_secret_access_key"] == "s3cr3t" and fake.storage_options["connect_timeout"]
    assert "secret_access_key" not in fake.storage_options  # Lance's own names (see storage.LANCE_S3_KEYS)


def test_local_folders_get_no_arrow_filesystem_and_a_uri_log_stays_local(tmp_path, monkeypatch):
    fs, path = storage.arrow_filesystem(tmp_path / "runs")
    assert fs is None and path == str((tmp_path / "runs").resolve())
    monkeypatch.setenv("RAY_SER_CACHE", str(tmp_path / "cache"))
    log_dir = storage.local_log_dir("s3://bucket/runs/exp")
    assert log_dir.parent == tmp_path / "cache" / "logs" and "bucket_runs_exp" in log_dir.name


def test_staged_output_goes_straight_to_a_local_folder(tmp_path):
    with storage.staged(tmp_path / "eval") as local:
        (local / "a.txt").write_text("x")
    assert (tmp_path / "eval" / "a.txt").read_text() == "x"


def test_staged_output_to_a_uri_is_copied_up_whole_and_only_on_success():
    with storage.staged("memory://bucket/eval") as local:
        (local / "plots").mkdir()
        (local / "plots" / "a.png").write_bytes(b"png")
        (local / "metrics.parquet").write_bytes(b"pq")
    root = storage.run_path("memory://bucket/eval")
    assert (root / "plots" / "a.png").read_bytes() == b"png" and (root / "metrics.parquet").exists()
    with pytest.raises(RuntimeError):
        with storage.staged("memory://bucket/failed") as local:
            (local / "half.parquet").write_bytes(b"x")
            raise RuntimeError("the evaluation failed")
    assert not storage.run_path("memory://bucket/failed/half.parquet").exists()


def test_a_masked_secret_under_another_spelling_keeps_ours_for_the_store_and_the_inputs():
    from ray_ser import inputs

    given = {"aws_secret_access_key": "real-secret", "endpoint": "http://127.0.0.1:9"}
    masked = {"aws_secret_access_key": storage.REDACTED, "endpoint": "http://127.0.0.1:9"}
    try:
        storage.register("s3://b/x", given)
        assert storage.register("s3://b/x", masked)["secret_access_key"] == "real-secret"
        inputs.register(given)
        assert inputs.register(masked)["s3"]["secret_access_key"] == "real-secret"
    finally:
        inputs.register(None)
        storage._REGISTERED.pop("s3", None)
