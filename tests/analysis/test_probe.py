"""The per-layer linear probe, Spearman against the layer saliency, the PNG, and jobs/saliency.py --probe."""

from __future__ import annotations

import importlib.util
import math
import shutil

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler
from test_saliency_store import shared_store

from ray_ser.analysis import saliency_store as ss
from ray_ser.analysis.probe import (
    inner_c,
    layer_probe,
    layer_set_probe,
    plot_layers,
    probe_fused,
    probe_layer,
    probe_nested,
    readout,
    spearman,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_job(name: str):
    """The stage's job module (what jobs/<name>.py and `ray-ser <name>` run)."""
    return importlib.import_module(f"ray_ser.jobs.{name}")


@pytest.fixture(scope="module")
def store_uri(request):
    return shared_store(request)


@pytest.fixture(scope="module")
def probe(store_uri):
    return layer_probe(store_uri, "tiny", "clean")  # auto: LOSO over the 10 speakers


def test_one_uar_per_layer(probe):
    assert probe["layer"].to_list() == [0, 1, 2]
    assert all(0.0 <= u <= 1.0 for u in probe["uar"].to_list())
    assert all(len(f) == 10 and all(0.0 <= x <= 1.0 for x in f) for f in probe["fold_uar"].to_list())


def test_probe_equals_a_direct_out_of_fold_fit(store_uri, probe):
    rows, _, _, fold, _ = ss.labelled_rows(store_uri, "tiny", "clean")
    y = np.asarray(rows["label"].to_list())
    H = ss.layer_matrix(store_uri, "tiny", "clean", 1, rows["utt_id"].to_list())
    pred = np.empty(len(y), dtype=object)
    for f in np.unique(fold):
        scaler = StandardScaler().fit(H[fold != f])
        clf = LogisticRegression(max_iter=2000).fit(scaler.transform(H[fold != f]), y[fold != f])
        pred[fold == f] = clf.predict(scaler.transform(H[fold == f]))
    assert probe.filter(pl.col("layer") == 1)["uar"][0] == pytest.approx(balanced_accuracy_score(y, pred))


def test_spearman():
    assert spearman([0.1, 0.2, 0.3], [0.5, 0.6, 0.9]) == pytest.approx(1.0)
    assert spearman({0: 3.0, 1: 2.0, 2: 1.0}, {2: 0.9, 1: 0.5, 0: 0.1}) == pytest.approx(-1.0)  # aligned by layer
    assert math.isnan(spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]))


def test_spearman_of_store_saliency_and_plot(store_uri, probe, tmp_path):
    df = ss.compute_saliency(store_uri, "tiny", "clean", mis=False)
    ranking = ss.mean_over_folds(ss.layer_ranking(df))
    assert probe["uar"].n_unique() > 1  # (a random 3-layer model can tie every layer: then rho is NaN by definition)
    rho = spearman(ranking, probe)
    assert math.isfinite(rho) and -1.0 <= rho <= 1.0
    path = plot_layers(ranking, probe, tmp_path / "plots" / "tiny_layers.png", title="tiny", rho=rho)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 400


def test_saliency_job_ends_with_spearman(store_uri, tmp_path, capsys):
    job = load_job("saliency")
    png = tmp_path / "job.png"
    copy = str(tmp_path / "store")  # the job rewrites the saliency tables of the shared store's copy
    shutil.copytree(store_uri, copy)
    result = job.main(["--store", copy, "--model", "tiny", "--probe", "--no-mis", "--folds", "3", "--plot", str(png)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("fold plans: ")  # the run's fold plans, written after the analyses they read
    lines = [line for line in lines if not line.startswith("fold plans: ")]
    assert lines[-2].startswith("spearman: ") and "saliency tiny / clean + probes" in lines[-1]  # then the stage's end
    assert float(lines[-2].split(": ")[1]) == pytest.approx(result["spearman"], abs=1e-4)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert ss.read_saliency(copy, "tiny")["fold"].n_unique() == 4  # folds -1, 0, 1, 2


def _blobs(seed: int = 0, speakers: int = 6, per: int = 12, dim: int = 8):
    """Three classes a few units apart in ``dim`` dimensions, ``per`` utterances per speaker, one fold per speaker."""
    rng = np.random.default_rng(seed)
    y = np.array(["a", "b", "c"] * (speakers * per // 3), dtype=object)
    centres = {c: rng.normal(0, 1.0, dim) for c in "abc"}
    H = np.stack([centres[c] for c in y]) + rng.normal(0, 1.5, (len(y), dim))
    fold = np.repeat(np.arange(speakers), per)
    return H, y, fold


def test_nested_probe_with_one_c_is_the_plain_probe():
    H, y, fold = _blobs()
    uar, per_fold = probe_layer(H, y, fold, C=0.1)
    uar_n, per_fold_n, chosen = probe_nested(H, y, fold, Cs=[0.1])
    assert uar_n == pytest.approx(uar) and per_fold_n == pytest.approx(per_fold)
    assert chosen == {f: 0.1 for f in range(6)}


def test_inner_c_is_the_best_inner_cv_score_and_ignores_the_test_speaker():
    H, y, fold = _blobs(1)
    train = fold != 2
    best, scores = inner_c(H, y, fold, train, Cs=[1e-6, 1.0])
    assert set(scores) == {1e-6, 1.0}
    # an inner CV by hand over the training speakers 0, 1, 3, 4, 5
    for C in (1e-6, 1.0):
        per = []
        for v in (0, 1, 3, 4, 5):
            it, vv = train & (fold != v), fold == v
            scaler = StandardScaler().fit(H[it])
            clf = LogisticRegression(max_iter=2000, C=C).fit(scaler.transform(H[it]), y[it])
            per.append(balanced_accuracy_score(y[vv], clf.predict(scaler.transform(H[vv]))))
        assert scores[C] == pytest.approx(np.mean(per))
    assert best == max(scores, key=scores.get)
    # scrambling the held-out speaker's vectors and labels changes nothing of the choice
    H2, y2 = H.copy(), y.copy()
    rng = np.random.default_rng(5)
    H2[fold == 2] = rng.normal(0, 50, H2[fold == 2].shape)
    y2[fold == 2] = rng.permutation(y2[fold == 2])
    assert inner_c(H2, y2, fold, train, Cs=[1e-6, 1.0]) == (best, scores)


def test_nested_probe_needs_three_folds():
    H, y, fold = _blobs()
    with pytest.raises(ValueError, match="at least 2 folds among the training rows"):
        probe_nested(H, y, fold % 2, Cs=[0.1, 1.0])


def test_readouts_transform_each_row_alone():
    H = np.array([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0], [-0.25, 9.0, 1.0]])
    assert np.array_equal(readout(H, "none"), H)
    l2 = readout(H, "l2")
    assert l2[0] == pytest.approx([0.6, -0.8, 0.0]) and np.array_equal(l2[1], [0.0, 0.0, 0.0])  # a zero row stays 0
    assert np.linalg.norm(l2[2]) == pytest.approx(1.0)
    assert readout(H, "ssqrt")[2] == pytest.approx([-0.5, 3.0, 1.0])
    for kind in ("l2", "ssqrt"):  # a row's read-out does not depend on the other rows
        assert np.array_equal(readout(H, kind)[2], readout(H[2:], kind)[0])
    with pytest.raises(ValueError, match="unknown read-out 'zscore'"):
        readout(H, "zscore")


def test_probe_fused_averages_each_views_own_nested_probe():
    H, y, fold = _blobs(2)
    views = {"a": H, "b": readout(H, "ssqrt")}
    uar, per_fold, chosen = probe_fused(views, y, fold, Cs=[0.01, 1.0])
    one = probe_fused({"a": H}, y, fold, Cs=[0.01, 1.0])
    assert one[0] == pytest.approx(probe_nested(H, y, fold, Cs=[0.01, 1.0])[0])
    pred = np.empty(len(y), dtype=object)
    for f in range(6):
        train, test = fold != f, fold == f
        proba = []
        for name, X in views.items():
            C, _ = inner_c(X, y, fold, train, Cs=[0.01, 1.0])
            assert chosen[f][name] == C
            scaler = StandardScaler().fit(X[train])
            clf = LogisticRegression(max_iter=2000, C=C).fit(scaler.transform(X[train]), y[train])
            proba.append(clf.predict_proba(scaler.transform(X[test])))
        pred[test] = clf.classes_[np.mean(proba, axis=0).argmax(axis=1)]
        assert per_fold[f] == pytest.approx(balanced_accuracy_score(y[test], pred[test]))
    assert uar == pytest.approx(balanced_accuracy_score(y, pred))
    # fold 3's choices never see fold 3: scrambling its vectors and labels leaves them as they were
    H2, y2 = H.copy(), y.copy()
    rng = np.random.default_rng(3)
    H2[fold == 3] = rng.normal(0, 50, H2[fold == 3].shape)
    y2[fold == 3] = rng.permutation(y2[fold == 3])
    assert probe_fused({"a": H2, "b": readout(H2, "ssqrt")}, y2, fold, Cs=[0.01, 1.0])[2][3] == chosen[3]
    with pytest.raises(ValueError, match="at least one view"):
        probe_fused({}, y, fold)


def test_layer_set_probe_fuses_readouts_of_each_layer(store_uri):
    """Each read-out is applied to every layer's vectors before they are set side by side (l2: per layer)."""
    rows, _, _, fold, _ = ss.labelled_rows(store_uri, "tiny", "clean")
    y = np.asarray(rows["label"].to_list(), dtype=object)
    ids = rows["utt_id"].to_list()
    M = {k: ss.layer_matrix(store_uri, "tiny", "clean", k, ids) for k in (1, 2)}
    views = {r: np.hstack([readout(M[1], r), readout(M[2], r)]) for r in ("none", "l2")}
    uar, per_fold, chosen = probe_fused(views, y, fold, Cs=[0.01, 1.0])
    got = layer_set_probe(store_uri, "tiny", [1, 2], "clean", Cs=[0.01, 1.0], readouts=["none", "l2", "none"])
    assert got["readouts"] == ["none", "l2"] and got["uar"] == pytest.approx(uar)
    assert got["fold_uar"] == pytest.approx([per_fold[f] for f in range(10)])
    assert got["fold_c"] == [chosen[f] for f in range(10)]
    with pytest.raises(ValueError, match=r"unknown: \['pca'\]"):
        layer_set_probe(store_uri, "tiny", [1, 2], "clean", readouts=["none", "pca"])


def test_layer_set_probe_stacks_the_layers(store_uri):
    rows, _, _, fold, _ = ss.labelled_rows(store_uri, "tiny", "clean")
    y = np.asarray(rows["label"].to_list(), dtype=object)
    H = np.hstack([ss.layer_matrix(store_uri, "tiny", "clean", k, rows["utt_id"].to_list()) for k in (1, 2)])
    uar, per_fold, chosen = probe_nested(H, y, fold, Cs=[0.01, 1.0])
    got = layer_set_probe(store_uri, "tiny", [1, 2], "clean", Cs=[0.01, 1.0])
    assert got["fold_layers"] == [[1, 2]] * 10 and len(got["fold_uar"]) == 10
    assert got["uar"] == pytest.approx(uar)
    assert got["fold_uar"] == pytest.approx([per_fold[f] for f in sorted(per_fold)])
    assert got["fold_c"] == [{"none": chosen[f]} for f in sorted(chosen)] and got["readouts"] == ["none"]
    assert {c["none"] for c in got["fold_c"]} <= {0.01, 1.0}


def test_layer_set_probe_reads_each_folds_own_layers(store_uri):
    """{fold: layers}: each outer fold's C choice and fit see only its own layers' vectors."""
    rows, _, _, fold, _ = ss.labelled_rows(store_uri, "tiny", "clean")
    y = np.asarray(rows["label"].to_list(), dtype=object)
    ids = rows["utt_id"].to_list()
    per_fold = {f: ([0] if f % 2 else [1, 2]) for f in range(10)}
    got = layer_set_probe(store_uri, "tiny", per_fold, "clean", Cs=[0.01, 1.0])
    assert got["fold_layers"] == [per_fold[f] for f in range(10)]
    H = {f: np.hstack([ss.layer_matrix(store_uri, "tiny", "clean", k, ids) for k in v]) for f, v in per_fold.items()}
    for f in (0, 1):
        alone = probe_nested(H[f], y, fold, Cs=[0.01, 1.0])
        assert got["fold_uar"][f] == pytest.approx(alone[1][f]) and got["fold_c"][f] == {"none": alone[2][f]}
    with pytest.raises(ValueError, match=r"no layers given for folds \[9\]"):
        layer_set_probe(store_uri, "tiny", {f: [0] for f in range(9)}, "clean", Cs=[1.0])


def test_saliency_job_probes_a_layer_set(store_uri, tmp_path, capsys):
    job = load_job("saliency")
    copy = str(tmp_path / "store")
    shutil.copytree(store_uri, copy)
    result = job.main(["--store", copy, "--model", "tiny", "--probe", "--no-mis", "--folds", "3",
                       "--plot", str(tmp_path / "p.png"), "--probe-layers", "1,2", "--probe-c", "0.1,1"])
    out = capsys.readouterr().out
    sp = result["set_probe"]
    assert sp["fold_layers"] == [[1, 2]] * 3 and len(sp["fold_uar"]) == 3
    assert {c["none"] for c in sp["fold_c"]} <= {0.1, 1.0}
    assert f"probe on layers 1+2 (C per outer fold from [0.1, 1.0]" in out and f"UAR {sp['uar']:.4f}" in out
    assert [line for line in out.strip().splitlines() if not line.startswith("fold plans: ")][-2].startswith("spearman: ")
    # auto:2 = each fold's 2 best layers of the layer_rank the job has just written (its training speakers)
    result = job.main(["--store", copy, "--model", "tiny", "--probe", "--no-mis", "--folds", "3",
                       "--plot", str(tmp_path / "p.png"), "--probe-layers", "auto:2", "--probe-c", "0.1,1"])
    ranks = result["layer_choice"]  # the lda_inner rows the job wrote for these 3 folds
    want = [sorted(ranks.filter((pl.col("fold") == f) & (pl.col("layer_rank") < 2))["layer"].to_list()) for f in range(3)]
    assert result["set_probe"]["fold_layers"] == want
    assert "probe on each fold's 2 best layers (layer_rank (lda_inner" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        job.main(["--store", copy, "--model", "tiny", "--probe-layers", "1,2"])
    # several read-outs: one probe each, fused; the C of each per fold
    result = job.main(["--store", copy, "--model", "tiny", "--probe", "--no-mis", "--folds", "3",
                       "--plot", str(tmp_path / "p.png"), "--probe-layers", "1,2", "--probe-c", "0.1,1",
                       "--probe-readout", "none,ssqrt"])
    out = capsys.readouterr().out
    sp = result["set_probe"]
    assert sp["readouts"] == ["none", "ssqrt"] and all(set(c) == {"none", "ssqrt"} for c in sp["fold_c"])
    assert "probe on layers 1+2 (read-outs none+ssqrt fused, C per outer fold" in out
    with pytest.raises(SystemExit):
        job.main(["--store", copy, "--model", "tiny", "--probe", "--probe-layers", "1,2", "--probe-readout", "l1"])
    assert "--probe-readout: expected a comma-separated list among none,l2,ssqrt, got 'l1'" in capsys.readouterr().err
