"""Write a corpus manifest as Parquet: ``python jobs/manifest.py --corpus emodb --out emodb.parquet``."""

from __future__ import annotations

import argparse
import json

from ray_ser import console
from ray_ser.config import Bind, add_config_args, from_args, log_folder
from ray_ser.corpora import ADAPTERS, build_manifest
from ray_ser.corpora import folds as fold_makers
from ray_ser.settings import data_root

BINDS = {"corpus": Bind("data.corpora", lambda c: [c], lambda cs: cs[0]), "data_root": "data.data_root",
         "csv": "data.csv", "audio_root": "data.audio_root", "csv_name": "data.csv_name"}
"""Each flag's config key (the data section; the config's first corpus)."""


def parser() -> argparse.ArgumentParser:
    p = add_config_args(argparse.ArgumentParser(description=__doc__))
    p.add_argument("--corpus", choices=sorted(ADAPTERS), help="the corpus (default: the config's first)")
    p.add_argument("--data-root", help="folder holding the corpora (default: $RAY_SER_DATA_ROOT, then ../shared/corpora)")
    p.add_argument("--out", required=True, help="manifest Parquet file to write")
    p.add_argument("--csv", help="with --corpus csv: the CSV file to read")
    p.add_argument("--audio-root", help="with --corpus csv: folder the CSV's paths are relative to")
    p.add_argument("--csv-name", help="with --corpus csv: the corpus name (default: the CSV's corpus column, else "
                                      "its file's stem)")
    p.add_argument("--folds", default=None, help="'loso' or an integer k for k speaker-disjoint stratified folds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true",
                   help="with --corpus csv: stop at the first faulty row (default: leave it out and report it)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                   help="adapter option, e.g. --option smoothing='\"neutral\"' for EmoDB; repeatable")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    cfg, args = from_args(p, argv, BINDS)
    console.setup(log_folder(cfg, args))

    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    if args.corpus == "csv":
        if not args.csv:
            p.error("--corpus csv needs --csv FILE")
        options.update(csv=args.csv, audio_root=args.audio_root, name=args.csv_name, strict=args.strict)
    manifest = build_manifest(args.corpus, data_root(args.data_root), **options)
    if args.folds == "loso":
        manifest = fold_makers.loso(manifest)
    elif args.folds:
        manifest = fold_makers.speaker_folds(manifest, int(args.folds), seed=args.seed)
    out = manifest.write(args.out)
    df = manifest.to_polars()
    print(f"wrote {out}: {len(manifest)} utterances, {df['speaker'].n_unique()} speakers, "
          f"{len(manifest.categories)} categories {manifest.categories}")
    report(manifest)


def report(manifest, show: int = 10) -> None:
    """Print the rows a user should look at: left out (faults), unreadable audio, missing audio files."""
    problems, missing = manifest.audio_problems(), manifest.missing_audio()
    print(f"{len(manifest.rejected)} rows left out for manifest faults, {len(problems)} with unreadable audio "
          f"(duration null; extraction records each as an errors row), {len(missing)} whose audio file is missing")
    for r in manifest.rejected[:show]:
        print(f"  left out: {r['reason']}")
    for uid, path, reason in problems[:show]:
        print(f"  unreadable: {uid} ({path}): {reason}")
    for uid, path in missing[:show]:
        print(f"  missing: {uid} ({path})")


if __name__ == "__main__":
    main()
