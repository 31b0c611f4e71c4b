"""Shared fixtures: the real corpora, a tiny random-init speech model on disk, and a local Ray instance."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from ray_ser.settings import data_root
from services.ray_cluster import two_node_cluster  # noqa: F401,E402 - fixtures of the real services the tests start
from services.rgw import rgw  # noqa: F401,E402

os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["RAY_SER_CACHE"] = tempfile.mkdtemp(prefix="ray_ser_cache_")  # tests never touch the user's hash cache


# ---- skips: only the CUDA-bound tests may skip in CI -----------------------------------------------------------
DEVICE_MARKERS = ("cuda", "no_cuda")
"""Tests that can only run with (``cuda``) or without (``no_cuda``) a CUDA device: the only skips CI accepts."""

_skips: list[tuple[str, str, bool]] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (may skip anywhere, CI included)")
    config.addinivalue_line("markers", "no_cuda: needs torch without CUDA (may skip anywhere, CI included)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Record every skip; under CI (``$CI`` set) a skip of any test not marked cuda/no_cuda becomes a failure that
    keeps the reason (missing corpora, a service that could not start), so CI cannot go green by skipping."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    allowed = any(item.get_closest_marker(m) for m in DEVICE_MARKERS)
    _skips.append((item.nodeid, reason, allowed))
    if os.environ.get("CI") and not allowed:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where only CUDA-bound tests may skip: {reason}"


def pytest_terminal_summary(terminalreporter):
    """One line counting the skips (device-bound and other), before pytest's own closing line."""
    device = sum(1 for *_, ok in _skips if ok)
    other = [(n, r) for n, r, ok in _skips if not ok]
    terminalreporter.write_line(f"skips: {len(_skips)} ({device} CUDA-bound, {len(other)} other"
                                f"{', failed under CI' if other and os.environ.get('CI') else ''})")
    for nodeid, reason in other[:20]:
        terminalreporter.write_line(f"  skipped {nodeid}: {reason}")


@pytest.fixture(scope="session")
def corpora() -> Path:
    """The real corpora folder (../shared/corpora or $RAY_SER_DATA_ROOT); skips when it is absent."""
    root = data_root()
    if not (root / "emodb" / "wav").is_dir():
        pytest.skip(f"corpora not found at {root}")
    return root


def save_tiny_hubert(path: Path) -> Path:
    """A 2-layer, 32-wide HuBERT (layer-norm feature extractor, 80x downsampling) saved with save_pretrained."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer", do_stable_layer_norm=True,
    )
    HubertModel(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_hubert(tmp_path_factory.mktemp("models") / "tiny-hubert")


@pytest.fixture(scope="module")
def local_ray():
    """A fresh in-process Ray instance (never an existing cluster), shut down after the module."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_store(tiny_model_dir, tmp_path_factory, request) -> str:
    """One store of the synthetic corpus (tests/synthetic.py; clean + 5 dB, tiny HuBERT, key "tiny") with its
    saliency, shared by the training and tuning tests; needs no ../shared. Tests that rewrite it use a copy.
    The Ray it starts is left to the test's ``local_ray`` when it has one (one start, not a stop and a restart)."""
    import ray
    from synthetic import build_store

    from ray_ser.analysis import saliency_store as ss

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        uri = build_store(tmp_path_factory.mktemp("synth"), tiny_model_dir)
    finally:
        if started and "local_ray" not in request.fixturenames:
            ray.shutdown()
    info: dict = {}
    df = ss.compute_saliency(uri, "tiny", "clean", folds="auto", mis=False, info=info)
    ss.write_saliency(uri, df, ss.layer_ranking(df), info["assignment"])
    return uri


@pytest.fixture(autouse=True)
def _console_reset():
    """A job run in-process sets up the console (root handlers, quiet switches): undo it after each test."""
    yield
    from ray_ser import console

    console.reset()
    console.show_details(True)
