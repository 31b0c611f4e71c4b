"""Out-of-fold batch predictions with Ray Data: each outer fold's best checkpoint predicts that fold's test
speakers only, for every evaluation condition in the store, so the folds together predict each
utterance x condition exactly once. Rows follow ``predictions.parquet`` (see the README's evaluation section).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from ray_ser.corpora.folds import ALL_SPEAKERS as FINAL  # the final model's fold (ray_ser.train.checkpoints.FINAL)
from ray_ser.corpora.manifest import CATEGORIES_KEY, DIMENSIONS
from ray_ser.errors import InputError
from ray_ser.storage import run_path, snapshot
from ray_ser.store import Store

log = logging.getLogger(__name__)

RUN_CONFIG_KEY = b"ray_ser.run_config"
TRAINING_ONLY = ("aug",)
"""Condition prefixes that are training copies (augmentation), never evaluated."""


class FoldPredictor:
    """Ray Data actor: loads one fold's best model once (on the GPU when the actor has one) and maps batches of
    :func:`ray_ser.train.reader.frames_dataset` rows to class probabilities and A/V/D predictions. It opens no
    store (the rows come with the batches, the checkpoint by path, opened with the driver's ``storage`` options)."""

    def __init__(self, checkpoint: str, threads: int = 1, storage: dict | None = None):
        import torch

        from ray_ser import storage as storage_options
        from ray_ser.train.checkpoints import load_fold_model

        storage_options.restore(storage)  # the driver's: a checkpoint on the object store opens with them

        from ray_ser.fm.base import pick_device

        torch.set_num_threads(max(1, threads))
        self.device = pick_device()
        self.fm = load_fold_model(checkpoint)
        self.fm.module.to(self.device)

    def __call__(self, batch: dict) -> dict:
        import torch

        from ray_ser.train.reader import collate

        x = collate(batch, self.device)
        with torch.no_grad():
            out = self.fm.module(x["x"], x["lengths"])
        return prediction_rows(batch["utt_id"], batch["condition"], out)


def prediction_rows(utt_ids, conditions, out: dict):
    """One Arrow table of a batch's predictions: utt_id, condition, probs (list<float32>, when the model has a
    categorical head) and pred_arousal/valence/dominance (NaN without a dimensional head). Arrow, not numpy, so
    the driver gathers compact columns instead of one ndarray object per row."""
    import pyarrow as pa
    import torch

    n = len(utt_ids)
    cols = {"utt_id": pa.array([str(u) for u in utt_ids], pa.string()),
            "condition": pa.array([str(c) for c in conditions], pa.string())}
    if "logits" in out:
        p = torch.softmax(out["logits"].float(), -1).cpu().numpy().astype(np.float32)
        cols["probs"] = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * p.shape[1]),
                                                 pa.array(p.reshape(-1)))
    d = out["dims"].float().cpu().numpy() if "dims" in out else np.full((n, len(DIMENSIONS)), np.nan, np.float32)
    for j, name in enumerate(DIMENSIONS):
        cols[f"pred_{name}"] = pa.array(d[:, j].astype(np.float32))
    return pa.table(cols)


def evaluation_conditions(store: Store, model: str) -> list[str]:
    """The stored conditions of ``model`` that evaluation scores (augmentation copies are training-only)."""
    import pyarrow.compute as pc

    t = store.embeddings(model).to_lance().to_table(columns=["condition"], filter="layer = 0")
    conds = sorted(pc.unique(t.column("condition")).to_pylist())
    return [c for c in conds if not c.startswith(TRAINING_ONLY)]


def _snr_of(store: Store, model: str, utt_ids: Sequence[str], conditions: Sequence[str]) -> dict[tuple[str, str], float | None]:
    from ray_ser.store import catalog

    t = store.embeddings(model).to_lance().to_table(
        columns=["utt_id", "condition", "snr_db"], filter=catalog.where(layer=0, condition=list(conditions), utt_id=list(utt_ids)))
    return {(u, c): s for u, c, s in zip(*(t.column(k).to_pylist() for k in ("utt_id", "condition", "snr_db")))}


def predict_fold(store: Store, checkpoint: str | Path, conditions: Sequence[str] | None = None,
                 batch_size: int = 32, num_gpus: float = 0.0, cpus: float = 1.0, fm=None,
                 utt_ids: Sequence[str] | None = None, scale: dict | None = None,
                 dim_scale: dict | None = None) -> pl.DataFrame:
    """Predictions of one fold's checkpoint on its test speakers (or on ``utt_ids``), for ``conditions`` (default:
    every evaluation condition of the store): utt_id, condition, fold, model, probs (temperature-scaled by the
    checkpoint's temperature, recorded in ``temperature``), pred_arousal/valence/dominance.
    The per-corpus scaler is the checkpoint's, or ``scale`` (a zero-shot corpus's own statistics). A/V/D predictions
    are mapped back from the training range to each corpus's own scale: the checkpoint's ``dim_scale``, with
    ``dim_scale`` (a zero-shot corpus's) over it."""
    from ray_ser.train.checkpoints import load_fold_model
    from ray_ser.train.reader import frames_dataset, load_labels

    fm = fm or load_fold_model(checkpoint, store=store)  # the caller's already-loaded copy, when it has one
    conds = list(conditions) if conditions else evaluation_conditions(store, fm.cfg.model)
    utts = list(fm.plan.test if utt_ids is None else utt_ids)
    labels = load_labels(store, utts, label_set=fm.cfg.label_set)
    ds = frames_dataset(store, fm.cfg.model, fm.plan.read_layers, utts, labels, conditions=conds, mask=fm.mask(store),
                        scale=scale if scale is not None else fm.plan.corpus_norm)
    ds = ds.map_batches(FoldPredictor, fn_constructor_kwargs={"checkpoint": str(checkpoint),
                                                              "threads": max(1, int(cpus)), "storage": snapshot()},
                        batch_size=batch_size, batch_format="numpy", concurrency=1, num_cpus=cpus, num_gpus=num_gpus)
    parts = [pl.from_arrow(b) for b in ds.iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
    df = pl.concat(parts) if parts else pl.DataFrame()
    back = {**(fm.plan.dim_scale or {}), **(dim_scale or {})}
    if back and df.height:
        from ray_ser.train.reader import scale_dims

        names = [f"pred_{d}" for d in DIMENSIONS]
        corpora = [labels.rows[u]["corpus"] for u in df["utt_id"].to_list()]
        raw = scale_dims(df.select(names).to_numpy(), corpora, back, inverse=True)
        df = df.with_columns(*[pl.Series(n, raw[:, j].astype(np.float32)) for j, n in enumerate(names)])
    if fm.temperature is not None and "probs" in df.columns and df.height:
        from ray_ser.evaluate.tables import list_matrix
        from ray_ser.train.calibration import scale

        p = scale(list_matrix(df, "probs", len(df["probs"][0])), fm.temperature).astype(np.float32)
        df = df.with_columns(pl.Series("probs", p.tolist(), dtype=pl.List(pl.Float32)))
    return df.with_columns(pl.lit(fm.plan.fold, pl.Int32).alias("fold"),
                           pl.lit("final" if fm.plan.fold == FINAL else "fold").alias("model"),
                           pl.lit(fm.temperature, pl.Float32).alias("temperature"))


def manifest_columns(store: Store, by: Sequence[str] = (), label_set: Sequence[str] | None = None) -> pl.DataFrame:
    """Per utterance: speaker, gender, corpus, label, pdf, A/V/D, has_votes, and each ``by`` column (a manifest
    column, a key of its ``extra`` JSON, or ``<numeric>_bin``: tertiles low/mid/high of that number). With a
    ``label_set`` the label and pdf are the utterance's in that set (null outside it)."""
    m = pl.from_arrow(store.manifests())
    if label_set is not None:
        m = in_label_set(store, m, label_set)
    extra = [json.loads(e) if e else {} for e in m["extra"].to_list()] if "extra" in m.columns else [{}] * m.height
    out = m.select("utt_id", "speaker", "gender", "corpus", "label", "pdf", *DIMENSIONS,
                   (pl.col("n_raters").is_not_null() | pl.col("votes").is_not_null()).alias("has_votes"))
    for col in by:
        if col in m.columns:
            values = m[col]
        elif any(col in e for e in extra):
            values = pl.Series(col, [e.get(col) for e in extra])
        elif col.endswith("_bin") and any(col[:-4] in e for e in extra):
            raw = np.array([e.get(col[:-4]) if e.get(col[:-4]) is not None else np.nan for e in extra], float)
            lo, hi = np.nanquantile(raw, [1 / 3, 2 / 3])
            values = pl.Series(col, [None if np.isnan(v) else ("low" if v <= lo else "mid" if v <= hi else "high") for v in raw])
        else:
            raise ValueError(f"--by {col}: no such manifest column or extra key (and no {col[:-4]!r} to bin)")
        out = out.with_columns(values.alias(col))
    return out


def in_label_set(store: Store, m: pl.DataFrame, label_set: Sequence[str]) -> pl.DataFrame:
    """Manifest rows with ``label`` and ``pdf`` mapped into ``label_set`` (null where a row falls outside it)."""
    from ray_ser.corpora.label_sets import map_row

    own = {c: store.categories(c) for c in m["corpus"].unique().to_list()}
    mapped = [map_row(c, own[c], lab, pdf, label_set)
              for c, lab, pdf in zip(m["corpus"].to_list(), m["label"].to_list(), m["pdf"].to_list())]
    return m.with_columns(pl.Series("label", [x.label for x in mapped], dtype=pl.Utf8),
                          pl.Series("pdf", [x.pdf for x in mapped], dtype=pl.List(pl.Float32)))


def predict_run(store: Store, run_dir: str | Path, conditions: Sequence[str] | None = None, by: Sequence[str] = (),
                batch_size: int = 32) -> tuple[pl.DataFrame, list[str], dict]:
    """(predictions, categories, run config) of every fold checkpoint of a training run folder: one row per
    (fold, condition, test utterance) in the ``predictions.parquet`` layout."""
    import ray

    from ray_ser import console
    from ray_ser.train.checkpoints import fold_checkpoints, load_fold_model

    run_dir = run_path(run_dir)
    checkpoints = fold_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no fold_*/best checkpoints (train with jobs/train.py --out {run_dir})")
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0  # GPUs alive only: never a new node
    parts, categories, config = [], None, None
    seen: dict[str, int] = {}
    bar = console.progress(len(checkpoints), "predict folds", "fold")
    for fold, path in sorted(checkpoints.items()):
        bar.set_postfix_str(f"fold {fold}")
        fm = load_fold_model(path, store=store)
        for u in fm.plan.test:
            if u in seen:
                raise ValueError(f"{u} is a test utterance of folds {seen[u]} and {fold}: not one fold assignment")
            seen[u] = fold
        categories = categories or fm.plan.categories
        config = config or {"train": fm.cfg.model_dump(), "fold_id": fm.plan.fold_id}
        if fm.plan.categories != categories:
            raise ValueError(f"{path}: categories {fm.plan.categories} differ from the other folds' {categories}")
        parts.append(predict_fold(store, path, conditions, batch_size, num_gpus=gpus, fm=fm))
        log.info("fold %d: %d predictions", fold, parts[-1].height)
        bar.update(1)
    bar.close()
    pred = pl.concat(parts, how="diagonal_relaxed")
    return _finish(store, pred, categories, config, run_dir, by, "out-of-fold"), categories, config


class TrainedOnCorpus(InputError):
    """A zero-shot request for a corpus the run trained on (those are scored out of fold)."""


def zero_shot_utterances(store: Store, fm, corpora: Sequence[str], report=None) -> dict[str, str]:
    """The utterances of ``corpora`` a final model scores zero-shot: every labelled utterance whose label falls in
    the run's label set (the others counted in ``report``), as {utt_id: corpus}. A corpus the model trained on is
    refused, naming it."""
    from ray_ser.train.plan import corpus_rows

    trained = sorted(fm.plan.corpus_counts or fm.cfg.corpora or {u.split("/")[0] for u in fm.plan.inner})
    seen = [c for c in corpora if c in trained]
    if seen:
        raise TrainedOnCorpus(f"corpus {seen[0]}: run {fm.path.parent.parent} trained on it ({', '.join(trained)}); "
                              "zero-shot scoring is for corpora a run never saw (its own corpora are scored out of fold "
                              "by jobs/evaluate.py --run DIR without --corpus)")
    rows = corpus_rows(store, corpora, fm.cfg.label_set, report)
    if fm.cfg.label_set is None:
        for c in corpora:
            if store.categories(c) and store.categories(c) != fm.plan.categories:  # [] : A/V/D alone, any run
                raise ValueError(f"corpus {c}: categories {store.categories(c)} differ from the run's {fm.plan.categories} "
                                 "and the run has no label set: train it with --label-set to score other corpora")
    return {u: rows[u]["corpus"] for u in sorted(rows)}


def predict_zero_shot(store: Store, run_dir: str | Path, corpora: Sequence[str], conditions: Sequence[str] | None = None,
                      by: Sequence[str] = (), batch_size: int = 32, report=None) -> tuple[pl.DataFrame, list[str], dict]:
    """(predictions, categories, run config) of a run's final model (``DIR/final/best``) on ``corpora`` it never
    trained on, every evaluation condition; with the per-corpus scaler each corpus is standardised by its own
    statistics in each condition (its frames only, no labels)."""
    import ray

    from ray_ser.train.checkpoints import final_checkpoint, load_fold_model
    from ray_ser.train.reader import frame_stats

    run_dir = run_path(run_dir)
    path = final_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir}: no final model (final/best): train it with jobs/train.py --final "
                                f"--out {run_dir}")
    fm = load_fold_model(path, store=store)
    utts = zero_shot_utterances(store, fm, corpora, report)
    if not utts:
        raise ValueError(f"corpora {', '.join(corpora)}: no utterance has a label in the run's set {fm.plan.categories}")
    conds = list(conditions) if conditions else evaluation_conditions(store, fm.cfg.model)
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0  # GPUs alive only: never a new node
    config = {"train": fm.cfg.model_dump(), "fold_id": fm.plan.fold_id, "zero_shot": list(corpora)}
    by_corpus: dict[str, list[str]] = {}
    for u, c in utts.items():
        by_corpus.setdefault(c, []).append(u)
    dim_scale = zero_shot_dim_scale(store, fm, utts) if fm.plan.dim_scale else None
    if dim_scale:
        config["zero_shot_dim_scale"] = dim_scale
    parts = []
    for cond in conds:
        scale = None
        if fm.plan.corpus_norm is not None:
            scale = {c: [v.tolist() for v in frame_stats(store, fm.cfg.model, fm.plan.read_layers, us, [cond],
                                                         fm.plan.keep)] for c, us in by_corpus.items()}
        parts.append(predict_fold(store, path, [cond], batch_size, num_gpus=gpus, fm=fm, utt_ids=list(utts), scale=scale,
                                  dim_scale=dim_scale))
    pred = pl.concat(parts, how="diagonal_relaxed")
    return _finish(store, pred, fm.plan.categories, config, run_dir, by, "zero-shot"), fm.plan.categories, config


def zero_shot_dim_scale(store: Store, fm, utts: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    """The scale each zero-shot corpus's A/V/D predictions are mapped back to: the range its manifest's values
    span (its annotation scale, 1-3, 1-7, ...: no prediction is compared with a label to choose it); a corpus
    without A/V/D values takes the training corpus's scale when the run trained on one corpus."""
    from ray_ser.train.reader import dim_ranges, load_labels

    rows = load_labels(store, list(utts)).rows
    out = dim_ranges(rows, list(utts))
    trained = fm.plan.dim_scale or {}
    for corpus in sorted(set(utts.values())):
        if corpus not in out and len(trained) == 1:
            out[corpus] = dict(next(iter(trained.values())))
        elif corpus not in out:
            log.warning("zero-shot corpus %s has no A/V/D values and the run trained on %d corpora: its A/V/D "
                        "predictions stay on the training range [-1, 1]", corpus, len(trained))
    return out


def _finish(store: Store, pred: pl.DataFrame, categories: list[str], config: dict, run_dir: str | Path, by: Sequence[str],
            protocol: str) -> pl.DataFrame:
    """Predictions joined with their manifest rows (labels in the run's label set), SNR, run and protocol, in the
    ``predictions.parquet`` column order."""
    run_dir = run_path(run_dir)
    snr = _snr_of(store, config["train"]["model"], pred["utt_id"].unique().to_list(), pred["condition"].unique().to_list())
    pred = pred.with_columns(pl.Series("snr_db", [snr.get((u, c)) for u, c in zip(pred["utt_id"], pred["condition"])],
                                       dtype=pl.Float32))
    meta = manifest_columns(store, by, config["train"].get("label_set"))
    index = {c: i for i, c in enumerate(categories)}
    if "probs" not in pred.columns:  # a model without a categorical head (a dimensional-only run)
        pred = pred.with_columns(pl.lit(None, pl.List(pl.Float32)).alias("probs"))
    pred = pred.join(meta, on="utt_id", how="left").with_columns(
        pl.lit((run_dir.resolve() if isinstance(run_dir, Path) else run_dir).name).alias("run"),
        pl.col("label").replace_strict(index, default=None, return_dtype=pl.Int32).alias("label_index"),
        pl.col("probs").list.arg_max().replace_strict(dict(enumerate(categories)), default=None,
                                                      return_dtype=pl.Utf8).alias("pred"))
    pred = pred.with_columns(pl.lit(protocol).alias("protocol"))
    front = ["run", "fold", "condition", "snr_db", "utt_id", "speaker", "gender", "corpus", "label", "label_index",
             "pdf", "has_votes", "probs", "pred", *DIMENSIONS, *[f"pred_{d}" for d in DIMENSIONS], "model", "protocol",
             "temperature"]
    if "temperature" not in pred.columns:
        pred = pred.with_columns(pl.lit(None, pl.Float32).alias("temperature"))
    return pred.select(front + [c for c in pred.columns if c not in front]).sort(["fold", "condition", "utt_id"])


ROW_KEYS = ["fold", "condition", "utt_id"]
"""What identifies a prediction row within one run: an ensemble matches its members on these."""


def ensemble_predictions(members: Sequence[tuple[pl.DataFrame, list[str], dict]]) -> tuple[pl.DataFrame, list[str], dict]:
    """One prediction table from several runs' (predictions, categories, config) of the same fold assignment: the
    members' class probabilities (each temperature-scaled) and A/V/D predictions averaged per (fold, condition,
    utterance), ``pred`` taken from the mean; ``temperature`` is null (no one temperature undoes a mean). Seed or layer ensembles: every member must predict the same rows with the same categories."""
    if not members:
        raise ValueError("an ensemble needs at least one run")
    if len(members) == 1:
        return members[0]
    from ray_ser.evaluate.tables import list_matrix

    first, categories, config = members[0]
    names = [m[0]["run"][0] if m[0].height else "?" for m in members]
    first = first.sort(ROW_KEYS)
    keys = first.select(ROW_KEYS)
    probs, dims = [], {d: [] for d in DIMENSIONS}
    for (pred, cats, cfg), name in zip(members, names):
        if cats != categories:
            raise ValueError(f"run {name}: categories {cats} differ from run {names[0]}'s {categories}")
        if cfg.get("fold_id") != config.get("fold_id"):
            raise ValueError(f"run {name}: fold assignment {cfg.get('fold_id')} is not run {names[0]}'s "
                             f"{config.get('fold_id')}; an ensemble averages predictions of the same folds")
        pred = pred.sort(ROW_KEYS)
        if not pred.select(ROW_KEYS).equals(keys):
            raise ValueError(f"run {name}: predicts other (fold, condition, utterance) rows than run {names[0]} "
                             "(other folds or conditions)")
        probs.append(list_matrix(pred, "probs", len(categories)))
        for d in DIMENSIONS:
            dims[d].append(pred[f"pred_{d}"].to_numpy().astype(np.float64))
    mean = np.mean(probs, axis=0)
    has = np.isfinite(mean).all(axis=1) & (mean.shape[1] > 0)  # rows the members gave class probabilities
    out = first.with_columns(
        pl.lit("+".join(names)).alias("run"),
        pl.Series("probs", [m.tolist() if h else None for m, h in zip(mean.astype(np.float32), has)],
                  dtype=pl.List(pl.Float32)),
        pl.Series("pred", [categories[int(np.argmax(m))] if h else None for m, h in zip(mean, has)], dtype=pl.Utf8),
        *[pl.Series(f"pred_{d}", np.mean(dims[d], axis=0).astype(np.float32)) for d in DIMENSIONS],
        *([pl.lit(None, pl.Float32).alias("temperature")] if "temperature" in first.columns else []))
    config = {**config, "ensemble": [{"run": n, "train": m[2].get("train")} for n, m in zip(names, members)]}
    return out, categories, config


def write_predictions(pred: pl.DataFrame, categories: list[str], config: dict, path: str | Path) -> Path:
    """``predictions.parquet`` with the category list and run configuration in the schema metadata; atomic."""
    import pyarrow.parquet as pq

    path = Path(path)
    table = pred.to_arrow()
    table = table.replace_schema_metadata({CATEGORIES_KEY: json.dumps(categories).encode(),
                                           RUN_CONFIG_KEY: json.dumps(config).encode()})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def read_categories(path: str | Path) -> list[str]:
    import pyarrow.parquet as pq

    return json.loads(pq.read_schema(path).metadata[CATEGORIES_KEY])

