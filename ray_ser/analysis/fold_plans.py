"""Fold plans, an analysis result: what one outer fold trains on (layers, saliency mask, k-means centroids, input
scaling, inner split or inner folds, categories, domains, A/V/D scales), built here once per (fold assignment, fold,
plan spec) and written to the catalog (``fold_plans__<model>``); training, tuning, evaluation and prediction only
read it (:func:`read_fold_plan`), so no analysis is computed inside a training run."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from ray_ser.corpora.folds import ALL_SPEAKERS, FoldAssignment
from ray_ser.corpora.manifest import DIMENSIONS
from ray_ser.store import catalog
from ray_ser.store.core import Store, as_store

log = logging.getLogger(__name__)

MADE_BY = "ray-ser saliency (the analysis stage, jobs/saliency.py)"
"""The stage that writes fold plans, named when one is missing."""


class PlanSpec(BaseModel):
    """The training config fields a fold plan depends on (``TrainConfig.plan_spec()`` makes it): two configs with
    equal specs share their plans, any other difference gets plans of its own (:attr:`key`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: str
    model: str
    corpora: list[str] = []
    label_set: list[str] | None = None
    conditions: list[str] = ["clean"]
    seed: int = 0
    inner_share: float = 0.15
    inner_folds: int = 1
    final_selection: Literal["speakers", "corpora"] = "speakers"
    domain: Literal["speaker", "corpus"] | None = None
    adversarial: bool = False
    """Whether the run trains a domain head (``adv_weight`` > 0): the plan then lists the domains."""
    layer: int | None = None
    layers: list[int] | Literal["all"] = []
    auto_layers: int = 1
    keep_ratio: float = 1.0
    layer_mix: Literal["none", "learned"] = "none"
    n_clusters: int = 0
    dimensional: bool = True
    scaler: Literal["global", "per-corpus"] = "global"

    @property
    def key(self) -> str:
        """A hash of every field but the store's URI (the same plan whatever the store is called)."""
        text = json.dumps(self.model_dump(exclude={"store"}), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(kw_only=True)
class FoldPlan:
    """What one outer fold trains on, resolved from the store (all of it speaker-independent of ``fold``); built
    by name only (``kw_only``), so no call site depends on the order of its fields."""

    fold: int
    fold_id: str
    layer: int
    inner: list[str]
    val: list[str]
    test: list[str]
    categories: list[str]
    keep: list[int] | None
    input_dim: int
    n_domains: int
    domains: list[str]
    has_dims: bool
    model_cfg: dict = field(default_factory=dict)
    """The fold model's fields (filled by training from its config when it reads the plan; empty when stored)."""
    norm_mean: list[float] | None = None
    norm_std: list[float] | None = None
    """Per-dimension scaler of the input frames, fitted on the inner training utterances (with inner folds: on
    all of the fold's training utterances)."""
    layers: list[int] | None = None
    """Every layer read, concatenated per frame (None: ``layer`` alone)."""
    cv_val: list[list[str]] | None = None
    """With ``inner_folds`` > 1: each inner fold's validation utterances (speaker-disjoint; every training
    utterance is in exactly one), the rest of the fold's training utterances train that inner fold."""
    corpus_norm: dict[str, list[list[float]]] | None = None
    """The per-corpus scaler: {corpus: [mean, std]} of each training corpus's frames, fitted on its training
    utterances (the reader standardises every frame by its corpus's; ``norm_mean`` is then None)."""
    corpus_counts: dict[str, int] | None = None
    """Training utterances per corpus (corpus-balanced sampling draws from these)."""
    corpus_dims: dict[str, list[str]] | None = None
    """The A/V/D dimensions each training corpus contributes to the dimensional head."""
    dim_scale: dict[str, dict[str, list[float]]] | None = None
    """{corpus: {dimension: [lo, hi]}}: the range of each training corpus's A/V/D values on its training utterances;
    targets train on [-1, 1] (:func:`ray_ser.analysis.fold_inputs.scale_dims`) and predictions are mapped back to
    the corpus's own scale (None: targets as stored, a checkpoint from before the mapping)."""

    @property
    def read_layers(self) -> list[int]:
        return list(self.layers) if self.layers else [self.layer]

    @property
    def fitted_on(self) -> list[str]:
        """The utterances its scaler and domains were fitted on: inner training, or all training with inner folds."""
        return [*self.inner, *self.val] if self.cv_val else list(self.inner)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class PlanMissing(KeyError):
    """No stored plan of this fold for this spec: the analysis stage has not built it."""


# ---- the layers a fold reads -----------------------------------------------------------------------
def framed_layers(store: str | Store, model: str, condition: str = "clean") -> list[int]:
    """Every layer of ``model`` stored with frames, in layer order: the stored layers, less those the extraction's
    ``frame_layers`` left without frames (its recorded options)."""
    from ray_ser.analysis.saliency_store import layers_of

    store = as_store(store)
    layers = layers_of(store, model, condition)
    framed = (store.extraction_meta(model).get("options") or {}).get("frame_layers")
    if framed is not None:
        layers = [k for k in layers if k in {int(f) for f in framed}]
    if not layers:
        raise ValueError(f"store {store.uri} holds no {condition} layer of {model} with frames")
    return layers


def named_layers(spec: PlanSpec, store: Store | None = None) -> list[int]:
    """The layers ``spec.layers`` names: its list, or with ``all`` every layer stored with frames (in ``store``, the
    open store of ``spec.store`` when the caller has one)."""
    return framed_layers(store or spec.store, spec.model) if spec.layers == "all" else [int(k) for k in spec.layers]


def auto_layers(spec: PlanSpec, assignment: FoldAssignment, folds: Sequence[int],
                store: Store | None = None) -> dict[int, list[int]]:
    """{fold: the layers it reads when the config names none}: its ``spec.auto_layers`` best layers on its training
    speakers, in layer order (from the stored ranking when there is one; ``store``: as in :func:`named_layers`)."""
    from ray_ser.analysis.layer_selection import ranked_layers

    ranked, source = ranked_layers(store or spec.store, spec.model, assignment, folds, spec.auto_layers)
    log.info("layers per fold from %s: %s", source, ranked)
    return {f: sorted(v) for f, v in ranked.items()}


def cluster_layer(spec: PlanSpec, assignment: FoldAssignment, fold: int, read: Sequence[int],
                  store: Store | None = None) -> int:
    """The layer whose k-means ids a mixed model's frame-cluster head predicts: ``spec.layer`` when it is read, else
    the fold's best read layer by the layer criterion on its training speakers (the frames stage's layer)."""
    from ray_ser.analysis.layer_selection import ranked_layers

    if spec.layer in read:
        return int(spec.layer)
    store = store or spec.store
    order = ranked_layers(store, spec.model, assignment, [fold], len(framed_layers(store, spec.model)))[0][fold]
    return next((int(k) for k in order if k in read), int(read[0]))


# ---- building one fold's plan ----------------------------------------------------------------------
def _in_corpora(spec: PlanSpec, rows: dict, utts: Sequence[str]) -> list[str]:
    if not spec.corpora:
        return list(utts)
    return [u for u in utts if rows[u]["corpus"] in spec.corpora]


def build_plan(spec: PlanSpec, assignment: FoldAssignment, fold: int, read: Sequence[int] | None = None,
               store: Store | None = None) -> FoldPlan:
    """Outer ``fold``'s plan: inner split, layer(s), mask, centroids (fitted and stored when missing) and scalers,
    all chosen or fitted on the fold's training speakers (``read``: its automatic layers when the spec names none;
    ``store``: the open store of ``spec.store``, opened here when not given)."""
    from ray_ser.analysis import saliency_store as ss
    from ray_ser.analysis.fold_inputs import dim_ranges, frame_stats, load_labels

    store = as_store(store or spec.store)
    inner, val = assignment.inner_split(fold, spec.inner_share, spec.seed)
    test = assignment.test_utts(fold)
    labels = load_labels(store, [*inner, *val, *test], domain_key=spec.domain, label_set=spec.label_set)
    inner, val, test = (_in_corpora(spec, labels.rows, u) for u in (inner, val, test))
    if not inner or not val:
        raise ValueError(f"fold {fold}: no inner training or validation utterances of corpora {spec.corpora}")
    cv_val = None
    names = sorted({labels.rows[u]["corpus"] for u in [*inner, *val]})
    if spec.inner_folds > 1 and fold == ALL_SPEAKERS and spec.final_selection == "corpora" and len(names) > 1:
        cv_val = [[u for u in [*inner, *val] if labels.rows[u]["corpus"] == c] for c in names]  # one corpus out each
    elif spec.inner_folds > 1:  # every training speaker validates once; scaler and domains from all of them
        from ray_ser.analysis.layer_selection import inner_folds

        pool = [*inner, *val]
        strata = [f"{labels.rows[u]['corpus']}|{labels.rows[u]['label']}" if assignment.strata else labels.rows[u]["label"]
                  for u in pool]  # several corpora: every inner fold validates on speakers of every corpus
        ids = inner_folds([labels.rows[u]["speaker"] for u in pool], strata, spec.inner_folds, spec.seed)
        cv_val = [[u for u, i in zip(pool, ids) if i == k] for k in range(int(ids.max()) + 1)]
    fitted_on = [*inner, *val] if cv_val else inner
    labels = load_labels(store, [*inner, *val, *test], domain_utts=fitted_on, domain_key=spec.domain,
                         label_set=spec.label_set)
    if spec.layers:
        read = named_layers(spec, store)
    elif spec.layer is not None:
        read = [spec.layer]
    elif read is None:
        read = auto_layers(spec, assignment, [fold], store)[fold]
    read = [int(k) for k in read]
    layer = read[0]
    dim = int(store.embeddings(spec.model).schema.field("mean").type.list_size)
    keep = None
    if spec.keep_ratio < 1.0:  # each layer's own mask of fold f, offset to its place in the concatenated frame
        parts = []
        for i, one in enumerate(read):
            try:
                mask = ss.saliency_mask(store, spec.model, one, spec.keep_ratio, fold=fold, fold_id=assignment.id)
            except (KeyError, ValueError):  # no stored saliency for this assignment: compute it on f's training speakers
                mask = ss.mask_on_utts(store, spec.model, one, assignment.train_utts(fold), spec.keep_ratio)
            parts.append(np.flatnonzero(mask) + i * dim)
        keep = np.concatenate(parts).tolist()
    dim *= len(read)
    if spec.layer_mix == "learned" and keep is not None:
        raise ValueError("layer_mix learned sums whole layers: set keep_ratio 1.0")
    if spec.n_clusters and len(read) > 1 and spec.layer_mix != "learned":
        raise ValueError(f"the frame-cluster head predicts one layer's k-means ids: set n_clusters=0 to train on "
                         f"layers {read}")
    if spec.n_clusters and len(read) > 1:  # behind a layer mix: the ids of the fold's best layer among those read
        layer = cluster_layer(spec, assignment, fold, read, store)
    if spec.n_clusters:
        from ray_ser.analysis.clusters import ensure_centroids

        ensure_centroids(store, spec.model, layer, spec.n_clusters, assignment, fold, seed=spec.seed)
    by_corpus: dict[str, list[str]] = {}
    for u in fitted_on:
        by_corpus.setdefault(labels.rows[u]["corpus"], []).append(u)
    # each dimension is masked per utterance in the CCC loss: a corpus with arousal alone trains the head too
    corpus_dims = {c: [d for d in DIMENSIONS if any(labels.rows[u].get(d) is not None for u in us)]
                   for c, us in sorted(by_corpus.items())}
    has_dims = any(corpus_dims.values())
    dim_scale = None
    if has_dims and spec.dimensional:  # each corpus's scale (1-3, 1-7, -1..1) onto one range, from training utterances
        dim_scale = dim_ranges(labels.rows, [*inner, *val])  # training speakers only, never the test ones
    n_domains = len(labels.domains) if spec.adversarial else 0
    norm_mean = norm_std = corpus_norm = None
    if spec.scaler == "per-corpus":
        corpus_norm = {c: [v.tolist() for v in frame_stats(store, spec.model, read, us, spec.conditions, keep)]
                       for c, us in sorted(by_corpus.items())}
    else:
        norm_mean, norm_std = (v.tolist() for v in frame_stats(store, spec.model, read, fitted_on, spec.conditions,
                                                                keep))
    return FoldPlan(
        fold=fold, fold_id=assignment.id, layer=int(layer), inner=inner, val=val, test=test,
        categories=labels.categories, keep=keep, input_dim=len(keep) if keep is not None else dim, n_domains=n_domains,
        domains=labels.domains if n_domains else [], has_dims=bool(has_dims and spec.dimensional),
        norm_mean=norm_mean, norm_std=norm_std, layers=read if len(read) > 1 else None, cv_val=cv_val,
        corpus_norm=corpus_norm, corpus_counts={c: len(us) for c, us in sorted(by_corpus.items())},
        corpus_dims=corpus_dims, dim_scale=dim_scale)


# ---- the catalog: written once, then read ------------------------------------------------------------
def _rows(spec: PlanSpec, plan: FoldPlan) -> pa.Table:
    body = {k: v for k, v in plan.to_dict().items() if k != "model_cfg"}
    return pa.table({"fold_id": [plan.fold_id], "fold": pa.array([plan.fold], pa.int32()), "plan_key": [spec.key],
                     "spec": [spec.model_dump_json(exclude={"store"})], "plan": [json.dumps(body)]})


def read_fold_plan(spec: PlanSpec, fold_id: str, fold: int) -> FoldPlan:
    """The stored plan of outer ``fold`` under fold assignment ``fold_id`` for ``spec``; :class:`PlanMissing` names
    the stage to run when there is none."""
    try:
        t = catalog.read(spec.store, catalog.FOLD_PLANS, spec.model, columns=["plan", "fold_id"], plan_key=spec.key,
                         fold=int(fold))
        found = [p for p, i in zip(t.column("plan").to_pylist(), t.column("fold_id").to_pylist()) if i == fold_id]
    except KeyError:
        found = []
    if not found:
        raise PlanMissing(f"no fold plan of {spec.model} fold {fold} (fold assignment {fold_id}, plan {spec.key}) in "
                          f"store {spec.store}: run {MADE_BY} with this train config first")
    return FoldPlan(**json.loads(found[0]))


def stored_folds(spec: PlanSpec, fold_id: str, store: Store | None = None) -> set[int]:
    """The folds with a stored plan for ``spec`` under fold assignment ``fold_id`` (``store``: as in
    :func:`named_layers`)."""
    try:
        t = catalog.read(store or spec.store, catalog.FOLD_PLANS, spec.model, columns=["fold", "fold_id"],
                         plan_key=spec.key)
    except KeyError:
        return set()
    return {int(f) for f, i in zip(t.column("fold").to_pylist(), t.column("fold_id").to_pylist()) if i == fold_id}


def write_fold_plans(spec: PlanSpec, assignment: FoldAssignment, folds: Sequence[int], rebuild: bool = False,
                     store: Store | None = None) -> list[int]:
    """Build and store the plans of ``folds`` the store lacks for ``spec`` (a stored plan is kept, never rebuilt,
    unless ``rebuild``: the analysis stage, having just rewritten the saliency and layer ranks a plan is made from,
    replaces them); returns the folds built. Each plan is one row written in one commit (a crash leaves it whole or
    absent), under a lock on its key so concurrent runs (Tune trials) build it once. ``store``: the open store of
    ``spec.store`` (the analysis stage's), opened here once when not given and passed to every step."""
    from ray_ser.analysis.clusters import _key_lock

    store = as_store(store or spec.store)
    todo = list(folds) if rebuild else [f for f in folds if f not in stored_folds(spec, assignment.id, store)]
    if not todo:
        return []
    auto = None
    if spec.layer is None and not spec.layers:  # every fold's automatic layers from one read (the stored ranking)
        auto = auto_layers(spec, assignment, todo, store)
    built = []
    for fold in todo:
        with _key_lock(store, f"plan_{catalog.FOLD_PLANS.name(spec.model)}_{assignment.id}_{fold}_{spec.key}"):
            if not rebuild and fold in stored_folds(spec, assignment.id, store):
                continue
            plan = build_plan(spec, assignment, fold, None if auto is None else auto[fold], store=store)
            catalog.replace(store, catalog.FOLD_PLANS, spec.model, _rows(spec, plan),
                            {"fold_id": assignment.id, "fold": fold, "plan_key": spec.key})
            built.append(fold)
    return built

