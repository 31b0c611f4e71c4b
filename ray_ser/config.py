"""The experiment config: one typed file (YAML) that every stage, job and ``ray-ser`` sub-command reads.

Sections follow the flow (``data`` -> ``store`` -> ``extract`` -> ``analysis`` -> ``train`` / ``tune`` ->
``evaluate``); each is declared in its stage's package (``ray_ser/<stage>/config.py``) and composed here into
:class:`ExperimentConfig`; their keys are the pydantic field names. A stage's command-line flags override the file
(:func:`from_args`), and the resolved config is written next to what the stage produces, so a run can be
repeated from its own folder. Bad input (an unknown key, a wrong type, an impossible value) is refused with the
key's dotted path, the value and the file, before anything runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

# Each section is declared in the package of the stage it configures; all are re-exported here, where users find
# them (``from ray_ser.config import TrainConfig``).
from ray_ser.analysis.config import AnalysisConfig, ClusterConfig, PruneConfig  # noqa: F401
from ray_ser.corpora.config import DataConfig
from ray_ser.errors import ConfigError, InputError  # noqa: F401 - re-exported: ray_ser.config is where users find them
from ray_ser.evaluate.config import CrossCorpusConfig, EvaluateConfig
from ray_ser.extract.config import ExtractConfig
from ray_ser.section import Section
from ray_ser.store.config import StoreConfig
from ray_ser.train.config import TrainConfig
from ray_ser.train.tune_config import TuneConfig

RESOLVED_FILE = "config.yaml"
"""Name of the resolved config written into a run folder (and read back by ``--config <run>/config.yaml``)."""


class ExperimentConfig(Section):
    """One experiment, from corpora to tables."""

    name: str = "experiment"
    """The experiment's name: its run folder is <runs>/<name>."""
    runs: str = "runs"
    """Folder of run folders (checkpoints, epochs, TensorBoard, evaluation, logs)."""
    seeds: int = Field(1, ge=1)
    """Train and score this many seeds of the training config (train.seed, train.seed + 1, ...), each into
    <run folder>/seed_<s>; evaluation reports the spread of the pooled UAR over the seeds beside the speaker interval."""
    data: DataConfig = DataConfig()
    """Corpora."""
    store: StoreConfig = StoreConfig()
    """The store."""
    extract: ExtractConfig = ExtractConfig()
    """Extraction."""
    analysis: AnalysisConfig = AnalysisConfig()
    """Analyses."""
    train: TrainConfig = TrainConfig()
    """Training (store, model and corpora default to the store, extract and data sections)."""
    tune: TuneConfig = TuneConfig()
    """Search."""
    evaluate: EvaluateConfig = EvaluateConfig()
    """Evaluation."""
    crosscorpus: CrossCorpusConfig = CrossCorpusConfig()
    """The cross-corpus matrix."""

    @field_validator("store", mode="before")
    @classmethod
    def _store_uri_alone(cls, value: Any) -> Any:
        """``store: s3://bucket/x`` is short for ``store: {uri: s3://bucket/x}``."""
        return {"uri": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _train_follows_the_experiment(self) -> "ExperimentConfig":
        """train.store/model/corpora take the experiment's store, model key and corpora unless set."""
        given = self.train.model_fields_set
        if "store" not in given:
            self.train.__dict__["store"] = self.store.uri
        if "model" not in given:
            self.train.__dict__["model"] = self.extract.key
        if "corpora" not in given:
            self.train.__dict__["corpora"] = self.data.corpus_names(self.store)
        return self

    @property
    def run_dir(self):
        """This experiment's run folder (a path, or a path-like object on the object store for a URI)."""
        from ray_ser.storage import join, run_path

        return run_path(join(self.runs, self.name))

    def to_yaml(self, secrets: bool = False) -> str:
        """The resolved config, every default included, as YAML; secret values masked unless ``secrets``."""
        data = self.model_dump(mode="json") if secrets else self.public()
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None)

    def public(self) -> dict[str, Any]:
        """The resolved config as plain data with every secret value masked (:mod:`ray_ser.redaction`): what any
        record of a run (saved config, the store's runs table, reports) holds."""
        from ray_ser.redaction import redact

        return redact(self.model_dump(mode="json"))

    def save(self, folder) -> Path:
        """Write the resolved config as ``<folder>/config.yaml`` (what a stage ran with; secrets masked)."""
        from ray_ser.storage import run_path

        path = run_path(folder) / RESOLVED_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path


# ---- reading -------------------------------------------------------------------------------------------------
def _describe(error: Mapping[str, Any]) -> str:
    path = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown key"
    return f"{path}: {error['msg']} (got {error['input']!r})"


def validate(data: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    """An :class:`ExperimentConfig` from plain data, or :class:`ConfigError` listing every bad key of ``source``."""
    try:
        return ExperimentConfig.model_validate(dict(data))
    except ValidationError as e:
        lines = [_describe(err) for err in e.errors()]
        raise ConfigError(f"{source}: " + ("; ".join(lines) if len(lines) < 2 else "\n  " + "\n  ".join(lines))) from None


def read_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) file; an empty file is an empty mapping."""
    from ray_ser.storage import run_path

    path = run_path(path)  # a run folder's config.yaml may be on the object store
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, got {type(data).__name__}")
    return data


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c`` in nested mappings, creating sections on the way."""
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[leaf] = value


def get_path(cfg: BaseModel, path: str) -> Any:
    value: Any = cfg
    for key in path.split("."):
        value = getattr(value, key)
    return value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``section.key=value`` (value read as YAML, so 3, 0.5, true, [a, b] and null work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def is_bare_train(path: str | Path | None, data: Mapping[str, Any]) -> bool:
    """Whether ``data`` is a bare TrainConfig, such as a Tune search's ``best_config.json``: only ever a ``.json``
    file whose keys are all train keys (a YAML experiment config whose only key is ``store`` stays a store)."""
    return (path is not None and str(path).lower().endswith(".json") and bool(data)
            and all(k in TrainConfig.model_fields and not isinstance(v, dict) for k, v in data.items()))


def load(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """The experiment config in ``path`` (None: every default) with ``overrides`` (dotted path -> value) on top."""
    data = read_file(path) if path else {}
    if is_bare_train(path, data):
        data = {"train": data}
    for key, value in (overrides or {}).items():
        set_path(data, key, value)
    source = str(path) if path else "defaults"
    if overrides:
        source += " with " + ", ".join(sorted(overrides))
    return validate(data, source)


# ---- flags over the file -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bind:
    """A command-line flag that sets one config key: ``to_config`` turns the flag's value into the key's,
    ``to_arg`` the resolved key's back into the flag's (``read``: read another key or property instead)."""

    path: str
    to_config: Callable[[Any], Any] | None = None
    to_arg: Callable[[Any], Any] | None = None
    read: str | None = None


def negated(path: str) -> Bind:
    """A ``--no-x`` flag bound to the boolean key ``x``."""
    return Bind(path, lambda off: not off, lambda on: not on)


def add_config_args(parser: argparse.ArgumentParser,
                    config_help: str = "experiment config (YAML); the other flags override it") -> argparse.ArgumentParser:
    """The flags every stage shares: ``--config FILE`` and repeatable ``--set KEY=VALUE``."""
    parser.add_argument("--config", default=None, metavar="FILE", help=config_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.epochs=5 (repeatable)")
    return parser


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The dests the user gave on the command line (not left at their defaults)."""
    saved = [(a, a.default) for a in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in saved:
            action.default = default


def from_args(parser: argparse.ArgumentParser, argv: list[str] | None,
              binds: Mapping[str, str | Bind]) -> tuple[ExperimentConfig, argparse.Namespace]:
    """Parse a stage's flags over its config file: a flag the user gave sets its bound key, then every bound
    flag's value in the namespace is the resolved key's (so the stage reads one truth either way)."""
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    binds = {dest: Bind(b) if isinstance(b, str) else b for dest, b in binds.items()}
    overrides: dict[str, Any] = dict(parse_assignment(s) for s in args.set)
    for dest, bind in binds.items():
        if dest in given:
            value = getattr(args, dest)
            overrides[bind.path] = bind.to_config(value) if bind.to_config else value
    cfg = load(args.config, overrides)
    use_storage(cfg.store, cfg.data)
    return cfg, bound_args(cfg, binds, args)


def bound_args(cfg: ExperimentConfig, binds: Mapping[str, str | Bind], args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with every bound flag's value set to the resolved config key's (a stage's flags read from a typed
    config without parsing a command line: ``parser.parse_args([])`` as ``args``)."""
    for dest, bind in binds.items():
        bind = Bind(bind) if isinstance(bind, str) else bind
        value = get_path(cfg, bind.read or bind.path)
        setattr(args, dest, bind.to_arg(value) if bind.to_arg else value)
    return args


def use_storage(store: StoreConfig, data: DataConfig | None = None) -> dict[str, str]:
    """Register the config's storage options (over the environment's) for its store's scheme in this process, so
    every URI of that scheme (the store, run folders) opens with them, and ``data.options`` for the inputs' URIs
    (:mod:`ray_ser.inputs`); returns the store's (empty for a local store)."""
    from ray_ser import inputs
    from ray_ser.storage import register

    if data is not None:
        inputs.register(data.options or None)
    return register(store.uri, store.options or None)


def log_folder(cfg: ExperimentConfig, args: argparse.Namespace) -> Path | None:
    """Where a stage run from a config file logs: the experiment's run folder (None without ``--config``, so a
    stage run by hand with flags alone leaves no folder behind)."""
    return cfg.run_dir if getattr(args, "config", None) else None


def csv_list(text: str) -> list[str]:
    """A comma-separated flag value as a list (empty items dropped)."""
    return [item.strip() for item in str(text).split(",") if item.strip()]


def int_list(text: str) -> list[int]:
    """A comma-separated flag value of integers."""
    try:
        return [int(item) for item in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> list[float]:
    """A comma-separated flag value of numbers."""
    try:
        return [float(item) for item in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
