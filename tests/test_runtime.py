"""init_ray: the console's ray.init switches (workers' output to the log file when set up), the caller's win."""

from __future__ import annotations

import ray

from ray_ser import console
from ray_ser.runtime import init_ray


def fake_init(monkeypatch) -> dict:
    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return seen


def test_console_switches_reach_ray_init(monkeypatch):
    seen = fake_init(monkeypatch)
    init_ray(num_cpus=2)
    assert seen == {"address": "local", **console.ray_init_kwargs(), "num_cpus": 2}


def test_the_callers_kwargs_win(monkeypatch):
    seen = fake_init(monkeypatch)
    init_ray(num_cpus=2, log_to_driver=True)
    assert seen["log_to_driver"] is True and seen["address"] == "local"
