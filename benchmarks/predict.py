"""Prediction speed, measured in one run on the same audio (synthetic voice-like clips of 2-4 s, written as WAVs):

(a) ``load_model(bundle).predict_many(paths)``: decode, resample, the foundation model, frames to float16, mask,
    scaler and head, in this process;
(b) the bare foundation-model forward over the same batches (audio already decoded and in memory), run before and
    after (a) and averaged, so a drift of the machine's speed favours neither;
(c) the warm in-process latency of ``predict`` on one 3 s clip (median of --repeats calls after one warm-up).

The bundle is a seeded untrained head (``--arch``: mlp, the demo's, or tcgru) on ``--layers`` of ``--model`` (its
speed is a trained one's). A TC-GRU head costs more than a small model's forward: compare like with like.
Prints files per second for (a) and (b), ratio = a/b (the goal: >= 0.8) and the latency.

    python benchmarks/predict.py [--model whisper-base] [--files 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def bench_bundle(spec: str, layers: list[int], whisper_mode: str, arch: str = "mlp"):
    """A bundle with one seeded ``arch`` head on ``layers`` of ``spec`` (per-corpus scaler at zero mean, unit std)."""
    import torch

    from ray_ser.fm.registry import describe
    from ray_ser.serve.bundle import Bundle, Member
    from ray_ser.train.config import TrainConfig
    from ray_ser.train.loop import build_fold_model
    from ray_ser.train.plan import FoldPlan, model_config

    d = describe(spec, whisper_mode)
    dim = d["hidden_size"] * len(layers)
    cfg = TrainConfig(store="none", model=spec, arch=arch)
    cats = ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]
    plan = FoldPlan(-1, "bench", layers[0], [], [], [], cats, None, dim, 0, [], False,
                    model_config(cfg, dim, len(cats), False, 0), layers=layers if len(layers) > 1 else None,
                    corpus_norm={"bench": [[0.0] * dim, [1.0] * dim]})
    torch.manual_seed(0)
    state = build_fold_model(plan).state_dict()
    info = {k: v for k, v in plan.to_dict().items() if k not in ("inner", "val", "test", "cv_val")}
    fm = {"model": spec, "weights_hash": d["weights_hash"], "sample_rate": d["sample_rate"],
          "whisper_mode": whisper_mode, "dtype": "auto", "max_seconds": 300.0}
    return Bundle("bench/final", "final", fm, cats, [], [Member("final", info, 1.3, state, cfg.model_dump())])


def bare(model, waves: list[np.ndarray], batch_size: int) -> float:
    """Wall seconds of the model calls alone, over predict's batches (sorted by length, ``batch_size`` each)."""
    import torch

    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    t = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(order), batch_size):
            model([waves[i] for i in order[k:k + batch_size]])
    return time.perf_counter() - t


def main() -> None:
    import torch

    from synthetic import voice

    from ray_ser import audio
    from ray_ser.extract.program import DEFAULT_WHISPER_MODE
    from ray_ser.serve.model import Predictor

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--whisper-mode", default=DEFAULT_WHISPER_MODE)
    p.add_argument("--layers", default="4,5", help="comma-separated layers the head reads")
    p.add_argument("--arch", default="mlp", choices=("mlp", "tcgru"), help="the head (mlp: the demo's)")
    p.add_argument("--files", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="predict_bench_"))
    paths = []
    for i in range(args.files):
        path = tmp / f"clip{i:03d}.wav"
        sf.write(path, voice(rng, float(rng.uniform(90, 250)), 0.3, 0.5, float(rng.uniform(2, 4))), 16000)
        paths.append(str(path))
    clip3 = tmp / "three_seconds.wav"
    sf.write(clip3, voice(rng, 150, 0.3, 0.5, 3.0), 16000)

    m = Predictor(bench_bundle(args.model, [int(x) for x in args.layers.split(",")], args.whisper_mode, args.arch),
                  batch_size=args.batch_size)
    waves = [audio.load(p, m.sample_rate) for p in paths]
    m.predict(clip3)  # loads the model, warms the caches
    before = bare(m.fm, waves, args.batch_size)
    t = time.perf_counter()
    df = m.predict_many(paths)
    ours = time.perf_counter() - t
    after = bare(m.fm, waves, args.batch_size)
    assert df.height == len(paths) and not m.errors, m.errors
    forward = (before + after) / 2
    lat = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        m.predict(clip3)
        lat.append(time.perf_counter() - t)
    seconds = sum(len(w) for w in waves) / m.sample_rate
    print(f"model {args.model} ({args.whisper_mode}), {args.arch} head, {len(paths)} files, {seconds:.0f} s of audio, "
          f"{torch.get_num_threads()} threads, device {m.device}")
    print(f"predict_many: {len(paths) / ours:.2f} files/s ({ours:.1f} s)")
    print(f"bare forward: {len(paths) / forward:.2f} files/s ({before:.1f} s before, {after:.1f} s after)")
    print(f"ratio predict/forward: {forward / ours:.2f} (goal >= 0.8)")
    print(f"warm predict latency, 3 s clip: median {statistics.median(lat) * 1000:.0f} ms "
          f"(min {min(lat) * 1000:.0f}, max {max(lat) * 1000:.0f}; {args.repeats} calls)")


if __name__ == "__main__":
    main()
