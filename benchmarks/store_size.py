"""Bytes per audio-second the store takes for each frame option, measured on EmoDB (clean audio, --limit utterances
spread over all speakers):

  pooled only   (--no-frames)            mean/std vectors of every layer
  all frames    (default)                plus every layer's real frames (float16)
  frame layers  (--frame-layers L)       plus the frames of layer L only
  pruned        (jobs/prune_frames.py)   a copy of layer L's frames with the saliency-kept dimensions at --keep-ratio
                                         (the union over the folds' masks), written after jobs/saliency.py

Each figure is the on-disk size of the table's folder (after the run's compaction and indexing) divided by the
audio-seconds it holds; the pruned table is reported on its own and added to the pooled-only store.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ray_ser.corpora import build_manifest  # noqa: E402
from ray_ser.extract.program import ExtractConfig, extract  # noqa: E402
from ray_ser.store.core import Store  # noqa: E402
from ray_ser.store.names import table_name


def table_bytes(uri: str, name: str) -> int:
    path = Path(Store(uri).open(name).to_lance().uri)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--limit", type=int, default=100, help="EmoDB utterances, spread over the speakers")
    p.add_argument("--frame-layer", type=int, default=3)
    p.add_argument("--keep-ratio", type=float, default=0.6)
    p.add_argument("--data-root", default=None)
    args = p.parse_args()

    from ray_ser.analysis import saliency_store as ss
    from ray_ser.analysis.pruned_frames import write_pruned_frames
    from ray_ser.runtime import init_ray

    full = build_manifest("emodb", args.data_root)
    manifest = full.spread(args.limit)
    audio_s = float(sum(manifest.column("duration")))
    init_ray()
    work = Path(tempfile.mkdtemp(prefix="ray_ser_sizes_"))
    sizes: dict[str, float] = {}
    try:
        variants = {
            "pooled only (--no-frames)": dict(frames=False),
            "all frames": {},
            f"--frame-layers {args.frame_layer}": dict(frame_layers=[args.frame_layer]),
        }
        for label, extra in variants.items():
            uri = str(work / label.split()[0].strip("-"))
            opts = ExtractConfig(model=args.model, conditions=["clean"], **extra)
            extract(manifest, uri, opts)
            sizes[label] = table_bytes(uri, table_name(opts.key)) / audio_s
            if label == "all frames":
                all_frames_uri, key = uri, opts.key
        info: dict = {}
        df = ss.compute_saliency(all_frames_uri, key, "clean", folds="auto", mis=False, info=info)
        ss.write_saliency(all_frames_uri, df, ss.layer_ranking(df), info["assignment"])
        pruned = write_pruned_frames(all_frames_uri, key, args.frame_layer, args.keep_ratio)
        label = f"pruned layer {args.frame_layer} at {args.keep_ratio:g} ({pruned.width}/{pruned.dim} dims, {info['folds']})"
        sizes[label] = table_bytes(all_frames_uri, pruned.table) / audio_s
        sizes["pooled only + " + label] = sizes["pooled only (--no-frames)"] + sizes[label]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.model}, {len(manifest)} EmoDB utterances, {audio_s:.0f} audio-s (clean)")
    print("| store | bytes per audio-second | vs all frames |")
    print("|---|---|---|")
    for label, value in sizes.items():
        print(f"| {label} | {value:,.0f} | {value / sizes['all frames']:.3f} |")


if __name__ == "__main__":
    main()
