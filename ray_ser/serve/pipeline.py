"""``ray-ser predict --engine ray``: the files scored by a Ray Data actor pool, extraction's CPU-cluster layout (each
actor decodes its own items, runs the foundation model, up to the highest layer its heads read, and the heads; a GPU
per actor where the cluster has them, else fractional CPUs and a few torch threads each), so a folder spreads over a
cluster. Each actor is a :class:`~ray_ser.serve.model.Predictor`: rows are the in-process path's, file for file."""

from __future__ import annotations

from typing import Any, Sequence

import polars as pl

KIND = "_kind"
"""Column that tells the actors' prediction rows from their error rows in one Arrow block."""


class ScoreStage:
    """Ray Data actor: loads the model once, then scores batches of (path, utt_id) items."""

    def __init__(self, model: str, options: dict[str, Any], window: float | None, hop: float | None):
        from ray_ser.serve.model import load_model

        self.model = load_model(model, **options)
        self.window, self.hop = window, hop

    def __call__(self, batch):
        paths, ids = batch.column("path").to_pylist(), batch.column("utt_id").to_pylist()
        df = self.model.predict_many(paths, ids, window=self.window, hop=self.hop)
        errors = self.model.errors_frame()
        rows = df.with_columns(pl.lit("row").alias(KIND), pl.lit(None, pl.Utf8).alias("stage"),
                               pl.lit(None, pl.Utf8).alias("message"))
        bad = errors.select(pl.col("path"), pl.lit("error").alias(KIND), "stage", "message")
        return pl.concat([rows, bad], how="diagonal_relaxed").to_arrow() if bad.height else rows.to_arrow()


def predict_with_ray(model: str, items: Sequence[tuple[str, str]], window: float | None = None,
                     hop: float | None = None, options: dict[str, Any] | None = None, batch_size: int = 8,
                     actors: int | None = None, cpus: float | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(predictions, errors) of ``items`` scored on the Ray cluster this process joined; ``actors`` x ``cpus`` each
    (default: one actor per GPU, else extraction's CPU layout on the cluster's CPUs)."""
    import pyarrow as pa
    import ray

    from ray_ser.extract.program import cpu_layout

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        n, threads, each, per_gpu = actors or gpus, 1, cpus or 1.0, 1.0
    else:
        n, threads, each = cpu_layout(ray.cluster_resources().get("CPU", 1))
        n, each, per_gpu = actors or n, cpus or each, 0.0
    opts = {**(options or {}), "threads": (options or {}).get("threads") or threads}
    table = pa.table({"path": [p for p, _ in items], "utt_id": [u for _, u in items]})
    ds = ray.data.from_arrow([table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)])
    ds = ds.map_batches(ScoreStage, fn_constructor_kwargs={"model": model, "options": opts, "window": window, "hop": hop},
                        batch_size=None, batch_format="pyarrow", concurrency=n, num_cpus=each, num_gpus=per_gpu)
    parts = [pl.from_arrow(b) for b in ds.iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
    out = pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame({KIND: []}, schema={KIND: pl.Utf8})
    errors = out.filter(pl.col(KIND) == "error").select("path", "stage", "message") if "stage" in out.columns \
        else pl.DataFrame(schema={"path": pl.Utf8, "stage": pl.Utf8, "message": pl.Utf8})
    pred = out.filter(pl.col(KIND) == "row").drop([c for c in (KIND, "stage", "message") if c in out.columns])
    order = {p: i for i, (p, _) in enumerate(items)}
    if pred.height:
        pred = pred.with_columns(pl.col("path").replace_strict(order, return_dtype=pl.Int64).alias("_o")) \
            .sort(["_o", pl.col("start").is_null(), "start"]).drop("_o")
    return pred, errors

