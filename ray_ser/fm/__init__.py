"""Speech foundation models that return the hidden states of every layer."""

from ray_ser.fm.base import EncoderOutput, SpeechEncoder, pick_device
from ray_ser.fm.registry import DEFAULT_MODEL, EMBEDDED, load_model
from ray_ser.public import lazy_api

_lazy, __getattr__, _lazy_dir = lazy_api(__name__, {
    "base": ["resolve_dtype", "torch_dtype"],
    "registry": ["describe"],
    "step": ["EmbedStep", "arrow_columns", "device_budget_frames", "plan_batches", "pool_on_device",
             "resolve_frame_layers"],
})
__all__ = ["DEFAULT_MODEL", "EMBEDDED", "EncoderOutput", "SpeechEncoder", "load_model", "pick_device", *_lazy]


def __dir__() -> list[str]:
    return sorted(__all__)
