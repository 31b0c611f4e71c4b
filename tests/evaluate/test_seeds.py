"""Several seeds of one config: the folders, the per-seed table and the spread against numpy, and jobs/train.py
--seeds training each seed into its own folder."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ray_ser.evaluate.seeds import seed_folder, seed_list, seed_spread, seed_table, spread_lines


def _metrics(uar: dict[str, float], diff: float) -> pl.DataFrame:
    rows = [("r", "all", "all", c, "uar", 1, v, v - 0.02, v + 0.02, 100, 10, "out-of-fold") for c, v in uar.items()]
    rows += [("r", "all", "all", c, "uar", 2, 0.99, 0.98, 1.0, 100, 10, "out-of-fold") for c in uar]  # 2-best: left out
    rows += [("r", "all", "all", "clean", "uar_minus_probe", None, diff, diff - 0.03, diff + 0.03, 100, 10, "out-of-fold"),
             ("r", "speaker", "s1", "clean", "uar", 1, 0.1, None, None, 10, 1, "out-of-fold")]
    from ray_ser.evaluate.results import METRICS_SCHEMA

    return pl.DataFrame(rows, schema=METRICS_SCHEMA, orient="row")


def test_seed_list_and_folders(tmp_path):
    assert seed_list(3, 3) == [3, 4, 5]
    assert seed_folder(tmp_path, 4) == str(tmp_path / "seed_4")
    assert seed_folder("s3://b/runs/x", 0) == "s3://b/runs/x/seed_0"
    with pytest.raises(ValueError):
        seed_list(0, 0)


def test_spread_over_seeds_matches_numpy():
    uars = {0: {"clean": 0.90, "5dB": 0.70}, 1: {"clean": 0.86, "5dB": 0.74}, 2: {"clean": 0.91, "5dB": 0.69}}
    diffs = {0: -0.01, 1: 0.02, 2: 0.005}
    table = seed_table({s: _metrics(uars[s], diffs[s]) for s in uars})
    assert table.height == 3 * 3 and set(table["metric"]) == {"uar", "uar_minus_probe"}
    spread = seed_spread(table)
    clean = spread.filter(pl.col("condition") == "clean", pl.col("metric") == "uar").row(0, named=True)
    v = np.array([uars[s]["clean"] for s in uars])
    assert clean["seeds"] == 3 and clean["mean"] == pytest.approx(v.mean()) and clean["std"] == pytest.approx(v.std(ddof=1))
    assert (clean["min"], clean["max"]) == (pytest.approx(0.86), pytest.approx(0.91))
    assert clean["speaker_ci_low"] == pytest.approx(v.mean() - 0.02)
    d = spread.filter(pl.col("metric") == "uar_minus_probe").row(0, named=True)
    assert d["std"] == pytest.approx(np.std(list(diffs.values()), ddof=1))
    text = spread_lines(spread)
    assert text.startswith("over 3 seeds") and "std 0.026" in text


def test_train_seeds_trains_each_seed_into_its_folder(monkeypatch, tmp_path):
    from ray_ser.jobs import train as job
    from ray_ser.train import driver

    calls = []
    monkeypatch.setattr(driver, "run", lambda cfg, store, folds, out, on_fold=None: calls.append((cfg.seed, str(out))) or
                        [{"fold": 0}])
    monkeypatch.setattr("ray_ser.runtime.init_ray", lambda *a, **k: None)
    out = tmp_path / "run"
    summaries = job.main(["--store", str(tmp_path / "store"), "--model", "tiny", "--corpus", "c", "--seed", "7",
                          "--seeds", "3", "--out", str(out)])
    assert calls == [(7, str(out / "seed_7")), (8, str(out / "seed_8")), (9, str(out / "seed_9"))]
    assert [s["seed"] for s in summaries] == [7, 8, 9]
