"""The Ray cluster launcher configs (cluster.yaml for AWS, cluster-local.yaml for machines you have) pass Ray's own
checks offline: ``prepare_config`` (what ``ray up`` does first: Ray's defaults for the provider filled in, setup
commands merged, per-node-type worker counts set) and ``validate_config`` (ray-schema.json plus Ray's consistency
checks). Neither needs boto3, credentials or a network: the AWS calls of ``ray up`` come later, in its bootstrap
step, which these tests never reach."""

from __future__ import annotations

import copy
import fnmatch
import re
import socket
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
AWS, LOCAL = ROOT / "cluster.yaml", ROOT / "cluster-local.yaml"
FILES = [AWS, LOCAL]
INSTALL = re.compile(r"\bpip install\b.*-c constraints\.txt\b.*-e \.")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture
def offline(monkeypatch):
    """No AWS SDK and no sockets: a step that tried to reach a cloud fails instead of waiting."""
    import sys

    for name in ("boto3", "botocore"):
        monkeypatch.setitem(sys.modules, name, None)  # `import boto3` raises ImportError

    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def checked(cfg: dict) -> dict:
    """Ray's preparation and validation of a cluster config, as ``ray up`` runs them before touching a node."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_config_passes_rays_schema_offline(path, offline):
    prepared = checked(load(path))
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # The file's own commands, not Ray's defaults (the AWS defaults install a nightly Ray wheel).
    assert not any("ray-wheels" in c for c in prepared["setup_commands"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_misspelt_top_level_key_is_refused(path, offline):
    import jsonschema

    cfg = load(path)
    cfg["max_worker"] = cfg.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        checked(cfg)


def test_misspelt_node_type_key_is_refused(offline):
    import jsonschema

    cfg = load(AWS)
    worker = cfg["available_node_types"]["gpu_worker"]
    worker["min_worker"] = worker.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        checked(cfg)


def test_both_files_install_ray_ser_the_same_way_and_the_aws_workers_have_gpus(offline):
    aws, local = load(AWS), load(LOCAL)
    installs = {path.name: [c for c in cfg["setup_commands"] if INSTALL.search(c)]
                for path, cfg in ((AWS, aws), (LOCAL, local))}
    assert all(len(found) == 1 for found in installs.values()), installs
    assert installs[AWS.name] == installs[LOCAL.name]
    assert aws["worker_setup_commands"] == local["worker_setup_commands"]
    for cfg in (aws, local):
        assert not any("torch" in c for c in cfg["setup_commands"]), "setup must keep the node's own CUDA torch"
        (remote,) = [r for r, local_path in cfg["file_mounts"].items() if local_path == "."]
        assert f"cd {remote} " in installs[AWS.name][0]

    # constraints.txt pins no torch (a GPU node keeps its CUDA build) and the Ray the laptop runs.
    import ray

    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert "torch" not in pins and pins["ray"] == ray.__version__

    # rsync applies an exclude without a leading "/" at every depth: none may drop code (ray_ser/store is a package).
    code = {part for top in ("ray_ser", "jobs", "configs") for p in (ROOT / top).rglob("*")
            for part in p.relative_to(ROOT).parts if "__pycache__" not in p.parts}
    for cfg in (aws, local):
        for pattern in cfg["rsync_exclude"]:
            assert pattern.startswith("/") or not fnmatch.filter(code, pattern), pattern

    prepared = checked(aws)
    assert prepared["provider"]["type"] == "aws" and checked(local)["provider"]["type"] == "local"
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    gpu_types = [name for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and head not in gpu_types
    for name in gpu_types:
        assert types[name]["min_workers"] == 0 and types[name]["max_workers"] >= 1  # autoscaled from zero
    for t in types.values():  # S3 credentials come from each node's instance profile
        assert "Arn" in t["node_config"]["IamInstanceProfile"]



LOCALHOST = {"127.0.0.1", "localhost", "::1"}


def job_api_problems(cfg: dict) -> list[str]:
    """Why a launcher config would open the job API (port 8265) to anyone: a `ray start` without token auth, a
    dashboard listening beyond the head's localhost, or no shared token on the nodes."""
    problems = []
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cfg.get(key, [])
              if re.search(r"\bray start\b", c)]
    problems += [f"no token auth: {c}" for c in starts if not re.search(r"\bRAY_AUTH_MODE=token ray start\b", c)]
    for head in (c for c in starts if "--head" in c):
        host = re.search(r"--dashboard-host[= ](\S+)", head)
        if not host or host.group(1) not in LOCALHOST:
            problems.append(f"dashboard beyond localhost: {head}")
    if cfg.get("file_mounts", {}).get("~/.ray/auth_token") != "~/.ray/auth_token":
        problems.append("the laptop's ~/.ray/auth_token is not copied to the nodes")
    return problems


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_config_opens_the_job_api_without_a_token(path):
    """Every node starts Ray with token authentication and the same token (the laptop's ~/.ray/auth_token), and the
    dashboard listens on the head's localhost only (reached through `ray dashboard`'s SSH tunnel)."""
    cfg = load(path)
    assert len(cfg["head_start_ray_commands"]) + len(cfg["worker_start_ray_commands"]) >= 2
    assert job_api_problems(cfg) == []


def test_an_open_head_is_caught():
    """The configs as they were before: dashboard on 0.0.0.0 and no token."""
    cfg = load(AWS)
    cfg["head_start_ray_commands"] = [c.replace("RAY_AUTH_MODE=token ", "").replace("127.0.0.1", "0.0.0.0")
                                      for c in cfg["head_start_ray_commands"]]
    del cfg["file_mounts"]["~/.ray/auth_token"]
    problems = job_api_problems(cfg)
    assert len(problems) == 3 and problems[0].startswith("no token auth") and "0.0.0.0" in problems[1]
