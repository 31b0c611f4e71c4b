"""Score new audio with a trained model: files, folders (recursive; non-audio files skipped and counted), CSVs with a
`path` column, ray_ser manifests (Parquet); no store needed. One row per file (with --window: a row per window and
one per file, the windows' mean); a file that cannot be read is a row of errors.parquet beside the output (path,
stage, message), the rest is scored and the job exits 0.

    python jobs/predict.py --model bundles/emodb --input new_audio/ --out predictions.parquet
    python jobs/predict.py --model runs/emodb --input calls.csv --out calls.parquet --window 4 --hop 2

--model is an exported bundle (ray-ser export), a run folder (its final model, else the fold ensemble) or a
checkpoint folder. --scaler input standardises a per-corpus-scaled model's input by the input set's own statistics
instead of the training corpora's (as zero-shot evaluation does). --store S caches the foundation model's frames in
a LanceDB store, so a second model or run on the same audio skips the forward. Runs in this process (CPU threads or
the first GPU); see docs/jobs.md#predict-and-export.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from ray_ser import console
from ray_ser.config import add_config_args, from_args
from ray_ser.jobs.stage import StageResult
from ray_ser.serve.config import PredictConfig
from ray_ser.store import Store

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--model", required=True, help="bundle folder, run folder or checkpoint folder")
    p.add_argument("--input", required=True, nargs="+", action="extend",
                   help="audio files, folders (recursive), CSVs with a path column, ray_ser manifests (.parquet), "
                        "object-store URIs of files or manifests")
    p.add_argument("--out", required=True, help="predictions Parquet file (errors.parquet is written beside it)")
    p.add_argument("--window", type=float, help="score windows of S seconds (a row each, plus one row per file)")
    p.add_argument("--hop", type=float, help="seconds between window starts (default: --window)")
    p.add_argument("--store", help="LanceDB store caching the foundation model's frames: audio scored before (by any "
                   "model on the same foundation model) skips the forward")
    p.add_argument("--scaler", choices=("train", "input"), default="train",
                   help="per-corpus-scaled models: the training statistics (default) or the input set's own")
    p.add_argument("--which", choices=("auto", "final", "fold-ensemble"), default="auto",
                   help="a run folder's model: its final model when it has one (auto), or the fold ensemble")
    p.add_argument("--foundation-model", help="where the foundation model's weights are (default: the bundle's id)")
    p.add_argument("--max-seconds", type=float, help="longest file scored without windows (default: the model's)")
    p.add_argument("--batch-size", type=int, default=8, help="files per foundation-model call")
    p.add_argument("--threads", type=int, help="torch CPU threads (each actor's with --engine ray)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: a Ray Data actor pool on the cluster ($RAY_ADDRESS, else a local one)")
    p.add_argument("--actors", type=int, help="--engine ray: model actors (default: one per GPU, else as extraction)")
    p.add_argument("--cpus-per-actor", type=float, help="--engine ray: Ray CPUs each actor holds (fractions allowed)")
    return p


@dataclass
class PredictResult(StageResult):
    """A scoring: the predictions and errors files, files scored, error rows, non-audio files skipped."""

    predictions: str = ""
    errors: str = ""
    scored: int = 0
    n_errors: int = 0
    skipped: int = 0


def main(argv: list[str] | None = None) -> PredictResult:
    """The argparse layer: the options from the flags, the cache store opened when named, then :func:`run`."""
    _, args = from_args(parser(), argv, {})
    cfg = PredictConfig(**{k: getattr(args, k) for k in PredictConfig.model_fields})
    return run(cfg, Store(args.store) if args.store else None)


def run(cfg: PredictConfig, store: Store | None = None) -> PredictResult:
    """Score ``cfg.input`` with ``cfg.model`` into ``cfg.out`` (errors.parquet beside it); ``store`` caches the
    foundation model's frames."""
    from ray_ser.serve.inputs import collect
    from ray_ser.serve.model import load_model

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    errors_path = out.with_name("errors.parquet")
    console.setup(out.parent, native_stderr=False)
    with console.stage(f"predict with {cfg.model}"):
        found = collect(cfg.input)
        if found.skipped:
            log.info("skipped %d non-audio files (e.g. %s)", found.skipped, ", ".join(found.skipped_examples))
        options = {"model": cfg.which, "scaler": cfg.scaler, "foundation_model": cfg.foundation_model,
                   "max_seconds": cfg.max_seconds, "batch_size": cfg.batch_size, "threads": cfg.threads,
                   "store": store.uri if store is not None else None}
        if cfg.engine == "ray":
            from ray_ser.runtime import init_ray
            from ray_ser.serve.pipeline import predict_with_ray

            if cfg.scaler == "input":
                raise SystemExit("ray-ser predict: --scaler input standardises by the whole input set's statistics: "
                                 "use --engine local")
            init_ray()
            pred, errors = predict_with_ray(str(Path(cfg.model).resolve()), found.items, cfg.window, cfg.hop,
                                            options, cfg.batch_size, cfg.actors, cfg.cpus_per_actor)
        else:
            m = load_model(cfg.model, **{**options, "store": store})
            pred = m.predict_many([p for p, _ in found.items], [u for _, u in found.items], window=cfg.window,
                                  hop=cfg.hop)
            errors = m.errors_frame()
            if store is not None:
                log.info("%d of the clips scored read their frames from the store's cache", m.cache_hits)
        write(pred, out)
        write(errors, errors_path)
    files = pred["path"].n_unique() if pred.height else 0
    console.say(f"predict: {files} files scored -> {out}; {errors.height} errors -> {errors_path}; "
                f"{found.skipped} non-audio files skipped")
    return PredictResult(predictions=str(out), errors=str(errors_path), scored=files, n_errors=errors.height,
                         skipped=found.skipped)


def write(df, path: Path) -> None:
    """Atomic Parquet write (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    df.write_parquet(tmp)
    tmp.replace(path)
