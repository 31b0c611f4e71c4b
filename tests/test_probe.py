"""The per-layer linear probe, Spearman against the layer saliency, the PNG, and jobs/saliency.py --probe."""

from __future__ import annotations

import importlib.util
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from ray_ser import saliency_store as ss
from ray_ser.probe import layer_probe, plot_layers, spearman

from test_saliency_store import shared_store

JOBS = Path(__file__).resolve().parent.parent / "jobs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_job(name: str):
    if str(JOBS) not in sys.path:
        sys.path.insert(0, str(JOBS))
    spec = importlib.util.spec_from_file_location(f"{name}_job", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert lines[-1].startswith("spearman: ")
    assert float(lines[-1].split(": ")[1]) == pytest.approx(result["spearman"], abs=1e-4)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert ss.read_saliency(copy, "tiny")["fold"].n_unique() == 4  # folds -1, 0, 1, 2
