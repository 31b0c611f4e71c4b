"""Audio decoding: mono, resampling, and AudioError naming the file and the reason."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from ray_ser import audio
from ray_ser.audio import AudioError


def _tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return x if channels == 1 else np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)


def test_stereo_44k1_to_mono_16k(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, _tone(0.5, 44100, channels=2), 44100, subtype="PCM_16")
    info = audio.info(str(path))
    assert (info.sample_rate, info.channels, info.frames) == (44100, 2, 22050)
    assert info.duration == pytest.approx(0.5)
    x = audio.load(str(path))
    assert x.ndim == 1 and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    assert abs(len(x) - 8000) <= 1
    # mono is the channel mean: amplitude 0.3 * (0.5 + 1.0) / 2
    assert np.abs(x[1000:-1000]).max() == pytest.approx(0.225, abs=0.01)


def test_8k_is_upsampled(tmp_path):
    path = tmp_path / "narrow.flac"
    sf.write(path, _tone(0.75, 8000, freq=300.0), 8000)
    x = audio.load(str(path))
    assert abs(len(x) - 12000) <= 1
    x22 = audio.load(str(path), target_rate=22050)
    assert abs(len(x22) - round(0.75 * 22050)) <= 1


def test_same_rate_is_untouched(tmp_path):
    path = tmp_path / "float.wav"
    wave = _tone(0.3, 16000)
    sf.write(path, wave, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(audio.load(str(path)), wave)


def _error(path, **kw) -> AudioError:
    with pytest.raises(AudioError) as err:
        audio.load(str(path), **kw)
    e = err.value
    assert e.path == str(path)
    assert isinstance(e.reason, str) and e.reason
    assert str(e) == f"{path}: {e.reason}"
    assert isinstance(e, ValueError)
    return e


def test_nan_is_rejected(tmp_path):
    path = tmp_path / "nan.wav"
    wave = _tone(0.5, 16000)
    wave[100] = np.nan
    sf.write(path, wave, 16000, subtype="FLOAT")
    e = _error(path)
    assert "NaN" in e.reason and "1 " in e.reason


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    assert audio.info(str(path)).frames == 0
    assert "empty" in _error(path).reason


def test_too_short_is_rejected(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, _tone(0.1, 16000), 16000)
    assert "too short" in _error(path).reason
    assert len(audio.load(str(path), min_seconds=0.05)) == 1600


def test_digital_silence_is_rejected(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(8000, np.float32), 16000)
    assert "zeros" in _error(path).reason


def test_text_file_is_unreadable(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    assert "unreadable" in _error(path).reason
    with pytest.raises(AudioError, match="unreadable") as err:
        audio.info(str(path))
    assert err.value.path == str(path)


def test_missing_file_is_unreadable(tmp_path):
    assert "unreadable" in _error(tmp_path / "nowhere.wav").reason


def test_audio_error_attributes():
    e = AudioError("/x/y.wav", "audio too short: 0.100 s < 0.25 s")
    assert e.path == "/x/y.wav" and e.reason.startswith("audio too short")
    assert str(e) == "/x/y.wav: audio too short: 0.100 s < 0.25 s"
