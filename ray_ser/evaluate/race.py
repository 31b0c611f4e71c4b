"""The model against the probe baseline, paired: the probe (StandardScaler + logistic regression on mean vectors,
``ray_ser.analysis.probe``) is fitted here on the SAME outer folds and utterances as the model's predictions, its C
chosen per fold by a CV over that fold's training speakers; each fold's clean-trained probe then scores that fold's
test utterances in every condition, as the model does. The difference of their UARs gets a paired speaker-bootstrap
interval: each resample draws the same speakers for both (the draws of the model's own ``uar`` row), so what the two
share (hard speakers) cancels out of the interval.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import polars as pl

from ray_ser import metrics as M
from ray_ser.evaluate.results import METRICS_SCHEMA, PROTOCOLS
from ray_ser.evaluate.tables import _seed, list_matrix, true_index
from ray_ser.store import Store

log = logging.getLogger(__name__)

DIFFERENCE = "uar_minus_probe"
"""metrics.parquet's metric of the model's UAR minus the probe's on the same rows (paired interval)."""
PROBE = "probe_uar"
"""metrics.parquet's metric of the probe's own UAR on those rows (interval from the same draws)."""
RACE_GROUPS = ("all", "fold", "corpus")


def verdict(value: float | None, lo: float | None, hi: float | None) -> str:
    """``beats`` (the whole interval of model minus probe above 0), ``loses`` (below 0), ``ties`` (0 inside it),
    or ``no interval`` (a single speaker)."""
    if value is None or lo is None or hi is None or not np.isfinite([value, lo, hi]).all():
        return "no interval"
    return "beats" if lo > 0 else "loses" if hi < 0 else "ties"


def resolve_layers(spec: str | Sequence[int], fold_ids: Sequence[int], ranked=None) -> dict[int, list[int]]:
    """{fold: the probe's layers}: ``spec`` a list ("2,3,4" or ints) for every fold, or ``auto:K`` each fold's K best
    layers from ``ranked(fold_ids, K)`` (a callable giving {fold: layers} ranked on that fold's training speakers)."""
    if isinstance(spec, str) and spec.strip().startswith("auto:"):
        if ranked is None:
            raise ValueError(f"probe layers {spec!r}: no layer ranking to read them from")
        k = int(spec.split(":", 1)[1])
        got = ranked(list(fold_ids), k)
        return {int(f): sorted(int(v) for v in got[f]) for f in fold_ids}
    layers = [int(v) for v in (spec.split(",") if isinstance(spec, str) else spec) if str(v).strip()]
    if not layers:
        raise ValueError(f"probe layers {spec!r}: no layer")
    return {int(f): layers for f in fold_ids}


def _categorical(pred: pl.DataFrame, categories: Sequence[str]) -> pl.DataFrame:
    """The prediction rows with a true category and class probabilities."""
    y = true_index(pred, categories)
    has = np.isfinite(list_matrix(pred, "probs", len(categories))).all(axis=1)
    return pred.filter(pl.Series((y >= 0) & has))


def in_category_order(proba: np.ndarray, classes: np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """A fitted probe's probabilities (columns: its ``classes``, the category names it saw) in ``categories`` order,
    0 for a category its training rows lacked."""
    out = np.zeros((proba.shape[0], len(categories)))
    out[:, [list(categories).index(c) for c in classes]] = proba
    return out


def probe_predictions(store, model: str, pred: pl.DataFrame, categories: Sequence[str],
                      layers: Mapping[int, Sequence[int]], Cs: Sequence[float] | None = None,
                      readouts: Sequence[str] = ("none",), train_condition: str = "clean",
                      corpora: Mapping[str, str] | None = None) -> pl.DataFrame:
    """The probe's out-of-fold predictions on the rows of a model's ``pred`` (predictions.parquet layout, one
    ``fold`` per utterance): per outer fold, fitted on the ``train_condition`` mean vectors of the other folds'
    utterances (C by :func:`ray_ser.analysis.probe.inner_c` over their folds, one probe per read-out, probabilities
    averaged) and applied to the fold's own utterances in every condition of ``pred``. ``corpora`` ({utt_id: corpus},
    a ``scaler: per-corpus`` run): each corpus standardised by its own training rows' statistics in the fold, its
    test rows too (:func:`ray_ser.analysis.probe.corpus_scalers`), before the probe's own scaler. Returns condition,
    utt_id, fold, probs (in ``categories`` order)."""
    from ray_ser.analysis.probe import (DEFAULT_CS, corpus_scalers, fit_probe, inner_c, one_thread, readout,
                                        scale_by_corpus)
    from ray_ser.analysis.saliency_store import layer_matrix

    Cs = list(Cs or DEFAULT_CS)
    rows = _categorical(pred, categories)
    utt = rows.select("utt_id", "fold").unique().sort("utt_id")
    if utt["utt_id"].n_unique() != utt.height:
        raise ValueError("probe baseline: an utterance is tested in more than one fold")
    ids = utt["utt_id"].to_list()
    fold = utt["fold"].to_numpy().astype(np.int64)
    first = rows.unique("utt_id").sort("utt_id")
    y = np.asarray(categories, dtype=object)[true_index(first, categories)]  # names: the probe's own label type
    fold_ids = sorted(int(f) for f in np.unique(fold))
    if len(fold_ids) < 3:
        raise ValueError(f"probe baseline: its C is chosen by a CV over each fold's training folds, so it needs at "
                         f"least 3 outer folds, got {len(fold_ids)}")
    missing = [f for f in fold_ids if f not in layers]
    if missing:
        raise ValueError(f"probe baseline: no layers for folds {missing}")
    in_cond = {cond: sorted(part["utt_id"].to_list())
               for (cond,), part in rows.partition_by("condition", as_dict=True, maintain_order=True).items()}
    scored = list(in_cond)
    in_cond[train_condition] = ids  # the probe trains on every utterance's clean vector (its training folds')
    where = {cond: {u: i for i, u in enumerate(us)} for cond, us in in_cond.items()}
    cache: dict[tuple[str, int], np.ndarray] = {}

    def features(cond: str, Ls: Sequence[int], which: Sequence[str], r: str) -> np.ndarray:
        """The read-out ``r`` of layers ``Ls`` of ``which`` in ``cond``; each (condition, layer) read once."""
        for k in Ls:
            if (cond, k) not in cache:
                cache[cond, k] = layer_matrix(store, model, cond, k, in_cond[cond])
        at = np.asarray([where[cond][u] for u in which], dtype=np.int64)
        return np.hstack([readout(cache[cond, k][at], r) for k in Ls])

    fold_of = dict(zip(ids, fold.tolist()))
    corpus_of = None if corpora is None else np.asarray([corpora[u] for u in ids], dtype=object)

    def scaled(H: np.ndarray, which: Sequence[str], scalers) -> np.ndarray:
        """``H`` (rows ``which``) per corpus by ``scalers`` (a per-corpus run), else as it is."""
        return H if scalers is None else scale_by_corpus(H, np.asarray([corpora[u] for u in which], dtype=object),
                                                         scalers)

    out = []
    with one_thread():
        for f in fold_ids:
            train = fold != f
            fitted = []
            for r in readouts:
                H = features(train_condition, layers[f], ids, r)
                scalers = None if corpus_of is None else corpus_scalers(H, corpus_of, train)
                H = scaled(H, ids, scalers)
                C, _ = inner_c(H, y, fold, train, Cs)
                fitted.append((r, fit_probe(H, y, train, C), scalers))
            for cond in scored:
                which = [u for u in in_cond[cond] if fold_of.get(u) == f]
                if not which:
                    continue
                proba = [in_category_order(clf.predict_proba(scaled(features(cond, layers[f], which, r), which, sc)),
                                           clf.classes_, categories)
                         for r, clf, sc in fitted]
                p = np.mean(proba, axis=0)
                out.append(pl.DataFrame({"condition": cond, "utt_id": which, "fold": f,
                                         "probs": p.astype(np.float32).tolist()},
                                        schema={"condition": pl.String, "utt_id": pl.String, "fold": pl.Int32,
                                                "probs": pl.List(pl.Float32)}))
            log.info("probe baseline fold %d: layers %s, C %s", f, list(layers[f]),
                     {r: clf.named_steps["logisticregression"].C for r, clf, _ in fitted})
    return pl.concat(out) if out else pl.DataFrame(schema={"condition": pl.String, "utt_id": pl.String,
                                                           "fold": pl.Int32, "probs": pl.List(pl.Float32)})


def race_table(pred: pl.DataFrame, probe: pl.DataFrame, categories: Sequence[str], n_boot: int = 500, seed: int = 0,
               level: float = 0.95, groups: Sequence[str] = RACE_GROUPS) -> pl.DataFrame:
    """metrics.parquet rows (``METRICS_SCHEMA``) of the race: per run x condition and group ("all"; "fold": each
    outer fold; "corpus": each corpus) the model's UAR minus the probe's (:data:`DIFFERENCE`) and the probe's UAR
    (:data:`PROBE`), on the rows both predicted; intervals from the speaker resamples of the model's own ``uar``
    row of that group (same seeds), each resample scoring both systems on the same drawn speakers."""
    rows = _categorical(pred, categories)
    if "protocol" not in rows.columns:
        rows = rows.with_columns(pl.lit(PROTOCOLS[0]).alias("protocol"))
    joined = rows.join(probe.select("condition", "utt_id", pl.col("probs").alias("probe_probs")),
                       on=["condition", "utt_id"], how="left")
    lacking = joined.filter(pl.col("probe_probs").is_null())
    if lacking.height:
        raise ValueError(f"probe baseline: no prediction for {lacking.height} model rows, e.g. "
                         f"{lacking.row(0, named=True)['utt_id']} ({lacking.row(0, named=True)['condition']}); "
                         "model and probe must score the same utterances")
    c = len(categories)
    out = []
    for (run, cond, proto), part in joined.partition_by("run", "condition", "protocol", as_dict=True,
                                                          maintain_order=True).items():
        y = true_index(part, categories)
        a = list_matrix(part, "probs", c).argmax(axis=1)
        b = list_matrix(part, "probe_probs", c).argmax(axis=1)
        spk = np.asarray(part["speaker"].cast(pl.String).to_list(), dtype=object)
        selections = []
        if "all" in groups:
            selections.append(("all", "all", np.ones(part.height, bool)))
        for col in ("fold", "corpus"):
            if col in groups and col in part.columns and not (col == "fold" and (part["fold"] < 0).all()):
                values = np.asarray(part[col].cast(pl.String).to_list(), dtype=object)
                selections += [(col, v, values == v) for v in sorted({v for v in values if v is not None})]
        for group_by, group, mask in selections:
            names, codes = np.unique(spk[mask], return_inverse=True)
            s = len(names)
            ca = M.confusion_counts(codes, y[mask], a[mask], s, c)
            cb = M.confusion_counts(codes, y[mask], b[mask], s, c)
            w = M.speaker_resample_counts(s, n_boot, _seed(seed, run, cond, group_by, group)) if s >= 2 else None
            diff, reps = M.paired_difference(ca, cb, M.uar_from_confusion, w)
            base = float(M.uar_from_confusion(cb.sum(axis=0)))
            lo, hi = M.percentile_interval(reps, level) if reps is not None else (None, None)
            plo, phi = M.percentile_interval(M.uar_from_confusion(M.resample_stats(cb, w)), level) \
                if w is not None else (None, None)
            n = int(mask.sum())
            out.append((run, group_by, group, cond, DIFFERENCE, None, diff, lo, hi, n, s, proto))
            out.append((run, group_by, group, cond, PROBE, None, base, plo, phi, n, s, proto))
    table = pl.DataFrame(out, schema=METRICS_SCHEMA, orient="row")
    return table.with_columns(pl.col("value", "ci_low", "ci_high").fill_nan(None))


def race_summary(metrics: pl.DataFrame) -> pl.DataFrame:
    """condition, uar, probe_uar, difference, ci_low, ci_high, verdict of the pooled (group "all") race rows of a
    metrics table, one row per run x condition (empty when it has none)."""
    keys = ["run", "condition"]
    race = metrics.filter(pl.col("group_by") == "all", pl.col("metric").is_in([DIFFERENCE, PROBE]))
    if race.is_empty():
        return pl.DataFrame(schema={"run": pl.String, "condition": pl.String, "uar": pl.Float64,
                                    "probe_uar": pl.Float64, "difference": pl.Float64, "ci_low": pl.Float64,
                                    "ci_high": pl.Float64, "verdict": pl.String})
    model = metrics.filter(pl.col("group_by") == "all", pl.col("metric") == "uar", pl.col("k") == 1).select(
        *keys, pl.col("value").alias("uar"))
    base = race.filter(pl.col("metric") == PROBE).select(*keys, pl.col("value").alias("probe_uar"))
    diff = race.filter(pl.col("metric") == DIFFERENCE).select(*keys, pl.col("value").alias("difference"),
                                                              "ci_low", "ci_high")
    df = diff.join(base, on=keys, how="left").join(model, on=keys, how="left")
    df = df.with_columns(pl.Series("verdict", [verdict(*r) for r in df.select("difference", "ci_low", "ci_high").rows()],
                                   dtype=pl.String))
    return df.select("run", "condition", "uar", "probe_uar", "difference", "ci_low", "ci_high", "verdict")


def race_line(summary_row: Mapping, what: str = "model", probe: str = "the probe baseline") -> str:
    """One console line: the model's UAR minus the probe's with its paired interval, and the verdict."""
    d, lo, hi = summary_row["difference"], summary_row["ci_low"], summary_row["ci_high"]
    v = verdict(d, lo, hi)
    ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else ""
    words = {"beats": "beats", "loses": "loses to", "ties": "ties with", "no interval": "vs"}[v]
    tail = {"beats": "beyond the paired speaker-bootstrap interval",
            "loses": "beyond the paired speaker-bootstrap interval",
            "ties": "0 is inside the paired speaker-bootstrap interval",
            "no interval": "one speaker: no interval"}[v]
    return (f"{summary_row['condition']}: {what} {words} {probe}: UAR {summary_row['uar']:.3f} vs "
            f"{summary_row['probe_uar']:.3f}, difference {d:+.3f}{ci} ({tail})")


def race_rows(store: Store, pred: pl.DataFrame, categories: Sequence[str], config: Mapping, layers: str | Sequence[int],
              Cs: Sequence[float] | None = None, readouts: Sequence[str] = ("none",), criterion: str | None = None,
              n_boot: int = 500, seed: int = 0) -> pl.DataFrame:
    """The race rows (:func:`race_table`) of an evaluation's predictions against the probe on ``layers`` (a list, or
    ``auto:K``: each fold's K best layers by ``criterion`` on its training speakers): out of fold, the probe refitted
    per outer fold of the run's own fold assignment (:func:`probe_predictions`); zero-shot (a final model's rows),
    the probe fitted on every training row of the run and scored on the same unseen corpora
    (:func:`ray_ser.evaluate.corpus_probe.zero_shot_probe`)."""
    from ray_ser.train.config import TrainConfig

    cfg = TrainConfig(**{k: v for k, v in dict(config["train"]).items() if k in TrainConfig.model_fields})
    zero_shot = "protocol" in pred.columns and (pred["protocol"] == PROTOCOLS[1]).all()
    if zero_shot:
        from ray_ser.evaluate.corpus_probe import zero_shot_probe

        rows = _categorical(pred, categories).unique("utt_id")
        test = dict(zip(rows["utt_id"].to_list(), rows["corpus"].to_list()))
        probe = zero_shot_probe(store, cfg, test, pred["condition"].unique(maintain_order=True).to_list(),
                                categories, layers, Cs or _default_cs())
    else:
        per_fold = fold_layers(store, cfg, pred, layers, criterion)
        corpora = None
        if cfg.scaler == "per-corpus":  # each corpus by its own training statistics, as the model scaled it
            corpora = dict(pred.select("utt_id", "corpus").unique("utt_id").iter_rows())
        probe = probe_predictions(store, cfg.model, pred, categories, per_fold, Cs, readouts, corpora=corpora)
    return race_table(pred, probe, categories, n_boot=n_boot, seed=seed)


def _default_cs() -> list[float]:
    from ray_ser.analysis.probe import DEFAULT_CS

    return list(DEFAULT_CS)


def fold_layers(store: Store, cfg, pred: pl.DataFrame, layers: str | Sequence[int],
                criterion: str | None = None) -> dict[int, list[int]]:
    """{outer fold: the probe's layers} for a run's out-of-fold predictions; with ``auto:K`` ranked on each fold's
    training speakers under the run's own fold assignment, which must be the one its predictions came from."""
    fold_ids = sorted(int(f) for f in pred["fold"].unique().to_list())

    def ranked(folds, k):
        from ray_ser.analysis.layer_selection import DEFAULT_CRITERION, ranked_layers
        from ray_ser.train.plan import resolve_assignment

        assignment = resolve_assignment(cfg, store)
        fold_of = assignment.fold_of()
        pairs = pred.select("utt_id", "fold").unique()
        wrong = [u for u, f in pairs.iter_rows() if fold_of.get(u) != f]
        if wrong:
            raise ValueError(f"probe baseline: the run's fold assignment {assignment.id} puts {len(wrong)} predicted "
                             f"utterances in other folds (e.g. {wrong[0]}); the probe must race on the model's folds")
        got, source = ranked_layers(store, cfg.model, assignment, folds, k, criterion=criterion or DEFAULT_CRITERION)
        log.info("probe baseline layers per fold from %s: %s", source, got)
        return got

    return resolve_layers(layers, fold_ids, ranked)
