"""The ``ray-ser`` command: sub-commands dispatch to the stages, ``config show`` prints the resolved config,
``status`` lists what a store holds, and mistakes exit 2 with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from ray_ser import cli
from ray_ser.store.status import read_status, render

ROOT = Path(__file__).resolve().parents[1]


def test_console_script_is_installed_and_shows_the_resolved_config():
    script = Path(sys.executable).parent / "ray-ser"
    assert script.is_file(), "pip install -e . installs the ray-ser console script"
    done = subprocess.run([str(script), "config", "show", "configs/emodb.yaml", "--set", "train.epochs=3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["name"] == "emodb" and shown["train"]["epochs"] == 3 and shown["train"]["arch"] == "mlp"
    assert shown["tune"]["num_samples"] == 16  # defaults included


def test_bad_key_and_unknown_command_exit_2_with_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluate:\n  n_boots: 10\n")
    assert cli.main(["config", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "evaluate.n_boots" in err and str(bad) in err
    assert cli.main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["status", "--store", str(tmp_path / "none")]) == 2
    assert "no store at" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_every_stage_has_a_sub_command_and_a_script():
    for command, module in cli.STAGES.items():
        script = ROOT / "jobs" / f"{module}.py"
        assert script.is_file() and f'job_entry("{command}")' in script.read_text()
    assert 'job_entry("run")' in (ROOT / "jobs" / "pipeline.py").read_text()


def test_stage_help_lists_its_flags_and_config(capsys):
    try:
        cli.main(["train", "--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "--config FILE" in out and "--keep-ratio" in out and "--set KEY=VALUE" in out


def test_the_old_cluster_command_runs_the_frames_stage_and_says_it_is_deprecated(capsys):
    assert "cluster" not in cli.STAGES and cli.DEPRECATED == {"cluster": "frames"}
    for argv in (["cluster", "--help"], ["frames", "--help"]):
        try:
            cli.main(argv)
        except SystemExit as e:
            assert e.code == 0
        done = capsys.readouterr()
        assert "frame" in done.out and "--k" in done.out  # the k-means stage's flags
        assert ("deprecated, use `ray-ser frames`" in done.err) == (argv[0] == "cluster")
    old = (ROOT / "jobs" / "cluster.py").read_text()
    assert 'job_entry("cluster")' in old and "Deprecated" in old


def test_status_lists_corpora_models_conditions_and_analysis_tables(synth_store, capsys):
    status = read_status(synth_store)
    emb = {e["key"]: e for e in status.embeddings}["tiny"]
    assert emb["conditions"] == ["5dB", "clean"] and emb["layers"] == 3 and emb["utterances"] > 0
    assert emb["rows"] == emb["utterances"] * 2 * 3
    assert [c["corpus"] for c in status.corpora] and status.corpora[0]["speakers"] > 1
    tables = {a["table"]: a for a in status.analyses}
    assert {"saliency__tiny", "saliency_folds__tiny", "layer_rank__tiny"} <= set(tables)
    assert len(tables["saliency__tiny"]["fold_ids"]) == 1 and tables["saliency__tiny"]["folds"] > 1
    assert cli.main(["status", "--store", synth_store]) == 0
    text = capsys.readouterr().out
    assert text == render(status) + "\n"
    assert "tiny" in text and "saliency__tiny" in text and "fold ids" in text
