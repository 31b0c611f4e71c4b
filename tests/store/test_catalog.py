"""The table catalog: SQL filters, one-commit replacement of a scope, fold ids checked on read."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest
from racing import race

from ray_ser.store import catalog
from ray_ser.store.core import Store


def centroid_rows(fold_id: str, fold: int, k: int, value: float) -> pa.Table:
    return pa.table({
        "fold_id": [fold_id] * k, "fold": pa.array([fold] * k, pa.int32()), "layer": pa.array([1] * k, pa.int32()),
        "k": pa.array([k] * k, pa.int32()), "cluster": pa.array(range(k), pa.int32()),
        "centroid": [[value, value]] * k, "condition": ["clean"] * k, "seed": [0] * k, "n_train": [10] * k,
    })


def test_where():
    assert catalog.where(layer=3, condition="o'clock") == "layer = 3 AND condition = 'o''clock'"
    assert catalog.where(fold=[2, 0], model=None) == "fold IN (0, 2)"
    assert catalog.where(fold=[]) == "false" and catalog.where() == "true"


def test_replace_is_scoped_and_versions_once(tmp_path):
    store = Store(str(tmp_path / "s"))
    catalog.replace(store, catalog.CENTROIDS, "m", centroid_rows("a", 0, 3, 1.0), {"fold_id": "a", "fold": 0, "layer": 1, "k": 3})
    catalog.replace(store, catalog.CENTROIDS, "m", centroid_rows("a", 1, 3, 2.0), {"fold_id": "a", "fold": 1, "layer": 1, "k": 3})
    table = store.open(catalog.CENTROIDS.name("m"))
    version = table.version
    # a smaller k=3 refit of fold 0 with other values: fold 1 untouched, fold 0 replaced, in one new version
    catalog.replace(store, catalog.CENTROIDS, "m", centroid_rows("a", 0, 3, 5.0).slice(0, 2),
                    {"fold_id": "a", "fold": 0, "layer": 1, "k": 3})
    assert store.open(catalog.CENTROIDS.name("m")).version == version + 1
    t = catalog.read(store, catalog.CENTROIDS, "m", fold_id="a", fold=0)
    assert t.num_rows == 2 and {c[0] for c in t.column("centroid").to_pylist()} == {5.0}
    assert catalog.read(store, catalog.CENTROIDS, "m", fold=1).num_rows == 3
    with pytest.raises(ValueError, match="outside"):
        catalog.replace(store, catalog.CENTROIDS, "m", centroid_rows("a", 1, 3, 0.0), {"fold_id": "a", "fold": 0, "layer": 1, "k": 3})
    with pytest.raises(ValueError, match="scope value"):
        catalog.replace(store, catalog.CENTROIDS, "m", centroid_rows("a", 1, 3, 0.0), {"fold_id": "a"})


def test_read_refuses_rows_of_another_fold_assignment(tmp_path):
    store = Store(str(tmp_path / "s"))
    catalog.replace(store, catalog.CENTROIDS, "m", centroid_rows("a", 0, 2, 1.0), {"fold_id": "a", "fold": 0, "layer": 1, "k": 2})
    assert catalog.read(store, catalog.CENTROIDS, "m", columns=["cluster"], fold_id="a", fold=0).column_names == ["cluster"]
    with pytest.raises(ValueError, match="fold assignment a, not b"):
        catalog.read(store, catalog.CENTROIDS, "m", fold_id="b", fold=0)
    with pytest.raises(KeyError, match="jobs/frames.py"):
        catalog.read(store, catalog.FRAME_CLUSTERS, "m")


REPLACER = """
import sys
sys.path[:0] = [{tests!r}, {helpers!r}]  # this test module, and tests/ for the helpers it imports
from ray_ser.store import catalog
from test_catalog import centroid_rows
fold = int(me[1:])
catalog.replace(store_path, catalog.CENTROIDS, "m", centroid_rows("a", fold, 3, float(fold)),
                {{"fold_id": "a", "fold": fold, "layer": 1, "k": 3}})
"""


def test_folds_replaced_at_once_into_a_new_table_all_stay(tmp_path):
    """Six k-means jobs (one per fold) write their centroids into a table none of them found: every fold's
    rows survive (a racing create must not overwrite the fold written before it)."""
    for trial in range(2):  # before the fix, 1 trial in 4 lost a fold and others crashed a writer
        race(tmp_path / f"t{trial}", REPLACER.format(tests=os.path.dirname(__file__),
                                                     helpers=os.path.dirname(os.path.dirname(__file__))), 6)
        t = catalog.read(str(tmp_path / f"t{trial}" / "store"), catalog.CENTROIDS, "m", fold_id="a")
        assert sorted(t.column("fold").to_pylist()) == sorted(list(range(6)) * 3), f"trial {trial}"
