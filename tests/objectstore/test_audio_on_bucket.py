"""Audio, CSVs and manifests on a real S3-compatible server (Ceph's RADOS Gateway, tests/services/rgw.py): headers
come from small ranged reads, decoding matches the local file, a missing or corrupt object gets the reason a bad
local file gets, a CSV corpus can live wholly in the bucket, and ``data.options`` (another endpoint's or key's
options than the store's) reach a worker through :func:`ray_ser.inputs.snapshot`."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
from speech_like import speech_like

from ray_ser import audio, inputs, storage
from ray_ser.audio import AudioError
from ray_ser.corpora import build_manifest
from ray_ser.corpora.manifest import AUDIO_ERROR, Manifest

RATE = 16000


@pytest.fixture(autouse=True)
def _registries(monkeypatch):
    """Each test registers its own options; none leaks into the next test."""
    monkeypatch.setattr(storage, "_REGISTERED", {})
    monkeypatch.setattr(inputs, "_DATA", {})
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def files(rgw, tmp_path_factory):
    """Local files and their copies in the bucket under audio/: a 60 s FLAC, a 30 s WAV, a corrupt, an empty and a
    truncated object; returns {name: (local path, uri)}."""
    import fsspec

    tmp = tmp_path_factory.mktemp("bucket_audio")
    made = {}
    for name, seconds, fmt in (("long.flac", 60.0, "FLAC"), ("mid.wav", 30.0, "WAV"), ("short.wav", 1.5, "WAV")):
        sf.write(tmp / name, speech_like(seconds, RATE, seed=len(name)), RATE, format=fmt, subtype="PCM_16")
    (tmp / "corrupt.wav").write_bytes(b"this is not audio\n" * 50)
    (tmp / "empty.wav").write_bytes(b"")
    (tmp / "cut.wav").write_bytes((tmp / "mid.wav").read_bytes()[:200_000])
    fs = fsspec.filesystem("s3", **storage.fsspec_kwargs("s3://", rgw.storage_options()))
    for f in sorted(tmp.iterdir()):
        uri = rgw.uri("audio", f.name)
        fs.put_file(str(f), uri)
        made[f.name] = (str(f), uri)
    return made


@pytest.fixture
def fetched(monkeypatch):
    """Bytes fetched from the bucket: by the ranged reads of s3fs files (every ``_fetch_range``), and as whole
    objects (what :func:`inputs.open_object` returns in memory)."""
    from s3fs.core import S3File

    seen = {"ranged": 0, "whole": 0}
    fetch, open_object = S3File._fetch_range, inputs.open_object

    def counting_fetch(self, start, end):
        out = fetch(self, start, end)
        seen["ranged"] += len(out)
        return out

    def counting_open(location, header=False):
        f = open_object(location, header)
        if not header:
            seen["whole"] += f.getbuffer().nbytes
        return f

    monkeypatch.setattr(S3File, "_fetch_range", counting_fetch)
    monkeypatch.setattr(inputs, "open_object", counting_open)
    return seen


def test_a_header_is_read_with_small_ranged_reads_not_the_whole_object(rgw, files, fetched):
    storage.register(rgw.uri(), rgw.storage_options())
    for name in ("long.flac", "mid.wav"):
        local, uri = files[name]
        before = fetched["ranged"]
        got = audio.info(uri)
        assert got == audio.info(local)
        assert got.duration == pytest.approx({"long.flac": 60.0, "mid.wav": 30.0}[name])
        size = (len(open(local, "rb").read()))
        read = fetched["ranged"] - before
        print(f"{name}: header read fetched {read} of {size} bytes")
        assert 0 < read <= 2 * inputs.HEADER_BLOCK < size / 7
    assert fetched["whole"] == 0
    assert audio.probe(files["long.flac"][1]) == (pytest.approx(60.0), None)


def test_decoding_an_object_gives_the_local_file_s_samples_from_one_whole_read(rgw, files, fetched):
    storage.register(rgw.uri(), rgw.storage_options())
    for name in ("long.flac", "short.wav"):
        local, uri = files[name]
        np.testing.assert_array_equal(audio.load(uri, 16000), audio.load(local, 16000))
    assert fetched["whole"] == sum(len(open(files[n][0], "rb").read()) for n in ("long.flac", "short.wav"))
    assert fetched["ranged"] == 0
    with pytest.raises(AudioError, match="audio too long: 60.0 s > 10 s"):
        audio.load(files["long.flac"][1], 16000, max_seconds=10)


def test_a_bad_object_is_named_like_a_bad_local_file(rgw, files):
    storage.register(rgw.uri(), rgw.storage_options())
    missing = rgw.uri("audio", "nowhere.wav")
    with pytest.raises(AudioError) as e:
        audio.load(missing)
    assert (e.value.path, e.value.reason) == (missing, "object not found")
    assert audio.probe(missing) == (None, "object not found")
    for name, want in (("corrupt.wav", "not an audio file"), ("empty.wav", "empty object (0 bytes)"),
                       ("cut.wav", "truncated: the WAV header declares")):
        local, uri = files[name]
        with pytest.raises(AudioError) as remote_error:
            audio.load(uri)
        with pytest.raises(AudioError) as local_error:
            audio.load(local)
        assert remote_error.value.reason.startswith(want), remote_error.value.reason
        assert remote_error.value.reason.replace("object", "file") == local_error.value.reason  # the decoder's words
        assert audio.probe(uri) == (None, remote_error.value.reason)


def test_a_csv_corpus_wholly_in_the_bucket_with_relative_paths(rgw, files, tmp_path):
    """The CSV in the bucket names its audio relative to its own folder (``../audio/x``) and by absolute URI;
    durations come from the objects' headers, a missing object leaves a null duration, a corrupt one its reason."""
    storage.register(rgw.uri(), rgw.storage_options())
    rows = [("a", "../audio/long.flac", "s1", "calm"), ("b", files["mid.wav"][1], "s2", "excited"),
            ("c", "../audio/nowhere.wav", "s1", "excited"), ("d", "../audio/corrupt.wav", "s2", "calm")]
    local_csv = tmp_path / "labels.csv"
    with open(local_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["utt_id", "path", "speaker", "label"])
        w.writerows(rows)
    uri = rgw.uri("csv", "labels.csv")
    inputs.filesystem(uri).put_file(str(local_csv), uri)
    m = build_manifest("csv", tmp_path, csv=uri, name="bucketcsv")
    got = {r["utt_id"]: r for r in m.table.to_pylist()}
    assert got["bucketcsv/a"]["path"] == files["long.flac"][1] and got["bucketcsv/b"]["path"] == files["mid.wav"][1]
    assert got["bucketcsv/a"]["duration"] == pytest.approx(60.0)
    assert got["bucketcsv/b"]["duration"] == pytest.approx(30.0)
    assert got["bucketcsv/c"]["duration"] is None and got["bucketcsv/c"]["extra"] is None  # missing: label-only row
    assert got["bucketcsv/d"]["duration"] is None and "not an audio file" in got["bucketcsv/d"]["extra"]
    assert [p for _, _, p in m.audio_problems()][0].startswith("not an audio file")
    assert m.missing_audio() == []  # objects are not asked for one by one
    m.write(rgw.uri("manifests", "bucketcsv.parquet"))
    back = Manifest.read(rgw.uri("manifests", "bucketcsv.parquet"))  # a data.manifest URI
    assert back.table.equals(m.table) and back.source == rgw.uri("manifests", "bucketcsv.parquet")
    audio_root = build_manifest("csv", tmp_path, csv=str(local_csv), audio_root=rgw.uri("csv"), name="rootcsv")
    assert audio_root.column("path")[0] == files["long.flac"][1]  # a local CSV, its audio_root a URI
    assert AUDIO_ERROR in audio_root.table.column("extra")[3].as_py()


def test_data_options_apply_to_inputs_and_travel_to_a_worker(rgw, files):
    """The store's s3 options are wrong (another endpoint's key); ``data.options`` are right: audio opens with the
    latter, here and, after :func:`inputs.restore`, in a process that had neither registered."""
    wrong = {**rgw.storage_options(), "secret_access_key": "not-the-secret"}
    storage.register(rgw.uri("stores", "x"), wrong)
    with pytest.raises(AudioError, match="access denied|cannot read the object"):
        audio.info(files["short.wav"][1])
    inputs.register(rgw.storage_options())
    assert audio.info(files["short.wav"][1]).frames == int(1.5 * RATE)
    saved = inputs.snapshot([files["short.wav"][1]])
    assert saved["store"]["s3"]["secret_access_key"] == "not-the-secret"
    storage._REGISTERED.clear()
    inputs._DATA.clear()
    inputs.restore(saved)  # what decode_batch does on a worker
    assert audio.info(files["short.wav"][1]).frames == int(1.5 * RATE)
    inputs.register(None)  # no data.options: the store's options apply again
    assert inputs.options_for(files["short.wav"][1]) == wrong
