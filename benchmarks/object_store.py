"""The store on local disk vs on an S3-compatible object store, measured in one run on the same data:

(a) extraction: the same manifest into a fresh store on each (write mode as given), utterance-conditions per second;
(b) one training epoch's read: a fold's training Ray Dataset (lance-ray read, label join, materialised, as
    ray_ser.train.loop does) and one pass of collated batches over it, cold (no shard cache);
(c) one commit: appending one row to a table (one Lance commit: a manifest write, and on the object store a
    conditional PUT), median of --commits;
(d) audio reads: the same FLAC files (--audio-files of --audio-seconds each, speech-like, 16 kHz) decoded to
    16 kHz float32 by ``ray_ser.audio.load`` from local disk and from the bucket (one GET each, decoded from
    memory), one file after another in this process, as files/s and MB/s of encoded bytes; and their headers read
    by ``audio.info`` (ranged reads) as files/s.
Prints each figure on both and the ratio object store / local (time) or local / object store (rate), so 1.0 = the
bucket costs nothing. By default it starts its own Ceph RADOS Gateway on loopback (tests/services/rgw.py; the
Debian packages ceph-mon, ceph-osd and radosgw must be installed), or give --endpoint and the AWS_* variables.

    python benchmarks/object_store.py [--speakers 8 --per-class 8] [--model DIR] [--write-mode fragments]
    python benchmarks/object_store.py --audio-only [--audio-files 200 --audio-seconds 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def extract_once(manifest, uri: str, model: str, write_mode: str) -> tuple[int, float]:
    from ray_ser.extract.program import ExtractConfig, extract

    t0 = time.perf_counter()
    result = extract(manifest, uri, ExtractConfig(model=model, model_key="bench", conditions=["clean", "5dB"],
                                                   write_mode=write_mode, batch_size=4))
    return result.extracted, time.perf_counter() - t0


def epoch_read(uri: str, fold: int = 0) -> tuple[int, float]:
    from ray_ser.train.config import TrainConfig
    from ray_ser.train.loop import epoch_batches
    from ray_ser.train.plan import fold_datasets, planned_fold, resolve_assignment

    from ray_ser.store import Store

    cfg = TrainConfig(store=uri, model="bench", layer=1, batch_size=16, corpora=["synth"])
    t0 = time.perf_counter()
    store = Store(uri)
    plan, labels, centroids = planned_fold(cfg, store, resolve_assignment(cfg, store), fold)
    ds = fold_datasets(cfg, store, plan, labels, centroids)["train"]
    n = sum(len(b["lengths"]) for b in epoch_batches(ds, cfg, 0, True, cache=None))
    return n, time.perf_counter() - t0


def commit_seconds(uri: str, commits: int) -> float:
    import pyarrow as pa

    from ray_ser.store.core import Store

    store = Store(uri)
    schema = pa.schema([("i", pa.int64()), ("t", pa.float64())])
    table = store.open_or_create("bench_commits", schema)
    times = []
    for i in range(commits):
        t0 = time.perf_counter()
        table.add(pa.table({"i": [i], "t": [time.time()]}, schema=schema))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def audio_files(folder: Path, bucket_prefix: str, count: int, seconds: float) -> tuple[list[str], list[str], int]:
    """``count`` speech-like FLACs under ``folder`` and their copies under ``bucket_prefix``: (paths, URIs, bytes)."""
    import soundfile as sf
    from speech_like import speech_like

    from ray_ser import inputs

    folder.mkdir(parents=True, exist_ok=True)
    paths, uris = [], []
    fs = inputs.filesystem(bucket_prefix)
    for i in range(count):
        path = folder / f"utt{i:04d}.flac"
        sf.write(path, speech_like(seconds, 16000, seed=i), 16000, format="FLAC", subtype="PCM_16")
        uri = f"{bucket_prefix}/{path.name}"
        fs.put_file(str(path), uri)
        paths.append(str(path))
        uris.append(uri)
    return paths, uris, sum(Path(p).stat().st_size for p in paths)


def audio_rates(locations: list[str], nbytes: int) -> dict[str, float]:
    """Decode every file (``audio.load``, 16 kHz) one after another, then read every header (``audio.info``):
    files/s and MB/s of the decode, files/s of the header reads."""
    from ray_ser import audio

    t0 = time.perf_counter()
    for loc in locations:
        audio.load(loc, 16000)
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for loc in locations:
        audio.info(loc)
    header_s = time.perf_counter() - t0
    return {"files_s": len(locations) / decode_s, "mb_s": nbytes / 2**20 / decode_s, "decode_s": decode_s,
            "headers_s": len(locations) / header_s}


def report_audio(paths: list[str], uris: list[str], nbytes: int, seconds: float) -> None:
    """(d): the same files decoded from local disk and from the bucket, in one run."""
    audio_rates(paths[:5], 0)  # warm the decoder and the client (first connection) before timing
    audio_rates(uris[:5], 0)
    rates = {"local disk": audio_rates(paths, nbytes), "object store": audio_rates(uris, nbytes)}
    print(f"audio reads: {len(paths)} FLAC files of {seconds:g} s (16 kHz mono, {nbytes / 2**20:.1f} MB), "
          "decoded one after another")
    for name, r in rates.items():
        print(f"{name:>12}: decode {r['files_s']:.1f} files/s, {r['mb_s']:.2f} MB/s ({r['decode_s']:.1f} s); "
              f"headers {r['headers_s']:.1f} files/s")
    local, remote = rates["local disk"], rates["object store"]
    print(f"audio_decode_ratio {local['files_s'] / remote['files_s']:.3f} (local / object store)")
    print(f"audio_header_ratio {local['headers_s'] / remote['headers_s']:.3f} (local / object store)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speakers", type=int, default=8, help="speakers of the generated corpus (3 emotions each)")
    p.add_argument("--per-class", type=int, default=8, help="utterances per speaker and emotion")
    p.add_argument("--model", default=None, help="model to extract with (default: a tiny random-init HuBERT)")
    p.add_argument("--write-mode", choices=["driver", "fragments"], default="driver")
    p.add_argument("--commits", type=int, default=20)
    p.add_argument("--endpoint", default=None, help="an S3 endpoint to use instead of starting a local gateway "
                                                    "(credentials from the AWS_* variables)")
    p.add_argument("--bucket", default="ray-ser")
    p.add_argument("--audio-files", type=int, default=200, help="(d): FLAC files to decode from each place")
    p.add_argument("--audio-seconds", type=float, default=6.0, help="(d): seconds of audio per file")
    p.add_argument("--audio-only", action="store_true", help="measure (d) alone")
    args = p.parse_args()

    from conftest import save_tiny_hubert
    from synthetic import write_corpus

    from ray_ser import storage
    from ray_ser.corpora import build_manifest
    from ray_ser.runtime import init_ray

    work = Path(tempfile.mkdtemp(prefix="ray_ser_objbench_"))
    gateway = None
    if args.endpoint is None:
        from services.rgw import start_rgw

        gateway = start_rgw(work / "rgw", bucket=args.bucket)
        options = gateway.storage_options()
        print(f"local Ceph RADOS Gateway at {gateway.endpoint}, up in {gateway.startup_s:.1f} s")
    else:
        options = {"endpoint": args.endpoint}
    try:
        storage.register(f"s3://{args.bucket}", options)
        paths, uris, nbytes = audio_files(work / "flac", f"s3://{args.bucket}/bench/{work.name}/audio",
                                          args.audio_files, args.audio_seconds)
        if args.audio_only:
            report_audio(paths, uris, nbytes, args.audio_seconds)
            return
        model = args.model or str(save_tiny_hubert(work / "tiny-hubert"))
        csv_path = write_corpus(work / "audio", n_speakers=args.speakers, per_class=args.per_class)
        manifest = build_manifest("csv", work, csv=str(csv_path))
        init_ray()
        places = {"local disk": str(work / "store"), "object store": f"s3://{args.bucket}/bench/{work.name}/store"}
        rows = {}
        for name, uri in places.items():
            n, s = extract_once(manifest, uri, model, args.write_mode)
            utts, read_s = epoch_read(uri)
            rows[name] = {"extract_rate": n / s, "extract_s": s, "n": n, "epoch_s": read_s, "epoch_utts": utts,
                          "commit_s": commit_seconds(uri, args.commits)}
        local, remote = rows["local disk"], rows["object store"]
        print(f"{manifest.table.num_rows} utterances x 2 conditions, model {Path(model).name}, write mode {args.write_mode}")
        for name, r in rows.items():
            print(f"{name:>12}: extraction {r['extract_rate']:.1f} utt-conditions/s ({r['extract_s']:.1f} s), "
                  f"one training epoch's read {r['epoch_s']:.2f} s ({r['epoch_utts']} utterances), "
                  f"one commit {1000 * r['commit_s']:.0f} ms")
        print(f"extraction_rate_ratio {local['extract_rate'] / remote['extract_rate']:.3f} (local / object store)")
        print(f"epoch_read_ratio {remote['epoch_s'] / local['epoch_s']:.3f} (object store / local)")
        print(f"commit_ratio {remote['commit_s'] / local['commit_s']:.3f} (object store / local)")
        report_audio(paths, uris, nbytes, args.audio_seconds)
    finally:
        if gateway is not None:
            gateway.stop()


if __name__ == "__main__":
    main()
