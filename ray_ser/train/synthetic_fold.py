"""An outer fold of synthetic frames held in memory, with its plan: the trainer fitted without a store or Ray.

The device benchmark (``benchmarks/train_device.py``) and the CUDA checks (``tests/test_train_cuda.py``) use it:
they run on GPU machines where Ray and LanceDB cannot be installed, through the same :func:`ray_ser.train.loop.fit_fold`
as a Ray Train worker. Each class has its own mean frame, so a model learns; lengths may be ragged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ray_ser.train.config import TrainConfig
from ray_ser.train.plan import FoldPlan, model_config
from ray_ser.train.reader import IGNORE, InMemorySource, ragged


@dataclass
class SyntheticFold:
    plan: FoldPlan
    train: InMemorySource
    val: InMemorySource


def synthetic_rows(n: int, dim: int, frames: tuple[int, int], n_classes: int, n_speakers: int, prefix: str,
                   centres: np.ndarray, rng: np.random.Generator, n_clusters: int = 0,
                   training: bool = True) -> dict[str, np.ndarray]:
    """``n`` examples: float16 frames = their class's centre + unit noise, ``frames`` = (min, max) lengths,
    soft targets (0.7 on the class), A/V/D tied to the class, speakers as domains (IGNORE unless ``training``:
    the domain head only knows training speakers)."""
    labels = np.arange(n) % n_classes
    lengths = rng.integers(frames[0], frames[1] + 1, n)
    x = ragged([(centres[y] + rng.standard_normal((t, dim))).astype(np.float16) for y, t in zip(labels, lengths)])
    pdf = np.full((n, n_classes), 0.3 / max(n_classes - 1, 1), np.float32)
    pdf[np.arange(n), labels] = 0.7
    dims = (1.0 + 4.0 * ((labels[:, None] + np.arange(3)) % n_classes) / max(n_classes - 1, 1)
            + 0.2 * rng.standard_normal((n, 3))).astype(np.float32)
    rows = {"utt_id": np.array([f"{prefix}/{i:05d}" for i in range(n)], dtype=object),
            "condition": np.array(["clean"] * n, dtype=object), "n_frames": lengths.astype(np.int64), "x": x,
            "label_index": labels.astype(np.int64), "pdf": pdf, "dims": dims,
            "domain": (np.arange(n) % n_speakers).astype(np.int64) if training else np.full(n, IGNORE, np.int64)}
    if n_clusters:
        rows["frame_ids"] = ragged([rng.integers(0, n_clusters, t) for t in lengths])
    return rows


def synthetic_fold(cfg: TrainConfig, n_train: int = 480, n_val: int = 55, dim: int = 1536,
                   frames: tuple[int, int] = (100, 100), n_classes: int = 7, n_speakers: int = 8,
                   separation: float = 0.15, seed: int = 0, n_layers: int = 1) -> SyntheticFold:
    """A fold shaped like one of EmoDB's by default (480 training and 55 validation utterances of 2.0 s:
    100 whisper-base frames of three concatenated layers); the scaler is fitted on the training frames.
    ``n_layers``: the frames are that many layers 0, 1, ... of dim / n_layers each (what a layer mix sums)."""
    rng = np.random.default_rng(seed)
    centres = separation * rng.standard_normal((n_classes, dim))
    train = synthetic_rows(n_train, dim, frames, n_classes, n_speakers, "train", centres, rng, cfg.n_clusters)
    val = synthetic_rows(n_val, dim, frames, n_classes, n_speakers, "val", centres, rng, cfg.n_clusters,
                         training=False)
    total = int(train["n_frames"].sum())
    mean = sum(a.sum(0, dtype=np.float64) for a in train["x"]) / total
    std = np.sqrt(np.maximum(sum((a.astype(np.float64) ** 2).sum(0) for a in train["x"]) / total - mean ** 2, 0))
    n_domains = n_speakers if cfg.adv_weight > 0 else 0
    model_cfg = model_config(cfg, dim, n_classes, True, n_domains, n_layers)
    plan = FoldPlan(
        fold=0, fold_id="synthetic", layer=0, inner=list(train["utt_id"]), val=list(val["utt_id"]), test=[],
        categories=[f"class{i}" for i in range(n_classes)], keep=None, input_dim=dim, n_domains=n_domains,
        domains=[f"spk{i}" for i in range(n_domains)], has_dims=bool(model_cfg["n_dims"]), model_cfg=model_cfg,
        norm_mean=mean.tolist(), norm_std=(std + 1e-5).tolist(), layers=list(range(n_layers)) if n_layers > 1 else None)
    return SyntheticFold(plan, InMemorySource(train), InMemorySource(val))
