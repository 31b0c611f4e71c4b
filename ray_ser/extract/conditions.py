"""Degraded evaluation conditions (additive noise at an SNR band, synthetic reverb) and augmented training copies,
deterministic per utterance.

SER papers report accuracy on noisy copies of the test set; every model and every re-run must see the
same noisy copy, so each utterance's degradation is seeded from (seed, condition name, utterance id) alone.

``aug0``, ``aug1``, ... are seed 002's augmentation suite: copy i of an utterance applies each of Polarity
Inversion, Gain, Audio Reversal, Noise Addition, Resampling, Equalization and Echo independently with
probability 0.2, seeded by (seed, "aug<i>", utterance id), so every model trains on the same audio; the
parameters each copy drew are returned (and stored per row) as JSON.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
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
    augment: bool = False  # the augmentation suite (aug<i>): a training copy, not an evaluation condition

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
        return self.snr_db is None and not self.reverb and not self.augment


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


AUG_PATTERN = re.compile(r"aug(0|[1-9][0-9]{0,3})")
"""Augmented copies are named aug0, aug1, ... (copy index, no leading zeros, at most 10,000 copies)."""


def is_augmented(name: str) -> bool:
    """True for the augmentation suite's copy names (``aug<i>``)."""
    return AUG_PATTERN.fullmatch(str(name)) is not None


def aug_conditions(copies: int) -> list[str]:
    """The names of ``copies`` augmented copies per utterance: aug0 .. aug<copies-1>."""
    if not 0 <= int(copies) <= 10_000:
        raise ValueError(f"augmented copies must be within [0, 10000], got {copies}")
    return [f"aug{i}" for i in range(int(copies))]


def _known() -> str:
    return ", ".join([*CONDITIONS, "aug<i>"])


def _lookup(name: str) -> Condition:
    """The registered condition called ``name`` (or an ``aug<i>`` copy), or a ValueError listing the known names."""
    if name in CONDITIONS:
        return CONDITIONS[name]
    if is_augmented(name):
        return Condition(name, augment=True)
    raise ValueError(f"unknown condition {name!r}; known: {_known()}")


def parse_conditions(spec: str | Iterable[str]) -> list[Condition]:
    """Turn "clean,25dB,aug0,aug1" (or a list of names) into Conditions, in order, without duplicates."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [n for n in names if n not in CONDITIONS and not is_augmented(n)]
    if unknown:
        raise ValueError(f"unknown condition(s) {', '.join(map(repr, unknown))}; known: {_known()}")
    if not names:
        raise ValueError(f"no conditions given; known: {_known()}")
    return [_lookup(n) for n in names]


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
    from scipy.signal import (
        fftconvolve,  # imported here: scipy/audiomentations cost ~1 s to import
    )

    y = fftconvolve(x.astype(np.float64), tail)[: x.size]
    # Same RMS as the input, so loudness stays comparable and a later SNR is relative to the clean level too.
    ry = _rms(y)
    return y * (_rms(x) / ry) if ry > 0 else y


def _noise(x: np.ndarray, sample_rate: int, cond: Condition, snr_db: float, noise_seed: int) -> np.ndarray:
    """Additive noise from audiomentations at exactly ``snr_db`` relative to ``x``'s power (float64)."""
    from audiomentations import (  # imported on first use: ~1 s, only noise needs it
        AddColorNoise,
        AddGaussianSNR,
    )
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


# --- the augmentation suite (seed 002) ----------------------------------------------------------------------
AUG_P = 0.2
"""Each transform of a copy is applied independently with this probability."""
AUG_TRANSFORMS: tuple[str, ...] = (
    "polarity_inversion", "gain", "reverse", "noise", "resample", "equalization", "echo",
)
"""Applied in this order; the order and the draws are part of every stored copy, so never reorder them."""
AUG_GAIN_DB = (-12.0, 12.0)  # audiomentations Gain's defaults
AUG_SNR_DB = (5.0, 40.0)  # audiomentations AddGaussianSNR's defaults
AUG_RESAMPLE_HZ = (8000, 16000)  # down to a rate in this band and back: the band limit of a lower-rate channel
AUG_ECHO_DELAY_S = (0.05, 0.3)  # one reflection, y[n] = x[n] + g x[n - d]
AUG_ECHO_GAIN = (0.2, 0.6)


def aug_plan(utt_id: str, condition: str, seed: int = 0) -> list[tuple[str, int]]:
    """(transform, its 32-bit seed) for each transform copy ``condition`` applies, in application order.

    Every transform gets an independent Bernoulli(AUG_P) draw and a seed from the copy's own stream,
    applied or not, so adding a transform's parameters never shifts another's."""
    h = seed_for(utt_id, condition, seed)
    rs = np.random.RandomState(np.array([h & 0xFFFFFFFF, h >> 32], dtype=np.uint32))
    applied = rs.random_sample(len(AUG_TRANSFORMS)) < AUG_P
    seeds = rs.randint(0, 2**32, size=len(AUG_TRANSFORMS), dtype=np.uint64)
    return [(name, int(s)) for name, a, s in zip(AUG_TRANSFORMS, applied, seeds) if a]


def _seeded_global(seed: int, fn):
    """Run ``fn()`` with numpy's and python's global RNGs seeded (audiomentations draws from them), then restore them."""
    with _GLOBAL_RNG_LOCK:
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            np.random.seed(seed)
            random.seed(seed)
            return fn()
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _audiomentation(transform, x: np.ndarray, sample_rate: int, seed: int) -> np.ndarray:
    """Apply an audiomentations transform (p=1) with parameters drawn from ``seed``; they stay on the transform."""
    def run():
        transform.randomize_parameters(x, sample_rate)
        transform.freeze_parameters()
        return transform(x, sample_rate)

    return np.asarray(_seeded_global(seed, run), dtype=np.float32)


def echo(x: np.ndarray, delay: int, gain: float) -> np.ndarray:
    """One reflection ``delay`` samples later at ``gain``: y[n] = x[n] + gain x[n - delay], same length."""
    y = x.astype(np.float32, copy=True)
    if 0 < delay < x.size:
        y[delay:] += np.float32(gain) * x[: x.size - delay].astype(np.float32)
    return y


def apply_transform(name: str, x: np.ndarray, sample_rate: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One transform of the suite with parameters drawn from ``seed`` -> (float32 audio, same length; its draws)."""
    import audiomentations as A  # imported on first use: ~1 s

    x = np.asarray(x, dtype=np.float32)
    if name == "polarity_inversion":
        return _audiomentation(A.PolarityInversion(p=1.0), x, sample_rate, seed), {}
    if name == "gain":
        t = A.Gain(min_gain_db=AUG_GAIN_DB[0], max_gain_db=AUG_GAIN_DB[1], p=1.0)
        y = _audiomentation(t, x, sample_rate, seed)
        return y, {"gain_db": float(20 * np.log10(t.parameters["amplitude_ratio"]))}
    if name == "reverse":
        return _audiomentation(A.Reverse(p=1.0), x, sample_rate, seed), {}
    if name == "noise":
        t = A.AddGaussianSNR(min_snr_db=AUG_SNR_DB[0], max_snr_db=AUG_SNR_DB[1], p=1.0)
        y = _audiomentation(t, x, sample_rate, seed)
        std, level = float(t.parameters["noise_std"]), _rms(x)
        return y, {"snr_db": float(20 * np.log10(level / std)) if std > 0 and level > 0 else None, "noise_std": std}
    if name == "resample":
        # soxr (ray_ser's resampler), not audiomentations' Resample: that calls librosa, whose first call here
        # spends over a minute compiling with numba in every fresh worker
        import soxr

        hi = min(AUG_RESAMPLE_HZ[1], sample_rate)
        rate = int(np.random.RandomState(seed).randint(min(AUG_RESAMPLE_HZ[0], hi), hi + 1))
        low = soxr.resample(x, sample_rate, rate, quality="HQ")
        y = soxr.resample(low, rate, sample_rate, quality="HQ")[: x.size].astype(np.float32)
        return np.pad(y, (0, x.size - y.size)), {"sample_rate": rate}
    if name == "equalization":
        t = A.SevenBandParametricEQ(p=1.0)
        y = _audiomentation(t, x, sample_rate, seed)
        bands = [t.low_shelf_filter, *t.peaking_filters, t.high_shelf_filter]
        return y, {"bands": [{k: float(f.parameters[k]) for k in ("center_freq", "gain_db", "q_factor")} for f in bands]}
    if name == "echo":
        rs = np.random.RandomState(seed)
        delay_s, gain = float(rs.uniform(*AUG_ECHO_DELAY_S)), float(rs.uniform(*AUG_ECHO_GAIN))
        return echo(x, int(round(delay_s * sample_rate)), gain), {"delay_s": delay_s, "gain": gain}
    raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(AUG_TRANSFORMS)}")


def augment_with_params(samples: np.ndarray, sample_rate: int, condition: str, utt_id: str,
                        seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Copy ``condition`` (aug<i>) of an utterance -> (float32 audio, same length; {transform: its draws})."""
    y = np.asarray(samples, dtype=np.float32)
    drawn: dict[str, Any] = {}
    for name, sub in aug_plan(utt_id, condition, seed):
        y, drawn[name] = apply_transform(name, y, sample_rate, sub)
    return y, drawn


def apply_with_params(
    samples: np.ndarray, sample_rate: int, condition: Condition | str, utt_id: str, seed: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """Degrade mono ``samples`` under ``condition``; returns float32 audio of the same length and the draws.

    The draws ({"snr_db": float | None, "rt60": float | None}) are what the store records per utterance;
    an augmented copy (aug<i>) adds "aug_params", the JSON of the transforms it applied and their parameters.
    Silent input stays silent (its noise level, relative to zero power, is zero).
    """
    cond = _lookup(condition) if isinstance(condition, str) else condition
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected mono 1-D samples, got shape {x.shape}")
    params: dict[str, Any] = {"snr_db": None, "rt60": None}
    if cond.augment:
        y, drawn = augment_with_params(x, sample_rate, cond.name, utt_id, seed)
        return y, {**params, "aug_params": json.dumps(drawn, sort_keys=True)}
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
