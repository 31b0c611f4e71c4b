"""Lets ``python jobs/<stage>.py`` import ray_ser from a source checkout that is not pip-installed."""

import sys
from pathlib import Path

root = str(Path(__file__).resolve().parent.parent)
if root not in sys.path:
    sys.path.insert(0, root)
