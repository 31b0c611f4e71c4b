"""The extraction actor's whole step vs the model forward alone, on the same batches. Torch only: runs where Ray,
LanceDB and Lance are not installed (e.g. a bare GPU box with torch, transformers, soundfile and soxr).

(f) forward: the network alone (``model.run``) on inputs prepared beforehand on the device (``model.prepare``:
    log-mel or normalisation), synchronised; nothing leaves the device.
(s) step: what an extraction actor runs per model call (``ray_ser.fm.step.EmbedStep``): features on the device,
    forward, pooling, the stored layers' real frames gathered on the device and copied to host once, then
    wrapped as the store's Arrow columns (when pyarrow is installed; else left as host numpy).
(o) the actor's previous step on the same batches, for comparison: transformers' feature extractor one utterance
    at a time on the host, the forward, pooling over the whole batch in float32, the whole padded batch copied to
    the host as float16 and cut into per-utterance numpy slices, then Arrow.
Each round times (f), (s) and (o) over the same batches (longest first, as the pipeline orders them); rates use
the median round. Prints audio-seconds per second for each, per device, and ``ratio`` = (s) / (f) in wall time
(1.0 = the step costs nothing beyond the forward; the goal on a GPU, with frames, is >= 0.85). On a CPU, where
other processes may share the cores, ``cpu_ratio`` gives the same ratio in this process's CPU time.

Models: ``whisper-base`` (embedded, default), ``random-24x1024`` (a randomly initialised HuBERT-large-shaped
model: 24 layers, 1024 dims, 25 hidden states), or any local folder / hub id ray_ser loads.
Audio: EmoDB's wav files under the data root when present, else seeded synthetic speech-like signals.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# torch-only modules of ray_ser: nothing here imports Ray, LanceDB or Lance
from ray_ser.fm.base import SpeechEncoder, pick_device, resolve_dtype, torch_dtype  # noqa: E402
from ray_ser.fm.step import EmbedStep, arrow_columns  # noqa: E402

RANDOM_SHAPES = {"random-24x1024": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                        intermediate_size=4096)}


def build_model(spec: str, device: torch.device, dtype: torch.dtype, whisper_mode: str) -> SpeechEncoder:
    """An embedded/local/hub model through ray_ser's loader, or a random-init HuBERT of a named shape."""
    if spec in RANDOM_SHAPES:
        from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

        from ray_ser.fm.hf import CTCStyleEncoder

        torch.manual_seed(0)
        config = HubertConfig(**RANDOM_SHAPES[spec], feat_extract_norm="layer", do_stable_layer_norm=True,
                              conv_bias=True)
        with torch.device(device):
            model = HubertModel(config)
        extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
        return CTCStyleEncoder(model, extractor, name=spec, weights="random", device=device, dtype=dtype)
    from ray_ser.fm import load_model

    return load_model(spec, device=device, dtype=dtype, whisper_mode=whisper_mode)


def synthetic_audio(n: int, seconds: tuple[float, float], seed: int = 0, sr: int = 16000) -> list[np.ndarray]:
    """``n`` seeded vowel-like signals (harmonics of a gliding f0 plus a little noise) of uniform random length."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = np.arange(int(rng.uniform(*seconds) * sr)) / sr
        f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(np.sin(k * phase) / k for k in range(1, 10)) * (0.5 + 0.5 * np.sin(np.pi * t / t[-1]))
        out.append((0.2 * x + 0.005 * rng.standard_normal(t.size)).astype(np.float32))
    return out


def corpus_audio(data_root: str | None, limit: int | None) -> list[np.ndarray] | None:
    """EmoDB's wavs at 16 kHz (sorted, first ``limit``), or None when the corpus is not there."""
    from ray_ser.audio import load
    from ray_ser.settings import data_root as find_root

    files = sorted((find_root(data_root) / "emodb" / "wav").glob("*.wav"))
    if not files:
        return None
    return [load(str(f), 16000) for f in files[:limit]]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model: SpeechEncoder, prepared: list) -> float:
    """Seconds for the network alone over prepared batches."""
    sync(model.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for inputs in prepared:
            model.run(inputs)
    sync(model.device)
    return time.perf_counter() - t0


def time_step(step: EmbedStep, batches: list[list[np.ndarray]], arrow: bool) -> float:
    """Seconds for the actor's whole step over the batches (results on the host, as Arrow when ``arrow``)."""
    sync(step.model.device)
    t0 = time.perf_counter()
    for waves in batches:
        out = step(waves)
        if arrow:
            arrow_columns(out, step.model.num_layers)
    return time.perf_counter() - t0


def old_prepare(model: SpeechEncoder, waves: list[np.ndarray]):
    """The previous input path: transformers' extractor per utterance (host), then one copy to the device."""
    from ray_ser.fm.hf import CTCStyleEncoder
    from ray_ser.fm.whisper import (
        SAMPLES_PER_FRAME,
        WhisperInputs,
        WhisperSpeechEncoder,
    )

    if isinstance(model, WhisperSpeechEncoder):
        step = model.max_frames * SAMPLES_PER_FRAME
        owner, pieces = [], []
        for b, w in enumerate(waves):
            for start in range(0, max(len(w), 1), step):
                owner.append(b)
                pieces.append(w[start:start + step])
        if model.stride is None:
            contexts = [model.context_samples(len(p)) for p in pieces]
        else:
            chunk, _ = model._strided_layout([model._real_frames(len(p)) for p in pieces])
            contexts = [c * SAMPLES_PER_FRAME for c in chunk]
        mels = np.zeros((len(pieces), model.mel.n_mels, max(contexts) // 160), np.float32)
        for b, (w, c) in enumerate(zip(pieces, contexts)):
            mels[b, :, : c // 160] = model.log_mel(w, c)
        return WhisperInputs(torch.from_numpy(mels).to(model.device), [len(p) for p in pieces], owner,
                             [model.num_frames(len(w)) for w in waves])
    if isinstance(model, CTCStyleEncoder):
        batch = model.extractor(list(waves), sampling_rate=model.sample_rate, padding="longest",
                                return_attention_mask=True, return_tensors="pt")
        return batch["input_values"].to(model.device), torch.tensor([len(w) for w in waves])
    return model.prepare(waves)


def old_rows(hidden: torch.Tensor, lengths: list[int], layers: tuple[int, ...], arrow: bool) -> None:
    """The previous pooling and frame copy: whole-batch float32 pooling, whole padded batch to host, numpy slices."""
    h = hidden.float()
    lens = torch.as_tensor(lengths, device=h.device)
    mask = (torch.arange(h.shape[2], device=h.device)[None, :] < lens[:, None]).to(h.dtype)[None, :, :, None]
    count = lens.clamp(min=1).to(h.dtype)[None, :, None]
    mean = (h * mask).sum(2) / count
    var = (((h - mean[:, :, None]) * mask) ** 2).sum(2) / count
    mean, std = mean.transpose(0, 1).cpu().numpy(), var.sqrt().transpose(0, 1).cpu().numpy()
    if not layers:
        return
    half = (hidden if len(layers) == hidden.shape[0] else hidden[list(layers)]).half().cpu().numpy()
    flat = np.concatenate([half[:, b, :n].ravel() for b, n in enumerate(lengths)])
    if arrow:
        import pyarrow as pa

        offsets = np.concatenate([[0], np.cumsum(np.repeat(lengths, len(layers)))]).astype(np.int32)
        pa.ListArray.from_arrays(pa.array(offsets), pa.FixedSizeListArray.from_arrays(pa.array(flat), hidden.shape[-1]))
        pa.FixedSizeListArray.from_arrays(pa.array(mean.reshape(-1)), hidden.shape[-1])
        pa.FixedSizeListArray.from_arrays(pa.array(std.reshape(-1)), hidden.shape[-1])


def time_old(model: SpeechEncoder, batches: list[list[np.ndarray]], layers: tuple[int, ...], arrow: bool) -> float:
    """Seconds for the previous actor step over the batches."""
    sync(model.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for waves in batches:
            out = model.run(old_prepare(model, waves))
            old_rows(out.hidden, [int(n) for n in out.lengths], layers, arrow)
    sync(model.device)
    return time.perf_counter() - t0


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of ``fn(*args)``."""
    c0 = time.process_time()
    wall = fn(*args)
    return wall, time.process_time() - c0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="whisper-base", help=f"whisper-base, {', '.join(RANDOM_SHAPES)}, or a folder/hub id")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--whisper-mode", default="strided:10")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="utterances (default: all EmoDB, or 64 synthetic)")
    p.add_argument("--synthetic", action="store_true", help="synthetic audio even when EmoDB is there")
    p.add_argument("--seconds", default="2,5", help="synthetic utterance lengths: min,max seconds")
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-frames", action="store_true", help="pooled vectors only")
    p.add_argument("--frame-layers", default=None, help="store frames of these layers only, e.g. 3,4")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of (f) then (s); the median counts")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype_name = resolve_dtype(args.dtype, device)
    model = build_model(args.model, device, torch_dtype(dtype_name), args.whisper_mode)
    waves = None if args.synthetic else corpus_audio(args.data_root, args.limit)
    source = "emodb"
    if waves is None:
        lo, hi = (float(v) for v in args.seconds.split(","))
        waves, source = synthetic_audio(args.limit or 64, (lo, hi)), "synthetic"
    waves.sort(key=len, reverse=True)  # longest first, as the pipeline's work items
    batches = [waves[i:i + args.batch_size] for i in range(0, len(waves), args.batch_size)]
    audio_s = sum(len(w) for w in waves) / model.sample_rate
    layers = None if args.frame_layers is None else [int(v) for v in args.frame_layers.split(",")]
    step = EmbedStep(model, frames=not args.no_frames, frame_layers=layers)
    try:
        import pyarrow  # noqa: F401

        arrow = True
    except ImportError:
        arrow = False

    with torch.inference_mode():
        prepared = [model.prepare(b) for b in batches]  # (f)'s inputs, made beforehand
    time_forward(model, prepared[:1])  # warm-up: kernels, allocator, pinned host cache
    time_step(step, batches[:1], arrow)
    time_old(model, batches[:1], step.frame_layers, arrow)
    t_f, t_s, t_o, c_f, c_s, c_o = [], [], [], [], [], []
    for r in range(args.rounds):
        for walls, cpus, run in ((t_f, c_f, lambda: time_forward(model, prepared)),
                                 (t_s, c_s, lambda: time_step(step, batches, arrow)),
                                 (t_o, c_o, lambda: time_old(model, batches, step.frame_layers, arrow))):
            wall, cpu = timed(run)
            walls.append(wall)
            cpus.append(cpu)
        print(f"round {r + 1}: forward {t_f[-1]:.2f} s, step {t_s[-1]:.2f} s, previous step {t_o[-1]:.2f} s "
              f"(CPU {c_f[-1]:.2f} / {c_s[-1]:.2f} / {c_o[-1]:.2f} s)", flush=True)
    f_rate, s_rate = audio_s / statistics.median(t_f), audio_s / statistics.median(t_s)
    o_rate = audio_s / statistics.median(t_o)
    frames = "none" if args.no_frames else ("all layers" if layers is None else f"layers {args.frame_layers}")
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{torch.get_num_threads()} torch threads), model: {args.model} ({model.num_layers} states x "
          f"{model.hidden_size}), dtype: {dtype_name}, whisper mode: {getattr(model, 'mode', '-')}")
    print(f"audio: {len(waves)} {source} utterances, {audio_s:.0f} audio-s, batch {args.batch_size}, "
          f"frames: {frames}, output: {'Arrow' if arrow else 'host numpy'}, rounds: {args.rounds}")
    print(f"(f) forward alone: {f_rate:.1f} audio-s/s per device (rounds: {', '.join(f'{t:.2f}' for t in t_f)} s)")
    print(f"(s) actor step:    {s_rate:.1f} audio-s/s per device (rounds: {', '.join(f'{t:.2f}' for t in t_s)} s)")
    print(f"(o) previous step: {o_rate:.1f} audio-s/s per device (rounds: {', '.join(f'{t:.2f}' for t in t_o)} s)")
    bytes_per_s = 0 if args.no_frames else 2 * model.hidden_size * (len(step.frame_layers)) * (
        model.num_frames(model.sample_rate))
    print(f"frames to host: {bytes_per_s * s_rate / 1e6:.1f} MB/s ({bytes_per_s / 1e6:.2f} MB per audio-s)")
    print(f"speedup_vs_previous_step: {s_rate / o_rate:.3f}")
    print(f"cpu_ratio: {statistics.median(c_f) / statistics.median(c_s):.3f}")
    print(f"ratio: {s_rate / f_rate:.3f}")
    if not math.isfinite(s_rate / f_rate):
        sys.exit(1)


if __name__ == "__main__":
    main()
