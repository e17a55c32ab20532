"""Parakeet Realtime EOU 120M: the declaration the parity suite generates its tests from, and where the model comes
from. By default (offline) the model is the tiny instance of the real EOU architecture whose weights are committed
under ``tiny/`` (:func:`~.nemo_models.tiny_parakeet_eou`). Its own options choose another checkpoint:
``--parakeet-eou-nemo-path FILE.nemo`` or ``--parakeet-eou-model-id nvidia/parakeet_realtime_eou_120m-v1
[--parakeet-eou-model-revision SHA]`` (the family is then renamed after the checkpoint).

Components: the preprocessor, the streaming encoder in three chunk variants (``encoder-160ms``, ``encoder-320ms``,
``encoder-1280ms``, each streamed over the clip with its caches carried), the decoder step, the joint over one
320 ms chunk and the single-step joint+decision. Pipelines ``stream-<variant>``: the streamed transcript and
``<EOU>`` chunks against NeMo's own streaming inference.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from conversions.audio import SPEECH_CLIP, load_speech_clip
from conversions.models import nemo_source
from conversions.models.parakeet_tdt.converters import relative_position_ops
from conversions.quantize import GROUPED_PALETTIZATION, not_applicable
from conversions.registry import Component, ModelCardInfo, ModelFamily, PipelineCheck, PlotSeries

from . import converters as cv
from . import inputs as feeds
from .bounds import BOUNDS, DECISIONS_TASK, RANDOM_BOUNDS
from .modules import (CHUNK_FRAMES, ENCODER_INPUTS, ENCODER_OUTPUTS, ENCODER_STATE, decision_with_margins_module,
                      decoder_module, encoder_module, joint_with_margins_module, preprocessor_module)
from .pipeline import pipeline_components, stream_check

NAME = "parakeet-eou"
MODEL_CACHE = Path(__file__).resolve().parents[3] / ".cache" / "models"
OPTIONS = nemo_source.source_options(NAME, "Parakeet EOU", "nvidia/parakeet_realtime_eou_120m-v1", "default: main")


def build_reference(source: Mapping[str, Any]):
    """A ``.nemo`` path or a hub id from ``source`` when given, else the offline tiny model."""
    from . import nemo_models

    return nemo_source.build_model(OPTIONS, source, load=nemo_models.load_nemo, download=nemo_models.download_eou,
                                   tiny=lambda: nemo_models.tiny_parakeet_eou(MODEL_CACHE))


def configure(family: ModelFamily, values: Mapping[str, Any]) -> ModelFamily:
    return nemo_source.configure_source(NAME, OPTIONS, family, values)


# Measured with coremltools 9.0 (it leaves such weights uncompressed; quantize.py turns that into
# StrategyNotApplicable). The same holds for the real model: 1027 embedding rows, 1027 joint outputs.
INAPPLICABLE = {
    **not_applicable("decoder", GROUPED_PALETTIZATION,
                     "the embedding has vocabulary + 1 (blank) rows, not divisible by the group size 16"),
    **not_applicable("joint", GROUPED_PALETTIZATION,
                     "the output layer has vocabulary + 1 (blank) rows, not divisible by the group size 16"),
}

_FRAME_MS = 80.0  # one encoder frame: what a decoder or single-step joint call advances through, at most
_CHUNK_MS = {variant: 80.0 * frames for variant, frames in CHUNK_FRAMES.items()}  # shift = chunk (setup_streaming_params)


def _decoder_state(model):
    return feeds.initial_decoder_state(model)


def _encoder_state(variant):
    def initial(model):
        from .modules import chunk_variants
        from .streaming import initial_caches

        return initial_caches(model, chunk_variants(model)[variant])

    return initial


def _component(name, convert, reference, inputs, outputs, clip_feeds, random_inputs, **more) -> Component:
    return Component(name, convert, reference, tuple(inputs), tuple(outputs), clip_feeds=clip_feeds,
                     random_inputs=random_inputs, bounds=BOUNDS[name], random_bounds=RANDOM_BOUNDS[name], **more)


_TRACED = ("encoded_output", "new_cache_last_channel", "new_cache_last_time")


def _chunk_error_plot(variant: str):
    """Per chunk, each traced output's value at the element where the chunk's error peaks, torch vs converted: the
    report's lower panel is then the worst signed error of every chunk against the output's bound, so drift of the
    carried caches over the stream shows as a trend."""

    def plot(reference, candidate) -> PlotSeries:
        ref_traces, cand_traces = {}, {}
        for name in _TRACED:
            ref = np.asarray(reference[name], np.float64)
            cand = np.asarray(candidate[name], np.float64).reshape(ref.shape)
            flat_ref, flat_cand = ref.reshape(ref.shape[0], -1), cand.reshape(ref.shape[0], -1)
            worst = np.abs(flat_cand - flat_ref).argmax(axis=1)
            rows = np.arange(ref.shape[0])
            ref_traces[name], cand_traces[name] = flat_ref[rows, worst], flat_cand[rows, worst]
        return PlotSeries(ref_traces, cand_traces, step_ms=_CHUNK_MS[variant],
                          ylabel="value where the chunk's error peaks")

    return plot


def _upstream_encoder(variant: str):
    """The streaming wrapper (forward_for_export on pre_cache ++ chunk, zero-padded last chunk) streamed over the
    clip vs NeMo's ``cache_aware_stream_step`` driven by its own buffer, each carrying its caches."""

    def upstream(model, clip):
        from .streaming import nemo_encoder_stream

        ours = np.concatenate(feeds.streamed_chunks(model, variant, feeds.clip_mel(model, clip)), axis=-1)
        theirs = nemo_encoder_stream(model, variant, clip)
        if ours.shape != theirs.shape:
            raise AssertionError(f"encoder-{variant}: {ours.shape} streamed frames vs NeMo's {theirs.shape}")
        return ours.reshape(-1), theirs.reshape(-1)

    return upstream


def _encoder_component(variant: str) -> Component:
    return _component(f"encoder-{variant}", cv.encoder_converter(variant),
                      lambda model: encoder_module(model, variant), ENCODER_INPUTS, ENCODER_OUTPUTS,
                      feeds.clip_chunk_feeds(variant), feeds.random_chunk(variant), state=ENCODER_STATE,
                      initial_state=_encoder_state(variant), audio_ms_per_call=_CHUNK_MS[variant],
                      plot=_chunk_error_plot(variant), upstream=_upstream_encoder(variant), upstream_atol=1e-5,
                      upstream_why="the same NeMo forward; the last chunk is zero-padded here and shorter in NeMo's "
                                   "buffer, its padding masked by the length (measured: at most 9.5e-7)")


FAMILY = ModelFamily(
    name=NAME,
    build_reference=build_reference,
    load_clip=load_speech_clip,
    clip_path=SPEECH_CLIP,
    tools=("nemo_toolkit",),
    card=ModelCardInfo(
        name="Parakeet Realtime EOU 120M (NVIDIA NeMo, streaming FastConformer with end-of-utterance)",
        license="other", license_name="nvidia-open-model-license",
        license_link="https://www.nvidia.com/en-us/agreements/enterprise-software/nvidia-open-model-license/",
        url="https://huggingface.co/nvidia/parakeet_realtime_eou_120m-v1",
        weights="an offline tiny instance of the Parakeet Realtime EOU architecture built through NeMo, with weights "
                "committed to coreml-parity (not NVIDIA's 120M checkpoint)",
        tags=("automatic-speech-recognition", "audio", "nemo", "parakeet", "streaming", "end-of-utterance"),
        pipeline_tag="automatic-speech-recognition"),
    options=OPTIONS,
    configure=configure,
    requires=("nemo.collections.asr",),
    install_hint="pip install -e '.[parakeet]'",
    # the streaming encoder folds each layer's relative positional projection into a constant (as the TDT
    # encoder): the sense of position, kept exact by every compression (see relative_position_ops)
    keep_exact=relative_position_ops,
    inapplicable=INAPPLICABLE,
    mixed_candidate="palettize-6bit",
    mixed_target_quality=0.985,
    pipelines=tuple(PipelineCheck(f"stream-{variant}", pipeline_components(variant), stream_check(variant),
                                  f"the clip streamed in {variant} chunks: transcript and <EOU> chunk = NeMo's "
                                  "streaming inference") for variant in CHUNK_FRAMES),
    components=(
        _component("preprocessor", cv.convert_preprocessor, preprocessor_module, ("audio_signal", "audio_length"),
                   ("mel", "mel_length"), feeds.clip_audio, feeds.random_preprocessor, audio_ms_per_call=10_000.0,
                   sweep=False, program_precision={"fp16": "mixed"}),
        *(_encoder_component(variant) for variant in CHUNK_FRAMES),
        _component("decoder", cv.convert_decoder, decoder_module, cv.DECODER_INPUTS, cv.DECODER_OUTPUTS,
                   feeds.clip_tokens, feeds.random_decoder, state={"h_out": "h_in", "c_out": "c_in"},
                   initial_state=_decoder_state, audio_ms_per_call=_FRAME_MS),
        _component("joint", cv.convert_joint, joint_with_margins_module, ("encoder", "decoder"), ("logits",),
                   feeds.clip_joint, feeds.random_joint(single_frame=False), audio_ms_per_call=_CHUNK_MS[cv.JOINT_CHUNK],
                   reference_extras=("margin",), mixed_candidate="palettize-8bit", task=DECISIONS_TASK),
        _component("joint-decision", cv.convert_joint_decision, decision_with_margins_module, ("encoder", "decoder"),
                   cv.DECISION_OUTPUTS, feeds.clip_joint, feeds.random_joint(single_frame=False),
                   audio_ms_per_call=_CHUNK_MS[cv.JOINT_CHUNK], reference_extras=("margin",), sweep=False,
                   task=DECISIONS_TASK),
        _component("joint-decision-step", cv.convert_joint_decision_step, decision_with_margins_module,
                   ("encoder", "decoder"), cv.DECISION_OUTPUTS, feeds.clip_joint_step,
                   feeds.random_joint(single_frame=True), audio_ms_per_call=_FRAME_MS, reference_extras=("margin",),
                   sweep=False, task=DECISIONS_TASK),
    ),
)
