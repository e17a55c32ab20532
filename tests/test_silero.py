"""Silero VAD helpers the parity declarations rely on: the committed clip, streaming windows, the 256 ms model's
batched form, generated audio. (The parity tests themselves are generated in test_parity.py.)"""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch

from conversions import audio
from conversions.models.silero_vad import modules as silero


@pytest.fixture(scope="module")
def waveform():
    return audio.load_speech_clip()


def test_silero_clip_holds_speech_and_non_speech(waveform):
    """Otherwise the parity streams would compare saturated outputs only."""
    probabilities = silero.stream_reference(silero.load_reference(), waveform)
    assert len(waveform) <= 15 * silero.SAMPLE_RATE and len(probabilities) >= 50
    assert (probabilities > 0.9).mean() > 0.3 and (probabilities < 0.1).mean() > 0.2
    assert ((probabilities > 0.1) & (probabilities < 0.9)).sum() >= 10


@pytest.mark.parametrize("chunks_per_call", [1, silero.CHUNKS_256MS])
def test_silero_windows_carry_64_samples_of_context(waveform, chunks_per_call):
    windows = silero.windows(waveform, chunks_per_call)
    assert len(windows) == -(-silero.num_chunks(waveform) // chunks_per_call)
    assert all(w.shape == (1, silero.CONTEXT + chunks_per_call * silero.CHUNK) for w in windows)
    assert not windows[0][0, :silero.CONTEXT].any()
    for previous, window in zip(windows, windows[1:]):
        assert np.array_equal(window[0, :silero.CONTEXT], previous[0, -silero.CONTEXT:])
    new_audio = np.concatenate([w[0, silero.CONTEXT:] for w in windows])
    assert np.array_equal(new_audio[:len(waveform)], waveform) and not new_audio[len(waveform):].any()


def test_silero_256ms_model_is_8_calls_of_the_36ms_model_with_noisy_or(waveform):
    """The batched STFT/encoder and the 8-step LSTM give what 8 sequential calls give."""
    model = silero.build_clean_model()
    window = silero.windows(waveform, silero.CHUNKS_256MS)[3]
    generator = torch.Generator().manual_seed(0)
    h, c = torch.rand(1, silero.STATE, generator=generator) - 0.5, 4 * torch.rand(1, silero.STATE, generator=generator) - 2
    with torch.no_grad():
        p256, h256, c256 = silero.SileroVAD256(model)(torch.from_numpy(window), h, c)
        not_speech = 1.0
        for i in range(silero.CHUNKS_256MS):
            p, h, c = model(torch.from_numpy(window[:, i * silero.CHUNK:i * silero.CHUNK + silero.WINDOW]), h, c)
            not_speech *= 1 - p.item()
    assert p256.shape == (1, 1, 1)
    assert abs(p256.item() - (1 - not_speech)) < 1e-6
    # the same sums in another order (batched convs, one LSTM sequence): fp32 rounding only
    torch.testing.assert_close(h256, h, atol=1e-5, rtol=0)
    torch.testing.assert_close(c256, c, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", audio.AUDIO_KINDS)
def test_silero_synthetic_audio(kind):
    x = audio.synthetic_audio(kind, 16000, 0.25, seed=3)
    assert x.shape == (1, 16000) and x.dtype == np.float32
    assert np.abs(x).max() <= 0.25
    assert (np.abs(x).max() > 0.05) == (kind != "silence")
    assert np.array_equal(x, audio.synthetic_audio(kind, 16000, 0.25, seed=3))
    assert audio.synthetic_audio(kind, 0, 0.25, seed=3).shape == (1, 0)


def test_silero_synthetic_audio_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="'hum'"):
        audio.synthetic_audio("hum", 10, 1.0, 0)


def test_silero_read_wav_names_the_file_and_the_wrong_format(tmp_path):
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(8000)
        f.writeframes(b"\0\0" * 20)
    with pytest.raises(ValueError, match="stereo.wav.*16-bit mono 16000 Hz, got 2 channel.*8000 Hz"):
        audio.read_wav(path)
