"""Degraded evaluation conditions (additive noise at an SNR band, synthetic reverb), deterministic per utterance.

SER papers report accuracy on noisy copies of the test set; every model and every re-run must see the
same noisy copy, so each utterance's degradation is seeded from (seed, condition name, utterance id) alone.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

NoiseKind = Literal["white", "pink"]

REVERB_DRR_DB = 0.0
"""Direct-to-reverberant energy ratio of the synthetic impulse response: a talker a metre or two away."""


@dataclass(frozen=True)
class Condition:
    """One degradation: additive noise with SNR drawn from ``snr_db`` (dB, inclusive range) and/or reverb.

    ``noise`` is white by default: audiomentations' pink generator (AddColorNoise, n_fft=128) puts a random
    2-77 % (median 61 %, 40 draws) of its power below 60 Hz, so its speech-band SNR varies per utterance.
    """

    name: str
    snr_db: tuple[float, float] | None = None
    reverb: bool = False
    noise: NoiseKind = "white"
    rt60: tuple[float, float] = (0.2, 0.8)

    def __post_init__(self) -> None:
        if self.snr_db is not None and not self.snr_db[0] <= self.snr_db[1]:
            raise ValueError(f"condition {self.name!r}: snr_db range {self.snr_db} has min > max")
        if self.noise not in ("white", "pink"):
            raise ValueError(f"condition {self.name!r}: noise must be 'white' or 'pink', not {self.noise!r}")
        if not 0.0 < self.rt60[0] <= self.rt60[1]:
            raise ValueError(f"condition {self.name!r}: rt60 range {self.rt60} must be positive and ordered")

    @property
    def is_clean(self) -> bool:
        """True when ``apply`` returns the input unchanged."""
        return self.snr_db is None and not self.reverb


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("clean"),
        Condition("25dB", snr_db=(20.0, 30.0)),
        Condition("15dB", snr_db=(10.0, 20.0)),
        Condition("5dB", snr_db=(0.0, 10.0)),
        Condition("reverb", reverb=True),
        Condition("reverb+15dB", snr_db=(10.0, 20.0), reverb=True),
    )
}
"""Known conditions by name; the name is part of each utterance's seed, so never rename one."""

DEFAULT_CONDITIONS: tuple[str, ...] = ("clean", "25dB", "15dB", "5dB")


def _lookup(name: str) -> Condition:
    """The registered condition called ``name``, or a ValueError listing the known names."""
    try:
        return CONDITIONS[name]
    except KeyError:
        raise ValueError(f"unknown condition {name!r}; known: {', '.join(CONDITIONS)}") from None


def parse_conditions(spec: str | Iterable[str]) -> list[Condition]:
    """Turn "clean,25dB" (or a list of names) into Conditions, in order, without duplicates."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition(s) {', '.join(map(repr, unknown))}; known: {', '.join(CONDITIONS)}")
    if not names:
        raise ValueError(f"no conditions given; known: {', '.join(CONDITIONS)}")
    return [CONDITIONS[n] for n in names]


def seed_for(utt_id: str, condition: str, seed: int = 0) -> int:
    """A 64-bit seed from (seed, condition, utt_id) via blake2b: stable across processes, unlike hash()."""
    key = f"{int(seed)}\x00{condition}\x00{utt_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


# audiomentations draws its noise from numpy's *global* legacy RNG (np.random.normal/uniform) and has no
# seed or Generator argument. So the parameters (SNR, RT60, IR) come from our own RandomState, set on the
# transform explicitly and frozen, and only the noise waveform is drawn from the global RNG, which we seed
# and then restore (numpy and python `random` both) under a lock so concurrent calls in one process cannot
# interleave. Code in other threads that uses np.random without this lock could still race with us.
# RandomState/MT19937 streams are frozen by NEP 19, so the audio stays bit-identical across numpy upgrades.
_GLOBAL_RNG_LOCK = threading.Lock()


def _rms(x: np.ndarray) -> float:
    """Root mean square in float64."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _reverb(x: np.ndarray, sample_rate: int, rt60: float, rs: np.random.RandomState) -> np.ndarray:
    """Convolve with a direct path plus exponentially decaying noise (-60 dB at rt60); keep length and RMS."""
    n_ir = max(2, int(round(rt60 * sample_rate)))
    t = np.arange(n_ir) / sample_rate
    tail = rs.standard_normal(n_ir) * 10.0 ** (-3.0 * t / rt60)
    tail[0] = 0.0
    tail *= 10.0 ** (-REVERB_DRR_DB / 20.0) / np.sqrt(np.sum(tail**2))
    tail[0] = 1.0  # direct path, unit energy
    from scipy.signal import fftconvolve  # imported here: scipy/audiomentations cost ~1 s to import

    y = fftconvolve(x.astype(np.float64), tail)[: x.size]
    # Same RMS as the input, so loudness stays comparable and a later SNR is relative to the clean level too.
    ry = _rms(y)
    return y * (_rms(x) / ry) if ry > 0 else y


def _noise(x: np.ndarray, sample_rate: int, cond: Condition, snr_db: float, noise_seed: int) -> np.ndarray:
    """Additive noise from audiomentations at exactly ``snr_db`` relative to ``x``'s power (float64)."""
    from audiomentations import AddColorNoise, AddGaussianSNR  # imported on first use: ~1 s, only noise needs it
    from audiomentations.augmentations.add_color_noise import NOISE_COLOR_DECAYS

    x32 = x.astype(np.float32)
    clean_rms = _rms(x32)
    target_rms = clean_rms / 10.0 ** (snr_db / 20.0)
    if cond.noise == "white":
        transform: AddGaussianSNR | AddColorNoise = AddGaussianSNR(min_snr_db=snr_db, max_snr_db=snr_db, p=1.0)
        transform.parameters.update(should_apply=True, noise_std=float(target_rms))
    else:
        decay = NOISE_COLOR_DECAYS["pink"]
        transform = AddColorNoise(min_snr_db=snr_db, max_snr_db=snr_db, min_f_decay=decay, max_f_decay=decay, p=1.0)
        transform.parameters.update(
            should_apply=True, desired_noise_rms=float(target_rms), f_decay=decay, apply_a_weighting=False
        )
    transform.freeze_parameters()  # __call__ must not re-randomize from the global RNG
    with _GLOBAL_RNG_LOCK:
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            np.random.seed(noise_seed)
            out = transform(x32, sample_rate)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
    noise = out.astype(np.float64) - x32
    # The drawn noise has the target RMS only in expectation; rescale so the achieved SNR is the recorded one.
    nr = _rms(noise)
    return x.astype(np.float64) + (noise * (target_rms / nr) if nr > 0 else noise)


def apply_with_params(
    samples: np.ndarray, sample_rate: int, condition: Condition | str, utt_id: str, seed: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """Degrade mono ``samples`` under ``condition``; returns float32 audio of the same length and the draws.

    The draws ({"snr_db": float | None, "rt60": float | None}) are what the store records per utterance.
    Silent input stays silent (its noise level, relative to zero power, is zero).
    """
    cond = _lookup(condition) if isinstance(condition, str) else condition
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected mono 1-D samples, got shape {x.shape}")
    params: dict[str, Any] = {"snr_db": None, "rt60": None}
    if cond.is_clean:
        return x.astype(np.float32, copy=True), params
    h = seed_for(utt_id, cond.name, seed)
    rs = np.random.RandomState(np.array([h & 0xFFFFFFFF, h >> 32], dtype=np.uint32))
    # Fixed draw order: SNR, RT60, IR, noise seed; changing it changes every degraded copy.
    snr_db = float(rs.uniform(*cond.snr_db)) if cond.snr_db is not None else None
    rt60 = float(rs.uniform(*cond.rt60)) if cond.reverb else None
    y = x.astype(np.float64)
    if rt60 is not None:
        y = _reverb(y, sample_rate, rt60, rs)
    if snr_db is not None:
        y = _noise(y, sample_rate, cond, snr_db, int(rs.randint(0, 2**32, dtype=np.uint64)))
    params.update(snr_db=snr_db, rt60=rt60)
    return y.astype(np.float32), params


def apply(
    samples: np.ndarray, sample_rate: int, condition: Condition | str, utt_id: str, seed: int = 0
) -> np.ndarray:
    """Degraded float32 copy of ``samples`` under ``condition``; see ``apply_with_params``."""
    return apply_with_params(samples, sample_rate, condition, utt_id, seed)[0]
