"""ray_ser: a Ray-native feature store and batch evaluation system for speech emotion recognition."""

__version__ = "0.1.0"
