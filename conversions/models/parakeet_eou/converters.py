"""Parakeet EOU converters: a NeMo model in, one ML Program per component out, every size read from the model and
its chunk variants (:func:`~conversions.models.parakeet_eou.modules.chunk_variants`), through the project's one
export path."""

from __future__ import annotations

import torch

from conversions.export import DEFAULT_TARGET, convert_traced
from conversions.models.parakeet_tdt.converters import decoder_example, front_end_ops

from .modules import (ENCODER_INPUTS, ENCODER_OUTPUTS, chunk_variants, decoder_module, dims, encoder_module,
                      joint_decision_step_module, joint_module, preprocessor_module)

DECODER_INPUTS = ("targets", "target_length", "h_in", "c_in")
DECODER_OUTPUTS = ("decoder", "h_out", "c_out")
DECISION_OUTPUTS = ("token_id", "token_prob", "top_k_ids", "top_k_logits")
JOINT_CHUNK = "320ms"  # the joint over one chunk's valid frames is exported at the 320 ms variant's frame count


def _i32(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def _convert(module, example, outputs, precision, target, component, ranges=None, keep_fp32=None):
    return convert_traced(module, example, outputs, precision=precision, target=target, ranges=ranges,
                          keep_fp32=keep_fp32, metadata={"component": component})


def convert_preprocessor(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    """Mel front end (no normalisation); ``audio_signal`` takes 1 to 15 s of samples. The front end computes in
    fp32 in fp16 exports (see the TDT family's ``front_end_ops``: fp16 power spectra of quiet audio underflow)."""
    d = dims(model)
    example = {"audio_signal": torch.zeros(1, d.window_samples), "audio_length": _i32(d.window_samples)}
    return _convert(preprocessor_module(model), example, ("mel", "mel_length"), precision, target, "preprocessor",
                    ranges={"audio_signal": {1: (1, d.window_samples)}}, keep_fp32=front_end_ops)


def encoder_example(model, variant: str) -> dict[str, torch.Tensor]:
    from .streaming import initial_caches

    v = chunk_variants(model)[variant]
    d = dims(model)
    caches = {k: torch.from_numpy(a) for k, a in initial_caches(model, v).items()}
    return {"audio_signal": torch.zeros(1, d.n_mels, v.mel_frames), "audio_length": _i32(v.mel_frames), **caches}


def convert_encoder(model, variant: str, precision: str = "fp16", target: str = DEFAULT_TARGET):
    """The cache-aware streaming encoder for one chunk of ``variant`` (fixed shapes, caches in and out)."""
    example = encoder_example(model, variant)
    assert tuple(example) == ENCODER_INPUTS
    return _convert(encoder_module(model, variant), example, ENCODER_OUTPUTS, precision, target, f"encoder-{variant}")


def encoder_converter(variant: str):
    """``convert(model, precision, target)`` of ``variant``'s streaming encoder."""

    def convert(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
        return convert_encoder(model, variant, precision, target)

    return convert


def convert_decoder(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    d = dims(model)
    return _convert(decoder_module(model), decoder_example(d.pred_layers, d.pred_hidden, d.blank_id), DECODER_OUTPUTS,
                    precision, target, "decoder")


def _joint_example(model, frames: int) -> dict:
    d = dims(model)
    return {"encoder": torch.zeros(1, d.d_model, frames), "decoder": torch.zeros(1, d.pred_hidden, 1)}


def convert_joint(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    frames = chunk_variants(model)[JOINT_CHUNK].valid_out_frames
    return _convert(joint_module(model), _joint_example(model, frames), ("logits",), precision, target, "joint")


def convert_joint_decision(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    """Joint + decision over one 320 ms chunk's valid frames (what an app calls when it decides a chunk at once)."""
    frames = chunk_variants(model)[JOINT_CHUNK].valid_out_frames
    return _convert(joint_decision_step_module(model), _joint_example(model, frames), DECISION_OUTPUTS, precision,
                    target, "joint-decision")


def convert_joint_decision_step(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    return _convert(joint_decision_step_module(model), _joint_example(model, 1), DECISION_OUTPUTS, precision, target,
                    "joint-decision-step")
