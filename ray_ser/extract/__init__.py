"""Extraction: decode and check audio, make the degraded copies, run every layer of a model over a corpus
with Ray Data and write pooled vectors and frames to the store."""

from ray_ser.public import lazy_api

__all__, __getattr__, __dir__ = lazy_api(__name__, {
    "conditions": ["DEFAULT_CONDITIONS", "aug_conditions"],
    "config": ["DEFAULT_WHISPER_MODE", "ExtractConfig"],
    "program": ["ExtractResult", "cpu_layout", "decode_batch", "extract", "work_items"],
})
