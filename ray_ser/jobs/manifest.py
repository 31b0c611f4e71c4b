"""Write a corpus manifest as Parquet: ``python jobs/manifest.py --corpus emodb --out emodb.parquet``."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

from ray_ser import console
from ray_ser.config import Bind, ConfigError, ExperimentConfig, add_config_args, from_args, log_folder
from ray_ser.corpora import ADAPTERS, build_manifest
from ray_ser.corpora import folds as fold_makers
from ray_ser.jobs.stage import StageResult
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


@dataclass
class ManifestResult(StageResult):
    """A manifest written: its Parquet file, its utterances, speakers and categories, and the rows a user should look
    at (left out for faults, unreadable audio, missing audio files), as the console counts them."""

    path: str = ""
    utterances: int = 0
    speakers: int = 0
    categories: list[str] = field(default_factory=list)
    left_out: int = 0
    unreadable: int = 0
    missing: int = 0


def main(argv: list[str] | None = None) -> ManifestResult:
    """The argparse layer: the config from the flags (the data section), then :func:`run`."""
    p = parser()
    cfg, args = from_args(p, argv, BINDS)
    if args.corpus == "csv" and not args.csv:
        p.error("--corpus csv needs --csv FILE")
    console.setup(log_folder(cfg, args))
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    return run(cfg, args.out, folds=args.folds, seed=args.seed, strict=args.strict, options=options)


def run(cfg: ExperimentConfig, out: str, folds: str | None = None, seed: int = 0, strict: bool = False,
        options: dict[str, Any] | None = None) -> ManifestResult:
    """The manifest of ``cfg``'s first corpus (its data section) written to the Parquet file ``out``, not to the
    store: extraction reads it back (data.manifest). ``folds``: "loso" or k speaker-disjoint stratified folds
    (``seed``); ``strict``: with the csv corpus, stop at the first faulty row; ``options``: the adapter's."""
    data = cfg.data
    corpus = data.corpora[0]
    options = dict(options or {})
    if corpus == "csv":
        if not data.csv:
            raise ConfigError("the csv corpus needs data.csv (the CSV file to read)")
        options.update(csv=data.csv, audio_root=data.audio_root, name=data.csv_name, strict=strict)
    manifest = build_manifest(corpus, data_root(data.data_root), **options)
    if folds == "loso":
        manifest = fold_makers.loso(manifest)
    elif folds:
        manifest = fold_makers.speaker_folds(manifest, int(folds), seed=seed)
    path = manifest.write(out)
    df = manifest.to_polars()
    speakers = df["speaker"].n_unique()
    print(f"wrote {path}: {len(manifest)} utterances, {speakers} speakers, "
          f"{len(manifest.categories)} categories {manifest.categories}")
    left_out, unreadable, missing = report(manifest)
    return ManifestResult(path=str(path), utterances=len(manifest), speakers=speakers,
                          categories=list(manifest.categories), left_out=left_out, unreadable=unreadable,
                          missing=missing)


def report(manifest, show: int = 10) -> tuple[int, int, int]:
    """Print the rows a user should look at: left out (faults), unreadable audio, missing audio files; returns
    their counts."""
    problems, missing = manifest.audio_problems(), manifest.missing_audio()
    print(f"{len(manifest.rejected)} rows left out for manifest faults, {len(problems)} with unreadable audio "
          f"(duration null; extraction records each as an errors row), {len(missing)} whose audio file is missing")
    for r in manifest.rejected[:show]:
        print(f"  left out: {r['reason']}")
    for uid, path, reason in problems[:show]:
        print(f"  unreadable: {uid} ({path}): {reason}")
    for uid, path in missing[:show]:
        print(f"  missing: {uid} ({path})")
    return len(manifest.rejected), len(problems), len(missing)


if __name__ == "__main__":
    main()
