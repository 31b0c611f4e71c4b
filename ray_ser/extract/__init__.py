"""Extraction: decode and check audio, make the degraded copies, run every layer of a model over a corpus
with Ray Data and write pooled vectors and frames to the store."""
