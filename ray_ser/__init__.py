"""ray_ser: a Ray-native feature store and batch evaluation system for speech emotion recognition."""

__version__ = "0.1.0"


def load_model(path, **kwargs):
    """A trained model for new audio: ``load_model(PATH).predict("a.wav")`` -> {category: probability}, and
    ``predict_many(paths)`` -> a Polars frame; PATH is an exported bundle, a run folder or a checkpoint folder
    (see :func:`ray_ser.serve.model.load_model`). Imported here lazily: importing ray_ser loads no stage."""
    from ray_ser.serve.model import load_model as load

    return load(path, **kwargs)
