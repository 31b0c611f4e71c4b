"""A fold's best checkpoint: ``DIR/fold_<f>/best/{model.pt,config.json}`` (the final model's: ``DIR/final/best``),
written after training and loaded by evaluation (everything needed to predict, without the training run)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ray_ser.redaction import redact
from ray_ser.storage import run_path
from ray_ser.train.config import TrainConfig
from ray_ser.train.loop import build_fold_model
from ray_ser.corpora.folds import ALL_SPEAKERS
from ray_ser.train import state_io
from ray_ser.train.plan import FoldPlan, plan_mask

if TYPE_CHECKING:
    from ray_ser.store import Store

log = logging.getLogger(__name__)


BEST_DIR = "best"
FINAL = ALL_SPEAKERS
"""The fold number of the final model: every speaker of the training corpora trains it (no test speakers)."""
FINAL_DIR = "final"


def fold_dir(out_dir: str | os.PathLike, fold: int) -> Path:
    """``DIR/fold_<f>``, or ``DIR/final`` for the final model (fold -1); ``DIR`` a path or an object-store URI."""
    return run_path(out_dir) / (FINAL_DIR if fold == FINAL else f"fold_{fold}")


# ---- checkpoints evaluation reads -------------------------------------------------------------------
def write_best(out_dir: Path, cfg: TrainConfig, plan: FoldPlan, state: dict) -> Path:
    """``DIR/fold_<f>/best/{model.pt,config.json}``: the best epoch's weights and everything needed to rebuild
    the model and its input (layer, mask, categories) without other inputs. Written atomically: a folder renamed
    into place on disk; on an object store ``config.json``, which readers require, is the last object written."""
    final = fold_dir(out_dir, plan.fold) / BEST_DIR
    info = {"train": redact(cfg.model_dump()), "plan": plan.to_dict(), "best_epoch": state["best_epoch"],
            "best_val_score": state["best_score"], "epochs_run": state["epoch"],
            "temperature": state.get("best_temperature"), "layer_weights": layer_weights(plan, state["best_model"])}
    if state.get("phase") == "refit":
        info.update(epochs_run=state["selected"]["epoch"], refit_epochs=state["refit_epochs"])
    if not isinstance(final, Path):  # an object store: no rename, so the marker goes last (and first away)
        (final / "config.json").unlink(missing_ok=True)
        with (final / "model.pt").open("wb") as fh:
            state_io.save(state["best_model"], fh)
        (final / "config.json").write_text(json.dumps(info, indent=1))
        return final
    tmp = final.with_name(BEST_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state_io.save(state["best_model"], tmp / "model.pt")
    (tmp / "config.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


LAYER_WEIGHTS = "layer_weights.parquet"
"""``DIR/layer_weights.parquet``: each fold's learned layer-mix weights (fold, layer, weight)."""


def layer_weights(plan: FoldPlan, state: dict) -> list[dict] | None:
    """[{layer, weight}] of a fold model's learned layer mix (its softmax, in the plan's layer order, which is the
    order of the concatenated input), from the model's state dict; None when the model has no mix."""
    from ray_ser.train.nn.mix import mix_weights

    weights = mix_weights(state)
    if weights is None:
        return None
    layers = plan.read_layers
    if len(layers) != len(weights):
        raise ValueError(f"fold {plan.fold}: the layer mix has {len(weights)} weights for layers {layers}")
    return [{"layer": int(k), "weight": float(w)} for k, w in zip(layers, weights)]


def write_layer_weights(out_dir: str | os.PathLike, summaries: list[dict]) -> Path | None:
    """``DIR/layer_weights.parquet`` (fold, layer, weight) from the folds' summaries (their ``layer_weights``);
    nothing when no fold learned a mix."""
    import polars as pl

    from ray_ser.storage import write_parquet

    rows = [{"fold": s["fold"], **w} for s in summaries for w in (s.get("layer_weights") or [])]
    if not rows:
        return None
    path = run_path(out_dir) / LAYER_WEIGHTS
    write_parquet(pl.DataFrame(rows, schema={"fold": pl.Int32, "layer": pl.Int32, "weight": pl.Float64}), path)
    return path


@dataclass
class FoldModel:
    """A fold's best model, ready to predict: the module (eval mode), its config and plan."""

    module: Any
    cfg: TrainConfig
    plan: FoldPlan
    path: Path
    temperature: float | None = None
    """Temperature scaling of the category probabilities, fitted on the inner validation speakers (None: none,
    a model without categories or a checkpoint from before it was fitted)."""

    def mask(self, store: Store) -> np.ndarray | None:
        """The plan's kept dimensions over the input layers of ``store`` (the one it predicts on)."""
        return plan_mask(self.cfg, store, self.plan)


def load_fold_model(path: str | os.PathLike, store: Store | None = None) -> FoldModel:
    """Rebuild a fold's best model from ``DIR/fold_<f>/best`` (``store``, the caller's open Store, overrides the
    recorded store URI)."""
    path = run_path(path)
    info = json.loads((path / "config.json").read_text())
    cfg = TrainConfig(**info["train"])
    if store is not None:
        cfg.store = store.uri  # the config holds the URI; the caller keeps its open Store
    plan = FoldPlan(**info["plan"])
    module = build_fold_model(plan)
    with (path / "model.pt").open("rb") as fh:
        module.load_state_dict(state_io.load(fh, name=str(path / "model.pt")))
    return FoldModel(module.eval(), cfg, plan, path, info.get("temperature"))


def final_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """``DIR/final/best`` of a run trained with ``final``, when it is complete."""
    d = run_path(run_dir) / FINAL_DIR / BEST_DIR
    return d if (d / "config.json").exists() and (d / "model.pt").exists() else None


def fold_checkpoints(run_dir: str | os.PathLike) -> dict[int, Path]:
    """{fold: best checkpoint folder} of a training run folder's outer folds (the final model is not one)."""
    out = {}
    for d in sorted(run_path(run_dir).glob(f"fold_*/{BEST_DIR}"), key=str):
        if (d / "config.json").exists() and (d / "model.pt").exists():
            out[int(d.parent.name.split("_", 1)[1])] = d
    return out
