"""The store's own guarantees on the bucket (tests/store runs them on disk): compaction keeps superseded files for
the grace period, resume bookkeeping drops partial and duplicate rows, exactly one of racing creators wins, a lease
has one holder, and option drift is refused."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from datetime import timedelta

import pyarrow as pa
import pytest
from s3util import experiment, no_aws_env
from store_checks import check_compaction_grace, rows

from ray_ser.store.core import Store
from ray_ser.store.lease import Lease, LeaseHeld


@pytest.fixture
def store(rgw):
    return Store(rgw.uri("unit", uuid.uuid4().hex[:8]), rgw.storage_options())


@pytest.mark.parametrize(("keep", "old_reader_survives"), [(None, True), (timedelta(0), False)])
def test_compaction_keeps_superseded_files_for_readers(store, keep, old_reader_survives):
    check_compaction_grace(store, keep, old_reader_survives)


def test_resume_bookkeeping_finds_partial_and_duplicate_rows(store):
    table = store.embeddings("m", dim=4, meta={})
    table.add(rows([(u, "clean", layer) for u in "ab" for layer in range(3)]))
    table.add(rows([("b", "clean", layer) for layer in range(3)]))  # b twice
    table.add(rows([("d", "clean", 0)]))  # d cut short
    scan = store.scan_keys("m", num_layers=3)
    assert scan.complete == {("a", "clean"), ("b", "clean")} and scan.partial == {("d", "clean")}
    assert store.delete_rows(table, scan.duplicates) == 3 and store.scan_keys("m", 3).duplicates == []


def test_of_racing_creators_exactly_one_wins(store):
    schema = pa.schema([("x", pa.int64())])
    won, barrier = [], threading.Barrier(4)

    def create(i: int) -> None:
        barrier.wait()
        won.append(store.create_exclusive("race", schema, pa.table({"x": [i]}, schema=schema)))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False, False, False, True]
    assert store.open("race").count_rows() == 1


def test_a_lease_has_one_holder(store):
    with Lease.acquire(store, "emb__m", "run-a", what="test"):
        with pytest.raises(LeaseHeld, match="run-a"):
            Lease.acquire(store, "emb__m", "run-b", what="test")
    with Lease.acquire(store, "emb__m", "run-b", what="test"):  # released: the next one takes it
        pass


def test_option_drift_is_refused_on_the_bucket(rgw, tiny_model_dir, tmp_path):
    config = experiment(tmp_path, rgw, tiny_model_dir, "drift", store=rgw.uri("stores", "drift"),
                        data={"limit": 6}, extract={"conditions": ["clean"]})

    def extract(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ray_ser.cli", "extract", "--config", str(config), *flags],
                              env=no_aws_env(), cwd=tmp_path, text=True, capture_output=True, timeout=900)

    first = extract()
    assert first.returncode == 0, first.stderr[-3000:]
    drifted = extract("--seed", "7")
    assert drifted.returncode != 0 and "other settings" in drifted.stdout + drifted.stderr, drifted.stderr[-3000:]
