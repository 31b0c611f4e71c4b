"""Saliency over the store: speaker-independent folds, per-fold CCS/MIS tables, layer ranking, masks.

:mod:`ray_ser.analysis.saliency` is the numerics (arrays in, arrays out); this module feeds it from the LanceDB
store and writes the results back.

Folds and leakage
-----------------
Every utterance of the model's ``condition`` rows that the stored manifests know (speaker and a label,
PDF or V/A/D) gets a speaker-independent fold (:func:`assign_folds`): leave-one-speaker-out when the
corpus has at most 12 speakers, else 5 speaker-disjoint folds stratified by label.  Saliency *for fold
f* is computed from the utterances **not** in fold f (its training folds), so the mask that is used
when evaluating on fold f never saw fold f's speakers.  Fold ``-1`` is computed on all utterances: the
one mask to use on a *new* corpus — never for evaluation on these speakers.

Tables (one set per model; rows of one model/condition are replaced in one commit on a re-run)
-------------------------------------------------------------------------------------------------
- ``saliency__<model>``: model, condition, fold, layer, dim, ccs, mis, rank — one row per
  (condition, fold, layer, dim); ``rank`` is the CCS rank of the dimension within its layer and fold
  (0 = most salient); ``mis`` is null when MIS was skipped.
- ``layer_rank__<model>``: model, condition, fold, layer, layer_score, layer_rank — ``layer_score`` is
  :func:`ray_ser.analysis.saliency.layer_score` of the layer's CCS column (the mean of its top 10 % dimension
  scores: a layer is as useful as its most salient dimensions, which are what a mask keeps);
  ``layer_rank`` orders the layers of one fold, 0 = best.
- ``saliency_folds__<model>``: model, condition, utt_id, speaker, fold — the fold of every utterance
  the saliency used, so a later stage evaluates fold f with fold f's mask on exactly these speakers.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from ray_ser.analysis import saliency as sal
from ray_ser.corpora.folds import ALL_SPEAKERS, FoldAssignment, loso, speaker_folds
from ray_ser.corpora.manifest import DIMENSIONS, Manifest
from ray_ser.store import catalog
from ray_ser.store.core import Store, as_store, read_pooled_arrow
from ray_ser.store.names import sql_string, table_name

log = logging.getLogger(__name__)

LOSO_MAX_SPEAKERS = 12
"""``folds="auto"`` uses leave-one-speaker-out up to this many speakers, else DEFAULT_K folds."""
DEFAULT_K = 5
TOP_FRACTION = 0.1
"""Share of a layer's dimensions whose mean CCS is the layer score (see saliency.layer_score)."""

CRITERION = "ccs_top10"
"""Name of the stored ranking criterion of :func:`layer_ranking` (mean CCS of a layer's top 10 % dims)."""


# ---- targets and folds ---------------------------------------------------------------------------
def targets_for(frame: pl.DataFrame, categories: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """The ``(n, T)`` saliency target matrix of a read_pooled frame and the names of its columns.

    In order of preference:
    1. the dimensional scores (arousal, valence, dominance: per-utterance means over raters) when the
       manifest has all three for every row — the papers' targets;
    2. else the per-class probability columns of the label PDF (one target per category of
       ``categories``) when every row has a PDF of that length;
    3. else the one-hot of ``label`` over ``categories`` (or over the labels present when None);
    4. else the dimensions every row has (a dimensional-only corpus with arousal alone, say).
    Raises ValueError when no choice covers every row (drop unlabelled rows first).
    """
    n = frame.height
    if n == 0:
        raise ValueError("no rows")
    if all(c in frame.columns and frame[c].null_count() == 0 for c in DIMENSIONS):
        return np.column_stack([frame[c].to_numpy().astype(np.float64) for c in DIMENSIONS]), list(DIMENSIONS)
    if categories is not None and "pdf" in frame.columns and frame["pdf"].null_count() == 0:
        pdf = frame["pdf"].to_list()
        if all(len(p) == len(categories) for p in pdf):
            return np.asarray(pdf, dtype=np.float64), list(categories)
    if "label" in frame.columns and frame["label"].null_count() == 0:
        labels = frame["label"].to_list()
        names = list(categories) if categories is not None else sorted(set(labels))
        missing = sorted(set(labels) - set(names))
        if missing:
            raise ValueError(f"labels {missing} are not among the categories {names}")
        index = {c: i for i, c in enumerate(names)}
        onehot = np.zeros((n, len(names)), np.float64)
        onehot[np.arange(n), [index[lab] for lab in labels]] = 1.0
        return onehot, names
    some = [c for c in DIMENSIONS if c in frame.columns and frame[c].null_count() == 0]
    if some:  # a dimensional-only corpus with some of A/V/D (e.g. arousal alone) on every row
        return np.column_stack([frame[c].to_numpy().astype(np.float64) for c in some]), some
    raise ValueError("rows lack V/A/D scores, a PDF and a label for every row: no saliency targets")


def _categories(store: Store, corpora: Sequence[str]) -> list[str] | None:
    """The category list shared by the stored manifests of ``corpora`` (None when they differ)."""
    lists = []
    for corpus in sorted(set(corpora)):
        if store.has(table_name(corpus, "manifest")):
            lists.append(store.categories(corpus))
    if lists and all(c == lists[0] for c in lists):
        return lists[0]
    return None


def assign_folds(frame: pl.DataFrame, folds: str | int = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """Speaker-independent fold of every row of ``frame`` (needs ``speaker``, ``label``, ``utt_id``).

    ``folds``: ``"auto"`` = LOSO for <= 12 speakers else 5 folds; ``"loso"``; an int or digit string
    K = K speaker-disjoint folds stratified by label (ray_ser.corpora.folds); ``"manifest"`` = the
    manifest's own ``fold`` column.  Returns (fold per row, a description such as ``"loso (10)"``).
    """
    if "manifest" == folds:
        if "fold" not in frame.columns or frame["fold"].null_count():
            raise ValueError("folds='manifest' needs a fold on every manifest row")
        f = frame["fold"].to_numpy().astype(np.int64)
        return f, f"manifest ({len(np.unique(f))})"
    speakers = frame["speaker"].to_list()
    labels = [lab if lab is not None else "" for lab in frame["label"].to_list()] if "label" in frame.columns \
        else [""] * frame.height
    n_spk = len(set(speakers))
    if n_spk < 2:
        raise ValueError(f"speaker-independent folds need >= 2 speakers, the rows have {n_spk}")
    # A bare manifest (label checked against the labels present) is all the fold functions need.
    cats = sorted({lab for lab in labels if lab})
    table = pa.table({
        "utt_id": frame["utt_id"].to_list(), "path": ["-"] * frame.height, "speaker": speakers,
        "corpus": ["-"] * frame.height, "label": [lab or None for lab in labels],
    })
    manifest = Manifest(table, cats)
    mode = str(folds).lower()
    if mode == "auto":
        mode = "loso" if n_spk <= LOSO_MAX_SPEAKERS else str(DEFAULT_K)
    if mode == "loso":
        fold = loso(manifest).column("fold")
        name = "loso"
    elif mode.isdigit():
        fold = speaker_folds(manifest, k=int(mode), seed=seed).column("fold")
        name = f"speaker-disjoint k={int(mode)}"
    else:
        raise ValueError(f"folds must be auto, loso, manifest or a number of folds, got {folds!r}")
    f = np.asarray(fold, np.int64)
    return f, f"{name} ({len(np.unique(f))} folds)"


def layers_of(store: str | Store, model: str, condition: str = "clean") -> list[int]:
    """The layer indices stored for ``model`` under ``condition``."""
    store = as_store(store)
    t = store.embeddings(model).to_lance().to_table(columns=["layer"], filter=f"condition = {sql_string(condition)}")
    return sorted(int(x) for x in pc.unique(t.column("layer")).to_pylist())


def usable_rows(store: str | Store, model: str, condition: str = "clean", folds: str | int = "auto",
                seed: int = 0) -> tuple[pl.DataFrame, np.ndarray, str]:
    """(rows, fold per row, fold description) for one model/condition: the layer-0 rows (utt_id order) joined with
    their manifest, keeping only utterances with a speaker and a label or PDF or V/A/D; every layer has the same
    utterances in the same order.  No target matrix: rows of corpora with different kinds of target may mix here
    (the layer criteria and the probes pick the rows they score)."""
    store = as_store(store)
    t = read_pooled_arrow(store, model, condition, layer=layers_of(store, model, condition)[0],
                          columns=("utt_id", "condition", "layer"))
    frame = pl.from_arrow(t)
    if "speaker" not in frame.columns:
        raise ValueError(f"store {store.uri} has no manifest for the utterances of {model}")
    usable = pl.col("speaker").is_not_null() & (
        pl.col("label").is_not_null() | pl.col("pdf").is_not_null()
        | pl.any_horizontal([pl.col(c).is_not_null() for c in DIMENSIONS]))
    kept = frame.filter(usable)
    if kept.height < frame.height:
        log.warning("%d of %d utterances lack a speaker or labels: left out of saliency", frame.height - kept.height, frame.height)
    fold, desc = assign_folds(kept, folds, seed)
    return kept, fold, desc


def labelled_rows(store: str | Store, model: str, condition: str = "clean",
                  folds: str | int = "auto", seed: int = 0) -> tuple[pl.DataFrame, np.ndarray, list[str], np.ndarray, str]:
    """(rows, targets, target names, fold per row, fold description) for one model/condition: the rows of
    :func:`usable_rows` and their saliency targets (:func:`targets_for`, a target that never varies dropped)."""
    store = as_store(store)
    kept, fold, desc = usable_rows(store, model, condition, folds, seed)
    L, names = targets_for(kept, _categories(store, kept["corpus"].to_list()))
    keep_t = L.max(axis=0) > L.min(axis=0)  # a target that never varies (a category nobody uses) says nothing
    if not keep_t.any():
        raise ValueError("every saliency target is constant over the utterances")
    return kept, L[:, keep_t], [n for n, k in zip(names, keep_t) if k], fold, desc


def layer_matrix(store: str | Store, model: str, condition: str, layer: int, utt_ids: Sequence[str]) -> np.ndarray:
    """(len(utt_ids), dim) float32 mean vectors of one layer, rows in the order of ``utt_ids``."""
    t = read_pooled_arrow(store, model, condition, layer=layer, with_manifest=False, columns=("utt_id", "mean"))
    ids = t.column("utt_id").to_pylist()
    where = {u: i for i, u in enumerate(ids)}
    missing = [u for u in utt_ids if u not in where]
    if missing:
        raise ValueError(f"layer {layer} of {model}/{condition} lacks {len(missing)} utterances, e.g. {missing[:3]}")
    vec = t.column("mean").combine_chunks()
    H = vec.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), vec.type.list_size)
    return np.ascontiguousarray(H[[where[u] for u in utt_ids]], dtype=np.float32)


# ---- per-fold saliency ---------------------------------------------------------------------------
def fold_saliency(H: np.ndarray, targets: np.ndarray, fold: np.ndarray, *, mis: bool = True,
                  n_bins: int = sal.DEFAULT_BINS) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """{fold: (ccs, mis or None)} with fold f computed from the rows where ``fold != f`` only, and
    fold -1 from all rows.  ``H`` (n, N), ``targets`` (n, T), ``fold`` (n,)."""
    fold = np.asarray(fold)
    out: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    for f in [-1, *sorted(int(x) for x in np.unique(fold))]:
        train = np.ones(len(fold), bool) if f == ALL_SPEAKERS else fold != f
        Ht, Lt = H[train], targets[train]
        out[f] = (sal.ccs(Ht, Lt), sal.mis(Ht, Lt, n_bins=n_bins) if mis else None)
    return out


def fold_assignment(store: str | Store, model: str, condition: str = "clean", folds: str | int = "auto",
                    seed: int = 0) -> FoldAssignment:
    """The speaker-independent fold assignment of the labelled utterances of ``model``'s ``condition`` rows:
    the one saliency, clustering, training and evaluation share (same rows, ``folds`` and ``seed``, same id)."""
    rows, fold, desc = usable_rows(store, model, condition, folds, seed)
    return FoldAssignment(tuple(rows["utt_id"].to_list()), tuple(rows["speaker"].to_list()),
                          tuple(int(f) for f in fold), desc)


def compute_saliency(store: str | Store, model: str, condition: str = "clean", folds: str | int = "auto",
                     mis: bool = True, n_bins: int = sal.DEFAULT_BINS, seed: int = 0,
                     layers: Sequence[int] | None = None, info: dict | None = None) -> pl.DataFrame:
    """Per-fold, per-layer, per-dimension saliency of ``model``'s ``condition`` rows.

    Columns model, condition, fold_id, fold, layer, dim, ccs, mis, rank (see the module docstring); fold -1
    uses every utterance, fold f >= 0 only the utterances outside fold f.  ``info`` (a dict), when
    given, receives the utterance count, targets, fold description, the per-utterance folds
    (``fold_frame``) and the :class:`FoldAssignment` (``assignment``).
    """
    store = as_store(store)
    rows, L, names, fold, desc = labelled_rows(store, model, condition, folds, seed)
    utt_ids = rows["utt_id"].to_list()
    assignment = FoldAssignment(tuple(utt_ids), tuple(rows["speaker"].to_list()), tuple(int(f) for f in fold), desc)
    if info is not None:
        info.update(n=len(utt_ids), targets=names, folds=desc, n_speakers=rows["speaker"].n_unique(),
                    fold_frame=assignment.to_polars(), assignment=assignment)
    parts = []
    for layer in (layers if layers is not None else layers_of(store, model, condition)):
        H = layer_matrix(store, model, condition, layer, utt_ids)
        for f, (c, m) in fold_saliency(H, L, fold, mis=mis, n_bins=n_bins).items():
            parts.append(sal.saliency_frame(model, condition, layer, c, m)
                         .with_columns(pl.lit(f, pl.Int32).alias("fold")))
    df = pl.concat(parts).with_columns(pl.lit(assignment.id).alias("fold_id"))
    return df.select(["model", "condition", "fold_id", "fold",
                      *[c for c in sal.SALIENCY_SCHEMA if c not in ("model", "condition")]])


def layer_ranking(saliency_df: pl.DataFrame, score: str = "ccs", top_fraction: float = TOP_FRACTION,
                  criterion: str = CRITERION) -> pl.DataFrame:
    """One row per (model, condition, fold, layer): ``layer_score`` = saliency.layer_score of the
    layer's ``score`` column (mean of its top ``top_fraction`` dimensions) and ``layer_rank`` within
    (model, condition, fold), 0 = best, ties to the lower layer; ``criterion`` names the rule and
    ``fold_id`` is carried over from the saliency rows."""
    keys = ["model", "condition", "fold_id", "fold", "layer"]
    rows = []
    for key, group in saliency_df.sort(keys + ["dim"]).group_by(keys, maintain_order=True):
        rows.append((*key, sal.layer_score(group[score].to_numpy(), top_fraction)))
    df = pl.DataFrame(rows, schema={"model": pl.Utf8, "condition": pl.Utf8, "fold_id": pl.Utf8, "fold": pl.Int32,
                                    "layer": pl.Int32, "layer_score": pl.Float64}, orient="row")
    return _with_rank(df.with_columns(pl.lit(criterion).alias("criterion")), ["model", "condition", "fold"])


def _with_rank(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    df = df.sort([*by, "layer_score", "layer"], descending=[*[False] * len(by), True, False])
    df = df.with_columns(pl.int_range(pl.len()).over(by).cast(pl.Int32).alias("layer_rank"))
    return df.sort([*by, "layer"])


def mean_over_folds(ranking: pl.DataFrame) -> pl.DataFrame:
    """Per (model, condition, layer): the mean ``layer_score`` over the training-fold rankings
    (fold >= 0) and its ``layer_rank`` (0 = best).  The score used against the probe: each fold's
    value saw only training speakers, like the probe's classifier."""
    df = (ranking.filter(pl.col("fold") >= 0)
          .group_by(["model", "condition", "layer"]).agg(pl.col("layer_score").mean()))
    return _with_rank(df, ["model", "condition"])


# ---- the tables (layouts in ray_ser.store.catalog) -------------------------------------------------------
def write_saliency(store: str | Store, saliency_df: pl.DataFrame, ranking: pl.DataFrame,
                   assignment: FoldAssignment | None = None) -> None:
    """Replace the saliency, layer-rank (of the ranking's criterion) and fold rows of the frames'
    model/condition, each table in one commit; ``assignment`` (the fold assignment the rows were made
    with) is stored too, so readers can check a fold id against it."""
    store = as_store(store)
    pairs = saliency_df.select(["model", "condition"]).unique().rows()
    if len(pairs) != 1:
        raise ValueError(f"write one model/condition at a time, got {pairs}")
    model, condition = pairs[0]
    fold_ids = set(saliency_df["fold_id"].unique().to_list()) | set(ranking["fold_id"].unique().to_list())
    if assignment is not None:
        fold_ids.add(assignment.id)
    if len(fold_ids) != 1:
        raise ValueError(f"saliency, ranking and fold assignment disagree on the fold id: {sorted(fold_ids)}")
    scope = {"model": model, "condition": condition}
    catalog.replace(store, catalog.SALIENCY, model, saliency_df.to_arrow(), scope)
    for criterion in ranking["criterion"].unique().to_list():
        catalog.replace(store, catalog.LAYER_RANK, model, ranking.filter(pl.col("criterion") == criterion).to_arrow(),
                        {**scope, "criterion": criterion})
    if assignment is not None:
        ff = assignment.to_polars().with_columns(
            pl.lit(model).alias("model"), pl.lit(condition).alias("condition"), pl.lit(assignment.id).alias("fold_id"),
            pl.lit(assignment.description).alias("description"))
        catalog.replace(store, catalog.FOLDS, model, ff.to_arrow(), scope)


def read_saliency(store: str | Store, model: str, condition: str = "clean", fold: int | None = None,
                  layer: int | None = None, fold_id: str | None = None) -> pl.DataFrame:
    """Rows of ``saliency__<model>`` for a condition (and fold / layer), sorted by fold, layer, dim;
    with ``fold_id``, rows of another fold assignment raise."""
    t = catalog.read(store, catalog.SALIENCY, model, fold_id=fold_id, model=model, condition=condition,
                     fold=fold, layer=layer)
    return pl.from_arrow(t).sort(["fold", "layer", "dim"])


def read_layer_ranking(store: str | Store, model: str, condition: str = "clean", criterion: str | None = None,
                       fold_id: str | None = None) -> pl.DataFrame:
    t = catalog.read(store, catalog.LAYER_RANK, model, fold_id=fold_id, model=model, condition=condition,
                     criterion=criterion)
    return pl.from_arrow(t).sort(["criterion", "fold", "layer_rank"])


def read_folds(store: str | Store, model: str, condition: str = "clean") -> pl.DataFrame:
    """utt_id, speaker, fold, fold_id of the utterances the stored saliency used."""
    t = catalog.read(store, catalog.FOLDS, model, model=model, condition=condition)
    return pl.from_arrow(t).select(["utt_id", "speaker", "fold", "fold_id"]).sort("utt_id")


def stored_assignment(store: str | Store, model: str, condition: str = "clean") -> FoldAssignment:
    """The fold assignment the stored saliency of ``model``/``condition`` was computed with."""
    t = catalog.read(store, catalog.FOLDS, model, model=model, condition=condition).sort_by("utt_id")
    a = FoldAssignment(tuple(t.column("utt_id").to_pylist()), tuple(t.column("speaker").to_pylist()),
                       tuple(t.column("fold").to_pylist()), t.column("description")[0].as_py() if t.num_rows else "")
    if t.num_rows and set(t.column("fold_id").to_pylist()) != {a.id}:
        raise ValueError(f"{catalog.FOLDS.name(model)} of {condition} is inconsistent with its fold_id: re-run jobs/saliency.py")
    return a


def best_layer(store: str | Store, model: str, fold: int, condition: str = "clean", criterion: str = CRITERION,
               fold_id: str | None = None) -> int:
    """The top-ranked layer of outer ``fold`` (ranked on its training speakers) under ``criterion``.
    There is no default fold: fold -1 (all speakers) is for speakers outside the corpus only."""
    r = read_layer_ranking(store, model, condition, criterion, fold_id).filter(
        (pl.col("fold") == fold) & (pl.col("layer_rank") == 0))
    if r.height == 0:
        raise KeyError(f"no {criterion} layer ranking of {model}/{condition} fold {fold}")
    return int(r["layer"][0])


def mask_on_utts(store: str | Store, model: str, layer: int, utt_ids: Sequence[str], keep_ratio: float,
                 condition: str = "clean") -> np.ndarray:
    """CCS mask of ``layer`` computed on exactly ``utt_ids`` (e.g. the training speakers of a fold of an
    assignment the stored saliency was not made with, such as a search's speaker pool)."""
    rows, L, _, _, _ = labelled_rows(store, model, condition)
    where = {u: i for i, u in enumerate(rows["utt_id"].to_list())}
    chosen = [u for u in utt_ids if u in where]
    H = layer_matrix(store, model, condition, layer, chosen)
    return sal.dimension_mask(sal.ccs(H, L[[where[u] for u in chosen]]), keep_ratio)


def saliency_mask(store: str | Store, model: str, layer: int, keep_ratio: float, fold: int,
                  condition: str = "clean", score: str = "ccs", fold_id: str | None = None) -> np.ndarray:
    """Boolean (N,) mask of the layer's top ``kept_size(N, keep_ratio)`` dimensions by the stored
    ``score`` (ccs or mis) of ``fold`` (computed without fold ``fold``'s speakers): use fold f's mask when
    evaluating on fold f, fold -1 only for speakers outside the corpus. ``fold_id`` checks the assignment."""
    df = read_saliency(store, model, condition, fold=fold, layer=layer, fold_id=fold_id)
    if df.height == 0:
        raise KeyError(f"no saliency rows for {model}/{condition} fold {fold} layer {layer}")
    if df[score].null_count():
        raise ValueError(f"the stored {score} of {model}/{condition} is null (computed with --no-mis?)")
    return sal.dimension_mask(df[score].to_numpy(), keep_ratio)
