"""Store leases: one holder at a time across processes, heartbeats, takeover of dead or silent holders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import lance
import pyarrow as pa
import pytest
from racing import race

from ray_ser.store import lease as lease_mod
from ray_ser.store.core import Store
from ray_ser.store.lease import FREE, SCHEMA, Lease, LeaseHeld, LeaseLost


def test_second_taker_is_refused_with_the_holder_named(tmp_path):
    store = Store(str(tmp_path))
    with Lease.acquire(store, "emb__m", "run-a", what="extraction of m", ttl=30):
        with pytest.raises(LeaseHeld, match=r"lease__emb__m .* held by run run-a \(extraction of m; host .* pid "
                                            rf"{os.getpid()}"):
            Lease.acquire(store, "emb__m", "run-b", ttl=30)
    with Lease.acquire(store, "emb__m", "run-b", ttl=30) as b:  # released: free for the next run
        assert b.token == 2  # 0: created free, 1: run-a, 2: run-b


def test_heartbeat_keeps_it_and_a_silent_holder_loses_it(tmp_path):
    store = Store(str(tmp_path))
    a = Lease.acquire(store, "t", "run-a", ttl=1.0)
    time.sleep(1.6)  # beyond the ttl, but the heartbeat thread refreshed it
    with pytest.raises(LeaseHeld):
        Lease.acquire(store, "t", "run-b", ttl=1.0)
    a._stop.set()  # a holder that hangs: no more heartbeats
    a._thread.join()
    time.sleep(1.2)
    b = Lease.acquire(store, "t", "run-b", ttl=1.0)
    with pytest.raises(LeaseLost):
        a.beat()
    b.release()


def test_waiting_taker_gets_it_when_released(tmp_path):
    store = Store(str(tmp_path))
    a = Lease.acquire(store, "t", "run-a", ttl=30)
    t0 = time.time()
    timer = __import__("threading").Timer(1.0, a.release)
    timer.start()
    b = Lease.acquire(store, "t", "run-b", ttl=30, wait=20, poll=0.2)
    assert 0.9 < time.time() - t0 < 10
    b.release()


def test_lease_of_an_exited_process_is_taken_at_once(tmp_path):
    code = f"from ray_ser.store.core import Store; from ray_ser.store.lease import Lease; import os\n" \
           f"Lease.acquire(Store({str(tmp_path)!r}), 't', 'dead', ttl=600); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    t0 = time.time()
    Lease.acquire(Store(str(tmp_path)), "t", "alive", ttl=600).release()  # without waiting 600 s
    assert time.time() - t0 < 5


RACER = textwrap.dedent("""
    import json
    from ray_ser.store.lease import Lease, LeaseHeld
    from ray_ser.store.core import Store
    store = Store(store_path)
    held, stop = [], time.time() + 2
    while time.time() < stop:
        try:
            lease = Lease.acquire(store, "t", me, ttl=30)
        except LeaseHeld:
            time.sleep(0.02)
            continue
        t0 = time.time()
        time.sleep(0.1)
        held.append((t0, time.time()))
        lease.release()
    json.dump(held, open(os.path.join(folder, me + ".json"), "w"))
""")


def test_racing_processes_never_hold_it_together(tmp_path):
    """Four processes grab the lease as fast as they can for 2 s: the holding intervals never overlap, and the
    lease table was created once (a second create would have reset a held lease to free)."""
    race(tmp_path, RACER, 4)
    intervals = sorted(iv for i in range(4) for iv in json.load(open(tmp_path / f"p{i}.json")))
    assert len(intervals) >= 4
    for (_, end), (begin, _) in zip(intervals, intervals[1:]):
        assert begin >= end, "two processes held the lease at once"
    table = lance.dataset(Store(str(tmp_path / "store")).table_uri("lease__t"))
    ops = [type(tx.operation).__name__ for tx in table.get_transactions(table.version)]
    assert ops.count("Overwrite") == 1, ops


CREATOR = textwrap.dedent("""
    import pyarrow as pa
    from ray_ser.store.lease import FREE, SCHEMA
    from ray_ser.store.core import Store
    store = Store(store_path)
    row = {"name": "t", "holder": FREE, "what": me, "host": "", "pid": 0, "pidns": "", "acquired": 0.0,
           "heartbeat": 0.0, "token": 0}
    created = store.create_exclusive("lease__t", SCHEMA, pa.Table.from_pylist([row], schema=SCHEMA))
    open(os.path.join(folder, me + (".created" if created else ".refused")), "w")
""")


def test_racing_creators_create_it_exactly_once(tmp_path):
    race(tmp_path, CREATOR, 6)
    created = sorted(p.stem for p in tmp_path.glob("p*.created"))
    assert len(created) == 1 and len(list(tmp_path.glob("p*.refused"))) == 5
    ds = lance.dataset(Store(str(tmp_path / "store")).table_uri("lease__t"))
    assert ds.version == 1 and ds.to_table().to_pylist()[0]["what"] == created[0]


def _free_row() -> dict:
    return {"name": "t", "holder": FREE, "what": "", "host": "", "pid": 0, "pidns": "", "acquired": 0.0,
            "heartbeat": 0.0, "token": 0}


def test_a_late_creator_never_frees_a_held_lease(tmp_path):
    store = Store(str(tmp_path))
    with Lease.acquire(store, "t", "run-a", ttl=30) as a:
        free = pa.Table.from_pylist([_free_row()], schema=SCHEMA)
        assert not store.create_exclusive("lease__t", SCHEMA, free)  # what a creator that lost the race does
        assert Lease._read(store, "lease__t").holder == "run-a"
        a.check()
        with pytest.raises(LeaseHeld):
            Lease.acquire(store, "t", "run-b", ttl=30)


def test_a_table_folder_without_a_manifest_is_created_over(tmp_path):
    """A creator that died between writing the row and committing it leaves a folder that is no table."""
    store = Store(str(tmp_path))
    uri = store.table_uri("lease__t")
    lance.fragment.write_fragments(pa.Table.from_pylist([_free_row()], schema=SCHEMA), uri, schema=SCHEMA)
    t0 = time.time()
    with Lease.acquire(store, "t", "run-a", ttl=30) as a:
        assert a.token == 1 and time.time() - t0 < 10


def test_a_lease_table_that_stays_unreadable_is_an_error_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_mod, "UNREADABLE_S", 0.5)
    store = Store(str(tmp_path))
    store.db.create_table("lease__t", data=pa.Table.from_pylist([_free_row(), _free_row()], schema=SCHEMA))
    with pytest.raises(RuntimeError, match=r"lease__t\.lance can be neither read nor created .* holds 2 rows"):
        Lease.acquire(store, "t", "run-a", ttl=30)


def test_check_reads_the_row_between_heartbeats(tmp_path):
    store = Store(str(tmp_path))
    a = Lease.acquire(store, "t", "run-a", ttl=600)  # next heartbeat in 150 s: only the row tells
    a.check()
    store.open("lease__t").update(where="holder = 'run-a'", values={"holder": "run-b", "token": a.token + 1})
    with pytest.raises(LeaseLost, match=r"now held by run-b .*this run stops before writing more"):
        a.check()
    a.release()
    assert Lease._read(store, "lease__t").holder == "run-b"  # releasing a lost lease leaves the new holder
