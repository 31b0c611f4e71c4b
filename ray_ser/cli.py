"""The ``ray-ser`` command: ``run CONFIG`` (the whole flow), one sub-command per stage (the flags of
``jobs/<stage>.py``), ``config show CONFIG`` and ``status --store S``.

A stage's sub-command and its ``jobs/<stage>.py`` script run the same ``ray_ser.jobs.<stage>.main``; a bad
config is refused here with the key's path, before anything starts."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ray_ser.config import ConfigError, InputError

STAGES = {
    "manifest": "manifest", "extract": "extract", "saliency": "saliency", "frames": "frames",
    "prune": "prune_frames", "train": "train", "tune": "tune", "evaluate": "evaluate", "crosscorpus": "crosscorpus",
    "predict": "predict", "export": "export",
}
"""Sub-command -> module under ray_ser.jobs."""

DEPRECATED = {"cluster": "frames"}
"""Old sub-command -> its new name: it still runs, after one line on stderr ("cluster" means the Ray cluster now)."""

USAGE = """usage: ray-ser [--verbose] COMMAND [ARGS]

  run CONFIG [flags]       the whole flow of an experiment config (extract, saliency, frames, train, evaluate)
  config show CONFIG       the resolved config, every default included (--set KEY=VALUE to try overrides)
  status --store S         what a store holds: corpora, models, conditions, rows, errors, analysis tables
  manifest|extract|saliency|frames|prune|train|tune|evaluate|crosscorpus [flags]
                           one stage, with the flags of jobs/<stage>.py (--config FILE, --set KEY=VALUE, ...)
  export RUN --out DIR     a trained run as a model bundle (config.json, model.safetensors, model card)
  predict --model M --input PATH... --out FILE
                           score new audio with a bundle or run (no store needed)

  ray-ser COMMAND --help shows a command's flags. --verbose (or RAY_SER_VERBOSE=1) shows Ray's logs too.
"""


def config_show(argv: list[str]) -> int:
    from ray_ser.config import add_config_args, load, parse_assignment

    p = add_config_args(argparse.ArgumentParser(prog="ray-ser config show",
                                                description="print the resolved experiment config"))
    p.add_argument("file", metavar="CONFIG", nargs="?", help="experiment config (YAML); none: every default")
    p.add_argument("--show-secrets", action="store_true",
                   help="print secret values (keys, tokens, passwords) in clear instead of ***")
    args = p.parse_args(argv)
    cfg = load(args.file or args.config, dict(parse_assignment(s) for s in args.set))
    print(cfg.to_yaml(secrets=args.show_secrets), end="")
    return 0


def status(argv: list[str]) -> int:
    from ray_ser.config import load, use_storage
    from ray_ser.store.status import read_status, render

    p = argparse.ArgumentParser(prog="ray-ser status", description="what a store holds")
    p.add_argument("--store", help="LanceDB store URI (default: the config's store.uri)")
    p.add_argument("--config", metavar="FILE", help="experiment config whose store to read")
    args = p.parse_args(argv)
    cfg = load(args.config)
    use_storage(cfg.store)
    uri = args.store or cfg.store.uri
    print(render(read_status(uri)))
    return 0


def run_stage(module: str, argv: list[str]) -> int:
    job = importlib.import_module(f"ray_ser.jobs.{module}")
    job.main(argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``ray-ser`` sub-commands; a config error or a missing file is one line on stderr, exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--verbose"], ["-v"]):
        os.environ["RAY_SER_VERBOSE"] = "1"
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "run":
            if rest and not rest[0].startswith("-"):
                rest = ["--config", rest[0], *rest[1:]]
            return run_stage("pipeline", rest)
        if command == "config":
            if rest[:1] != ["show"]:
                print("usage: ray-ser config show CONFIG", file=sys.stderr)
                return 2
            return config_show(rest[1:])
        if command == "status":
            return status(rest)
        if command in DEPRECATED:
            print(f"ray-ser: `{command}` is deprecated, use `ray-ser {DEPRECATED[command]}` (jobs/"
                  f"{DEPRECATED[command]}.py); running it", file=sys.stderr)
            command = DEPRECATED[command]
        if command in STAGES:
            return run_stage(STAGES[command], rest)
    except (ConfigError, InputError, FileNotFoundError) as e:
        print(f"ray-ser: error: {e}", file=sys.stderr)
        return 2
    print(f"ray-ser: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


def entry() -> None:
    """The console script."""
    sys.exit(main())


def job_entry(stage: str) -> None:
    """What ``jobs/<stage>.py`` runs: the stage's sub-command with the script's arguments."""
    sys.exit(main([stage, *sys.argv[1:]]))


if __name__ == "__main__":
    entry()
