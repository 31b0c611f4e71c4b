"""Extract every layer of a speech model into the LanceDB store, clean and at each SNR.

Local:   python jobs/extract.py --config configs/emodb.yaml   (or --corpus emodb --model whisper-base --store store/)
Cluster: ray job submit --working-dir . -- python jobs/extract.py --corpus emodb --data-root /data --store s3://...
Re-running the same command extracts only what is missing.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

from ray_ser import console
from ray_ser.config import (
    Bind,
    ConfigError,
    ExperimentConfig,
    InputError,
    add_config_args,
    csv_list,
    from_args,
    log_folder,
    negated,
)
from ray_ser.corpora import ADAPTERS, Manifest, build_manifest
from ray_ser.extract.program import ExtractResult, extract
from ray_ser.jobs.stage import StageResult, open_store
from ray_ser.store import Store
from ray_ser.settings import data_root


def parser() -> argparse.ArgumentParser:
    p = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", choices=sorted(ADAPTERS), help="build the corpus's manifest from --data-root (data.corpora)")
    src.add_argument("--manifest", help="a manifest Parquet written by jobs/manifest.py (data.manifest)")
    p.add_argument("--data-root", help="folder holding the corpora (default: $RAY_SER_DATA_ROOT, then ../shared/corpora)")
    p.add_argument("--model", help="embedded name, Hugging Face hub id or local folder")
    p.add_argument("--store", help="LanceDB store URI (a local folder or object-store URI)")
    p.add_argument("--conditions", type=csv_list, help="comma-separated, e.g. clean,25dB,15dB,5dB")
    p.add_argument("--limit", type=int, help="only N utterances, taken in turn from each speaker and its categories (smoke runs)")
    p.add_argument("--no-frames", action="store_true", help="store pooled vectors only, no frame matrices")
    p.add_argument("--frame-layers", type=layer_list,
                   help="store frames of these layers only, e.g. 2,3,4 or -1 (pooled vectors are always stored for all)")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"],
                   help="model precision (default auto: float16 on GPUs, float32 on CPUs); recorded with the table")
    p.add_argument("--device", choices=["auto", "gpu", "cpu"],
                   help="where the model actors run: gpu asks Ray for a GPU each even before a GPU node is up (the "
                        "autoscaler adds them), cpu never; auto (default): gpu when a node or an autoscaler node type "
                        "has GPUs")
    p.add_argument("--aug-copies", type=int,
                   help="add N augmented training copies per utterance as conditions aug0..aug<N-1> (seed 002's suite)")
    p.add_argument("--write-mode", choices=["driver", "fragments"],
                   help="driver: actors return rows and the driver appends them; fragments: actors write Lance "
                        "fragments and the driver only commits them (for GPU clusters, where one driver cannot "
                        "take every row)")
    p.add_argument("--whisper-mode", help="strided:<s> (default strided:10) | trimmed | padded | window:<seconds>")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-batch-seconds", type=float)
    p.add_argument("--pool-size", type=int, help="model actors (default: one per GPU, alive or addable by the autoscaler; on CPUs one per core, "
                                                 "at most 4)")
    p.add_argument("--threads", type=int, help="torch threads per CPU actor (default: cores / actors)")
    p.add_argument("--model-key", help="name to file the embeddings under (default: model, plus @mode)")
    p.add_argument("--seed", type=int, help="seed of the degraded copies")
    p.add_argument("--retry-errors", action="store_true", help="try utterances that failed in earlier runs again")
    p.add_argument("--commit-mb", type=float, help="commit to LanceDB once this many MB of rows are buffered ...")
    p.add_argument("--commit-seconds", type=float,
                   help="... or this many seconds have passed (0: every block); a crash loses at most this much")
    p.add_argument("--csv", help="with --corpus csv: the CSV file to read")
    p.add_argument("--audio-root", help="with --corpus csv: folder the CSV's paths are relative to")
    p.add_argument("--csv-name", help="with --corpus csv: the name the store files it under (default: the CSV's "
                                      "corpus column, else its file's stem)")
    p.add_argument("--max-seconds", type=float, help="longer audio becomes an errors row (read from the header, before decoding)")
    p.add_argument("--on-drift", choices=["refuse", "new-key"],
                   help="when the table was made with other settings (seed, frames, dtype, conditions, ...): refuse "
                        "(default), or file this run under a key derived from its settings")
    p.add_argument("--wait-lease", type=float, metavar="SECONDS",
                   help="wait this long while another run writes the same table, then refuse (default: refuse now)")
    p.add_argument("--actor-resources", type=json.loads, metavar="JSON",
                   help='custom Ray resources each model actor needs, e.g. \'{"gpu_node": 0.1}\' (pins them to nodes '
                        "started with those resources)")
    p.add_argument("--keep-versions", type=float, metavar="SECONDS",
                   help="compaction deletes superseded table versions only this long after (readers keep their files)")
    return p


BINDS = {
    "corpus": Bind("data.corpora", lambda c: [c]), "manifest": "data.manifest", "data_root": "data.data_root",
    "csv": "data.csv", "audio_root": "data.audio_root", "csv_name": "data.csv_name", "limit": "data.limit",
    "store": "store.uri",
    "no_frames": negated("extract.frames"), "keep_versions": "extract.keep_versions_s",
    **{k: f"extract.{k}" for k in ("model", "conditions", "frame_layers", "dtype", "device", "aug_copies", "write_mode",
                                   "whisper_mode", "batch_size", "max_batch_seconds", "pool_size", "threads",
                                   "model_key", "seed", "retry_errors", "commit_mb", "commit_seconds",
                                   "max_seconds", "on_drift", "wait_lease", "actor_resources")},
}
"""Each flag's config key (data, store and extract sections)."""


def layer_list(text: str) -> list[int]:
    """'2,3,-1' -> [2, 3, -1] (argparse type of --frame-layers)."""
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frame-layers takes comma-separated layer numbers, got {text!r}") from None
    if not layers:
        raise argparse.ArgumentTypeError("--frame-layers needs at least one layer (or use --no-frames)")
    return layers


def manifests(cfg: ExperimentConfig) -> list[Manifest]:
    """The manifests the config names: its manifest file, else one per corpus (``data.limit`` rows each)."""
    if cfg.data.manifest:
        found = [Manifest.read(cfg.data.manifest)]
    else:
        found = []
        for corpus in cfg.data.corpora:
            adapter = ({"csv": cfg.data.csv, "audio_root": cfg.data.audio_root, "name": cfg.data.csv_name}
                       if corpus == "csv" else {})
            found.append(build_manifest(corpus, data_root(cfg.data.data_root), **adapter))
    return [m.spread(cfg.data.limit) if cfg.data.limit else m for m in found]


class CorpusClash(InputError):
    """A corpus name under which the store already files the rows of another source (:func:`check_clash`)."""


def check_clash(store: "str | Store", manifest: Manifest) -> None:
    """Refuse (:class:`CorpusClash`) a manifest whose corpus name the store already files another source under.

    The store records where a manifest came from only by its rows, so the rule reads them: the stored
    ``manifest__<name>`` and ``manifest`` are one source when they share an utt_id and every utt_id they share
    has the same audio path. Re-running a CSV into its store (a resume, another ``--limit``, labels edited, rows
    added or dropped) passes; another CSV under the same name shares no utt_id, or gives a shared one other
    audio (whose stored embeddings would be taken for it), and is refused, as is a CSV whose audio has moved
    (the store cannot tell that from another corpus's files). An empty manifest on either side passes. A
    built-in adapter's name is not checked: only that adapter files a corpus under it (the csv adapter refuses
    those names), wherever its data root lies."""
    import os

    from ray_ser.store import as_store
    from ray_ser.store.names import table_name

    name = manifest.corpus
    if name in ADAPTERS or not len(manifest):
        return
    store = as_store(store)
    table = table_name(name, "manifest")
    if not store.has(table):
        return
    stored = store.open(table).to_arrow().select(["utt_id", "path"])
    if not stored.num_rows:
        return
    old = dict(zip(stored.column("utt_id").to_pylist(), stored.column("path").to_pylist()))
    new = dict(zip(manifest.column("utt_id"), manifest.column("path")))
    shared = [u for u in new if u in old]
    moved = [u for u in shared if os.path.normpath(old[u]) != os.path.normpath(new[u])]
    if shared and not moved:
        return
    why = (f"utt_id {moved[0]!r} is {old[moved[0]]} there and {new[moved[0]]} here ({len(moved)} of the "
           f"{len(shared)} shared utt_ids name other audio)" if moved else "the two share no utt_id")
    earlier = _stored_source(store, name)
    raise CorpusClash(
        f"store {store.uri} already files another corpus under the name {name!r}: its manifest__ table holds "
        f"{len(old)} utterances with audio under {_folder(old.values())}{earlier}, while this manifest "
        f"({manifest.source}) has {len(new)} with audio under {_folder(new.values())}; {why}. Give this corpus "
        "another name with --csv-name (data.csv_name) or the CSV's corpus column, or use another store.")


def _folder(paths) -> str:
    """The folder all ``paths`` lie under, for a message."""
    import os

    try:
        return os.path.commonpath([os.path.dirname(p) for p in paths]) or "."
    except ValueError:  # relative and absolute mixed
        return "several folders"


def _stored_source(store, corpus: str) -> str:
    """', last extracted from <file>' when the runs table recorded the config of a run on ``corpus``, else ''."""
    import json

    try:
        if not store.has("runs"):
            return ""
        runs = store.open("runs").to_arrow()
        configs = [c for k, c in zip(runs.column("corpus").to_pylist(), runs.column("config").to_pylist())
                   if k == corpus and c]
        data = json.loads(configs[-1]).get("data", {}) if configs else {}
    except Exception:  # best effort: the message stands without it
        return ""
    file = data.get("manifest") or data.get("csv")
    return f", last extracted from {file}" if file else ""


@dataclass
class ExtractStageResult(StageResult):
    """One extraction run per corpus (what each console line says), in the manifests' order."""

    runs: list[ExtractResult] = field(default_factory=list)

    def __iter__(self):
        return iter(r.__dict__ for r in self.runs)

    def __len__(self) -> int:
        return len(self.runs)


def run(cfg: ExperimentConfig, store: Store) -> ExtractStageResult:
    """Extract every corpus of ``cfg`` into ``store``, one run per corpus. Every manifest's corpus name is checked
    against the store (:func:`check_clash`) before any is extracted."""
    from ray_ser.runtime import init_ray

    if not cfg.data.corpora and not cfg.data.manifest:
        raise ConfigError("nothing to extract: give --corpus or --manifest (or data.corpora / data.manifest in --config)")
    with console.stage(f"extract {cfg.extract.key}"):
        found = manifests(cfg)
        for manifest in found:
            check_clash(store, manifest)
        results = ExtractStageResult()
        for manifest in found:
            console.say(f"manifest {manifest.corpus}: {manifest.summary()}")
            init_ray()
            result = extract(manifest, store, cfg.extract, experiment=cfg.public())
            console.detail(json.dumps(result.__dict__, indent=2))
            console.say(summary(result.__dict__))
            results.runs.append(result)
        return results


def summary(result: dict) -> str:
    """One line of what an extraction run did, in (utterance, condition) pairs."""
    skipped = result["done_before"] + result["failed_before"]
    return (f"{result['table']}: {result['extracted']} extracted, {result['errors']} failed (see the errors table), "
            f"{skipped} done before, {result['manifest_errors']} manifest rows left out, {result['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> list[dict]:
    """The argparse layer: the config from the flags, the store opened once, then :func:`run` (its runs as dicts)."""
    p = parser()
    cfg, args = from_args(p, argv, BINDS)
    if not cfg.data.corpora and not cfg.data.manifest:
        p.error("nothing to extract: give --corpus or --manifest (or data.corpora / data.manifest in --config)")
    console.setup(log_folder(cfg, args))
    return list(run(cfg, open_store(cfg)))


if __name__ == "__main__":
    main()
