"""The linear-probe bar of the cross-corpus matrix: for each held-out corpus, a logistic-regression probe on the
pooled mean vectors of the layers the layer criterion ranks best on the training corpora, fitted on every
training corpus (C by inner cross-validation over their speakers' folds) and scored zero-shot on the held-out one.
Each corpus is standardised by its own statistics (``per-corpus``; the held-out corpus by its own unlabelled
statistics in each condition) or all by the training rows' (``global``). Rows come back in the matrix layout, with
speaker-bootstrap intervals from the evaluation tables; :func:`zero_shot_probe` gives the per-utterance
predictions the zero-shot evaluation races each matrix cell against (``ray_ser.evaluate.race``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import polars as pl

from ray_ser.analysis.probe import DEFAULT_CS, fit_probe, inner_c
from ray_ser.analysis.saliency_store import layer_matrix
from ray_ser.evaluate.matrix import MATRIX_SCHEMA, cells
from ray_ser.store import Store


def _features(store: Store, model: str, condition: str, layers: Sequence[int], utts: Sequence[str]) -> np.ndarray:
    return np.hstack([layer_matrix(store, model, condition, layer, utts) for layer in layers]).astype(np.float64)


def _standardise(H: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    out = H.copy()
    groups = np.asarray(groups, dtype=object)
    for g in set(groups.tolist()):
        rows = groups == g
        out[rows] = (H[rows] - H[rows].mean(0)) / (H[rows].std(0) + 1e-8)
    return out


def zero_shot_probe(store: Store, cfg, test: dict[str, str], conditions: Sequence[str], categories: Sequence[str],
                    layers: str | Sequence[int] = "auto:3", Cs: Sequence[float] = DEFAULT_CS,
                    scaler: str | None = None) -> pl.DataFrame:
    """The probe's zero-shot predictions (condition, utt_id, fold -1, probs in ``categories`` order) on ``test``
    ({utt_id: corpus}) in every condition: fitted on the clean mean vectors of every training row of ``cfg`` (a
    ``TrainConfig``: its corpora and label set), C by inner CV over their speakers' folds, on ``layers`` (a list, or
    ``auto:K``: the K best on the training corpora's speakers, what ``--auto-layers K`` reads). ``scaler``
    (default the run's): ``per-corpus`` standardises each corpus by its own statistics (a test corpus by its own, in
    each condition, no labels), else the pipeline's scaler on the training rows."""
    from ray_ser.evaluate.race import in_category_order, resolve_layers
    from ray_ser.train.plan import auto_layers, resolve_assignment, run_rows

    from ray_ser.corpora.folds import ALL_SPEAKERS

    scaler = scaler or getattr(cfg, "scaler", None) or "global"
    assignment = resolve_assignment(cfg, store)
    use = resolve_layers(layers, [ALL_SPEAKERS],
                         lambda folds, k: auto_layers(cfg.model_copy(update={"auto_layers": k}), assignment, folds)
                         )[ALL_SPEAKERS]
    fold_of = assignment.fold_of()
    rows = run_rows(cfg, store)
    index = {c: i for i, c in enumerate(categories)}
    utts = [u for u in sorted(rows) if rows[u]["label"] in index]
    y = np.asarray([rows[u]["label"] for u in utts], dtype=object)
    H = _features(store, cfg.model, "clean", use, utts)
    if scaler == "per-corpus":
        H = _standardise(H, [rows[u]["corpus"] for u in utts])
    fold = np.asarray([fold_of[u] for u in utts])
    everyone = np.ones(len(utts), bool)
    C, _ = inner_c(H, y, fold, everyone, Cs)
    clf = fit_probe(H, y, everyone, C)
    ids = sorted(test)
    out = []
    for cond in conditions:
        Ht = _features(store, cfg.model, cond, use, ids)
        if scaler == "per-corpus":
            Ht = _standardise(Ht, [test[u] for u in ids])
        p = in_category_order(clf.predict_proba(Ht), clf.classes_, categories)
        out.append(pl.DataFrame({"condition": cond, "utt_id": ids, "fold": ALL_SPEAKERS,
                                 "probs": p.astype(np.float32).tolist()},
                                schema={"condition": pl.String, "utt_id": pl.String, "fold": pl.Int32,
                                        "probs": pl.List(pl.Float32)}))
    return pl.concat(out)


def loco_probe(store: Store, model: str, corpora: Sequence[str], label_set: str | Sequence[str] = "four",
               scaler: str = "per-corpus", n_layers: int = 3, conditions: Sequence[str] = ("clean",),
               n_boot: int = 500, Cs: Sequence[float] = DEFAULT_CS) -> pl.DataFrame:
    """Matrix rows (train_corpora = the other corpora, test_corpus = the held-out one, protocol zero-shot) of the
    probe for every held-out corpus and condition (:func:`zero_shot_probe`)."""
    from ray_ser.corpora.label_sets import resolve
    from ray_ser.evaluate.tables import metric_table
    from ray_ser.train.config import TrainConfig
    from ray_ser.train.plan import run_rows

    categories = resolve(label_set)
    parts = []
    for held in corpora:
        train = [c for c in corpora if c != held]
        cfg = TrainConfig(store=store.uri, model=model, corpora=train, label_set=categories, auto_layers=n_layers)
        test_rows = run_rows(cfg.model_copy(update={"corpora": [held]}), store)
        test = {u: held for u in sorted(test_rows) if test_rows[u]["label"] is not None}
        probe = zero_shot_probe(store, cfg, test, conditions, categories, f"auto:{n_layers}", Cs, scaler)
        pred = probe.with_columns(pl.lit(f"probe-{scaler}").alias("run"),
                                  pl.col("utt_id").replace_strict({u: test_rows[u]["speaker"] for u in test}).alias("speaker"),
                                  pl.lit(held).alias("corpus"),
                                  pl.col("utt_id").replace_strict({u: test_rows[u]["label"] for u in test}).alias("label"),
                                  pl.lit("zero-shot").alias("protocol"))
        for cond in conditions:
            m = metric_table(pred.filter(pl.col("condition") == cond), categories, n_boot=n_boot)
            parts.append(cells(m, train, [held]))
    return pl.concat(parts).cast(MATRIX_SCHEMA) if parts else pl.DataFrame(schema=MATRIX_SCHEMA)
