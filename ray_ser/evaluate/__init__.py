"""Evaluation from a predictions table onwards: metrics (arrays in), metric/confusion tables, the HTML report.

``metrics`` holds the numerics, ``tables`` builds metrics.parquet / confusion.parquet, ``report`` draws the
plots and report.html, ``synthetic`` makes predictions with known structure for tests and examples;
``ray_ser.evaluate.results`` reads evaluation folders back as Polars LazyFrames.
"""
