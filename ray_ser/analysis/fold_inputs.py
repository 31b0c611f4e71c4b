"""What a fold's plan reads from the store besides the analyses: per-utterance labels from the manifests (categories,
domains, A/V/D and their per-corpus ranges) and the input scaler's statistics from the pooled rows. The analysis
stage builds fold plans from these and training reads labels with them, so they sit below both."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from ray_ser.corpora.manifest import DIMENSIONS
from ray_ser.store import catalog
from ray_ser.store.core import Store, as_store

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

def input_layers(layer: int | Sequence[int]) -> list[int]:
    """A layer or a list of layers as a list (several layers are concatenated per frame)."""
    return [int(layer)] if isinstance(layer, (int, np.integer)) else [int(l) for l in layer]


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
