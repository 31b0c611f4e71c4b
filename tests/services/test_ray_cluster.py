"""The two-node cluster fixture (services/ray_cluster.py): jobs reach the worker node, and losing it is survivable."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time

import pytest

from services.ray_cluster import submit

pytestmark = pytest.mark.cluster

WHERE = """
import os, socket
import ray

ray.init()

@ray.remote(resources={"worker": 1})
def where():
    return ray.get_runtime_context().get_node_id(), socket.gethostname(), os.getpid()

print("DRIVER", ray.get_runtime_context().get_node_id(), flush=True)
print("TASK", *ray.get(where.remote(), timeout=120), flush=True)
"""

# A driver that lives through the loss of the worker node: it waits for a line on stdin (the test has killed the
# worker by then), submits a task that needs the `worker` resource, reports that it stays pending, then waits for it.
SURVIVOR = """
import sys
import ray

ray.init(log_to_driver=False)

@ray.remote(resources={"worker": 1})
def where():
    return ray.get_runtime_context().get_node_id()

print("READY", ray.get_runtime_context().get_node_id(), flush=True)
sys.stdin.readline()
ref = where.remote()
ready, _ = ray.wait([ref], timeout=5)
print("RAN" if ready else "PENDING", flush=True)
print("DONE", ray.get(ref, timeout=150), flush=True)
"""


def test_job_task_runs_on_the_worker_node(two_node_cluster, tmp_path):
    cluster = two_node_cluster
    (tmp_path / "where.py").write_text(WHERE)
    job = submit(cluster, "--working-dir", str(tmp_path), "--", "python", "where.py", timeout=300)
    out = job.stdout + job.stderr
    assert job.returncode == 0 and "succeeded" in out, f"job failed:\n{out[-4000:]}"
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("DRIVER", "TASK"))}
    head, worker = cluster.head_node_id(), cluster.worker_node_id()
    assert head != worker
    assert lines["DRIVER"] == [head]  # the job's driver runs on the head (where the job agent is)
    task_node, _hostname, _pid = lines["TASK"]
    assert task_node == worker


def _lines(stream) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            q.put(line.strip())
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _expect(q: queue.Queue, word: str, timeout: float, log) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = q.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            pytest.fail(f"no {word!r} from the driver within {timeout:.0f}s; see {log}")
        if line is None:
            pytest.fail(f"the driver exited before {word!r}; see {log}")
        if line.split()[:1] == [word]:
            return line.split()[1:]
        if line.split()[:1] == ["RAN"]:
            pytest.fail("a task needing `worker` ran while no worker node was alive")


def test_lost_worker_node_then_a_new_one_runs_the_pending_task(two_node_cluster, tmp_path):
    cluster = two_node_cluster
    old_worker, head = cluster.worker_node_id(), cluster.head_node_id()
    (tmp_path / "survivor.py").write_text(SURVIVOR)
    log = tmp_path / "driver.log"
    with open(log, "w") as err:
        driver = subprocess.Popen([sys.executable, str(tmp_path / "survivor.py")], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=err, text=True, env=cluster.env())
    try:
        out = _lines(driver.stdout)
        assert _expect(out, "READY", 120, log) == [head]  # a driver on this host connects to the head's raylet

        cluster.kill_worker()
        t = time.monotonic()
        alive = cluster.wait_nodes(1, timeout=60)
        print(f"worker node declared dead after {time.monotonic() - t:.1f}s")
        assert [n["node_id"] for n in alive] == [head]

        driver.stdin.write("go\n")
        driver.stdin.flush()
        _expect(out, "PENDING", 60, log)  # infeasible now: no alive node has `worker`

        new_worker = cluster.start_worker()
        assert new_worker not in (old_worker, head)
        assert _expect(out, "DONE", 150, log) == [new_worker]
        assert driver.wait(timeout=60) == 0
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
