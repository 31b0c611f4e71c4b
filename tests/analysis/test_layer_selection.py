"""Layer-selection scores on a planted case whose right layer is known, their references, regret and the choice.

The planted corpus: 6 speakers x 40 utterances, 4 balanced classes, four 40-dim layers:
0 "low rank": one latent weakly tied to class 0, copied into every dimension (what CCS's redundancy rewards);
1 "signal": 4 dimensions each carry one class indicator, 36 dimensions noise (the probe's best layer);
2 "noise": independent Gaussian noise;
3 "copy": a rank-1 copy of the signal layer (its class dimensions projected on one direction).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.linalg import eigh
from scipy.stats import entropy, pearsonr, spearmanr
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import PredefinedSplit, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ray_ser.analysis import layer_selection as lsel
from ray_ser.analysis.probe import probe_layer

LOW, SIGNAL, NOISE, COPY = 0, 1, 2, 3
N_SPK, PER, C, N = 6, 40, 4, 40


def planted(seed: int = 0) -> tuple[dict[int, np.ndarray], lsel.LayerData]:
    rng = np.random.default_rng(seed)
    n = N_SPK * PER
    speakers = np.repeat([f"s{i}" for i in range(N_SPK)], PER)
    y = np.tile(np.arange(C), n // C)
    rng.shuffle(y)
    onehot = np.eye(C)[y]
    sig = rng.normal(size=(n, N))
    sig[:, :C] = 1.2 * onehot + 0.5 * rng.normal(size=(n, C))
    z = onehot[:, 0] + 0.8 * rng.normal(size=n)
    low = z[:, None] * rng.uniform(0.5, 2, size=N)[None] + 0.05 * rng.normal(size=(n, N))
    noise = rng.normal(size=(n, N))
    proj = sig[:, :C] @ rng.normal(size=C)
    copy = proj[:, None] * rng.uniform(0.5, 2, size=N)[None] + 0.05 * rng.normal(size=(n, N))
    data = lsel.LayerData({"pdf": 0.8 * onehot + 0.2 / C, "onehot": onehot},
                          np.array([f"c{i}" for i in y], dtype=object), speakers,
                          np.repeat(np.arange(N_SPK), PER), [f"u{i}" for i in range(n)], "loso (6 folds)")
    return {LOW: low, SIGNAL: sig, NOISE: noise, COPY: copy}, data


@pytest.fixture(scope="module")
def case():
    return planted()


@pytest.fixture(scope="module")
def scores(case):
    """{criterion: {layer: score}} on every row (inner folds shared by the layers)."""
    layers, data = case
    crits = lsel.available_criteria(data)
    inner = lsel.inner_folds(data.speakers, data.labels)
    per_layer = {k: lsel.criterion_scores(H, data, crits, inner) for k, H in layers.items()}
    return {c: {k: per_layer[k][c] for k in layers} for c in crits}


@pytest.fixture(scope="module")
def probe(case):
    layers, data = case
    return {k: probe_layer(H, data.labels, data.fold)[0] for k, H in layers.items()}


# ---- the planted case -----------------------------------------------------------------------------
def test_probe_knows_the_signal_layer(probe):
    assert lsel.pick(probe) == SIGNAL
    assert probe[SIGNAL] == pytest.approx(0.829, abs=0.005)
    assert probe[COPY] == pytest.approx(0.487, abs=0.005) and probe[LOW] == pytest.approx(0.325, abs=0.005)
    assert probe[NOISE] < 0.3  # chance is 0.25


def test_current_ccs_score_picks_a_low_rank_layer_through_its_redundancy_term(scores, probe):
    ccs, direct, red = scores["ccs_top10:pdf"], scores["direct_mean:pdf"], scores["redundancy_mean:pdf"]
    assert lsel.pick(ccs) == COPY and ccs[COPY] == pytest.approx(0.746, abs=0.002)
    # even the class-0-only low-rank layer outscores the signal layer: 0.511 vs 0.375
    assert ccs[LOW] == pytest.approx(0.511, abs=0.002) and ccs[SIGNAL] == pytest.approx(0.375, abs=0.002)
    # in a rank-1 layer every dimension correlates ~1 with the others, so gamma ~ the direct term and CCS ~ 2x it
    for k in (LOW, COPY):
        assert red[k] == pytest.approx(direct[k], rel=0.02)
    assert red[SIGNAL] < 0.01 and red[NOISE] < 0.01
    assert lsel.regret(ccs, probe) == pytest.approx(probe[SIGNAL] - probe[COPY])
    assert lsel.regret(ccs, probe) > 0.3


def test_direct_term_ranks_signal_over_the_class0_layer_but_not_over_its_rank1_copy(scores):
    top, mean = scores["direct_top10:pdf"], scores["direct_mean:pdf"]
    assert top[SIGNAL] == pytest.approx(0.367, abs=0.002) and top[LOW] == pytest.approx(0.257, abs=0.002)
    assert top[SIGNAL] > top[LOW] > top[NOISE]
    # the rank-1 projection mixes all four classes into every dimension: as correlated as the best ones
    assert top[COPY] == pytest.approx(top[SIGNAL], abs=0.01)
    # over all dimensions the 36 noise dims of the signal layer dilute it below both low-rank layers
    assert mean[SIGNAL] < mean[LOW] < mean[COPY]
    assert lsel.pick(mean) == COPY


def test_pdf_and_onehot_targets_agree_when_the_pdf_is_smoothed_onehot(scores):
    # a PDF of 0.8 * onehot + 0.05 is an affine function of the one-hot columns: identical correlations
    for k in scores["ccs_top10:pdf"]:
        assert scores["ccs_top10:pdf"][k] == pytest.approx(scores["ccs_top10:onehot"][k], abs=1e-12)
        assert scores["direct_top10:pdf"][k] == pytest.approx(scores["direct_top10:onehot"][k], abs=1e-12)


def test_mis_and_anova_are_also_fooled_by_the_rank1_copy(scores):
    assert lsel.pick(scores["mis_top10:pdf"]) == COPY
    assert scores["mis_top10:pdf"][SIGNAL] == pytest.approx(0.142, abs=0.005)
    assert lsel.pick(scores["anova_top10"]) == COPY
    assert scores["anova_top10"][SIGNAL] > scores["anova_top10"][LOW] > scores["anova_top10"][NOISE]


def test_multivariate_and_inner_split_scores_pick_the_signal_layer(scores, probe):
    assert lsel.pick(scores["fisher"]) == SIGNAL
    assert scores["fisher"][SIGNAL] == pytest.approx(3.01, abs=0.01) and scores["fisher"][COPY] == pytest.approx(1.55, abs=0.01)
    for c in ("lda_inner", "probe_inner"):
        assert lsel.pick(scores[c]) == SIGNAL and lsel.regret(scores[c], probe) == 0.0
    assert scores["probe_inner"][SIGNAL] == pytest.approx(0.812, abs=0.005)
    # the inner probe tracks the outer probe across all four layers
    assert spearmanr(list(scores["probe_inner"].values()), list(probe.values())).statistic == 1.0


def test_effective_rank_separates_low_rank_from_full_rank_layers(case):
    layers, _ = case
    er = {k: lsel.effective_rank(H) for k, H in layers.items()}
    assert er[LOW] < 5 and er[COPY] < 5
    assert er[SIGNAL] > 38 and er[NOISE] > 38


def test_default_criterion_picks_the_signal_layer(case):
    layers, data = case
    for f in (0, 3, -1):  # two outer folds' training speakers, and every speaker
        assert lsel.choose_from_arrays(layers, data, f) == SIGNAL


def test_choice_never_sees_the_test_fold(case):
    layers, data = case
    # Plant a perfect label code into the noise layer on the rows of fold 0 only: fold 0's choice is blind to it.
    leaky = {k: H.copy() for k, H in layers.items()}
    rows = data.fold == 0
    leaky[NOISE][rows, :C] = 10.0 * np.eye(C)[np.unique(data.labels, return_inverse=True)[1][rows]]
    assert lsel.choose_from_arrays(leaky, data, 0, "fisher") == lsel.choose_from_arrays(layers, data, 0, "fisher")
    f0 = data.train(0)
    sub = data.subset(f0)
    assert lsel.criterion_scores(leaky[NOISE][f0], sub, ["fisher"])["fisher"] == pytest.approx(
        lsel.criterion_scores(layers[NOISE][f0], sub, ["fisher"])["fisher"])


def test_choose_layer_reads_the_store_rows_and_folds(monkeypatch, case):
    layers, data = case
    rows = pl.DataFrame({"utt_id": data.utt_ids, "speaker": data.speakers.tolist(), "label": data.labels.tolist(),
                         "pdf": data.targets["pdf"].tolist()})
    calls = []
    monkeypatch.setattr(lsel, "usable_rows", lambda store, model, cond, folds, seed: (calls.append((store, model, cond)) or
                        (rows, data.fold, "loso (6 folds)")))
    monkeypatch.setattr(lsel, "layers_of", lambda store, model, cond: sorted(layers))
    monkeypatch.setattr(lsel, "layer_matrix", lambda store, model, cond, k, utt_ids: layers[k][[int(u[1:]) for u in utt_ids]])
    assert lsel.choose_layer("S", "m", 2) == SIGNAL
    assert lsel.choose_layer("S", "m", 2, "5dB", criterion="ccs_top10:pdf") == COPY
    assert calls == [("S", "m", "clean"), ("S", "m", "5dB")]
    assert lsel.choose_layers("S", "m", criterion="fisher") == {f: SIGNAL for f in range(-1, N_SPK)}
    rank = lsel.layer_rank_rows("S", "m", criterion="fisher", folds_to_score=[2, -1])
    assert rank.columns == ["fold", "layer", "layer_score", "layer_rank", "criterion"]
    assert rank.filter(pl.col("layer_rank") == 0)["layer"].to_list() == [SIGNAL, SIGNAL]
    assert set(rank["criterion"]) == {"fisher"}
    scores = lsel.layer_scores("S", "m", 2, criterion="fisher")
    f2 = rank.filter(pl.col("fold") == 2)
    assert f2["layer_score"].to_list() == [scores[k] for k in sorted(scores)]
    by_rank = f2.sort("layer_rank")["layer"].to_list()
    assert by_rank[:2] == [SIGNAL, COPY] and by_rank == sorted(scores, key=lambda k: -scores[k])
    assert scores == lsel.scores_from_arrays(layers, data, 2, "fisher") and lsel.pick(scores) == SIGNAL
    with pytest.raises(ValueError, match="no outer fold 9"):
        lsel.choose_layer("S", "m", 9)
    with pytest.raises(ValueError, match="unknown criterion"):
        lsel.choose_layer("S", "m", 0, criterion="ccs_top10")
    with pytest.raises(ValueError, match="no 'avd' targets"):
        lsel.choose_layer("S", "m", 0, criterion="ccs_top10:avd")
    assert lsel.DEFAULT_CRITERION in lsel.CRITERIA


# ---- references ----------------------------------------------------------------------------------
def test_store_ranking_reads_each_layer_once_and_holds_one_at_a_time(monkeypatch, case):
    """At MSP-Podcast's size every layer of a large model is 15 GB of mean vectors: the ranking of every fold reads
    a layer once, scores it for all folds, and lets it go before the next (StoredLayers keeps nothing)."""
    import weakref

    layers, data = case
    rows = pl.DataFrame({"utt_id": data.utt_ids, "speaker": list(data.speakers), "label": list(data.labels)})
    monkeypatch.setattr(lsel, "usable_rows", lambda store, model, cond, folds, seed: (rows, data.fold, "loso (6 folds)"))
    monkeypatch.setattr(lsel, "layers_of", lambda store, model, cond: sorted(layers))
    reads, alive = [], []

    class Held(np.ndarray):  # a weak reference tells whether a layer read earlier is still held
        pass

    def layer_matrix(store, model, cond, k, utt_ids):
        reads.append(k)
        alive[:] = [r for r in alive if r() is not None]
        assert not alive, f"layer {k} read while an earlier layer is still held"
        H = layers[k][[int(u[1:]) for u in utt_ids]].view(Held)
        alive.append(weakref.ref(H))
        return H

    monkeypatch.setattr(lsel, "layer_matrix", layer_matrix)
    rank = lsel.layer_rank_rows("S", "m", criterion="lda_inner")
    assert sorted(reads) == sorted(layers)  # once each
    per_fold = lsel.fold_layer_scores(layers, data, [-1, *range(N_SPK)], "lda_inner")
    for f in [-1, *range(N_SPK)]:
        assert per_fold[f] == lsel.scores_from_arrays(layers, data, f, "lda_inner")
        got = rank.filter(pl.col("fold") == f).sort("layer")
        assert got["layer_score"].to_list() == [per_fold[f][k] for k in sorted(layers)]


def test_direct_term_equals_scipy_pearson(case):
    layers, data = case
    H, L = layers[SIGNAL][:, :12], data.targets["pdf"]
    direct = np.array([np.mean([abs(pearsonr(H[:, k], L[:, t]).statistic) for t in range(L.shape[1])])
                       for k in range(H.shape[1])])
    got = lsel.criterion_scores(H, data, ["direct_top10:pdf", "direct_mean:pdf"])
    assert got["direct_mean:pdf"] == pytest.approx(direct.mean(), abs=1e-12)
    k = 1  # 10 % of 12 dims, rounded: 1
    assert got["direct_top10:pdf"] == pytest.approx(np.sort(direct)[-k:].mean(), abs=1e-12)


def test_fisher_without_shrinkage_is_the_sum_of_generalised_eigenvalues():
    rng = np.random.default_rng(3)
    n, p = 300, 6
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) + np.eye(3)[y] @ rng.normal(size=(3, p))
    Z = StandardScaler().fit_transform(X)
    Sw = sum(((y == c).sum() - 1) * np.cov(Z[y == c].T) for c in range(3)) / n
    Sb = sum((y == c).mean() * np.outer(Z[y == c].mean(0), Z[y == c].mean(0)) for c in range(3))
    expected = eigh(Sb, Sw, eigvals_only=True).sum()
    assert lsel.fisher_criterion(X, y, shrinkage=0.0) == pytest.approx(expected, rel=1e-9)
    # Ledoit-Wolf shrinkage can only lower it here (Sw's small eigenvalues are raised)
    assert 0 < lsel.fisher_criterion(X, y) <= expected + 1e-9


def test_effective_rank_of_r_repeated_factors_is_r_and_matches_the_formula():
    rng = np.random.default_rng(1)
    n, r = 200, 3
    A = rng.normal(size=(n, r))
    U, _ = np.linalg.qr(A - A.mean(0))  # orthonormal factors, centred (they span centred columns)
    H = np.column_stack([U[:, j % r] * (1 + j) for j in range(4 * r)])  # every factor 4 times, scaled
    Z = StandardScaler().fit_transform(H)
    s = np.linalg.svd(Z, compute_uv=False)
    s = s[s > 1e-9 * s[0]]
    assert lsel.effective_rank(H) == pytest.approx(np.exp(entropy(s / s.sum())))
    assert lsel.effective_rank(H) == pytest.approx(r, abs=0.05)
    X = rng.normal(size=(100, 8))
    s = np.linalg.svd(StandardScaler().fit_transform(X), compute_uv=False)
    assert lsel.effective_rank(X) == pytest.approx(np.exp(entropy(s / s.sum())), rel=1e-12)
    assert lsel.effective_rank(np.ones((5, 3))) == 0.0


def test_inner_uar_equals_sklearn_cross_val_predict(case):
    layers, data = case
    inner = lsel.inner_folds(data.speakers, data.labels)
    # speaker-disjoint: each speaker in exactly one inner fold; 3 folds of 2 speakers
    spk_fold = {(s, f) for s, f in zip(data.speakers, inner)}
    assert len(spk_fold) == N_SPK and len(np.unique(inner)) == lsel.INNER_FOLDS
    H, y = layers[SIGNAL], data.labels.astype(str)
    split = PredefinedSplit(inner)
    for kind, clf in (("probe", make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))),
                      ("lda", make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")))):
        ref = balanced_accuracy_score(y, cross_val_predict(clf, H, y, cv=split))
        assert lsel.inner_uar(H, data.labels, inner, kind) == pytest.approx(ref, abs=1e-12)


def dimensional(seed: int = 0) -> tuple[dict[int, np.ndarray], lsel.LayerData]:
    """6 speakers x 40 utterances, no category; arousal on every row, valence on half of them; layer 0 carries both
    (a few dimensions each), layer 1 is noise."""
    rng = np.random.default_rng(seed)
    n = N_SPK * PER
    aro, val = rng.uniform(1, 5, n), rng.uniform(-1, 1, n)
    good = rng.normal(size=(n, 16))
    good[:, :3] += aro[:, None] * 0.8
    good[:, 3:5] += val[:, None] * 2.0
    dims = np.column_stack([aro, np.where(np.arange(n) % 2 == 0, val, np.nan), np.full(n, np.nan)])
    data = lsel.LayerData({}, np.full(n, None, dtype=object), np.repeat([f"s{i}" for i in range(N_SPK)], PER),
                          np.repeat(np.arange(N_SPK), PER), [f"u{i}" for i in range(n)], "loso (6 folds)", dims)
    return {0: good, 1: rng.normal(size=(n, 16))}, data


def test_ridge_inner_is_the_mean_ccc_of_inner_out_of_fold_ridge_and_scores_dimension_only_rows():
    from sklearn.linear_model import RidgeCV

    from ray_ser.analysis.probe import DEFAULT_ALPHAS

    layers, data = dimensional()
    inner = lsel.inner_folds(data.speakers, data.labels)
    assert len({(s, f) for s, f in zip(data.speakers, inner)}) == N_SPK  # speaker-disjoint

    def ccc(y, p):  # Lin's concordance, written out
        return 2 * np.cov(y, p, bias=True)[0, 1] / (y.var() + p.var() + (y.mean() - p.mean()) ** 2)

    H = layers[0]
    ref = []
    for d in (0, 1):
        has = np.isfinite(data.dims[:, d])
        y = data.dims[has, d]
        pred = cross_val_predict(make_pipeline(StandardScaler(), RidgeCV(alphas=DEFAULT_ALPHAS)), H[has], y,
                                 cv=PredefinedSplit(inner[has]))
        ref.append(ccc(y, pred))
    assert lsel.inner_ccc(H, data.dims, inner) == pytest.approx(np.mean(ref), abs=1e-9)
    assert ref[0] > 0.8 and ref[1] > 0.5

    # a label criterion on rows with no category becomes ridge_inner; on labelled rows it is kept
    assert lsel.criterion_for(data, "lda_inner") == "ridge_inner" == lsel.REGRESSION_CRITERION
    assert lsel.criterion_for(data, "ccs_top10:avd") == "ccs_top10:avd"
    assert lsel.criterion_for(planted()[1], "lda_inner") == "lda_inner"
    scores = lsel.scores_from_arrays(layers, data, 2, "ridge_inner")
    assert lsel.pick(scores) == 0 and scores[0] > 0.7 and scores[1] < 0.2
    with pytest.raises(ValueError, match="no arousal, valence or dominance"):
        lsel.criterion_scores(planted()[0][0], planted()[1], ["ridge_inner"])


def test_a_dimension_only_store_is_ranked_by_ridge_inner_stored_and_read_back(tmp_path, capsys):
    from dimensional import MODEL, build_dims_store

    from ray_ser.analysis import saliency_store as ss
    from ray_ser.jobs import saliency as job

    uri = build_dims_store(tmp_path, speakers={"aro3": 6}, conditions=("clean",))
    job.main(["--store", uri, "--model", MODEL, "--folds", "3", "--no-mis", "--probe", "--probe-layers", "auto:1"])
    out = capsys.readouterr().out
    assert "pipeline layer choice (ridge_inner" in out and "ridge probe on each fold's 1 best layers" in out
    a = ss.stored_assignment(uri, MODEL)
    mine = ss.read_layer_ranking(uri, MODEL).filter(pl.col("criterion") == "ridge_inner")
    assert set(mine["fold"]) == {-1, *a.fold_ids} and mine["layer_score"].min() > 0.9  # both layers carry arousal
    # training, the clusters and Tune ask for the default criterion and read the ridge ranking back
    ranked, source = lsel.ranked_layers(uri, MODEL, a, a.fold_ids, k=2)
    assert source.startswith("layer_rank (ridge_inner: no categories")
    assert ranked == {f: mine.filter(pl.col("fold") == f).sort("layer_rank")["layer"].to_list() for f in a.fold_ids}
    assert lsel.layer_prior(uri, MODEL, a) == mine.filter(pl.col("fold") == -1).sort("layer_rank")["layer"].to_list()


# ---- regret and the summary ----------------------------------------------------------------------
def test_pick_and_regret():
    assert lsel.pick({0: 0.5, 1: 0.9, 2: 0.9}) == 1
    assert lsel.pick({0: float("nan"), 1: 0.1}) == 1
    probe = {0: 0.7, 1: 0.8, 2: 0.9}
    assert lsel.regret({0: 3.0, 1: 2.0, 2: 1.0}, probe) == pytest.approx(0.2)
    assert lsel.regret({0: 1.0, 1: 2.0, 2: 3.0}, probe) == 0.0


def test_summarise_spearman_and_both_regrets():
    probe = {0: 0.6, 1: 0.9, 2: 0.8}
    # fold 0 prefers layer 0, fold 1 layer 1; their mean prefers layer 1
    rows = [(0, 0, "s", 3.0), (0, 1, "s", 2.0), (0, 2, "s", 1.0), (1, 0, "s", 0.0), (1, 1, "s", 4.0), (1, 2, "s", 1.0)]
    scores = pl.DataFrame(rows, schema={"fold": pl.Int32, "layer": pl.Int32, "criterion": pl.Utf8, "score": pl.Float64},
                          orient="row")
    s = lsel.summarise(scores, probe).row(0, named=True)
    assert s["picks"] == "0 1" and s["pick_mean"] == 1
    assert s["regret_folds"] == pytest.approx((0.3 + 0.0) / 2) and s["regret_mean"] == 0.0
    assert s["spearman"] == pytest.approx(spearmanr([1.5, 3.0, 1.0], [0.6, 0.9, 0.8]).statistic)


def test_study_arrays_tables(case, probe):
    layers, data = case
    crits = ["ccs_top10:pdf", "fisher"]
    r = lsel.study_arrays(layers, data, crits, probe_uar=probe)
    assert r.scores.height == N_SPK * len(layers) * (len(crits) + 1)
    assert r.per_layer.columns == ["layer", "probe_uar", "effective_rank", *crits]
    summ = {row["criterion"]: row for row in r.summary.iter_rows(named=True)}
    assert summ["fisher"]["regret_folds"] == 0.0 and summ["fisher"]["picks"] == " ".join(["1"] * N_SPK)
    assert summ["ccs_top10:pdf"]["regret_folds"] == pytest.approx(probe[SIGNAL] - probe[COPY])
    table = lsel.study_table(r)
    assert table["criterion"].to_list() == ["probe_uar", "effective_rank", *crits]
    assert table.filter(pl.col("criterion") == "probe_uar")["L1"][0] == pytest.approx(probe[SIGNAL])
    cmp = lsel.comparison_table({"clean": r, "5dB": r}, default="fisher")
    assert cmp.columns == ["criterion", "rho clean", "regret clean", "rho 5dB", "regret 5dB", "max regret"]
    assert "fisher *" in cmp["criterion"].to_list()


def test_study_job_prints_the_table(monkeypatch, case, probe, capsys):
    layers, data = case
    two = {LOW: layers[LOW], SIGNAL: layers[SIGNAL]}  # two layers keep the job's probe fits few
    monkeypatch.setattr(lsel, "load_layer_data", lambda store, model, cond, folds, seed: (data, two))
    from ray_ser.jobs import saliency as job

    out = job.main(["--store", "S", "--model", "m", "--study", "--conditions", "clean,5dB",
                    "--criteria", "direct_top10:pdf,fisher"])
    text = capsys.readouterr().out
    assert "layer study of m / clean" in text and "layer study of m / 5dB" in text
    assert "criteria by condition" in text and "fisher" in text
    assert out["table"]["criterion"].to_list() == ["direct_top10:pdf", "fisher"]
    assert out["results"]["clean"].probe_uar == pytest.approx({k: probe[k] for k in two})
    assert out["table"]["regret clean"].to_list() == [0.0, 0.0]


# ---- the stored choice the pipeline reads ----------------------------------------------------------
def test_saliency_job_stores_the_choice_train_cluster_and_tune_read(synth_store, tmp_path, monkeypatch, capsys):
    import shutil

    from ray_ser.analysis import saliency_store as ss

    store = str(tmp_path / "store")
    shutil.copytree(synth_store, store)
    from ray_ser.jobs import saliency as job

    out = job.main(["--store", store, "--model", "tiny", "--no-mis"])
    assert "pipeline layer choice (lda_inner" in capsys.readouterr().out
    a = ss.stored_assignment(store, "tiny")
    rank = ss.read_layer_ranking(store, "tiny")
    assert set(rank["criterion"]) == {"ccs_top10", lsel.DEFAULT_CRITERION}  # both criteria side by side
    mine = rank.filter(pl.col("criterion") == lsel.DEFAULT_CRITERION)
    assert set(mine["fold_id"]) == {a.id} and set(mine["fold"]) == {-1, *a.fold_ids}
    assert mine.height == out["layer_choice"].height == 3 * (len(a.fold_ids) + 1)
    # what is stored is what choose_layers computes on each fold's training speakers
    computed = lsel.choose_layers(store, "tiny")
    assert lsel.stored_layers(store, "tiny", a, [-1, *a.fold_ids]) == {f: [v] for f, v in computed.items()}
    layers, source = lsel.layers_for_folds(store, "tiny", a, a.fold_ids)
    assert source.startswith("layer_rank") and layers == {f: computed[f] for f in a.fold_ids}
    # the k best layers: stored order = the ranking computed on each fold's training speakers
    top2, source = lsel.ranked_layers(store, "tiny", a, a.fold_ids, k=2)
    assert source.startswith("layer_rank") and all(v[0] == computed[f] and len(set(v)) == 2 for f, v in top2.items())
    rows = lsel.layer_rank_rows(store, "tiny", assignment=a).filter(pl.col("layer_rank") < 2).sort("layer_rank")
    assert top2 == {f: rows.filter(pl.col("fold") == f)["layer"].to_list() for f in a.fold_ids}
    # another assignment (a search's pool) is not described by the stored rows: computed on its own folds,
    # and the prior over the pool never scores a held-out utterance
    pool = a.without([0])
    assert lsel.stored_layers(store, "tiny", pool, pool.fold_ids) is None
    seen: list[str] = []
    real = lsel.layer_matrix
    monkeypatch.setattr(lsel, "layer_matrix", lambda s, m, c, k, utts: seen.extend(utts) or real(s, m, c, k, utts))
    _, source = lsel.layers_for_folds(store, "tiny", pool, pool.fold_ids)
    order = lsel.layer_prior(store, "tiny", pool)
    assert source.startswith("computed") and sorted(order) == [0, 1, 2]
    computed_top2, source = lsel.ranked_layers(store, "tiny", pool, pool.fold_ids, k=2)
    assert source.startswith("computed") and all(len(v) == 2 for v in computed_top2.values())
    assert seen and not set(seen) & set(a.test_utts(0))
