"""Start processes at the same instant, to test what racing writers do to the store."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

PRELUDE = """
import os, sys, time
store_path, me, folder = sys.argv[1], sys.argv[2], sys.argv[3]
open(os.path.join(folder, me + ".ready"), "w").close()
while not os.path.exists(os.path.join(folder, "go")):
    time.sleep(0.001)
"""
"""Each racer's first lines: argv is (store path, its name p<i>, the shared folder); it waits for ``go``."""


def race(folder: Path, code: str, n: int) -> None:
    """Run ``n`` processes of ``PRELUDE + code`` released together once all have imported; each must exit 0."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "racer.py"
    script.write_text(PRELUDE + code)
    procs = [subprocess.Popen([sys.executable, str(script), str(folder / "store"), f"p{i}", str(folder)])
             for i in range(n)]
    deadline = time.time() + 120
    while not all((folder / f"p{i}.ready").exists() for i in range(n)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "a racer failed to start"
        time.sleep(0.05)
    (folder / "go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0] * n
