"""Synthetic predictions with known structure, in the predictions.parquet schema: for tests, for trying the
tables, report and Polars queries without a trained model, and as an executable example of the schema.

Each speaker has a skill; each condition scales it down (clean > 25dB > 15dB > 5dB). The model's logits put
``2 * skill`` on the true class and ``1 * skill`` on a fixed confusable class ((y + 1) mod C), plus unit noise,
so 2-best is clearly better than 1-best and weak speakers fall below 0.5 UAR in noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

CATEGORIES = ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]
CONDITIONS = ("clean", "25dB", "15dB", "5dB")
SNR_DB = {"clean": None, "25dB": 25.0, "15dB": 15.0, "5dB": 5.0}
CONDITION_FACTOR = {"clean": 1.0, "25dB": 0.9, "15dB": 0.7, "5dB": 0.4}
AROUSAL_OF_CLASS = [4.5, 1.5, 3.0, 4.0, 4.0, 2.5, 1.5]  # on a 1-5 Likert scale


def synthetic_predictions(n_speakers: int = 10, n_per_class: int = 4, categories: Sequence[str] = CATEGORIES,
                          conditions: Sequence[str] = CONDITIONS, run: str = "synthetic", seed: int = 0,
                          skill_range: tuple[float, float] = (0.4, 3.0), dims: bool = True) -> pl.DataFrame:
    """A predictions table (one row per condition x utterance, every speaker in its own fold) with known
    structure: see the module docstring. Genders alternate (even speakers male); ``intensity`` is an
    extra manifest-style column ("low"/"high") for ``--by``."""
    rng = np.random.default_rng(seed)
    c = len(categories)
    skills = rng.permutation(np.linspace(*skill_range, n_speakers))
    y = np.tile(np.repeat(np.arange(c), n_per_class), n_speakers)
    spk = np.repeat(np.arange(n_speakers), c * n_per_class)
    n = y.size
    utt = [f"s{s:02d}_{i:03d}" for s, i in zip(spk, np.tile(np.arange(c * n_per_class), n_speakers))]
    pdf = np.full((n, c), 0.4 / (c - 1))
    pdf[np.arange(n), y] = 0.6
    arousal = np.asarray([AROUSAL_OF_CLASS[i % len(AROUSAL_OF_CLASS)] for i in y]) + rng.normal(0, 0.4, n)
    valence = np.clip(3 + rng.normal(0, 1, n), 1, 5)
    frames = []
    for cond in conditions:
        f = CONDITION_FACTOR.get(cond, 0.5) * skills[spk]
        logits = rng.normal(0, 1, (n, c))
        logits[np.arange(n), y] += 2 * f
        logits[np.arange(n), (y + 1) % c] += f
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        snr = SNR_DB.get(cond)
        noise = 0.3 + 0.8 * (1 - CONDITION_FACTOR.get(cond, 0.5))
        cols = {
            "run": run, "fold": spk.astype(np.int32), "condition": cond,
            "snr_db": None if snr is None else (snr + rng.uniform(-5, 5, n)).astype(np.float32),
            "utt_id": utt, "speaker": [f"s{s:02d}" for s in spk],
            "gender": ["male" if s % 2 == 0 else "female" for s in spk], "corpus": "synthetic",
            "label": [categories[i] for i in y], "label_index": y.astype(np.int32),
            "pdf": pdf.astype(np.float32).tolist(), "has_votes": True,
            "probs": probs.astype(np.float32).tolist(), "pred": [categories[i] for i in probs.argmax(axis=1)],
        }
        if dims:
            cols |= {"arousal": arousal, "valence": valence, "dominance": None,
                     "pred_arousal": 3 + 0.8 * (arousal - 3) + rng.normal(0, noise, n),
                     "pred_valence": 3 + 0.3 * (valence - 3) + rng.normal(0, noise, n), "pred_dominance": None}
        cols["intensity"] = np.where(np.arange(n) % 2 == 0, "low", "high")
        frames.append(pl.DataFrame(cols).with_columns(
            pl.col("snr_db").cast(pl.Float32), pl.col("pdf", "probs").cast(pl.List(pl.Float32)),
            *([pl.col(d).cast(pl.Float32) for d in
               ("arousal", "valence", "dominance", "pred_arousal", "pred_valence", "pred_dominance")] if dims else [])))
    return pl.concat(frames)


def write_synthetic_eval(out_dir: str | Path, run: str = "synthetic", n_boot: int = 200, report: bool = False,
                         **kwargs) -> Path:
    """An evaluation folder like ``jobs/evaluate.py --out`` writes (predictions, metrics, confusion and, with
    ``report``, the HTML report) from ``synthetic_predictions(run=run, **kwargs)``."""
    from ray_ser.evaluate.results import write_parquet
    from ray_ser.evaluate.tables import write_tables

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cats = list(kwargs.get("categories", CATEGORIES))
    df = synthetic_predictions(run=run, **kwargs)
    config = {"run": run, "synthetic": True, "seed": kwargs.get("seed", 0), "n_speakers": kwargs.get("n_speakers", 10)}
    write_parquet(df, out / "predictions.parquet", {"ray_ser.categories": json.dumps(cats),
                                                     "ray_ser.run_config": json.dumps(config)})
    paths = write_tables(out / "predictions.parquet", out, by=["intensity"], n_boot=n_boot)
    if report:
        from ray_ser.evaluate.report import write_report

        write_report(out, df, paths["metrics"], paths["confusion"], config)
    return out
