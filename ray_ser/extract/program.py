"""All-layer extraction with Ray Data: manifest rows x conditions -> audio (CPU tasks; on a CPU-only cluster the
model actors decode their own items) -> model actors -> store.

The driver streams the finished blocks and appends them to LanceDB in commits of ~64 MB or 30 s, so
progress is durable at that granularity; it holds the table's lease (:mod:`ray_ser.store.lease`) for the whole run, so
no two processes ever commit to the same table at once. A re-run first drops the rows of any (utterance,
condition) that a crash left with fewer than all layers and the extra copies of exact duplicates, then extracts
only what is missing; one whose output-relevant settings differ from the table's is refused (:func:`option_drift`).
One bad utterance fails only itself: a failing model call is retried utterance by utterance (halved first when it
ran out of memory).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_ser import __version__, audio, console
from ray_ser.corpora.manifest import Manifest
from ray_ser.extract import conditions
from ray_ser.extract.config import DEFAULT_WHISPER_MODE, ExtractConfig  # noqa: F401 - DEFAULT_WHISPER_MODE re-exported
from ray_ser.redaction import redact
from ray_ser.store.core import Store, as_store, embedding_schema, now
from ray_ser.store.names import sql_string, table_name

log = logging.getLogger(__name__)

RUNTIME_OPTIONS = frozenset({
    "model",  # the weights are compared by hash (a moved checkpoint is the same model)
    "conditions",  # a run may add conditions; each condition's parameters are compared by name instead
    "batch_size", "max_batch_seconds", "pool_size", "threads", "retry_errors", "commit_mb", "commit_seconds",
    "model_key", "max_seconds", "on_drift", "wait_lease", "keep_versions_s", "write_mode", "actor_resources",
    "device",  # where the model runs; what that changes in the rows, the resolved dtype records
})
"""Options that change how a run works, never what a stored row holds. Every other option (seed, frames,
frame_layers, dtype, whisper_mode, and any option added later) must match the table's, or the run is refused."""

LEGACY_DEFAULTS: dict[str, Any] = {"dtype": "float32"}
"""What a table made before an option existed did, where that differs from the option's default today."""

META_FACTS_IGNORED = frozenset({"model", "code_version", "options", "conditions", "model_key"})
"""Recorded metadata that is not compared: every other fact (weights_hash, sample_rate, num_layers, ...) is."""


class OptionDrift(ValueError):
    """A run whose output-relevant settings differ from those its table was made with."""


def _normal(value: Any) -> Any:
    """JSON-normalised (tuples -> lists, keys sorted), so recorded and current values compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def condition_params(names: list[str]) -> dict[str, Any]:
    """Each condition's full definition, as recorded with the table (a name must keep meaning the same audio)."""
    import dataclasses

    out = {}
    for c in conditions.parse_conditions(names):
        out[c.name] = _normal(dataclasses.asdict(c) if dataclasses.is_dataclass(c) else vars(c))
    return out


def option_drift(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, the table's value, this run's value) for every recorded setting that differs.

    Generic over the recorded options: all but :data:`RUNTIME_OPTIONS` are compared, an option missing from an
    older table counts as its :data:`LEGACY_DEFAULTS` value or its default; model facts are compared except
    :data:`META_FACTS_IGNORED`; conditions present in both are compared parameter by parameter."""
    if not old:
        return []
    defaults = ExtractConfig.defaults()
    drift = []
    old_opts, new_opts = old.get("options") or {}, new.get("options") or {}
    for name in sorted((set(old_opts) | set(new_opts)) - RUNTIME_OPTIONS):
        missing = LEGACY_DEFAULTS.get(name, defaults.get(name))
        a, b = _normal(old_opts.get(name, missing)), _normal(new_opts.get(name, missing))
        if a != b:
            drift.append((name, a, b))
    for name in sorted((set(old) & set(new)) - META_FACTS_IGNORED):
        if _normal(old[name]) != _normal(new[name]):
            drift.append((name, _normal(old[name]), _normal(new[name])))
    old_conds, new_conds = old.get("conditions") or {}, new.get("conditions") or {}
    for name in sorted(set(old_conds) & set(new_conds)):
        if _normal(old_conds[name]) != _normal(new_conds[name]):
            drift.append((f"condition {name}", old_conds[name], new_conds[name]))
    return drift


def drift_message(store_uri: str, key: str, drift: list[tuple[str, Any, Any]]) -> str:
    lines = "\n".join(f"  {name}: table {a!r}, this run {b!r}" for name, a, b in drift)
    return (f"store {store_uri} table {table_name(key)} was extracted with other settings than this run:\n{lines}\n"
            "Appending would mix rows made differently under metadata that names the first run's settings. Re-run "
            "with the table's settings, give this run its own key (--model-key NAME, or --on-drift new-key to "
            "derive one), or use another store.")


def drift_key(key: str, meta: dict[str, Any]) -> str:
    """The key ``--on-drift new-key`` files a drifting run under: stable for the same settings, so it resumes."""
    import hashlib

    relevant = {k: v for k, v in (meta.get("options") or {}).items() if k not in RUNTIME_OPTIONS}
    relevant.update({k: v for k, v in meta.items() if k not in META_FACTS_IGNORED})
    return f"{key}~{hashlib.sha1(json.dumps(_normal(relevant), sort_keys=True).encode()).hexdigest()[:8]}"


# ---- stage 1: CPU tasks --------------------------------------------------------------------------
def decode_batch(batch: pa.Table, sample_rate: int, seed: int, max_seconds: float | None = None,
                 storage: dict[str, Any] | None = None) -> pa.Table:
    """Decode and resample each utterance once, then degrade it for each of its conditions.

    In: one row per utterance with a ``conditions`` list. Out: one row per (utterance, condition) with the
    audio, or with ``error``/``stage`` set when decoding or degrading failed. ``storage``: the driver's
    :func:`ray_ser.inputs.snapshot`, for audio on an object store (this node may have no credentials).
    """
    from ray_ser import inputs

    inputs.restore(storage)
    out: dict[str, list] = {k: [] for k in ("utt_id", "path", "condition", "audio", "error", "stage", "snr_db", "rt60",
                                            "aug_params")}

    def emit(uid, path, cond, wave, err=None, stage=None, params=None):
        out["utt_id"].append(uid)
        out["path"].append(path)
        out["condition"].append(cond)
        out["audio"].append(wave if wave is not None else np.zeros(0, np.float32))
        out["error"].append(err)
        out["stage"].append(stage)
        out["snr_db"].append((params or {}).get("snr_db"))
        out["rt60"].append((params or {}).get("rt60"))
        out["aug_params"].append((params or {}).get("aug_params"))  # JSON of an augmented copy's draws

    for uid, path, conds in zip(*(batch.column(k).to_pylist() for k in ("utt_id", "path", "conditions"))):
        try:
            clean = audio.load(path, sample_rate, max_seconds=max_seconds)
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
        "aug_params": pa.array(out["aug_params"], pa.string()),
    })


# ---- stage 2: model actors -----------------------------------------------------------------------
def is_out_of_memory(e: BaseException) -> bool:
    """True for a device (CUDA, MPS) or host allocation failure, which a smaller batch may avoid."""
    import torch

    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_cached_memory() -> None:
    """Give the CUDA caching allocator's free blocks back after an out-of-memory error."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_unusable_message(gpus: int, where: str, torch_version: str, cuda_build: str | None) -> str:
    build = f"built for CUDA {cuda_build}" if cuda_build else "a CPU-only build"
    return (f"the Ray cluster offers {gpus} GPU(s), but torch {torch_version} on {where} cannot use CUDA ({build}, or "
            "no driver): extraction would run a slow CPU actor that holds a GPU. Install a CUDA build of torch on the "
            "workers (`make TORCH= install` keeps your own), or run without GPUs (`ray start --num-gpus=0`).")


def ensure_gpu_usable() -> None:
    """In an actor that Ray gave a GPU: fail at start-up when torch cannot use CUDA (unless the test-only
    :data:`ray_ser.cluster_resources.FAKE_GPUS_ENV` switch says the GPU is a fake one)."""
    import socket

    import ray
    import torch

    from ray_ser.cluster_resources import fake_gpus

    if ray.is_initialized() and ray.get_gpu_ids() and not torch.cuda.is_available() and not fake_gpus():
        raise RuntimeError(gpu_unusable_message(len(ray.get_gpu_ids()), socket.gethostname(), torch.__version__,
                                                torch.version.cuda))


def check_gpu_workers(gpus: int, timeout: float = 600.0) -> None:
    """Before starting the pipeline on GPUs: one GPU task checks that torch there can use CUDA. With no GPU alive
    yet, its request is what the autoscaler adds the first GPU node for; after ``timeout`` the actors check."""
    import ray

    @ray.remote(num_gpus=1, num_cpus=0)
    def probe() -> tuple[bool, str, str | None, str]:
        import socket

        import torch

        from ray_ser.cluster_resources import fake_gpus

        return torch.cuda.is_available() or fake_gpus(), torch.__version__, torch.version.cuda, socket.gethostname()

    try:
        ok, version, cuda_build, host = ray.get(probe.remote(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:  # every GPU busy: the actors check for themselves when they start
        log.warning("no GPU free for %.0f s to check that torch can use CUDA; the model actors will check", timeout)
        return
    if not ok:
        raise RuntimeError(gpu_unusable_message(gpus, host, version, cuda_build))


def pool_frames(hidden: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (population) over the first ``n`` frames of (layers, frames, dim) -> (layers, dim) each.

    The plain numpy definition; actors use the batched :func:`pool_batch`, which tests check against this."""
    real = hidden[:, :n].astype(np.float32)
    return real.mean(axis=1), real.std(axis=1)


def pool_batch(hidden, lengths) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std over each utterance's real frames, for a whole (layers, batch, frames, dim) batch.

    Runs where the model ran (GPU or all CPU threads), two-pass so std stays exact -> (batch, layers, dim) each.
    """
    from ray_ser.fm.step import pool_on_device

    mean, std = pool_on_device(hidden, lengths)
    return mean.cpu().numpy(), std.cpu().numpy()


class EmbedStage:
    """A Ray Data actor: loads the model once, then turns audio batches into per-layer rows."""

    def __init__(self, options: dict[str, Any], threads: int = 1, fragments_to: str | None = None,
                 table_schema: pa.Schema | None = None, storage_options: dict[str, str] | None = None,
                 decode: dict[str, Any] | None = None):
        import torch

        from ray_ser.fm import load_model, pick_device
        from ray_ser.fm.base import torch_dtype
        from ray_ser.fm.step import EmbedStep, device_budget_frames

        self.opts = ExtractConfig.model_validate(options)
        ensure_gpu_usable()  # a GPU that torch cannot use fails here, not as a 1-thread CPU actor holding it
        device = pick_device()
        if device.type == "cpu":
            torch.set_num_threads(threads)
        self.model = load_model(self.opts.model, device=device, whisper_mode=self.opts.whisper_mode,
                                dtype=torch_dtype(self.opts.dtype, device))
        # forward, pooling and the stored layers' real frames, on the device; one copy to host per model call
        self.step = EmbedStep(self.model, frames=self.opts.frames, frame_layers=self.opts.frame_layers)
        self.max_frames = device_budget_frames(self.model)  # None on CPUs; on GPUs from free memory
        self.dim = self.model.hidden_size
        self.schema = embedding_schema(self.dim).remove_metadata()
        self.fragments_to, self.table_schema = fragments_to, table_schema  # write mode "fragments"
        self.storage_options = storage_options  # the store's, from the driver: this node may have no credentials
        self.decode = decode  # decode_batch's arguments when this actor decodes its own items (CPU-only clusters)

    def sub_batches(self, lengths: list[int]) -> list[list[int]]:
        """Split a batch so that (longest utterance x count) stays under max_batch_seconds of audio and, on a
        GPU, the padded frames the layers process fit in its free memory."""
        from ray_ser.fm.step import plan_batches

        seq = [self.model.sequence_frames(n) for n in lengths] if self.max_frames else None
        return plan_batches(lengths, self.opts.max_batch_seconds * self.model.sample_rate, seq, self.max_frames)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.decode is not None:  # work items in: decode them here (see decode_in_actors)
            batch = decode_batch(batch, **self.decode)
        errors, stages = batch.column("error").to_pylist(), batch.column("stage").to_pylist()
        audio_col = batch.column("audio")
        ok = [i for i, e in enumerate(errors) if e is None]
        waves = {i: audio_col[i].values.to_numpy(zero_copy_only=False) for i in ok}
        parts: list[pa.Table] = []
        for group in self.sub_batches([len(waves[i]) for i in ok]):
            for idx, out in self._forward([ok[g] for g in group], waves, errors, stages):
                parts.append(self._rows(batch.take(idx), [len(waves[i]) for i in idx], out))
        failed = [i for i, e in enumerate(errors) if e is not None]
        if failed:
            bad = batch.take(failed).select(["utt_id", "condition", "path"])
            parts.append(bad.append_column("layer", pa.array([-1] * len(failed), pa.int16()))
                         .append_column("error", pa.array([errors[i] for i in failed], pa.string()))
                         .append_column("stage", pa.array([stages[i] for i in failed], pa.string())))
        if not parts:
            return self.schema.empty_table()
        out = pa.concat_tables(parts, promote_options="default")
        return self._write_fragments(out) if self.fragments_to else out

    def _write_fragments(self, out: pa.Table) -> pa.Table:
        """Write mode "fragments": the good rows become uncommitted Lance fragments of the table (invisible until the
        driver commits them); returns the failures plus one record row naming the fragments."""
        from lance.fragment import write_fragments

        is_bad = pc.equal(out.column("layer"), -1)
        good = out.filter(pc.invert(is_bad)).select(self.table_schema.names).cast(self.table_schema)
        parts = [out.filter(is_bad).select(["utt_id", "condition", "path", "layer", "error", "stage"])] \
            if pc.any(is_bad).as_py() else []
        if good.num_rows:
            fragments = write_fragments(good, self.fragments_to, schema=self.table_schema,
                                        storage_options=self.storage_options)
            parts.append(pa.table({
                "layer": pa.array([-2], pa.int16()),
                "fragments": [json.dumps([f.to_json() for f in fragments])],
                "extracted": pa.array([pc.sum(pc.equal(good.column("layer"), 0)).as_py() or 0], pa.int64()),
            }))
        return pa.concat_tables(parts, promote_options="default") if parts else self.schema.empty_table()

    def _forward(self, idx: list[int], waves: dict[int, np.ndarray], errors: list, stages: list) -> list[tuple[list[int], Any]]:
        """Run the model on utterances ``idx``: [(indices, output)] for the calls that succeeded.

        One bad utterance fails only itself: a call that runs out of memory is halved, any other failing call is
        retried one utterance at a time, and only an utterance that fails alone gets an error (stage "forward")."""
        try:
            return [(idx, self.step([waves[i] for i in idx]))]
        except Exception as e:
            oom = is_out_of_memory(e)
            if oom:
                release_cached_memory()
            if len(idx) == 1:
                i = idx[0]
                seconds = len(waves[i]) / self.model.sample_rate
                errors[i] = (f"out of memory on this utterance alone ({seconds:.1f} s of audio): lower --max-seconds "
                             f"or use a device with more memory ({e.__class__.__name__}: {str(e)[:200]})" if oom
                             else f"{e.__class__.__name__}: {e}")
                stages[i] = "forward"
                return []
            if oom:
                half = len(idx) // 2
                log.warning("out of memory on %d utterances: halving the call", len(idx))
                return self._forward(idx[:half], waves, errors, stages) + self._forward(idx[half:], waves, errors, stages)
            log.warning("a model call on %d utterances failed (%s: %s): retrying them one by one",
                        len(idx), e.__class__.__name__, e)
            return [r for i in idx for r in self._forward([i], waves, errors, stages)]

    def _rows(self, items: pa.Table, samples: list[int], out) -> pa.Table:
        """Store rows of one model call (a ``StepOutput``): utterance-major, one row per layer, in the table's schema."""
        from ray_ser.fm.step import arrow_columns

        layers = self.model.num_layers
        lengths = out.lengths
        rep = lambda col: pc.take(col, pa.array(np.repeat(np.arange(len(lengths)), layers)))  # noqa: E731
        mean, std, frames = arrow_columns(out, layers)
        aug = items.column("aug_params") if "aug_params" in items.column_names else pa.nulls(items.num_rows, pa.string())
        return pa.Table.from_arrays([
            rep(items.column("utt_id")), rep(items.column("condition")),
            pa.array(np.tile(np.arange(layers, dtype=np.int16), len(lengths))),
            pa.array(np.repeat(lengths, layers)),
            pa.array(np.repeat(np.asarray(samples, np.float32) / self.model.sample_rate, layers)),
            rep(items.column("snr_db")), rep(items.column("rt60")),
            mean, std, frames, rep(aug),
        ], schema=self.schema)


# ---- the driver ----------------------------------------------------------------------------------
@dataclass
class ExtractResult:
    """What one run did, counted in (utterance, condition) pairs."""

    run_id: str
    model: str  # the key the rows are filed under (``--on-drift new-key`` may have derived it)
    table: str
    extracted: int  # written by this run
    errors: int  # failed in this run (decode, degrade or forward): errors rows
    done_before: int  # already complete in the table, skipped
    failed_before: int  # failed in an earlier run, skipped (--retry-errors tries them again)
    dropped_partial: int  # left incomplete by an earlier crash: removed and extracted again
    duplicates_removed: int  # layer rows stored twice (by runs before leases existed), removed
    manifest_errors: int  # manifest rows left out for faults, recorded as errors rows (stage "manifest")
    seconds: float

    @property
    def skipped(self) -> int:
        """Pairs this run did not extract because an earlier run had done them or failed on them."""
        return self.done_before + self.failed_before


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


def cpu_layout(cpus: float, pool_size: int | None = None, threads: int | None = None,
               node_cpus: float | None = None) -> tuple[int, int, float]:
    """(actors, torch threads each, Ray CPUs each) for CPU-only extraction on ``cpus`` cores (of the cluster; an
    actor never asks for more than ``node_cpus`` less half a CPU, the largest node it may run on).

    Single-threaded actors, one per core up to MAX_CPU_ACTORS, beat one actor with all threads: measured on
    2 cores, two 1-thread copies of whisper-base run 13 % more audio than one 2-thread copy, and they do not
    stall at OpenMP barriers when the driver takes a core for a moment. The actors decode their own items here
    (:func:`decode_in_actors`); half a CPU stays unreserved for the driver's and Ray's own work, whatever
    ``pool_size`` asks for.
    """
    pool = pool_size or max(1, min(int(cpus), MAX_CPU_ACTORS))
    reserve = max(0.01, (cpus - 0.5) / pool)  # never all CPUs, even for a pool larger than the node
    if node_cpus is not None:  # several nodes: an actor must fit on one
        reserve = min(reserve, max(0.01, node_cpus - 0.5))
    threads = threads or max(1, round(reserve))
    return pool, threads, min(float(threads), reserve)


def actor_node_cpus(needs: dict[str, float] | None, alive: list[dict[str, float]] | None = None,
                    types: list | None = None) -> float | None:
    """CPUs of the largest node that offers ``needs`` (the model actors' custom resources): an alive one, or one of
    a node type the autoscaler may add (None when no such node lists its CPUs); refuses, naming them, when no node
    could (the actors would wait for one forever), see :func:`ray_ser.cluster_resources.place`."""
    from ray_ser import cluster_resources as cr

    needs = dict(needs or {})
    alive = cr.alive_nodes() if alive is None else alive
    types = cr.node_types() if types is None else types
    cr.place(needs, "the model actors (extract.actor_resources)", alive=alive, types=types)
    fit = [r.get("CPU", 0.0) for r in alive if all(r.get(k, 0.0) >= v for k, v in needs.items())]
    fit += [t.resources["CPU"] for t in types if t.offers(needs) and "CPU" in t.resources]
    return max(fit) if fit else None


GPU_HINT = ("Set extract.device: cpu (--device cpu), add a GPU node, or give the cluster's autoscaler a node type "
            "with GPUs (docs/cluster.md)")


def plan_gpu_actors(needs: dict[str, float], pool_size: int | None) -> int:
    """GPU model actors: checks that a node could hold one (an alive node, or one the autoscaler adds: a line says
    what the run waits for), and that torch there can use CUDA; returns the pool size (``pool_size``, else one
    per GPU alive or addable)."""
    from ray_ser import cluster_resources as cr

    request = {"GPU": 1.0, **needs}
    alive, types = cr.alive_nodes(), cr.node_types()
    cr.place(request, "the model actors (extract.device gpu)", GPU_HINT, alive=alive, types=types)
    slots = max(1, cr.gpu_slots(request, alive=alive, types=types))
    check_gpu_workers(slots)
    return pool_size or slots


def decode_in_actors(gpus: int) -> bool:
    """Whether the model actors decode their own work items. On a CPU-only cluster they do: the cores are all the
    model's, so separate decode tasks only add worker processes (each importing Ray Data and the audio stack),
    a trip of every decoded waveform through the object store and Ray Data's scheduling of hundreds of small
    tasks, for no overlap. With GPUs, decode tasks on the CPUs keep the devices fed while the actors compute."""
    return not gpus


def resolve_device(device: str, gpus: int | None = None) -> str:
    """``device`` as a run applies it, gpu or cpu: auto is gpu when the cluster has GPUs or its autoscaler can add
    them (:func:`ray_ser.cluster_resources.wants_gpu`; this machine's CUDA devices before Ray starts); ``gpus``
    given: gpu when it is positive."""
    from ray_ser.cluster_resources import check_device, wants_gpu

    if check_device(device) != "auto":
        return device
    if gpus is not None:
        return "gpu" if gpus else "cpu"
    import ray

    if ray.is_initialized():
        return "gpu" if wants_gpu("auto") else "cpu"
    import torch

    return "gpu" if torch.cuda.device_count() else "cpu"


def run_options(opts: ExtractConfig, num_layers: int, gpus: int | None = None) -> ExtractConfig:
    """The options as this run applies them, which the table records: ``device`` resolved to gpu or cpu
    (:func:`resolve_device`), ``dtype`` auto resolved for it (float16 on GPUs, float32 on CPUs, also for a GPU
    node the autoscaler has yet to add) and ``frame_layers`` checked and made non-negative."""
    from ray_ser.fm.base import resolve_dtype
    from ray_ser.fm.step import resolve_frame_layers

    device = resolve_device(opts.device, gpus)
    layers = opts.frame_layers
    if layers is not None and opts.frames:
        layers = list(resolve_frame_layers(layers, num_layers))
    return opts.model_copy(update={"device": device, "frame_layers": layers,
                                   "dtype": resolve_dtype(opts.dtype, "cuda" if device == "gpu" else "cpu")})


def ensure_aug_column(table, conds: list[str]) -> None:
    """Give a table made before ``aug_params`` existed that nullable column when a run writes augmented copies."""
    if any(conditions.is_augmented(c) for c in conds) and "aug_params" not in table.schema.names:
        table.add_columns({"aug_params": "CAST(NULL AS STRING)"})


class FragmentBuffer:
    """Write mode "fragments": the fragments actors wrote, taken from their blocks and committed by the driver in
    arrival order as one Lance Append per commit. A crash before a commit leaves only unreferenced files (never
    visible rows); every (utterance, condition) has all its layers in one actor call, hence in one commit."""

    def __init__(self, storage_options: dict[str, str] | None = None) -> None:
        self.fragments: list = []
        self.extracted = 0
        self.storage_options = storage_options

    def take(self, block: pa.Table) -> pa.Table:
        """Keep the block's fragment records; return the rest (failure rows, or the block itself in driver mode)."""
        if "fragments" not in block.column_names:
            return block
        record = pc.is_valid(block.column("fragments"))
        for text in block.filter(record).column("fragments").to_pylist():
            self.fragments.extend(json.loads(text))
        self.extracted += pc.sum(block.filter(record).column("extracted")).as_py() or 0
        return block.filter(pc.invert(record))

    def commit(self, table) -> int:
        """Append the buffered fragments to ``table`` in one commit; returns the utterance-conditions committed."""
        if not self.fragments:
            return 0
        import lance
        from lance.fragment import FragmentMetadata

        uri, options = table.to_lance().uri, self.storage_options
        latest = lance.dataset(uri, storage_options=options)  # the handle may be stale: commit on the latest version
        frags = [FragmentMetadata.from_json(json.dumps(f)) for f in self.fragments]
        lance.LanceDataset.commit(uri, lance.LanceOperation.Append(frags), read_version=latest.version,
                                  storage_options=options)
        done, self.fragments, self.extracted = self.extracted, [], 0
        return done


def fragment_kwargs(opts: ExtractConfig, table, storage_options: dict[str, str] | None = None) -> dict[str, Any]:
    """EmbedStage's constructor arguments for the write mode: where to write fragments, in the table's schema, with
    the store's storage options."""
    if opts.write_mode == "driver":
        return {}
    if opts.write_mode != "fragments":
        raise ValueError(f"unknown write mode {opts.write_mode!r}: use 'driver' or 'fragments'")
    return {"fragments_to": table.to_lance().uri, "table_schema": table.schema, "storage_options": storage_options}


def pairs_in(block: pa.Table) -> int:
    """The (utterance, condition) pairs an actor's output block finishes: layer-0 rows, failure rows (layer -1),
    and in write mode "fragments" the count its fragment record (layer -2) carries."""
    layer = block.column("layer")
    n = (pc.sum(pc.equal(layer, 0)).as_py() or 0) + (pc.sum(pc.equal(layer, -1)).as_py() or 0)
    if "extracted" in block.column_names:
        n += pc.sum(block.column("extracted")).as_py() or 0
    return int(n)


def finished_blocks(ds):
    """The actors' output blocks as they finish, fetched straight from the object store (no re-batching,
    no prefetch threads: the driver shares the machine with the model)."""
    import ray

    for bundle in ds.iter_internal_ref_bundles():
        for ref in bundle.block_refs:
            yield ray.get(ref)  # an Arrow table: EmbedStage returns pyarrow


def resolve_key(store: Store, opts: ExtractConfig, facts: dict[str, Any], conds: list[str]) -> tuple[ExtractConfig, dict[str, Any]]:
    """The options and table metadata this run writes under; refuses (:class:`OptionDrift`) a run whose recorded
    settings differ from the table's, or with ``on_drift="new-key"`` moves it to a key derived from its settings."""
    if opts.on_drift not in ("refuse", "new-key"):
        raise ValueError(f"on_drift must be 'refuse' or 'new-key', got {opts.on_drift!r}")

    def meta_for(o: ExtractConfig) -> dict[str, Any]:
        return {**facts, "code_version": __version__, "options": o.recorded(), "model_key": o.key,
                "conditions": condition_params(conds)}

    meta = meta_for(opts)
    drift = option_drift(store.extraction_meta(opts.key), meta)
    if drift and opts.on_drift == "new-key":
        derived = drift_key(opts.key, meta)
        log.warning("settings differ from table %s (%s): filing this run under %s", table_name(opts.key),
                    ", ".join(d[0] for d in drift), derived)
        opts = opts.model_copy(update={"model_key": derived})
        meta = meta_for(opts)
        drift = option_drift(store.extraction_meta(opts.key), meta)
    if drift:
        raise OptionDrift(drift_message(store.uri, opts.key, drift))
    return opts, meta


def record_conditions(store: Store, key: str, old: dict[str, Any], meta: dict[str, Any]) -> None:
    """Add this run's new conditions (names and parameters) to the metadata of a table made by an earlier run."""
    if not old:
        return
    conds = {**(old.get("conditions") or {}), **meta["conditions"]}
    names = list(dict.fromkeys([*(old.get("options") or {}).get("conditions", []), *meta["options"]["conditions"]]))
    if conds != old.get("conditions") or names != (old.get("options") or {}).get("conditions"):
        store.update_extraction_meta(key, {**old, "conditions": conds, "options": {**(old.get("options") or {}),
                                                                                   "conditions": names}})


def record_manifest_errors(errors_table, manifest: Manifest, key: str, run_id: str) -> int:
    """An errors row (stage "manifest", condition "*") for each manifest row an adapter left out, once per key."""
    from ray_ser.store.core import MANIFEST_CONDITION

    if not manifest.rejected:
        return 0
    have = errors_table.to_lance().to_table(columns=["utt_id", "message"],
                                           filter=f"stage = 'manifest' AND model = {sql_string(key)}")
    seen = set(zip(have.column("utt_id").to_pylist(), have.column("message").to_pylist()))
    new = [r for r in manifest.rejected if (r.get("utt_id"), r["reason"]) not in seen]
    for r in manifest.rejected:
        log.warning("manifest row left out: %s", r["reason"])
    if new:
        errors_table.add(pa.table({
            "utt_id": [r.get("utt_id") for r in new], "condition": [MANIFEST_CONDITION] * len(new),
            "stage": ["manifest"] * len(new), "path": [r.get("path") for r in new],
            "message": [r["reason"] for r in new], "model": [key] * len(new), "run_id": [run_id] * len(new),
            "time": pa.array([now()] * len(new), pa.float64()),
        }, schema=errors_table.schema))
    return len(manifest.rejected)


def extract(manifest: Manifest, store_uri: str | Store, options: ExtractConfig | None = None,
            experiment: dict[str, Any] | None = None) -> ExtractResult:
    """Extract every layer of ``options.model`` for every manifest row and condition not yet in the store;
    ``experiment`` (the resolved experiment config, when a config drove the run) is recorded in its ``runs`` row.

    Holds the table's lease for the whole run (a second run on the same key waits ``wait_lease`` seconds, then
    is refused), refuses option drift, and counts what it skipped as done or failed before."""
    from ray_ser.fm.registry import describe as describe_model
    from ray_ser.store.lease import Lease

    opts = (options or ExtractConfig()).expanded()
    conds = [c.name for c in conditions.parse_conditions(opts.conditions)]
    t0 = now()
    run_id = uuid.uuid4().hex[:12]
    store = as_store(store_uri)
    added, updated = store.put_manifest(manifest)
    if added or updated:
        log.info("manifest %s: %d utterances added, %d updated", manifest.corpus, added, updated)

    # Table width and provenance from config and weight files: the driver never builds the model.
    facts = describe_model(opts.model, whisper_mode=opts.whisper_mode)
    opts = run_options(opts, facts["num_layers"])  # dtype resolved for this cluster, frame layers checked
    opts, meta = resolve_key(store, opts, facts, conds)
    with Lease.acquire(store, table_name(opts.key), run_id, what=f"extraction of {opts.key}",
                       wait=opts.wait_lease) as lease:
        old = store.extraction_meta(opts.key)
        drift = option_drift(old, meta)  # again under the lease: a run may have made the table meanwhile
        if drift:
            raise OptionDrift(drift_message(store.uri, opts.key, drift))
        table = store.embeddings(opts.key, dim=facts["hidden_size"], meta=meta)
        record_conditions(store, opts.key, old, meta)
        ensure_aug_column(table, conds)
        result = _run(store, table, manifest, opts, conds, facts, run_id, lease)
    result.seconds = now() - t0
    log.info("run %s: extracted %d, errors %d, done before %d, failed before %d%s, partial dropped %d, "
             "duplicate rows removed %d, manifest rows left out %d", run_id, result.extracted, result.errors,
             result.done_before, result.failed_before, " (--retry-errors tries them again)" if result.failed_before
             else "", result.dropped_partial, result.duplicates_removed, result.manifest_errors)
    store.runs().add(pa.table({
        "run_id": [run_id], "model": [opts.key], "table": [result.table], "corpus": [manifest.corpus],
        "started": [t0], "finished": [now()], "options": [json.dumps(redact(meta), sort_keys=True, default=str)],
        "extracted": [result.extracted], "errors": [result.errors], "skipped": [result.skipped],
        "done_before": [result.done_before], "failed_before": [result.failed_before],
        "manifest_errors": [result.manifest_errors], "duplicates_removed": [result.duplicates_removed],
        "config": [json.dumps(redact(experiment), sort_keys=True, default=str) if experiment is not None else None],
    }, schema=store.runs().schema))
    return result


def _run(store: Store, table, manifest: Manifest, opts: ExtractConfig, conds: list[str], facts: dict[str, Any],
         run_id: str, lease) -> ExtractResult:
    """Resume bookkeeping, then the pipeline and its commits (the caller holds the table's lease)."""
    from datetime import timedelta

    import ray

    key, num_layers, sample_rate = opts.key, facts["num_layers"], facts["sample_rate"]
    scan = store.scan_keys(key, num_layers)
    dropped = store.delete_keys(table, scan.partial) if scan.partial else 0
    duplicates = store.delete_rows(table, scan.duplicates) if scan.duplicates else 0
    errors_table = store.errors()
    failed = store.error_keys(key)
    if opts.retry_errors and failed:
        store.delete_keys(errors_table, failed, model=key)
        failed = set()
    manifest_errors = record_manifest_errors(errors_table, manifest, key, run_id)
    pairs = [(u, c) for u in manifest.column("utt_id") for c in conds]
    done_before = sum(1 for p in pairs if p in scan.complete)
    failed_before = sum(1 for p in pairs if p in failed and p not in scan.complete)
    items = work_items(manifest, conds, scan.complete | failed)
    todo = sum(len(c) for c in items.column("conditions").to_pylist())
    log.info("run %s: %d to extract, %d done before, %d failed before, %d partial dropped, %d duplicate rows removed",
             run_id, todo, done_before, failed_before, dropped, duplicates)

    extracted = n_errors = 0
    if items.num_rows:
        resources = ray.cluster_resources()
        if resolve_device(opts.device) == "gpu":
            pool = gpus = plan_gpu_actors(dict(opts.actor_resources), opts.pool_size)
            threads, actor_cpus = 1, 0.0
        else:
            gpus = 0
            pool, threads, actor_cpus = cpu_layout(resources.get("CPU", 1), opts.pool_size, opts.threads,
                                                   actor_node_cpus(opts.actor_resources))
        blocks = input_blocks(items, opts.batch_size, len(conds))
        pool = min(pool, len(blocks))  # an actor with no block to work on would only load the model
        log.info("model actors: %d, each on %s", pool, "1 GPU" if gpus else f"{threads} CPU thread(s)")
        from ray_ser import inputs

        decode = {"sample_rate": sample_rate, "seed": opts.seed, "max_seconds": opts.max_seconds,
                  "storage": inputs.snapshot(items.column("path").to_pylist())}  # audio in a bucket: its options
        ds = ray.data.from_arrow(blocks)
        fused = decode_in_actors(gpus)
        if not fused:
            ds = ds.map_batches(decode_batch, fn_kwargs=decode, batch_format="pyarrow", batch_size=None, num_cpus=0.5)
        ds = ds.map_batches(EmbedStage, fn_constructor_kwargs={"options": opts.recorded(), "threads": threads,
                                                               "decode": decode if fused else None,
                                                               **fragment_kwargs(opts, table, store.storage_options)},
                            batch_format="pyarrow",
                            batch_size=max(1, opts.batch_size // len(conds)) if fused else opts.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=pool),
                            num_gpus=1 if gpus else 0, num_cpus=actor_cpus,
                            **({"resources": dict(opts.actor_resources)} if opts.actor_resources else {}))
        schema = table.schema  # the table's own columns: an older table may lack newer nullable ones
        pending: list[pa.Table] = []
        pending_errors: list[pa.Table] = []
        pending_bytes = 0
        written = FragmentBuffer(store.storage_options)  # write mode "fragments": what the actors wrote, awaiting its commit
        last_commit = now()

        def commit() -> None:
            nonlocal extracted, n_errors, last_commit, pending_bytes
            lease.check()  # never write after another run took the table over
            if pending_errors:
                bad = pa.concat_tables(pending_errors)
                errors_table.add(bad)
                n_errors += bad.num_rows
                pending_errors.clear()
            extracted += written.commit(table)
            if pending:
                rows = pa.concat_tables(pending)
                table.add(rows)
                extracted += pc.sum(pc.equal(rows.column("layer"), 0)).as_py() or 0
                pending.clear()
                pending_bytes = 0
            last_commit = now()

        bar = console.progress(todo, f"extract {key}", "utt")  # (utterance, condition) pairs, with rate and ETA
        failed_now = 0
        for block in finished_blocks(ds):
            bar.update(pairs_in(block))
            block = written.take(block)
            is_bad = pc.equal(block.column("layer"), -1)
            if pc.any(is_bad).as_py():  # rare: split off the failures (copies the block once)
                bad, good = block.filter(is_bad), block.filter(pc.invert(is_bad))
            else:
                bad, good = None, block
            if good.num_rows:
                good = good.select(schema.names)
                pending.append(good if good.schema.equals(schema, check_metadata=False) else good.cast(schema))
                pending_bytes += pending[-1].nbytes
            if bad is not None:
                pending_errors.append(pa.table({
                    "utt_id": bad.column("utt_id"), "condition": bad.column("condition"), "stage": bad.column("stage"),
                    "path": bad.column("path"), "message": bad.column("error"),
                    "model": pa.array([key] * bad.num_rows, pa.string()),
                    "run_id": pa.array([run_id] * bad.num_rows, pa.string()),
                    "time": pa.array([now()] * bad.num_rows, pa.float64()),
                }, schema=errors_table.schema))
                for u, p, m in zip(*(bad.column(k).to_pylist() for k in ("utt_id", "path", "error"))):
                    log.warning("failed %s (%s): %s", u, p, m)
                failed_now += bad.num_rows
                bar.set_postfix_str(f"{failed_now} failed")
            if pending_bytes >= opts.commit_mb * 2**20 or now() - last_commit >= opts.commit_seconds:
                commit()
        commit()
        bar.close()
        store.finalize(key, keep=timedelta(seconds=opts.keep_versions_s), commit_bytes=opts.commit_mb * 2**20)

    return ExtractResult(run_id, key, table_name(key), extracted, n_errors, done_before, failed_before, dropped,
                         duplicates, manifest_errors, 0.0)
