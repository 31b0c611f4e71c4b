"""Extraction through Ray Data into LanceDB: completeness, equality with a direct model call, resume, bad input."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from ray_ser import audio
from ray_ser.corpora import Manifest, Utterance, build_manifest
from ray_ser.extract import conditions
from ray_ser.extract.program import ExtractConfig, extract, pool_frames
from ray_ser.fm import load_model
from ray_ser.store.core import Store, iter_frames, read_pooled
from ray_ser.store.names import table_name

CONDS = ["clean", "5dB"]


def direct_pooled(model_dir, utt_id: str, path: str, condition: str, seed: int = 0) -> np.ndarray:
    """(layers, dim) mean-pooled vectors computed without Ray, Lance or batching."""
    model = load_model(str(model_dir), device="cpu")
    wave = conditions.apply(audio.load(path, model.sample_rate), model.sample_rate, condition, utt_id, seed)
    out = model([wave])
    mean, _ = pool_frames(out.hidden[:, 0].numpy(), int(out.lengths[0]))
    return mean


def store_rows(uri: str, model: str) -> pa.Table:
    return Store(uri).embeddings(model).to_arrow().select(["utt_id", "condition", "layer"])


def assert_exactly_once(rows: pa.Table, utt_ids, conds, num_layers: int) -> None:
    keys = list(zip(*(rows.column(k).to_pylist() for k in ("utt_id", "condition", "layer"))))
    assert len(keys) == len(set(keys)), "a (utterance, condition, layer) row is duplicated"
    assert set(keys) == {(u, c, layer) for u in utt_ids for c in conds for layer in range(num_layers)}


@pytest.fixture(scope="module")
def emodb6(corpora) -> Manifest:
    return build_manifest("emodb", corpora).head(6)


@pytest.fixture(scope="module")
def extracted(local_ray, emodb6, tiny_model_dir, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("store"))
    opts = ExtractConfig(model=str(tiny_model_dir), conditions=CONDS, batch_size=4, model_key="tiny")
    return uri, opts, extract(emodb6, uri, opts)


def test_every_utterance_layer_condition_once(extracted, emodb6):
    uri, opts, result = extracted
    assert result.extracted == 12 and result.errors == 0 and result.skipped == 0 and result.manifest_errors == 0
    assert_exactly_once(store_rows(uri, "tiny"), emodb6.column("utt_id"), CONDS, num_layers=3)


def test_pooled_vectors_equal_a_direct_model_call(extracted, emodb6, tiny_model_dir):
    uri, _, _ = extracted
    for cond in CONDS:
        for layer in (0, 2):
            df = read_pooled(uri, "tiny", condition=cond, layer=layer)
            assert df["utt_id"].to_list() == sorted(emodb6.column("utt_id"))
            for row in df.head(3).iter_rows(named=True):
                want = direct_pooled(tiny_model_dir, row["utt_id"], row["path"], cond)[layer]
                np.testing.assert_allclose(np.asarray(row["mean"]), want, atol=2e-4, rtol=1e-3)


def test_decode_tasks_and_decoding_actors_store_the_same_rows(extracted, emodb6, tmp_path, monkeypatch):
    """A CPU-only cluster decodes in the model actors; GPU clusters keep separate decode tasks. Both paths store
    the same rows (same audio, conditions and batches), so the choice is the cluster's, not the table's."""
    from ray_ser.extract import program

    assert program.decode_in_actors(0) and not program.decode_in_actors(1)
    uri, opts, _ = extracted
    monkeypatch.setattr(program, "decode_in_actors", lambda gpus: False)
    other = str(tmp_path / "store")
    result = extract(emodb6, other, opts)
    assert result.extracted == 12 and result.errors == 0

    def pooled(u):
        t = Store(u).embeddings("tiny").to_arrow().select(["utt_id", "condition", "layer", "mean", "n_frames"])
        return t.sort_by([("utt_id", "ascending"), ("condition", "ascending"), ("layer", "ascending")])

    a, b = pooled(uri), pooled(other)
    assert a.select(["utt_id", "condition", "layer", "n_frames"]).equals(b.select(["utt_id", "condition", "layer",
                                                                                   "n_frames"]))
    np.testing.assert_allclose(np.array(a.column("mean").to_pylist()), np.array(b.column("mean").to_pylist()),
                               rtol=1e-5, atol=1e-6)


def test_read_pooled_joins_manifest_and_masks(extracted):
    uri, _, _ = extracted
    df = read_pooled(uri, "tiny", condition="clean", layer=1)
    assert {"utt_id", "mean", "std", "label", "speaker", "gender", "pdf"} <= set(df.columns)
    assert df["label"].null_count() == 0 and len(df["mean"][0]) == 32
    mask = np.zeros(32, bool)
    mask[[3, 7, 11]] = True
    masked = read_pooled(uri, "tiny", condition="clean", layer=1, mask=mask)
    full = np.asarray(df["mean"].to_list())
    np.testing.assert_array_equal(np.asarray(masked["mean"].to_list()), full[:, mask])


def test_frames_are_real_frames_only(extracted, tiny_model_dir):
    uri, _, _ = extracted
    model = load_model(str(tiny_model_dir), device="cpu")
    frames = dict(iter_frames(uri, "tiny", condition="clean", layer=2))
    assert len(frames) == 6
    for f in frames.values():
        assert f.dtype == np.float16 and f.shape == (model.num_frames(32000), 32)  # EmoDB files here are 2.0 s
    df = read_pooled(uri, "tiny", condition="clean", layer=2)
    row = df.row(0, named=True)
    np.testing.assert_allclose(frames[row["utt_id"]].astype(np.float32).mean(0), row["mean"], atol=2e-2)


def test_store_records_provenance(extracted, tiny_model_dir):
    uri, _, _ = extracted
    meta = Store(uri).extraction_meta("tiny")
    assert meta["model"] == str(tiny_model_dir) and len(meta["weights_hash"]) == 64
    assert meta["sample_rate"] == 16000 and meta["code_version"] and meta["options"]["conditions"] == CONDS
    runs = Store(uri).runs().to_arrow()
    assert runs.num_rows >= 1 and runs.column("extracted")[0].as_py() == 12


def test_rerun_extracts_nothing_and_duplicates_nothing(extracted, emodb6):
    uri, opts, _ = extracted
    again = extract(emodb6, uri, opts)
    assert again.extracted == 0 and again.done_before == 12 and again.failed_before == 0
    assert_exactly_once(store_rows(uri, "tiny"), emodb6.column("utt_id"), CONDS, num_layers=3)


def test_partial_rows_from_a_crash_are_replaced(local_ray, emodb6, tiny_model_dir, tmp_path):
    uri = str(tmp_path / "store")
    opts = ExtractConfig(model=str(tiny_model_dir), conditions=["clean"], batch_size=4, model_key="tiny")
    extract(emodb6.head(3), uri, opts)
    victim, twice = emodb6.column("utt_id")[1], emodb6.column("utt_id")[2]
    table = Store(uri).embeddings("tiny")
    table.delete(f"utt_id = '{victim}' AND layer > 0")  # as if a crash cut its commit
    table.add(table.to_lance().to_table(filter=f"utt_id = '{twice}'"))  # as if two runs had both written it
    result = extract(emodb6.head(3), uri, opts)
    assert (result.dropped_partial, result.duplicates_removed, result.extracted, result.done_before) == (1, 3, 1, 2)
    assert_exactly_once(store_rows(uri, "tiny"), emodb6.column("utt_id")[:3], ["clean"], num_layers=3)
    # A second run on the same key while this table's lease is held is refused, naming the holder.
    from ray_ser.store.lease import Lease, LeaseHeld

    with Lease.acquire(Store(uri), "emb__tiny", "other-run", what="extraction of tiny"):
        with pytest.raises(LeaseHeld, match="held by run other-run"):
            extract(emodb6.head(3), uri, opts)


def _write_bad_files(folder, speech: np.ndarray):
    """corrupt, empty, NaN, 0.1 s (errors) and stereo 44.1 kHz, 8 kHz (fine after down-mix / resampling)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    files["corrupt"] = folder / "corrupt.wav"
    sf.write(folder / "empty.wav", np.zeros(0, np.float32), 16000)
    files["empty"] = folder / "empty.wav"
    nan = speech.copy()
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    files["nan"] = folder / "nan.wav"
    sf.write(folder / "short.wav", speech[:1600], 16000)
    files["short"] = folder / "short.wav"
    sf.write(folder / "stereo.wav", np.stack([speech, speech], 1)[:, :], 16000)
    files["stereo"] = folder / "stereo.wav"
    sf.write(folder / "rate8k.wav", speech[::2], 8000)
    files["rate8k"] = folder / "rate8k.wav"
    return files


def test_bad_files_become_error_rows_and_the_job_finishes(local_ray, corpora, tiny_model_dir, tmp_path):
    speech = audio.load(str(corpora / "emodb" / "wav" / "03a01Fa.wav"), 16000)
    files = _write_bad_files(tmp_path / "audio", speech)
    manifest = Manifest.from_utterances(
        [Utterance(utt_id=f"bad/{k}", path=str(p), speaker="s1", corpus="bad", label="neutral") for k, p in files.items()],
        ["neutral"],
    )
    uri = str(tmp_path / "store")
    opts = ExtractConfig(model=str(tiny_model_dir), conditions=["clean"], batch_size=3, model_key="tiny")
    result = extract(manifest, uri, opts)
    assert result.extracted == 2 and result.errors == 4
    errors = {r["utt_id"]: r for r in Store(uri).errors().to_arrow().to_pylist()}
    assert set(errors) == {"bad/corrupt", "bad/empty", "bad/nan", "bad/short"}
    assert errors["bad/corrupt"]["message"].startswith("corrupt audio header")
    assert "empty" in errors["bad/empty"]["message"]
    assert "NaN" in errors["bad/nan"]["message"]
    assert "too short" in errors["bad/short"]["message"]
    assert all(r["stage"] == "decode" and r["path"].endswith(".wav") and r["model"] == "tiny" for r in errors.values())
    done = read_pooled(uri, "tiny", condition="clean", layer=0)
    assert sorted(done["utt_id"].to_list()) == ["bad/rate8k", "bad/stereo"]
    assert done.filter(done["utt_id"] == "bad/stereo")["duration"][0] == pytest.approx(2.0, abs=1e-3)
    # A re-run skips the known-bad files instead of logging them again; --retry-errors tries them anew.
    again = extract(manifest, uri, opts)
    assert again.extracted == 0 and again.errors == 0 and (again.done_before, again.failed_before) == (2, 4)
    retry = extract(manifest, uri, ExtractConfig(**{**opts.__dict__, "retry_errors": True}))
    assert retry.errors == 4 and Store(uri).errors().count_rows() == 4


def test_table_name_is_safe_for_hub_ids():
    assert table_name("microsoft/wavlm-base-plus") == "emb__microsoft_wavlm-base-plus"


def test_cpu_layout_prefers_single_threaded_actors_and_leaves_room_for_the_driver():
    from ray_ser.extract.program import cpu_layout

    assert cpu_layout(2) == (2, 1, 0.75)  # this machine: two 1-thread copies, 0.5 CPU left for the driver and Ray
    assert cpu_layout(1) == (1, 1, 0.5)
    pool, threads, cpus = cpu_layout(16)
    assert (pool, threads) == (4, 4) and pool * cpus <= 16 - 0.5
    assert cpu_layout(8, pool_size=1, threads=8)[:2] == (1, 8)
    pool, _, cpus = cpu_layout(2, pool_size=8)
    assert pool == 8 and pool * cpus <= 2 - 0.5  # an oversized pool still leaves the driver a CPU share
    assert cpu_layout(2, pool_size=1, node_cpus=1.0) == (1, 1, 0.5)  # two 1-CPU nodes: an actor fits on one


def test_input_blocks_hold_whole_batches(emodb6):
    from ray_ser.extract.program import input_blocks, work_items

    for conds in (["clean"], ["clean", "5dB", "15dB"], CONDS):
        items = work_items(emodb6, conds, set())
        blocks = input_blocks(items, batch_size=2, n_conds=len(conds))
        pairs = [sum(len(c) for c in b.column("conditions").to_pylist()) for b in blocks]
        assert sum(pairs) == 6 * len(conds) and all(n % 2 == 0 for n in pairs[:-1])
        resumed = work_items(emodb6, conds, {(emodb6.column("utt_id")[0], conds[0])})  # only what is missing
        assert sum(len(c) for c in resumed.column("conditions").to_pylist()) == 6 * len(conds) - 1
        durations = items.column("duration").to_pylist()
        assert durations == sorted(durations, reverse=True)


def test_decode_batch_decodes_once_and_fans_out_conditions(emodb6, tmp_path):
    from ray_ser.extract.program import decode_batch

    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really")
    good = emodb6.table.slice(0, 1)
    batch = pa.table({"utt_id": [good.column("utt_id")[0].as_py(), "broken"],
                      "path": [good.column("path")[0].as_py(), str(bad)],
                      "conditions": [["clean", "5dB"], ["clean", "25dB"]]})
    out = decode_batch(batch, 16000, seed=0)
    assert out.column("condition").to_pylist() == ["clean", "5dB", "clean", "25dB"]
    assert out.column("error").to_pylist()[:2] == [None, None]
    assert all(isinstance(e, str) and e for e in out.column("error").to_pylist()[2:])
    assert out.column("stage").to_pylist()[2:] == ["decode", "decode"]
    clean, noisy = (np.asarray(out.column("audio")[i].values) for i in (0, 1))
    want = conditions.apply(audio.load(batch.column("path")[0].as_py(), 16000), 16000, "5dB",
                            batch.column("utt_id")[0].as_py(), 0)
    np.testing.assert_array_equal(noisy, want)  # same audio as degrading a fresh decode
    assert out.column("snr_db")[0].as_py() is None and 0 <= out.column("snr_db")[1].as_py() <= 10
    assert len(clean) == len(noisy)


def test_pool_batch_matches_per_utterance_pooling():
    import torch

    from ray_ser.extract.program import pool_batch

    hidden = torch.randn(3, 4, 20, 8) * 50 + 10  # large offsets: a one-pass variance would lose digits here
    lengths = [20, 7, 1, 13]
    mean, std = pool_batch(hidden, lengths)
    for b, n in enumerate(lengths):
        want_mean, want_std = pool_frames(hidden[:, b].numpy(), n)
        np.testing.assert_allclose(mean[b], want_mean, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(std[b], want_std, rtol=1e-4, atol=1e-4)


# ---- option drift ------------------------------------------------------------------------------------
FACTS = {"model": "/models/x", "weights_hash": "h" * 64, "sample_rate": 16000, "num_layers": 3, "hidden_size": 4}


def table_with(store: Store, opts: ExtractConfig, conds=("clean",), facts=FACTS, edit=None) -> dict:
    """Make the key's table as a run with ``opts`` would, optionally editing its recorded metadata first."""
    from ray_ser.extract.program import resolve_key

    _, meta = resolve_key(store, opts.model_copy(update={"conditions": list(conds)}), facts, list(conds))
    if edit is not None:
        edit(meta)
    store.embeddings(opts.key, dim=4, meta=meta)
    return meta


@pytest.mark.parametrize(("change", "named"), [
    ({"seed": 1}, "seed: table 0, this run 1"),
    ({"frames": False}, "frames: table True, this run False"),
    ({"whisper_mode": "trimmed", "model_key": "k"}, "whisper_mode: table 'strided:10', this run 'trimmed'"),
    ({"dtype": "float16"}, "dtype: table 'float32', this run 'float16'"),
    ({"frame_layers": [2]}, "frame_layers: table None, this run [2]"),
])
def test_option_drift_is_refused_naming_the_option_and_both_values(tmp_path, change, named):
    from ray_ser.extract.program import OptionDrift, resolve_key

    store = Store(str(tmp_path))
    base = ExtractConfig(model_key="k", dtype="float32")
    table_with(store, base)
    with pytest.raises(OptionDrift, match=re.escape(named)) as e:
        resolve_key(store, ExtractConfig(**{**base.__dict__, **change}), FACTS, ["clean"])
    assert "emb__k" in str(e.value) and "--model-key" in str(e.value)


def test_drift_check_is_generic_over_recorded_options(tmp_path):
    """An option recorded by a later version (here "frobnicate") is compared without being listed anywhere; one
    a table predates counts as its legacy value (tables before --dtype ran float32)."""
    from ray_ser.extract.program import OptionDrift, option_drift, resolve_key

    store = Store(str(tmp_path))
    opts = ExtractConfig(model_key="k", dtype="float32")
    table_with(store, opts, edit=lambda m: m["options"].update(frobnicate=2))
    with pytest.raises(OptionDrift, match=re.escape("frobnicate: table 2, this run None")):
        resolve_key(store, opts, FACTS, ["clean"])
    _, meta = resolve_key(Store(str(tmp_path / "other")), opts, FACTS, ["clean"])
    legacy = {**meta, "options": {k: v for k, v in meta["options"].items() if k != "dtype"}}
    assert option_drift(legacy, meta) == []
    assert option_drift(legacy, {**meta, "options": {**meta["options"], "dtype": "bfloat16"}}) == [
        ("dtype", "float32", "bfloat16")]
    assert option_drift(meta, {**meta, "weights_hash": "g" * 64})[0][0] == "weights_hash"


def test_runtime_options_and_new_conditions_are_no_drift(tmp_path):
    from ray_ser.extract.program import record_conditions, resolve_key

    store = Store(str(tmp_path))
    old = table_with(store, ExtractConfig(model_key="k", batch_size=8, pool_size=None), conds=["clean"])
    opts, meta = resolve_key(store, ExtractConfig(model_key="k", batch_size=2, pool_size=3, commit_seconds=0,
                                                   retry_errors=True, max_seconds=10.0, conditions=["clean", "5dB"]),
                             FACTS, ["clean", "5dB"])
    record_conditions(store, "k", old, meta)
    recorded = store.extraction_meta("k")
    assert sorted(recorded["conditions"]) == ["5dB", "clean"] and recorded["conditions"]["5dB"]["snr_db"] == [0.0, 10.0]
    assert recorded["options"]["conditions"] == ["clean", "5dB"]


def test_condition_parameters_are_compared_by_name(tmp_path):
    from ray_ser.extract.program import OptionDrift, resolve_key

    store = Store(str(tmp_path))
    table_with(store, ExtractConfig(model_key="k"), conds=["clean", "5dB"],
               edit=lambda m: m["conditions"]["5dB"].update(snr_db=[0.0, 5.0]))  # 5dB once meant 0-5 dB
    with pytest.raises(OptionDrift, match=r"condition 5dB: table .*'snr_db': \[0\.0, 5\.0\].* this run .*\[0\.0, 10\.0\]"):
        resolve_key(store, ExtractConfig(model_key="k"), FACTS, ["5dB"])
    resolve_key(store, ExtractConfig(model_key="k"), FACTS, ["clean"])  # a run of other conditions is fine


def test_on_drift_new_key_files_the_run_under_a_stable_derived_key(tmp_path):
    from ray_ser.extract.program import option_drift, resolve_key

    store = Store(str(tmp_path))
    table_with(store, ExtractConfig(model_key="k"))
    seed1 = ExtractConfig(model_key="k", seed=1, on_drift="new-key")
    opts, meta = resolve_key(store, seed1, FACTS, ["clean"])
    assert re.fullmatch(r"k~[0-9a-f]{8}", opts.key) and meta["model_key"] == opts.key
    store.embeddings(opts.key, dim=4, meta=meta)
    again, _ = resolve_key(store, seed1, FACTS, ["clean"])  # the same command resumes the same table
    assert again.key == opts.key and option_drift(store.extraction_meta(opts.key), meta) == []
    other, _ = resolve_key(store, ExtractConfig(**{**seed1.__dict__, "seed": 2}), FACTS, ["clean"])
    assert other.key not in (opts.key, "k")


def test_extract_refuses_drift_before_any_work(extracted, emodb6):
    from ray_ser.extract.program import OptionDrift

    uri, opts, _ = extracted
    with pytest.raises(OptionDrift, match="seed: table 0, this run 7"):
        extract(emodb6, uri, ExtractConfig(**{**opts.__dict__, "seed": 7}))
    assert_exactly_once(store_rows(uri, "tiny"), emodb6.column("utt_id"), CONDS, num_layers=3)


# ---- one bad utterance fails only itself ---------------------------------------------------------------
def stage_batch(waves: list[np.ndarray]) -> pa.Table:
    """What decode_batch hands the actors: one row per (utterance, condition), here all clean and decoded."""
    n = len(waves)
    return pa.table({
        "utt_id": [f"u{i}" for i in range(n)], "path": [f"/a/u{i}.wav" for i in range(n)], "condition": ["clean"] * n,
        "audio": pa.array([w.tolist() for w in waves], pa.list_(pa.float32())), "error": pa.nulls(n, pa.string()),
        "stage": pa.nulls(n, pa.string()), "snr_db": pa.nulls(n, pa.float32()), "rt60": pa.nulls(n, pa.float32()),
        "aug_params": pa.nulls(n, pa.string()),
    })


@pytest.fixture(scope="module")
def stage(tiny_model_dir):
    from ray_ser.extract.program import EmbedStage

    return EmbedStage({"model": str(tiny_model_dir), "conditions": ["clean"], "model_key": "tiny", "dtype": "float32"})


def waves_of(seconds: list[float]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]


def test_a_failing_utterance_is_retried_alone_and_fails_only_itself(stage, monkeypatch, caplog):
    waves = waves_of([1.0, 1.5, 2.0, 0.7])
    real, calls = stage.step, []

    def step(batch):
        calls.append(len(batch))
        if any(len(w) == 24000 for w in batch):  # the 1.5 s utterance breaks the model
            raise ValueError("bad input")
        return real(batch)

    monkeypatch.setattr(stage, "step", step)
    out = stage(stage_batch(waves))
    bad = out.filter(pa.compute.equal(out.column("layer"), -1)).to_pylist()
    assert [(r["utt_id"], r["stage"], r["error"]) for r in bad] == [("u1", "forward", "ValueError: bad input")]
    good = out.filter(pa.compute.not_equal(out.column("layer"), -1))
    assert sorted(set(good.column("utt_id").to_pylist())) == ["u0", "u2", "u3"] and good.num_rows == 3 * 3
    assert calls == [4, 1, 1, 1, 1] and "retrying them one by one" in caplog.text
    for i in (0, 2, 3):  # the survivors hold what a direct call gives
        row = good.filter(pa.compute.equal(good.column("utt_id"), f"u{i}")).to_pylist()[2]
        out_i = stage.model([waves[i]])
        want, _ = pool_frames(out_i.hidden[:, 0].numpy(), int(out_i.lengths[0]))
        np.testing.assert_allclose(row["mean"], want[2], atol=2e-4, rtol=1e-3)


def test_out_of_memory_halves_the_call_before_giving_up(stage, monkeypatch):
    import torch

    waves = waves_of([0.5, 0.6, 0.7, 3.0])
    real, calls = stage.step, []

    def step(batch):
        calls.append(len(batch))
        if sum(len(w) for w in batch) > 40000:  # "device memory" for 2.5 s of audio per call
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(batch)

    monkeypatch.setattr(stage, "step", step)
    out = stage(stage_batch(waves))
    assert calls == [4, 2, 2, 1, 1]  # halved, then the 3 s one halved alone and still too big
    bad = out.filter(pa.compute.equal(out.column("layer"), -1)).to_pylist()
    assert [r["utt_id"] for r in bad] == ["u3"]
    assert bad[0]["error"].startswith("out of memory on this utterance alone (3.0 s of audio)")
    assert sorted(set(out.column("utt_id").to_pylist()) - {"u3"}) == ["u0", "u1", "u2"]


def test_a_table_recorded_before_the_one_extract_config_resumes_without_drift(tmp_path):
    """The metadata a table made by the code before ExtractConfig replaced ExtractOptions recorded (commit 503c981,
    tests/extract/recorded_meta_503c981.json): the same settings through the new config match it key for key, are
    no drift, and --on-drift new-key derives the same key as then."""
    import json
    from pathlib import Path

    from ray_ser.extract.program import drift_key, option_drift, resolve_key, run_options

    old = json.loads((Path(__file__).parent / "recorded_meta_503c981.json").read_text())
    store = Store(str(tmp_path))
    store.embeddings("k", dim=4, meta=old)
    cfg = ExtractConfig(model_key="k", conditions=["clean", "5dB"], aug_copies=2, frame_layers=[-1], commit_seconds=0,
                        batch_size=4)
    opts = run_options(cfg.expanded(), 3, gpus=0)
    same, meta = resolve_key(store, opts, FACTS, ["clean", "5dB", "aug0", "aug1"])
    assert same.key == "k" and set(meta["options"]) == set(old["options"]) and set(meta) == set(old)
    assert option_drift(store.extraction_meta("k"), meta) == [] and meta["options"] == old["options"]
    assert drift_key("k", meta) == drift_key("k", old) == "k~74c53556"
    with pytest.raises(Exception, match="seed: table 0, this run 3"):
        resolve_key(store, opts.model_copy(update={"seed": 3}), FACTS, ["clean"])
