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


def test_a_per_corpus_runs_probe_scales_each_corpus_by_its_own_training_rows(monkeypatch):
    """probe_predictions with ``corpora`` against a direct scikit-learn computation: per fold, a StandardScaler per
    corpus fitted on that corpus's clean training rows scales its training and test rows in every condition, then
    StandardScaler + logistic regression; a corpus with a planted offset and scale needs it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ray_ser.analysis import saliency_store
    from ray_ser.evaluate.race import probe_predictions

    rng = np.random.default_rng(0)
    cats = ["a", "b", "c"]
    rows = [(f"{corpus}/s{s}/u{i}", f"{corpus}{s}", corpus, s % 3, i % 3)
            for corpus in ("x", "y") for s in range(6) for i in range(6)]
    ids = [r[0] for r in rows]
    corp = np.asarray([r[2] for r in rows], dtype=object)
    fold = np.asarray([r[3] for r in rows])
    y = np.asarray([cats[r[4]] for r in rows], dtype=object)
    means = rng.normal(size=(3, 8))
    X = {}
    for cond, noise in (("clean", 1.0), ("5dB", 2.0)):
        H = means[[r[4] for r in rows]] + noise * rng.normal(size=(len(rows), 8))
        H[corp == "y"] = 4.0 * H[corp == "y"] + 3.0  # corpus y on its own offset and scale
        X[cond] = H.astype(np.float32)
    layer_of = {1: slice(0, 4), 2: slice(4, 8)}
    where = {u: i for i, u in enumerate(ids)}
    monkeypatch.setattr(saliency_store, "layer_matrix",
                        lambda store, model, cond, layer, utts: X[cond][[where[u] for u in utts]][:, layer_of[layer]])
    pred = pl.DataFrame([{"utt_id": u, "speaker": spk, "corpus": c, "fold": f, "condition": cond, "label": cats[k],
                          "probs": [1 / 3] * 3} for u, spk, c, f, k in rows for cond in X])
    corpora = dict(zip(ids, corp.tolist()))
    got = probe_predictions(None, "m", pred, cats, {f: [1, 2] for f in range(3)}, Cs=[1.0], corpora=corpora)

    for f in range(3):
        train = fold != f
        scalers = {c: StandardScaler().fit(X["clean"][train & (corp == c)].astype(np.float64)) for c in ("x", "y")}

        def scale(H):
            out = H.astype(np.float64)
            for c, sc in scalers.items():
                out[corp == c] = sc.transform(H[corp == c].astype(np.float64))
            return out

        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        clf.fit(scale(X["clean"])[train], y[train])
        for cond, H in X.items():
            want = clf.predict_proba(scale(H)[fold == f])[:, [list(clf.classes_).index(c) for c in cats]]
            have = got.filter(pl.col("fold") == f, pl.col("condition") == cond).sort("utt_id")
            assert have["utt_id"].to_list() == sorted(u for u, g in zip(ids, fold) if g == f)
            order = np.argsort(np.asarray(ids, dtype=object)[fold == f])
            np.testing.assert_allclose(np.array(have["probs"].to_list()), want[order], atol=1e-5)
    plain = probe_predictions(None, "m", pred, cats, {f: [1, 2] for f in range(3)}, Cs=[1.0])
    keys = ["condition", "utt_id"]
    assert not np.allclose(np.array(plain.sort(keys)["probs"].to_list()),
                           np.array(got.sort(keys)["probs"].to_list()), atol=1e-3)
