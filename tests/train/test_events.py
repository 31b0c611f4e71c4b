"""TensorBoard event files of a run folder on an object store: written locally, copied up after every flush
(fsspec's in-memory filesystem stands in for the bucket; tests/objectstore runs the real one)."""

from __future__ import annotations

from ray_ser.storage import run_path
from ray_ser.train.events import EventWriter


def test_event_files_reach_a_uri_run_folder_after_each_flush():
    target = "memory://runs/tb/fold_0"
    writer = EventWriter(target)
    writer.add_scalar("val/uar", 0.5, 0)
    writer.flush()
    first = [p for p in run_path(target).glob("events.out.tfevents*")]
    assert len(first) == 1 and first[0].stat().st_size > 0
    size = first[0].stat().st_size
    writer.add_scalar("val/uar", 0.6, 1)
    writer.close()
    assert run_path(target).glob("events.out.tfevents*").__next__().stat().st_size > size
    assert not writer.local.exists()  # the local scratch copy is gone


def test_a_local_run_folder_gets_the_files_directly(tmp_path):
    writer = EventWriter(str(tmp_path / "tb"))
    writer.add_scalar("val/uar", 0.5, 0)
    writer.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents*"))
