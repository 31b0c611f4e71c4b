"""TensorBoard event files of a training run, written where its run folder is: straight into a local folder, or for
an object-store run folder into a local scratch folder whose files are copied up after every flush (an object
cannot be appended to, and a worker on another node shares no disk with the driver)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ray_ser.storage import is_uri, run_path


class EventWriter:
    """``tensorboardX.SummaryWriter`` at ``logdir`` (a path or a URI) with ``add_scalar``, ``flush`` and ``close``."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter

        self.target = logdir if is_uri(logdir) else None
        self.local = Path(tempfile.mkdtemp(prefix="ray_ser_tb_")) if self.target else Path(logdir)
        self.writer = SummaryWriter(str(self.local))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()
        if self.target:
            self._upload()

    def close(self) -> None:
        self.writer.close()
        if self.target:
            self._upload()
            shutil.rmtree(self.local, ignore_errors=True)

    def _upload(self) -> None:
        """Copy every event file up whole (they are small, and a re-upload replaces the object atomically)."""
        root = run_path(self.target)
        for f in self.local.rglob("*"):
            if f.is_file():
                (root / f.relative_to(self.local).as_posix()).write_bytes(f.read_bytes())
