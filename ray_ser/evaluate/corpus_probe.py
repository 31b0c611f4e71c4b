"""The linear-probe bar of the cross-corpus matrix: for each held-out corpus, a logistic-regression probe on the
pooled mean vectors of the layers the layer criterion ranks best on the training corpora, fitted on every
training corpus (C by inner cross-validation over their speakers' folds) and scored zero-shot on the held-out one.
Each corpus is standardised by its own statistics (``per-corpus``; the held-out corpus by its own unlabelled
statistics in each condition) or all by the training rows' (``global``). Rows come back in the matrix layout, with
speaker-bootstrap intervals from the evaluation tables."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import polars as pl

from ray_ser.analysis.probe import DEFAULT_CS, fit_probe, inner_c
from ray_ser.analysis.saliency_store import layer_matrix
from ray_ser.evaluate.matrix import MATRIX_SCHEMA, cells


def _features(store, model: str, condition: str, layers: Sequence[int], utts: Sequence[str]) -> np.ndarray:
    return np.hstack([layer_matrix(store, model, condition, layer, utts) for layer in layers]).astype(np.float64)


def _standardise(H: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    out = H.copy()
    groups = np.asarray(groups, dtype=object)
    for g in set(groups.tolist()):
        rows = groups == g
        out[rows] = (H[rows] - H[rows].mean(0)) / (H[rows].std(0) + 1e-8)
    return out


def loco_probe(store: str, model: str, corpora: Sequence[str], label_set: str | Sequence[str] = "four",
               scaler: str = "per-corpus", n_layers: int = 3, conditions: Sequence[str] = ("clean",),
               n_boot: int = 500, Cs: Sequence[float] = DEFAULT_CS) -> pl.DataFrame:
    """Matrix rows (train_corpora = the other corpora, test_corpus = the held-out one, protocol zero-shot) of the
    probe for every held-out corpus and condition."""
    from ray_ser.corpora.label_sets import resolve
    from ray_ser.evaluate.tables import metric_table
    from ray_ser.train.config import TrainConfig
    from ray_ser.train.plan import auto_layers, resolve_assignment, run_rows

    categories = resolve(label_set)
    parts = []
    for held in corpora:
        train = [c for c in corpora if c != held]
        cfg = TrainConfig(store=store, model=model, corpora=train, label_set=categories, auto_layers=n_layers)
        assignment = resolve_assignment(cfg)
        layers = auto_layers(cfg, assignment, [-1])[-1]  # ranked on the training corpora's speakers only
        fold_of = assignment.fold_of()
        rows = run_rows(cfg)
        utts = [u for u in sorted(rows) if rows[u]["label"] is not None]
        y = np.asarray([rows[u]["label"] for u in utts], dtype=object)
        H = _features(store, model, "clean", layers, utts)
        if scaler == "per-corpus":
            H = _standardise(H, [rows[u]["corpus"] for u in utts])
        fold = np.asarray([fold_of[u] for u in utts])
        C, _ = inner_c(H, y, fold, np.ones(len(utts), bool), Cs)
        clf = fit_probe(H, y, np.ones(len(utts), bool), C)
        test_rows = run_rows(cfg.model_copy(update={"corpora": [held]}))
        test = [u for u in sorted(test_rows) if test_rows[u]["label"] is not None]
        order = [list(clf.classes_).index(c) if c in clf.classes_ else None for c in categories]
        for cond in conditions:
            Ht = _features(store, model, cond, layers, test)
            if scaler == "per-corpus":
                Ht = _standardise(Ht, [held] * len(test))
            p = clf.predict_proba(Ht)
            probs = np.stack([p[:, i] if i is not None else np.zeros(len(test)) for i in order], 1)
            pred = pl.DataFrame({"run": f"probe-{scaler}", "condition": cond, "utt_id": test,
                                 "speaker": [test_rows[u]["speaker"] for u in test],
                                 "corpus": held, "label": [test_rows[u]["label"] for u in test],
                                 "probs": probs.astype(np.float32).tolist(), "protocol": "zero-shot"})
            m = metric_table(pred, categories, n_boot=n_boot)
            parts.append(cells(m, train, [held]))
    return pl.concat(parts).cast(MATRIX_SCHEMA) if parts else pl.DataFrame(schema=MATRIX_SCHEMA)
