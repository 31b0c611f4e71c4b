"""Model bundles: a trained head with everything its input needs (the foundation model's id and weights hash, the
layers, mask and scaler, categories, dimensions, temperature) as ``config.json`` + ``model.safetensors``, so a model
leaves the store it was trained on. Reading one uses JSON and safetensors only: nothing is unpickled.

A bundle holds one member (a run's final model) or several (the fold ensemble: each outer fold's model, their
temperature-scaled probabilities averaged). Its in-memory form is built the same way from a checkpoint folder, a
run folder or an exported folder, so ``load_model`` and ``export`` share one description."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = "ray_ser-bundle"
VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PLAN_PRIVATE = ("inner", "val", "test", "cv_val")
"""Plan fields that list training or test utterance ids: never written into a bundle (they name a store's rows)."""


@dataclass
class Member:
    """One head of a bundle: its name (``final``, ``fold_<f>``), plan (layers, mask, scalers, model config),
    temperature and weights (a state dict of tensors)."""

    name: str
    plan: dict
    temperature: float | None
    state: dict
    train: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return list(self.plan.get("layers") or [self.plan["layer"]])

    def module(self):
        """The head, eval mode, its weights loaded (a global scaler is part of it, as in training)."""
        from ray_ser.train.loop import build_fold_model
        from ray_ser.train.plan import FoldPlan

        plan = FoldPlan(**{**{k: [] for k in ("inner", "val", "test")}, **self.plan})
        module = build_fold_model(plan)
        module.load_state_dict(self.state)
        return module.eval()


@dataclass
class Bundle:
    """What a bundle describes: the foundation model (``fm``: model, weights_hash, sample_rate, whisper_mode, ...),
    the label categories and dimensions, and its members."""

    model_id: str
    kind: str
    fm: dict
    categories: list[str]
    dimensions: list[str]
    members: list[Member]
    label_set: list[str] | None = None
    source: str = ""

    @property
    def layers(self) -> list[int]:
        """Every layer some member reads, sorted."""
        return sorted({layer for m in self.members for layer in m.layers})

    def config(self) -> dict:
        """``config.json``: the summary fields a reader looks for first, then each member in full."""
        one = self.members[0]
        return {
            "format": FORMAT, "version": VERSION, "model_id": self.model_id, "kind": self.kind,
            "foundation_model": self.fm, "layers": self.layers, "pooling": one.train.get("pooling"),
            "arch": one.train.get("arch"), "scaler": one.train.get("scaler", "global"),
            "mask": [m.plan.get("keep") is not None for m in self.members],
            "label_set": self.label_set, "categories": self.categories, "dimensions": self.dimensions,
            "temperature": [m.temperature for m in self.members],
            "members": [{"name": m.name, "temperature": m.temperature, "plan": m.plan, "train": m.train}
                        for m in self.members],
        }


def _member_from_checkpoint(path: Path) -> tuple[Member, dict]:
    """(member, the checkpoint's train config) of ``DIR/fold_<f>/best``; weights read with torch's weights_only."""
    from ray_ser.redaction import redact
    from ray_ser.train import state_io

    info = json.loads((path / "config.json").read_text())
    with (path / "model.pt").open("rb") as fh:
        state = state_io.load(fh, name=str(path / "model.pt"))
    plan = {k: v for k, v in info["plan"].items() if k not in PLAN_PRIVATE}
    name = path.parent.name
    train = redact(info["train"])
    return Member(name, plan, info.get("temperature"), state, train), info["train"]


def fm_description(store, model_key: str) -> dict:
    """The foundation model a store's ``model_key`` rows were extracted with: model spec, weights hash, sample rate,
    layers, width, Whisper mode, precision and the longest audio extraction accepted (``max_seconds``)."""
    from ray_ser.store.core import as_store

    meta = as_store(store).extraction_meta(model_key)
    if not meta:
        raise FileNotFoundError(f"store {store}: no extraction metadata for model {model_key!r}")
    opts = meta.get("options") or {}
    return {"model": meta.get("model", opts.get("model")), "key": model_key, "weights_hash": meta.get("weights_hash"),
            "sample_rate": int(meta.get("sample_rate", 16000)), "num_layers": meta.get("num_layers"),
            "hidden_size": meta.get("hidden_size"), "whisper_mode": opts.get("whisper_mode", "padded"),
            "dtype": meta.get("dtype", opts.get("dtype", "float32")), "max_seconds": opts.get("max_seconds")}


def checkpoints_of(path: str | os.PathLike, model: str = "auto") -> tuple[str, list[Path]]:
    """(kind, checkpoint folders) a path names: a checkpoint folder itself (``single``); a run folder's final model
    (``final``) or every outer fold's (``fold-ensemble``); ``auto`` takes the final model when the run has one."""
    from ray_ser.train.checkpoints import final_checkpoint, fold_checkpoints

    path = Path(path)
    if (path / "model.pt").exists() and (path / CONFIG).exists():
        return "single", [path]
    if (path / "best" / "model.pt").exists():
        return "single", [path / "best"]
    final = final_checkpoint(path)
    folds = fold_checkpoints(path)
    if model in ("final", "auto") and final is not None:
        return "final", [final]
    if model == "final":
        raise FileNotFoundError(f"{path}: no final model (final/best): train it with jobs/train.py --final, or "
                                "export the fold ensemble (--model fold-ensemble)")
    if not folds:
        raise FileNotFoundError(f"{path}: not a bundle, a checkpoint folder or a run folder with fold_*/best")
    return "fold-ensemble", [folds[f] for f in sorted(folds)]


def from_run(path: str | os.PathLike, model: str = "auto", store: str | None = None) -> Bundle:
    """The bundle of a run folder or checkpoint folder; the foundation model is described from the store the run
    was trained on (``store`` overrides the recorded one)."""
    kind, paths = checkpoints_of(path, model)
    members, trains = zip(*(_member_from_checkpoint(p) for p in paths))
    first = trains[0]
    cats = members[0].plan["categories"]
    for m in members[1:]:
        if m.plan["categories"] != cats:
            raise ValueError(f"{path}: member {m.name} has categories {m.plan['categories']}, not {cats}")
    from ray_ser.corpora.manifest import DIMENSIONS

    dims = list(DIMENSIONS) if members[0].plan.get("has_dims") else []
    run = Path(path).resolve()
    run_name = run.parent.parent.name if kind == "single" else run.name
    model_id = f"{run_name}/{members[0].name if len(members) == 1 else kind}"
    return Bundle(model_id, "final" if kind == "single" and members[0].name == "final" else kind,
                  fm_description(store or first["store"], first["model"]), list(cats), dims, list(members),
                  first.get("label_set"), str(path))


def is_bundle(path: str | os.PathLike) -> bool:
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        return False
    try:
        return json.loads((path / CONFIG).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def read_bundle(path: str | os.PathLike) -> Bundle:
    """An exported bundle folder: ``config.json`` and ``model.safetensors`` (JSON and safetensors only)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = json.loads((path / CONFIG).read_text())
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG}: not a ray_ser bundle (format {cfg.get('format')!r})")
    if int(cfg.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: bundle version {cfg['version']} is newer than this ray_ser reads ({VERSION})")
    tensors = load_file(str(path / WEIGHTS))
    members = []
    for i, m in enumerate(cfg["members"]):
        prefix = f"{i}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        members.append(Member(m["name"], m["plan"], m.get("temperature"), state, m.get("train") or {}))
    return Bundle(cfg["model_id"], cfg["kind"], cfg["foundation_model"], cfg["categories"], cfg["dimensions"],
                  members, cfg.get("label_set"), str(path))


def write_bundle(bundle: Bundle, out: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (member i's tensors under ``i.``) into ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"{i}.{k}": v.detach().contiguous().clone() for i, m in enumerate(bundle.members)
               for k, v in m.state.items()}
    save_file(tensors, str(out / WEIGHTS), metadata={"format": FORMAT, "model_id": bundle.model_id})
    (out / CONFIG).write_text(json.dumps(bundle.config(), indent=1))
    return out


def load_bundle(path: str | os.PathLike, model: str = "auto", store: str | None = None) -> Bundle:
    """An exported bundle, or the in-memory bundle of a run or checkpoint folder."""
    return read_bundle(path) if is_bundle(path) else from_run(path, model, store)
