"""All-layer extraction with Ray Data: manifest rows x conditions -> audio (CPU tasks) -> model actors -> store.

The driver streams the finished blocks and appends them to LanceDB in commits of ~64 MB or 30 s, so
progress is durable at that granularity and no two processes ever commit to the same table at once. A re-run first drops
the rows of any (utterance, condition) that a crash left with fewer than all layers, then extracts only
what is missing.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_ser import __version__, audio, conditions
from ray_ser.corpora.manifest import Manifest
from ray_ser.store import Store, embedding_schema, now, table_name

log = logging.getLogger(__name__)

DEFAULT_WHISPER_MODE = "strided:10"
"""Whisper's full 30 s context at about half of trimmed's speed; see the README's Whisper windows section."""


@dataclass
class ExtractOptions:
    """Everything that decides what an extraction run writes; recorded with the table."""

    model: str = "whisper-base"
    conditions: list[str] = field(default_factory=lambda: list(conditions.DEFAULT_CONDITIONS))
    frames: bool = True
    whisper_mode: str = DEFAULT_WHISPER_MODE
    batch_size: int = 8
    max_batch_seconds: float = 240.0
    pool_size: int | None = None  # model actors; default: one per GPU, else one
    threads: int | None = None  # torch threads per CPU actor; default: the node's CPU count
    seed: int = 0
    retry_errors: bool = False
    commit_mb: float = 64.0  # buffer finished rows up to this size before one LanceDB commit ...
    commit_seconds: float = 30.0  # ... or this long, whichever comes first (0: commit every block)
    model_key: str | None = None  # the name the store files it under; default model(@mode)

    @property
    def key(self) -> str:
        if self.model_key:
            return self.model_key
        return self.model if self.whisper_mode == DEFAULT_WHISPER_MODE else f"{self.model}@{self.whisper_mode}"


# ---- stage 1: CPU tasks --------------------------------------------------------------------------
def decode_batch(batch: pa.Table, sample_rate: int, seed: int) -> pa.Table:
    """Decode, resample and degrade each (utterance, condition); failures become rows with ``error`` set."""
    waves, errors, stages, snrs, rt60s = [], [], [], [], []
    for uid, path, cond in zip(*(batch.column(k).to_pylist() for k in ("utt_id", "path", "condition"))):
        wave, err, stage, params = None, None, None, {}
        try:
            wave = audio.load(path, sample_rate)
        except audio.AudioError as e:
            err, stage = e.reason, "decode"
        except Exception as e:  # anything else about one file must not stop the job
            err, stage = f"{e.__class__.__name__}: {e}", "decode"
        if wave is not None:
            try:
                wave, params = conditions.apply_with_params(wave, sample_rate, cond, uid, seed)
            except Exception as e:
                wave, err, stage = None, f"{e.__class__.__name__}: {e}", "degrade"
        waves.append(wave if wave is not None else np.zeros(0, np.float32))
        errors.append(err)
        stages.append(stage)
        snrs.append(params.get("snr_db"))
        rt60s.append(params.get("rt60"))
    return (batch.append_column("audio", pa.array(waves, pa.list_(pa.float32())))
            .append_column("error", pa.array(errors, pa.string()))
            .append_column("stage", pa.array(stages, pa.string()))
            .append_column("snr_db", pa.array(snrs, pa.float32()))
            .append_column("rt60", pa.array(rt60s, pa.float32())))


# ---- stage 2: model actors -----------------------------------------------------------------------
OUTPUT_COLUMNS = ("utt_id", "condition", "layer", "n_frames", "duration", "snr_db", "rt60", "mean", "std",
                  "frames", "error", "stage", "path")


def pool_frames(hidden: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (population) over the first ``n`` frames of (layers, frames, dim) -> (layers, dim) each."""
    real = hidden[:, :n].astype(np.float32)
    return real.mean(axis=1), real.std(axis=1)


class EmbedStage:
    """A Ray Data actor: loads the model once, then turns audio batches into per-layer rows."""

    def __init__(self, options: dict[str, Any]):
        import torch

        from ray_ser.fm import load_model, pick_device

        self.opts = ExtractOptions(**options)
        device = pick_device()
        if device.type == "cpu":
            import os

            torch.set_num_threads(self.opts.threads or os.cpu_count() or 1)
        self.model = load_model(self.opts.model, device=device, whisper_mode=self.opts.whisper_mode)
        self.dim = self.model.hidden_size

    def sub_batches(self, lengths: list[int]) -> list[list[int]]:
        """Split a batch so that (longest utterance x count) stays under max_batch_seconds of audio."""
        budget = self.opts.max_batch_seconds * self.model.sample_rate
        groups, cur, longest = [], [], 0
        for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
            longest_if = max(longest, lengths[i])
            if cur and longest_if * (len(cur) + 1) > budget:
                groups.append(cur)
                cur, longest_if = [], lengths[i]
            cur.append(i)
            longest = longest_if
        return groups + ([cur] if cur else [])

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols = {k: batch.column(k).to_pylist() for k in ("utt_id", "condition", "path", "error", "stage", "snr_db", "rt60")}
        audio_col = batch.column("audio")
        ok = [i for i, e in enumerate(cols["error"]) if e is None]
        waves = {i: audio_col[i].values.to_numpy(zero_copy_only=False) for i in ok}
        rows: list[dict[str, Any]] = []
        for group in self.sub_batches([len(waves[i]) for i in ok]):
            idx = [ok[g] for g in group]
            try:
                out = self.model([waves[i] for i in idx])
            except Exception as e:  # a batch the model rejects: record each utterance, keep the job going
                for i in idx:
                    cols["error"][i], cols["stage"][i] = f"{e.__class__.__name__}: {e}", "forward"
                continue
            hidden = out.hidden.float().cpu().numpy()  # (layers, batch, frames, dim)
            for b, i in enumerate(idx):
                n = int(out.lengths[b])
                mean, std = pool_frames(hidden[:, b], n)
                for layer in range(hidden.shape[0]):
                    rows.append({
                        "utt_id": cols["utt_id"][i], "condition": cols["condition"][i], "layer": layer,
                        "n_frames": n, "duration": len(waves[i]) / self.model.sample_rate,
                        "snr_db": cols["snr_db"][i], "rt60": cols["rt60"][i],
                        "mean": mean[layer], "std": std[layer],
                        "frames": hidden[layer, b, :n].astype(np.float16) if self.opts.frames else None,
                    })
        failed = [i for i, e in enumerate(cols["error"]) if e is not None]
        return self._to_arrow(rows, [{k: cols[k][i] for k in ("utt_id", "condition", "error", "stage", "path")} for i in failed])

    def _to_arrow(self, rows: list[dict], failures: list[dict]) -> pa.Table:
        d = self.dim
        n = len(rows)
        if n:
            mean = pa.FixedSizeListArray.from_arrays(pa.array(np.stack([r["mean"] for r in rows]).ravel()), d)
            std = pa.FixedSizeListArray.from_arrays(pa.array(np.stack([r["std"] for r in rows]).ravel()), d)
        else:
            mean = std = pa.nulls(0, pa.list_(pa.float32(), d))
        if self.opts.frames and n:
            lens = np.array([r["n_frames"] for r in rows], np.int32)
            offsets = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
            flat = np.concatenate([r["frames"] for r in rows]).ravel() if lens.sum() else np.zeros(0, np.float16)
            frames = pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float16()), d))
        else:
            frames = pa.nulls(n, pa.list_(pa.list_(pa.float16(), d)))
        emb = pa.table({
            "utt_id": pa.array([r["utt_id"] for r in rows], pa.string()),
            "condition": pa.array([r["condition"] for r in rows], pa.string()),
            "layer": pa.array([r["layer"] for r in rows], pa.int16()),
            "n_frames": pa.array([r["n_frames"] for r in rows], pa.int32()),
            "duration": pa.array([r["duration"] for r in rows], pa.float32()),
            "snr_db": pa.array([r["snr_db"] for r in rows], pa.float32()),
            "rt60": pa.array([r["rt60"] for r in rows], pa.float32()),
            "mean": mean, "std": std, "frames": frames,
            "error": pa.nulls(n, pa.string()), "stage": pa.nulls(n, pa.string()), "path": pa.nulls(n, pa.string()),
        })
        if not failures:
            return emb
        bad = pa.table({
            "utt_id": [f["utt_id"] for f in failures], "condition": [f["condition"] for f in failures],
            "layer": pa.array([-1] * len(failures), pa.int16()),
            "error": [f["error"] for f in failures], "stage": [f["stage"] for f in failures],
            "path": [f["path"] for f in failures],
        })
        return pa.concat_tables([emb, bad], promote_options="default")


# ---- the driver ----------------------------------------------------------------------------------
@dataclass
class ExtractResult:
    run_id: str
    model: str
    table: str
    extracted: int
    errors: int
    skipped: int
    dropped_partial: int
    seconds: float


def work_items(manifest: Manifest, conds: list[str], skip: set[tuple[str, str]]) -> pa.Table:
    """The (utterance, condition) pairs still to do, longest first so batches pad little and memory peaks early."""
    t = manifest.table.select(["utt_id", "path", "duration"])
    rows = [(u, p, d or 0.0, c) for c in conds for u, p, d in zip(*(t.column(k).to_pylist() for k in t.column_names))
            if (u, c) not in skip]
    rows.sort(key=lambda r: (-r[2], r[0], r[3]))
    return pa.table({"utt_id": [r[0] for r in rows], "path": [r[1] for r in rows], "condition": [r[3] for r in rows]})


def extract(manifest: Manifest, store_uri: str, options: ExtractOptions | None = None) -> ExtractResult:
    """Extract every layer of ``options.model`` for every manifest row and condition not yet in the store."""
    import ray

    from ray_ser.fm.registry import describe as describe_model

    opts = options or ExtractOptions()
    conds = [c.name for c in conditions.parse_conditions(opts.conditions)]
    t0 = now()
    run_id = uuid.uuid4().hex[:12]
    store = Store(store_uri)
    store.put_manifest(manifest)

    # Table width and provenance from config and weight files: the driver never builds the model.
    facts = describe_model(opts.model, whisper_mode=opts.whisper_mode)
    meta = {**facts, "code_version": __version__, "options": asdict(opts), "model_key": opts.key}
    num_layers, sample_rate, dim = facts["num_layers"], facts["sample_rate"], facts["hidden_size"]
    table = store.embeddings(opts.key, dim=dim, meta=meta)

    complete, partial = store.keys(opts.key, num_layers)
    dropped = store.delete_keys(table, partial) if partial else 0
    errors_table = store.errors()
    failed_before = store.error_keys(opts.key)
    if opts.retry_errors and failed_before:
        store.delete_keys(errors_table, failed_before, model=opts.key)
        failed_before = set()
    items = work_items(manifest, conds, complete | failed_before)
    skipped = len(manifest) * len(conds) - items.num_rows
    log.info("run %s: %d to extract, %d already done or failed before, %d partial dropped",
             run_id, items.num_rows, skipped, dropped)

    extracted = n_errors = 0
    if items.num_rows:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        pool = opts.pool_size or max(1, gpus)
        ds = ray.data.from_arrow(items).repartition(max(1, items.num_rows // max(1, opts.batch_size * 4)))
        ds = ds.map_batches(decode_batch, fn_kwargs={"sample_rate": sample_rate, "seed": opts.seed},
                            batch_format="pyarrow", batch_size=opts.batch_size, num_cpus=0.5)
        ds = ds.map_batches(EmbedStage, fn_constructor_kwargs={"options": asdict(opts)}, batch_format="pyarrow",
                            batch_size=opts.batch_size, compute=ray.data.ActorPoolStrategy(size=pool),
                            num_gpus=1 if gpus else 0, num_cpus=1 if not gpus else 0)
        schema = embedding_schema(dim)
        pending: list[pa.Table] = []
        pending_bytes = 0
        last_commit = now()

        def commit() -> None:
            nonlocal extracted, last_commit, pending_bytes
            if pending:
                rows = pa.concat_tables(pending)
                table.add(rows)
                extracted += pc.sum(pc.equal(rows.column("layer"), 0)).as_py() or 0
                pending.clear()
                pending_bytes = 0
            last_commit = now()

        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
            bad = block.filter(pc.equal(block.column("layer"), -1))
            good = block.filter(pc.not_equal(block.column("layer"), -1))
            if good.num_rows:
                pending.append(good.select(schema.names).cast(schema))
                pending_bytes += pending[-1].nbytes
                if (pending_bytes >= opts.commit_mb * 2**20
                        or now() - last_commit >= opts.commit_seconds):
                    commit()
            if bad.num_rows:
                n_errors += bad.num_rows
                errors_table.add(pa.table({
                    "utt_id": bad.column("utt_id"), "condition": bad.column("condition"), "stage": bad.column("stage"),
                    "path": bad.column("path"), "message": bad.column("error"),
                    "model": pa.array([opts.key] * bad.num_rows, pa.string()),
                    "run_id": pa.array([run_id] * bad.num_rows, pa.string()),
                    "time": pa.array([now()] * bad.num_rows, pa.float64()),
                }))
                for u, p, m in zip(*(bad.column(k).to_pylist() for k in ("utt_id", "path", "error"))):
                    log.warning("skipped %s (%s): %s", u, p, m)
        commit()
        store.finalize(opts.key)

    result = ExtractResult(run_id, opts.key, table_name(opts.key), extracted, n_errors, skipped, dropped, now() - t0)
    store.runs().add(pa.table({
        "run_id": [run_id], "model": [opts.key], "table": [result.table], "corpus": [manifest.corpus],
        "started": [t0], "finished": [now()], "options": [json.dumps(meta, sort_keys=True, default=str)],
        "extracted": [extracted], "errors": [n_errors], "skipped": [skipped],
    }, schema=store.runs().schema))
    return result
