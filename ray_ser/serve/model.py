"""The in-process predictor behind ``ray_ser.load_model`` and ``ray-ser predict``: audio -> the foundation model
(run up to the highest layer the heads read, the layers above it skipped; every layer with a store, whose cache keeps
them all) -> each head's input exactly as training built it from the store (float16 frames, layers concatenated,
saliency mask, per-corpus scaler with its float16 rounding) -> the heads -> temperature-scaled probabilities (a fold
ensemble: their mean). Runs on the CPU or the first GPU, never starts Ray. With a store, clips scored before read
their frames from its cache (:mod:`ray_ser.serve.cache`) instead of running the forward."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from ray_ser.serve.bundle import Bundle, Member, load_bundle

log = logging.getLogger(__name__)

SCALERS = ("train", "input")


@dataclass
class Scored:
    """The outputs of one batch of inputs: probabilities (n, categories) and A/V/D (n, 3; NaN without a head)."""

    probs: np.ndarray
    dims: np.ndarray


def pooled_stats(corpus_norm: dict, counts: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """One (mean, std) from a per-corpus scaler: the training corpora's frame statistics pooled, each corpus
    weighted by its training utterances (one corpus: its own statistics unchanged)."""
    names = sorted(corpus_norm)
    if len(names) == 1:
        mean, std = corpus_norm[names[0]]
        return np.asarray(mean, np.float32), np.asarray(std, np.float32)
    w = np.array([float((counts or {}).get(c, 1)) for c in names])
    w = w / w.sum()
    m = np.array([corpus_norm[c][0] for c in names], np.float64)
    s = np.array([corpus_norm[c][1] for c in names], np.float64)
    mean = (w[:, None] * m).sum(0)
    var = (w[:, None] * (s ** 2 + m ** 2)).sum(0) - mean ** 2
    return mean.astype(np.float32), np.sqrt(np.clip(var, 1e-10, None)).astype(np.float32)


def windows(n: int, rate: int, window: float, hop: float) -> list[tuple[int, int]]:
    """(start, end) samples of ``window``-second windows every ``hop`` seconds over ``n`` samples; the last one ends
    at the file's end (a file shorter than a window is one window)."""
    w, h = int(round(window * rate)), int(round(hop * rate))
    if w <= 0 or h <= 0:
        raise ValueError(f"--window {window} and --hop {hop} must be positive")
    if n <= w:
        return [(0, n)]
    starts = list(range(0, n - w + 1, h))
    if starts[-1] + w < n:
        starts.append(n - w)
    return [(s, s + w) for s in starts]


class Predictor:
    """A loaded bundle: ``predict(path)`` -> {category: probability} (+ A/V/D), ``predict_many(paths)`` -> a Polars
    frame in the ``predictions.parquet`` layout of ``ray-ser predict``."""

    def __init__(self, bundle: Bundle, device=None, scaler: str = "train", foundation_model: str | None = None,
                 max_seconds: float | None = None, batch_size: int = 8, threads: int | None = None,
                 store=None):
        import torch

        from ray_ser.fm.base import pick_device

        if scaler not in SCALERS:
            raise ValueError(f"scaler {scaler!r}: use one of {', '.join(SCALERS)}")
        if scaler == "input" and not any(m.plan.get("corpus_norm") for m in bundle.members):
            raise ValueError(f"{bundle.model_id}: --scaler input applies to models trained with the per-corpus scaler; "
                             "this one's scaler (fitted on its training frames) is part of the head")
        if threads:
            torch.set_num_threads(threads)
        self.bundle, self.scaler, self.batch_size = bundle, scaler, batch_size
        self.device = pick_device(device)
        self.heads = [m.module().to(self.device) for m in bundle.members]
        self.fm_spec = foundation_model or bundle.fm["model"]
        self.max_seconds = max_seconds if max_seconds is not None else bundle.fm.get("max_seconds")
        self.sample_rate = int(bundle.fm.get("sample_rate") or 16000)
        self._fm = None
        self.errors: list[dict] = []
        self.cache = None
        self.cache_hits = 0
        if store is not None:
            from ray_ser.serve.cache import FrameCache

            self.cache = FrameCache(store, self.fm_identity())

    @property
    def categories(self) -> list[str]:
        return self.bundle.categories

    @property
    def fm(self):
        """The foundation model, loaded on first use; its weights must hash to the bundle's."""
        if self._fm is None:
            from ray_ser.fm.base import torch_dtype
            from ray_ser.fm.registry import load_model

            fm = self.bundle.fm
            self._fm = load_model(self.fm_spec, device=self.device, whisper_mode=fm.get("whisper_mode") or "padded",
                                  dtype=torch_dtype(fm.get("dtype") or "float32", self.device))
            want = fm.get("weights_hash")
            if want and self._fm.weights_hash != want:
                raise ValueError(f"foundation model {self.fm_spec}: weights hash {self._fm.weights_hash[:12]} is not "
                                 f"the bundle's {want[:12]} (the head was trained on another model's features)")
        return self._fm

    def fm_identity(self) -> dict:
        """What makes the foundation model's frames what they are (the cache's key besides the audio): its id,
        weights hash, sample rate, Whisper mode and the precision it runs in on this device."""
        from ray_ser.fm.base import torch_dtype

        fm = self.bundle.fm
        return {"model": fm["model"], "weights_hash": fm.get("weights_hash") or f"unhashed:{self.fm_spec}",
                "sample_rate": self.sample_rate, "whisper_mode": fm.get("whisper_mode") or "padded",
                "dtype": str(torch_dtype(fm.get("dtype") or "float32", self.device)).removeprefix("torch.")}

    # ---- the stages ---------------------------------------------------------------------------------
    def frames(self, waves: Sequence[np.ndarray]) -> list[dict[int, np.ndarray] | Exception]:
        """Per wave: {layer: (frames, dim) float16} of the layers the heads read (float16 as the store keeps them),
        or the exception its forward raised. With a store, waves cached there skip the forward and the others'
        frames (every layer) are added to it."""
        layers = self.bundle.layers
        if self.cache is None:
            return self._frames(waves, layers)
        from ray_ser.serve.cache import content_key

        keys = [content_key(w) for w in waves]
        hit = self.cache.get(keys, layers)
        todo = [i for i, k in enumerate(keys) if k not in hit]
        self.cache_hits += len(waves) - len(todo)
        got = self._frames([waves[i] for i in todo], None) if todo else []
        new = {keys[i]: g for i, g in zip(todo, got) if not isinstance(g, Exception)}
        self.cache.put(new)
        hit.update(new)
        failed = {i: g for i, g in zip(todo, got) if isinstance(g, Exception)}
        return [failed[i] if i in failed else {layer: hit[keys[i]][layer] for layer in layers}
                for i in range(len(waves))]

    def _frames(self, waves: Sequence[np.ndarray],
                layers: Sequence[int] | None) -> list[dict[int, np.ndarray] | Exception]:
        """:meth:`frames` through the forward, in batches of similar length (``layers`` None: every layer); a
        failing batch is retried one wave at a time."""
        out: list = [None] * len(waves)
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        for k in range(0, len(order), self.batch_size):
            idx = order[k:k + self.batch_size]
            try:
                got = self._forward([waves[i] for i in idx], layers)
            except Exception as e:  # a lone wave's error is its own; in a batch, each wave alone finds the bad one
                got = [e] if len(idx) == 1 else [self._forward_one(waves[i], layers) for i in idx]
            for i, g in zip(idx, got):
                out[i] = g
        return out

    def _forward_one(self, wave: np.ndarray, layers: Sequence[int] | None) -> dict[int, np.ndarray] | Exception:
        """One wave's frames, or the exception its forward raised (one bad wave fails only itself)."""
        try:
            return self._forward([wave], layers)[0]
        except Exception as e:
            return e

    def _forward(self, waves: Sequence[np.ndarray], layers: Sequence[int] | None) -> list[dict[int, np.ndarray]]:
        import torch

        with torch.inference_mode():  # layers None: every layer; else the encoder stops at the highest one
            enc = self.fm(list(waves), max_layer=None if layers is None else max(layers))
            layers = list(range(enc.hidden.shape[0])) if layers is None else layers
            lengths = enc.lengths.to(torch.long).tolist()
            hidden = enc.hidden[list(layers)].to(torch.float16).cpu().numpy()  # (layers, batch, frames, dim)
        return [{layer: hidden[j, b, :n] for j, layer in enumerate(layers)} for b, n in enumerate(lengths)]

    @staticmethod
    def masked(member: Member, frames: Sequence[dict[int, np.ndarray]]) -> list[np.ndarray]:
        """Each item's frames of ``member``'s layers concatenated per frame, its saliency mask applied (float16)."""
        keep = member.plan.get("keep")
        xs = [np.hstack([f[layer] for layer in member.layers]) for f in frames]
        return xs if keep is None else [x[:, keep] for x in xs]

    def head_inputs(self, member: Member, frames: Sequence[dict[int, np.ndarray]],
                    input_stats: tuple[np.ndarray, np.ndarray] | None = None) -> list[np.ndarray]:
        """Each item's frames as ``member`` was trained on them: :meth:`masked`, and with the per-corpus scaler the
        training (or ``input_stats``) standardisation, rounded to float16 like the reader's."""
        from ray_ser.train.reader import standardise

        xs = self.masked(member, frames)
        norm = member.plan.get("corpus_norm")
        if not norm:
            return xs
        mean, std = input_stats if input_stats is not None else pooled_stats(norm, member.plan.get("corpus_counts"))
        return [standardise(x, np.array([len(x)]), ["input"], {"input": [mean, std]}) for x in xs]

    def input_stats(self, member: Member, frames: Sequence[dict[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """--scaler input: per-dimension mean and population std over every frame of the input set (the member's
        layers and mask), as zero-shot evaluation standardises a new corpus by its own statistics."""
        X = np.vstack(self.masked(member, frames)).astype(np.float64)
        return X.mean(0).astype(np.float32), np.sqrt(np.clip(X.var(0), 1e-10, None)).astype(np.float32)

    def score(self, frames: Sequence[dict[int, np.ndarray]]) -> Scored:
        """Probabilities (each member's temperature-scaled softmax, averaged) and A/V/D of items' frames."""
        import torch

        from ray_ser.train.calibration import scale
        from ray_ser.train.reader import collate, ragged

        n, c = len(frames), len(self.categories)
        probs = np.zeros((n, c), np.float64)
        dims = np.zeros((n, 3), np.float64)
        has_dims = False
        for member, head in zip(self.bundle.members, self.heads):
            stats = self.input_stats(member, frames) if self.scaler == "input" and member.plan.get("corpus_norm") else None
            xs = self.head_inputs(member, frames, stats)
            p_parts, d_parts = [], []
            for k in range(0, n, 64):
                chunk = xs[k:k + 64]
                batch = {"x": ragged(chunk), "dims": np.full((len(chunk), 3), np.nan),
                         "pdf": [np.zeros(c, np.float32)] * len(chunk), "label_index": [0] * len(chunk),
                         "domain": [0] * len(chunk)}
                b = collate(batch, self.device)
                with torch.inference_mode():
                    out = head(b["x"], b["lengths"])
                if "logits" in out:
                    p_parts.append(torch.softmax(out["logits"].float(), -1).cpu().numpy().astype(np.float32))
                if "dims" in out:
                    d_parts.append(out["dims"].float().cpu().numpy())
            if p_parts:
                probs += scale(np.vstack(p_parts), member.temperature)
            if d_parts:
                has_dims = True
                dims += self._dims_back(member, np.vstack(d_parts))
        m = len(self.bundle.members)
        return Scored((probs / m).astype(np.float32),
                      (dims / m).astype(np.float32) if has_dims else np.full((n, 3), np.nan, np.float32))

    @staticmethod
    def _dims_back(member: Member, d: np.ndarray) -> np.ndarray:
        """A/V/D from the training range back to the training corpus's scale (one training corpus; with several the
        [-1, 1] training range is kept: there is no one corpus scale for new audio)."""
        scale = member.plan.get("dim_scale")
        if not scale or len(scale) != 1:
            return d.astype(np.float64)
        from ray_ser.train.reader import scale_dims

        return scale_dims(d, [next(iter(scale))] * len(d), scale, inverse=True).astype(np.float64)

    # ---- the API ---------------------------------------------------------------------------------
    def predict(self, path: str | os.PathLike) -> dict[str, float]:
        """{category: probability} of one file (+ arousal, valence, dominance where the head has them); a file that
        cannot be scored raises its error."""
        from ray_ser import audio

        wave = audio.load(str(path), self.sample_rate, max_seconds=self.max_seconds)
        got = self.frames([wave])[0]
        if isinstance(got, Exception):
            raise got
        s = self.score([got])
        out = {c: float(p) for c, p in zip(self.categories, s.probs[0])}
        if self.bundle.dimensions:
            out.update({d: float(v) for d, v in zip(self.bundle.dimensions, s.dims[0])})
        return out

    def predict_many(self, paths: Sequence[str | os.PathLike], utt_ids: Sequence[str] | None = None,
                     window: float | None = None, hop: float | None = None) -> pl.DataFrame:
        """One row per file (``window``: a row per window, then the file's row with null start and end holding the
        windows' mean), in the contract's columns; files that cannot be scored are left out and listed in
        ``self.errors`` (path, stage, message)."""
        from ray_ser import audio

        if window is not None and hop is None:
            hop = window
        self.errors = []
        ids = list(utt_ids) if utt_ids is not None else [os.path.splitext(os.path.basename(str(p)))[0] for p in paths]
        items: list[tuple[str, str, float, int, int]] = []  # path, utt_id, duration, start, end (samples)
        waves: list[np.ndarray] = []
        for path, uid in zip(map(str, paths), ids):
            try:
                wave = audio.load(path, self.sample_rate, max_seconds=None if window else self.max_seconds)
            except Exception as e:  # one file must not stop the rest
                reason = e.reason if isinstance(e, audio.AudioError) else f"{e.__class__.__name__}: {e}"
                if not window and "too long" in reason:
                    reason += "; or score it in windows (--window S --hop S)"
                self.errors.append({"path": path, "stage": "decode", "message": reason})
                continue
            spans = windows(len(wave), self.sample_rate, window, hop) if window else [(0, len(wave))]
            for s, e in spans:
                items.append((path, uid, len(wave) / self.sample_rate, s, e))
                waves.append(wave[s:e])
        got = self.frames(waves) if waves else []
        ok = [i for i, g in enumerate(got) if not isinstance(g, Exception)]
        failed = {}
        for i, g in enumerate(got):
            if isinstance(g, Exception) and items[i][0] not in failed:
                failed[items[i][0]] = f"{g.__class__.__name__}: {g}"
        self.errors += [{"path": p, "stage": "forward", "message": m} for p, m in failed.items()]
        ok = [i for i in ok if items[i][0] not in failed]
        scored = self.score([got[i] for i in ok]) if ok else Scored(np.zeros((0, len(self.categories)), np.float32),
                                                                    np.zeros((0, 3), np.float32))
        rows = self._rows([items[i] for i in ok], scored, windowed=bool(window))
        return rows

    def _rows(self, items, scored: Scored, windowed: bool) -> pl.DataFrame:
        sr = self.sample_rate
        cats = self.categories
        recs = {"path": [], "utt_id": [], "start": [], "end": [], "duration": []}
        P, D = [], []
        by_file: dict[str, list[int]] = {}
        for k, (path, uid, dur, s, e) in enumerate(items):
            recs["path"].append(path)
            recs["utt_id"].append(uid)
            recs["start"].append(s / sr)
            recs["end"].append(e / sr)
            recs["duration"].append(dur)
            P.append(scored.probs[k])
            D.append(scored.dims[k])
            by_file.setdefault(path, []).append(k)
        if windowed:  # the file's row: the mean of its windows
            for path, ks in by_file.items():
                recs["path"].append(path)
                recs["utt_id"].append(items[ks[0]][1])
                recs["start"].append(None)
                recs["end"].append(None)
                recs["duration"].append(items[ks[0]][2])
                P.append(scored.probs[ks].mean(0))
                D.append(scored.dims[ks].mean(0))
        P = np.array(P, np.float32).reshape(-1, len(cats))
        D = np.array(D, np.float32).reshape(-1, 3)
        cols = {**{k: pl.Series(k, v, dtype=pl.Utf8 if k in ("path", "utt_id") else pl.Float64) for k, v in recs.items()},
                "label": pl.Series("label", [cats[int(np.argmax(p))] for p in P] if cats else [None] * len(P),
                                   dtype=pl.Utf8)}
        cols.update({f"p_{c}": pl.Series(f"p_{c}", P[:, j]) for j, c in enumerate(cats)})
        cols["model"] = pl.Series("model", [self.bundle.model_id] * len(P), dtype=pl.Utf8)
        for j, d in enumerate(self.bundle.dimensions):
            cols[d] = pl.Series(d, D[:, j])
        df = pl.DataFrame(cols)
        order = {p: i for i, p in enumerate(dict.fromkeys(recs["path"]))}
        return df.with_columns(pl.col("path").replace_strict(order, return_dtype=pl.Int64).alias("_o")) \
            .sort(["_o", pl.col("start").is_null(), "start"]).drop("_o")

    def errors_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.errors, schema={"path": pl.Utf8, "stage": pl.Utf8, "message": pl.Utf8})


def load_model(path: str | os.PathLike, model: str = "auto", store=None, run_store: str | None = None,
               **kwargs) -> Predictor:
    """A predictor of an exported bundle folder, a run folder (its final model, else its fold ensemble; ``model``:
    final | fold-ensemble) or a checkpoint folder (``fold_<f>/best``). ``store``: a LanceDB store that caches the
    foundation model's frames; ``run_store``: a run folder's training store, when not the recorded one (it describes
    the foundation model); ``kwargs`` go to :class:`Predictor`."""
    return Predictor(load_bundle(path, model, run_store), store=store, **kwargs)
