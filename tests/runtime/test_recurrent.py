"""Recurrent kernels (``lstm``, ``gru``, ``rnn``): torch modules converted with coremltools, and MIL builder
programs for what torch never emits (reverse direction, ``output_sequence=False``, peepholes, clip,
non-default activations, ``gru`` at all), checked against independent numpy references.
"""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types
from hypothesis import given, settings
from hypothesis import strategies as st

from conversions.runtime import load_model
from conversions.runtime.mil.executor import RuntimeOpError
from conversions.runtime.mil.program import parse_program
from conversions.runtime.package import open_mlmodel
from conversions.testing import assert_matches_torch, convert_module

# (target, precision) of the builder programs: iOS15 is the oldest opset (fp32 only), iOS17 adds fp16, and iOS18
# changes only gru (reset_after, input_bias). Torch modules convert to the same ops for iOS17 and iOS18
# (checked while writing these tests), so they run at iOS17 only.
PROGRAM_VARIANTS = [("iOS15", "fp32"), ("iOS17", "fp32"), ("iOS17", "fp16")]
GRU_VARIANTS = PROGRAM_VARIANTS + [("iOS18", "fp32"), ("iOS18", "fp16")]


def variant_ids(variants):
    return [f"{t}-{p}" for t, p in variants]


# fp16 programs: the references below take the fp16-rounded weights/inputs, so what is left is the rounding of
# the op's outputs (2^-11 relative) plus the fp16 casts around it; the kernel itself steps in fp32.
# fp32 programs: only summation-order differences between numpy (fp64) and the kernel (fp32).
TOLERANCE = {"fp32": {"atol": 1e-5, "rtol": 1e-4}, "fp16": {"atol": 2e-3, "rtol": 2e-3}}

ACTIVATIONS = ["sigmoid", "tanh", "scaled_tanh", "relu", "linear", "hard_sigmoid"]


def program_op_types(mlmodel) -> list[str]:
    opened = open_mlmodel(mlmodel)
    function = parse_program(opened.spec.mlProgram, opened.weights_dir).functions["main"]
    return [op.op_type for op in function.operations]


def program_op_dtypes(mlmodel, op_type: str) -> set[str]:
    opened = open_mlmodel(mlmodel)
    function = parse_program(opened.spec.mlProgram, opened.weights_dir).functions["main"]
    return {o.type.dtype for op in function.operations if op.op_type == op_type for o in op.outputs}


# ---- torch modules ---------------------------------------------------------------------------------------
class Recurrent(torch.nn.Module):
    """An ``nn.LSTM``/``nn.RNN`` whose initial state is a model input (so initial_h/initial_c are variables)."""

    def __init__(self, kind: str, input_size: int, hidden: int, **kwargs):
        super().__init__()
        self.rnn = getattr(torch.nn, kind)(input_size, hidden, **kwargs)

    def forward(self, x, *state):
        if isinstance(self.rnn, torch.nn.LSTM):  # (GRU/RNN take and return a single state)
            out, (h, c) = self.rnn(x, (state[0], state[1]))
            return out, h, c
        out, h = self.rnn(x, state[0])
        return out, h


LSTM_CONFIGS = {
    "1-layer": {"num_layers": 1},
    "2-layers": {"num_layers": 2},
    "batch-first": {"num_layers": 1, "batch_first": True},
    "bidirectional": {"num_layers": 1, "bidirectional": True},
    "2-layers-bidirectional-batch-first": {"num_layers": 2, "bidirectional": True, "batch_first": True},
}
RNN_CONFIGS = {
    "tanh": {"nonlinearity": "tanh"},
    "relu-2-layers": {"nonlinearity": "relu", "num_layers": 2},
    "tanh-batch-first-no-bias": {"nonlinearity": "tanh", "batch_first": True, "bias": False},
}


def recurrent_case(kind, config, seq, batch, input_size, hidden, seed):
    torch.manual_seed(seed)
    module = Recurrent(kind, input_size, hidden, **config)
    layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    x = torch.randn(batch, seq, input_size) if config.get("batch_first") else torch.randn(seq, batch, input_size)
    states = [torch.randn(layers, batch, hidden) for _ in range(2 if kind == "LSTM" else 1)]
    return module, [x, *states]


sizes = {"seq": st.integers(1, 6), "batch": st.integers(1, 3), "input_size": st.integers(1, 8),
         "hidden": st.integers(1, 8), "seed": st.integers(0, 2**16)}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("config", list(LSTM_CONFIGS), ids=list(LSTM_CONFIGS))
@settings(max_examples=3)
@given(**sizes)
def test_torch_lstm(config, precision, seq, batch, input_size, hidden, seed):
    module, inputs = recurrent_case("LSTM", LSTM_CONFIGS[config], seq, batch, input_size, hidden, seed)
    assert_matches_torch(module, inputs, precision=precision, target="iOS17")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("config", list(RNN_CONFIGS), ids=list(RNN_CONFIGS))
@settings(max_examples=3)
@given(**sizes)
def test_torch_rnn(config, precision, seq, batch, input_size, hidden, seed):
    module, inputs = recurrent_case("RNN", RNN_CONFIGS[config], seq, batch, input_size, hidden, seed)
    assert_matches_torch(module, inputs, precision=precision, target="iOS17")


def test_torch_modules_map_to_the_recurrent_ops():
    """Which MIL op each torch module becomes: lstm and rnn natively, GRU as a while_loop (so gru is only ever
    reached through builder programs, below)."""
    x, h = torch.randn(3, 2, 4), torch.randn(2, 2, 5)
    lstm = convert_module(Recurrent("LSTM", 4, 5, bidirectional=True), [x, h, h], precision="fp16")
    assert program_op_types(lstm).count("lstm") == 1 and program_op_dtypes(lstm, "lstm") == {"fp16"}
    assert "rnn" in program_op_types(convert_module(Recurrent("RNN", 4, 5), [x, h[:1]]))
    gru_ops = program_op_types(convert_module(Recurrent("GRU", 4, 5), [x, h[:1]]))
    assert "while_loop" in gru_ops and "gru" not in gru_ops


# ---- builder programs and numpy references ----------------------------------------------------------------
def np_act(name: str, x: np.ndarray) -> np.ndarray:
    if name in ("tanh", "scaled_tanh"):
        return np.tanh(x)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if name in ("hard_sigmoid", "sigmoid_hard"):
        return np.minimum(np.maximum(0.2 * x + 0.5, 0), 1)
    if name == "relu":
        return np.maximum(x, 0)
    if name == "linear":
        return x
    raise ValueError(name)


def as_fp16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float64)


class Params:
    """Per-gate weights drawn at a scale that keeps relu/linear recurrences bounded over a few steps."""

    def __init__(self, rng, gates: str, input_size: int, hidden: int, rounded: bool):
        scale = 0.8 / np.sqrt(max(input_size, hidden))
        draw = (lambda *s: as_fp16(rng.uniform(-scale, scale, s))) if rounded else (
            lambda *s: rng.uniform(-scale, scale, s).astype(np.float32).astype(np.float64))
        self.w = {g: draw(hidden, input_size) for g in gates}
        self.r = {g: draw(hidden, hidden) for g in gates}
        self.b = {g: draw(hidden) for g in gates}
        self.b2 = {g: draw(hidden) for g in gates}  # gru's iOS18 second bias
        self.p = {g: draw(hidden) for g in "ifo"}

    @staticmethod
    def stack(parts: dict, order: str) -> np.ndarray:
        return np.concatenate([parts[g] for g in order]).astype(np.float32)


def run_program(prog, feeds: dict, target: str, precision: str):
    """Convert a builder program, run it on the runtime; returns the MLModel and its outputs (float64)."""
    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
                         compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    model = load_model(mlmodel, backend="mil", precision=precision)
    out = model.predict(feeds)
    return mlmodel, [out[spec.name].astype(np.float64) for spec in model.outputs]


def draw_inputs(rng, seq, batch, input_size, state_width, n_states, rounded):
    arrays = [rng.standard_normal((seq, batch, input_size))] + [
        rng.standard_normal((batch, state_width)) * 0.5 for _ in range(n_states)]
    arrays = [a.astype(np.float32) for a in arrays]
    return arrays, [as_fp16(a) if rounded else a.astype(np.float64) for a in arrays]


def np_lstm(x, h, c, P, reverse, acts, clip, peephole):
    """Numpy LSTM over ``x`` [seq, b, I]; returns the per-step states in the order computed and (h, c)."""
    rec, cell, out = acts
    p = P.p if peephole else {g: 0.0 for g in "ifo"}
    order = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    states = []
    for t in order:
        pre = {g: x[t] @ P.w[g].T + h @ P.r[g].T + P.b[g] for g in "ifoz"}
        i = np_act(rec, pre["i"] + p["i"] * c)
        f = np_act(rec, pre["f"] + p["f"] * c)
        c = f * c + i * np_act(cell, pre["z"])
        if clip is not None:
            c = np.clip(c, -clip, clip)
        o = np_act(rec, pre["o"] + p["o"] * c)
        h = o * np_act(out, c)
        states.append(h)
    return states, h, c


def spec(shape):
    return mb.TensorSpec(shape=shape, dtype=types.fp32)


@pytest.mark.parametrize("target,precision", PROGRAM_VARIANTS, ids=variant_ids(PROGRAM_VARIANTS))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@settings(max_examples=4)
@given(seq=st.integers(1, 5), batch=st.integers(1, 3), input_size=st.integers(1, 6), hidden=st.integers(1, 6),
       output_sequence=st.booleans(), acts=st.tuples(*[st.sampled_from(ACTIVATIONS)] * 3),
       clip=st.sampled_from([None, 0.3, 5.0]), peephole=st.booleans(), seed=st.integers(0, 2**16))
def test_lstm_program(direction, target, precision, seq, batch, input_size, hidden, output_sequence, acts, clip,
                      peephole, seed):
    rng = np.random.default_rng(seed)
    rounded = precision == "fp16"
    bidir = direction == "bidirectional"
    fwd, bwd = (Params(rng, "ifoz", input_size, hidden, rounded) for _ in range(2))
    width = hidden * (2 if bidir else 1)
    (x, h0, c0), (x64, h64, c64) = draw_inputs(rng, seq, batch, input_size, width, 2, rounded)
    opset = getattr(ct.target, target)

    @mb.program(input_specs=[spec(x.shape), spec(h0.shape), spec(c0.shape)], opset_version=opset)
    def prog(x, initial_h, initial_c):
        args = {"weight_ih": Params.stack(fwd.w, "ifoz"), "weight_hh": Params.stack(fwd.r, "ifoz"),
                "bias": Params.stack(fwd.b, "ifoz"), "direction": direction, "output_sequence": output_sequence,
                "recurrent_activation": acts[0], "cell_activation": acts[1], "activation": acts[2]}
        if peephole:
            args["peephole"] = Params.stack(fwd.p, "ifo")
        if clip is not None:
            args["clip"] = np.float32(clip)
        if bidir:
            args.update(weight_ih_back=Params.stack(bwd.w, "ifoz"), weight_hh_back=Params.stack(bwd.r, "ifoz"),
                        bias_back=Params.stack(bwd.b, "ifoz"))
            if peephole:
                args["peephole_back"] = Params.stack(bwd.p, "ifo")
        return mb.lstm(x=x, initial_h=initial_h, initial_c=initial_c, **args)

    mlmodel, (seq_out, h_out, c_out) = run_program(
        prog, {"x": x, "initial_h": h0, "initial_c": c0}, target, precision)
    assert program_op_dtypes(mlmodel, "lstm") == {precision}  # the fp16 program runs the lstm itself in fp16

    if not bidir:
        states, h, c = np_lstm(x64, h64, c64, fwd, direction == "reverse", acts, clip, peephole)
        expected_seq = np.stack(states) if output_sequence else states[-1][None]
    else:
        f_states, h_f, c_f = np_lstm(x64, h64[:, :hidden], c64[:, :hidden], fwd, False, acts, clip, peephole)
        b_states, h_b, c_b = np_lstm(x64, h64[:, hidden:], c64[:, hidden:], bwd, True, acts, clip, peephole)
        h, c = np.concatenate([h_f, h_b], -1), np.concatenate([c_f, c_b], -1)
        # The backward half is aligned with the input's time steps (b_states[k] consumed x[seq-1-k]).
        expected_seq = (np.concatenate([np.stack(f_states), np.stack(b_states[::-1])], -1) if output_sequence
                        else h[None])
    tol = TOLERANCE[precision]
    np.testing.assert_allclose(seq_out, expected_seq, **tol, err_msg="output sequence")
    np.testing.assert_allclose(h_out, h, **tol, err_msg="final h")
    np.testing.assert_allclose(c_out, c, **tol, err_msg="final c")


def np_gru(x, h, P, reverse, acts, reset_after):
    rec, out = acts
    order = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    states = []
    for t in order:
        r = np_act(rec, x[t] @ P.w["r"].T + P.b2["r"] + h @ P.r["r"].T + P.b["r"])
        z = np_act(rec, x[t] @ P.w["z"].T + P.b2["z"] + h @ P.r["z"].T + P.b["z"])
        if reset_after:  # torch's GRU: the reset gate scales the whole recurrent term, bias included
            o = np_act(out, x[t] @ P.w["o"].T + P.b2["o"] + r * (h @ P.r["o"].T + P.b["o"]))
        else:  # the classic GRU: reset the state, then project it
            o = np_act(out, x[t] @ P.w["o"].T + P.b2["o"] + (r * h) @ P.r["o"].T + P.b["o"])
        h = (1 - z) * o + z * h
        states.append(h)
    return states, h


@pytest.mark.parametrize("target,precision", GRU_VARIANTS, ids=variant_ids(GRU_VARIANTS))
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@settings(max_examples=4)
@given(seq=st.integers(1, 5), batch=st.integers(1, 3), input_size=st.integers(1, 6), hidden=st.integers(1, 6),
       output_sequence=st.booleans(), acts=st.tuples(*[st.sampled_from(ACTIVATIONS)] * 2),
       reset_after=st.booleans(), seed=st.integers(0, 2**16))
def test_gru_program(direction, target, precision, seq, batch, input_size, hidden, output_sequence, acts,
                     reset_after, seed):
    rng = np.random.default_rng(seed)
    rounded = precision == "fp16"
    P = Params(rng, "roz", input_size, hidden, rounded)
    iOS18 = target == "iOS18"
    reset_after = reset_after and iOS18  # reset_after and input_bias exist from iOS18 on
    if not iOS18:
        P.b2 = {g: 0.0 for g in "roz"}
    (x, h0), (x64, h64) = draw_inputs(rng, seq, batch, input_size, hidden, 1, rounded)

    @mb.program(input_specs=[spec(x.shape), spec(h0.shape)], opset_version=getattr(ct.target, target))
    def prog(x, initial_h):
        args = {"weight_ih": Params.stack(P.w, "roz"), "weight_hh": Params.stack(P.r, "roz"),
                "bias": Params.stack(P.b, "roz"), "direction": direction, "output_sequence": output_sequence,
                "recurrent_activation": acts[0], "activation": acts[1]}
        if iOS18:
            args.update(reset_after=reset_after, input_bias=Params.stack(P.b2, "roz"))
        return mb.gru(x=x, initial_h=initial_h, **args)

    mlmodel, (seq_out, h_out) = run_program(prog, {"x": x, "initial_h": h0}, target, precision)
    assert "gru" in program_op_types(mlmodel)
    states, h = np_gru(x64, h64, P, direction == "reverse", acts, reset_after)
    expected_seq = np.stack(states) if output_sequence else states[-1][None]
    tol = TOLERANCE[precision]
    np.testing.assert_allclose(seq_out, expected_seq, **tol, err_msg="output sequence")
    np.testing.assert_allclose(h_out, h, **tol, err_msg="final h")


@pytest.mark.parametrize("target,precision", PROGRAM_VARIANTS, ids=variant_ids(PROGRAM_VARIANTS))
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@settings(max_examples=4)
@given(seq=st.integers(1, 5), batch=st.integers(1, 3), input_size=st.integers(1, 6), hidden=st.integers(1, 6),
       output_sequence=st.booleans(), act=st.sampled_from(["tanh", "relu", "sigmoid", "sigmoid_hard",
                                                            "scaled_tanh", "linear"]),
       seed=st.integers(0, 2**16))
def test_rnn_program(direction, target, precision, seq, batch, input_size, hidden, output_sequence, act, seed):
    rng = np.random.default_rng(seed)
    rounded = precision == "fp16"
    P = Params(rng, "h", input_size, hidden, rounded)
    (x, h0), (x64, h64) = draw_inputs(rng, seq, batch, input_size, hidden, 1, rounded)

    @mb.program(input_specs=[spec(x.shape), spec(h0.shape)], opset_version=getattr(ct.target, target))
    def prog(x, initial_h):
        return mb.rnn(x=x, initial_h=initial_h, weight_ih=P.w["h"].astype(np.float32),
                      weight_hh=P.r["h"].astype(np.float32), bias=P.b["h"].astype(np.float32),
                      direction=direction, output_sequence=output_sequence, activation=act)

    mlmodel, (seq_out, h_out) = run_program(prog, {"x": x, "initial_h": h0}, target, precision)
    assert "rnn" in program_op_types(mlmodel)
    h, states = h64, []
    for t in (range(seq - 1, -1, -1) if direction == "reverse" else range(seq)):
        h = np_act(act, x64[t] @ P.w["h"].T + h @ P.r["h"].T + P.b["h"])
        states.append(h)
    expected_seq = np.stack(states) if output_sequence else states[-1][None]
    tol = TOLERANCE[precision]
    np.testing.assert_allclose(seq_out, expected_seq, **tol, err_msg="output sequence")
    np.testing.assert_allclose(h_out, h, **tol, err_msg="final h")


def test_unknown_activation_is_reported():
    from conversions.runtime.mil.ops.recurrent import rnn

    with pytest.raises(NotImplementedError, match="softplus"):
        rnn(x=torch.zeros(1, 1, 1), initial_h=torch.zeros(1, 1), weight_ih=torch.zeros(1, 1),
            weight_hh=torch.zeros(1, 1), activation="softplus")


# An initial state whose batch differs from the input's: the spec gives both the same `b` (no broadcasting),
# coremltools' type inference does not check it, and its torch pack_padded_sequence conversion can emit it.
# The runtime names the state, both shapes and both batches instead of broadcasting into a wrong shape.
def _lstm_mismatch(state_batch: int, c_batch: int):
    rng = np.random.default_rng(0)
    seq, batch, input_size, hidden = 4, 1, 3, 2

    @mb.program(input_specs=[spec((seq, batch, input_size)), spec((state_batch, hidden)), spec((c_batch, hidden))],
                opset_version=ct.target.iOS17)
    def prog(x, initial_h, initial_c):
        return mb.lstm(x=x, initial_h=initial_h, initial_c=initial_c,
                       weight_ih=rng.standard_normal((4 * hidden, input_size)).astype(np.float32),
                       weight_hh=rng.standard_normal((4 * hidden, hidden)).astype(np.float32), output_sequence=True)

    feeds = {"x": np.ones((seq, batch, input_size), np.float32), "initial_h": np.zeros((state_batch, hidden), np.float32),
             "initial_c": np.zeros((c_batch, hidden), np.float32)}
    return prog, feeds


@pytest.mark.parametrize("h_batch,c_batch,name,got", [(5, 1, "initial_h", 5), (1, 5, "initial_c", 5)])
def test_lstm_initial_state_batch_mismatch_is_reported(h_batch, c_batch, name, got):
    prog, feeds = _lstm_mismatch(h_batch, c_batch)
    with pytest.raises(RuntimeOpError) as info:
        run_program(prog, feeds, "iOS17", "fp32")
    message = str(info.value)
    assert "(lstm)" in message and f"'{name}'" in message
    assert f"got [{got}, 2]" in message and "[1, 2]" in message  # got vs expected [B, DIRECTIONS*H]
    assert f"batch {got} does not match the batch 1 of input 'x' [4, 1, 3]" in message


@pytest.mark.parametrize("op", ["gru", "rnn"])
def test_gru_rnn_initial_state_batch_mismatch_is_reported(op):
    # A batch-1 state over a batch-3 input: torch would broadcast it silently; the spec does not.
    rng = np.random.default_rng(0)
    seq, batch, input_size, hidden = 2, 3, 2, 2
    gates = 3 if op == "gru" else 1

    @mb.program(input_specs=[spec((seq, batch, input_size)), spec((1, hidden))], opset_version=ct.target.iOS17)
    def prog(x, initial_h):
        return getattr(mb, op)(x=x, initial_h=initial_h,
                               weight_ih=rng.standard_normal((gates * hidden, input_size)).astype(np.float32),
                               weight_hh=rng.standard_normal((gates * hidden, hidden)).astype(np.float32))

    feeds = {"x": np.ones((seq, batch, input_size), np.float32), "initial_h": np.zeros((1, hidden), np.float32)}
    with pytest.raises(RuntimeOpError, match=rf"\({op}\).*'initial_h' must have shape \[B, H\] = \[3, 2\], got \[1, 2\]: "
                                             r"its batch 1 does not match the batch 3 of input 'x' \[2, 3, 2\]"):
        run_program(prog, feeds, "iOS17", "fp32")
