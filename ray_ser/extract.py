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
    pool_size: int | None = None  # model actors; default: one per GPU, else see cpu_layout
    threads: int | None = None  # torch threads per CPU actor; default: see cpu_layout
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
    """Decode and resample each utterance once, then degrade it for each of its conditions.

    In: one row per utterance with a ``conditions`` list. Out: one row per (utterance, condition) with the
    audio, or with ``error``/``stage`` set when decoding or degrading failed.
    """
    out: dict[str, list] = {k: [] for k in ("utt_id", "path", "condition", "audio", "error", "stage", "snr_db", "rt60")}

    def emit(uid, path, cond, wave, err=None, stage=None, params=None):
        out["utt_id"].append(uid)
        out["path"].append(path)
        out["condition"].append(cond)
        out["audio"].append(wave if wave is not None else np.zeros(0, np.float32))
        out["error"].append(err)
        out["stage"].append(stage)
        out["snr_db"].append((params or {}).get("snr_db"))
        out["rt60"].append((params or {}).get("rt60"))

    for uid, path, conds in zip(*(batch.column(k).to_pylist() for k in ("utt_id", "path", "conditions"))):
        try:
            clean = audio.load(path, sample_rate)
        except Exception as e:  # anything about one file must not stop the job
            reason = e.reason if isinstance(e, audio.AudioError) else f"{e.__class__.__name__}: {e}"
            for cond in conds:
                emit(uid, path, cond, None, reason, "decode")
            continue
        for cond in conds:
            try:
                wave, params = conditions.apply_with_params(clean, sample_rate, cond, uid, seed)
            except Exception as e:
                emit(uid, path, cond, None, f"{e.__class__.__name__}: {e}", "degrade")
            else:
                emit(uid, path, cond, wave, params=params)
    return pa.table({
        "utt_id": pa.array(out["utt_id"], pa.string()), "path": pa.array(out["path"], pa.string()),
        "condition": pa.array(out["condition"], pa.string()),
        "audio": pa.array(out["audio"], pa.list_(pa.float32())),
        "error": pa.array(out["error"], pa.string()), "stage": pa.array(out["stage"], pa.string()),
        "snr_db": pa.array(out["snr_db"], pa.float32()), "rt60": pa.array(out["rt60"], pa.float32()),
    })


# ---- stage 2: model actors -----------------------------------------------------------------------
def pool_frames(hidden: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (population) over the first ``n`` frames of (layers, frames, dim) -> (layers, dim) each.

    The plain numpy definition; actors use the batched :func:`pool_batch`, which tests check against this."""
    real = hidden[:, :n].astype(np.float32)
    return real.mean(axis=1), real.std(axis=1)


def pool_batch(hidden, lengths) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std over each utterance's real frames, for a whole (layers, batch, frames, dim) batch.

    Runs where the model ran (GPU or all CPU threads), two-pass so std stays exact -> (batch, layers, dim) each.
    """
    import torch

    h = hidden.float()
    lens = torch.as_tensor(lengths, device=h.device)
    mask = (torch.arange(h.shape[2], device=h.device)[None, :] < lens[:, None]).to(h.dtype)[None, :, :, None]
    count = lens.clamp(min=1).to(h.dtype)[None, :, None]
    mean = (h * mask).sum(2) / count
    var = (((h - mean[:, :, None]) * mask) ** 2).sum(2) / count
    return mean.transpose(0, 1).cpu().numpy(), var.sqrt().transpose(0, 1).cpu().numpy()


class EmbedStage:
    """A Ray Data actor: loads the model once, then turns audio batches into per-layer rows."""

    def __init__(self, options: dict[str, Any], threads: int = 1):
        import torch

        from ray_ser.fm import load_model, pick_device

        self.opts = ExtractOptions(**options)
        device = pick_device()
        if device.type == "cpu":
            torch.set_num_threads(threads)
        self.model = load_model(self.opts.model, device=device, whisper_mode=self.opts.whisper_mode)
        self.dim = self.model.hidden_size
        self.schema = embedding_schema(self.dim).remove_metadata()

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
        errors, stages = batch.column("error").to_pylist(), batch.column("stage").to_pylist()
        audio_col = batch.column("audio")
        ok = [i for i, e in enumerate(errors) if e is None]
        waves = {i: audio_col[i].values.to_numpy(zero_copy_only=False) for i in ok}
        parts: list[pa.Table] = []
        for group in self.sub_batches([len(waves[i]) for i in ok]):
            idx = [ok[g] for g in group]
            try:
                out = self.model([waves[i] for i in idx])
            except Exception as e:  # a batch the model rejects: record each utterance, keep the job going
                for i in idx:
                    errors[i], stages[i] = f"{e.__class__.__name__}: {e}", "forward"
                continue
            parts.append(self._rows(batch.take(idx), [len(waves[i]) for i in idx], out))
        failed = [i for i, e in enumerate(errors) if e is not None]
        if failed:
            bad = batch.take(failed).select(["utt_id", "condition", "path"])
            parts.append(bad.append_column("layer", pa.array([-1] * len(failed), pa.int16()))
                         .append_column("error", pa.array([errors[i] for i in failed], pa.string()))
                         .append_column("stage", pa.array([stages[i] for i in failed], pa.string())))
        if not parts:
            return self.schema.empty_table()
        return pa.concat_tables(parts, promote_options="default")

    def _rows(self, items: pa.Table, samples: list[int], out) -> pa.Table:
        """Store rows of one forward pass: utterance-major, one row per layer, in the table's schema."""
        layers, d = out.hidden.shape[0], self.dim
        lengths = [int(n) for n in out.lengths]
        mean, std = pool_batch(out.hidden, lengths)
        rep = lambda col: pc.take(col, pa.array(np.repeat(np.arange(len(lengths)), layers)))  # noqa: E731
        n_rows = len(lengths) * layers
        if self.opts.frames:
            half = out.hidden.half().cpu().numpy()  # one conversion for the batch, then one copy of real frames
            flat = np.concatenate([half[:, b, :n].ravel() for b, n in enumerate(lengths)])
            offsets = np.concatenate([[0], np.cumsum(np.repeat(lengths, layers))]).astype(np.int32)
            frames = pa.ListArray.from_arrays(pa.array(offsets), pa.FixedSizeListArray.from_arrays(pa.array(flat), d))
        else:
            frames = pa.nulls(n_rows, self.schema.field("frames").type)
        return pa.Table.from_arrays([
            rep(items.column("utt_id")), rep(items.column("condition")),
            pa.array(np.tile(np.arange(layers, dtype=np.int16), len(lengths))),
            pa.array(np.repeat(np.asarray(lengths, np.int32), layers)),
            pa.array(np.repeat(np.asarray(samples, np.float32) / self.model.sample_rate, layers)),
            rep(items.column("snr_db")), rep(items.column("rt60")),
            pa.FixedSizeListArray.from_arrays(pa.array(mean.reshape(-1)), d),
            pa.FixedSizeListArray.from_arrays(pa.array(std.reshape(-1)), d),
            frames,
        ], schema=self.schema)


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
    """One row per utterance with the conditions it still lacks, longest first so batches pad little and
    memory peaks early; an utterance is decoded once for all its conditions."""
    t = manifest.table.select(["utt_id", "path", "duration"])
    rows = []
    for u, p, d in zip(*(t.column(k).to_pylist() for k in t.column_names)):
        todo = [c for c in conds if (u, c) not in skip]
        if todo:
            rows.append((u, p, d or 0.0, todo))
    rows.sort(key=lambda r: (-r[2], r[0]))
    return pa.table({"utt_id": [r[0] for r in rows], "path": [r[1] for r in rows],
                     "duration": pa.array([r[2] for r in rows], pa.float32()),
                     "conditions": pa.array([r[3] for r in rows], pa.list_(pa.string()))})


def input_blocks(items: pa.Table, batch_size: int, n_conds: int) -> list[pa.Table]:
    """Blocks of whole model batches: ``batch_size`` x k utterances (k x conditions ~ 4), so no batch is cut
    short at a block edge, and blocks stay small enough to stream."""
    per_block = batch_size * max(1, 4 // max(1, n_conds))
    return [items.slice(i, per_block) for i in range(0, items.num_rows, per_block)]


MAX_CPU_ACTORS = 4
"""More model copies than this on a CPU cluster cost memory (a large model is >1 GB) for little gain."""


def cpu_layout(cpus: float, pool_size: int | None = None, threads: int | None = None) -> tuple[int, int, float]:
    """(actors, torch threads each, Ray CPUs each) for CPU-only extraction on ``cpus`` cores.

    Single-threaded actors, one per core up to MAX_CPU_ACTORS, beat one actor with all threads: measured on
    2 cores, two 1-thread copies of whisper-base run 13 % more audio than one 2-thread copy, and they do not
    stall at OpenMP barriers when a decode task or the driver takes a core for a moment. Half a CPU stays
    unreserved so the decode tasks can always be scheduled, whatever ``pool_size`` asks for.
    """
    pool = pool_size or max(1, min(int(cpus), MAX_CPU_ACTORS))
    reserve = max(0.01, (cpus - 0.5) / pool)  # never all CPUs, even for a pool larger than the node
    threads = threads or max(1, round(reserve))
    return pool, threads, min(float(threads), reserve)


def finished_blocks(ds):
    """The actors' output blocks as they finish, fetched straight from the object store (no re-batching,
    no prefetch threads: the driver shares the machine with the model)."""
    import ray

    for bundle in ds.iter_internal_ref_bundles():
        for ref in bundle.block_refs:
            yield ray.get(ref)  # an Arrow table: EmbedStage returns pyarrow


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
    todo = sum(len(c) for c in items.column("conditions").to_pylist())
    skipped = len(manifest) * len(conds) - todo
    log.info("run %s: %d to extract, %d already done or failed before, %d partial dropped",
             run_id, todo, skipped, dropped)

    extracted = n_errors = 0
    if items.num_rows:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            pool, threads, actor_cpus = opts.pool_size or gpus, 1, 0.0
        else:
            pool, threads, actor_cpus = cpu_layout(resources.get("CPU", 1), opts.pool_size, opts.threads)
        blocks = input_blocks(items, opts.batch_size, len(conds))
        pool = min(pool, len(blocks))  # an actor with no block to work on would only load the model
        log.info("model actors: %d, each on %s", pool, "1 GPU" if gpus else f"{threads} CPU thread(s)")
        ds = ray.data.from_arrow(blocks)
        ds = ds.map_batches(decode_batch, fn_kwargs={"sample_rate": sample_rate, "seed": opts.seed},
                            batch_format="pyarrow", batch_size=None, num_cpus=0.5)
        ds = ds.map_batches(EmbedStage, fn_constructor_kwargs={"options": asdict(opts), "threads": threads},
                            batch_format="pyarrow", batch_size=opts.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=pool),
                            num_gpus=1 if gpus else 0, num_cpus=actor_cpus)
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

        for block in finished_blocks(ds):
            is_bad = pc.equal(block.column("layer"), -1)
            if pc.any(is_bad).as_py():  # rare: split off the failures (copies the block once)
                bad, good = block.filter(is_bad), block.filter(pc.invert(is_bad))
            else:
                bad, good = None, block
            if good.num_rows:
                good = good.select(schema.names)
                pending.append(good if good.schema.equals(schema, check_metadata=False) else good.cast(schema))
                pending_bytes += pending[-1].nbytes
                if (pending_bytes >= opts.commit_mb * 2**20
                        or now() - last_commit >= opts.commit_seconds):
                    commit()
            if bad is not None:
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
