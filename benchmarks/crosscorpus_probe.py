"""The bar of the cross-corpus matrix: a linear probe per held-out corpus (ray_ser.evaluate.corpus_probe), with
per-corpus and with global scaling, written in the matrix layout.

    python benchmarks/crosscorpus_probe.py --store store --model whisper-base --corpora emodb,ravdess,ased \\
        --conditions clean,5dB --out runs/xc/probe.parquet
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import polars as pl

    from ray_ser.evaluate.corpus_probe import loco_probe
    from ray_ser.store import Store

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--corpora", required=True)
    p.add_argument("--label-set", default="four")
    p.add_argument("--conditions", default="clean")
    p.add_argument("--layers", type=int, default=3, help="the probe reads the training corpora's K best layers")
    p.add_argument("--scalers", default="per-corpus,global")
    p.add_argument("--out", help="Parquet file for the rows")
    args = p.parse_args()
    store = Store(args.store)  # opened once for every scaler's matrix
    parts = []
    for scaler in args.scalers.split(","):
        t0 = time.perf_counter()
        df = loco_probe(store, args.model, args.corpora.split(","), args.label_set, scaler, args.layers,
                        args.conditions.split(","))
        parts.append(df.with_columns(pl.lit(scaler).alias("scaler")))
        print(f"{scaler}: {time.perf_counter() - t0:.0f} s")
    out = pl.concat(parts)
    with pl.Config(tbl_rows=100, tbl_cols=12):
        print(out.filter(pl.col("metric") == "uar").select("scaler", "train_corpora", "test_corpus", "condition",
                                                           "value", "ci_low", "ci_high", "n", "n_speakers"))
    if args.out:
        out.write_parquet(args.out)


if __name__ == "__main__":
    main()
