"""The experiment config: every file under configs/ parses, every key is documented and its docs are current,
bad keys are refused by path, and flags override the file the same way in every stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from ray_ser import config as C
from ray_ser.config_reference import README, example_yaml, fields, readme_with_reference

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_parses(path):
    cfg = C.load(path)
    assert cfg.train.store == cfg.store.uri and cfg.train.model == cfg.extract.key


def test_the_demo_config_is_emodb_with_whisper_base_and_the_probe_baseline():
    cfg = C.load(ROOT / "configs" / "emodb.yaml")
    assert (cfg.name, cfg.data.corpora, cfg.extract.model, cfg.store.uri) == ("emodb", ["emodb"], "whisper-base", "store")
    assert cfg.extract.conditions == ["clean", "25dB", "15dB", "5dB"] and cfg.analysis.probe_layers == "auto:3"
    assert str(cfg.run_dir) == "runs/emodb"


def test_every_key_is_documented():
    undocumented = [".".join(path) for path, _, doc, _ in fields(C.ExperimentConfig) if not doc]
    assert undocumented == []


def test_example_yaml_is_current_and_holds_every_default():
    text = (ROOT / "configs" / "example.yaml").read_text(encoding="utf-8")
    assert text == example_yaml(), "configs/example.yaml is stale: run python -m ray_ser.config_reference"
    assert C.load(ROOT / "configs" / "example.yaml").model_dump() == C.ExperimentConfig().model_dump()
    data = yaml.safe_load(text)
    for path, default, _, _ in fields(C.ExperimentConfig):
        if path in {("train", "store"), ("train", "model"), ("train", "corpora")}:
            continue  # they follow other sections: shown commented out
        node = data
        for key in path:
            node = node[key]
        assert isinstance(default, C.BaseModel) or node == json.loads(json.dumps(default)), path


def test_readme_reference_is_current():
    text = README.read_text(encoding="utf-8")
    assert readme_with_reference(text) == text, "README's config reference is stale: run python -m ray_ser.config_reference"
    assert "| `keep_ratio` |" in text and "**analysis.clusters**" in text


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, words", [
    ("train:\n  keep_ratoi: 0.5\n", ["train.keep_ratoi", "unknown key"]),
    ("extract:\n  batch_size: many\n", ["extract.batch_size", "'many'"]),
    ("train:\n  keep_ratio: 2\n", ["train.keep_ratio", "less than or equal to 1", "(got 2)"]),
    ("data:\n  corpora: [emodb, klingon]\n", ["data.corpora", "unknown corpus 'klingon'"]),
    ("data:\n  limit: 0\n", ["data.limit", "(got 0)"]),
    ("analysis:\n  clusters:\n    assign: some\n", ["analysis.clusters.assign", "'some'"]),
    ("nonsense: 1\n", ["nonsense", "unknown key"]),
    ("- a list\n", ["a mapping of sections"]),
    ("train: [\n", ["not valid YAML"]),
])
def test_bad_config_is_refused_naming_the_key_and_file(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(C.ConfigError) as e:
        C.load(path)
    assert str(path) in str(e.value)
    for word in words:
        assert word in str(e.value)


def test_every_bad_key_is_listed_at_once(tmp_path):
    with pytest.raises(C.ConfigError) as e:
        C.load(write(tmp_path, "train:\n  lr: -1\n  epocs: 3\nstore:\n  url: x\n"))
    assert all(k in str(e.value) for k in ("train.lr", "train.epocs", "store.url"))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(C.ConfigError, match="no such config file"):
        C.load(tmp_path / "nope.yaml")


def test_train_follows_the_experiment_unless_set(tmp_path):
    cfg = C.load(write(tmp_path, "store: {uri: s3://b/s}\nextract: {model: m, whisper_mode: trimmed}\n"
                                 "data: {corpora: [emodb, ravdess]}\n"))
    assert (cfg.train.store, cfg.train.model, cfg.train.corpora) == ("s3://b/s", "m@trimmed", ["emodb", "ravdess"])
    own = C.load(write(tmp_path, "store: {uri: a}\ntrain: {store: b, corpora: [emodb]}\ndata: {corpora: [ravdess]}\n"))
    assert (own.train.store, own.train.corpora) == ("b", ["emodb"])


def test_a_tune_best_config_json_is_the_train_section(tmp_path):
    path = tmp_path / "best_config.json"
    path.write_text(json.dumps({"store": "st", "model": "tiny", "layer": 2, "keep_ratio": 0.6}))
    cfg = C.load(path)
    assert (cfg.train.store, cfg.train.model, cfg.train.layer, cfg.train.keep_ratio) == ("st", "tiny", 2, 0.6)


def test_the_extract_section_is_the_extract_stages_config_and_expands_the_augmented_copies():
    from ray_ser.extract.config import ExtractConfig

    section = C.ExtractConfig(conditions=["clean", "5dB"], aug_copies=2, frames=False)
    assert C.ExtractConfig is ExtractConfig and C.ExperimentConfig.model_fields["extract"].annotation is ExtractConfig
    opts = section.expanded()
    assert opts.conditions == ["clean", "5dB", "aug0", "aug1"] and opts.frames is False and opts.aug_copies == 0
    assert section.recorded()["conditions"] == ["clean", "5dB", "aug0", "aug1"] and "aug_copies" not in section.recorded()
    assert section.key == "whisper-base" and C.ExtractConfig(whisper_mode="trimmed").key == "whisper-base@trimmed"


SECTION_PACKAGES = {"data": "corpora", "store": "store", "extract": "extract", "analysis": "analysis", "train": "train",
                    "tune": "train", "evaluate": "evaluate", "crosscorpus": "evaluate"}
"""Each experiment-config section and the stage package that declares its class."""


def test_each_section_is_declared_in_its_stages_package_and_named_by_its_face():
    import importlib

    from ray_ser.section import Section

    sections = {name: info.annotation for name, info in C.ExperimentConfig.model_fields.items()
                if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)}
    assert sorted(sections) == sorted(SECTION_PACKAGES)
    for name, cls in sections.items():
        package = f"ray_ser.{SECTION_PACKAGES[name]}"
        assert cls.__module__.rsplit(".", 1)[0] == package, (name, cls.__module__)
        assert cls.__name__ in importlib.import_module(package).__all__ and getattr(C, cls.__name__) is cls
    assert C.AnalysisConfig.model_fields["clusters"].annotation is importlib.import_module("ray_ser.analysis").ClusterConfig
    assert C.PruneConfig.__module__ == "ray_ser.analysis.config"
    # every section derives from Section but train: TrainConfig keeps its own model_config (no validate_assignment)
    assert [n for n, cls in sections.items() if not issubclass(cls, Section)] == ["train"]


def test_saved_config_round_trips(tmp_path):
    cfg = C.load(ROOT / "configs" / "emodb.yaml", {"train.epochs": 2, "data.limit": 30})
    again = C.load(cfg.save(tmp_path))
    assert again == cfg and (tmp_path / "config.yaml").is_file()


def test_flags_override_the_file_and_the_namespace_reads_the_resolved_values(tmp_path):
    from ray_ser.jobs import extract, frames

    path = write(tmp_path, "store: {uri: from-file}\nextract: {conditions: [clean]}\nanalysis:\n  clusters: {k: [4]}\n")
    cfg, args = C.from_args(extract.parser(), ["--config", str(path), "--conditions", "clean,5dB", "--no-frames"],
                            extract.BINDS)
    assert (args.store, args.conditions, args.no_frames) == ("from-file", ["clean", "5dB"], True)
    assert cfg.extract.conditions == ["clean", "5dB"] and cfg.extract.frames is False
    cfg, args = C.from_args(frames.parser(), ["--config", str(path), "--set", "analysis.clusters.seed=7"],
                            frames.BINDS)
    assert (args.k, args.seed, args.layer, args.model) == ([4], 7, "auto", "whisper-base")


def test_set_values_are_read_as_yaml():
    assert C.parse_assignment("train.layers=[2, 3]") == ("train.layers", [2, 3])
    assert C.parse_assignment("data.data_root=") == ("data.data_root", None)
    with pytest.raises(C.ConfigError, match="KEY=VALUE"):
        C.parse_assignment("train.epochs")


def test_a_stage_script_refuses_a_bad_key_before_anything_runs(tmp_path):
    store = tmp_path / "store"
    path = write(tmp_path, f"store: {{uri: {store}}}\nextract:\n  modle: x\n")
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "extract.modle" in done.stderr and str(path) in done.stderr and "Traceback" not in done.stderr
    assert not store.exists()


def test_a_yaml_whose_only_key_is_store_is_a_store(tmp_path):
    load = C.load
    path = tmp_path / "c.yaml"
    path.write_text("store: s3://bucket/stores/x\n")  # short for store: {uri: ...}; never a bare train section
    cfg = load(path)
    assert cfg.store.uri == "s3://bucket/stores/x" and cfg.train.store == "s3://bucket/stores/x"
    best = tmp_path / "best_config.json"
    best.write_text('{"store": "s3://bucket/stores/x", "epochs": 3}')
    cfg = load(best)
    assert cfg.train.epochs == 3 and cfg.train.store == "s3://bucket/stores/x"
