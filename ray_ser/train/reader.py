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
import zlib
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_ser.analysis.fold_inputs import (  # noqa: F401  (moved below the analyses; named here as before)
    IGNORE,
    TARGET_RANGE,
    Labels,
    TargetColumns,
    corpus_categories,
    dim_ranges,
    frame_stats,
    input_layers,
    load_labels,
    scale_dims,
)
from ray_ser.store.core import Store

READ_LOG_ENV = "RAY_SER_READ_LOG"
"""When set, :func:`frames_dataset` appends every utt_id it is asked to read to this file (tests use it to
prove that a search never reads outer test speakers)."""


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




def frames_dataset(store: Store, model: str, layer: int | Sequence[int], utt_ids: Sequence[str], labels: Labels,
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
    def read(cls, store: Store, model: str, layers: Sequence[int], utt_ids: Sequence[str],
             conditions: Sequence[str]) -> "PooledFrames":
        """The mean frames of ``layers`` x ``conditions`` x ``utt_ids`` (one Ray Data pass over their frames)."""
        from ray_ser.store.take import rows_dataset

        if os.environ.get(READ_LOG_ENV):
            with open(os.environ[READ_LOG_ENV], "a") as fh:
                fh.write("".join(f"{u}\n" for u in utt_ids))
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

    def __init__(self, max_bytes: int, mean_frames: bool = False, dense: bool = True):
        self.max_bytes = int(max_bytes)
        self.mean_frames = mean_frames
        self.rows: dict | None = None
        self.streaming = self.max_bytes <= 0
        self.dense = dense
        self._dense: DenseRows | None = None
        self._keys: dict | None = None

    def _read(self, source, chunk_rows: int) -> Iterator[dict]:
        chunks = source.iter_batches(batch_size=chunk_rows, batch_format="numpy")
        return (mean_frames(c) for c in chunks) if self.mean_frames else chunks

    def chunks(self, source, chunk_rows: int, rng: np.random.Generator | None = None,
               only: frozenset | None = None, dense_rows: int | None = None) -> Iterator[dict]:
        """The shard's rows in chunks of ``chunk_rows``: all rows permuted by ``rng`` (in stored order when None);
        ``only``: just the rows of these utt_ids (one cache then serves every inner fold). The first call reads
        ``source`` once, whole, before yielding, so an epoch's order never depends on whether the cache was warm
        (a resumed run draws the same batches as an uninterrupted one). ``dense_rows``: about the chunk size instead (the
        multiple of ``chunk_rows`` at or below it) when the rows are held dense, so an evaluation pass takes a few
        large batches, not many small ones, each made of whole small ones."""
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
                if self.dense and DenseRows.fits(self.rows):
                    self._dense = DenseRows(self.rows)
                    self._keys = {**{k: self.rows[k] for k in DenseRows.KEYS if k in self.rows},
                                  "_row": np.arange(len(self.rows["utt_id"]))}
        if stream is not None:
            if only is not None:
                stream = (part for part in (take_rows(c, _in(c["utt_id"], only)) for c in stream) if len(part["utt_id"]))
            yield from (stream if rng is None else window_shuffled(stream, rng))
            return
        ids = self.rows.get("utt_id", ())
        rows = np.arange(len(ids)) if only is None else _in(ids, only)
        order = rows if rng is None else rows[rng.permutation(len(rows))]
        table = self.rows if self._keys is None else self._keys  # dense rows: their keys and positions only
        if dense_rows and self._dense is not None:  # a multiple of chunk_rows: each chunk holds whole batches
            chunk_rows = max(chunk_rows, dense_rows // chunk_rows * chunk_rows)
        for start in range(0, len(order), chunk_rows):
            yield take_rows(table, order[start:start + chunk_rows])

    def collate(self, batch: dict, device=None) -> dict:
        """A batch of :meth:`chunks` collated: gathered from the dense tensors by row position (``_row``) when the
        cache holds one-frame rows, else :func:`collate`."""
        if "_row" in batch and self._dense is not None:
            return self._dense.take(batch["_row"], device)
        return collate(batch, device)


class DenseRows:
    """A cached shard whose rows are one frame each (mean frames: the pooled path, or an MLP's frame-path cache)
    collated once into tensors, so a batch is an index into them: the same tensors :func:`collate` builds from
    those rows (float32 frames, lengths 1, targets), without per-row Python per batch."""

    KEYS = ("utt_id", "condition", "corpus", "n_frames")
    """The columns the epoch's draw reads (shuffle, corpus balance, condition pick, length buckets)."""

    def __init__(self, rows: dict):
        self.tensors = collate({k: v for k, v in rows.items() if k not in self.KEYS}, None)
        self.tensors["x"] = self.tensors["x"].float()
        self.on: dict = {}

    @staticmethod
    def fits(rows: dict) -> bool:
        """Rows this class collates as :func:`collate` would: one frame each of one width, no frame-cluster ids."""
        xs = rows.get("x")
        if not rows or xs is None or "frame_ids" in rows or len(xs) == 0 or xs.dtype != object:
            return False
        shapes = {getattr(a, "shape", None) for a in xs}
        if len(shapes) != 1:
            return False
        (shape,) = shapes
        return shape is not None and len(shape) == 2 and shape[0] == 1

    def take(self, rows: np.ndarray, device=None) -> dict:
        """The batch of positions ``rows``, on ``device`` (the tensors are moved there once)."""
        import torch

        key = "cpu" if device is None else str(torch.device(device))
        if key not in self.on:
            self.on[key] = self.tensors if key == "cpu" else {k: v.to(device) for k, v in self.tensors.items()}
        tensors = self.on[key]
        idx = torch.from_numpy(np.asarray(rows, np.int64))
        if key != "cpu":
            idx = idx.to(device)
        return {k: v.index_select(0, idx) for k, v in tensors.items()}


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
