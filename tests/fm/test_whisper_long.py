"""Audio longer than Whisper's 30 s window is encoded in consecutive windows whose frames are appended."""

import numpy as np
import pytest
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ray_ser.fm.whisper import WhisperSpeechEncoder


@pytest.mark.parametrize("mode", ["trimmed", "padded"])
def test_long_audio_is_windowed_not_truncated(mode):
    torch.manual_seed(0)
    cfg = WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                        max_source_positions=1500, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64)
    model = WhisperSpeechEncoder(WhisperEncoder(cfg), name="tiny", weights_hash="x", mode=mode, device="cpu")
    wave = (np.random.default_rng(0).standard_normal(16000 * 31 + 5000) * 0.1).astype(np.float32)
    out = model([wave, wave[:16000]])
    assert out.lengths.tolist() == [1566, 50] and out.hidden.shape == (3, 2, 1566, 32)
    first, rest = model([wave[:480000]]), model([wave[480000:]])
    torch.testing.assert_close(out.hidden[:, 0, :1500], first.hidden[:, 0, :1500], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.hidden[:, 0, 1500:1566], rest.hidden[:, 0, :66], atol=1e-4, rtol=1e-4)
