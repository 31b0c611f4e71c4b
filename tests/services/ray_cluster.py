"""A two-node Ray cluster on this one machine, started the way users start one: `ray start --head --block` and
`ray start --address=<gcs> --block`, each in its own process group, so a test can stop this cluster and no other
Ray on the host (never `ray stop`), and can SIGKILL the worker node as if its machine were lost.

    cluster = start_cluster(workdir)      # or the module-scoped `two_node_cluster` fixture
    submit(cluster, "--working-dir", d, "--", "python", "script.py")
    cluster.kill_worker(); cluster.wait_nodes(1); cluster.start_worker()
    cluster.stop()

Pitfalls this handles:
- auth: `RAY_AUTH_MODE=token` goes to both nodes and to every CLI / driver (`Cluster.env()`); a process without it
  talks to a token-auth cluster without a token and loops on InvalidAuthToken. The token is ~/.ray/auth_token.
- temp dir: each node gets its own short `--temp-dir` under /tmp (unix socket paths must stay under ~107 chars, so
  not under pytest's long tmp_path). Without `--temp-dir` a worker node uses the head's temp dir (Ray 2.60 reads it
  from the head's node info); with it, each node has its own session dir, logs and sockets, and `ray start` writes
  its `ray_current_cluster` there, not into /tmp/ray.
- ports: every port with a fixed default (GCS 6379, dashboard 8265, dashboard agent HTTP 52365, client server
  10001) is a free one, on both nodes (the agent port on the worker too: two nodes on one host would clash). The
  others (node manager, object manager, agent gRPC, runtime-env agent, metrics) Ray already picks at random.
- process groups: `ray start` runs in a new session (start_new_session); GCS, raylet, dashboard and agents share its
  process group, but the raylet puts each Ray worker process in a group of its own (same session), so a lost node is
  simulated by SIGKILLing every process of the session, not just the group (else its workers linger ~4 s).
- node addresses: both nodes get `--node-ip-address=127.0.0.1`; a driver started on this host connects to the head
  node's raylet (Ray prefers the head when several raylets share a host), so killing the worker leaves it alive.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
START_TIMEOUT = 180.0
# What the nodes (not the drivers) run with. On SIGTERM, `ray start --block` first asks the GCS to drain its node,
# for up to 30 s (Ray 2.60); with the whole group signalled at once the GCS is already gone and every stop would sit
# out those 30 s, so no drain. The GCS declares a node dead after `failure_threshold` failed health checks every
# `period`: 1 s x 5 finds a SIGKILLed worker in ~6 s instead of ~17 s (a refused connection fails at once; the 10 s
# RPC timeout, for a hung node, stays). The job's working-dir package, uploaded by the first `ray job submit` and
# reused by every later one, is pinned in the GCS for 600 s by default: a module running longer under load had a
# job fail with "Failed to download runtime_env file package", so it is pinned for an hour.
NODE_ENV = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "5", "RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S": "3600"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The cluster uses Ray's token auth; the CLI reads the token ~/.ray/auth_token. PATH starts with this
    interpreter's bin, as in an activated venv, so a job's `python` is the one with ray_ser's deps."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def ray_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = cli_env(**(env or {}))
    return subprocess.run([str(BIN / "ray"), *args], check=False, capture_output=True, text=True, env=env,
                          timeout=timeout)


# One short-lived process asks the GCS for its nodes: no driver, no in-process Ray (this process may run another
# Ray instance, and its auth mode is fixed when Ray is imported).
_NODES = """
import json, sys
from ray._raylet import GcsClient
from ray.core.generated.gcs_pb2 import GcsNodeInfo
infos = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=20)
print(json.dumps([{"node_id": i.node_id.hex(), "alive": i.state == GcsNodeInfo.GcsNodeState.ALIVE,
                   "is_head": i.is_head_node, "temp_dir": i.temp_dir, "address": i.node_manager_address,
                   "resources": dict(i.resources_total)} for i in infos.values()]))
"""


@dataclass
class Cluster:
    """A running head + worker node. `gcs` is the address for `ray.init` / RAY_ADDRESS, `dashboard` the one for
    `ray job submit --address`."""

    workdir: Path
    gcs: str
    dashboard: str
    port: int
    agent_port: int
    head: subprocess.Popen
    head_temp: Path
    object_store_memory: int | None = None
    worker: subprocess.Popen | None = None
    worker_temp: Path | None = None
    temp_dirs: list[Path] = field(default_factory=list)
    _logs: list = field(default_factory=list)
    _starts: int = 0

    # -- environment -----------------------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        """The env a driver or the `ray` CLI needs: token auth, the venv first on PATH, RAY_ADDRESS (the GCS, for
        `ray.init()`) and RAY_API_SERVER_ADDRESS (the dashboard, for `ray job ...` without --address)."""
        return cli_env(RAY_ADDRESS=self.gcs, RAY_API_SERVER_ADDRESS=self.dashboard, **extra)

    # -- nodes -----------------------------------------------------------------------------------------------
    def nodes(self, alive_only: bool = True) -> list[dict]:
        """The GCS's nodes: node_id, alive, is_head, temp_dir, address, resources."""
        out = subprocess.run([sys.executable, "-c", _NODES, self.gcs], check=False, capture_output=True,
                             text=True, env=self.env(), timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"could not list the nodes of {self.gcs}:\n{out.stderr[-2000:]}")
        nodes = json.loads(out.stdout.strip().splitlines()[-1])
        return [n for n in nodes if n["alive"]] if alive_only else nodes

    def wait_nodes(self, count: int, timeout: float = 120, check=None) -> list[dict]:
        """Poll until exactly `count` nodes are alive (and `check(nodes)` holds); TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        nodes: list[dict] = []
        while True:
            try:
                nodes = self.nodes()
            except (RuntimeError, subprocess.TimeoutExpired, ValueError):
                nodes = []
            if len(nodes) == count and (check is None or check(nodes)):
                return nodes
            if self.head.poll() is not None:
                raise RuntimeError(f"the head node exited ({self.head.returncode}); see {self.workdir}/head.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} alive nodes expected within {timeout:.0f}s, have {nodes}")
            time.sleep(1)

    def head_node_id(self) -> str:
        return next(n["node_id"] for n in self.nodes() if n["is_head"])

    def worker_node_id(self) -> str | None:
        """The node id of the running worker node (its raylet registered with our worker temp dir), or None."""
        return next((n["node_id"] for n in self.nodes() if not n["is_head"] and self._is_ours(n)), None)

    def _is_ours(self, node: dict) -> bool:
        return self.worker_temp is not None and Path(node["temp_dir"]) == self.worker_temp

    # -- worker node -----------------------------------------------------------------------------------------
    def start_worker(self, timeout: float = START_TIMEOUT) -> str:
        """Start a fresh worker node (new temp dir, new ports, its own process group) and wait until the GCS has it
        alive; returns its node id."""
        if self.worker is not None and self.worker.poll() is None:
            raise RuntimeError("the worker node is still running: kill_worker() first")
        self._starts += 1
        self.worker_temp = Path(tempfile.mkdtemp(prefix="rsw", dir="/tmp"))
        self.temp_dirs.append(self.worker_temp)
        log = open(self.workdir / f"worker{self._starts}.log", "w")  # noqa: SIM115 (closed by stop())
        self._logs.append(log)
        self.worker = subprocess.Popen(
            [str(BIN / "ray"), "start", f"--address={self.gcs}", "--block", "--node-ip-address=127.0.0.1",
             f"--temp-dir={self.worker_temp}", f"--dashboard-agent-listen-port={free_port()}",
             "--num-cpus=1", '--resources={"worker": 1}', *self._store_args(), "--disable-usage-stats"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=cli_env(**NODE_ENV),
        )
        nodes = self.wait_nodes(2, timeout, check=lambda ns: any(self._is_ours(n) for n in ns))
        return next(n["node_id"] for n in nodes if self._is_ours(n))

    def kill_worker(self) -> None:
        """SIGKILL every process of the worker node (`ray start`, raylet, agents, its Ray workers: its session) at
        once: a lost machine. The GCS notices by its health checks (~5 s); `wait_nodes(1)` waits for that."""
        if self.worker is None:
            return
        _kill_session(self.worker, signal.SIGKILL)
        self.worker.wait()
        self.worker = None

    # -- teardown / measuring --------------------------------------------------------------------------------
    def stop(self, keep_temp: bool = False) -> None:
        """Stop both nodes (SIGTERM to each `ray start` group, then SIGKILL to all of its session), drop
        /tmp/ray/ray_current_cluster if it is ours, remove the temp dirs (unless keep_temp: Ray's own logs are under
        <temp>/session_latest/logs)."""
        for proc in (self.worker, self.head):
            if proc is not None:
                _stop_group(proc)
        self.worker = None
        for log in self._logs:
            log.close()
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start` without --temp-dir records its address here
        try:
            if current.read_text().strip().endswith(f":{self.port}"):
                current.unlink()
        except OSError:
            pass
        if not keep_temp:
            for d in self.temp_dirs:
                shutil.rmtree(d, ignore_errors=True)

    def rss(self, pss: bool = False) -> dict[str, int]:
        """Resident memory in bytes of each node's processes (its session: ray start, GCS, raylet, dashboard, agents,
        Ray workers), {"head": .., "worker": ..}. RSS counts a page shared by N processes N times (the dashboard's
        forked modules share most of theirs); pss=True shares it out instead (PSS, /proc/PID/smaps_rollup)."""
        nodes = {"head": self.head} if self.worker is None else {"head": self.head, "worker": self.worker}
        out = dict.fromkeys(nodes, 0)
        page = os.sysconf("SC_PAGE_SIZE")
        for name, proc in nodes.items():
            for pid in _session(proc.pid):
                try:
                    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
                    out[name] += _pss(pid) if pss else rss
                except (OSError, IndexError, ValueError):
                    continue
        return out

    def _store_args(self) -> list[str]:
        return [] if self.object_store_memory is None else [f"--object-store-memory={self.object_store_memory}"]


def _pss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def _session(sid: int) -> list[int]:
    """The pids of session `sid` (a `ray start` we started with start_new_session: its pid is the session id, and
    Linux reuses no pid while a session of that id has members)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:  # after "pid (comm)": state ppid pgrp sid
                pids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def _kill_session(proc: subprocess.Popen, sig: int) -> None:
    for pid in [proc.pid, *_session(proc.pid)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the `ray start` group (it stops its children), then SIGKILL all of the session that is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _kill_session(proc, signal.SIGKILL)
    proc.wait()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def start_cluster(workdir: Path, timeout: float = START_TIMEOUT, object_store_memory: int | None = 256 * 2**20,
                  ) -> Cluster:
    """Start the head (`{"head": 1}`, 1 CPU, dashboard + job agent) and one worker node (`{"worker": 1}`, 1 CPU)
    and wait until the GCS has both alive and the head's job agent answers. `workdir` gets the `ray start` logs."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port, dash, agent, client = free_port(), free_port(), free_port(), free_port()
    head_temp = Path(tempfile.mkdtemp(prefix="rsh", dir="/tmp"))
    log = open(workdir / "head.log", "w")  # noqa: SIM115 (closed by Cluster.stop())
    store = [] if object_store_memory is None else [f"--object-store-memory={object_store_memory}"]
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         f"--temp-dir={head_temp}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
         # the job agent's HTTP port (default 52365) and the client port (10001) are fixed: another Ray cluster on
         # this machine would hold them and every `ray job submit` would get "No available agent"
         f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
         "--num-cpus=1", '--resources={"head": 1}', *store, "--include-dashboard=true", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=cli_env(**NODE_ENV),
    )
    cluster = Cluster(workdir=workdir, gcs=f"127.0.0.1:{port}", dashboard=f"http://127.0.0.1:{dash}", port=port,
                      agent_port=agent, head=head, head_temp=head_temp, object_store_memory=object_store_memory,
                      temp_dirs=[head_temp], _logs=[log])
    try:
        deadline = time.monotonic() + timeout
        cluster.wait_nodes(1, timeout)
        cluster.start_worker(max(deadline - time.monotonic(), 1))
        # the head's dashboard agent runs the job agent that `ray job submit` goes to; /api/healthz needs no token
        while not (_http_ok(f"http://127.0.0.1:{agent}/api/healthz")
                   and ray_cli("job", "list", "--address", cluster.dashboard, timeout=60).returncode == 0):
            if head.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"the head's dashboard / job agent did not answer; see {log.name}")
            time.sleep(1)
    except BaseException:
        cluster.stop(keep_temp=True)
        raise
    return cluster


def submit(cluster: Cluster | str, *args: str, attempts: int = 20, timeout: float = 600) -> subprocess.CompletedProcess:
    """`ray job submit --address <dashboard> ARGS`, retried while a fresh cluster's job agent is still starting.
    `cluster` is a Cluster or a dashboard URL."""
    address = cluster.dashboard if isinstance(cluster, Cluster) else cluster
    for _ in range(attempts):
        job = ray_cli("job", "submit", "--address", address, *args, timeout=timeout)
        if "No available agent" not in job.stdout + job.stderr:
            return job
        time.sleep(3)
    return job


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    """A head node (resource `head`) and a worker node (resource `worker`), 1 CPU each, for the module."""
    workdir = tmp_path_factory.mktemp("ray2")
    try:
        cluster = start_cluster(workdir)
    except (TimeoutError, RuntimeError) as e:
        pytest.fail(f"the two-node Ray cluster did not come up: {e}; logs in {workdir}")
    try:
        yield cluster
    finally:
        cluster.stop()
