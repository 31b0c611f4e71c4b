"""Extract every layer of a speech model into the LanceDB store, clean and at each SNR.

Local:   python jobs/extract.py --corpus emodb --model whisper-base --store store/
Cluster: ray job submit --working-dir . -- python jobs/extract.py --corpus emodb --data-root /data --store s3://...
Re-running the same command extracts only what is missing.
"""

from __future__ import annotations

import argparse
import json
import logging

from ray_ser.corpora import ADAPTERS, Manifest, build_manifest
from ray_ser.extract.conditions import DEFAULT_CONDITIONS, aug_conditions
from ray_ser.extract.program import ExtractOptions, extract
from ray_ser.fm.registry import DEFAULT_MODEL
from ray_ser.settings import data_root


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", choices=sorted(ADAPTERS), help="build the corpus's manifest from --data-root")
    src.add_argument("--manifest", help="a manifest Parquet written by jobs/manifest.py")
    p.add_argument("--data-root", default=None, help="folder holding the corpora (default: $RAY_SER_DATA_ROOT, then ../shared/corpora)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, Hugging Face hub id or local folder")
    p.add_argument("--store", required=True, help="LanceDB store URI (a local folder or object-store URI)")
    p.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS), help="comma-separated, e.g. clean,25dB,15dB,5dB")
    p.add_argument("--limit", type=int, default=None,
                   help="only N utterances, taken in turn from each speaker and its categories (smoke runs)")
    p.add_argument("--no-frames", action="store_true", help="store pooled vectors only, no frame matrices")
    p.add_argument("--frame-layers", type=layer_list, default=None,
                   help="store frames of these layers only, e.g. 2,3,4 or -1 (pooled vectors are always stored for all)")
    p.add_argument("--dtype", default=ExtractOptions.dtype, choices=["auto", "float32", "float16", "bfloat16"],
                   help="model precision (default auto: float16 on GPUs, float32 on CPUs); recorded with the table")
    p.add_argument("--aug-copies", type=int, default=0,
                   help="add N augmented training copies per utterance as conditions aug0..aug<N-1> (seed 002's suite)")
    p.add_argument("--write-mode", choices=["driver", "fragments"], default=ExtractOptions.write_mode,
                   help="driver: actors return rows and the driver appends them; fragments: actors write Lance "
                        "fragments and the driver only commits them (for GPU clusters, where one driver cannot "
                        "take every row)")
    p.add_argument("--whisper-mode", default=ExtractOptions.whisper_mode, help="strided:<s> (default strided:10) | trimmed | padded | window:<seconds>")
    p.add_argument("--batch-size", type=int, default=ExtractOptions.batch_size)
    p.add_argument("--max-batch-seconds", type=float, default=ExtractOptions.max_batch_seconds)
    p.add_argument("--pool-size", type=int, default=None, help="model actors (default: one per GPU; on CPUs one per core, at most 4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per CPU actor (default: cores / actors)")
    p.add_argument("--model-key", default=None, help="name to file the embeddings under (default: model, plus @mode)")
    p.add_argument("--seed", type=int, default=0, help="seed of the degraded copies")
    p.add_argument("--retry-errors", action="store_true", help="try utterances that failed in earlier runs again")
    p.add_argument("--commit-mb", type=float, default=ExtractOptions.commit_mb,
                   help="commit to LanceDB once this many MB of rows are buffered ...")
    p.add_argument("--commit-seconds", type=float, default=ExtractOptions.commit_seconds,
                   help="... or this many seconds have passed (0: every block); a crash loses at most this much")
    p.add_argument("--csv", default=None, help="with --corpus csv: the CSV file to read")
    p.add_argument("--audio-root", default=None, help="with --corpus csv: folder the CSV's paths are relative to")
    p.add_argument("--max-seconds", type=float, default=ExtractOptions.max_seconds,
                   help="longer audio becomes an errors row (read from the header, before decoding)")
    p.add_argument("--on-drift", choices=["refuse", "new-key"], default=ExtractOptions.on_drift,
                   help="when the table was made with other settings (seed, frames, dtype, conditions, ...): refuse "
                        "(default), or file this run under a key derived from its settings")
    p.add_argument("--wait-lease", type=float, default=ExtractOptions.wait_lease, metavar="SECONDS",
                   help="wait this long while another run writes the same table, then refuse (default: refuse now)")
    p.add_argument("--keep-versions", type=float, default=ExtractOptions.keep_versions_s, metavar="SECONDS",
                   help="compaction deletes superseded table versions only this long after (readers keep their files)")
    return p


def layer_list(text: str) -> list[int]:
    """'2,3,-1' -> [2, 3, -1] (argparse type of --frame-layers)."""
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frame-layers takes comma-separated layer numbers, got {text!r}") from None
    if not layers:
        raise argparse.ArgumentTypeError("--frame-layers needs at least one layer (or use --no-frames)")
    return layers


def main(argv: list[str] | None = None) -> None:
    from ray_ser.runtime import init_ray

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.manifest:
        manifest = Manifest.read(args.manifest)
    else:
        adapter = {"csv": args.csv, "audio_root": args.audio_root} if args.corpus == "csv" else {}
        manifest = build_manifest(args.corpus, data_root(args.data_root), **adapter)
    if args.limit:
        manifest = manifest.spread(args.limit)
    print(f"manifest {manifest.corpus}: {manifest.summary()}", flush=True)
    options = ExtractOptions(
        model=args.model, conditions=[*args.conditions.split(","), *aug_conditions(args.aug_copies)],
        frames=not args.no_frames, frame_layers=args.frame_layers, dtype=args.dtype, write_mode=args.write_mode,
        whisper_mode=args.whisper_mode, batch_size=args.batch_size, max_batch_seconds=args.max_batch_seconds,
        pool_size=args.pool_size, threads=args.threads, seed=args.seed, retry_errors=args.retry_errors,
        model_key=args.model_key, commit_mb=args.commit_mb, commit_seconds=args.commit_seconds,
        max_seconds=args.max_seconds, on_drift=args.on_drift, wait_lease=args.wait_lease,
        keep_versions_s=args.keep_versions,
    )
    init_ray()
    result = extract(manifest, args.store, options)
    print(json.dumps(result.__dict__, indent=2))


if __name__ == "__main__":
    main()
