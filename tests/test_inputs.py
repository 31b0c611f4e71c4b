"""ray_ser.inputs without a server: how input locations resolve (relative paths under a bucket folder), which
options an input URI opens with (data.options, else the store's, else the environment's), and what a worker gets."""

from __future__ import annotations

import pytest

from ray_ser import inputs, storage
from ray_ser.config import load, use_storage


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION",
              "AWS_ALLOW_HTTP", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(storage, "_REGISTERED", {})
    monkeypatch.setattr(inputs, "_DATA", {})


def test_relative_paths_resolve_under_a_bucket_folder_or_a_local_one(tmp_path):
    assert inputs.resolve("s3://b/corpus/csv", "../wav/a.flac") == "s3://b/corpus/wav/a.flac"
    assert inputs.resolve("s3://b/corpus", "./x/../a.wav") == "s3://b/corpus/a.wav"
    assert inputs.resolve("s3://b", "a.wav") == "s3://b/a.wav"
    assert inputs.resolve("s3://b/corpus", "gs://other/a.wav") == "gs://other/a.wav"
    assert inputs.resolve("s3://b/corpus", "/data/a.wav") == "/data/a.wav"
    assert inputs.resolve(tmp_path / "csv", "../a.wav") == str(tmp_path / "a.wav")
    assert inputs.parent("s3://b/corpus/labels.csv") == "s3://b/corpus"
    assert inputs.stem("s3://b/corpus/labels.csv") == "labels" and inputs.stem(tmp_path / "x.csv") == "x"


def test_data_options_win_then_the_store_s_then_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    audio = "s3://corpora/a.wav"
    assert inputs.options_for(audio) == {"access_key_id": "env-key"}
    cfg = load(None, {"store.uri": "s3://store/x", "store.options": {"endpoint": "http://store:1"}})
    use_storage(cfg.store, cfg.data)
    assert inputs.options_for(audio)["endpoint"] == "http://store:1"  # same scheme as the store: its options
    assert inputs.options_for("gs://corpora/a.wav") == {}
    cfg = load(None, {"store.uri": "s3://store/x", "data.options": {"endpoint": "http://data:2",
                                                                    "secret_access_key": "data-secret"}})
    use_storage(cfg.store, cfg.data)
    got = inputs.options_for(audio)
    assert (got["endpoint"], got["access_key_id"], got["secret_access_key"]) == ("http://data:2", "env-key",
                                                                                 "data-secret")
    assert storage.options_for("s3://store/x").get("endpoint") is None  # the store keeps its own
    saved = cfg.to_yaml()
    assert "data-secret" not in saved and "***" in saved
    masked = load(None, {"data.options": {"endpoint": "http://data:2", "secret_access_key": "***"}})
    use_storage(masked.store, masked.data)  # a stage reading the saved config keeps the secret it has
    assert inputs.options_for(audio)["secret_access_key"] == "data-secret"
    assert inputs.config_options(audio, {}, "s3://store/x", {"endpoint": "http://store:1"})["endpoint"] == \
        "http://store:1"


def test_a_worker_gets_the_driver_s_environment_for_audio_of_another_scheme(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    saved = inputs.snapshot(["s3://corpora/a.wav", "/local/b.wav"])
    assert saved == {"store": {}, "data": {"s3": {"access_key_id": "env-key", "secret_access_key": "env-secret"}}}
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    inputs.restore(saved)  # a worker node without AWS_* variables
    assert inputs.options_for("s3://corpora/a.wav")["secret_access_key"] == "env-secret"
