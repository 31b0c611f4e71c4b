"""Scoring new audio with a trained model, outside the store: portable model bundles (``ray-ser export``), the
in-process predictor behind ``ray_ser.load_model`` and ``ray-ser predict``, and the bundle's model card."""

from ray_ser.public import lazy_api

__all__, __getattr__, __dir__ = lazy_api(__name__, {
    "bundle": ["from_run", "write_bundle"],
    "card": ["model_card", "read_evaluation"],
    "config": ["ExportConfig", "PredictConfig"],
    "inputs": ["collect"],
    "model": ["load_model"],
    "pipeline": ["predict_with_ray"],
})
