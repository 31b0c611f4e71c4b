"""Extraction over mixed lengths, rates and channel counts (the shared EmoDB copy is all 2.0 s).

A generated speech-like corpus (0.3-45 s, 8/16/22.05/44.1 kHz, mono and stereo, WAV and FLAC) goes through the
generic CSV adapter and the full Ray pipeline with the tiny random-init HuBERT and Whisper; batches mix lengths
(longest first, 4 per call). Every stored row must hold what a direct model call on that utterance alone gives:
its frame count and its pooled vectors (so padding never leaks), including Whisper past its 30 s window.
The real RAVDESS copy (2.9-5.3 s) runs under the ``slow`` marker with the embedded Whisper base.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest
from speech_like import MIXED, save_tiny_whisper, write_corpus

from ray_ser import audio
from ray_ser.corpora import build_manifest
from ray_ser.extract import conditions
from ray_ser.extract.program import ExtractConfig, extract, pool_frames
from ray_ser.fm import load_model
from ray_ser.settings import data_root
from ray_ser.store.core import Store, iter_frames

MODELS = {"hubert": ["clean", "5dB"], "whisper": ["clean"]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    csv = write_corpus(tmp_path_factory.mktemp("mixed"))
    return build_manifest("csv", csv.parent, csv=csv)


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir, tmp_path_factory):
    return {"hubert": tiny_model_dir, "whisper": save_tiny_whisper(tmp_path_factory.mktemp("models") / "tiny-whisper")}


@pytest.fixture(scope="module")
def store(local_ray, corpus, model_dirs, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("store"))
    for key, conds in MODELS.items():
        result = extract(corpus, uri, ExtractConfig(model=str(model_dirs[key]), conditions=conds, batch_size=4,
                                                     model_key=key, dtype="float32", pool_size=1))
        assert (result.extracted, result.errors) == (len(MIXED) * len(conds), 0)
    return uri


def direct(model, utt_id: str, path: str, condition: str):
    """(hidden states of the utterance alone, frame count, samples) without Ray, Lance or batching."""
    wave = conditions.apply(audio.load(path, model.sample_rate), model.sample_rate, condition, utt_id, 0)
    out = model([wave])
    return out.hidden[:, 0].numpy(), int(out.lengths[0]), len(wave)


def test_manifest_reads_every_rate_channel_count_and_length(corpus):
    assert len(corpus) == len(MIXED) and not corpus.rejected and not corpus.audio_problems()
    durations = dict(zip(corpus.column("utt_id"), corpus.column("duration")))
    for clip in MIXED:
        assert durations[f"mixed/{clip.name}"] == pytest.approx(clip.seconds, abs=1e-4)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_every_row_equals_a_direct_call_on_the_utterance_alone(store, corpus, model_dirs, key):
    model = load_model(str(model_dirs[key]), device="cpu", whisper_mode="strided:10")
    rows = Store(store).embeddings(key).to_lance().to_table(
        columns=["utt_id", "condition", "layer", "n_frames", "duration", "mean", "std"])
    paths = dict(zip(corpus.column("utt_id"), corpus.column("path")))
    assert rows.num_rows == len(MIXED) * len(MODELS[key]) * model.num_layers
    for cond in MODELS[key]:
        for utt_id, path in paths.items():
            hidden, n, samples = direct(model, utt_id, path, cond)
            mine = rows.filter(pc.and_(pc.equal(rows.column("utt_id"), utt_id), pc.equal(rows.column("condition"), cond)))
            mine = mine.sort_by("layer").to_pylist()
            assert [r["layer"] for r in mine] == list(range(model.num_layers))
            assert {r["n_frames"] for r in mine} == {n} == {model.num_frames(samples)}, utt_id
            assert mine[0]["duration"] == pytest.approx(samples / model.sample_rate, abs=1e-6)
            mean, std = pool_frames(hidden, n)
            np.testing.assert_allclose(np.array([r["mean"] for r in mine]), mean, atol=2e-4, rtol=1e-3, err_msg=utt_id)
            np.testing.assert_allclose(np.array([r["std"] for r in mine]), std, atol=2e-4, rtol=1e-3, err_msg=utt_id)


def test_whisper_past_30_s_is_encoded_in_windows_not_cut(store, corpus, model_dirs):
    model = load_model(str(model_dirs["whisper"]), device="cpu", whisper_mode="strided:10")
    frames = dict(iter_frames(store, "whisper", condition="clean", layer=2))
    assert frames["mixed/s22k_31p5"].shape == (1575, 32) and frames["mixed/s16k_45_st"].shape == (2250, 32)
    path = dict(zip(corpus.column("utt_id"), corpus.column("path")))["mixed/s16k_45_st"]
    hidden, n, _ = direct(model, "mixed/s16k_45_st", path, "clean")
    np.testing.assert_allclose(frames["mixed/s16k_45_st"].astype(np.float32), hidden[2, :n], atol=1e-2, rtol=1e-2)
    tail = frames["mixed/s16k_45_st"][1500:].astype(np.float32)  # the second window holds real, varying frames
    assert np.abs(tail).max() > 0.1 and tail.std(axis=0).mean() > 1e-2


@pytest.mark.slow
def test_ravdess_real_lengths_with_whisper_base(local_ray, tmp_path):
    """The real RAVDESS copy (16 kHz FLAC, 2.9-5.3 s): its 4 shortest and 4 longest files, Whisper base."""
    root = data_root()
    if not (root / "ravdess").is_dir():
        pytest.skip(f"RAVDESS not found under {root} (set RAY_SER_DATA_ROOT)")
    manifest = build_manifest("ravdess", root)
    order = np.argsort(manifest.column("duration"), kind="stable")
    picked = manifest.take([int(i) for i in [*order[:4], *order[-4:]]])
    uri = str(tmp_path / "store")
    result = extract(picked, uri, ExtractConfig(model="whisper-base", conditions=["clean"], batch_size=4,
                                                 model_key="wb", frames=False, dtype="float32", pool_size=1))
    assert (result.extracted, result.errors) == (8, 0)
    model = load_model("whisper-base", device="cpu", whisper_mode="strided:10")
    rows = Store(uri).embeddings("wb").to_lance().to_table(columns=["utt_id", "layer", "n_frames", "mean"],
                                                            filter="layer = 6")
    by_id = {r["utt_id"]: r for r in rows.to_pylist()}
    durations = sorted(picked.column("duration"))
    assert durations[0] < 3.2 and durations[-1] > 4.8  # lengths really differ
    for k, (utt_id, path) in enumerate(zip(picked.column("utt_id"), picked.column("path"))):
        samples = len(audio.load(path, 16000))
        assert by_id[utt_id]["n_frames"] == model.num_frames(samples)
        if k in (0, len(picked) - 1):  # the shortest and the longest against a direct call
            hidden, n, _ = direct(model, utt_id, path, "clean")
            np.testing.assert_allclose(by_id[utt_id]["mean"], pool_frames(hidden, n)[0][6], atol=2e-3, rtol=1e-3)
