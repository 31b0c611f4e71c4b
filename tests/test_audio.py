"""Audio decoding: mono, resampling, and AudioError naming the file and the reason."""

from __future__ import annotations

import os

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


def test_text_file_is_not_an_audio_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    assert _error(path).reason.startswith("not an audio file")
    with pytest.raises(AudioError, match="not an audio file") as err:
        audio.info(str(path))
    assert err.value.path == str(path)


def test_missing_file(tmp_path):
    assert _error(tmp_path / "nowhere.wav").reason == "file not found"
    assert audio.probe(str(tmp_path / "nowhere.wav")) == (None, "file not found")


def test_directory_in_place_of_a_file(tmp_path):
    (tmp_path / "dir.wav").mkdir()
    assert _error(tmp_path / "dir.wav").reason.startswith("is a directory")


def test_zero_byte_file(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    assert _error(tmp_path / "zero.wav").reason == "empty file (0 bytes)"


def test_unreadable_permissions(tmp_path, monkeypatch):
    path = tmp_path / "locked.wav"
    sf.write(path, _tone(0.5, 16000), 16000)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads any file: stand in for the OS refusing the open
        def refuse(p):
            raise PermissionError(13, "Permission denied", p)

        monkeypatch.setattr(audio, "_open", refuse)
    assert _error(path).reason.startswith("permission denied")


def test_corrupt_header(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    assert _error(path).reason.startswith("corrupt audio header")


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_truncated_file(tmp_path, fmt):
    full, cut = tmp_path / f"full.{fmt.lower()}", tmp_path / f"cut.{fmt.lower()}"
    sf.write(full, _tone(2.0, 16000), 16000, format=fmt, subtype="PCM_16")
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated" in _error(cut).reason  # WAV: the header's data size; FLAC: the decoder loses sync
    if fmt == "WAV":  # libsndfile alone would decode the first half as a shorter file
        assert audio.probe(str(cut))[1].startswith("truncated")


def test_too_long_is_rejected_before_decoding(tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, _tone(3.0, 8000), 8000)
    assert _error(path, max_seconds=2.5).reason.startswith("audio too long: 3.0 s > 2.5 s")
    assert len(audio.load(str(path), max_seconds=3.0)) == 48000


def test_probe_reads_the_duration(tmp_path):
    path = tmp_path / "ok.wav"
    sf.write(path, _tone(0.5, 22050, channels=2), 22050)
    assert audio.probe(str(path)) == (pytest.approx(0.5), None)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    assert audio.probe(str(tmp_path / "empty.wav")) == (None, "empty audio (0 samples)")


def test_audio_error_attributes():
    e = AudioError("/x/y.wav", "audio too short: 0.100 s < 0.25 s")
    assert e.path == "/x/y.wav" and e.reason.startswith("audio too short")
    assert str(e) == "/x/y.wav: audio too short: 0.100 s < 0.25 s"
