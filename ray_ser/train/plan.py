"""Fold plans on the training side: the run's rows and fold assignment, and each fold's plan read back from the
store (:func:`plan_fold`), where the analysis stage wrote it (:mod:`ray_ser.analysis.fold_plans`); a run builds the
plans it lacks once, at its start (:func:`prepare_plans`), never inside training."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ray_ser import console
from ray_ser.analysis import fold_plans as fp
from ray_ser.analysis.fold_plans import FoldPlan, PlanMissing  # noqa: F401  (the plan's type, named here as before)
from ray_ser.corpora.folds import FoldAssignment
from ray_ser.corpora.manifest import DIMENSIONS
from ray_ser.store import Store
from ray_ser.train.config import TrainConfig


# ---- planning a fold ------------------------------------------------------------------------------
def corpus_rows(store: Store, corpora: Sequence[str], label_set: Sequence[str] | None = None, report=None,
                keep: Callable[[str], bool] | None = None) -> dict[str, dict]:
    """{utt_id: manifest row (utt_id, speaker, corpus, label, pdf, A/V/D)} of the labelled utterances of ``corpora``
    (every stored corpus when empty; one the store lacks is an error naming it) that ``keep`` accepts, their labels
    mapped into ``label_set`` when given (rows outside it left out and counted in ``report``, a
    :class:`~ray_ser.corpora.label_sets.SetReport`). The run's rows and a zero-shot corpus's rows both come from here."""
    from ray_ser.corpora.label_sets import map_rows

    manifests = store.manifests()
    if manifests is None:
        raise ValueError(f"store {store.uri} has no manifest: nothing to train on")
    stored = sorted(set(manifests.column("corpus").to_pylist()))
    unknown = [c for c in corpora if c not in stored]
    if unknown:
        raise ValueError(f"corpus {unknown[0]!r} is not in store {store.uri}; it holds {', '.join(stored)}")
    cols = [c for c in ("utt_id", "speaker", "corpus", "label", "pdf", *DIMENSIONS) if c in manifests.column_names]
    wanted = set(corpora or stored)
    rows = {r["utt_id"]: r for r in manifests.select(cols).to_pylist()
            if r["corpus"] in wanted and r.get("speaker") and (keep is None or keep(r["utt_id"]))
            and (r.get("label") is not None or r.get("pdf") is not None or any(r.get(d) is not None for d in DIMENSIONS))}
    if label_set is None or not rows:
        return rows
    return map_rows(rows, {c: store.categories(c) for c in sorted({r["corpus"] for r in rows.values()})}, label_set,
                    report)


def run_rows(cfg: TrainConfig, store: Store, condition: str = "clean", report=None) -> dict[str, dict]:
    """{utt_id: manifest row} of what the run trains on: :func:`corpus_rows` of ``cfg.corpora`` that have
    ``condition`` rows of ``cfg.model``, in the run's label set. Whatever else the store holds is never read."""
    from ray_ser.analysis.saliency_store import layers_of
    from ray_ser.store import catalog
    from ray_ser.train.reader import corpus_categories

    first = layers_of(store, cfg.model, condition)[0]
    present = set(store.embeddings(cfg.model).to_lance().to_table(
        columns=["utt_id"], filter=catalog.where(layer=first, condition=condition)).column("utt_id").to_pylist())
    rows = corpus_rows(store, cfg.corpora, cfg.label_set, report, keep=present.__contains__)
    if not rows:
        raise ValueError(f"no labelled {condition} utterances of {cfg.model} of corpora "
                         f"{', '.join(cfg.corpora) or '(all)'} in {store.uri}")
    if cfg.label_set is None:
        corpus_categories(store, sorted({r["corpus"] for r in rows.values()}))  # they must share one list
    return rows


def resolve_assignment(cfg: TrainConfig, store: Store, condition: str = "clean", report=None) -> FoldAssignment:
    """The run's speaker-independent fold assignment over :func:`run_rows`: the stored saliency's when it covers
    exactly these utterances of one corpus (its masks and centroids were made with it), else the fold rule
    ``cfg.folds`` on them; several corpora get ``K`` folds stratified by corpus (every fold tests speakers of
    every corpus, inner validation speakers are drawn from every corpus)."""
    import polars as pl

    from ray_ser.analysis import saliency_store as ss
    from ray_ser.corpora.folds import corpus_folds

    rows = run_rows(cfg, store, condition, report)
    ids = sorted(rows)
    speakers = [rows[u]["speaker"] for u in ids]
    corpora = [rows[u]["corpus"] for u in ids]
    labels = [rows[u]["label"] for u in ids]
    if len(set(corpora)) == 1:
        try:
            stored = ss.stored_assignment(store, cfg.model, condition)
            if stored.utt_ids and set(stored.utt_ids) == set(ids):
                return stored
        except KeyError:
            pass
        fold, desc = ss.assign_folds(pl.DataFrame({"utt_id": ids, "speaker": speakers, "label": labels},
                                                  schema={"utt_id": pl.Utf8, "speaker": pl.Utf8, "label": pl.Utf8}),
                                     cfg.folds, cfg.fold_seed)
        return FoldAssignment(tuple(ids), tuple(speakers), tuple(int(f) for f in fold), desc)
    mode = str(cfg.folds).lower()
    if mode == "auto":
        k = ss.DEFAULT_K
    elif mode.isdigit():
        k = int(mode)
    else:
        raise ValueError(f"fold rule {cfg.folds!r} over several corpora: use auto or a number of folds K (each corpus's "
                         "speakers are split into K folds, so every fold tests every corpus)")
    fold = corpus_folds(speakers, labels, corpora, k, cfg.fold_seed)
    n = len(set(corpora))
    return FoldAssignment(tuple(ids), tuple(speakers), tuple(int(f) for f in fold),
                          f"speaker-disjoint k={k} per corpus ({k} folds, {n} corpora)", tuple(corpora))


def model_config(cfg: TrainConfig, input_dim: int, n_classes: int, has_dims: bool, n_domains: int,
                 n_layers: int = 1) -> dict:
    """The fold model's :class:`~ray_ser.train.nn.ModelConfig` fields from the run's config and what the fold holds
    (``n_layers``: the layers concatenated in the input, which a learned layer mix sums)."""
    return {"input_dim": input_dim, "arch": cfg.arch, "pooling": cfg.pooling, "conv_channels": cfg.conv_channels,
            "gru_hidden": cfg.gru_hidden, "embed_dim": cfg.embed_dim, "mlp_hidden": cfg.mlp_hidden,
            "dropout": cfg.dropout, "n_classes": n_classes, "n_dims": 3 if (has_dims and cfg.dimensional) else 0,
            "n_domains": n_domains, "adv_weight": cfg.adv_weight, "n_clusters": cfg.n_clusters,
            "layer_mix": cfg.layer_mix, "n_layers": n_layers}


def prepare_plans(cfg: TrainConfig, store: Store, assignment: FoldAssignment, folds: Sequence[int],
                  build: bool = True) -> list[int]:
    """Make sure the store holds the plans of ``folds`` for ``cfg``, at the start of a run: the missing ones are built
    by the analysis stage's function in one visible step (``build``), or refused naming the stage to run; returns
    the folds built (a stored plan is re-read, never rebuilt)."""
    spec = cfg.plan_spec()
    missing = [f for f in folds if f not in fp.stored_folds(spec, assignment.id)]
    if not missing:
        return []
    if not build:
        raise PlanMissing(f"no fold plans of folds {missing} of {cfg.model} (fold assignment {assignment.id}, plan "
                          f"{spec.key}) in store {store.uri}: run {fp.MADE_BY} with this train config first")
    built = fp.write_fold_plans(spec, assignment, missing)
    console.say(f"fold plans: {len(built)} built (analysis), {len(folds) - len(missing)} stored")
    return built


def plan_fold(cfg: TrainConfig, store: Store, assignment: FoldAssignment, fold: int) -> tuple[FoldPlan, Any, np.ndarray | None]:
    """(plan, labels, centroids) of outer ``fold``, read from the store (:func:`prepare_plans` or the analysis stage
    wrote the plan; none is a :class:`PlanMissing` naming the stage): the fold model's fields from ``cfg``, the
    labels with the plan's domains and A/V/D scale, the stored centroids of its layer."""
    from ray_ser.train.reader import load_labels

    plan = fp.read_fold_plan(cfg.plan_spec(), assignment.id, fold)
    labels = load_labels(store, [*plan.inner, *plan.val, *plan.test], domain_utts=plan.fitted_on,
                         domain_key=cfg.domain, label_set=cfg.label_set)
    if plan.dim_scale is not None:
        labels.with_dim_scale(plan.dim_scale)
    plan.model_cfg = model_config(cfg, plan.input_dim, len(plan.categories), any((plan.corpus_dims or {}).values()),
                                  plan.n_domains, len(plan.read_layers))
    centroids = None
    if cfg.n_clusters:
        from ray_ser.analysis.clusters import read_centroids

        centroids = read_centroids(store, cfg.model, plan.layer, cfg.n_clusters, fold, assignment.id)
    return plan, labels, centroids


def planned_fold(cfg: TrainConfig, store: Store, assignment: FoldAssignment, fold: int) -> tuple[FoldPlan, Any, np.ndarray | None]:
    """One fold's plan for an entry point that trains it alone (a benchmark, a test): its plan built at the start
    when missing (:func:`prepare_plans`), then read (:func:`plan_fold`)."""
    prepare_plans(cfg, store, assignment, [fold])
    return plan_fold(cfg, store, assignment, fold)


def stored_layers(store: Store, model: str, condition: str = "clean") -> list[int]:
    """Every layer of ``model`` stored with frames (:func:`ray_ser.analysis.fold_plans.framed_layers`)."""
    return fp.framed_layers(store, model, condition)


def plan_mask(cfg: TrainConfig, store: Store, plan: FoldPlan) -> np.ndarray | None:
    """The plan's kept dimensions as a bool mask over the (concatenated) input layers' dims (their width read from
    ``store``)."""
    if plan.keep is None:
        return None
    mask = np.zeros(_layer_dim(cfg, store) * len(plan.read_layers), bool)
    mask[plan.keep] = True
    return mask


def auto_layers(cfg: TrainConfig, assignment: FoldAssignment, folds: Sequence[int]) -> dict[int, list[int]]:
    """{fold: the layers it reads when the config names none} (:func:`ray_ser.analysis.fold_plans.auto_layers`)."""
    return fp.auto_layers(cfg.plan_spec(), assignment, folds)


def fold_datasets(cfg: TrainConfig, store: Store, plan: FoldPlan, labels, centroids) -> dict:
    """The fold's Ray Datasets, lazy: "train" (inner speakers, every training condition), "val" (validation
    speakers, clean) and, for a refit, "refit" (inner + validation speakers, every training condition). With inner
    folds (``plan.cv_val``): "refit" and, the same rows unsplit across workers, "pool".

    Nothing is materialised: each worker streams its shard from the store on the first epoch and keeps it in its
    :class:`~ray_ser.train.reader.ShardCache` when it fits (``cache_mb``), else streams every epoch, so no process
    (the object store included) ever holds a whole fold's frames."""
    from ray_ser.train.reader import frames_dataset

    common = {"labels": labels, "mask": plan_mask(cfg, store, plan), "centroids": centroids, "scale": plan.corpus_norm,
              **({"cluster_layer": plan.layer} if centroids is not None and plan.layers else {})}
    layers = plan.read_layers
    out = {}
    if not plan.cv_val:
        out["train"] = frames_dataset(store, cfg.model, layers, plan.inner, conditions=cfg.conditions, **common)
        out["val"] = frames_dataset(store, cfg.model, layers, plan.val, conditions=["clean"], **common)
    if cfg.refit:  # inner folds imply a refit
        out["refit"] = frames_dataset(store, cfg.model, layers, [*plan.inner, *plan.val], conditions=cfg.conditions,
                                      **common)
    if plan.cv_val:  # the same rows: "pool" unsplit, "refit" split across the workers (each read by its users)
        out["pool"] = out["refit"]
    return out


def _layer_dim(cfg: TrainConfig, store: Store) -> int:
    return int(store.embeddings(cfg.model).schema.field("mean").type.list_size)


def select_folds(spec: str | Sequence[int], assignment: FoldAssignment) -> list[int]:
    """``all`` or a comma-separated list of outer folds (fold -1 is refused: it has no test speakers)."""
    if isinstance(spec, str):
        folds = assignment.fold_ids if spec == "all" else [int(f) for f in spec.split(",") if f.strip()]
    else:
        folds = [int(f) for f in spec]
    bad = [f for f in folds if f not in assignment.fold_ids]
    if bad:
        raise ValueError(f"folds {bad} are not outer folds of assignment {assignment.id} ({assignment.description}): "
                         f"choose among {assignment.fold_ids}")
    return folds
