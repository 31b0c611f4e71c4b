"""Exact reads of chosen rows of an embeddings table, as a Ray Dataset, by row address.

A Lance filter ``utt_id IN (...)`` is parsed again by every lance-ray read task and by the planner's row count of
each, so reading a fold that way cost its ids times the tasks before a row came back. Here the driver scans the key
columns once (layer and condition filtered in Lance, the utterance set by an Arrow hash lookup), cuts the wanted
rows' addresses into blocks of about ``block_mb`` of frames, and each read task takes its block's rows by address
from the version the driver saw, so a commit meanwhile cannot shift them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_ser.store import catalog

ADDRESS = "_rowaddr"


def wanted_rows(uri: str, layers: Sequence[int], conditions: Sequence[str] | None, utt_ids: Sequence[str] | None,
                storage_options: dict[str, str] | None = None):
    """(the table as opened, a ``lance.LanceDataset``; key rows): ``utt_id``, ``condition``, ``layer``, ``n_frames`` and the row address of every
    stored row of ``layers`` x ``conditions`` (all when None) x ``utt_ids`` (all when None), in storage order."""
    import lance

    ds = lance.dataset(uri, storage_options=storage_options)
    keys = ds.to_table(columns=["utt_id", "condition", "layer", "n_frames"], with_row_address=True,
                       filter=catalog.where(layer=[int(x) for x in layers],
                                            condition=None if conditions is None else list(conditions)))
    if utt_ids is not None:
        keys = keys.filter(pc.is_in(keys.column("utt_id"), value_set=pa.array(sorted({str(u) for u in utt_ids}),
                                                                              pa.string())))
    return ds, keys


def address_blocks(keys: pa.Table, row_bytes: np.ndarray, block_bytes: int, by_key: bool = False) -> list[pa.Table]:
    """``keys`` cut into consecutive blocks of at most ``block_bytes`` (a row larger than that is a block alone);
    ``by_key``: sorted by (utterance, condition) first and cut only between them, so a block holds every layer of
    each of its keys."""
    if by_key:
        order = pc.sort_indices(keys, sort_keys=[("utt_id", "ascending"), ("condition", "ascending"),
                                                 ("layer", "ascending")])
        keys, row_bytes = keys.take(order), np.asarray(row_bytes)[order.to_numpy()]
    n = keys.num_rows
    if n == 0:
        return []
    ends = np.cumsum(np.asarray(row_bytes, np.float64))
    cuts = np.searchsorted(ends, np.arange(1, int(ends[-1] // block_bytes) + 1) * float(block_bytes), side="right")
    if by_key:  # move each cut back to the start of the key it would split
        u, c = keys.column("utt_id").to_numpy(zero_copy_only=False), keys.column("condition").to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (c[1:] != c[:-1])])
        cuts = starts[np.maximum(np.searchsorted(starts, cuts, side="right") - 1, 0)]
    bounds = np.unique(np.r_[0, cuts[(cuts > 0) & (cuts < n)], n])
    return [keys.slice(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]


_DATASETS: dict[tuple[str, int], object] = {}


def take_block(block: pa.Table, uri: str, version: int, columns: Sequence[str],
               storage_options: dict[str, str] | None = None) -> pa.Table:
    """Ray Data map function: the stored ``columns`` of a block's row addresses, in the block's order."""
    import lance

    ds = _DATASETS.get((uri, version))
    if ds is None:
        ds = _DATASETS[(uri, version)] = lance.dataset(uri, version=version, storage_options=storage_options)
        while len(_DATASETS) > 8:
            _DATASETS.pop(next(iter(_DATASETS)))
    return ds._take_rows(block.column(ADDRESS).combine_chunks(), columns=list(columns))


def rows_dataset(uri: str, columns: Sequence[str], layers: Sequence[int], conditions: Sequence[str] | None,
                 utt_ids: Sequence[str] | None, storage_options: dict[str, str] | None = None,
                 block_mb: float = 64, by_key: bool = False):
    """A Ray Dataset of ``columns`` of exactly the stored rows of ``layers`` x ``conditions`` x ``utt_ids`` (see
    :func:`wanted_rows`), one read task per block of about ``block_mb`` of frames (see :func:`address_blocks`)."""
    import ray

    table, keys = wanted_rows(uri, layers, conditions, utt_ids, storage_options)
    version, schema = table.version, table.schema
    dim = schema.field("mean").type.list_size
    per_row = 8 * dim  # mean and std, float32
    row_bytes = np.full(keys.num_rows, float(per_row))
    if "frames" in columns:
        row_bytes += keys.column("n_frames").to_numpy(zero_copy_only=False).astype(np.float64) * dim * 2
    blocks = address_blocks(keys.select([ADDRESS, "utt_id", "condition", "layer"]), row_bytes,
                            int(block_mb * 2 ** 20), by_key)
    if not blocks:
        return ray.data.from_arrow(pa.schema([schema.field(c) for c in columns]).empty_table())
    return ray.data.from_arrow([b.select([ADDRESS]) for b in blocks]).map_batches(
        take_block, fn_kwargs={"uri": uri, "version": version, "columns": list(columns),
                               "storage_options": storage_options},
        batch_format="pyarrow", batch_size=None)
