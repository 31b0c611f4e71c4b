"""Training reader over the store: one layer's frames (or several layers', concatenated per frame) of chosen
utterances and conditions, labels joined, saliency mask and frame-cluster ids applied at read time, as a Ray
Dataset; plus the worker-side shard cache, shuffle, length buckets and collate.

Speaker independence is the caller's contract made easy: :func:`frames_dataset` reads exactly the
``utt_ids`` it is given (a fold's inner-training, validation or test utterances from
:class:`~ray_ser.corpora.folds.FoldAssignment`), and the mask and centroids passed in are those of that
outer fold (fitted without its test speakers), so nothing read for fold f depends on fold f's speakers.
"""

from __future__ import annotations

import itertools
import os
import uuid
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_ser.corpora.manifest import DIMENSIONS
from ray_ser.store import catalog
from ray_ser.store.core import Store, as_store

READ_LOG_ENV = "RAY_SER_READ_LOG"
"""When set, :func:`frames_dataset` appends every utt_id it is asked to read to this file (tests use it to
prove that a search never reads outer test speakers)."""
IGNORE = -100
"""Target value the losses skip (unlabelled utterance, padding frame, domain of a non-training speaker)."""


class Labels:
    """Per-utterance targets and metadata, looked up by utt_id in the map tasks.

    On the driver ``rows`` is a dict per utterance. What travels to Ray tasks is one Arrow table of those rows
    (:meth:`table`), not the dicts: every map task unpickles its arguments, and a dict per utterance made that
    cost grow with the corpus in each of a number of tasks that also grows with it (at 100,000 utterances the
    training readers spent over 90 % of their time unpickling labels). A worker process derives the target arrays
    and the utt_id index from the table once per Labels (:meth:`columns`, cached by ``token``)."""

    def __init__(self, categories: Sequence[str], rows: dict[str, dict], domains: Sequence[str], domain_key: str):
        self.categories, self.domains = list(categories), list(domains)
        self.domain_key = domain_key
        """Manifest column the adversarial head predicts ("speaker" or "corpus"); ``domains`` lists its classes."""
        self._rows: dict[str, dict] | None = rows
        self._table: pa.Table | None = None
        self.dim_scale: dict[str, dict[str, list[float]]] | None = None
        """{corpus: {dimension: [lo, hi]}}: each corpus's A/V/D targets mapped linearly from [lo, hi] to [-1, 1]
        (:func:`scale_dims`); None: as stored."""
        self.token = uuid.uuid4().hex  # names this label set in a worker's cache of derived columns

    def with_dim_scale(self, scale: dict[str, dict[str, list[float]]] | None) -> "Labels":
        """These labels with their A/V/D targets on one range per dimension (``scale``, see ``dim_scale``)."""
        self.dim_scale = scale
        self.token = uuid.uuid4().hex  # other targets: other derived columns
        return self

    @property
    def rows(self) -> dict[str, dict]:
        """{utt_id: row} (rebuilt from the table in a process that received the Labels pickled)."""
        if self._rows is None:
            self._rows = {r["utt_id"]: r for r in self._table.to_pylist()}
        return self._rows

    def table(self) -> pa.Table:
        """The rows as one Arrow table (utt_id, speaker, gender, corpus, label, pdf, A/V/D): what pickling sends."""
        if self._table is None:
            ids = list(self._rows)
            vals = list(self._rows.values())
            col = lambda k: [r.get(k) for r in vals]  # noqa: E731
            self._table = pa.table({
                "utt_id": pa.array(ids, pa.string()),
                **{k: pa.array(col(k)) for k in ("speaker", "gender", "corpus", "label")},
                "pdf": pa.array(col("pdf"), pa.list_(pa.float32())),
                **{d: pa.array(col(d), pa.float64()) for d in DIMENSIONS},
            })
        return self._table

    def __getstate__(self) -> dict:
        return {"categories": self.categories, "domains": self.domains, "domain_key": self.domain_key,
                "token": self.token, "table": self.table(), "dim_scale": self.dim_scale}

    def __setstate__(self, state: dict) -> None:
        self.categories, self.domains = state["categories"], state["domains"]
        self.domain_key, self.token = state["domain_key"], state["token"]
        self._table, self._rows = state["table"], None
        self.dim_scale = state.get("dim_scale")

    def domain_of(self, utt_id: str) -> int:
        """The utterance's domain class (IGNORE outside ``domains``)."""
        cols = self.columns()
        return int(cols.domain[cols.index[utt_id]])

    def columns(self) -> "TargetColumns":
        """The per-utterance target arrays, built once per process and label set (see the class note)."""
        cols = _COLUMNS.get(self.token)
        if cols is None:
            cols = _COLUMNS[self.token] = TargetColumns.build(self)
            while len(_COLUMNS) > 4:  # a few label sets per process (a trial's folds); oldest out
                _COLUMNS.pop(next(iter(_COLUMNS)))
        return cols


@dataclass
class TargetColumns:
    """Targets of every labelled utterance as arrays (row ``index[utt_id]``): what a batch takes its rows from."""

    index: dict[str, int]
    label_index: np.ndarray  # (n,) int64, IGNORE when unlabelled
    pdf: np.ndarray  # (n, C) float32: the votes' distribution, or one-hot of the label when there are none
    dims: np.ndarray  # (n, 3) float32 A/V/D, NaN when absent
    domain: np.ndarray  # (n,) int64 domain class, IGNORE outside the domains
    corpus: np.ndarray  # (n,) object

    @classmethod
    def build(cls, labels: Labels) -> "TargetColumns":
        t = labels.table()
        n, C = t.num_rows, len(labels.categories)
        ids = t.column("utt_id").to_pylist()
        cat = {c: i for i, c in enumerate(labels.categories)}
        names = t.column("label").to_pylist()
        unknown = sorted({x for x in names if x is not None and x not in cat})
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not among the categories {labels.categories}")
        label_index = np.array([IGNORE if x is None else cat[x] for x in names], np.int64)
        pdf = np.zeros((n, C), np.float32)
        votes = t.column("pdf").combine_chunks()
        full = np.flatnonzero(votes.value_lengths().fill_null(0).to_numpy(zero_copy_only=False) == C) if C else []
        if len(full):
            pdf[full] = votes.take(pa.array(full)).flatten().to_numpy(zero_copy_only=False).reshape(-1, C)
        one_hot = np.setdiff1d(np.flatnonzero(label_index >= 0), full)
        pdf[one_hot, label_index[one_hot]] = 1.0
        dims = np.stack([t.column(d).to_numpy(zero_copy_only=False).astype(np.float32) for d in DIMENSIONS], axis=1)
        if labels.dim_scale:
            dims = scale_dims(dims, t.column("corpus").to_pylist(), labels.dim_scale).astype(np.float32)
        first = {d: i for i, d in reversed(list(enumerate(labels.domains)))}  # the first index, as list.index
        domain = np.array([first.get(v, IGNORE) for v in t.column(labels.domain_key).to_pylist()], np.int64) \
            if labels.domain_key in t.column_names else np.full(n, IGNORE, np.int64)
        return cls(dict(zip(ids, range(n))), label_index, pdf, dims.reshape(n, len(DIMENSIONS)), domain,
                   np.array(t.column("corpus").to_pylist(), dtype=object))

    def take(self, utt_ids: Sequence[str]) -> np.ndarray:
        """Row positions of ``utt_ids`` (KeyError naming an utterance without labels)."""
        return np.fromiter((self.index[u] for u in utt_ids), np.int64, len(utt_ids))


_COLUMNS: dict[str, TargetColumns] = {}

TARGET_RANGE = (-1.0, 1.0)
"""The one range every corpus's A/V/D targets are mapped to for training (:func:`scale_dims`)."""


def dim_ranges(rows: dict[str, dict], utt_ids: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """{corpus: {dimension: [lo, hi]}}: the range of each corpus's A/V/D values among ``utt_ids`` (a fold's
    training utterances: nothing is read from its test speakers), the scale :func:`scale_dims` maps from."""
    found: dict[str, dict[str, list[float]]] = {}
    for u in utt_ids:
        r = rows[u]
        for d in DIMENSIONS:
            v = r.get(d)
            if v is None or not np.isfinite(v):
                continue
            lo_hi = found.setdefault(r["corpus"], {}).setdefault(d, [float(v), float(v)])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], float(v)), max(lo_hi[1], float(v))
    return found


def _affine(lo: float, hi: float) -> tuple[float, float]:
    """(a, b) with a * v + b mapping [lo, hi] onto TARGET_RANGE (a shift alone when lo == hi)."""
    t0, t1 = TARGET_RANGE
    a = (t1 - t0) / (hi - lo) if hi > lo else 1.0
    return a, (t0 - a * lo) if hi > lo else (0.5 * (t0 + t1) - lo)


def scale_dims(dims: np.ndarray, corpora: Sequence[str], scale: dict, inverse: bool = False) -> np.ndarray:
    """A/V/D values (n, 3) of utterances of ``corpora`` mapped from each corpus's [lo, hi] in ``scale`` onto
    TARGET_RANGE (``inverse``: back to the corpus's own scale); a corpus or dimension ``scale`` lacks is kept."""
    out = np.array(dims, dtype=np.float64, copy=True).reshape(len(corpora), len(DIMENSIONS))
    corpora = np.asarray(list(corpora), dtype=object)
    for corpus, per_dim in scale.items():
        rows = corpora == corpus
        if not rows.any():
            continue
        for j, d in enumerate(DIMENSIONS):
            if d not in per_dim:
                continue
            a, b = _affine(*per_dim[d])
            out[rows, j] = (out[rows, j] - b) / a if inverse else a * out[rows, j] + b
    return out


def load_labels(store: str | Store, utt_ids: Sequence[str], domain_utts: Sequence[str] = (),
                domain_key: str | None = None, label_set: Sequence[str] | None = None) -> Labels:
    """Labels of ``utt_ids`` from the stored manifests: category index, PDF, A/V/D, speaker, gender, corpus.

    With ``label_set`` the categories are the set's and every row's label and PDF are mapped into it
    (:mod:`ray_ser.corpora.label_sets`; a row outside the set keeps no label or PDF); without, the corpora must share
    one category list. The domain classes are the values of ``domain_key`` (default: "corpus" when the utterances
    span several corpora, else "speaker") among ``domain_utts`` (the training utterances); others get IGNORE."""
    store = as_store(store)
    manifests = store.manifests()
    if manifests is None:
        raise ValueError(f"store {store.uri} has no manifest: nothing to train on")
    wanted = set(utt_ids) | set(domain_utts)
    cols = [c for c in ("utt_id", "speaker", "gender", "corpus", "label", "pdf", *DIMENSIONS) if c in manifests.column_names]
    rows = {r["utt_id"]: r for r in manifests.select(cols).to_pylist() if r["utt_id"] in wanted}
    missing = sorted(wanted - set(rows))
    if missing:
        raise ValueError(f"{len(missing)} utterances have no manifest row in {store.uri}, e.g. {missing[:3]}")
    corpora = sorted({r["corpus"] for r in rows.values()})
    categories = corpus_categories(store, corpora, label_set, rows)
    key = domain_key or ("corpus" if len(corpora) > 1 else "speaker")
    domains = sorted({rows[u][key] for u in domain_utts if rows[u].get(key) is not None})
    return Labels(categories, rows, domains, key)


def corpus_categories(store: Store, corpora: Sequence[str], label_set: Sequence[str] | None = None,
                      rows: dict[str, dict] | None = None) -> list[str]:
    """The run's categories: ``label_set`` (and ``rows``, when given, mapped into it in place), else the category
    list the corpora's manifests share; corpora with different lists need a label set (the error says so)."""
    if label_set is not None:
        if rows is not None:
            from ray_ser.corpora.label_sets import map_rows

            own = {c: store.categories(c) for c in corpora}
            mapped = map_rows(rows, own, label_set)
            for u in rows:
                rows[u] = mapped.get(u, {**rows[u], "label": None, "pdf": None})
        return list(label_set)
    lists = {c: store.categories(c) for c in corpora}
    named = {c: v for c, v in lists.items() if v}  # a dimensional-only corpus (no categories) goes with any list
    first = next(iter(named.values()), [] if lists else None)
    if first is None or any(v != first for v in named.values()):
        raise ValueError(f"the corpora {list(corpora)} have different category lists "
                         f"({'; '.join(f'{c}: {v}' for c, v in lists.items())}): choose a label set to train them "
                         "together (--label-set four|five|NAME,NAME,... or train.label_set)")
    return list(first)


def ragged(items) -> np.ndarray:
    """A 1-D object array holding ``items`` as they are: per-utterance frames or ids of any lengths (given
    equal-shaped arrays, ``np.array`` would stack them into one block instead)."""
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


def standardise(kept: np.ndarray, lengths: np.ndarray, corpora: Sequence[str], scale: dict) -> np.ndarray:
    """Frames ``kept`` (sum of ``lengths``, dim) of utterances of ``corpora`` standardised by their corpus's
    (mean, std) in ``scale`` (a per-corpus scaler); float16 like the stored frames."""
    out = kept.astype(np.float32)
    per_frame = np.repeat(np.asarray(corpora, dtype=object), lengths)
    for corpus in sorted(set(corpora)):
        if corpus not in scale:
            raise ValueError(f"no scaler for corpus {corpus} (the per-corpus scaler has {sorted(scale)})")
        mean, std = (np.asarray(v, np.float32) for v in scale[corpus])
        rows = per_frame == corpus
        out[rows] = (out[rows] - mean) / std
    return out.astype(np.float16)


def _as_examples(ids: list[str], conditions: list, X: np.ndarray, lengths: np.ndarray, keep: np.ndarray | None,
                 labels: Labels, centroids: np.ndarray | None, scale: dict | None = None,
                 cluster_X: np.ndarray | None = None) -> dict:
    """Rows of stacked frames ``X`` (sum of ``lengths``, dim) -> examples: ragged masked ``x`` (standardised per
    corpus with ``scale``), targets, the corpus, and frame-cluster ids (nearest centroid in the full space of
    ``cluster_X``, the centroids' layer, when ``X`` concatenates several; else of ``X``)."""
    from ray_ser.analysis.clusters import nearest

    bounds = np.concatenate([[0], np.cumsum(lengths)])
    cols = labels.columns()
    at = cols.take(ids)
    corpora = cols.corpus[at]
    out = {"utt_id": np.array(ids, dtype=object), "condition": np.array(conditions, dtype=object),
           "corpus": corpora, "n_frames": lengths, "label_index": cols.label_index[at], "pdf": cols.pdf[at],
           "dims": cols.dims[at], "domain": cols.domain[at]}
    kept = X if keep is None else X[:, keep]
    if scale is not None:
        kept = standardise(kept, lengths, corpora, scale)
    out["x"] = ragged([kept[bounds[i]:bounds[i + 1]] for i in range(len(ids))])
    if centroids is not None:
        cid = nearest(X if cluster_X is None else cluster_X, centroids).astype(np.int64)
        out["frame_ids"] = ragged([cid[bounds[i]:bounds[i + 1]] for i in range(len(ids))])
    return out


def _frame_matrix(batch: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(utt_ids, frames stacked (sum of n_frames, dim) float16, n_frames) of stored rows; a row stored without
    frames is an error naming it."""
    frames = batch.column("frames").combine_chunks()
    ids = batch.column("utt_id").to_pylist()
    if frames.null_count:
        bad = [u for u, ok in zip(ids, frames.is_valid().to_pylist()) if not ok]
        raise ValueError(f"{bad[:3]}: stored without frames (extracted with --no-frames): train the MLP on pooled "
                         "vectors or re-extract with frames")
    lengths = frames.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    flat = frames.flatten()
    return ids, flat.flatten().to_numpy(zero_copy_only=False).reshape(-1, flat.type.list_size), lengths


def to_examples(batch: pa.Table, keep: np.ndarray | None, labels: Labels, centroids: np.ndarray | None,
                scale: dict | None = None) -> dict:
    """Ray Data map function: stored rows (utt_id, condition, frames) -> examples with the masked float16
    frames as a ragged ``x``, the targets, and frame-cluster ids (nearest centroid in the full space)."""
    ids, X, lengths = _frame_matrix(batch)
    return _as_examples(ids, batch.column("condition").to_pylist(), X, lengths, keep, labels, centroids, scale)


def join_layers(t: pa.Table, layers: Sequence[int], keep: np.ndarray | None, labels: Labels,
                scale: dict | None = None, centroids: np.ndarray | None = None, cluster_layer: int | None = None) -> dict:
    """Ray Data map function over stored rows of every layer of some (utterance, condition) keys (a whole block of
    :func:`~ray_ser.store.take.rows_dataset` ``by_key``): examples whose frames concatenate the layers' vectors in
    ``layers`` order (with ``centroids``: frame-cluster ids from ``cluster_layer``'s frames)."""
    t = t.sort_by([("utt_id", "ascending"), ("condition", "ascending")])
    per_layer = []
    for layer in layers:
        part = t.filter(pc.equal(t.column("layer"), layer))
        keys = list(zip(part.column("utt_id").to_pylist(), part.column("condition").to_pylist()))
        per_layer.append((keys, *_frame_matrix(part)[1:]))
    keys = per_layer[0][0]
    for layer, (k, _, n) in zip(layers, per_layer):
        if k != keys or not np.array_equal(n, per_layer[0][2]):
            missing = sorted(set(keys) ^ set(k))[:3]
            raise ValueError(f"layer {layer} does not hold the same (utterance, condition) rows and frame counts as "
                             f"layer {layers[0]}: e.g. {missing or 'frame counts differ'}")
    X = np.hstack([x for _, x, _ in per_layer])
    cluster_X = per_layer[list(layers).index(cluster_layer)][1] if centroids is not None else None
    return _as_examples([u for u, _ in keys], [c for _, c in keys], X, per_layer[0][2], keep, labels, centroids, scale,
                        cluster_X)


def input_layers(layer: int | Sequence[int]) -> list[int]:
    """A layer or a list of layers as a list (several layers are concatenated per frame)."""
    return [int(layer)] if isinstance(layer, (int, np.integer)) else [int(l) for l in layer]


def frames_dataset(store: str | Store, model: str, layer: int | Sequence[int], utt_ids: Sequence[str], labels: Labels,
                   conditions: Sequence[str] = ("clean",), mask: np.ndarray | None = None,
                   centroids: np.ndarray | None = None, batch_rows: int = 64, scale: dict | None = None,
                   cluster_layer: int | None = None):
    """A Ray Dataset of one model x layer(s) x conditions x utterance set: rows ``utt_id``, ``condition``,
    ``n_frames``, ``x`` (n_frames, kept dims) float16, ``label_index``, ``pdf``, ``dims`` (A/V/D, NaN when
    absent), ``domain`` and, with ``centroids`` (k, dim), ``frame_ids``. ``mask`` (bool over the layer's
    dims) keeps the saliency-selected dimensions; ``scale`` ({corpus: (mean, std)} over the kept dims) standardises
    each utterance's frames by its corpus's statistics (the per-corpus scaler).

    Several layers (a list) give each frame the concatenation of their vectors (``mask`` then spans the
    concatenated dims). The rows are read by address (:func:`~ray_ser.store.take.rows_dataset`): a read's set-up
    costs one scan of the key columns, whatever the number of ids and read tasks; several layers are read in
    blocks that hold every layer of their (utterance, condition) keys."""
    from ray_ser.store.take import rows_dataset

    if os.environ.get(READ_LOG_ENV):
        with open(os.environ[READ_LOG_ENV], "a") as fh:
            fh.write("".join(f"{u}\n" for u in utt_ids))
    store = as_store(store)
    uri = store.embeddings(model).to_lance().uri
    keep = None if mask is None else np.flatnonzero(np.asarray(mask, bool))
    layers = input_layers(layer)
    if len(layers) > 1:
        if centroids is not None and cluster_layer not in layers:
            raise ValueError(f"frame-cluster ids come from one layer's k-means: name that layer (cluster_layer) among "
                             f"{layers}, train on one layer, or turn the cluster head off")
        ds = rows_dataset(uri, ["utt_id", "condition", "layer", "frames"], layers, conditions, utt_ids,
                          store.storage_options, by_key=True)
        return ds.map_batches(join_layers, fn_kwargs={"layers": layers, "keep": keep, "labels": labels, "scale": scale,
                                                      "centroids": centroids, "cluster_layer": cluster_layer},
                              batch_format="pyarrow", batch_size=None)
    ds = rows_dataset(uri, ["utt_id", "condition", "frames"], layers, conditions, utt_ids, store.storage_options)
    return ds.map_batches(to_examples, fn_kwargs={"keep": keep, "labels": labels, "centroids": centroids, "scale": scale},
                          batch_format="pyarrow", batch_size=batch_rows)


def pool_layers(t: pa.Table) -> dict:
    """Ray Data map function: stored rows (utt_id, condition, layer, frames) -> each row's mean frame (float64 mean
    of the stored float16 frames, as :func:`mean_frames` takes it) and frame count."""
    ids, X, lengths = _frame_matrix(t)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    means = np.stack([X[bounds[i]:bounds[i + 1]].mean(0, dtype=np.float64) for i in range(len(ids))]) \
        if ids else np.zeros((0, X.shape[1]))
    return {"utt_id": np.array(ids, dtype=object), "condition": np.array(t.column("condition").to_pylist(), dtype=object),
            "layer": t.column("layer").to_numpy().astype(np.int64), "n_frames": lengths, "mean": means}


class PooledFrames:
    """Each stored (utterance, condition)'s mean frame per layer, read once (pooled in the reader, so only one
    vector per row leaves the read tasks) for every fold of a run whose model sees nothing but the mean frame: the
    saliency mask picks dimensions and a scaler is affine, so both commute with the mean (the per-corpus scaler
    up to the float16 rounding of the frame path's standardised frames). Held as one (keys, dim) float64 matrix per
    layer, so it pickles as a few arrays."""

    def __init__(self, keys: list[tuple[str, str]], n_frames: np.ndarray, means: dict[int, np.ndarray],
                 present: dict[int, np.ndarray]):
        self.keys, self.n_frames, self.means, self.present = keys, n_frames, means, present
        self.index = {k: i for i, k in enumerate(keys)}

    def __getstate__(self) -> dict:
        return {"keys": self.keys, "n_frames": self.n_frames, "means": self.means, "present": self.present}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @classmethod
    def read(cls, store: str | Store, model: str, layers: Sequence[int], utt_ids: Sequence[str],
             conditions: Sequence[str]) -> "PooledFrames":
        """The mean frames of ``layers`` x ``conditions`` x ``utt_ids`` (one Ray Data pass over their frames)."""
        from ray_ser.store.take import rows_dataset

        if os.environ.get(READ_LOG_ENV):
            with open(os.environ[READ_LOG_ENV], "a") as fh:
                fh.write("".join(f"{u}\n" for u in utt_ids))
        store = as_store(store)
        uri = store.embeddings(model).to_lance().uri
        ds = rows_dataset(uri, ["utt_id", "condition", "layer", "frames"], list(layers), list(conditions), utt_ids,
                          store.storage_options)
        rows = {}
        for b in ds.map_batches(pool_layers, batch_format="pyarrow", batch_size=64).iter_batches(
                batch_size=None, batch_format="numpy"):
            for u, c, layer, n, m in zip(b["utt_id"], b["condition"], b["layer"], b["n_frames"], b["mean"]):
                rows[(str(u), str(c), int(layer))] = (int(n), m)
        keys = sorted({(u, c) for u, c, _ in rows})
        at = {k: i for i, k in enumerate(keys)}
        n_frames = np.zeros(len(keys), np.int64)
        dim = len(next(iter(rows.values()))[1]) if rows else 0
        means = {int(l): np.zeros((len(keys), dim)) for l in layers}
        present = {int(l): np.zeros(len(keys), bool) for l in layers}
        for (u, c, layer), (n, m) in rows.items():
            i = at[(u, c)]
            n_frames[i], means[layer][i], present[layer][i] = n, m, True
        return cls(keys, n_frames, means, present)

    def examples(self, utt_ids: Sequence[str], conditions: Sequence[str], layers: Sequence[int], labels: Labels,
                 keep: Sequence[int] | None = None, scale: dict | None = None) -> dict:
        """Example rows (as :func:`frames_dataset` yields, ``x`` each row's (1, kept dims) float32 mean frame) of
        the stored (utterance, condition) pairs among ``utt_ids`` x ``conditions``, sorted by (utt_id, condition)."""
        keys = sorted((u, c) for u in set(utt_ids) for c in conditions if (u, c) in self.index)
        rows = np.array([self.index[k] for k in keys], np.int64)
        for l in layers:
            if int(l) not in self.means:
                raise ValueError(f"layer {l} was not read (the pooled frames hold layers {sorted(self.means)})")
            missing = rows[~self.present[int(l)][rows]]
            if len(missing):
                raise ValueError(f"layer {l} has no stored row of {self.keys[missing[0]]} while another layer has")
        X = np.hstack([self.means[int(l)][rows] for l in layers]) if layers else np.zeros((len(rows), 0))
        if keep is not None:
            X = X[:, list(keep)]
        cols = labels.columns()
        ids = [u for u, _ in keys]
        corpora = cols.corpus[cols.take(ids)]
        if scale is not None:
            for corpus in sorted(set(corpora)):
                if corpus not in scale:
                    raise ValueError(f"no scaler for corpus {corpus} (the per-corpus scaler has {sorted(scale)})")
                mean, std = (np.asarray(v, np.float32).astype(np.float64) for v in scale[corpus])
                sel = corpora == corpus
                X[sel] = (X[sel] - mean) / std
        lengths = self.n_frames[rows]
        # the one-frame "utterances" stand for the mean frame; n_frames keeps the real length (length buckets)
        out = _as_examples(ids, [c for _, c in keys], X.astype(np.float32), np.ones(len(keys), np.int64), None, labels,
                           None)
        out["n_frames"] = lengths
        return out


def frame_stats(store: str | Store, model: str, layer: int | Sequence[int], utt_ids: Sequence[str],
                conditions: Sequence[str] = ("clean",), keep: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation over every frame of ``utt_ids``, exactly, from the stored pooled
    rows (frame mean, frame std and frame count per utterance), so a fold's scaler reads no frame matrix; pass a
    fold's inner training utterances only (a scaler is fitted on training speakers, like everything else).
    Several layers: their statistics concatenated in order, as :func:`frames_dataset` concatenates frames."""
    table = as_store(store).embeddings(model).to_lance()
    means, stds = [], []
    for one in input_layers(layer):
        t = table.to_table(
            columns=["n_frames", "mean", "std"],
            filter=catalog.where(layer=one, condition=list(conditions), utt_id=list(utt_ids)))
        if t.num_rows == 0:
            raise ValueError(f"no rows of {model} layer {one} for the {len(utt_ids)} training utterances")
        n = t.column("n_frames").to_numpy().astype(np.float64)[:, None]
        dim = t.schema.field("mean").type.list_size
        mu = t.column("mean").combine_chunks().flatten().to_numpy().reshape(-1, dim).astype(np.float64)
        sd = t.column("std").combine_chunks().flatten().to_numpy().reshape(-1, dim).astype(np.float64)
        mean = (n * mu).sum(0) / n.sum()
        var = (n * (sd ** 2 + mu ** 2)).sum(0) / n.sum() - mean ** 2
        means.append(mean)
        stds.append(np.sqrt(np.clip(var, 1e-10, None)))
    mean, std = np.concatenate(means), np.concatenate(stds)
    if keep is not None:
        mean, std = mean[list(keep)], std[list(keep)]
    return mean.astype(np.float32), std.astype(np.float32)


# ---- batches --------------------------------------------------------------------------------------
def collate(batch: dict[str, np.ndarray], device=None) -> dict:
    """Pad a batch of examples to its longest utterance: ``x`` (B, T, D) float32 zeros after each end,
    ``lengths`` (B,), ``frame_ids`` padded with IGNORE; targets as tensors; ``dims_mask`` marks present A/V/D."""
    import torch

    xs = batch["x"]
    if isinstance(xs, np.ndarray) and xs.dtype != object and xs.ndim == 3:  # equal lengths: no padding
        x, fresh = torch.from_numpy(np.ascontiguousarray(xs)), False
        T = x.shape[1]
        lengths = np.full(len(x), T, np.int64)
    else:  # padded in the stored dtype (a float16 copy is a memcpy; numpy's cast to float32 is not)
        xs = list(xs)
        lengths = np.array([len(a) for a in xs], np.int64)
        T, D = int(lengths.max()), xs[0].shape[1]
        dtypes = {a.dtype for a in xs}
        buf = np.zeros((len(xs), T, D), dtypes.pop() if len(dtypes) == 1 else np.float32)
        for i, a in enumerate(xs):
            buf[i, :len(a)] = a
        x, fresh = torch.from_numpy(buf), True
    x = _as_float32(x, device, fresh)
    dims = np.asarray(batch["dims"], np.float32).reshape(len(xs), -1)
    out = {"x": x, "lengths": torch.from_numpy(lengths),
           "pdf": torch.from_numpy(np.stack(batch["pdf"]).astype(np.float32)),
           "label_index": torch.from_numpy(np.array(batch["label_index"], np.int64)),
           "dims": torch.from_numpy(np.nan_to_num(dims)), "dims_mask": torch.from_numpy(~np.isnan(dims)),
           "domain": torch.from_numpy(np.array(batch["domain"], np.int64))}
    if "frame_ids" in batch:
        ids = np.full((len(xs), T), IGNORE, np.int64)
        for i, a in enumerate(batch["frame_ids"]):
            ids[i, :len(a)] = a
        out["frame_ids"] = torch.from_numpy(ids)
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out


def _as_float32(x, device, fresh: bool):
    """Frames as float32 on ``device``: a GPU gets the stored float16 and casts it there (half the bytes over the
    bus, no host cast); on the CPU torch casts (about twice numpy's speed). Never a view of the cached rows
    unless ``fresh`` (the tensor is the collate's own buffer)."""
    import torch

    if device is not None and torch.device(device).type != "cpu":
        return x.to(device).float()
    if x.dtype != torch.float32:
        return x.float()
    return x if fresh else x.clone()


def pick_condition(utt_id: str, epoch: int, seed: int, conditions: Sequence[str]) -> str:
    """The condition an utterance is trained on in ``epoch`` (multi-condition training): a fixed function of
    (utterance, epoch, seed), so every worker and a resumed run draw the same copy."""
    return conditions[zlib.crc32(f"{seed}|{epoch}|{utt_id}".encode()) % len(conditions)]


def take_rows(batch: dict, idx: np.ndarray) -> dict:
    """The rows ``idx`` of every column of a batch (a dict of arrays)."""
    return {k: v[idx] for k, v in batch.items()}


def _concat(parts: list[dict]) -> dict:
    if len(parts) == 1:
        return parts[0]
    out = {}
    for k in parts[0]:
        vs = [p[k] for p in parts]
        if any(v.dtype == object for v in vs) or len({v.shape[1:] for v in vs}) > 1:  # ragged: an object array
            out[k] = ragged([a for v in vs for a in v])
        else:
            out[k] = np.concatenate(vs)
    return out


def window_shuffled(chunks: Iterator[dict], rng: np.random.Generator) -> Iterator[dict]:
    """Rows of consecutive chunks mixed in numpy: the first chunk is held back; each later one is pooled with
    the rows held, the pool permuted, a chunk's worth yielded and the rest held, so a row can travel any
    distance; every row comes out once, in an order fixed by ``rng``. (Ray Data's local shuffle buffer does the
    same with Arrow takes per batch, which cost more than the rest of an epoch's reading.)"""
    held: dict | None = None
    size = 0
    for chunk in chunks:
        n_new = len(chunk["utt_id"])
        if n_new == 0:
            continue
        size = max(size, n_new)
        if held is None:
            held = chunk
            continue
        pool = _concat([held, chunk])
        order = rng.permutation(len(pool["utt_id"]))
        yield take_rows(pool, order[:n_new])
        held = take_rows(pool, order[n_new:])
    if held is not None:
        order = rng.permutation(len(held["utt_id"]))
        for s in range(0, len(order), size):
            yield take_rows(held, order[s:s + size])


def _nbytes(chunk: dict) -> int:
    n = 0
    for v in chunk.values():
        n += sum(getattr(a, "nbytes", 0) for a in v) if v.dtype == object else v.nbytes
    return n


def _as_row_views(rows: dict) -> dict:
    """Equal-length frames ``x`` (n, T, D) as an object array of per-row views, so shuffling and bucketing move
    pointers, not frames; the collate copies each row once."""
    x = rows.get("x")
    if x is None or x.dtype == object:
        return rows
    return {**rows, "x": ragged(x)}


def mean_frames(chunk: dict) -> dict:
    """Rows with ``x`` replaced by each row's mean frame, shape (1, D), float32 (computed in float64 from the
    stored frames); ``n_frames`` keeps the real length, so length bucketing is unchanged."""
    return {**chunk, "x": ragged([np.asarray(a).mean(0, dtype=np.float64, keepdims=True).astype(np.float32)
                                  for a in chunk["x"]])}


def in_key_order(rows: dict) -> dict:
    """Rows sorted by (utt_id, condition): a cached shard's order, and so every epoch's draw, no longer depends on
    the order Ray Data's read tasks finished in (and the pooled path, :class:`PooledFrames`, draws the same)."""
    ids, conditions = rows["utt_id"], rows.get("condition", np.full(len(rows["utt_id"]), "", dtype=object))
    order = sorted(range(len(ids)), key=lambda i: (ids[i], conditions[i]))
    return take_rows(rows, np.asarray(order, np.int64))


class ShardCache:
    """A worker's shard kept in memory after its first full read, when it fits in ``max_bytes``: later epochs
    draw their rows from it in numpy instead of re-reading through Ray Data, whose fixed per-epoch cost (iterator
    and executor set-up) exceeds a small fold's whole read. A shard larger than the budget is streamed every
    epoch, shuffled in a window (:func:`window_shuffled`). With ``mean_frames`` each row keeps only its mean frame
    (:func:`mean_frames`), for a model that sees nothing else: the same inputs for ~T times less memory and
    collate work per epoch."""

    def __init__(self, max_bytes: int, mean_frames: bool = False):
        self.max_bytes = int(max_bytes)
        self.mean_frames = mean_frames
        self.rows: dict | None = None
        self.streaming = self.max_bytes <= 0

    def _read(self, source, chunk_rows: int) -> Iterator[dict]:
        chunks = source.iter_batches(batch_size=chunk_rows, batch_format="numpy")
        return (mean_frames(c) for c in chunks) if self.mean_frames else chunks

    def chunks(self, source, chunk_rows: int, rng: np.random.Generator | None = None,
               only: frozenset | None = None) -> Iterator[dict]:
        """The shard's rows in chunks of ``chunk_rows``: all rows permuted by ``rng`` (in stored order when None);
        ``only``: just the rows of these utt_ids (one cache then serves every inner fold). The first call reads
        ``source`` once, whole, before yielding, so an epoch's order never depends on whether the cache was warm
        (a resumed run draws the same batches as an uninterrupted one)."""
        stream = None
        if self.streaming:
            stream = self._read(source, chunk_rows)
        elif self.rows is None:
            parts, size = [], 0
            it = self._read(source, chunk_rows)
            for chunk in it:
                parts.append(chunk)
                size += _nbytes(chunk)
                if size > self.max_bytes:  # too big to hold: stream this epoch and every later one
                    self.streaming = True
                    stream = itertools.chain(parts, it)
                    break
            else:
                self.rows = _as_row_views(in_key_order(_concat(parts))) if parts else {}
        if stream is not None:
            if only is not None:
                stream = (part for part in (take_rows(c, _in(c["utt_id"], only)) for c in stream) if len(part["utt_id"]))
            yield from (stream if rng is None else window_shuffled(stream, rng))
            return
        ids = self.rows.get("utt_id", ())
        rows = np.arange(len(ids)) if only is None else _in(ids, only)
        order = rows if rng is None else rows[rng.permutation(len(rows))]
        for start in range(0, len(order), chunk_rows):
            yield take_rows(self.rows, order[start:start + chunk_rows])


class InMemorySource:
    """Example rows already in memory (the columns of a fold's dataset: ragged ``x``, targets, ...) behind the one
    method the trainer reads a source through, so a fold can be fitted without Ray Data: on a machine without Ray
    (a GPU box), in a notebook, in benchmarks that compare against the store."""

    def __init__(self, rows: dict[str, np.ndarray]):
        n = {len(v) for v in rows.values()}
        if len(n) != 1:
            raise ValueError(f"InMemorySource: columns of different lengths {sorted(n)}")
        self.rows = rows

    @classmethod
    def from_records(cls, records: list[dict]) -> "InMemorySource":
        """Rows as dicts (e.g. ``Dataset.take_all()``): the per-frame columns (``x``, ``frame_ids``) become ragged
        object columns, the rest are stacked."""
        rows = {}
        for k in records[0]:
            values = [r[k] for r in records]
            rows[k] = ragged(values) if k in ("x", "frame_ids") else np.asarray(values)
        return cls(rows)

    def __len__(self) -> int:
        return len(self.rows["utt_id"])

    def iter_batches(self, batch_size: int, batch_format: str = "numpy", **_) -> Iterator[dict]:
        for start in range(0, len(self), batch_size):
            yield take_rows(self.rows, np.arange(start, min(start + batch_size, len(self))))


def _in(utt_ids, keep: frozenset) -> np.ndarray:
    """Positions of the ``utt_ids`` that are in ``keep``."""
    return np.flatnonzero([u in keep for u in utt_ids])


def bucketed(chunks: Iterator[dict], batch_size: int, rng: np.random.Generator, epoch: int | None = None,
             seed: int = 0, conditions: Sequence[str] | None = None) -> Iterator[dict]:
    """Length-bucketed batches: each incoming chunk (several batches' worth of shuffled rows) is sorted by
    length and cut into ``batch_size`` batches, yielded in random order, so little of a batch is padding.
    With ``conditions`` (multi-condition training) only each utterance's copy for ``epoch`` is kept."""
    for chunk in chunks:
        if conditions is not None and len(conditions) > 1:
            keep = np.array([c == pick_condition(u, epoch or 0, seed, conditions)
                             for u, c in zip(chunk["utt_id"], chunk["condition"])])
            chunk = take_rows(chunk, np.flatnonzero(keep))
        n = len(chunk["utt_id"])
        if n == 0:
            continue
        order = np.argsort(chunk["n_frames"], kind="stable")
        parts = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        for j in rng.permutation(len(parts)):
            yield take_rows(chunk, parts[j])
