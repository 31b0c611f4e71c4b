"""How jobs join Ray: the cluster in $RAY_ADDRESS (set by `ray job submit`), else a fresh local instance."""

from __future__ import annotations

import os


def init_ray(**kwargs):
    """``ray.init`` on $RAY_ADDRESS when set (``auto`` attaches to a `ray start` cluster on this machine),
    else on a new local instance, so a stale cluster address left on the machine is never dialled.

    With :mod:`ray_ser.console` set up and not verbose, the workers' output goes to the run's log file instead of
    this terminal (:func:`ray_ser.console.ray_init_kwargs`; the caller's kwargs win). Their errors still reach
    the user: a failing task or model actor (its start-up included) raises here with the worker's traceback."""
    import ray

    from ray_ser import console

    if ray.is_initialized():
        return ray
    address = os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, **{**console.ray_init_kwargs(), **kwargs})
    if "log_to_driver" not in kwargs:
        console.route_worker_logs()
    return ray
