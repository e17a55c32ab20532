"""The synthesis check: a converted bucket (or, for the torch run, the same bucket module in torch) against kokoro's
own ``KModel.forward_with_tokens`` on each unpadded utterance, with SineGen's randomness replaced by the same
values on both sides (the noise table; the initial phases, which kokoro's downsampling never reads).

What it measures is what a user of a fixed-shape bucket gets compared with kokoro itself: durations (the text side
is exact on padded inputs), the audio length, and how close the audio is. The frames beyond the utterance are
part of the bucket's instance norms (as in every shipped bucket model), which kokoro on the unpadded utterance
does not see: the torch run measures that cost alone, the converted runs add the conversion's."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from conversions.registry import PipelineResult, PlotSeries

from . import inputs as feeds
from .modules import HARMONICS, SAMPLE_RATE, SAMPLES_PER_FRAME, Bucket, BucketModel, source_noise

# Measured (docs/kokoro.md), mel correlation over the tokens whose durations agree, worst utterance: the torch
# bucket vs kokoro 0.99998 (what remains is kokoro's own fp32 phase accumulation, which the bucket wraps); the floors
# sit below the worst measured run of each kind.
MEL_CORRELATION_MIN = {"torch": 0.9999, "converted": 0.99}


@contextmanager
def kokoro_randomness(noise: torch.Tensor):
    """Within the block, SineGen's draws are ours: ``torch.randn_like`` of its [1, samples, 9] sine waves returns
    the first rows of ``noise``; its ``torch.rand`` initial phases are zeros (never read, see NoiseSource); the
    source module's unused noise branch gets zeros."""
    randn_like, rand = torch.randn_like, torch.rand

    def fake_randn_like(x, *args, **kwargs):
        if x.dim() == 3 and x.shape[-1] == HARMONICS:
            if x.shape[1] > noise.shape[1]:
                raise ValueError(f"kokoro drew {x.shape[1]} noise rows, the table has {noise.shape[1]}")
            return noise[:, : x.shape[1]].to(x.dtype).clone()
        return torch.zeros_like(x)

    def fake_rand(*size, **kwargs):
        return torch.zeros(*size, **{k: v for k, v in kwargs.items() if k in ("dtype", "device")})

    torch.randn_like, torch.rand = fake_randn_like, fake_rand
    try:
        yield
    finally:
        torch.randn_like, torch.rand = randn_like, rand


@contextmanager
def complex_stft(model):
    """kokoro's default STFT (``TorchSTFT``: ``torch.stft``/``torch.istft``) in the generator for the block, whatever
    ``disable_complex`` the model was built with: what kokoro users run, and what :class:`.modules.RealStft`
    computes with real ops."""
    from kokoro.istftnet import TorchSTFT

    generator = model.decoder.generator
    built = generator.stft
    generator.stft = TorchSTFT(filter_length=generator.post_n_fft, hop_length=built.hop_length,
                               win_length=generator.post_n_fft)
    try:
        yield
    finally:
        generator.stft = built


def upstream_synthesis(model, phonemes: str, ref_s: np.ndarray, noise: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """kokoro's audio and integer durations for one unpadded utterance at speed 1."""
    ids = torch.tensor([feeds.token_ids(phonemes)], dtype=torch.long)
    with kokoro_randomness(noise), complex_stft(model), torch.no_grad():
        audio, pred_dur = model.forward_with_tokens(ids, torch.from_numpy(ref_s))
    return audio.numpy().reshape(-1), pred_dur.numpy().reshape(-1)


def synthesis_check(bucket: Bucket):
    component_name = f"bucket-{bucket.name}"

    def run(model, clip, components: Mapping[str, Any] | None) -> PipelineResult:
        from conversions import metrics

        from .bounds import DURATION_MARGIN, aligned_audio

        voice = feeds.utterances()["voice"]
        noise = source_noise(bucket.frames)
        torch_bucket = BucketModel(model, bucket, with_duration=True).eval()

        def run_torch(f):
            with torch.no_grad():
                out = torch_bucket(*(torch.from_numpy(f[k]) for k in f))
            return dict(zip(("audio", "audio_length_samples", "pred_dur", "duration"), (o.numpy() for o in out)))

        kind = "torch" if components is None else "converted"
        rows, problems, ours_dur, theirs_dur = [], [], [], []
        for i, phonemes in enumerate(feeds.fitting(bucket, clip)):
            f = feeds.bucket_feeds(bucket, phonemes, voice, feeds.PHASE_SEED + i)
            reference = run_torch(f)
            got = reference if components is None else components[component_name].predict(f)
            audio_ref, dur_ref = upstream_synthesis(model, phonemes, f["ref_s"], noise)
            n_tokens = int(f["attention_mask"].sum())
            dur = np.asarray(got["pred_dur"]).reshape(-1)[:n_tokens].astype(np.int64)
            raw = np.asarray(reference["duration"]).reshape(-1)[:n_tokens].astype(np.float64)
            margin = np.abs(raw - np.floor(raw) - 0.5)
            length = int(np.asarray(got["audio_length_samples"]).reshape(-1)[0])
            kokoro_length = min(int(dur_ref.sum()), bucket.frames) * SAMPLES_PER_FRAME
            flipped = np.flatnonzero(dur != dur_ref)
            r, c = aligned_audio(audio_ref[:kokoro_length], np.asarray(got["audio"], np.float64).reshape(-1)[:length],
                                 dur_ref, dur)
            figures = metrics.tts_metrics(r, c, SAMPLE_RATE)
            rows.append({"utterance": i, "phonemes": len(phonemes), "duration_flips": int(flipped.size),
                         "flip_margins": [round(float(margin[t]), 4) for t in flipped], "samples": length,
                         "kokoro_samples": kokoro_length, **figures})
            ours_dur.append(dur)
            theirs_dur.append(dur_ref)
            confident = [int(t) for t in flipped if kind == "torch" or margin[t] >= DURATION_MARGIN]
            if confident:
                problems.append(f"utterance {i}: token durations {confident} differ from kokoro's although "
                                f"{'the torch bucket must be exact' if kind == 'torch' else 'their rounding margin'}"
                                f"{'' if kind == 'torch' else f' is >= {DURATION_MARGIN}'}")
            expected_length = min(int(dur.sum()), bucket.frames) * SAMPLES_PER_FRAME
            if length != expected_length or (not flipped.size and length != kokoro_length):
                problems.append(f"utterance {i}: {length} samples, kokoro {kokoro_length}, durations say "
                                f"{expected_length}")
            if figures["mel_correlation"] < MEL_CORRELATION_MIN[kind]:
                problems.append(f"utterance {i}: mel correlation {figures['mel_correlation']:.5f} < "
                                f"{MEL_CORRELATION_MIN[kind]} ({kind})")
        worst_mel = min((r["mel_correlation"] for r in rows), default=0.0)
        worst_wave = min((r["waveform_correlation"] for r in rows), default=0.0)
        summary = (f"{len(rows)} utterances through the {bucket.name} bucket ({kind}) vs kokoro: "
                   f"{sum(r['duration_flips'] for r in rows)} token durations differ, worst mel correlation "
                   f"{worst_mel:.5f}, worst waveform correlation {worst_wave:.5f} (over tokens whose durations agree)")
        series = PlotSeries({"frames_per_token": np.concatenate(theirs_dur).astype(float)},
                            {"frames_per_token": np.concatenate(ours_dur).astype(float)}, step_ms=1.0,
                            ylabel="frames per token (all utterances)", reference_label="kokoro (upstream)")
        return PipelineResult(passed=not problems, summary=summary, figures={"utterances": rows},
                              failure="; ".join(problems) or None, series=series)

    return run
