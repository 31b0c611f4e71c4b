"""Checkpoints hold tensors and plain data only: numpy values are converted on save, and a file with a pickled
object (code that runs when unpickled) is refused, naming the file, before anything runs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ray_ser.train import state_io
from ray_ser.train.loop import STATE_FILE, load_state, save_state


class Payload:
    """Unpickling this would run a command: the classic planted checkpoint."""

    def __reduce__(self):
        import os

        return (os.system, ("touch planted-payload-ran",))


def test_training_state_round_trips_under_weights_only(tmp_path):
    state = {"model": {"w": torch.ones(2, 3)}, "rng": torch.get_rng_state(), "epoch": np.int64(4),
             "best_score": np.float32(0.5), "history": [{"uar": np.float64(0.25), "curve": np.arange(3)}],
             "selected": None, "phase": "refit"}
    save_state(state, tmp_path)
    back = load_state(tmp_path)
    assert back["epoch"] == 4 and isinstance(back["epoch"], int) and back["best_score"] == 0.5
    assert torch.equal(back["model"]["w"], torch.ones(2, 3)) and torch.equal(back["rng"], state["rng"])
    assert back["history"][0]["uar"] == 0.25 and back["history"][0]["curve"].tolist() == [0, 1, 2]


def test_a_planted_pickle_payload_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": {"w": torch.ones(1)}, "extra": Payload()}, tmp_path / STATE_FILE)
    with pytest.raises(state_io.UnsafeCheckpoint, match=rf"{STATE_FILE}: refused to load"):
        load_state(tmp_path)
    assert not (tmp_path / "planted-payload-ran").exists()
    with open(tmp_path / "raw.pt", "wb") as fh:  # a plain pickle stream, not torch's zip format
        pickle.dump(Payload(), fh)
    with pytest.raises(state_io.UnsafeCheckpoint, match="raw.pt"):
        state_io.load(tmp_path / "raw.pt")
    assert not (tmp_path / "planted-payload-ran").exists()
