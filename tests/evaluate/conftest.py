"""Synthetic predictions with known structure (ray_ser.evaluate.synthetic): 10 speakers (5 male, 5 female),
4 conditions, 7 classes, 4 utterances per class and speaker, A/V predictions, grader PDFs."""

from __future__ import annotations

import polars as pl
import pytest

from ray_ser.evaluate.synthetic import CATEGORIES, synthetic_predictions


@pytest.fixture(scope="session")
def categories() -> list[str]:
    return list(CATEGORIES)


@pytest.fixture(scope="session")
def predictions() -> pl.DataFrame:
    return synthetic_predictions(n_speakers=10, n_per_class=4, seed=0)


@pytest.fixture(scope="session")
def metrics(predictions, categories) -> pl.DataFrame:
    from ray_ser.evaluate.tables import metric_table

    return metric_table(predictions, categories, by=["intensity"], n_boot=300, seed=0)
