"""Export a trained run as a self-contained model bundle: config.json (the foundation model's id and weights hash,
layers, pooling, mask, scaler statistics, label set and categories, dimensions, temperature), model.safetensors (the
head's weights), README.md (a Hugging Face model card generated from the run's evaluation) and metrics.parquet.
Loading a bundle reads JSON and safetensors only: nothing is unpickled.

    python jobs/export.py runs/emodb --out bundles/emodb                 # the final model, else the fold ensemble
    python jobs/export.py runs/emodb --out bundles/emodb-folds --model fold-ensemble

The card's figures come from --eval (default RUN/eval, what `ray-ser evaluate --run RUN` writes). See
docs/jobs.md#predict-and-export.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

from ray_ser import console
from ray_ser.config import add_config_args, from_args
from ray_ser.jobs.stage import StageResult
from ray_ser.serve.config import ExportConfig
from ray_ser.store import Store


def parser() -> argparse.ArgumentParser:
    p = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("run", metavar="RUN", help="training run folder (jobs/train.py --out)")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--model", choices=("auto", "final", "fold-ensemble"), default="auto",
                   help="the run's final model, or every outer fold's model averaged (auto: final when it exists)")
    p.add_argument("--eval", help="evaluation folder the model card reads (default: RUN/eval)")
    p.add_argument("--store", help="the store the run was trained on (default: the one its checkpoints record)")
    return p


@dataclass
class ExportResult(StageResult):
    """An exported bundle: its folder, kind (final or fold-ensemble), members and whether its card has figures."""

    bundle: str = ""
    kind: str = ""
    members: int = 0
    evaluated: bool = False


def main(argv: list[str] | None = None) -> ExportResult:
    """The argparse layer: the export's options from the flags, the run's store when named, then :func:`run`."""
    _, args = from_args(parser(), argv, {})
    cfg = ExportConfig(run=args.run, out=args.out, model=args.model, eval=args.eval)
    return run(cfg, Store(args.store) if args.store else None)


def run(cfg: ExportConfig, store: Store | None = None) -> ExportResult:
    """Write ``cfg.run``'s model as a bundle in ``cfg.out`` (``store``: the run's store, when not the one its
    checkpoints record: it describes the foundation model)."""
    from ray_ser.serve.bundle import from_run, write_bundle
    from ray_ser.serve.card import model_card, read_evaluation

    out = Path(cfg.out)
    eval_dir = Path(cfg.eval) if cfg.eval else Path(cfg.run) / "eval"
    with console.stage(f"export {cfg.run}"):
        bundle = from_run(cfg.run, cfg.model, store.uri if store is not None else None)
        write_bundle(bundle, out)
        metrics, pred = read_evaluation(eval_dir if eval_dir.is_dir() else None)
        (out / "README.md").write_text(model_card(bundle, metrics, pred), encoding="utf-8")
        if metrics is not None:
            shutil.copyfile(eval_dir / "metrics.parquet", out / "metrics.parquet")
    console.say(f"export: {bundle.model_id} ({bundle.kind}, {len(bundle.members)} member(s)) -> {out}"
                + ("" if metrics is not None else f"; no evaluation at {eval_dir}: the card has no figures"))
    return ExportResult(bundle=str(out), kind=bundle.kind, members=len(bundle.members), evaluated=metrics is not None)
