"""Parakeet TDT v3 converters: a NeMo model in, one ML Program per component out, every size read from the model's
configuration (:func:`~conversions.models.parakeet_tdt.modules.dims`), through the project's one export path."""

from __future__ import annotations

import torch

from conversions.export import DEFAULT_TARGET, convert_traced

from .modules import (Dims, decoder_module, dims, encoder_module, joint_decision_module, joint_module,
                      mel_encoder_module, preprocessor_module)

DECODER_INPUTS = ("targets", "target_length", "h_in", "c_in")
DECODER_OUTPUTS = ("decoder", "h_out", "c_out")
DECISION_OUTPUTS = ("token_id", "token_prob", "duration")
MARGIN_OUTPUTS = ("token_margin", "duration_margin")


def _i32(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def _convert(module, example, outputs, precision, target, component, ranges=None, keep_fp32=None):
    return convert_traced(module, example, outputs, precision=precision, target=target, ranges=ranges,
                          keep_fp32=keep_fp32, metadata={"component": component})


def front_end_ops(block) -> set:
    """The ops of the mel front end in a converted block: everything the encoder's first 2-D convolution (the
    dw-striding subsampling) depends on; the whole block when there is no such convolution (the preprocessor alone).

    They stay fp32 in fp16 exports. Measured on the fp16 preprocessor: the power spectrum of quiet audio underflows
    fp16 (values below 6e-8 flush, below 6e-5 lose precision) before the log, and the per-feature normalisation
    then divides by a tiny standard deviation: normalised mel errors of 28.9 on generated inputs (0.26 on the
    clip), and 0.95 on the fused mel+encoder's output. Everything after the front end is fp16."""
    operations = list(block.operations)
    boundary = next((op for op in operations if op.op_type == "conv" and op.inputs["weight"].rank == 4), None)
    if boundary is None:
        return set(operations)
    ancestors, pending = set(), [boundary]
    while pending:
        op = pending.pop()
        for value in op.inputs.values():
            for var in value if isinstance(value, (list, tuple)) else (value,):
                producer = getattr(var, "op", None)
                if producer is not None and producer not in ancestors:
                    ancestors.add(producer)
                    pending.append(producer)
    return ancestors


def convert_preprocessor(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    """Mel front end; ``audio_signal`` takes 1 to ``window_samples`` samples (a flexible input dimension)."""
    d = dims(model)
    example = {"audio_signal": torch.zeros(1, d.window_samples), "audio_length": _i32(d.window_samples)}
    return _convert(preprocessor_module(model), example, ("mel", "mel_length"), precision, target, "preprocessor",
                    ranges={"audio_signal": {1: (1, d.window_samples)}}, keep_fp32=front_end_ops)


def convert_encoder(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    d = dims(model)
    example = {"mel": torch.zeros(1, d.n_mels, d.mel_frames), "mel_length": _i32(d.mel_frames)}
    return _convert(encoder_module(model), example, ("encoder", "encoder_length"), precision, target, "encoder")


def convert_mel_encoder(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    d = dims(model)
    example = {"audio_signal": torch.zeros(1, d.window_samples), "audio_length": _i32(d.window_samples)}
    return _convert(mel_encoder_module(model), example, ("encoder", "encoder_length"), precision, target,
                    "mel-encoder", keep_fp32=front_end_ops)


def decoder_example(pred_layers: int, pred_hidden: int, blank_id: int) -> dict[str, torch.Tensor]:
    """The decoder step's example feeds (blank, zero LSTM state): shared by the Parakeet families."""
    state = torch.zeros(pred_layers, 1, pred_hidden)
    return {"targets": torch.tensor([[blank_id]], dtype=torch.int32), "target_length": _i32(1), "h_in": state,
            "c_in": state.clone()}


def convert_decoder(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    d = dims(model)
    return _convert(decoder_module(model), decoder_example(d.pred_layers, d.pred_hidden, d.blank_id), DECODER_OUTPUTS,
                    precision, target, "decoder")


def _joint_example(d: Dims, frames: int) -> dict:
    return {"encoder": torch.zeros(1, d.d_model, frames), "decoder": torch.zeros(1, d.pred_hidden, 1)}


def convert_joint(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    d = dims(model)
    return _convert(joint_module(model), _joint_example(d, d.encoder_frames), ("logits",), precision, target, "joint")


def convert_joint_decision(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    d = dims(model)
    return _convert(joint_decision_module(model), _joint_example(d, d.encoder_frames), DECISION_OUTPUTS, precision,
                    target, "joint-decision")


def convert_joint_decision_step(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    return _convert(joint_decision_module(model), _joint_example(dims(model), 1), DECISION_OUTPUTS, precision,
                    target, "joint-decision-step")


def relative_position_ops(mlmodel) -> tuple[str, ...]:
    """The ops of a converted encoder that read the relative positional projection, and the consts holding it.

    The wrapper's positional table is a fixed buffer for the fixed window, so coremltools folds each layer's
    ``linear_pos(pos_emb)`` into a constant ``[1, heads, d_k, 2T - 1]`` read by a matmul. It is the encoder's sense
    of position, not a learned weight matrix: compression leaves it exact (as Silero's STFT basis), and it could not
    be grouped or block-quantized anyway (2T - 1 = 375 is odd, d_k = 8 < 32 in the tiny model)."""
    from conversions.runtime import load_model

    operations = load_model(mlmodel, backend="mil").function.operations
    consts = {op.outputs[0].name: (op.name, op.outputs[0].type) for op in operations if op.op_type == "const"}
    names = []
    for op in operations:
        if op.op_type != "matmul":
            continue
        for bindings in op.inputs.values():
            for binding in bindings:
                const_name, vtype = consts.get(binding.var, (None, None))
                shape = tuple(getattr(vtype, "shape", ()))
                if const_name and len(shape) == 4 and shape[0] == 1 and shape[-1] % 2 == 1:
                    names += [op.name, const_name]
    return tuple(names)

