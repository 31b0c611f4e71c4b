"""TensorBoard event files of a training run, written where its run folder is: straight into a local folder, or for
an object-store run folder into a local scratch folder whose files are copied up after every flush (an object
cannot be appended to, and a worker on another node shares no disk with the driver)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ray_ser.storage import is_uri, upload


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
        if self.target:  # the event files are small: each is copied up whole, replacing the object
            upload(self.local, self.target)

    def close(self) -> None:
        self.writer.close()
        if self.target:
            upload(self.local, self.target)
            shutil.rmtree(self.local, ignore_errors=True)
