"""The in-process predictor (ray_ser.load_model): on the audio of stored utterances it gives the probabilities that
evaluation computes from the stored frames of the same checkpoint; windows; the pooled per-corpus scaler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from ray_ser.store import Store

TOLERANCE = 1e-5
"""Measured: the largest difference between predict's and evaluate's probabilities is 3e-8 (the predictor rounds
the frames to float16 as the store does, so only float32 summation order differs); 1e-5 leaves room for BLAS."""


@pytest.fixture(scope="module")
def run_dir(synth_store, tmp_path_factory) -> Path:
    from serving import write_run

    return write_run(tmp_path_factory.mktemp("serve_run"), synth_store)


def _stored_paths(store: str) -> dict[str, str]:
    from ray_ser.store.core import as_store

    m = pl.from_arrow(as_store(store).manifests())
    return dict(zip(m["utt_id"].to_list(), m["path"].to_list()))


@pytest.mark.usefixtures("local_ray")
def test_predict_on_stored_audio_matches_evaluate_on_stored_frames(synth_store, run_dir):
    from ray_ser import load_model
    from ray_ser.evaluate.predict import predict_fold
    from ray_ser.train.checkpoints import fold_checkpoints

    ray = pytest.importorskip("ray")
    assert ray.is_initialized()
    checkpoint = sorted(fold_checkpoints(run_dir).items())[0][1]
    ev = predict_fold(Store(synth_store), checkpoint, conditions=["clean"]).sort("utt_id")
    paths = _stored_paths(synth_store)
    m = load_model(checkpoint)
    got = m.predict_many([paths[u] for u in ev["utt_id"]], utt_ids=ev["utt_id"].to_list())
    assert got["utt_id"].to_list() == ev["utt_id"].to_list() and not m.errors
    ours = got.select([f"p_{c}" for c in m.categories]).to_numpy()
    theirs = np.array(ev["probs"].to_list())
    assert ev["temperature"].unique().to_list() == [pytest.approx(0.2)]  # both apply the checkpoint's temperature
    assert np.abs(ours - theirs).max() < TOLERANCE
    assert got["label"].to_list() == [m.categories[i] for i in theirs.argmax(1)]
    top2 = np.sort(theirs, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 100 * TOLERANCE  # no top label decided by rounding
    one = m.predict(paths[ev["utt_id"][0]])
    assert list(one) == m.categories and np.allclose(list(one.values()), theirs[0], atol=TOLERANCE)


def test_a_run_folder_loads_its_final_model_or_the_fold_ensemble(synth_store, run_dir):
    from ray_ser import load_model

    wav = next(iter(_stored_paths(synth_store).values()))
    final = load_model(run_dir)
    ens = load_model(run_dir, model="fold-ensemble")
    assert final.bundle.kind == "final" and len(final.bundle.members) == 1
    assert ens.bundle.kind == "fold-ensemble" and len(ens.bundle.members) == 2
    members = [load_model(Path(run_dir) / m.name / "best").predict(wav) for m in ens.bundle.members]
    mean = np.mean([list(p.values()) for p in members], axis=0)  # the ensemble: its members' scaled probabilities
    assert np.allclose(list(ens.predict(wav).values()), mean, atol=1e-6)


def test_windows_score_each_window_as_its_own_clip_and_a_file_row_their_mean(synth_store, run_dir, tmp_path):
    from synthetic import voice

    from ray_ser import load_model

    rng = np.random.default_rng(1)
    wave = np.concatenate([voice(rng, 140, 0.6, 0.8, 1.5), voice(rng, 100, -0.3, 0.15, 1.5)])
    long = tmp_path / "long.wav"
    sf.write(long, wave, 16000, subtype="FLOAT")
    m = load_model(Path(run_dir) / "fold_0" / "best", max_seconds=2.0)
    assert m.predict_many([long]).height == 0
    assert m.errors[0]["stage"] == "decode" and "too long" in m.errors[0]["message"] and "--window" in m.errors[0]["message"]
    df = m.predict_many([long], window=1.0, hop=0.5)
    win, whole = df.filter(pl.col("start").is_not_null()), df.filter(pl.col("start").is_null())
    assert win["start"].to_list() == [0.0, 0.5, 1.0, 1.5, 2.0] and win["end"].to_list() == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert whole.height == 1 and whole["duration"][0] == pytest.approx(3.0) and df.height == 6
    cols = [f"p_{c}" for c in m.categories]
    assert np.allclose(whole.select(cols).to_numpy()[0], win.select(cols).to_numpy().mean(0), atol=1e-6)
    clip = tmp_path / "clip.wav"
    sf.write(clip, wave[8000:24000], 16000, subtype="FLOAT")  # the second window, as a file of its own
    assert np.allclose(list(m.predict(clip).values()), win.select(cols).to_numpy()[1], atol=1e-6)


def test_windows_cover_the_file_to_its_end():
    from ray_ser.serve.model import windows

    assert windows(10, 1, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert windows(11, 1, 4, 3) == [(0, 4), (3, 7), (6, 10), (7, 11)]
    assert windows(3, 1, 4, 2) == [(0, 3)]


def test_the_pooled_per_corpus_scaler_is_the_statistics_of_the_pooled_frames():
    """With one frame per counted utterance, pooling two corpora's (mean, std) gives numpy's over both."""
    from ray_ser.serve.model import pooled_stats

    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 2, (30, 4)), rng.normal(-1, 0.5, (10, 4))
    norm = {"a": [a.mean(0).tolist(), a.std(0).tolist()], "b": [b.mean(0).tolist(), b.std(0).tolist()]}
    mean, std = pooled_stats(norm, {"a": 30, "b": 10})
    both = np.vstack([a, b])
    assert np.allclose(mean, both.mean(0), atol=1e-5) and np.allclose(std, both.std(0), atol=1e-5)


def test_scaler_input_standardises_by_the_input_sets_own_statistics(synth_store, run_dir):
    from ray_ser import load_model

    paths = sorted(_stored_paths(synth_store).values())[:6]
    ckpt = Path(run_dir) / "fold_0" / "best"
    m = load_model(ckpt, scaler="input")
    frames = m.frames([__import__("ray_ser.audio", fromlist=["load"]).load(p) for p in paths])
    member = m.bundle.members[0]
    xs = m.head_inputs(member, frames, m.input_stats(member, frames))
    X = np.vstack(xs).astype(np.float64)
    assert np.allclose(X.mean(0), 0, atol=2e-3) and np.allclose(X.std(0), 1, atol=2e-3)
    a = m.predict_many(paths).select(pl.selectors.starts_with("p_")).to_numpy()
    b = load_model(ckpt).predict_many(paths).select(pl.selectors.starts_with("p_")).to_numpy()
    assert not np.allclose(a, b)


def _counting(m):
    """Wrap ``m``'s forward to count the waves it is fed."""
    seen = []
    forward = m._forward

    def counted(waves, layers):
        seen.extend(len(w) for w in waves)
        return forward(waves, layers)

    m._forward = counted
    return seen


def test_a_store_caches_the_frames_so_another_model_on_the_same_audio_skips_the_forward(synth_store, run_dir,
                                                                                        tmp_path):
    import shutil

    from ray_ser import load_model

    wavs = []
    for i, p in enumerate(sorted(_stored_paths(synth_store).values())[:3]):
        wavs.append(str(tmp_path / f"c{i}.wav"))
        shutil.copy(p, wavs[-1])
    cache = str(tmp_path / "cache")
    f0, f1 = (Path(run_dir) / f"fold_{f}" / "best" for f in (0, 1))
    probs = pl.selectors.starts_with("p_")
    first = load_model(f0, store=cache)
    calls = _counting(first)
    a = first.predict_many(wavs)
    assert len(calls) == 3 and first.cache_hits == 0
    assert a.equals(load_model(f0).predict_many(wavs))  # caching changes nothing
    second = load_model(f1, store=cache)  # another head on the same foundation model
    calls = _counting(second)
    b = second.predict_many(wavs)
    assert calls == [] and second.cache_hits == 3 and second._fm is None  # not even loaded
    assert b.equals(load_model(f1).predict_many(wavs))  # the cached float16 frames are the forward's
    assert not np.allclose(a.select(probs).to_numpy(), b.select(probs).to_numpy())
    wave, rate = sf.read(wavs[1], dtype="float32")
    sf.write(wavs[1], wave * 0.5, rate, subtype="FLOAT")  # a changed file under the same name misses the cache
    third = load_model(f0, store=cache)
    calls = _counting(third)
    c = third.predict_many(wavs)
    assert len(calls) == 1 and third.cache_hits == 2
    assert np.abs(c.select(probs).to_numpy() - load_model(f0).predict_many(wavs).select(probs).to_numpy()).max() < 1e-6


def _layer_calls(m) -> list[int]:
    """Count the calls of each transformer layer of ``m``'s foundation model (the tiny HuBERT)."""
    layers = m.fm.model.encoder.layers
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda mod, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_the_forward_stops_at_the_highest_layer_the_head_reads(synth_store, tmp_path):
    """A head on layer 1 of the 2-layer tiny HuBERT: predict runs the first layer only and scores exactly as with the
    full forward; with a store (its cache keeps every layer) both layers run."""
    from untrained_runs import write_untrained_run

    from ray_ser import load_model
    from ray_ser.train.checkpoints import fold_checkpoints

    run = write_untrained_run(tmp_path / "run", synth_store, 3, lambda a: a.fold_ids[:1])
    checkpoint = sorted(fold_checkpoints(run).items())[0][1]
    wavs = sorted(_stored_paths(synth_store).values())[:3]
    m = load_model(checkpoint)
    assert m.bundle.layers == [1] and m.fm.num_layers == 3
    calls = _layer_calls(m)
    got = m.predict_many(wavs)
    assert calls == [1, 0] and not m.errors  # one batch of 3, layer 2 never run
    full = load_model(checkpoint)
    full.fm.layers_to_run = lambda max_layer: None  # the full forward, as before max_layer
    calls = _layer_calls(full)
    assert got.equals(full.predict_many(wavs)) and calls == [1, 1]
    cached = load_model(checkpoint, store=str(tmp_path / "cache"))
    calls = _layer_calls(cached)
    assert got.equals(cached.predict_many(wavs)) and calls == [1, 1]
