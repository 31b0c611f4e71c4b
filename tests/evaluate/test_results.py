"""ray_ser.evaluate.results: loading evaluation folders (one, many, globs) with stable columns, and the README's Polars
examples run as they are against synthetic evaluation folders."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import polars as pl
import pytest

from ray_ser.evaluate.results import (
    METRICS_SCHEMA,
    load_confusion,
    load_metrics,
    load_predictions,
    read_predictions,
)
from ray_ser.evaluate.synthetic import synthetic_predictions, write_synthetic_eval

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(n_speakers=6, n_per_class=3)


@pytest.fixture(scope="module")
def evals(tmp_path_factory) -> Path:
    """eval/emodb and eval/emodb_masked, as the README's examples expect them."""
    root = tmp_path_factory.mktemp("work")
    write_synthetic_eval(root / "eval" / "emodb", run="whisper-base", n_boot=100, seed=0)
    write_synthetic_eval(root / "eval" / "emodb_masked", run="whisper-base-masked", n_boot=100, seed=1)
    (root / "eval" / "not_an_eval").mkdir()  # a glob over eval/* must skip it
    return root


def test_load_metrics_one_many_glob(evals):
    one = load_metrics(evals / "eval" / "emodb")
    assert isinstance(one, pl.LazyFrame)
    df = one.collect()
    assert list(df.columns[: len(METRICS_SCHEMA)]) == list(METRICS_SCHEMA) and df.columns[-1] == "source"
    assert df.schema["k"] == pl.Int32 and df["run"].unique().to_list() == ["whisper-base"]
    both = load_metrics(str(evals / "eval" / "*")).collect()
    assert sorted(both["run"].unique().to_list()) == ["whisper-base", "whisper-base-masked"]
    listed = load_metrics([evals / "eval" / "emodb", evals / "eval" / "emodb_masked" / "metrics.parquet"]).collect()
    masked = load_metrics(evals / "eval" / "emodb_masked").collect()
    assert listed.height == both.height == df.height + masked.height


def test_load_predictions_and_confusion_across_runs(evals, tmp_path):
    preds = load_predictions(str(evals / "eval" / "*")).collect()
    assert preds.group_by("run").len().sort("run")["len"].to_list() == [1120, 1120]
    assert preds.schema["fold"] == pl.Int32 and preds.schema["probs"] == pl.List(pl.Float32)
    conf = load_confusion(evals / "eval" / "emodb").collect()
    assert conf["count"].sum() == 1120
    # a run without the A/V/D head still lines up with one that has it (nulls)
    other = tmp_path / "nodims"
    write_synthetic_eval(other, run="nodims", n_boot=20, dims=False, **SMALL)
    mixed = load_predictions([evals / "eval" / "emodb", other]).collect()
    assert mixed.filter(pl.col("run") == "nodims")["pred_arousal"].null_count() == 6 * 7 * 3 * 4
    df, cats, config = read_predictions(other)
    assert len(cats) == 7 and config["run"] == "nodims" and df.height == 6 * 7 * 3 * 4


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_metrics(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no file or folder matches"):
        load_metrics(str(tmp_path / "nothing*"))
    synthetic_predictions(**SMALL).write_parquet(tmp_path / "predictions.parquet")
    with pytest.raises(ValueError, match="ray_ser.categories"):
        read_predictions(tmp_path)


def _readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- polars-examples -->(.*?)<!-- /polars-examples -->", text, re.S)
    assert m, "README.md lost its <!-- polars-examples --> block"
    snippets = []
    for lang, body in re.findall(r"```(bash|python)\n(.*?)```", m.group(1), re.S):
        if lang == "python":
            snippets.append(body)
        else:
            snippets += [line for line in body.splitlines() if line.startswith("python -c ")]
    return snippets


def test_readme_polars_examples_run(evals, monkeypatch):
    """Each example runs in a fresh namespace in the folder holding eval/ (a one-liner's code is what the shell
    would hand to ``python -c``: shlex applies the same quoting rules); in-process, so no interpreter start-ups."""
    snippets = _readme_examples()
    assert len(snippets) >= 5
    monkeypatch.chdir(evals)
    outputs = []
    with pl.Config(tbl_rows=20, tbl_hide_dataframe_shape=False):  # as a fresh interpreter prints
        for snippet in snippets:
            if snippet.startswith("python -c "):
                argv = shlex.split(snippet)
                assert argv[:2] == ["python", "-c"] and len(argv) == 3, snippet
                snippet = argv[2]
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                try:
                    exec(compile(snippet, "<README example>", "exec"), {"__name__": "__main__"})
                except Exception as e:  # noqa: BLE001 - report which example broke
                    pytest.fail(f"README example failed: {e!r}\n{snippet}")
            outputs.append(buf.getvalue())
    below, gap, lift, compare, confusions = outputs[:5]
    # speakers below 0.5 at 15 dB: exactly the ones the metrics table says
    weak = (load_metrics(evals / "eval" / "emodb")
            .filter(pl.col("group_by") == "speaker", pl.col("condition") == "15dB", pl.col("metric") == "uar",
                    pl.col("k") == 1, pl.col("value") < 0.5)
            .collect()["group"].to_list())
    assert weak and all(s in below for s in weak) and f"shape: ({len(weak)}, 4)" in below
    assert "male-female" in gap and "shape: (4, 4)" in gap and "[" in gap
    assert "lift_2best" in lift and "shape: (4, 7)" in lift
    assert "whisper-base-masked" in compare and "better_in_b" in compare
    assert "shape: (5, 3)" in confusions
