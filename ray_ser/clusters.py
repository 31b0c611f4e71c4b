"""Frame clusters (FLEA): k-means over one layer's frame embeddings; cluster ids as frame pseudo-labels.

- :func:`fit_kmeans` trains scikit-learn MiniBatchKMeans (n_init=3, batch 4096, ``random_state=seed``)
  for each k on a seeded random sample of the frames (float32) of the training utterances of one
  condition, and stores the centroids.  The sample is drawn from the utterances sorted by id, so the
  same store, seed and k give the same centroids.
- :func:`assign_frames` gives every stored frame of that layer (all conditions by default) the id of
  its nearest centroid, in parallel with Ray Data (lance-ray reads the frames, ``map_batches`` runs a
  chunked NumPy argmin of squared distances), and the driver appends the rows to the store.
- :func:`purity` scores the clustering against the utterance labels.

Tables (per model):
- ``centroids__<model>``: layer, k, cluster, centroid (list<float32>), condition and seed it was
  trained with, n_train (frames in the sample).
- ``frame_clusters__<model>``: utt_id, condition, layer, k, n_frames, ids (list<int32>, one per stored
  frame, in frame order) — the training stage's frame-level targets.
Re-fitting a (layer, k) replaces its centroids and deletes all its frame ids (they referred to the old
centroids) before the new ones are written.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_ser.store import Store, _sql, as_store, iter_frames, table_name

log = logging.getLogger(__name__)

CENTROIDS_SCHEMA = pa.schema([
    ("layer", pa.int32()), ("k", pa.int32()), ("cluster", pa.int32()), ("centroid", pa.list_(pa.float32())),
    ("condition", pa.string()), ("seed", pa.int64()), ("n_train", pa.int64()),
])
FRAME_CLUSTERS_SCHEMA = pa.schema([
    ("utt_id", pa.string()), ("condition", pa.string()), ("layer", pa.int32()), ("k", pa.int32()),
    ("n_frames", pa.int32()), ("ids", pa.list_(pa.int32())),
])
ASSIGN_CHUNK = 8192
"""Frames per distance product in the assignment (bounds the chunk x k temporary)."""


def centroids_table_name(model: str) -> str:
    return table_name(model, "centroids")


def frame_clusters_table_name(model: str) -> str:
    return table_name(model, "frame_clusters")


def _frames_filter(layer: int, conditions: Sequence[str] | None) -> str:
    where = f"layer = {int(layer)}"
    if conditions:
        where += " AND condition IN (" + ", ".join(_sql(c) for c in conditions) + ")"
    return where


# ---- fitting -------------------------------------------------------------------------------------
def draw_frames(store: str | Store, model: str, layer: int, condition: str = "clean", n: int = 50000,
                  seed: int = 0, train_utts: Iterable[str] | None = None) -> np.ndarray:
    """A seeded uniform sample (without replacement) of ``n`` frames, float32 ``(n, dim)``, from the
    ``condition`` frames of ``train_utts`` (default: every utterance the stored manifests know)."""
    store = as_store(store)
    ds = store.embeddings(model).to_lance()
    where = _frames_filter(layer, [condition])
    t = ds.to_table(columns=["utt_id", "n_frames"], filter=where)
    if train_utts is None:
        manifests = store.manifests()
        train = set(manifests.column("utt_id").to_pylist()) if manifests is not None else None
    else:
        train = set(train_utts)
    counts = sorted((u, int(c)) for u, c in zip(t.column("utt_id").to_pylist(), t.column("n_frames").to_pylist())
                    if train is None or u in train)
    if not counts:
        raise ValueError(f"no {condition} frames of layer {layer} of {model} among the training utterances")
    sizes = np.array([c for _, c in counts], np.int64)
    total = int(sizes.sum())
    rng = np.random.default_rng(seed)
    picked = np.arange(total) if total <= n else np.sort(rng.choice(total, size=n, replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    owner = np.searchsorted(starts, picked, side="right") - 1
    wanted = {counts[i][0]: picked[owner == i] - starts[i] for i in np.unique(owner)}
    got = {uid: m[wanted[uid]].astype(np.float32)
           for uid, m in iter_frames(store, model, condition, layer, batch_rows=64) if uid in wanted}
    return np.concatenate([got[u] for u, _ in counts if u in wanted])


def fit_kmeans(store: str | Store, model: str, layer: int, ks: Sequence[int], condition: str = "clean",
               sample_frames: int = 50000, seed: int = 0, train_utts: Iterable[str] | None = None,
               write: bool = True) -> dict[int, np.ndarray]:
    """{k: (k, dim) float32 centroids} of MiniBatchKMeans on a frame sample of the training utterances.

    ``train_utts`` limits the sample (e.g. to a fold's training speakers, so test speakers never shape
    the clusters); default: all utterances of the stored manifests.  ``sample_frames`` caps the
    sample (:func:`draw_frames`).  With ``write`` the centroids replace those of the same (layer, k)
    in ``centroids__<model>``.
    """
    from sklearn.cluster import MiniBatchKMeans

    store = as_store(store)
    X = draw_frames(store, model, layer, condition, sample_frames, seed, train_utts)
    out = {}
    for k in ks:
        if len(X) < k:
            raise ValueError(f"k={k} needs at least {k} frames, the sample has {len(X)}")
        t0 = time.perf_counter()
        km = MiniBatchKMeans(n_clusters=int(k), n_init=3, random_state=seed, batch_size=4096).fit(X)
        out[int(k)] = km.cluster_centers_.astype(np.float32)
        log.info("k-means k=%d on %d frames of layer %d: %.1f s", k, len(X), layer, time.perf_counter() - t0)
    if write:
        write_centroids(store, model, layer, out, condition, seed, len(X))
    return out


def write_centroids(store: Store, model: str, layer: int, centroids: dict[int, np.ndarray], condition: str,
                    seed: int, n_train: int) -> None:
    rows = pa.concat_tables([pa.table({
        "layer": pa.array([layer] * len(c), pa.int32()), "k": pa.array([k] * len(c), pa.int32()),
        "cluster": pa.array(np.arange(len(c), dtype=np.int32)),
        "centroid": pa.array([row for row in c.astype(np.float32)], pa.list_(pa.float32())),
        "condition": pa.array([condition] * len(c), pa.string()),
        "seed": pa.array([seed] * len(c), pa.int64()), "n_train": pa.array([n_train] * len(c), pa.int64()),
    }, schema=CENTROIDS_SCHEMA) for k, c in sorted(centroids.items())])
    where = f"layer = {int(layer)} AND k IN ({', '.join(str(int(k)) for k in centroids)})"
    (store.open_or_create(centroids_table_name(model), CENTROIDS_SCHEMA).merge_insert(["layer", "k", "cluster"]).when_matched_update_all()
     .when_not_matched_insert_all().when_not_matched_by_source_delete(where).execute(rows))


def read_centroids(store: str | Store, model: str, layer: int, k: int) -> np.ndarray:
    """The stored (k, dim) float32 centroids of (layer, k)."""
    store = as_store(store)
    t = store.open(centroids_table_name(model)).to_lance().to_table(
        columns=["cluster", "centroid"], filter=f"layer = {int(layer)} AND k = {int(k)}")
    if t.num_rows == 0:
        raise KeyError(f"no centroids of {model} layer {layer} k {k}")
    t = t.sort_by("cluster")
    return np.asarray(t.column("centroid").to_pylist(), np.float32)


# ---- assignment with Ray Data --------------------------------------------------------------------
def nearest(X: np.ndarray, C: np.ndarray, chunk: int = ASSIGN_CHUNK) -> np.ndarray:
    """int32 index of the nearest row of ``C`` (squared Euclidean) for every row of ``X``; ties to the lower index."""
    X = np.asarray(X, np.float32)
    C = np.asarray(C, np.float32)
    cc = (C * C).sum(axis=1)
    out = np.empty(len(X), np.int32)
    for s in range(0, len(X), chunk):
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for every c
        d = cc[None, :] - 2.0 * (X[s:s + chunk] @ C.T)
        out[s:s + chunk] = np.argmin(d, axis=1)
    return out


def assign_batch(batch: pa.Table, centroids: dict[int, np.ndarray], layer: int) -> pa.Table:
    """Ray Data map_batches function: rows (utt_id, condition, frames) -> one row per (utterance, k)."""
    frames = batch.column("frames").combine_chunks()
    if frames.null_count:
        bad = [u for u, f in zip(batch.column("utt_id").to_pylist(), frames.is_valid().to_pylist()) if not f]
        raise ValueError(f"{bad[:3]}: stored without frames (extracted with --no-frames)")
    lengths = frames.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    flat = frames.flatten()  # the FixedSizeList rows of every utterance, respecting slices
    dim = flat.type.list_size
    X = flat.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    n = batch.num_rows
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    parts = []
    for k, C in sorted(centroids.items()):
        ids = nearest(X, C)
        parts.append(pa.table({
            "utt_id": batch.column("utt_id"), "condition": batch.column("condition"),
            "layer": pa.array(np.full(n, layer, np.int32)), "k": pa.array(np.full(n, k, np.int32)),
            "n_frames": pa.array(lengths.astype(np.int32)),
            "ids": pa.ListArray.from_arrays(offsets, pa.array(ids, pa.int32())),
        }, schema=FRAME_CLUSTERS_SCHEMA))
    return pa.concat_tables(parts)


def assign_frames(store: str | Store, model: str, layer: int, centroids: dict[int, np.ndarray],
                  conditions: Sequence[str] | None = None, batch_rows: int = 64) -> int:
    """Write the nearest-centroid id of every stored frame of ``layer`` (of ``conditions``, default all)
    for every k of ``centroids`` to ``frame_clusters__<model>``; returns the rows written.

    Ray Data reads the frames (lance-ray, one task per fragment) and maps :func:`assign_batch` over
    them; the driver appends each finished block in one commit, after deleting every earlier row of
    the same (layer, k)."""
    import lance_ray

    store = as_store(store)
    uri = store.embeddings(model).to_lance().uri
    name = frame_clusters_table_name(model)
    ks = sorted(int(k) for k in centroids)
    table = store.open_or_create(name, FRAME_CLUSTERS_SCHEMA)
    table.delete(f"layer = {int(layer)} AND k IN ({', '.join(map(str, ks))})")
    ds = lance_ray.read_lance(uri, columns=["utt_id", "condition", "frames"], filter=_frames_filter(layer, conditions))
    cents = {int(k): np.asarray(c, np.float32) for k, c in centroids.items()}  # small: travels with the tasks
    ds = ds.map_batches(assign_batch, fn_kwargs={"centroids": cents, "layer": int(layer)},
                        batch_format="pyarrow", batch_size=batch_rows)
    written = 0
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        if block.num_rows:
            table.add(block.cast(FRAME_CLUSTERS_SCHEMA))
            written += block.num_rows
    store.compact(table)  # one compacted version instead of one per block; the driver was its only writer
    return written


def read_frame_clusters(store: str | Store, model: str, layer: int, k: int, condition: str | None = "clean") -> pa.Table:
    """utt_id, condition, n_frames, ids of (layer, k) [and condition], sorted by utt_id, condition."""
    store = as_store(store)
    where = f"layer = {int(layer)} AND k = {int(k)}"
    if condition is not None:
        where += f" AND condition = {_sql(condition)}"
    t = store.open(frame_clusters_table_name(model)).to_lance().to_table(
        columns=["utt_id", "condition", "n_frames", "ids"], filter=where)
    return t.sort_by([("utt_id", "ascending"), ("condition", "ascending")])


# ---- evaluation ----------------------------------------------------------------------------------
def cluster_label_counts(store: str | Store, model: str, layer: int, k: int, condition: str = "clean") -> tuple[np.ndarray, list[str]]:
    """(k, labels) frame counts of (cluster, label) — every frame inherits its utterance's consensus
    ``label``; frames of unlabelled utterances are left out — and the label names."""
    store = as_store(store)
    t = read_frame_clusters(store, model, layer, k, condition)
    manifests = store.manifests()
    if manifests is None:
        raise ValueError(f"store {store.uri} has no manifest: no labels to score against")
    label_of = dict(zip(manifests.column("utt_id").to_pylist(), manifests.column("label").to_pylist()))
    utt_labels = [label_of.get(u) for u in t.column("utt_id").to_pylist()]
    names = sorted({lab for lab in utt_labels if lab is not None})
    if not names:
        raise ValueError("no labelled utterances among the clustered ones")
    index = {lab: i for i, lab in enumerate(names)}
    ids = t.column("ids")
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    frame_label = np.repeat(np.array([index.get(lab, -1) for lab in utt_labels], np.int64), lengths)
    ok = frame_label >= 0
    counts = np.bincount(flat[ok] * len(names) + frame_label[ok], minlength=int(k) * len(names))
    return counts.reshape(int(k), len(names)), names


def purity(store: str | Store, model: str, layer: int, k: int, condition: str = "clean") -> float:
    """Cluster purity against the utterance labels: every frame inherits its utterance's consensus
    ``label``; each cluster is named after its most frequent label; purity is the share of frames
    whose cluster's name equals their own label (frames of unlabelled utterances are left out).
    At least :func:`majority_share` (one cluster would score exactly that); 1 when every cluster
    holds one label only."""
    counts, _ = cluster_label_counts(store, model, layer, k, condition)
    total = counts.sum()
    return float(counts.max(axis=1).sum() / total) if total else float("nan")


def majority_share(store: str | Store, model: str, layer: int, k: int, condition: str = "clean") -> float:
    """The share of frames carrying the most frequent label: the purity of a single cluster (chance level)."""
    counts, _ = cluster_label_counts(store, model, layer, k, condition)
    total = counts.sum()
    return float(counts.sum(axis=0).max() / total) if total else float("nan")
