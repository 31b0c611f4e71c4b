"""Frame clusters (FLEA): k-means over one layer's frame embeddings; cluster ids as frame pseudo-labels.

Everything is per outer fold of a :class:`~ray_ser.corpora.folds.FoldAssignment`: centroids for fold f are
fitted on frames of fold f's *training* speakers only, so test speakers never shape the clusters that label
their frames, and several folds' centroids coexist (keyed by ``fold_id``, ``fold``, ``layer``, ``k``).

- :func:`fit_kmeans` trains scikit-learn MiniBatchKMeans (``random_state=seed``) for each k on a seeded
  random sample of the training frames of one condition and stores the centroids (one commit per k).
- :func:`ensure_centroids` returns stored centroids or fits them once, under a lock, for the training
  reader and Tune trials that ask for the same key at once.
- :func:`assign_frames` gives every stored frame of that fold's utterances (its test speakers by default:
  out-of-fold ids, so the folds together label every utterance exactly once) the id of the nearest centroid,
  in parallel with Ray Data, and replaces that (fold, layer, k)'s rows in one commit.
- :func:`purity` scores the out-of-fold clustering against the utterance labels.

Tables (layouts in :mod:`ray_ser.store.catalog`): ``centroids__<model>`` and ``frame_clusters__<model>``.
The training reader does not need ``frame_clusters``: it computes ids from the fold's centroids at read time
(:func:`nearest`), for any utterance and condition.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_ser.corpora.folds import FoldAssignment
from ray_ser.store import catalog
from ray_ser.store.core import Store, as_store, iter_frames
from ray_ser.store.lease import Lease
from ray_ser.storage import is_uri

log = logging.getLogger(__name__)

ASSIGN_CHUNK = 8192
"""Frames per distance product in the assignment (bounds the chunk x k temporary)."""
N_INIT = 3


def _frames_filter(layer: int, conditions: Sequence[str] | None, utt_ids: Sequence[str] | None = None) -> str:
    return catalog.where(layer=int(layer), condition=list(conditions) if conditions else None,
                         utt_id=list(utt_ids) if utt_ids is not None else None)


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
           for uid, m in iter_frames(store, model, condition, layer, utt_ids=sorted(wanted), batch_rows=64)}
    return np.concatenate([got[u] for u, _ in counts if u in wanted])


def fit_kmeans(store: str | Store, model: str, layer: int, ks: Sequence[int], assignment: FoldAssignment,
               fold: int, condition: str = "clean", sample_frames: int = 50000, seed: int = 0,
               write: bool = True) -> dict[int, np.ndarray]:
    """{k: (k, dim) float32 centroids} of MiniBatchKMeans on a frame sample of outer ``fold``'s training
    utterances (fold -1: all, only for speakers outside the corpus). ``sample_frames`` caps the sample
    (:func:`draw_frames`). With ``write`` each k's centroids replace that (fold, layer, k)'s in one commit."""
    from sklearn.cluster import MiniBatchKMeans

    store = as_store(store)
    X = draw_frames(store, model, layer, condition, sample_frames, seed, assignment.train_utts(fold))
    out = {}
    for k in ks:
        if len(X) < k:
            raise ValueError(f"k={k} needs at least {k} frames, the sample has {len(X)}")
        t0 = time.perf_counter()
        km = MiniBatchKMeans(n_clusters=int(k), n_init=N_INIT, random_state=seed, batch_size=4096).fit(X)
        out[int(k)] = km.cluster_centers_.astype(np.float32)
        log.info("k-means k=%d on %d frames of layer %d (fold %d): %.1f s", k, len(X), layer, fold,
                 time.perf_counter() - t0)
        if write:
            write_centroids(store, model, layer, int(k), out[int(k)], assignment.id, fold, condition, seed, len(X))
    return out


def write_centroids(store: Store, model: str, layer: int, k: int, centroids: np.ndarray, fold_id: str, fold: int,
                    condition: str, seed: int, n_train: int) -> None:
    """Replace the centroids of (fold_id, fold, layer, k) in one commit."""
    n = len(centroids)
    rows = pa.table({
        "fold_id": [fold_id] * n, "fold": pa.array([fold] * n, pa.int32()),
        "layer": pa.array([layer] * n, pa.int32()), "k": pa.array([k] * n, pa.int32()),
        "cluster": pa.array(np.arange(n, dtype=np.int32)),
        "centroid": pa.array(list(centroids.astype(np.float32)), pa.list_(pa.float32())),
        "condition": [condition] * n, "seed": pa.array([seed] * n, pa.int64()),
        "n_train": pa.array([n_train] * n, pa.int64()),
    })
    catalog.replace(store, catalog.CENTROIDS, model, rows, {"fold_id": fold_id, "fold": fold, "layer": layer, "k": k})


def read_centroids(store: str | Store, model: str, layer: int, k: int, fold: int, fold_id: str) -> np.ndarray:
    """The stored (k, dim) float32 centroids of (fold, layer, k) under fold assignment ``fold_id``."""
    # centroids of other fold assignments may sit beside these (a Tune search's pool folds beside the cluster
    # job's outer folds): only this assignment's count, none is a KeyError (ensure_centroids then fits them)
    t = catalog.read(store, catalog.CENTROIDS, model, columns=["cluster", "centroid", "fold_id"],
                     layer=int(layer), k=int(k), fold=int(fold))
    t = t.filter(pc.equal(t.column("fold_id"), fold_id))
    if t.num_rows == 0:
        raise KeyError(f"no centroids of {model} layer {layer} k {k} fold {fold} (fold assignment {fold_id})")
    return np.asarray(t.sort_by("cluster").column("centroid").to_pylist(), np.float32)


@contextlib.contextmanager
def _key_lock(store: Store, key: str, wait: float = 1800.0):
    """One holder at a time of ``key``, so concurrent Tune trials that need the same centroids fit them once: a
    file lock in a local store's folder, the store's own lease (:mod:`ray_ser.store.lease`) on an object store,
    where trials on other machines share no file system."""
    if is_uri(store.uri):
        import uuid

        with Lease.acquire(store, key, uuid.uuid4().hex[:12], what="fitting centroids", wait=wait):
            yield
        return
    path = Path(store.uri) / ".locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_centroids(store: str | Store, model: str, layer: int, k: int, assignment: FoldAssignment, fold: int,
                     condition: str = "clean", sample_frames: int = 20000, seed: int = 0) -> np.ndarray:
    """The centroids of (fold, layer, k), fitted once (under a lock) if the store lacks them."""
    store = as_store(store)
    key = f"centroids_{catalog.CENTROIDS.name(model)}_{assignment.id}_{fold}_{layer}_{k}"
    with _key_lock(store, key):
        try:
            return read_centroids(store, model, layer, k, fold, assignment.id)
        except KeyError:
            return fit_kmeans(store, model, layer, [k], assignment, fold, condition, sample_frames, seed)[int(k)]


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


def assign_batch(batch: pa.Table, centroids: dict[int, np.ndarray], layer: int, fold_id: str, fold: int) -> pa.Table:
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
            "fold_id": pa.array([fold_id] * n, pa.string()), "fold": pa.array(np.full(n, fold, np.int32)),
            "utt_id": batch.column("utt_id"), "condition": batch.column("condition"),
            "layer": pa.array(np.full(n, layer, np.int32)), "k": pa.array(np.full(n, k, np.int32)),
            "n_frames": pa.array(lengths.astype(np.int32)),
            "ids": pa.ListArray.from_arrays(offsets, pa.array(ids, pa.int32())),
        }, schema=catalog.FRAME_CLUSTERS.schema))
    return pa.concat_tables(parts)


def assign_frames(store: str | Store, model: str, layer: int, centroids: dict[int, np.ndarray],
                  assignment: FoldAssignment, fold: int, conditions: Sequence[str] | None = None,
                  utts: str = "test", batch_rows: int = 64) -> int:
    """Write the nearest-centroid id of every stored frame of ``layer`` (of ``conditions``, default all) of
    fold ``fold``'s test utterances (``utts="all"``: every utterance of the assignment) for every k of
    ``centroids``; returns the rows written.

    Ray Data reads the frames (by row address, :func:`~ray_ser.store.take.rows_dataset`) and maps
    :func:`assign_batch` over them; the driver gathers the (small) id rows and replaces each (fold, layer, k) in
    one commit, so a reader never sees a mix of old and new ids."""
    from ray_ser.store.take import rows_dataset

    store = as_store(store)
    uri = store.embeddings(model).to_lance().uri
    wanted = assignment.test_utts(fold) if utts == "test" and fold >= 0 else list(assignment.utt_ids)
    ds = rows_dataset(uri, ["utt_id", "condition", "frames"], [layer], conditions or None, wanted,
                      store.storage_options)
    cents = {int(k): np.asarray(c, np.float32) for k, c in centroids.items()}  # small: travels with the tasks
    ds = ds.map_batches(assign_batch, fn_kwargs={"centroids": cents, "layer": int(layer),
                                                 "fold_id": assignment.id, "fold": int(fold)},
                        batch_format="pyarrow", batch_size=batch_rows)
    blocks = [b for b in ds.iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
    rows = pa.concat_tables(blocks) if blocks else catalog.FRAME_CLUSTERS.schema.empty_table()
    written = 0
    for k in sorted(cents):
        part = rows.filter(pc.equal(rows.column("k"), k))
        written += catalog.replace(store, catalog.FRAME_CLUSTERS, model, part,
                                   {"fold_id": assignment.id, "fold": int(fold), "layer": int(layer), "k": k})
    return written


def read_frame_clusters(store: str | Store, model: str, layer: int, k: int, fold: int | Sequence[int],
                        fold_id: str, condition: str | None = "clean") -> pa.Table:
    """utt_id, condition, fold, n_frames, ids of (layer, k) for fold(s) ``fold`` [and condition], sorted by
    utt_id, condition."""
    folds = [int(fold)] if np.isscalar(fold) else [int(f) for f in fold]
    t = catalog.read(store, catalog.FRAME_CLUSTERS, model, columns=["utt_id", "condition", "fold", "n_frames", "ids"],
                     fold_id=fold_id, layer=int(layer), k=int(k), fold=folds, condition=condition)
    return t.sort_by([("utt_id", "ascending"), ("condition", "ascending")])


# ---- evaluation ----------------------------------------------------------------------------------
def cluster_label_counts(store: str | Store, model: str, layer: int, k: int, fold: int, fold_id: str,
                         condition: str = "clean") -> tuple[np.ndarray, list[str]]:
    """(k, labels) frame counts of (cluster, label) over the assigned frames of one fold — every frame
    inherits its utterance's consensus ``label``; frames of unlabelled utterances are left out — and the
    label names (those of the stored manifests)."""
    store = as_store(store)
    t = read_frame_clusters(store, model, layer, k, fold, fold_id, condition)
    manifests = store.manifests()
    if manifests is None:
        raise ValueError(f"store {store.uri} has no manifest: no labels to score against")
    label_of = dict(zip(manifests.column("utt_id").to_pylist(), manifests.column("label").to_pylist()))
    names = sorted({lab for lab in label_of.values() if lab is not None})
    if not names:
        raise ValueError("no labelled utterances in the stored manifests")
    index = {lab: i for i, lab in enumerate(names)}
    utt_labels = [label_of.get(u) for u in t.column("utt_id").to_pylist()]
    ids = t.column("ids")
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    frame_label = np.repeat(np.array([index.get(lab, -1) if lab is not None else -1 for lab in utt_labels], np.int64),
                            lengths)
    ok = frame_label >= 0
    counts = np.bincount(flat[ok] * len(names) + frame_label[ok], minlength=int(k) * len(names))
    return counts.reshape(int(k), len(names)), names


def purity(store: str | Store, model: str, layer: int | Mapping[int, int], k: int, folds: Sequence[int], fold_id: str,
           condition: str = "clean") -> tuple[float, float]:
    """(purity, majority share) of the out-of-fold cluster ids of ``folds``, pooled over their frames; ``layer``
    is one layer or {fold: layer} (each fold clustered the layer chosen on its training speakers).

    Within a fold every cluster is named after its most frequent label and purity is the share of frames whose
    cluster's name is their own label (clusters of different folds are different clusters, so each fold is
    counted on its own). The majority-label share is what a single cluster would score: the chance level."""
    hit = majority = total = 0
    for f in folds:
        counts, _ = cluster_label_counts(store, model, layer[f] if isinstance(layer, Mapping) else layer, k, f,
                                         fold_id, condition)
        hit += counts.max(axis=1).sum()
        majority += counts.sum(axis=0)
        total += counts.sum()
    if not total:
        return float("nan"), float("nan")
    return float(hit / total), float(np.max(majority) / total)
