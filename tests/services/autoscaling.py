"""Ray's own autoscaling test cluster on this one machine: a head without GPUs that runs Ray's autoscaler with the
fake multi-node provider (`RAY_FAKE_CLUSTER=1`), and a `gpu_worker` node type ({CPU: 1, GPU: 1}, 0 to 1 nodes) that
the autoscaler starts as another raylet here when a request asks for a GPU, and stops after its idle timeout.

    cluster = start_autoscaling_cluster(workdir)    # or the module-scoped `autoscaling_cluster` fixture
    subprocess.run([...], env=cluster.env())        # a driver: RAY_ADDRESS, the token, the fake-GPU switch
    cluster.state()                                 # nodes (dead ones too) and actors, with their times, from the GCS
    cluster.stop()

`ray.cluster_utils.AutoscalingCluster` builds the same cluster, but its start and shutdown run `ray stop --force`
(every Ray on the host, other test runs' included) and it reads an example config that Ray 2.60's wheel lacks.
This starts the head as services/ray_cluster.py does: its own short temp dir, free ports, its own session (the
autoscaler's nodes start inside it, so stopping the session stops them), never `ray stop`.

- auth: its own token file in the temp dir (`RAY_AUTH_TOKEN_PATH`, `RAY_AUTH_MODE=token`) for the head, the nodes the
  autoscaler starts (they inherit the head's environment) and every driver and query (`env()`), so it needs no
  ~/.ray/auth_token and never touches one.
- GPUs: the fake nodes have a `GPU: 1` resource and no device; `RAY_SER_FAKE_GPUS=1` (ray_ser.cluster_resources,
  test-only) in the same environment makes the model actors and training workers there run on the CPU.
- speed: the autoscaler updates every second (`AUTOSCALER_UPDATE_INTERVAL_S=1`) and an idle node goes after
  `idle_timeout_minutes` (0.1: 6 s).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.ray_cluster import BIN, NODE_ENV, _stop_group, cli_env, free_port

GPU_TYPE = "gpu_worker"
IDLE_TIMEOUT_MIN = 0.1
STORE_MEMORY = 256 * 2**20


def autoscaling_config(gcs_port: int, head_cpus: int = 2, max_gpu_workers: int = 1) -> dict:
    """The cluster launcher config the head's autoscaler reads: the fake provider and two node types."""
    return {
        "cluster_name": "ray-ser-fake", "max_workers": max_gpu_workers, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
        "auth": {}, "docker": {},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            GPU_TYPE: {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": STORE_MEMORY}, "node_config": {},
                       "min_workers": 0, "max_workers": max_gpu_workers},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


# One short-lived process reads the GCS: nodes (dead ones too) and actors, with their times (ms since the epoch).
_STATE = """
import asyncio, json, sys
from ray._raylet import GcsClient
from ray.core.generated.gcs_pb2 import ActorTableData, GcsNodeInfo
client = GcsClient(address=sys.argv[1])
nodes = [{"node_id": i.node_id.hex(), "alive": i.state == GcsNodeInfo.GcsNodeState.ALIVE, "is_head": i.is_head_node,
          "node_type": i.node_type_name, "resources": dict(i.resources_total), "start_ms": i.start_time_ms,
          "end_ms": i.end_time_ms} for i in client.get_all_node_info(timeout=20).values()]
async def fetch():
    return await client.async_get_all_actor_info(timeout=20)
actors = [{"class_name": a.class_name, "repr_name": a.repr_name, "node_id": a.address.node_id.hex(),
           "state": ActorTableData.ActorState.Name(a.state), "start_ms": a.start_time, "end_ms": a.end_time}
          for a in asyncio.run(fetch()).values()]
print(json.dumps({"nodes": nodes, "actors": actors}))
"""


@dataclass
class AutoscalingCluster:
    """A running head with the fake autoscaler. `gcs` is the address for drivers (RAY_ADDRESS)."""

    workdir: Path
    gcs: str
    head: subprocess.Popen
    temp: Path
    token: Path
    _logs: list = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """What a driver or query needs: the venv first on PATH, RAY_ADDRESS, this cluster's token, the fake GPUs."""
        return cli_env(RAY_ADDRESS=self.gcs, RAY_AUTH_TOKEN_PATH=str(self.token), RAY_SER_FAKE_GPUS="1", **extra)

    def state(self) -> dict:
        """{"nodes": [...], "actors": [...]} from the GCS (see _STATE)."""
        out = subprocess.run([sys.executable, "-c", _STATE, self.gcs], check=False, capture_output=True, text=True,
                             env=self.env(), timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"could not read the GCS of {self.gcs}:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state()["nodes"] if n["alive"]]

    def wait_nodes(self, check, timeout: float, what: str) -> list[dict]:
        """Poll the alive nodes (about once a second) until `check(nodes)` holds; TimeoutError naming `what`."""
        deadline = time.monotonic() + timeout
        nodes: list[dict] = []
        while True:
            try:
                nodes = self.alive_nodes()
            except (RuntimeError, subprocess.TimeoutExpired, ValueError):
                nodes = []
            if nodes and check(nodes):
                return nodes
            if self.head.poll() is not None:
                raise RuntimeError(f"the head exited ({self.head.returncode}); see {self.workdir}/head.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not within {timeout:.0f} s; alive nodes: {nodes}")
            time.sleep(0.5)

    def stop(self, keep_temp: bool = False) -> None:
        """Stop the head's session (GCS, raylet, autoscaler and the nodes it started), then remove the temp dir."""
        _stop_group(self.head)
        for log in self._logs:
            log.close()
        if not keep_temp:
            shutil.rmtree(self.temp, ignore_errors=True)


def start_autoscaling_cluster(workdir: Path, head_cpus: int = 2, timeout: float = 120) -> AutoscalingCluster:
    """Start the head (`head_cpus` CPUs, no GPU, no dashboard) with the fake autoscaler and wait until a driver
    can attach; `workdir` gets the `ray start` log (Ray's own logs: <temp>/session_latest/logs)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="rsas", dir="/tmp"))  # short: unix socket paths stay under ~107 chars
    token = temp / "auth_token"
    token.write_text(uuid.uuid4().hex)
    config = temp / "autoscaling.json"
    config.write_text(json.dumps(autoscaling_config(port, head_cpus)))
    log = open(workdir / "head.log", "w")  # noqa: SIM115 (closed by stop())
    env = cli_env(**NODE_ENV, RAY_AUTH_TOKEN_PATH=str(token), RAY_SER_FAKE_GPUS="1", RAY_FAKE_CLUSTER="1",
                  AUTOSCALER_UPDATE_INTERVAL_S="1")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         f"--temp-dir={temp}", f"--num-cpus={head_cpus}", "--num-gpus=0", f"--object-store-memory={STORE_MEMORY}",
         f"--autoscaling-config={config}", "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
         f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )
    cluster = AutoscalingCluster(workdir=workdir, gcs=f"127.0.0.1:{port}", head=head, temp=temp, token=token,
                                 _logs=[log])
    try:
        cluster.wait_nodes(lambda ns: len(ns) == 1, timeout, "the head node")
    except BaseException:
        cluster.stop(keep_temp=True)
        raise
    return cluster


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    """A head with 2 CPUs and no GPU, and the autoscaler's `gpu_worker` type (0 to 1 nodes), for the module. A
    second start is tried once: on a loaded machine the head's raylet gives up when its dashboard agent takes more
    than ~15 s to start (Ray's own check, "Timed out waiting for file .../metrics_agent_port_...")."""
    workdir = tmp_path_factory.mktemp("autoscaling")
    for attempt in (1, 2):
        try:
            cluster = start_autoscaling_cluster(workdir / f"start{attempt}")
            break
        except (TimeoutError, RuntimeError) as e:
            if attempt == 2:
                pytest.fail(f"the autoscaling Ray cluster did not come up: {e}; logs in {workdir}")
    try:
        yield cluster
    finally:
        cluster.stop()

