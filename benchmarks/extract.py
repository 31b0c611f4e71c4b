"""Extraction speed, measured in one run on EmoDB with whisper-base:

(a) the ray_ser pipeline (Ray Data decode/degrade tasks -> model actor -> LanceDB), Ray start-up excluded;
(b) a naive loop: one utterance at a time, padded to Whisper's 30 s window, one forward per layer kept,
    one .npy per utterance and layer (run on a subset: it is slow);
(b2) the loop users actually write (EmoBox / nkululeko style): one utterance at a time through the feature
    extractor (30 s window), ONE forward returning all hidden states, one .npy per utterance and layer (subset);
(c) the bare model forward over the same batches as (a), audio already in memory, nothing written; run
    before and after (a) and averaged, so a drift of the machine's speed does not favour either side.
Prints audio-seconds per wall-second for each, then speedup_vs_naive = a/b, speedup_vs_naive_all_states = a/b2,
overhead_vs_forward = (c rate)/(a rate) (1.0 = no overhead) and the bytes the store holds per audio-second.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ray_ser.corpora import build_manifest  # noqa: E402
from ray_ser import audio  # noqa: E402
from ray_ser.extract.program import ExtractConfig, decode_batch, extract, work_items  # noqa: E402
from ray_ser.fm import load_model  # noqa: E402


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bare_forward(manifest, opts: ExtractConfig) -> tuple[float, float]:
    """(audio seconds, wall seconds) of model calls alone over the pipeline's batches."""
    model = load_model(opts.model, whisper_mode=opts.whisper_mode)
    items = work_items(manifest, opts.conditions, set())
    decoded = decode_batch(items, model.sample_rate, opts.seed)  # the pipeline's CPU stage, in its order
    assert decoded.column("error").null_count == decoded.num_rows, "the benchmark corpus has unreadable audio"
    waves = [a.values.to_numpy(zero_copy_only=False) for a in decoded.column("audio")]
    model(waves[:2])  # warm-up, as the pipeline's actor warms up on its first batch
    t0 = time.perf_counter()
    for i in range(0, len(waves), opts.batch_size):
        out = model(waves[i:i + opts.batch_size])
        out.hidden.float().numpy()
    return sum(len(w) for w in waves) / model.sample_rate, time.perf_counter() - t0


def naive_loop(manifest, model_name: str, out_dir: Path) -> tuple[float, float]:
    """(audio seconds, wall seconds) of the one-utterance, padded, one-forward-per-layer loop."""
    import torch
    from transformers import WhisperFeatureExtractor

    model = load_model(model_name, whisper_mode="padded")
    encoder, fe = model.encoder, WhisperFeatureExtractor()
    seconds = 0.0
    t0 = time.perf_counter()
    for utt in manifest:
        wave = audio.load(utt.path, 16000)
        seconds += len(wave) / 16000
        feats = fe(wave, sampling_rate=16000, return_tensors="pt")["input_features"]
        frames = model.num_frames(len(wave))
        for layer in range(model.num_layers):
            with torch.inference_mode():
                hidden = encoder(feats, output_hidden_states=True).hidden_states[layer][0, :frames]
            np.save(out_dir / f"{utt.utt_id.replace('/', '_')}_L{layer}.npy", hidden.numpy())
    return seconds, time.perf_counter() - t0


def naive_all_states(manifest, model_name: str, out_dir: Path) -> tuple[float, float]:
    """(audio seconds, wall seconds) of the one-utterance loop with one all-hidden-states forward per utterance."""
    import torch
    from transformers import WhisperFeatureExtractor

    model = load_model(model_name, whisper_mode="padded")
    encoder, fe = model.encoder, WhisperFeatureExtractor()
    seconds = 0.0
    t0 = time.perf_counter()
    for utt in manifest:
        wave = audio.load(utt.path, 16000)
        seconds += len(wave) / 16000
        feats = fe(wave, sampling_rate=16000, return_tensors="pt")["input_features"]
        frames = model.num_frames(len(wave))
        with torch.inference_mode():
            states = encoder(feats, output_hidden_states=True).hidden_states
        for layer, hidden in enumerate(states):
            np.save(out_dir / f"{utt.utt_id.replace('/', '_')}_L{layer}.npy", hidden[0, :frames].numpy())
    return seconds, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--limit", type=int, default=None, help="EmoDB utterances for (a) and (c) (default: all 535)")
    p.add_argument("--conditions", default="clean,25dB,15dB,5dB")
    p.add_argument("--naive-limit", type=int, default=12, help="utterances for the slow naive loop (b)")
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    import ray

    from ray_ser.runtime import init_ray

    manifest = build_manifest("emodb", args.data_root)
    if args.limit:
        manifest = manifest.head(args.limit)
    opts = ExtractConfig(model=args.model, conditions=args.conditions.split(","))
    work = Path(tempfile.mkdtemp(prefix="ray_ser_bench_"))
    try:
        # (c) runs before and after (a) and is averaged: this VM's speed drifts by tens of percent over minutes
        c_audio, c_wall_before = bare_forward(manifest, opts)
        print(f"(c) bare forward, before (a): {c_audio:.0f} audio-s in {c_wall_before:.1f} s = "
              f"{c_audio / c_wall_before:.1f} audio-s/s")

        t0 = time.perf_counter()
        init_ray()
        print(f"ray_startup_seconds: {time.perf_counter() - t0:.2f}")

        t0 = time.perf_counter()
        result = extract(manifest, str(work / "store"), opts)
        a_wall = time.perf_counter() - t0
        a_audio = sum(manifest.column("duration")) * len(opts.conditions)
        stored = dir_bytes(work / "store")
        assert result.extracted == len(manifest) * len(opts.conditions), result
        print(f"(a) pipeline: {a_audio:.0f} audio-s in {a_wall:.1f} s = {a_audio / a_wall:.1f} audio-s/s "
              f"({result.extracted} utterance-conditions, {stored / 1e6:.0f} MB stored)")
        ray.shutdown()

        c_audio, c_wall_after = bare_forward(manifest, opts)
        print(f"(c) bare forward, after (a): {c_audio:.0f} audio-s in {c_wall_after:.1f} s = "
              f"{c_audio / c_wall_after:.1f} audio-s/s")
        c_wall = (c_wall_before + c_wall_after) / 2

        (work / "npy").mkdir()
        b_audio, b_wall = naive_loop(manifest.head(args.naive_limit), args.model, work / "npy")
        print(f"(b) naive loop: {b_audio:.0f} audio-s in {b_wall:.1f} s = {b_audio / b_wall:.2f} audio-s/s "
              f"({args.naive_limit} utterances, padded to 30 s, one forward per layer)")

        (work / "npy2").mkdir()
        b2_audio, b2_wall = naive_all_states(manifest.head(args.naive_limit), args.model, work / "npy2")
        print(f"(b2) naive all-states loop: {b2_audio:.0f} audio-s in {b2_wall:.1f} s = {b2_audio / b2_wall:.2f} "
              f"audio-s/s ({args.naive_limit} utterances, padded to 30 s, one forward returning every layer)")

        a_rate, b_rate, c_rate = a_audio / a_wall, b_audio / b_wall, c_audio / c_wall
        print(f"speedup_vs_naive: {a_rate / b_rate:.1f}")
        print(f"speedup_vs_naive_all_states: {a_rate / (b2_audio / b2_wall):.1f}")
        print(f"overhead_vs_forward: {c_rate / a_rate:.3f}")
        print(f"bytes_per_audio_second: {stored / a_audio:.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
