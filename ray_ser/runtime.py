"""How jobs join Ray: the cluster in $RAY_ADDRESS (set by `ray job submit`), else a fresh local instance."""

from __future__ import annotations

import os


def init_ray(**kwargs):
    """``ray.init`` on $RAY_ADDRESS when set (``auto`` attaches to a `ray start` cluster on this machine),
    else on a new local instance, so a stale cluster address left on the machine is never dialled.

    Workers' output reaches this terminal (``log_to_driver``): a model actor's traceback is what a user needs
    when it fails at start-up."""
    import ray

    if ray.is_initialized():
        return ray
    address = os.environ.get("RAY_ADDRESS") or "local"
    kwargs.setdefault("log_to_driver", True)
    ray.init(address=address, **kwargs)
    return ray
