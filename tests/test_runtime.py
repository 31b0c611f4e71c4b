"""init_ray: workers' output reaches the user's terminal."""

from __future__ import annotations

import ray

from ray_ser.runtime import init_ray


def test_worker_logs_reach_the_driver(monkeypatch):
    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(num_cpus=2)
    assert seen == {"address": "local", "log_to_driver": True, "num_cpus": 2}
