"""What the Ray cluster offers now and what its autoscaler may add: where stages decide GPU or CPU
(``extract.device`` / ``train.device``: auto | gpu | cpu) and refuse a request no node could ever meet.

A request no alive node meets would wait forever unless the autoscaler can add a node that meets it, so each stage
checks its actors' and workers' resources first (:func:`place`): an alive node meets them (go on), a node type of
the autoscaler does (go on; Ray's autoscaler adds the node for the waiting request, and a line says what it waits
for), or nothing does (:class:`~ray_ser.errors.InputError` at once, naming the resources).

The autoscaler's node types (:func:`node_types`) come from the first of:

1. the cluster config Ray keeps in the GCS (``ray._private.state.state.get_cluster_config()``), which Ray Train V2
   and Ray Data read for the same question; autoscalers that publish it (autoscaler v2 deployments) fill it;
2. the autoscaling config file the head's autoscaler runs from (``ray start --head --autoscaling-config FILE``;
   ``ray up`` makes it ``~/ray_bootstrap_config.yaml``). Ray 2.60's ``ray up`` publishes nothing in the GCS, so
   the driver finds the file from the autoscaler's monitor process on its own machine, whose command line names
   the file and this cluster's GCS port. Drivers started by ``ray job submit`` or on ``ray attach`` run on the
   head, where the monitor runs; a driver on another machine sees the alive nodes only.

A cluster without an autoscaler (``ray start`` by hand, a local ``ray.init``) has no node types: alive nodes only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

DEVICES = ("auto", "gpu", "cpu")
"""``device`` values: auto (GPUs when the cluster has them or its autoscaler can add them), gpu (ask Ray for a GPU
per model actor / training worker, alive or not), cpu (never ask for one)."""

FAKE_GPUS_ENV = "RAY_SER_FAKE_GPUS"
"""Test-only switch: with ``RAY_SER_FAKE_GPUS=1`` in the environment of the driver and the cluster's nodes, a GPU
that Ray assigns but torch cannot use is accepted and the model runs on the CPU. For Ray's fake autoscaling
cluster, whose nodes have a ``GPU`` resource and no device; never set it on a real cluster."""

DETECTED = frozenset({"CPU", "memory", "object_store_memory"})
"""Resources Ray detects on a node when it starts: a node type that does not list them may still have them (the
cluster launcher fills CPU and memory from the instance type)."""


def fake_gpus() -> bool:
    """Whether the test-only :data:`FAKE_GPUS_ENV` switch is on (read here and nowhere else)."""
    return os.environ.get(FAKE_GPUS_ENV, "").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True)
class NodeType:
    """A node type the autoscaler may add: its name, the resources one node offers, how many it may run."""

    name: str
    resources: dict[str, float] = field(default_factory=dict)
    max_workers: int = -1  # -1: no limit

    def offers(self, request: Mapping[str, float]) -> bool:
        """Whether one node of this type meets ``request`` (a resource Ray detects at start and the type does not
        list counts as met)."""
        for key, amount in request.items():
            if amount <= 0:
                continue
            have = self.resources.get(key)
            if have is None and key not in DETECTED or have is not None and have < amount:
                return False
        return True


@dataclass(frozen=True)
class Placement:
    """Where a request can run: ``alive`` when an alive node meets it, else ``node_type`` the autoscaler would add."""

    request: dict[str, float]
    alive: bool
    node_type: NodeType | None = None


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return device


def alive_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node of the cluster this driver is attached to."""
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def node_types() -> list[NodeType]:
    """The worker node types the cluster's autoscaler may add (none on a cluster without one); see the module."""
    try:
        published = _published_node_types()
    except Exception as e:  # noqa: BLE001 - an older GCS or none reachable: try the config file
        log.debug("no cluster config in the GCS: %s", e)
        published = None
    if published:
        return published
    path = autoscaling_config_file()
    if path is None:
        return []
    try:
        return config_node_types(_read_config(path))
    except (OSError, ValueError) as e:
        log.warning("could not read the autoscaler's config %s: %s", path, e)
        return []


def _published_node_types() -> list[NodeType] | None:
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if config is None:
        return None
    return [NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, int(g.max_count))
            for g in config.node_group_configs if g.max_count != 0]


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text())  # YAML or JSON
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    return data


def config_node_types(config: Mapping[str, Any]) -> list[NodeType]:
    """The worker node types of a cluster launcher config (``available_node_types`` less the head type and types
    that may run no node; each limited by the cluster's ``max_workers`` too)."""
    cap = config.get("max_workers")
    out = []
    for name, spec in (config.get("available_node_types") or {}).items():
        spec = spec or {}
        most = int(spec.get("max_workers", cap if cap is not None else -1))
        if cap is not None:
            most = int(cap) if most < 0 else min(most, int(cap))
        if name == config.get("head_node_type") or most == 0:
            continue
        out.append(NodeType(name, {k: float(v) for k, v in (spec.get("resources") or {}).items()}, most))
    return out


def autoscaling_config_file() -> Path | None:
    """The config file of this cluster's autoscaler, from its monitor process on this machine (None elsewhere, or
    when the cluster has no autoscaling config)."""
    import ray

    try:
        port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    except Exception:  # noqa: BLE001 - not connected
        return None
    for args in _processes():
        if not any(a.endswith("monitor.py") for a in args[:3]):
            continue
        opts = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if opts.get("--gcs-address", "").rsplit(":", 1)[-1] == port and opts.get("--autoscaling-config"):
            return Path(opts["--autoscaling-config"]).expanduser()
    return None


def _processes() -> Iterable[list[str]]:
    """Command lines of this machine's processes (Linux /proc; nothing elsewhere)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        yield [a.decode(errors="replace") for a in args if a]


def wants_gpu(device: str, alive: list[dict[str, float]] | None = None, types: list[NodeType] | None = None) -> bool:
    """Whether a stage with ``device`` asks Ray for GPUs: gpu always, cpu never, auto when an alive node has a GPU
    or a node type of the autoscaler offers one."""
    if check_device(device) != "auto":
        return device == "gpu"
    alive = alive_nodes() if alive is None else alive
    if any(r.get("GPU", 0) >= 1 for r in alive):
        return True
    types = node_types() if types is None else types
    return any(t.resources.get("GPU", 0) >= 1 for t in types)


def gpu_slots(request: Mapping[str, float], alive: list[dict[str, float]] | None = None,
              types: list[NodeType] | None = None) -> int:
    """How many holders of ``request`` (one GPU each) the cluster can run at once: the alive nodes' GPUs that meet
    it, plus the GPUs of the nodes the autoscaler may add (a node type without a limit counts one node)."""
    alive = alive_nodes() if alive is None else alive
    types = node_types() if types is None else types
    per = max(float(request.get("GPU", 1)), 1e-9)
    now = sum(int(r.get("GPU", 0) // per) for r in alive if _meets(r, request))
    later = sum(int(t.resources.get("GPU", 0) // per) * (t.max_workers if t.max_workers > 0 else 1)
                for t in types if t.offers(request))
    return now + later


def _meets(resources: Mapping[str, float], request: Mapping[str, float]) -> bool:
    return all(resources.get(k, 0.0) >= v for k, v in request.items() if v > 0)


def place(request: Mapping[str, float], what: str, hint: str = "", alive: list[dict[str, float]] | None = None,
          types: list[NodeType] | None = None) -> Placement:
    """Where ``request`` (``what`` needs it) can run: on an alive node, or on a node the autoscaler adds (a console
    line says so); refuses (InputError naming the resources, the nodes and the node types, then ``hint``) when no
    alive node and no node type could meet it, since it would wait forever."""
    from ray_ser import console
    from ray_ser.errors import InputError

    request = {k: float(v) for k, v in request.items() if v > 0}
    alive = alive_nodes() if alive is None else alive
    if any(_meets(r, request) for r in alive):
        return Placement(request, True)
    types = node_types() if types is None else types
    fit = [t for t in types if t.offers(request)]
    if fit:
        line = (f"waiting for the autoscaler to add a node with {_fmt(request)} (node type {fit[0].name}) for "
                f"{what}")
        log.info("%s", line)
        console.say(line)
        return Placement(request, False, fit[0])
    offered = "; ".join(sorted({_fmt(_plain(r)) for r in alive})) or "none"
    kinds = "; ".join(f"{t.name} {_fmt(t.resources)}" for t in types) or "none"
    raise InputError(f"no node of the Ray cluster can run {what}: it needs {_fmt(request)} on one node; the alive "
                     f"nodes offer {offered}, and the autoscaler's node types are {kinds}"
                     + (f". {hint}" if hint else ""))


def _plain(resources: Mapping[str, float]) -> dict[str, float]:
    """A node's resources without Ray's bookkeeping ones (node:<ip>, memory, object store)."""
    return {k: v for k, v in resources.items()
            if not k.startswith("node:") and k not in ("memory", "object_store_memory")}


def _fmt(resources: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"
