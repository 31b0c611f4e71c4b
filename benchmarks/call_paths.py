"""Where a TrainConfig and the store travel in the driver process (issue 41's call paths), counted by tracing.

Two traced runs on a tiny synthetic corpus (random-init HuBERT, 36 utterances, 4 speakers):

- ``ray-ser run`` (extract, saliency, frames, train with a frame-cluster head, evaluate): every call from a module
  of the ``train`` package into an earlier stage of the flow (corpora, extract, analysis), as distinct call sites.
  A site *computes* when the callee fits, builds, ranks or writes an earlier stage's result (k-means, masks, inner
  splits, rankings, plans): training that climbs back to do analysis work. The rest read stored results.
- ``ray-ser evaluate`` on that run: how often the store is wrapped (``as_store``) and connected to (``_connect``),
  and the calls from ``evaluate`` into earlier stages.

To compare two commits, copy this file into each checkout and run it there; it counts with the levels of
``tests/test_design.py``. Ends with one line: ``call_paths train_compute_sites <n> train_read_sites <n>
evaluate_store_connects <n> evaluate_store_wraps <n>``. Ray runs on its own ``--temp-dir`` (``RAY_TMPDIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = str(REPO / "ray_ser") + os.sep
FLOW = {"corpora": 1, "extract": 2, "analysis": 3, "train": 4, "evaluate": 5}
"""The stages of the flow, in order (the store and level-0 utilities are not stages)."""
COMPUTE = re.compile(r"^(ensure_|fit_|build_|write_|compute_|saliency_mask$|inner_split$|ranked_layers$|"
                     r"layers_for_folds$|draw_frames$|auto_layers$)")
"""Callee names that compute (or write) an earlier stage's result rather than read it."""


def module_of(filename: str) -> str:
    return "ray_ser." + filename[len(PKG):-3].replace(os.sep, ".").removesuffix(".__init__")


def stage_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def traced(fn) -> dict[tuple[str, str], int]:
    """Run ``fn`` with a profiler: {(caller module:function, callee module:function): calls} within ray_ser."""
    edges: dict[tuple[str, str], int] = {}

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(PKG):
            return
        back = frame.f_back
        if back is not None and back.f_code.co_filename.startswith(PKG):
            key = (f"{module_of(back.f_code.co_filename)}:{back.f_code.co_name}",
                   f"{module_of(frame.f_code.co_filename)}:{frame.f_code.co_name}")
            edges[key] = edges.get(key, 0) + 1

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return edges


def climbs(edges: dict, source: str) -> dict[str, list[tuple[str, int]]]:
    """Calls from ``source``'s modules into earlier stages of the flow, split into computing and reading sites."""
    out: dict[str, list[tuple[str, int]]] = {"compute": [], "read": []}
    for (caller, callee), n in sorted(edges.items()):
        to = stage_of(callee.split(":")[0])
        if stage_of(caller.split(":")[0]) == source and to in FLOW and FLOW[to] < FLOW[source]:
            out["compute" if COMPUTE.match(callee.split(":")[1]) else "read"].append((f"{caller} -> {callee}", n))
    return out


def config(root: Path) -> Path:
    """A tiny experiment: frame path, one automatic layer, a keep ratio and a frame-cluster head (the planning
    that used to happen inside training)."""
    import yaml
    from conftest import save_tiny_hubert
    from synthetic import write_corpus

    model = save_tiny_hubert(root / "tiny-hubert")
    csv_path = write_corpus(root / "audio", n_speakers=4, per_class=3)
    cfg = {"name": "trace", "runs": str(root / "runs"),
           "data": {"corpora": ["csv"], "csv": str(csv_path), "data_root": str(root)},
           "store": {"uri": str(root / "store")},
           "extract": {"model": str(model), "model_key": "tiny", "conditions": ["clean"]},
           "analysis": {"mis": False, "probe": False, "clusters": {"k": [4], "sample_frames": 2000}},
           "train": {"arch": "tcgru", "auto_layers": 1, "epochs": 2, "patience": 2, "batch_size": 8,
                     "cpus_per_worker": 0.5, "spec_augment": False, "pooled": False, "keep_ratio": 0.5,
                     "n_clusters": 4},
           "evaluate": {"n_boot": 10}}
    path = root / "trace.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder for the run and call_paths.json (default: a temporary folder)")
    args = p.parse_args()
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    root = Path(args.out or tempfile.mkdtemp(prefix="call_paths_"))
    root.mkdir(parents=True, exist_ok=True)
    cfg = config(root)
    from ray_ser.jobs import evaluate, pipeline

    train = climbs(traced(lambda: pipeline.main(["--config", str(cfg)])), "train")
    edges = traced(lambda: evaluate.main(["--config", str(root / "runs" / "trace" / "config.yaml")]))
    opened = {name: sum(n for (_, callee), n in edges.items() if callee == f"ray_ser.store.core:{name}")
              for name in ("as_store", "_connect")}
    result = {"train": train, "evaluate": climbs(edges, "evaluate"), "evaluate_store": opened}
    (root / "call_paths.json").write_text(json.dumps(result, indent=1))
    for kind in ("compute", "read"):
        print(f"train -> earlier stages, {kind}: " + "; ".join(f"{s} x{n}" for s, n in train[kind]))
    print(f"evaluate: store wrapped {opened['as_store']} times, connected {opened['_connect']} times")
    print(f"call_paths train_compute_sites {len(train['compute'])} train_read_sites {len(train['read'])} "
          f"evaluate_store_connects {opened['_connect']} evaluate_store_wraps {opened['as_store']}")


if __name__ == "__main__":
    main()
