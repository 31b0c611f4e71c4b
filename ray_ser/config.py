"""The experiment config: one typed file (YAML) that every stage, job and ``ray-ser`` sub-command reads.

Sections follow the flow (``data`` -> ``store`` -> ``extract`` -> ``analysis`` -> ``train`` / ``tune`` ->
``evaluate``); their keys are the pydantic field names below. A stage's command-line flags override the file
(:func:`from_args`), and the resolved config is written next to what the stage produces, so a run can be
repeated from its own folder. Bad input (an unknown key, a wrong type, an impossible value) is refused with the
key's dotted path, the value and the file, before anything runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ray_ser.analysis.probe import DEFAULT_CS
from ray_ser.analysis.saliency import DEFAULT_BINS
from ray_ser.errors import ConfigError, InputError  # noqa: F401 - re-exported: ray_ser.config is where users find them
from ray_ser.extract.config import ExtractConfig  # noqa: F401 - the extract section, re-exported
from ray_ser.train.config import TrainConfig

RESOLVED_FILE = "config.yaml"
"""Name of the resolved config written into a run folder (and read back by ``--config <run>/config.yaml``)."""



class Section(BaseModel):
    """Base of every section: unknown keys are refused; each field's docstring is its documentation."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class DataConfig(Section):
    """Which corpora, and where their audio is."""

    corpora: list[str] = []
    """Corpus adapters to extract (emodb, ravdess, cremad, iemocap, msppodcast, csv); training reads these corpora's
    utterances (empty: extraction needs --corpus or a manifest, and training reads every labelled utterance)."""
    data_root: str | None = None
    """Folder holding the corpora (null: $RAY_SER_DATA_ROOT, then ../shared/corpora)."""
    manifest: str | None = None
    """A manifest Parquet written by `ray-ser manifest`, extracted instead of building the corpora's manifests."""
    csv: str | None = None
    """With the `csv` corpus: the CSV file of utterances (path, speaker, label, ...); a path or an object-store URI."""
    audio_root: str | None = None
    """With the `csv` corpus: the folder the CSV's paths are relative to (a path or a URI; default: the CSV's folder)."""
    csv_name: str | None = None
    """With the `csv` corpus: the name the store files it under (null: the CSV's `corpus` column, else the file's
    stem); a safe name (letters, digits, _ . -) and no built-in adapter's."""
    limit: int | None = Field(None, ge=1)
    """Extract only this many utterances per corpus, spread over speakers and categories (smoke runs)."""
    options: dict[str, str | int | float | bool] = {}
    """Storage options of the inputs' URIs (csv, audio_root, manifest and audio paths: s3://, gs://, az://) when they
    differ from the store's (another bucket's credentials, another endpoint); the keys of store.options. Empty: the
    store's options for URIs of the store's scheme, else the environment's."""

    def corpus_names(self, store: "StoreConfig | None" = None) -> list[str]:
        """The names the store files these corpora under: the adapter's, or for `csv` the one
        :mod:`ray_ser.corpora.generic_csv` gives it (``csv_name``, else the CSV's `corpus` column, else its stem;
        the stem too when the CSV is not on this machine). A CSV on an object store is read with this section's
        options, else ``store``'s."""
        from csv import Error as CsvError

        from ray_ser.corpora.generic_csv import corpus_name
        from ray_ser.inputs import config_options, stem
        from ray_ser.settings import data_root
        from ray_ser.storage import is_uri

        names = []
        for corpus in self.corpora:
            if corpus != "csv":
                names.append(corpus)
            elif self.csv_name:
                names.append(self.csv_name)
            elif self.csv and is_uri(self.csv):
                options = config_options(self.csv, self.options, store and store.uri, store and store.options)
                try:
                    names.append(corpus_name(data_root(self.data_root), self.csv, options=options))
                except Exception:  # noqa: BLE001 - not readable with these options: building the manifest says why
                    names.append(stem(self.csv))
            elif self.csv:
                try:
                    names.append(corpus_name(data_root(self.data_root), self.csv))
                except (OSError, UnicodeDecodeError, CsvError):  # not readable here
                    names.append(Path(self.csv).stem)
        return names

    @field_validator("csv_name")
    @classmethod
    def _csv_name(cls, name: str | None) -> str | None:
        from ray_ser.corpora.generic_csv import check_name

        return None if name is None else check_name(name, "data.csv_name")

    @field_validator("corpora")
    @classmethod
    def _known(cls, corpora: list[str]) -> list[str]:
        from ray_ser.corpora import ADAPTERS

        unknown = [c for c in corpora if c not in ADAPTERS]
        if unknown:
            raise ValueError(f"unknown corpus {unknown[0]!r}; known: {', '.join(sorted(ADAPTERS))}")
        return corpora


class StoreConfig(Section):
    """Where the embeddings and analysis tables live."""

    uri: str = "store"
    """LanceDB store: a local folder (relative to where the command runs) or an object-store URI (s3://bucket/path,
    gs://, az://)."""
    options: dict[str, str | int | float | bool] = {}
    """Storage options of object-store URIs (the store's and run folders'), as LanceDB takes them: endpoint,
    region, allow_http, access_key_id, ... Unset ones come from the usual environment (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP); keep secrets there, not in a file."""


class ClusterConfig(Section):
    """Frame k-means per outer fold (pseudo-emotion labels for the cluster head)."""

    layer: str = "auto"
    """Layer whose frames are clustered: an index, or auto (the layer criterion's pick per fold)."""
    k: list[int] = [50, 100, 150]
    """Cluster counts; one k-means per count and fold."""
    fold: str = "all"
    """all | F[,F...] outer folds (-1 = all speakers, never for evaluation)."""
    conditions: list[str] | None = None
    """Conditions to assign cluster ids to (null: every stored one)."""
    assign: Literal["test", "all"] = "test"
    """test: ids only for each fold's test speakers (out of fold); all: every utterance."""
    sample_frames: int = Field(20000, ge=1)
    """Training frames drawn for k-means."""
    seed: int = 0
    """Seed of the frame sample and of k-means."""


class PruneConfig(Section):
    """Saliency-pruned copies of one layer's frames."""

    layer: int | None = None
    """The layer whose frames are pruned (required by `ray-ser prune`)."""
    keep_ratio: float = Field(0.6, gt=0, le=1)
    """Fraction of dimensions each fold's mask keeps."""
    conditions: list[str] | None = None
    """Conditions to copy (null: every condition with frames)."""
    saliency_condition: str = "clean"
    """The condition whose saliency ranks the dimensions."""
    score: Literal["ccs", "mis"] = "ccs"
    """Saliency score that ranks the dimensions."""


class AnalysisConfig(Section):
    """Saliency, layer criteria, probes and clusters; each fitted per outer fold on its training speakers."""

    condition: str = "clean"
    """Condition the saliency, probes and clusters are fitted on."""
    folds: str = "auto"
    """Outer folds when the store has none yet: auto (LOSO up to 12 speakers, else 5) | loso | manifest | K."""
    seed: int = 0
    """Seed of a K-fold split."""
    mis: bool = True
    """Mutual-information saliency besides CCS."""
    n_bins: int = Field(DEFAULT_BINS, ge=2)
    """Quantile bins of the mutual-information estimator."""
    layer_criterion: str | None = None
    """Criterion that picks each fold's layers (null: the default, lda_inner; none: skip the choice)."""
    probe: bool = False
    """Fit a linear probe per layer and compare it with the saliency ranking."""
    probe_layers: str | None = None
    """A multi-layer probe baseline: layers such as 2,3,4, or auto:K (each fold's K best layers)."""
    probe_c: list[float] = list(DEFAULT_CS)
    """Inverse regularisation strengths the probes choose from by inner cross-validation."""
    probe_readout: str = "none"
    """Per-utterance read-outs of the probe baseline, comma-separated: none, l2, ssqrt."""
    clusters: ClusterConfig = ClusterConfig()
    """Frame clusters."""
    prune: PruneConfig = PruneConfig()
    """Pruned frames."""

    @field_validator("layer_criterion")
    @classmethod
    def _criterion(cls, value: str | None) -> str | None:
        return value if value not in (None, "") else None


class TuneConfig(Section):
    """Ray Tune search; trials never read the held-out folds' speakers."""

    num_samples: int = Field(16, ge=1)
    """Trials."""
    max_epochs: int = Field(12, ge=1)
    """Epochs per trial (ASHA's max_t)."""
    grace_period: int = Field(2, ge=1)
    """Epochs before ASHA may stop a trial."""
    time_budget_s: float | None = Field(None, gt=0)
    """Seconds for the whole search (null: no limit)."""
    seed: int = 0
    """Seed of the search algorithm."""
    held_out_folds: list[int] | None = None
    """Outer folds whose speakers no trial reads (null: the first three); report on these."""
    search_folds: int = Field(2, ge=1)
    """Folds of the remaining speakers each trial trains and validates on."""
    layers: list[int] | None = None
    """Layers to search (null: the top_layers best by the layer prior)."""
    top_layers: int = Field(3, ge=0)
    """With layers null: search the this-many layers the prior ranks first (0: every layer)."""
    layer_mix: Literal["none", "learned", "search"] = "none"
    """none: each trial reads the searched layer; learned: each trial mixes every stored layer by learned weights;
    search: the learned mix is a choice beside the searched layer."""
    arch: Literal["tcgru", "mlp"] = "tcgru"
    """Model the trials train."""
    batch_size: int = Field(64, ge=1)
    """Batch size of every trial."""
    cpus_per_trial: float = Field(0.5, gt=0)
    """CPUs each trial holds (fractions share cores)."""
    max_concurrent: int = Field(2, ge=1)
    """Trials at once."""
    name: str = "search"
    """Tune experiment name under the output folder."""


class EvaluateConfig(Section):
    """Out-of-fold batch predictions and the per-speaker, per-gender, per-SNR tables."""

    runs: list[str] = []
    """Training run folders to score (several: an ensemble); empty: this experiment's run folder."""
    by: list[str] = []
    """Extra grouping columns (a manifest column, an extra key, or <key>_bin)."""
    conditions: list[str] | None = None
    """Conditions to score (null: every stored evaluation condition)."""
    n_boot: int = Field(500, ge=1)
    """Speaker-level bootstrap resamples of each interval."""
    seed: int = 0
    """Seed of the bootstrap."""
    batch_size: int = Field(32, ge=1)
    """Utterances per prediction batch."""
    zero_shot: list[str] = []
    """Corpora to score zero-shot with the run's final model (train.final), corpora it never trained on; empty:
    the out-of-fold scores of the run's own corpora."""
    race: bool = True
    """Race the model against the probe baseline on analysis.probe_layers (refitted on the run's own outer folds, or
    on its training corpora for zero-shot scores): metrics rows uar_minus_probe with a paired speaker interval."""


class CrossCorpusConfig(Section):
    """The leave-one-corpus-out matrix over the experiment's corpora (ray-ser crosscorpus)."""

    enabled: bool = False
    """ray-ser run ends with the matrix (needs two or more corpora and, when their category lists differ, a label set)."""
    rows: Literal["all", "loco"] = "all"
    """all: every corpus alone (out-of-fold and zero-shot cells) and every leave-one-corpus-out set; loco: the
    leave-one-corpus-out models only (one final model each, the cheap way to compare training options)."""


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
