"""Scoring new audio with a trained model, outside the store: portable model bundles (``ray-ser export``), the
in-process predictor behind ``ray_ser.load_model`` and ``ray-ser predict``, and the bundle's model card."""
