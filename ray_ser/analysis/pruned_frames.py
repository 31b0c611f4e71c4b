"""A saliency-pruned frame store: one layer's frames holding only the dimensions saliency keeps at a keep ratio.

Written by ``jobs/prune_frames.py`` after ``jobs/saliency.py``. Outer fold f's mask is ranked without fold f's
speakers, so every fold needs its own mask; a copy of the frames per fold would multiply the store instead
of shrinking it. The table therefore holds the *union* of every fold's kept dimensions (fold -1's
included), and :func:`iter_pruned_frames` hands fold f exactly its own dimensions out of it: what a
fold-f model reads equals ``frames[:, saliency_mask(..., fold=f)]`` of the full store, never a dimension
chosen with its test speakers. One table per (model, layer, keep ratio), named with the store's helpers
(``pruned__<model>_L<layer>_keep<ratio>``); its schema metadata records the union, each fold's dimensions,
the fold assignment's id and the saliency it came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from ray_ser.store.core import Store, as_store, layer_filter
from ray_ser.store.names import table_name

META_KEY = b"ray_ser.pruned"


def pruned_key(model: str, layer: int, keep_ratio: float) -> str:
    """The key a pruned frame store is filed under: ``<model>@L<layer>@keep<ratio>``."""
    return f"{model}@L{int(layer)}@keep{float(keep_ratio):g}"


def pruned_table_name(model: str, layer: int, keep_ratio: float) -> str:
    """``pruned__`` + the safe form of :func:`pruned_key` (the store's table naming)."""
    return table_name(pruned_key(model, layer, keep_ratio), kind="pruned")


def pruned_schema(width: int, meta: dict) -> pa.Schema:
    return pa.schema([
        ("utt_id", pa.string()), ("condition", pa.string()), ("layer", pa.int16()), ("n_frames", pa.int32()),
        ("frames", pa.list_(pa.list_(pa.float16(), width))),
    ], metadata={META_KEY: json.dumps(meta, sort_keys=True).encode()})


def fold_masks(store: str | Store, model: str, layer: int, keep_ratio: float, condition: str = "clean",
               score: str = "ccs") -> tuple[dict[int, np.ndarray], str]:
    """({fold: bool mask} for every stored outer fold and fold -1, the fold assignment's id) of one layer."""
    from ray_ser.analysis import saliency_store as ss

    assignment = ss.stored_assignment(store, model, condition)
    folds = sorted({int(f) for f in assignment.folds} | {-1})
    return ({f: ss.saliency_mask(store, model, layer, keep_ratio, f, condition, score, fold_id=assignment.id)
             for f in folds}, assignment.id)


@dataclass
class PrunedInfo:
    table: str
    rows: int
    width: int  # stored dimensions (the union of the folds' masks)
    dim: int  # the layer's full width
    kept_per_fold: int


def _prune(frames: pa.ListArray, keep: np.ndarray) -> pa.ListArray:
    """The same list of (n_frames, dim) matrices with only the ``keep`` columns (rows are never null here)."""
    flat = frames.flatten()  # respects the slice: this batch's frames only
    dim = flat.type.list_size
    values = flat.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)[:, keep]
    offsets = frames.offsets.to_numpy()
    offsets = (offsets - offsets[0]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(values).reshape(-1)), len(keep)))


def write_pruned_frames(store: str | Store, model: str, layer: int, keep_ratio: float,
                        conditions: Sequence[str] | None = None, saliency_condition: str = "clean",
                        score: str = "ccs", commit_mb: float = 64.0, batch_rows: int = 256) -> PrunedInfo:
    """(Re)write the pruned frame table of ``model``'s ``layer`` at ``keep_ratio`` from the full frame store.

    ``conditions``: which conditions' frames to copy (default: all the layer has frames for). Masks come from
    the saliency of ``saliency_condition``. The table is replaced as a whole (overwrite, then appends)."""
    store = as_store(store)
    masks, fold_id = fold_masks(store, model, layer, keep_ratio, saliency_condition, score)
    union = np.flatnonzero(np.any(np.stack(list(masks.values())), axis=0))
    dim = len(next(iter(masks.values())))
    meta = {"model": model, "layer": int(layer), "keep_ratio": float(keep_ratio), "score": score,
            "saliency_condition": saliency_condition, "fold_id": fold_id, "dim": dim,
            "dims": union.tolist(), "folds": {str(f): np.flatnonzero(m).tolist() for f, m in masks.items()}}
    schema = pruned_schema(len(union), meta)
    emb = store.embeddings(model).to_lance()
    if conditions is None:
        found = emb.to_table(columns=["condition"], filter=f"layer = {int(layer)} AND frames IS NOT NULL")
        conditions = sorted(set(found.column("condition").to_pylist()))
    name = pruned_table_name(model, layer, keep_ratio)
    table = store.db.create_table(name, schema=schema, mode="overwrite")
    pending: list[pa.Table] = []
    size = rows = 0
    for condition in conditions:
        for batch in emb.to_batches(columns=["utt_id", "condition", "layer", "n_frames", "frames"],
                                    filter=layer_filter(condition, layer) + " AND frames IS NOT NULL",
                                    batch_size=batch_rows):
            if not batch.num_rows:
                continue
            part = pa.Table.from_arrays([batch.column("utt_id"), batch.column("condition"), batch.column("layer"),
                                         batch.column("n_frames"), _prune(batch.column("frames"), union)],
                                        schema=schema.remove_metadata())
            pending.append(part)
            size += part.nbytes
            rows += part.num_rows
            if size >= commit_mb * 2**20:
                table.add(pa.concat_tables(pending))
                pending, size = [], 0
    if pending:
        table.add(pa.concat_tables(pending))
    return PrunedInfo(name, rows, len(union), dim, int(next(iter(masks.values())).sum()))


def pruned_meta(store: str | Store, model: str, layer: int, keep_ratio: float) -> dict:
    """The pruned table's record: union ``dims``, each fold's ``folds`` dimensions, fold_id, saliency source."""
    store = as_store(store)
    name = pruned_table_name(model, layer, keep_ratio)
    if not store.has(name):
        raise KeyError(f"store {store.uri} has no {name}: run jobs/prune_frames.py --model {model} --layer {layer} "
                       f"--keep-ratio {keep_ratio:g} first")
    return json.loads(store.open(name).schema.metadata[META_KEY])


def iter_pruned_frames(store: str | Store, model: str, layer: int, keep_ratio: float, fold: int,
                       condition: str = "clean", utt_ids: Sequence[str] | None = None,
                       fold_id: str | None = None, batch_rows: int = 256) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (utt_id, frames) with frames (n_frames, kept) float16: fold ``fold``'s own saliency dimensions only.

    ``fold_id``, when given, must be the assignment the masks were made with (else ValueError)."""
    store = as_store(store)
    meta = pruned_meta(store, model, layer, keep_ratio)
    if fold_id is not None and fold_id != meta["fold_id"]:
        raise ValueError(f"{pruned_table_name(model, layer, keep_ratio)} was made under fold assignment "
                         f"{meta['fold_id']}, not {fold_id}: re-run jobs/prune_frames.py after jobs/saliency.py")
    if str(fold) not in meta["folds"]:
        raise KeyError(f"fold {fold} has no mask in {pruned_table_name(model, layer, keep_ratio)} "
                       f"(folds {sorted(int(f) for f in meta['folds'])})")
    cols = np.searchsorted(np.asarray(meta["dims"]), np.asarray(meta["folds"][str(fold)]))
    ds = store.open(pruned_table_name(model, layer, keep_ratio)).to_lance()
    for batch in ds.to_batches(columns=["utt_id", "frames"], filter=layer_filter(condition, layer, utt_ids),
                               batch_size=batch_rows):
        frames = batch.column("frames")
        for i, uid in enumerate(batch.column("utt_id").to_pylist()):
            values = frames[i].values
            yield uid, values.flatten().to_numpy(zero_copy_only=False).reshape(-1, values.type.list_size)[:, cols]
