"""Silero VAD v6 converters: a :class:`~conversions.models.silero_vad.modules.SileroVAD` (the jit's weights) in,
an ML Program out, through the project's one export path (:func:`conversions.export.convert_traced`: iOS17 ML
Program, traced on CPU, fp16 compute precision by default; iOS18 for compression strategies that need its ops).
Shapes are fixed: one 36 ms window, or 8 chunks for the 256 ms model."""

from __future__ import annotations

import torch

from conversions.export import convert_traced

from .modules import (N_BINS, N_FFT, OUTPUT_NAMES, STATE, WINDOW, WINDOW_256MS, SileroVAD,
                      SileroVAD256)


def _example_state() -> dict[str, torch.Tensor]:
    return {"hidden_state": torch.zeros(1, STATE), "cell_state": torch.zeros(1, STATE)}


def _convert(module, inputs, outputs, precision, target, component):
    return convert_traced(module, inputs, outputs, precision=precision, target=target,
                          metadata={"model": "silero-vad", "component": component})


def convert_stft(model: SileroVAD, precision: str = "fp16", target: str = "iOS17"):
    """``audio_input [1, 576]`` -> ``magnitude [1, 129, 4]``."""
    return _convert(model.stft, {"audio_input": torch.zeros(1, WINDOW)}, ("magnitude",), precision, target, "stft")


def convert_encoder(model: SileroVAD, precision: str = "fp16", target: str = "iOS17"):
    """``magnitude [1, 129, 4]`` -> ``features [1, 128, 1]``."""
    return _convert(model.encoder, {"magnitude": torch.zeros(1, N_BINS, 4)}, ("features",), precision, target, "encoder")


def convert_decoder(model: SileroVAD, precision: str = "fp16", target: str = "iOS17"):
    """``features [1, 128, 1]``, ``hidden_state``, ``cell_state [1, 128]`` -> ``probability [1, 1, 1]`` and the
    new state."""
    return _convert(model.decoder, {"features": torch.zeros(1, STATE, 1), **_example_state()}, OUTPUT_NAMES,
                    precision, target, "decoder")


def convert_unified_36ms(model: SileroVAD, precision: str = "fp16", target: str = "iOS17"):
    """The whole model on one 36 ms window: ``audio_input [1, 576]`` + state -> ``probability [1, 1, 1]`` + state."""
    return _convert(model, {"audio_input": torch.zeros(1, WINDOW), **_example_state()}, OUTPUT_NAMES, precision,
                    target, "unified-36ms")


def convert_unified_256ms(model: SileroVAD, precision: str = "fp16", target: str = "iOS17"):
    """8 chunks per call: ``audio_input [1, 4160]`` + state -> noisy-OR ``probability [1, 1, 1]`` + final state."""
    return _convert(SileroVAD256(model), {"audio_input": torch.zeros(1, WINDOW_256MS), **_example_state()},
                    OUTPUT_NAMES, precision, target, "unified-256ms")


def stft_basis_ops(mlmodel) -> tuple[str, ...]:
    """The conv ops of a converted package that apply the fixed STFT basis (weight ``[258, 1, 256]``) and the
    const ops holding it: compressing the basis would change the spectrum of every input, so it stays exact."""
    from conversions.runtime import load_model

    operations = load_model(mlmodel, backend="mil").function.operations
    const_shapes = {op.outputs[0].name: (op.name, op.outputs[0].type) for op in operations if op.op_type == "const"}
    names = []
    for op in operations:
        for binding in op.inputs.get("weight", []) if op.op_type == "conv" else []:
            const_name, vtype = const_shapes.get(binding.var, (None, None))
            if const_name and tuple(getattr(vtype, "shape", ())) == (2 * N_BINS, 1, N_FFT):
                names += [op.name, const_name]
    return tuple(names)

