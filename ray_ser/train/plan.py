"""Fold plans: what one outer fold trains on, resolved in the driver from the store (the fold assignment,
the layers chosen on its training speakers, the saliency mask, the k-means centroids, the input scaling and the
inner split), so a training run reads a fold's plan from one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ray_ser.corpora.folds import ALL_SPEAKERS, FoldAssignment
from ray_ser.corpora.manifest import DIMENSIONS
from ray_ser.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class FoldPlan:
    """What one outer fold trains on, resolved in the driver (all of it speaker-independent of ``fold``); built
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
    targets train on [-1, 1] (:func:`ray_ser.train.reader.scale_dims`) and predictions are mapped back to the
    corpus's own scale (None: targets as stored, a checkpoint from before the mapping)."""

    @property
    def read_layers(self) -> list[int]:
        return list(self.layers) if self.layers else [self.layer]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ---- planning a fold ------------------------------------------------------------------------------
def corpus_rows(store, corpora: Sequence[str], label_set: Sequence[str] | None = None, report=None,
                keep: Callable[[str], bool] | None = None) -> dict[str, dict]:
    """{utt_id: manifest row (utt_id, speaker, corpus, label, pdf, A/V/D)} of the labelled utterances of ``corpora``
    (every stored corpus when empty; one the store lacks is an error naming it) that ``keep`` accepts, their labels
    mapped into ``label_set`` when given (rows outside it left out and counted in ``report``, a
    :class:`~ray_ser.corpora.label_sets.SetReport`). The run's rows and a zero-shot corpus's rows both come from here."""
    from ray_ser.corpora.label_sets import map_rows
    from ray_ser.store.core import as_store

    store = as_store(store)
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


def run_rows(cfg: TrainConfig, condition: str = "clean", report=None) -> dict[str, dict]:
    """{utt_id: manifest row} of what the run trains on: :func:`corpus_rows` of ``cfg.corpora`` that have
    ``condition`` rows of ``cfg.model``, in the run's label set. Whatever else the store holds is never read."""
    from ray_ser.analysis.saliency_store import layers_of
    from ray_ser.store import catalog
    from ray_ser.store.core import as_store
    from ray_ser.train.reader import corpus_categories

    store = as_store(cfg.store)
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


def resolve_assignment(cfg: TrainConfig, condition: str = "clean", report=None) -> FoldAssignment:
    """The run's speaker-independent fold assignment over :func:`run_rows`: the stored saliency's when it covers
    exactly these utterances of one corpus (its masks and centroids were made with it), else the fold rule
    ``cfg.folds`` on them; several corpora get ``K`` folds stratified by corpus (every fold tests speakers of
    every corpus, inner validation speakers are drawn from every corpus)."""
    import polars as pl

    from ray_ser.analysis import saliency_store as ss
    from ray_ser.corpora.folds import corpus_folds

    rows = run_rows(cfg, condition, report)
    ids = sorted(rows)
    speakers = [rows[u]["speaker"] for u in ids]
    corpora = [rows[u]["corpus"] for u in ids]
    labels = [rows[u]["label"] for u in ids]
    if len(set(corpora)) == 1:
        try:
            stored = ss.stored_assignment(cfg.store, cfg.model, condition)
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


def _in_corpora(cfg: TrainConfig, labels_rows: dict, utts: Sequence[str]) -> list[str]:
    if not cfg.corpora:
        return list(utts)
    return [u for u in utts if labels_rows[u]["corpus"] in cfg.corpora]


def model_config(cfg: TrainConfig, input_dim: int, n_classes: int, has_dims: bool, n_domains: int,
                 n_layers: int = 1) -> dict:
    """The fold model's :class:`~ray_ser.train.nn.ModelConfig` fields from the run's config and what the fold holds
    (``n_layers``: the layers concatenated in the input, which a learned layer mix sums)."""
    return {"input_dim": input_dim, "arch": cfg.arch, "pooling": cfg.pooling, "conv_channels": cfg.conv_channels,
            "gru_hidden": cfg.gru_hidden, "embed_dim": cfg.embed_dim, "mlp_hidden": cfg.mlp_hidden,
            "dropout": cfg.dropout, "n_classes": n_classes, "n_dims": 3 if (has_dims and cfg.dimensional) else 0,
            "n_domains": n_domains, "adv_weight": cfg.adv_weight, "n_clusters": cfg.n_clusters,
            "layer_mix": cfg.layer_mix, "n_layers": n_layers}


def plan_fold(cfg: TrainConfig, assignment: FoldAssignment, fold: int,
              layer: int | Sequence[int] | None = None) -> tuple[FoldPlan, Any, np.ndarray | None]:
    """(plan, labels, centroids) of outer ``fold``: inner split, layer(s), mask and centroids, all fitted or
    chosen on the fold's training speakers (``layer``: the fold's automatic choice, one layer or several, when
    the caller made it)."""
    from ray_ser.analysis import saliency_store as ss
    from ray_ser.store.core import as_store
    from ray_ser.train.reader import frame_stats, input_layers, load_labels

    store = as_store(cfg.store)
    inner, val = assignment.inner_split(fold, cfg.inner_share, cfg.seed)
    test = assignment.test_utts(fold)
    labels = load_labels(store, [*inner, *val, *test], domain_key=cfg.domain, label_set=cfg.label_set)
    inner, val, test = (_in_corpora(cfg, labels.rows, u) for u in (inner, val, test))
    if not inner or not val:
        raise ValueError(f"fold {fold}: no inner training or validation utterances of corpora {cfg.corpora}")
    cv_val = None
    names = sorted({labels.rows[u]["corpus"] for u in [*inner, *val]})
    if cfg.inner_folds > 1 and fold == ALL_SPEAKERS and cfg.final_selection == "corpora" and len(names) > 1:
        cv_val = [[u for u in [*inner, *val] if labels.rows[u]["corpus"] == c] for c in names]  # one corpus out each
    elif cfg.inner_folds > 1:  # every training speaker validates once; scaler and domains from all of them
        from ray_ser.analysis.layer_selection import inner_folds

        pool = [*inner, *val]
        strata = [f"{labels.rows[u]['corpus']}|{labels.rows[u]['label']}" if assignment.strata else labels.rows[u]["label"]
                  for u in pool]  # several corpora: every inner fold validates on speakers of every corpus
        ids = inner_folds([labels.rows[u]["speaker"] for u in pool], strata, cfg.inner_folds, cfg.seed)
        cv_val = [[u for u, i in zip(pool, ids) if i == k] for k in range(int(ids.max()) + 1)]
    fitted_on = [*inner, *val] if cv_val else inner
    labels = load_labels(store, [*inner, *val, *test], domain_utts=fitted_on, domain_key=cfg.domain,
                         label_set=cfg.label_set)
    if cfg.layers:
        read = named_layers(cfg)
    elif cfg.layer is not None:
        read = [cfg.layer]
    elif layer is not None:
        read = input_layers(layer)
    else:
        read = auto_layers(cfg, assignment, [fold])[fold]
    layer = read[0]
    dim = int(store.embeddings(cfg.model).schema.field("mean").type.list_size)
    keep = None
    if cfg.keep_ratio < 1.0:  # each layer's own mask of fold f, offset to its place in the concatenated frame
        parts = []
        for i, one in enumerate(read):
            try:
                mask = ss.saliency_mask(store, cfg.model, one, cfg.keep_ratio, fold=fold, fold_id=assignment.id)
            except (KeyError, ValueError):  # no stored saliency for this assignment: compute it on f's training speakers
                mask = ss.mask_on_utts(store, cfg.model, one, assignment.train_utts(fold), cfg.keep_ratio)
            parts.append(np.flatnonzero(mask) + i * dim)
        keep = np.concatenate(parts).tolist()
    dim *= len(read)
    if cfg.layer_mix == "learned" and keep is not None:
        raise ValueError("layer_mix learned sums whole layers: set keep_ratio 1.0")
    centroids = None
    if cfg.n_clusters and len(read) > 1 and cfg.layer_mix != "learned":
        raise ValueError(f"the frame-cluster head predicts one layer's k-means ids: set n_clusters=0 to train on "
                         f"layers {read}")
    if cfg.n_clusters and len(read) > 1:  # behind a layer mix: the ids of the fold's best layer among those read
        layer = cluster_layer(cfg, assignment, fold, read)
    if cfg.n_clusters:
        from ray_ser.analysis.clusters import ensure_centroids

        centroids = ensure_centroids(store, cfg.model, layer, cfg.n_clusters, assignment, fold, seed=cfg.seed)
    by_corpus: dict[str, list[str]] = {}
    for u in fitted_on:
        by_corpus.setdefault(labels.rows[u]["corpus"], []).append(u)
    # each dimension is masked per utterance in the CCC loss: a corpus with arousal alone trains the head too
    corpus_dims = {c: [d for d in DIMENSIONS if any(labels.rows[u].get(d) is not None for u in us)]
                   for c, us in sorted(by_corpus.items())}
    has_dims = any(corpus_dims.values())
    dim_scale = None
    if has_dims and cfg.dimensional:  # each corpus's scale (1-3, 1-7, -1..1) onto one range, from training utterances
        from ray_ser.train.reader import dim_ranges

        dim_scale = dim_ranges(labels.rows, [*inner, *val])  # training speakers only, never the test ones
        labels.with_dim_scale(dim_scale)
    n_domains = len(labels.domains) if cfg.adv_weight > 0 else 0
    model_cfg = model_config(cfg, len(keep) if keep is not None else dim, len(labels.categories), has_dims, n_domains,
                             len(read))
    norm_mean = norm_std = corpus_norm = None
    if cfg.scaler == "per-corpus":
        corpus_norm = {c: [v.tolist() for v in frame_stats(store, cfg.model, read, us, cfg.conditions, keep)]
                       for c, us in sorted(by_corpus.items())}
    else:
        norm_mean, norm_std = (v.tolist() for v in frame_stats(store, cfg.model, read, fitted_on, cfg.conditions, keep))
    plan = FoldPlan(
        fold=fold, fold_id=assignment.id, layer=layer, inner=inner, val=val, test=test,
        categories=labels.categories, keep=keep, input_dim=model_cfg["input_dim"], n_domains=n_domains,
        domains=labels.domains if n_domains else [], has_dims=bool(model_cfg["n_dims"]), model_cfg=model_cfg,
        norm_mean=norm_mean, norm_std=norm_std, layers=read if len(read) > 1 else None, cv_val=cv_val,
        corpus_norm=corpus_norm, corpus_counts={c: len(us) for c, us in sorted(by_corpus.items())},
        corpus_dims=corpus_dims, dim_scale=dim_scale)
    return plan, labels, centroids


def cluster_layer(cfg: TrainConfig, assignment: FoldAssignment, fold: int, read: Sequence[int]) -> int:
    """The layer whose k-means ids a mixed model's frame-cluster head predicts: ``cfg.layer`` when it is read, else
    the fold's best read layer by the layer criterion on its training speakers (the frames stage's layer)."""
    from ray_ser.analysis.layer_selection import ranked_layers

    if cfg.layer in read:
        return int(cfg.layer)
    order = ranked_layers(cfg.store, cfg.model, assignment, [fold], len(stored_layers(cfg.store, cfg.model)))[0][fold]
    return next((int(k) for k in order if k in read), int(read[0]))


def stored_layers(store, model: str, condition: str = "clean") -> list[int]:
    """Every layer of ``model`` stored with frames, in layer order: the stored layers, less those the extraction's
    ``frame_layers`` left without frames (its recorded options)."""
    from ray_ser.analysis.saliency_store import layers_of
    from ray_ser.store.core import as_store

    store = as_store(store)
    layers = layers_of(store, model, condition)
    framed = (store.extraction_meta(model).get("options") or {}).get("frame_layers")
    if framed is not None:
        layers = [k for k in layers if k in {int(f) for f in framed}]
    if not layers:
        raise ValueError(f"store {store.uri} holds no {condition} layer of {model} with frames")
    return layers


def named_layers(cfg: TrainConfig) -> list[int]:
    """The layers ``cfg.layers`` names: its list, or with ``all`` every layer stored with frames."""
    return stored_layers(cfg.store, cfg.model) if cfg.layers == "all" else [int(k) for k in cfg.layers]


def plan_mask(cfg: TrainConfig, plan: FoldPlan) -> np.ndarray | None:
    """The plan's kept dimensions as a bool mask over the (concatenated) input layers' dims."""
    if plan.keep is None:
        return None
    mask = np.zeros(_layer_dim(cfg) * len(plan.read_layers), bool)
    mask[plan.keep] = True
    return mask


def auto_layers(cfg: TrainConfig, assignment: FoldAssignment, folds: Sequence[int]) -> dict[int, list[int]]:
    """{fold: the layers it reads when the config names none}: its ``cfg.auto_layers`` best layers on its training
    speakers, in layer order (from the stored ranking when there is one)."""
    from ray_ser.analysis.layer_selection import ranked_layers

    ranked, source = ranked_layers(cfg.store, cfg.model, assignment, folds, cfg.auto_layers)
    log.info("layers per fold from %s: %s", source, ranked)
    return {f: sorted(v) for f, v in ranked.items()}


def fold_datasets(cfg: TrainConfig, plan: FoldPlan, labels, centroids) -> dict:
    """The fold's Ray Datasets, lazy: "train" (inner speakers, every training condition), "val" (validation
    speakers, clean) and, for a refit, "refit" (inner + validation speakers, every training condition). With inner
    folds (``plan.cv_val``): "refit" and, the same rows unsplit across workers, "pool".

    Nothing is materialised: each worker streams its shard from the store on the first epoch and keeps it in its
    :class:`~ray_ser.train.reader.ShardCache` when it fits (``cache_mb``), else streams every epoch, so no process
    (the object store included) ever holds a whole fold's frames."""
    from ray_ser.train.reader import frames_dataset

    common = {"labels": labels, "mask": plan_mask(cfg, plan), "centroids": centroids, "scale": plan.corpus_norm,
              **({"cluster_layer": plan.layer} if centroids is not None and plan.layers else {})}
    layers = plan.read_layers
    out = {}
    if not plan.cv_val:
        out["train"] = frames_dataset(cfg.store, cfg.model, layers, plan.inner, conditions=cfg.conditions, **common)
        out["val"] = frames_dataset(cfg.store, cfg.model, layers, plan.val, conditions=["clean"], **common)
    if cfg.refit:  # inner folds imply a refit
        out["refit"] = frames_dataset(cfg.store, cfg.model, layers, [*plan.inner, *plan.val], conditions=cfg.conditions,
                                      **common)
    if plan.cv_val:  # the same rows: "pool" unsplit, "refit" split across the workers (each read by its users)
        out["pool"] = out["refit"]
    return out


def _layer_dim(cfg: TrainConfig) -> int:
    from ray_ser.store.core import as_store

    return int(as_store(cfg.store).embeddings(cfg.model).schema.field("mean").type.list_size)


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
