"""The matrix's probe on a synthetic store of three corpora (tests/multicorpus.py): the zero-shot probe's
predictions that a matrix cell races against, and the probe bar's matrix rows built from them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from multicorpus import MODEL, build_multi_store

from ray_ser.store import Store

FOUR = ["neutral", "happy", "sad", "angry"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return build_multi_store(tmp_path_factory.mktemp("xcp"))


def test_zero_shot_probe_scores_every_held_out_utterance_in_every_condition(store):
    from ray_ser.evaluate.corpus_probe import zero_shot_probe
    from ray_ser.train.config import TrainConfig
    from ray_ser.train.plan import run_rows

    cfg = TrainConfig(store=store, model=MODEL, corpora=["alpha", "beta"], label_set=FOUR, scaler="per-corpus",
                      folds="3")
    rows = run_rows(cfg.model_copy(update={"corpora": ["gamma"]}), Store(cfg.store))
    test = {u: "gamma" for u in rows}
    p = zero_shot_probe(Store(store), cfg, test, ["clean", "5dB"], FOUR, layers=[0, 1], Cs=[0.1, 1.0])
    assert p.height == 2 * len(test) and set(p["fold"]) == {-1}
    probs = np.array(p["probs"].to_list())
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    clean = p.filter(pl.col("condition") == "clean")
    y = np.array([FOUR.index(rows[u]["label"]) for u in clean["utt_id"]])
    hit = np.array(clean["probs"].to_list()).argmax(1) == y
    assert hit.mean() > 0.5  # chance is 0.25: the per-corpus scaling undoes the planted shift


def test_loco_probe_rows_are_matrix_cells(store):
    from ray_ser.evaluate.corpus_probe import loco_probe
    from ray_ser.evaluate.matrix import MATRIX_SCHEMA

    m = loco_probe(Store(store), MODEL, ["alpha", "beta", "gamma"], FOUR, n_layers=2, n_boot=20, Cs=[0.1, 1.0])
    assert m.schema == pl.Schema(MATRIX_SCHEMA)
    uar = m.filter(pl.col("metric") == "uar")
    assert sorted(uar["test_corpus"]) == ["alpha", "beta", "gamma"] and set(uar["protocol"]) == {"zero-shot"}
    assert (uar["value"] > 0.4).all()
