"""benchmarks/actor.py runs where Ray, LanceDB, Lance (and even pyarrow) are not installed, and prints its ratio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "actor.py"
BLOCKED = ("ray", "lancedb", "lance", "lance_ray", "pyarrow", "polars")

RUNNER = """
import runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None  # 'import name' now raises ImportError, as where the package is not installed
sys.argv = ["actor.py", *{args!r}]
runpy.run_path({bench!r}, run_name="__main__")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None)
print("loaded:", loaded)
"""


def run_bench(*args: str) -> str:
    code = RUNNER.format(blocked=BLOCKED, args=list(args), bench=str(BENCH))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_actor_benchmark_runs_torch_only_and_prints_a_ratio(tiny_model_dir):
    out = run_bench("--model", str(tiny_model_dir), "--synthetic", "--limit", "4", "--batch-size", "2",
                    "--seconds", "0.5,1.0", "--rounds", "1", "--device", "cpu", "--frame-layers", "1,2")
    ratio = re.search(r"^ratio: ([0-9.]+)$", out, re.M)
    assert ratio and float(ratio.group(1)) > 0, out
    assert "output: host numpy" in out and "frames: layers 1,2" in out and "dtype: float32" in out
    assert re.search(r"\(f\) forward alone: [0-9.]+ audio-s/s per device", out)
    assert re.search(r"\(s\) actor step: +[0-9.]+ audio-s/s per device", out)
    assert "loaded: []" in out
