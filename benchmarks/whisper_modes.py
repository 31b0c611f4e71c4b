"""How close are trimmed / windowed Whisper features to padded ones, and how fast are they?

For each Whisper mode, mean-pool (over real frames only) every hidden state of every EmoDB utterance, time
the model calls, then per mode and layer run a leave-one-speaker-out linear probe (StandardScaler +
LogisticRegression, UAR over the pooled LOSO predictions) and measure the cosine similarity of each
utterance's pooled vector to its padded-mode vector.

    python benchmarks/whisper_modes.py                       # all 535 utterances, 5 modes
    python benchmarks/whisper_modes.py --limit 40 --modes trimmed window:4
    python benchmarks/whisper_modes.py --cache /tmp/whisper_modes   # re-runs skip extraction
    python benchmarks/whisper_modes.py --modes padded,trimmed,strided:10,strided:25 --speed-batches 10

Features are cached per mode as ``<cache>/<model>__<mode>__n<N>_<hash>.npy`` (utterances x layers x dim,
float32) with a ``.json`` sidecar holding the extraction time, so a re-run reports the measured speed again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_MODES = ("padded", "trimmed", "window:4", "window:8", "window:15")
SR = 16_000


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES),
                   help="Whisper modes (space or comma separated): padded, trimmed, window:<s>, strided:<n>")
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--corpus", default="emodb")
    p.add_argument("--cache", default="/tmp/whisper_modes", help="folder for the per-mode feature .npy files")
    p.add_argument("--limit", type=int, default=None,
                   help="smoke run: N utterances spread evenly over the manifest (so every speaker appears)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-warmup", action="store_true", help="do not run one untimed batch before timing")
    p.add_argument("--speed-batches", type=int, default=0,
                   help="also time K batches per mode interleaved (mode after mode on the same batch), which a "
                        "busy machine skews far less than modes timed minutes apart; the final lines then use it")
    args = p.parse_args(argv)
    modes = [m for chunk in args.modes for m in chunk.split(",") if m]
    from ray_ser.fm.whisper import parse_mode

    for m in modes:
        parse_mode(m)  # fail early on a bad mode
    args.modes = list(dict.fromkeys(modes))
    return args


def select(manifest, limit: int | None):
    if limit is None or limit >= len(manifest):
        return manifest
    idx = np.unique(np.linspace(0, len(manifest) - 1, limit).round().astype(int))
    return manifest.take(idx.tolist())


def cache_path(cache: Path, model: str, mode: str, utt_ids: list[str]) -> Path:
    digest = hashlib.sha1("\n".join(utt_ids).encode()).hexdigest()[:10]
    safe_model = model.replace("/", "_")
    return cache / f"{safe_model}__{mode.replace(':', '-')}__n{len(utt_ids)}_{digest}.npy"


def pool(out) -> np.ndarray:
    """Mean over each utterance's real frames [:lengths[b]] of every hidden state -> (batch, layers, dim)."""
    hidden = out.hidden.float()
    pooled = [hidden[:, b, : int(n)].mean(dim=1) for b, n in enumerate(out.lengths.tolist())]
    return torch.stack(pooled).cpu().numpy()


def extract(model, waves: list[np.ndarray], batch_size: int, warmup: bool) -> tuple[np.ndarray, float]:
    """Pooled features of all waves and the wall time spent in model calls only."""
    if warmup:
        model(waves[:batch_size])  # untimed: first-call allocations, thread-pool start-up
    feats, seconds = [], 0.0
    for start in range(0, len(waves), batch_size):
        batch = waves[start:start + batch_size]
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(batch)
            seconds += time.perf_counter() - t0
        feats.append(pool(out))
        done = start + len(batch)
        if done % (batch_size * 10) == 0 or done == len(waves):
            print(f"  [{model.mode}] {done}/{len(waves)} utterances, {seconds:.1f} s in model calls", flush=True)
    return np.concatenate(feats).astype(np.float32), seconds


def interleaved_speed(models: dict, waves: list[np.ndarray], batch_size: int, k: int) -> dict[str, float]:
    """Audio-seconds per wall-second of each mode over k batches spread over the corpus, modes interleaved."""
    starts = np.unique(np.linspace(0, max(len(waves) - batch_size, 0), k).round().astype(int))
    for model in models.values():
        model(waves[:batch_size])  # warm-up
    seconds = dict.fromkeys(models, 0.0)
    audio_s = 0.0
    for i, start in enumerate(starts):
        batch = waves[start:start + batch_size]
        audio_s += sum(len(w) for w in batch) / SR
        order = list(models) if i % 2 == 0 else list(models)[::-1]  # alternate who goes first
        for mode in order:
            with torch.inference_mode():
                t0 = time.perf_counter()
                models[mode](batch)
                seconds[mode] += time.perf_counter() - t0
    return {m: audio_s / s for m, s in seconds.items()}


def loso_uar(x: np.ndarray, labels: np.ndarray, manifest) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ray_ser.corpora import folds

    pred = np.empty(len(labels), dtype=object)
    for _, train, test in folds.splits(folds.loso(manifest)):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        clf.fit(x[train], labels[train])
        pred[test] = clf.predict(x[test])
    return float(balanced_accuracy_score(labels.astype(str), pred.astype(str)))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    from ray_ser.corpora import build_manifest
    from ray_ser import audio
    from ray_ser.fm import load_model
    from ray_ser.fm.whisper import WhisperSpeechEncoder

    manifest = select(build_manifest(args.corpus), args.limit)
    utt_ids = manifest.column("utt_id")
    labels = np.asarray(manifest.column("label"), dtype=object)
    speakers = sorted(set(manifest.column("speaker")))
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"{args.corpus}: {len(manifest)} utterances, {len(speakers)} speakers, {len(set(labels))} classes; "
          f"model={args.model} modes={args.modes} batch={args.batch_size} threads={args.threads}", flush=True)

    waves: list[np.ndarray] | None = None
    base = None

    def model_for(mode: str):
        nonlocal base
        if base is None:
            base = load_model(args.model, device="cpu", whisper_mode=mode)
            return base
        # same weights, another mode: no need to parse model.bin again
        return WhisperSpeechEncoder(base.encoder, name=base.name, weights_hash=base.weights_hash, mode=mode,
                                    device="cpu")

    features: dict[str, np.ndarray] = {}
    timing: dict[str, dict] = {}
    for mode in args.modes:
        path = cache_path(cache, args.model, mode, utt_ids)
        meta_path = path.with_suffix(".json")
        if path.exists() and meta_path.exists():
            features[mode] = np.load(path)
            timing[mode] = {**json.loads(meta_path.read_text()), "cached": True}
            print(f"{mode}: cached features {features[mode].shape} from {path}", flush=True)
            continue
        if waves is None:
            waves = [audio.load(p, SR) for p in manifest.column("path")]
        model = model_for(mode)
        print(f"{mode}: extracting ...", flush=True)
        feats, seconds = extract(model, waves, args.batch_size, warmup=not args.no_warmup)
        audio_s = float(sum(len(w) for w in waves)) / SR
        meta = {"mode": mode, "model": args.model, "weights_hash": model.weights_hash, "seconds": seconds,
                "audio_seconds": audio_s, "utterances": len(waves), "batch_size": args.batch_size,
                "threads": args.threads}
        np.save(path, feats)
        meta_path.write_text(json.dumps(meta, indent=1))
        features[mode], timing[mode] = feats, {**meta, "cached": False}
        print(f"{mode}: {seconds:.1f} s for {audio_s:.0f} s of audio ({audio_s / seconds:.1f} audio-s/s)", flush=True)

    # the padded reference for cosine / speed even when padded is not in --modes but is cached
    ref_feats = features.get("padded")
    ref_time = timing.get("padded")
    if ref_feats is None:
        path = cache_path(cache, args.model, "padded", utt_ids)
        if path.exists() and path.with_suffix(".json").exists():
            ref_feats, ref_time = np.load(path), json.loads(path.with_suffix(".json").read_text())

    num_layers = next(iter(features.values())).shape[1]
    uar = {m: [] for m in args.modes}
    cos = {m: [] for m in args.modes}
    for mode in args.modes:
        t0 = time.perf_counter()
        for layer in range(num_layers):
            uar[mode].append(loso_uar(features[mode][:, layer], labels, manifest))
            cos[mode].append(mean_cosine(features[mode][:, layer], ref_feats[:, layer]) if ref_feats is not None
                             else float("nan"))
        print(f"probe {mode}: {time.perf_counter() - t0:.0f} s", flush=True)

    speed = {m: timing[m]["audio_seconds"] / timing[m]["seconds"] for m in args.modes}
    ref_speed = ref_time["audio_seconds"] / ref_time["seconds"] if ref_time else float("nan")
    vs_padded = {m: speed[m] / ref_speed for m in args.modes}
    inter = None
    if args.speed_batches > 0:
        if waves is None:
            waves = [audio.load(p, SR) for p in manifest.column("path")]
        timed = list(dict.fromkeys(["padded", *args.modes]))
        print(f"interleaved timing: {args.speed_batches} batches x {len(timed)} modes ...", flush=True)
        inter = interleaved_speed({m: model_for(m) for m in timed}, waves, args.batch_size, args.speed_batches)

    width = max(10, max(len(m) for m in args.modes) + 1)
    head = "layer " + "".join(f"{m:>{width}}" for m in args.modes)
    print()
    print(f"UAR (LOSO linear probe, {len(manifest)} utterances, {len(speakers)} speakers, chance "
          f"{1 / len(set(labels)):.3f})")
    print(head)
    for layer in range(num_layers):
        print(f"{layer:>5} " + "".join(f"{uar[m][layer]:>{width}.3f}" for m in args.modes))
    print(f"{'mean':>5} " + "".join(f"{np.mean(uar[m]):>{width}.3f}" for m in args.modes))
    print()
    print("mean cosine similarity of pooled vectors to padded")
    print(head)
    for layer in range(num_layers):
        print(f"{layer:>5} " + "".join(f"{cos[m][layer]:>{width}.4f}" for m in args.modes))
    print()
    print("speed (model calls only, batch of %d, %d threads)" % (args.batch_size, args.threads))
    for m in args.modes:
        t = timing[m]
        print(f"  {m:<{width}} {t['seconds']:8.1f} s for {t['audio_seconds']:.0f} s audio = "
              f"{speed[m]:7.1f} audio-s/wall-s  x{vs_padded[m]:.1f} vs padded"
              + ("  (cached timing)" if t.get("cached") else ""))
    if inter is not None:
        print(f"interleaved ({args.speed_batches} batches of {args.batch_size}, modes back to back on the same "
              f"batch; used for speed_vs_padded below)")
        for m in args.modes:
            print(f"  {m:<{width}} {inter[m]:7.1f} audio-s/wall-s  x{inter[m] / inter['padded']:.1f} vs padded")
        vs_padded = {m: inter[m] / inter["padded"] for m in args.modes}
    print()
    for m in args.modes:
        print(f"mode={m} speed_vs_padded={vs_padded[m]:.2f} mean_uar={np.mean(uar[m]):.4f} "
              f"last_layer_uar={uar[m][-1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
