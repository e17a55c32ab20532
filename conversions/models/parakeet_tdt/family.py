"""Parakeet TDT v3: the declaration the parity suite generates its tests from, and where the model comes from.

By default (offline) the model is the tiny instance of the real v3 architecture whose weights are committed under
``tiny/`` (:func:`~.nemo_models.tiny_parakeet_tdt`). Its own pytest options choose another checkpoint:
``--parakeet-tdt-v3-nemo-path FILE.nemo`` or ``--parakeet-tdt-v3-model-id nvidia/parakeet-tdt-0.6b-v3
[--parakeet-tdt-v3-model-revision SHA]``; the family is then renamed after the checkpoint
(``parakeet-tdt-v3-<name>``), so its report and snapshot baselines never mix with the tiny model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from conversions.audio import SPEECH_CLIP, load_speech_clip
from conversions.models import nemo_source
from conversions.models.nemo_source import source_options
from conversions.quantize import GROUPED_PALETTIZATION, not_applicable
from conversions.registry import Component, ModelCardInfo, ModelFamily, PipelineCheck

from . import converters as cv
from . import inputs as feeds
from .bounds import BOUNDS, DECISIONS_TASK, RANDOM_BOUNDS
from .modules import (WINDOW_SECONDS, decision_with_margins_module, decoder_module, dims, encoder_module,
                      joint_with_margins_module, mel_encoder_module, preprocessor_module)
from .pipeline import PIPELINE_COMPONENTS, transcript_check

NAME = "parakeet-tdt-v3"
MODEL_CACHE = Path(__file__).resolve().parents[3] / ".cache" / "models"

OPTIONS = source_options(NAME, "Parakeet TDT", "nvidia/parakeet-tdt-0.6b-v3",
                         "default: the revision pinned in conversions/models/parakeet_tdt/nemo_models.py")


def family_name(source: Mapping[str, Any]) -> str:
    """``parakeet-tdt-v3`` for the offline tiny model; a user's checkpoint gets its own name."""
    return nemo_source.family_name(NAME, OPTIONS, source)


def build_reference(source: Mapping[str, Any]):
    """The model the parity suite checks: a ``.nemo`` path or a hub id from ``source`` when given, else the offline
    tiny model (built once into ``.cache/models/`` from the committed weights)."""
    from . import nemo_models

    return nemo_source.build_model(OPTIONS, source, load=nemo_models.load_nemo, download=nemo_models.download_nemo,
                                   tiny=lambda: nemo_models.tiny_parakeet_tdt(MODEL_CACHE))


def configure(family: ModelFamily, values: Mapping[str, Any]) -> ModelFamily:
    """Validate the model-source options and name the family after the checkpoint."""
    return nemo_source.configure_source(NAME, OPTIONS, family, values)


# ---- upstream: our wrappers vs NeMo's own forward -----------------------------------------------------------
def _upstream_encoder(model, waveform):
    """The encoder wrapper (precomputed positional table, re-expressed masks) vs ``ConformerEncoder.forward``."""
    call = feeds.clip_mels(model, waveform)[0]
    ours, _ = feeds.run_module(encoder_module(model), call["mel"], call["mel_length"])
    with torch.no_grad():
        theirs, _ = model.encoder(audio_signal=torch.from_numpy(call["mel"]),
                                  length=torch.from_numpy(call["mel_length"]).long())
    return ours.reshape(-1), theirs.numpy().reshape(-1)


def _upstream_mel_encoder(model, waveform):
    """The fused wrapper vs NeMo's ``EncDecRNNTBPEModel.forward`` (preprocessor + encoder) on the clip."""
    call = feeds.clip_audio(model, waveform)[0]
    ours, _ = feeds.run_module(mel_encoder_module(model), *call.values())
    with torch.no_grad():
        theirs, _ = model.forward(input_signal=torch.from_numpy(call["audio_signal"]),
                                  input_signal_length=torch.from_numpy(call["audio_length"]).long())
    return ours.reshape(-1), theirs.numpy().reshape(-1)


# ---- the declaration ---------------------------------------------------------------------------------------
# Measured with coremltools 9.0 (it leaves such weights uncompressed; quantize.py turns that into
# StrategyNotApplicable). The same holds for the real model: 8193 embedding rows, 8198 joint outputs.
INAPPLICABLE = {
    **not_applicable("decoder", GROUPED_PALETTIZATION,
                     "the embedding has vocabulary + 1 (blank) rows, not divisible by the group size 16"),
    **not_applicable("joint", GROUPED_PALETTIZATION,
                     "the output layer has vocabulary + 1 + 5 durations rows, not divisible by the group size 16"),
}

_FRAME_MS = 80.0  # one encoder frame: what a decoder or single-step joint call advances through, at most
_WINDOW_MS = 1000.0 * WINDOW_SECONDS


def _decoder_state(model):
    return feeds.initial_state(dims(model))


def _component(name, convert, reference, inputs, outputs, clip_feeds, random_inputs, **more) -> Component:
    return Component(name, convert, reference, tuple(inputs), tuple(outputs), clip_feeds=clip_feeds,
                     random_inputs=random_inputs, bounds=BOUNDS[name], random_bounds=RANDOM_BOUNDS[name], **more)


FAMILY = ModelFamily(
    name=NAME,
    build_reference=build_reference,
    load_clip=load_speech_clip,
    clip_path=SPEECH_CLIP,
    tools=("nemo_toolkit",),
    # The default model is an offline tiny instance of the architecture (committed weights), not NVIDIA's checkpoint:
    # no base_model unless --parakeet-tdt-v3-model-id names one (conversions.release sets it from the source).
    card=ModelCardInfo(
        name="Parakeet TDT v3 (NVIDIA NeMo FastConformer-TDT)", license="cc-by-4.0",
        url="https://huggingface.co/nvidia/parakeet-tdt-0.6b-v3",
        weights="an offline tiny instance of the Parakeet TDT v3 architecture built through NeMo, with weights "
                "committed to coreml-parity (not NVIDIA's 0.6B checkpoint)",
        tags=("automatic-speech-recognition", "audio", "nemo", "parakeet", "fastconformer", "tdt"),
        pipeline_tag="automatic-speech-recognition"),
    options=OPTIONS,
    configure=configure,
    requires=("nemo.collections.asr",),
    install_hint="pip install -e '.[parakeet]'",
    keep_exact=cv.relative_position_ops,
    inapplicable=INAPPLICABLE,
    # mixed: 6-bit palettization layer by layer where quality 0.985 vs the fp16 package holds (all layers at 6
    # bits: encoder 0.985, decoder 0.987); the joint's logits are more sensitive (6 bits on one layer alone:
    # <= 0.976), so it mixes 8-bit layers with fp16.
    mixed_candidate="palettize-6bit",
    mixed_target_quality=0.985,
    pipelines=(PipelineCheck("transcript", PIPELINE_COMPONENTS, transcript_check,
                             "greedy TDT transcript of the clip = NeMo's own decoding, token for token, frame for frame"),),
    components=(
        _component("preprocessor", cv.convert_preprocessor, preprocessor_module, ("audio_signal", "audio_length"),
                   ("mel", "mel_length"), feeds.clip_audio, feeds.random_preprocessor, audio_ms_per_call=_WINDOW_MS,
                   sweep=False,
                   # every op computes in fp32 (front_end_ops); only the mel output is fp16, as in any fp16 package
                   program_precision={"fp16": "mixed"}),
        _component("encoder", cv.convert_encoder, encoder_module, ("mel", "mel_length"), ("encoder", "encoder_length"),
                   feeds.clip_mels, feeds.random_mel, audio_ms_per_call=_WINDOW_MS, upstream=_upstream_encoder,
                   upstream_atol=1e-5, upstream_why="same modules and weights; only the positional slice and masks "
                                                    "are built differently (measured: identical)"),
        _component("mel-encoder", cv.convert_mel_encoder, mel_encoder_module, ("audio_signal", "audio_length"),
                   ("encoder", "encoder_length"), feeds.clip_audio, feeds.random_window_audio,
                   audio_ms_per_call=_WINDOW_MS, sweep=False, program_precision={"fp16": "mixed"},
                   upstream=_upstream_mel_encoder, upstream_atol=1e-5,
                   upstream_why="EncDecRNNTBPEModel.forward runs the same preprocessor and encoder modules"),
        _component("decoder", cv.convert_decoder, decoder_module, cv.DECODER_INPUTS, cv.DECODER_OUTPUTS,
                   feeds.clip_tokens, feeds.random_decoder, state={"h_out": "h_in", "c_out": "c_in"},
                   initial_state=_decoder_state, audio_ms_per_call=_FRAME_MS),
        _component("joint", cv.convert_joint, joint_with_margins_module, ("encoder", "decoder"), ("logits",),
                   feeds.clip_joint, lambda m: feeds.random_joint_inputs(m, single_frame=False),
                   audio_ms_per_call=_WINDOW_MS, reference_extras=("token_margin", "duration_margin", "num_tokens"),
                   mixed_candidate="palettize-8bit", task=DECISIONS_TASK),
        _component("joint-decision", cv.convert_joint_decision, decision_with_margins_module, ("encoder", "decoder"),
                   cv.DECISION_OUTPUTS, feeds.clip_joint, lambda m: feeds.random_joint_inputs(m, single_frame=False),
                   audio_ms_per_call=_WINDOW_MS, reference_extras=cv.MARGIN_OUTPUTS, sweep=False,
                   task=DECISIONS_TASK),
        _component("joint-decision-step", cv.convert_joint_decision_step, decision_with_margins_module,
                   ("encoder", "decoder"), cv.DECISION_OUTPUTS, feeds.clip_joint_step,
                   lambda m: feeds.random_joint_inputs(m, single_frame=True), audio_ms_per_call=_FRAME_MS,
                   reference_extras=cv.MARGIN_OUTPUTS, sweep=False, task=DECISIONS_TASK),
    ),
)
