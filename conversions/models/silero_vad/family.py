"""Silero VAD v6: the declaration the parity suite generates its tests from (components, I/O, clip feeds, state,
bounds, task metric, plots, compression exclusions)."""

from __future__ import annotations

import numpy as np

from conversions.audio import SAMPLE_RATE, SPEECH_CLIP, load_speech_clip
from conversions.registry import Component, ModelCardInfo, ModelFamily, PlotSeries

from . import converters as cv
from . import inputs as feeds
from .bounds import BOUNDS, RANDOM_BOUNDS, VAD_TASK
from .modules import (CHUNK, CHUNKS_256MS, INPUT_NAMES, OUTPUT_NAMES, STATE_FEEDBACK, SileroVAD256,
                      build_clean_model, upstream_36ms, upstream_256ms)

CHUNK_MS = 1000 * CHUNK / SAMPLE_RATE  # 32 ms of new audio per 36 ms window


def _probability_plot(step_ms: float):
    def plot(reference, candidate) -> PlotSeries:
        return PlotSeries({"probability": np.asarray(reference["probability"]).reshape(-1)},
                          {"probability": np.asarray(candidate["probability"]).reshape(-1)},
                          step_ms=step_ms, ylabel="speech probability", threshold=0.5)

    return plot


_STREAMING = dict(state=STATE_FEEDBACK, initial_state=feeds.initial_feeds, task=VAD_TASK)


def _component(name, convert, reference, inputs, outputs, clip_feeds, random_inputs, **more) -> Component:
    return Component(name, convert, reference, inputs, outputs, clip_feeds=clip_feeds, random_inputs=random_inputs,
                     bounds=BOUNDS[name], random_bounds=RANDOM_BOUNDS[name], **more)


def _build_reference(source) -> object:
    return build_clean_model()


FAMILY = ModelFamily(
    name="silero-vad",
    build_reference=_build_reference,
    load_clip=load_speech_clip,
    clip_path=SPEECH_CLIP,
    tools=("silero-vad",),
    card=ModelCardInfo(
        name="Silero VAD v6", license="mit", url="https://github.com/snakers4/silero-vad",
        weights="Silero VAD v6 as shipped in the silero-vad package (its 16 kHz JIT model)",
        tags=("voice-activity-detection", "audio", "silero-vad"), pipeline_tag="voice-activity-detection"),
    keep_exact=cv.stft_basis_ops,
    # Measured with coremltools 9.0: its per-block quantization needs every input-channel count divisible by the
    # block size, and the encoder's first conv reads the 129 STFT bins.
    inapplicable={
        **{(c, "int4-per-block"): "the first encoder conv has 129 input channels, not divisible by the block size "
                                  "32 (coremltools leaves that weight uncompressed)"
           for c in ("encoder", "unified-36ms", "unified-256ms")},
        ("stft", "int4-per-block"): "the basis conv has 1 input channel, not divisible by the block size 32",
        **{("stft", f"palettize-{bits}bit-grouped"): "the basis has 258 output channels, not divisible by the "
                                                     "group size 16" for bits in (4, 6, 8)},
    },
    # mixed: 6-bit palettization layer by layer, fp16 kept where needed for quality 0.985 vs the fp16 package
    # (all layers at 6 bits: 0.957 on unified-36ms' probability). The encoder's features are more sensitive
    # (6 bits on any one conv alone: <= 0.951), so it mixes 8-bit layers (all at 8 bits: 0.975) with fp16.
    mixed_candidate="palettize-6bit",
    mixed_target_quality=0.985,
    components=(
        # The basis is the stft's only weight: its compression sweep shows what compressing the basis costs, the
        # reason every other component keeps it exact.
        _component("stft", cv.convert_stft, lambda m: m.stft, ("audio_input",), ("magnitude",),
                   feeds.clip_windows, feeds.random_windows, audio_ms_per_call=CHUNK_MS, keep_exact=False),
        _component("encoder", cv.convert_encoder, lambda m: m.encoder, ("magnitude",), ("features",),
                   feeds.clip_magnitudes, feeds.random_magnitudes, audio_ms_per_call=CHUNK_MS,
                   mixed_candidate="palettize-8bit"),
        _component("decoder", cv.convert_decoder, lambda m: m.decoder, ("features", "hidden_state", "cell_state"),
                   OUTPUT_NAMES, feeds.clip_features, feeds.random_decoder_inputs, audio_ms_per_call=CHUNK_MS,
                   plot=_probability_plot(CHUNK_MS), **_STREAMING),
        _component("unified-36ms", cv.convert_unified_36ms, lambda m: m, INPUT_NAMES, OUTPUT_NAMES,
                   feeds.clip_windows, feeds.random_unified(cv.WINDOW), audio_ms_per_call=CHUNK_MS,
                   plot=_probability_plot(CHUNK_MS), **_STREAMING,
                   upstream=upstream_36ms, upstream_atol=2e-6,
                   upstream_why="same weights and ops; nn.LSTM and the jit's LSTMCell sum the gate products in a "
                                "different order (measured 4.8e-7 over the clip)"),
        _component("unified-256ms", cv.convert_unified_256ms, SileroVAD256, INPUT_NAMES, OUTPUT_NAMES,
                   feeds.clip_windows_256ms, feeds.random_unified(cv.WINDOW_256MS),
                   audio_ms_per_call=CHUNKS_256MS * CHUNK_MS, plot=_probability_plot(CHUNKS_256MS * CHUNK_MS),
                   **_STREAMING, upstream=upstream_256ms, upstream_atol=2e-6,
                   upstream_why="noisy-OR of the jit's per-chunk stream; the same sums in another order as above"),
    ),
)
