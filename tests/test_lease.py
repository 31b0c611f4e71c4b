"""Store leases: one holder at a time across processes, heartbeats, takeover of dead or silent holders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from ray_ser.lease import Lease, LeaseHeld, LeaseLost
from ray_ser.store import Store


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
    code = f"from ray_ser.store import Store; from ray_ser.lease import Lease; import os\n" \
           f"Lease.acquire(Store({str(tmp_path)!r}), 't', 'dead', ttl=600); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    t0 = time.time()
    Lease.acquire(Store(str(tmp_path)), "t", "alive", ttl=600).release()  # without waiting 600 s
    assert time.time() - t0 < 5


RACER = textwrap.dedent("""
    import json, os, sys, time
    from ray_ser.lease import Lease, LeaseHeld
    from ray_ser.store import Store
    store, me, folder = Store(sys.argv[1]), sys.argv[2], sys.argv[3]
    open(os.path.join(folder, me + ".ready"), "w").close()
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.001)
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
    """Four processes grab the lease as fast as they can for 2 s: the holding intervals never overlap."""
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "store"), f"p{i}", str(tmp_path)])
             for i in range(4)]
    deadline = time.time() + 120
    while not all((tmp_path / f"p{i}.ready").exists() for i in range(4)):  # all imported: start together
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    (tmp_path / "go").touch()
    assert all(p.wait(timeout=120) == 0 for p in procs)
    intervals = sorted(iv for i in range(4) for iv in json.load(open(tmp_path / f"p{i}.json")))
    assert len(intervals) >= 4
    for (_, end), (begin, _) in zip(intervals, intervals[1:]):
        assert begin >= end, "two processes held the lease at once"
