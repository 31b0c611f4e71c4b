"""Scale benchmark: every stage of the pipeline on a generated MSP-Podcast-layout corpus at several sizes, each
size on a fresh store, with a tiny random-init HuBERT so the forward pass does not hide the rest.

    python benchmarks/scale.py --utterances 1000,10000,100000 [--work DIR --out results.json]
    python benchmarks/scale.py                        (300,1000: a quick look)

Per size: the corpus (benchmarks/scale_corpus.py: MSP-Podcast's Audios/ + Labels/ layout, FLAC, 1-8 s,
16/44.1/48 kHz, one identified speaker per 50 turns), then the stages, each through its job's main() as a user
runs it from one experiment config (written to <work>/n<N>/scale.yaml):

    manifest      jobs/manifest.py (the msppodcast adapter, manifest Parquet)
    extract       jobs/extract.py (all layers, frames on, --conditions; Ray started beforehand, not timed)
    saliency      jobs/saliency.py (CCS + MIS per fold, the layer ranking and the pipeline's layer choice)
    prune_frames  jobs/prune_frames.py (the best layer at keep 0.6)
    clusters      jobs/frames.py (per outer fold, layer auto, --k)
    train         jobs/train.py twice on outer folds 0,1: the linear model (mlp_hidden 0, --linear-epochs) and
                  one small TC-GRU epoch (no per-fold test report: the evaluate stage predicts)
    tune          ray_ser.train.tune.run_search: two trials of one epoch (the small TC-GRU widths as the base)
    evaluate      jobs/evaluate.py on the linear run: predictions, tables with the speaker bootstrap, the report

Each size runs in a fresh process of its own (its own driver and Ray instance; --in-process: all in this one).
The stages run in this order, except tune, which runs right after prune_frames (before the cluster job writes its
centroids, so its trials fit their own, as on a fresh store; --pipeline-order runs it after train instead). A failing stage ends that size (its
error is in the table, the JSON and the log).

Measured per stage: wall time; the driver's peak resident memory (the size's process: VmHWM, reset before the
stage); the largest Ray worker's (processes descended from the driver whose command line starts with "ray::",
Ray's agents left out, sampled every --sample-s from /proc: their VmHWM, reset at the stage's start, so peaks
between samples count; workers kept from an earlier stage count with what they still hold); "growth": that
peak less the process's resident memory when the stage began; the sum of all such workers' resident memory
at its sampled peak; and the store's bytes on disk after the stage. Then a table per stage and size, each stage's growth exponent of wall time between consecutive
sizes (log(t2/t1)/log(n2/n1)), a JSON of every figure (--out), and, last, one line per stage:

    scale <stage> exponent <e> driver_peak_mb <m> worker_peak_mb <w>

(e between the two largest sizes run, nan with one size; peaks at the largest size).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Self

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import scale_corpus

STAGES = ("manifest", "extract", "saliency", "prune_frames", "clusters", "train", "tune", "evaluate")
MB = 2 ** 20


# ---- memory and disk ----------------------------------------------------------------------------------------
def _status(pid: int | str) -> dict[str, int]:
    """VmRSS / VmHWM of a process in bytes ({} when it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def _reset_peak(pid: int | str) -> None:
    """Reset a process's VmHWM to its current RSS (Linux clear_refs 5); our own processes only."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


AGENTS = ("DashboardAgent", "RuntimeEnvAgent")
"""Ray's per-node agents also name themselves ray::...; they run no task, so they are not counted as workers."""


def ray_workers(root: int) -> dict[int, str]:
    """pid -> command line of every process descended from ``root`` whose command line starts with ray:: (the
    workers of the Ray instance this process started, idle ones included; other users' Ray processes are not
    descendants), less Ray's agents (:data:`AGENTS`)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            parent[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmd.startswith("ray::") and not cmd.split()[0].endswith(AGENTS):
            found[pid] = cmd
    return found


class Monitor:
    """Samples this process's and its Ray workers' memory in a thread while a stage runs."""

    def __init__(self, every: float = 0.5):
        self.every = every
        self.me = os.getpid()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        _reset_peak("self")
        self.driver_start = _status("self").get("VmRSS", 0)
        self.worker_start: dict[int, int] = {}
        for pid in ray_workers(self.me):
            _reset_peak(pid)
            self.worker_start[pid] = _status(pid).get("VmRSS", 0)
        self.driver_rss = 0
        self.worker_peak: dict[int, int] = {}
        self.worker_name: dict[int, str] = {}
        self.workers_sum = 0
        self.max_workers = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        self.driver_rss = max(self.driver_rss, _status("self").get("VmRSS", 0))
        total = 0
        workers = ray_workers(self.me)
        for pid, cmd in workers.items():
            s = _status(pid)
            if not s:
                continue
            total += s.get("VmRSS", 0)
            peak = max(s.get("VmHWM", 0), s.get("VmRSS", 0))
            if peak > self.worker_peak.get(pid, -1):
                self.worker_peak[pid] = peak
                self.worker_name[pid] = cmd[:80]
        self.workers_sum = max(self.workers_sum, total)
        self.max_workers = max(self.max_workers, len(workers))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.driver_peak = max(self.driver_rss, _status("self").get("VmHWM", 0))
        self.worker_growth = max((peak - self.worker_start.get(pid, 0) for pid, peak in self.worker_peak.items()),
                                 default=0)
        if self.worker_peak:
            top = max(self.worker_peak, key=self.worker_peak.get)
            self.worker_max, self.worker_max_name = self.worker_peak[top], self.worker_name[top]
        else:
            self.worker_max, self.worker_max_name = 0, ""


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


# ---- the model and the config -------------------------------------------------------------------------------
def save_tiny_hubert(path: Path, layers: int = 4, width: int = 32) -> Path:
    """A random-init HuBERT with ``layers`` transformer layers of ``width`` (320x downsampling: 50 frames/s at
    16 kHz, as the real models), saved with save_pretrained; as tests/conftest.py's, a few layers more."""
    import torch
    from transformers import HubertConfig, HubertModel

    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    cfg = HubertConfig(
        hidden_size=width, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * width,
        conv_dim=(32, 32, 32, 32), conv_stride=(5, 4, 4, 4), conv_kernel=(10, 4, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer", do_stable_layer_norm=True,
    )
    HubertModel(cfg).eval().save_pretrained(path)
    return path


TCGRU = {"conv_channels": 32, "gru_hidden": 32, "embed_dim": 16}
"""The small TC-GRU of the train and tune stages."""


def write_config(path: Path, run_dir: Path, manifest: Path, store: Path, model: Path, args) -> Path:
    import yaml

    cfg = {
        "name": "scale", "runs": str(run_dir),
        "data": {"manifest": str(manifest)},
        "store": {"uri": str(store)},
        "extract": {"model": str(model), "model_key": "tiny", "conditions": args.conditions},
        "analysis": {"clusters": {"k": args.k}, "prune": {"keep_ratio": 0.6}},
        "train": {**TCGRU, "batch_size": args.batch_size, "cpus_per_worker": 1.0, "outer_folds": "0,1"},
        "evaluate": {"n_boot": args.n_boot},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ---- the stages ---------------------------------------------------------------------------------------------
def stages(conf: Path, work: Path, data_root: Path, manifest: Path, store: Path, args, state: dict):
    """(name, callable) per stage, in order; ``state`` carries what a later stage needs (the best layer)."""
    from ray_ser.jobs import frames as frames_job
    from ray_ser.jobs import evaluate as evaluate_job
    from ray_ser.jobs import extract as extract_job
    from ray_ser.jobs import manifest as manifest_job
    from ray_ser.jobs import prune_frames as prune_job
    from ray_ser.jobs import saliency as saliency_job
    from ray_ser.jobs import train as train_job

    c = ["--config", str(conf)]
    runs = work / "runs"

    def manifest_stage():
        manifest_job.main(["--corpus", "msppodcast", "--data-root", str(data_root), "--out", str(manifest)])

    def extract_stage():
        state["extract"] = extract_job.main(c)

    def saliency_stage():
        state["best_layer"] = saliency_job.main(c)["best_layer"]

    def prune_stage():
        prune_job.main([*c, "--layer", str(state["best_layer"])])

    def cluster_stage():
        frames_job.main(c)

    def train_stage():
        t0 = time.perf_counter()
        train_job.main([*c, "--out", str(runs / "linear"), "--arch", "mlp", "--mlp-hidden", "0",
                        "--epochs", str(args.linear_epochs), "--no-spec-augment", "--no-test-report"])
        t1 = time.perf_counter()
        train_job.main([*c, "--out", str(runs / "tcgru"), "--arch", "tcgru", "--epochs", "1", "--no-test-report"])
        state["train_parts"] = {"linear_s": t1 - t0, "tcgru_s": time.perf_counter() - t1}

    def tune_stage():
        from ray_ser.store import Store
        from ray_ser.train.config import TrainConfig
        from ray_ser.train.tune import SearchOptions, run_search

        base = TrainConfig(store=str(store), model="tiny", arch="tcgru", batch_size=args.batch_size, epochs=1,
                           **TCGRU)
        opts = SearchOptions(base=base, num_samples=2, max_epochs=1, grace_period=1, seed=0, search_folds=2,
                             held_out_folds=[0, 1], cpus_per_trial=0.5, max_concurrent=2, name="search")
        trials = run_search(opts, Store(str(store)), str(runs / "search"))
        state["trials"] = dict(zip(trials["trial_id"].to_list(), trials["status"].to_list()))
        failed = [t for t, s in state["trials"].items() if s != "TERMINATED"]
        if failed:
            raise RuntimeError(f"tune trials {failed} did not finish (see {runs / 'search'} and the run log)")

    def evaluate_stage():
        evaluate_job.main([*c, "--run", str(runs / "linear"), "--out", str(runs / "linear" / "eval")])

    order = [("manifest", manifest_stage), ("extract", extract_stage), ("saliency", saliency_stage),
             ("prune_frames", prune_stage), ("clusters", cluster_stage), ("train", train_stage),
             ("tune", tune_stage), ("evaluate", evaluate_stage)]
    if args.tune_first:  # see --pipeline-order: the search fits its own centroids, as on a fresh store
        order.insert(4, order.pop(6))
    return order


def run_size(n: int, args, model: Path, log) -> dict:
    """Corpus, fresh store and every stage at ``n`` utterances; the figures as a dict."""
    import ray

    from ray_ser import console

    work = Path(args.work) / f"n{n}"
    data_root, store, manifest = work / "data", work / "store", work / "manifest.parquet"
    corpus_file = work / "corpus.json"
    for stale in (store, work / "runs", manifest):  # a fresh store per size; the corpus is kept when complete
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    if corpus_file.exists() and json.loads(corpus_file.read_text()).get("seed") == args.seed:
        corpus = json.loads(corpus_file.read_text())
        print(f"[n={n}] corpus reused: {data_root}", flush=True)
    else:
        shutil.rmtree(data_root, ignore_errors=True)
        t0 = time.perf_counter()
        corpus = scale_corpus.write_corpus(data_root, n, seed=args.seed, processes=args.processes)
        corpus.update(seconds=time.perf_counter() - t0, seed=args.seed)
        work.mkdir(parents=True, exist_ok=True)
        corpus_file.write_text(json.dumps(corpus))
    print(f"[n={n}] corpus: {corpus['n']} turns, {corpus['speakers']} identified speakers, "
          f"{corpus['seconds_of_audio'] / 3600:.2f} h of audio, {corpus['bytes']:,} bytes written "
          f"({corpus['bytes'] / n / 1e3:.1f} kB per utterance, {corpus['audio_bytes'] / corpus['seconds_of_audio'] / 1e3:.1f}"
          f" kB per audio-second), generated in {corpus.get('seconds', 0):.1f} s", flush=True)

    conf = write_config(work / "scale.yaml", work / "runs", manifest, store, model, args)
    result = {"n": n, "corpus": corpus, "stages": {}}
    state: dict = {}
    os.environ.pop("RAY_ADDRESS", None)  # always a fresh local instance, never a cluster left on the machine
    init = {"address": "local", "num_cpus": args.num_cpus, "include_dashboard": False, "log_to_driver": False}
    if args.object_store_mb:
        init["object_store_memory"] = int(args.object_store_mb * MB)
    ray.init(**init)
    try:
        for name, fn in stages(conf, work, data_root, manifest, store, args, state):
            if args.stages and name not in args.stages:
                continue
            print(f"[n={n}] {name} ...", flush=True)
            err = None
            with Monitor(args.sample_s) as mon, contextlib.redirect_stdout(log):
                t0 = time.perf_counter()
                try:
                    fn()
                except BaseException as e:
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    err = f"{type(e).__name__}: {e}"
                    traceback.print_exc(file=log)
                wall = time.perf_counter() - t0
            row = {"wall_s": wall, "driver_peak_mb": mon.driver_peak / MB, "worker_peak_mb": mon.worker_max / MB,
                   "worker_peak_process": mon.worker_max_name, "workers_sum_peak_mb": mon.workers_sum / MB,
                   "ray_workers": mon.max_workers, "store_bytes": dir_bytes(store) if store.exists() else 0}
            if err:
                row["error"] = err
            row.update(driver_growth_mb=(mon.driver_peak - mon.driver_start) / MB,
                       worker_growth_mb=mon.worker_growth / MB)
            if name == "train" and "train_parts" in state:
                row.update(state["train_parts"])
            if name == "tune" and "trials" in state:
                row["trials"] = state["trials"]
            result["stages"][name] = row
            print(f"[n={n}] {name}: {wall:.1f} s, driver {row['driver_peak_mb']:.0f} MB, largest worker "
                  f"{row['worker_peak_mb']:.0f} MB ({row['worker_peak_process'] or '-'}), store "
                  f"{row['store_bytes'] / MB:.1f} MB" + (f"  FAILED: {err}" if err else ""), flush=True)
            if err:
                break
    finally:
        console.reset()  # the jobs point fd 2 at their log; give it back
        ray.shutdown()
    result["store_bytes"] = dir_bytes(store) if store.exists() else 0
    result["store_bytes_per_audio_second"] = result["store_bytes"] / corpus["seconds_of_audio"]
    return result


def _child(n: int, args, model: str, log_path: str, out: str) -> None:
    """One size in a process of its own (see :func:`one_size`); its figures go to ``out`` as JSON."""
    with open(log_path, "a", buffering=1) as log:
        result = run_size(n, args, Path(model), log)
    Path(out).write_text(json.dumps(result))


def one_size(n: int, args, model: Path, log_path: Path) -> dict:
    """:func:`run_size` in a fresh (spawned) process, so each size's driver starts from the same memory and Ray
    instance (``--in-process``: in this one, the driver's memory carried over from the sizes before)."""
    if args.in_process:
        with open(log_path, "a", buffering=1) as log:
            return run_size(n, args, model, log)
    import multiprocessing

    out = Path(args.work) / f"result_n{n}.json"
    out.unlink(missing_ok=True)
    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(n, args, str(model), str(log_path),
                                                                             str(out)))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or not out.exists():
        raise RuntimeError(f"the process of size {n} exited with {proc.exitcode} (see {log_path})")
    return json.loads(out.read_text())


# ---- the report ---------------------------------------------------------------------------------------------
def exponent(t1: float, t2: float, n1: int, n2: int) -> float:
    if not (t1 > 0 and t2 > 0) or n1 == n2:
        return float("nan")
    return math.log(t2 / t1) / math.log(n2 / n1)


def report(results: list[dict]) -> dict:
    """Print the table and the contract lines; returns the exponents {stage: [e between consecutive sizes]}."""
    sizes = [r["n"] for r in results]
    exps: dict[str, list[float]] = {}
    print()
    head = f"{'stage':<13} {'n':>7} {'wall_s':>9} {'s/1k utt':>9} {'driver_mb':>10} {'(+growth)':>9} " \
           f"{'worker_mb':>10} {'(+growth)':>9} {'workers_sum_mb':>14} {'store_mb':>9} {'exp':>6}"
    print(head)
    print("-" * len(head))
    for stage in STAGES:
        prev = None
        exps[stage] = []
        for r in results:
            row = r["stages"].get(stage)
            if row is None:
                continue
            e = exponent(prev[1], row["wall_s"], prev[0], r["n"]) if prev else float("nan")
            if prev:
                exps[stage].append(e)
            flag = " FAILED" if "error" in row else ""
            print(f"{stage:<13} {r['n']:>7} {row['wall_s']:>9.1f} {1000 * row['wall_s'] / r['n']:>9.2f} "
                  f"{row['driver_peak_mb']:>10.0f} {row['driver_growth_mb']:>+9.0f} {row['worker_peak_mb']:>10.0f} "
                  f"{row['worker_growth_mb']:>+9.0f} {row['workers_sum_peak_mb']:>14.0f} "
                  f"{row['store_bytes'] / MB:>9.1f} {e:>6.2f}{flag}")
            prev = (r["n"], row["wall_s"])
    print()
    for r in results:
        total = sum(s["wall_s"] for s in r["stages"].values())
        print(f"n={r['n']}: stages {total:.0f} s; store {r['store_bytes'] / MB:.1f} MB, "
              f"{r['store_bytes_per_audio_second'] / 1e3:.1f} kB per audio-second; corpus "
              f"{r['corpus']['bytes'] / r['n'] / 1e3:.1f} kB per utterance")
    print()
    last = results[-1] if results else None
    for stage in STAGES:
        e = exps[stage][-1] if exps.get(stage) and len(sizes) > 1 and \
            all(stage in r["stages"] for r in results[-2:]) else float("nan")
        row = last["stages"].get(stage, {}) if last else {}
        print(f"scale {stage} exponent {e:.2f} driver_peak_mb {row.get('driver_peak_mb', float('nan')):.0f} "
              f"worker_peak_mb {row.get('worker_peak_mb', float('nan')):.0f}")
    return exps


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", default="300,1000", help="comma-separated corpus sizes, run in increasing order")
    p.add_argument("--work", default="/tmp/ray_ser_scale",
                   help="folder of the corpora, stores and runs (one n<N>/ each; a complete corpus is reused)")
    p.add_argument("--out", default=None, help="JSON of every figure (default: <work>/scale_results.json)")
    p.add_argument("--log", default=None, help="the jobs' printed output (default: <work>/scale.log)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated corpus")
    p.add_argument("--processes", type=int, default=None, help="corpus generation processes (default: up to 2)")
    p.add_argument("--model-layers", type=int, default=4, help="transformer layers of the tiny HuBERT")
    p.add_argument("--model-width", type=int, default=32, help="hidden size of the tiny HuBERT")
    p.add_argument("--conditions", default="clean", help="extraction conditions, comma-separated (e.g. clean,5dB)")
    p.add_argument("--k", default="50,100,150", help="cluster counts of the clusters stage")
    p.add_argument("--linear-epochs", type=int, default=3, help="epochs of the linear model (the TC-GRU runs one)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size")
    p.add_argument("--n-boot", type=int, default=500, help="speaker-bootstrap resamples of the evaluation tables")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use (default: the machine's)")
    p.add_argument("--object-store-mb", type=float, default=None, help="Ray object store size (default: Ray's)")
    p.add_argument("--sample-s", type=float, default=0.5, help="seconds between memory samples of the workers")
    p.add_argument("--stages", default=None, help="only these stages, comma-separated (they need the ones before)")
    p.add_argument("--clean", action="store_true", help="delete each size's folder after it ran")
    p.add_argument("--in-process", action="store_true",
                   help="run every size in this process (default: each in a fresh process of its own)")
    p.add_argument("--pipeline-order", dest="tune_first", action="store_false",
                   help="run the tune stage after train, as listed, instead of before clusters (default): run "
                        "first, the trials that draw a cluster head (n_clusters > 0) fit the centroids of the "
                        "search's folds themselves, as a search on a fresh store does, and that cost is timed")
    args = p.parse_args(argv)
    args.conditions = [c for c in args.conditions.split(",") if c]
    args.k = [int(k) for k in args.k.split(",") if k]
    args.stages = set(args.stages.split(",")) if args.stages else None
    sizes = sorted({int(n) for n in args.utterances.split(",") if n.strip()})

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    args.out = args.out or str(work / "scale_results.json")
    model = save_tiny_hubert(work / f"tiny-hubert-{args.model_layers}x{args.model_width}", args.model_layers,
                             args.model_width)
    results = []
    log_path = Path(args.log) if args.log else work / "scale.log"
    print(f"sizes {sizes}; work folder {work}; the jobs' output: {log_path}", flush=True)
    for n in sizes:
        t0 = time.perf_counter()
        try:
            results.append(one_size(n, args, model, log_path))
        except RuntimeError as e:
            print(f"[n={n}] {e}; stopping here", flush=True)
            break
        results[-1]["total_s"] = time.perf_counter() - t0
        print(f"[n={n}] done in {results[-1]['total_s']:.0f} s", flush=True)
        Path(args.out).write_text(json.dumps({"args": {k: v if not isinstance(v, set) else sorted(v)
                                                      for k, v in vars(args).items()},
                                              "results": results}, indent=2))
        if args.clean:
            shutil.rmtree(work / f"n{n}", ignore_errors=True)
    exps = report(results)
    doc = {"args": {k: v if not isinstance(v, set) else sorted(v) for k, v in vars(args).items()},
           "results": results, "exponents": exps}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return doc


if __name__ == "__main__":
    main()
