"""The paired race against the probe: the paired speaker-bootstrap interval of a UAR difference against a plain loop
over the same draws and a hand-built case, the race rows of a predictions table, and the verdict's words."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import balanced_accuracy_score

from ray_ser import metrics as M
from ray_ser.evaluate.race import DIFFERENCE, PROBE, race_line, race_summary, race_table, verdict
from ray_ser.evaluate.tables import _seed, metric_table


def _loop_interval(y, a, b, spk, n_boot, seed, level=0.95):
    """The paired interval by hand: each resample's drawn speakers (with repeats), both systems scored on their
    pooled rows with scikit-learn, the difference's percentiles."""
    names = np.unique(spk)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(n_boot, len(names)))
    reps = []
    for d in draws:
        idx = np.concatenate([np.flatnonzero(spk == names[i]) for i in d])
        reps.append(balanced_accuracy_score(y[idx], a[idx]) - balanced_accuracy_score(y[idx], b[idx]))
    q = [50 * (1 - level), 50 * (1 + level)]
    return balanced_accuracy_score(y, a) - balanced_accuracy_score(y, b), *np.percentile(reps, q)


def test_paired_interval_matches_a_plain_loop_over_the_same_draws():
    rng = np.random.default_rng(3)
    n, c = 400, 4
    spk = rng.integers(0, 9, n).astype(str)
    y = rng.integers(0, c, n)
    skill = {s: rng.uniform(0.2, 0.9) for s in np.unique(spk)}  # shared speaker difficulty: pairing matters
    hard = np.array([rng.random() > skill[s] for s in spk])
    a = np.where(hard | (rng.random(n) < 0.1), rng.integers(0, c, n), y)
    b = np.where(hard | (rng.random(n) < 0.25), rng.integers(0, c, n), y)
    got = M.paired_uar_ci(y, a, b, spk, n_boot=300, seed=[5, 7])
    want = _loop_interval(y, a, b, spk, 300, [5, 7])
    np.testing.assert_allclose(got, want, atol=1e-12)
    # pairing: narrower than the two independent intervals' difference suggests
    lo_a, hi_a = M.uar_ci(y, a, spk, n_boot=300, seed=[5, 7])
    assert got[2] - got[1] < hi_a - lo_a


def test_paired_interval_of_a_hand_built_case():
    # two speakers, one utterance per class each; the model is right everywhere, the probe on speaker A only.
    # Resamples: AA -> 0, AB/BA -> 0.5, BB -> 1 (each 1/4, 1/2, 1/4), so the 95 % interval is [0, 1].
    y = np.array([0, 1, 2, 0, 1, 2])
    spk = np.array(["A"] * 3 + ["B"] * 3)
    model = y.copy()
    probe = np.array([0, 1, 2, 1, 2, 0])
    value, lo, hi = M.paired_uar_ci(y, model, probe, spk, n_boot=2000, seed=0)
    assert value == pytest.approx(0.5) and lo == 0.0 and hi == 1.0
    assert M.paired_uar_ci(y, model, model, spk, n_boot=50, seed=0) == (0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def race(predictions, categories):
    """A probe that is wrong on every row (UAR 0), so model minus probe is the model's UAR in every resample."""
    c = len(categories)
    y = predictions["label_index"].to_numpy()
    wrong = np.eye(c, dtype=np.float32)[(y + 1) % c]
    probe = predictions.select("condition", "utt_id", pl.Series("probs", wrong.tolist(), dtype=pl.List(pl.Float32)))
    return race_table(predictions, probe, categories, n_boot=300, seed=0)


def test_race_rows_for_every_condition_and_fold(race, predictions):
    conds = sorted(predictions["condition"].unique().to_list())
    pooled = race.filter(pl.col("group_by") == "all")
    assert sorted(pooled.filter(pl.col("metric") == DIFFERENCE)["condition"].to_list()) == conds
    assert sorted(pooled.filter(pl.col("metric") == PROBE)["condition"].to_list()) == conds
    folds = race.filter(pl.col("group_by") == "fold", pl.col("metric") == DIFFERENCE)
    assert folds.height == len(conds) * predictions["fold"].n_unique()
    assert folds["ci_low"].null_count() == folds.height  # one speaker per fold: no interval
    assert (race.filter(pl.col("metric") == PROBE)["value"] == 0).all()


def test_the_race_reuses_the_draws_of_the_models_own_interval(race, predictions, categories):
    own = metric_table(predictions, categories, n_boot=300, seed=0).filter(
        pl.col("group_by") == "all", pl.col("metric") == "uar", pl.col("k") == 1).sort("condition")
    diff = race.filter(pl.col("group_by") == "all", pl.col("metric") == DIFFERENCE).sort("condition")
    for col in ("value", "ci_low", "ci_high", "n", "n_speakers"):
        np.testing.assert_allclose(diff[col].to_numpy(), own[col].to_numpy(), atol=1e-12, err_msg=col)


def test_race_table_against_the_loop_with_a_real_probe(predictions, categories):
    c = len(categories)
    rng = np.random.default_rng(1)
    y = predictions["label_index"].to_numpy()
    noisy = np.where(rng.random(len(y)) < 0.5, y, rng.integers(0, c, len(y)))
    probe = predictions.select("condition", "utt_id", pl.Series("probs", np.eye(c)[noisy].tolist(),
                                                                dtype=pl.List(pl.Float32)))
    t = race_table(predictions, probe, categories, n_boot=200, seed=4)
    cond = predictions["condition"][0]
    part = predictions.filter(pl.col("condition") == cond)
    mine = noisy[(predictions["condition"] == cond).to_numpy()]
    a = np.asarray(part["probs"].to_list()).argmax(1)
    want = _loop_interval(part["label_index"].to_numpy(), a, mine, part["speaker"].to_numpy(), 200,
                          _seed(4, "synthetic", cond, "all", "all"))
    row = t.filter(pl.col("group_by") == "all", pl.col("metric") == DIFFERENCE, pl.col("condition") == cond).row(
        0, named=True)
    np.testing.assert_allclose((row["value"], row["ci_low"], row["ci_high"]), want, atol=1e-12)


def test_a_probe_missing_a_row_is_refused(predictions, categories):
    probe = predictions.select("condition", "utt_id", "probs").slice(1)
    with pytest.raises(ValueError, match="same utterances"):
        race_table(predictions, probe, categories, n_boot=10)


@pytest.mark.parametrize("lo,hi,word,phrase", [(0.01, 0.05, "beats", "beats the probe"),
                                               (-0.02, 0.03, "ties", "ties with the probe"),
                                               (-0.06, -0.01, "loses", "loses to the probe")])
def test_verdict_words(lo, hi, word, phrase):
    assert verdict(0.02, lo, hi) == word
    line = race_line({"condition": "clean", "uar": 0.9, "probe_uar": 0.88, "difference": 0.02, "ci_low": lo,
                      "ci_high": hi}, "mlp model", "the probe baseline")
    assert line.startswith(f"clean: mlp model {phrase} baseline")
    assert verdict(0.02, None, None) == "no interval"


def test_race_summary_joins_the_models_uar(race, predictions, categories):
    m = pl.concat([metric_table(predictions, categories, n_boot=50, seed=0), race])
    s = race_summary(m)
    assert s.height == predictions["condition"].n_unique()
    assert (s["probe_uar"] == 0).all() and np.allclose(s["uar"].to_numpy(), s["difference"].to_numpy())
    assert set(s["verdict"].to_list()) <= {"beats", "ties", "loses"}
