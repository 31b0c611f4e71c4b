"""Speech foundation models that return the hidden states of every layer."""

from ray_ser.fm.base import EncoderOutput, SpeechEncoder, pick_device
from ray_ser.fm.registry import DEFAULT_MODEL, EMBEDDED, load_model

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "EncoderOutput", "SpeechEncoder", "load_model", "pick_device"]
