"""``ray-ser predict --store S``: the foundation model's frames of scored audio kept in a LanceDB store, so a second
model (or a second run) on the same audio skips the forward. A table per foundation-model identity (model id,
weights hash, sample rate, Whisper mode, precision) holds one row per (audio, layer), every layer the forward
computed, float16 as the store keeps frames; a row's key is the sha256 of the samples the forward saw, so a changed
file, another window or another model never reads a stale entry."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

META_KEY = b"ray_ser.predict_cache"
KIND = "fm_cache"
"""Table-name prefix: ``fm_cache__<model>_<identity hash>`` (the model id made safe), apart from extraction's
``emb__`` tables."""
CHUNK = 256
"""Keys per Lance filter."""


def content_key(wave: np.ndarray) -> str:
    """sha256 of the float32 samples the foundation model is fed (after decoding, down-mixing and resampling)."""
    return hashlib.sha256(np.ascontiguousarray(wave, dtype=np.float32).tobytes()).hexdigest()


def schema(dim: int, identity: Mapping[str, Any]) -> pa.Schema:
    return pa.schema([
        ("key", pa.string()), ("layer", pa.int16()), ("n_frames", pa.int32()),
        ("frames", pa.list_(pa.list_(pa.float16(), dim))),
    ]).with_metadata({META_KEY: json.dumps(dict(identity), sort_keys=True).encode()})


def table_for(identity: Mapping[str, Any]) -> str:
    """The cache table of a foundation-model identity: its model id made safe, and a hash of the whole identity."""
    from ray_ser.store.names import table_name

    digest = hashlib.sha256(json.dumps(dict(identity), sort_keys=True).encode()).hexdigest()[:12]
    return table_name(f"{identity.get('model')}~{digest}", kind=KIND)


class FrameCache:
    """Frames by content key in one store table: :meth:`get` what is there, :meth:`put` what the forward computed."""

    def __init__(self, store, identity: Mapping[str, Any]):
        from ray_ser.store.core import as_store

        self.store, self.identity = as_store(store), dict(identity)
        self.name = table_for(self.identity)

    def get(self, keys: Iterable[str], layers: Sequence[int]) -> dict[str, dict[int, np.ndarray]]:
        """{key: {layer: (frames, dim) float16}} of the keys whose every one of ``layers`` is cached."""
        import pyarrow.compute as pc

        from ray_ser.store.names import sql_string

        table = self.store.open_committed(self.name)
        wanted = sorted(set(keys))
        if table is None or not wanted:
            return {}
        ds = table.to_lance()
        out: dict[str, dict[int, np.ndarray]] = {}
        layer_list = ", ".join(str(int(x)) for x in layers)
        for k in range(0, len(wanted), CHUNK):
            chunk = wanted[k:k + CHUNK]
            t = ds.to_table(columns=["key", "layer", "frames"],
                            filter=f"key IN ({', '.join(map(sql_string, chunk))}) AND layer IN ({layer_list})")
            if not t.num_rows:
                continue
            col = t.column("frames").combine_chunks()
            dim = col.type.value_type.list_size
            values = col.flatten().flatten().to_numpy(zero_copy_only=False).astype(np.float16).reshape(-1, dim)
            ends = np.cumsum(pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False))
            for key, layer, x in zip(t.column("key").to_pylist(), t.column("layer").to_pylist(),
                                     np.split(values, ends[:-1])):
                out.setdefault(key, {})[int(layer)] = x
        return {k: v for k, v in out.items() if all(int(x) in v for x in layers)}

    def put(self, items: Mapping[str, Mapping[int, np.ndarray]]) -> int:
        """Append every layer of ``items`` ({key: {layer: frames}}) in one commit; returns the rows written."""
        rows = [(key, layer, np.asarray(x, np.float16)) for key, frames in items.items() for layer, x in frames.items()]
        if not rows:
            return 0
        dim = rows[0][2].shape[1]
        flat = pa.array(np.concatenate([x.reshape(-1) for _, _, x in rows]), pa.float16())
        offsets = pa.array(np.concatenate([[0], np.cumsum([len(x) for _, _, x in rows])]).astype(np.int32))
        frames = pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(flat, dim))
        sch = schema(dim, self.identity)
        data = pa.table({"key": [k for k, _, _ in rows], "layer": pa.array([lay for _, lay, _ in rows], pa.int16()),
                         "n_frames": pa.array([len(x) for _, _, x in rows], pa.int32()), "frames": frames}).cast(sch)
        table = self.store.open_or_create(self.name, sch)
        table.add(data)
        log.debug("cached %d frame rows in %s", data.num_rows, self.name)
        return data.num_rows
