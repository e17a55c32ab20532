"""Elementwise unary and binary kernels (``ops/elementwise.py``) against torch and independent numpy references.

Inputs are drawn as fp16-representable values, so the fp16 programs' input cast is exact and the only fp16 loss
of a single op is the rounding of its output (half an ulp: 2**-11 relative). Ops torch never emits (``square``,
``mod``, ``inverse`` with its own epsilon, integer ``real_div`` ...) run in MIL builder programs. The torch frontend
emits the same ops for iOS17 and iOS18 here, so iOS18 is exercised once, on the speech patterns.

Domains kept out, where torch and the converted program legitimately differ:
- ``torch.reciprocal`` converts to ``inverse`` with MIL's default epsilon 1e-4, so it computes ``1 / (x + 1e-4)``;
  ``inverse`` is tested against that formula instead.
- ``log`` of 0 (MIL adds epsilon 1e-45, a denormal that hardware may flush), and out-of-domain inputs (NaN).
- ``atan2(0, x < 0)``: the frontend's decomposition returns 0 where torch returns +-pi.
"""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conversions.testing import (FP16_TOLERANCE, FP32_TOLERANCE, assert_outputs_close, convert_module, op_types,
                                 run_on_runtime, torch_outputs)

# fp16 program, fp16-exact inputs, one op per output: only the output rounding (2**-11 relative) remains.
ONE_OP_FP16 = {"atol": 1e-5, "rtol": 1e-3}
SHAPES = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)


def fp16_values(shape, lo, hi):
    """float32 arrays of fp16-representable values in ``[lo, hi]`` (bounds must be fp16-exact)."""
    return hnp.arrays(np.float16, shape, elements=st.floats(lo, hi, width=16)).map(lambda a: a.astype(np.float32))


def grid_values(shape, lo, hi, step, nonzero=False):
    """float32 arrays of multiples of ``step`` in ``[lo, hi]``: ties, halves and exact quotients happen often."""
    ks = [k for k in range(int(lo / step), int(hi / step) + 1) if k or not nonzero]
    return hnp.arrays(np.float32, shape, elements=st.sampled_from([np.float32(k * step) for k in ks]))


def check_module(module, arrays, names, expect_ops, *, precision, target="iOS17", tol=None):
    """Convert ``module`` once, check the MIL ops under test are in the program, compare every output with torch."""
    inputs = [torch.from_numpy(a) for a in arrays]
    mlmodel = convert_module(module, inputs, precision=precision, target=target)
    missing = set(expect_ops) - set(op_types(mlmodel))
    assert not missing, f"the converted program lacks {missing}"
    tol = tol or (FP32_TOLERANCE if precision == "fp32" else FP16_TOLERANCE)
    got = run_on_runtime(mlmodel, inputs, precision=precision)
    assert_outputs_close(got, torch_outputs(module, inputs), names, tol)


def run_builder(build, arrays, expect_ops, *, precision, target):
    """Build a MIL program ``build(x0, x1, ...)`` on inputs shaped like ``arrays``, convert, run on the runtime."""
    specs = [mb.TensorSpec(shape=a.shape, dtype=types.int32 if a.dtype.kind == "i" else types.fp32) for a in arrays]
    body = {1: lambda x0: build(x0), 2: lambda x0, x1: build(x0, x1)}[len(arrays)]
    opset = getattr(ct.target, target)
    prog = mb.program(input_specs=specs, opset_version=opset)(body)
    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=opset,
                         compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    missing = set(expect_ops) - set(op_types(mlmodel))
    assert not missing, f"the converted program lacks {missing}"
    return run_on_runtime(mlmodel, [torch.from_numpy(a) for a in arrays], precision=precision)


PRECISIONS = pytest.mark.parametrize("precision", ["fp32", "fp16"])


# ---- unary ops torch emits ----------------------------------------------------------------------------------
class Unary(torch.nn.Module):
    """One input per domain: any (-6..6), unit (|x| < 1), positive, and a quarter grid for rounding ops."""

    NAMES = ("sin", "cos", "tan", "atan", "tanh", "erf", "exp", "exp2", "cosh", "sinh", "acos", "asin", "atanh",
             "log", "sqrt", "rsqrt", "floor", "ceil", "round", "sign", "abs", "clip", "clip_min", "hardtanh")

    def forward(self, x, unit, pos, grid):
        trig = x / 4  # keep tan away from its poles (|x| <= 1.5); x / 4 is exact in fp16
        return (torch.sin(x), torch.cos(x), torch.tan(trig), torch.atan(x), torch.tanh(x), torch.erf(x),
                torch.exp(x), torch.exp2(x), torch.cosh(x), torch.sinh(x),
                torch.acos(unit), torch.asin(unit), torch.atanh(unit),
                torch.log(pos), torch.sqrt(pos), torch.rsqrt(pos),
                torch.floor(grid), torch.ceil(grid), torch.round(grid), torch.sign(grid), torch.abs(grid),
                torch.clamp(grid, -1.5, 2.0), torch.clamp(grid, min=0.25), torch.nn.functional.hardtanh(grid))


@PRECISIONS
@given(data=st.data())
def test_unary_ops_match_torch(precision, data):
    shape = data.draw(SHAPES, label="shape")
    arrays = [data.draw(fp16_values(shape, -6.0, 6.0), label="x"),
              data.draw(fp16_values(shape, -0.9375, 0.9375), label="unit"),
              data.draw(fp16_values(shape, 2.0 ** -6, 64.0), label="pos"),
              data.draw(grid_values(shape, -8.0, 8.0, 0.25), label="grid")]  # halves test ties-to-even rounding
    expect = {"sin", "cos", "tan", "atan", "tanh", "erf", "exp", "exp2", "cosh", "sinh", "acos", "asin", "atanh",
              "log", "sqrt", "rsqrt", "floor", "ceil", "round", "sign", "abs", "clip"}
    # tan's output is rounded after the fp16 division x / 4, which is exact: still one rounding per output.
    check_module(Unary(), arrays, Unary.NAMES, expect, precision=precision,
                 tol=FP32_TOLERANCE if precision == "fp32" else ONE_OP_FP16)


# ---- binary ops torch emits ---------------------------------------------------------------------------------
class Binary(torch.nn.Module):
    NAMES = ("add", "sub", "mul", "div", "maximum", "minimum", "floor_divide", "remainder", "pow",
             "eq", "ne", "gt", "ge", "lt", "le", "and", "or", "xor", "not")

    def forward(self, x, y, base):
        return (x + y, x - y, x * y, x / y, torch.maximum(x, y), torch.minimum(x, y),
                torch.floor_divide(x, y), torch.remainder(x, y), torch.pow(base, y),
                x == y, x != y, x > y, x >= y, x < y, x <= y,
                torch.logical_and(x > 0, y > 0), torch.logical_or(x > 0, y > 0), torch.logical_xor(x > 0, y > 0),
                torch.logical_not(x >= y))


@PRECISIONS
@given(data=st.data())
def test_binary_ops_broadcast_and_match_torch(precision, data):
    shape = data.draw(SHAPES, label="x shape")
    y_shape = data.draw(hnp.broadcastable_shapes(shape, min_dims=1, max_dims=len(shape), max_side=5), label="y shape")
    out_shape = np.broadcast_shapes(shape, y_shape)
    arrays = [data.draw(grid_values(shape, -8.0, 8.0, 0.5), label="x"),
              data.draw(grid_values(y_shape, -3.0, 3.0, 0.5, nonzero=True), label="y"),
              data.draw(fp16_values(out_shape, 0.125, 8.0), label="base")]
    expect = {"add", "sub", "mul", "real_div", "maximum", "minimum", "floor_div", "pow", "equal", "not_equal",
              "greater", "greater_equal", "less", "less_equal", "logical_and", "logical_or", "logical_xor",
              "logical_not"}
    # Half-grid operands keep floor_div, mul and sub exact in fp16 (remainder too): one rounding per output at most.
    check_module(Binary(), arrays, Binary.NAMES, expect, precision=precision,
                 tol=FP32_TOLERANCE if precision == "fp32" else ONE_OP_FP16)


class IntOps(torch.nn.Module):
    NAMES = ("add", "sub", "mul", "floordiv", "remainder", "pow2", "maximum", "minimum", "abs", "sign", "eq", "gt")

    def forward(self, x, y):
        return (x + y, x - y, x * y, x // y, torch.remainder(x, y), x ** 2, torch.maximum(x, y), torch.minimum(x, y),
                x.abs(), torch.sign(x), x == y, x > y)


@given(data=st.data())
def test_int32_ops_match_torch(data):
    shape = data.draw(SHAPES, label="shape")
    x = data.draw(hnp.arrays(np.int32, shape, elements=st.integers(-50, 50)), label="x")
    y = data.draw(hnp.arrays(np.int32, shape, elements=st.integers(-7, 7).filter(bool)), label="y")
    expect = {"add", "sub", "mul", "floor_div", "pow", "maximum", "minimum", "abs", "sign", "equal", "greater"}
    check_module(IntOps(), [x, y], IntOps.NAMES, expect, precision="fp32")


# ---- patterns of the speech models --------------------------------------------------------------------------
class SpeechPatterns(torch.nn.Module):
    """Kokoro's phase (atan2, sin/cos), Silero's STFT magnitude, GLU gating, clamps and tensor exponents."""

    NAMES = ("atan2", "magnitude", "glu", "clamp_tensor", "trunc_div", "pow_tensor", "sin_cos")

    def forward(self, re, im, other, den):
        phase = torch.atan2(im, re)
        magnitude = torch.sqrt(re ** 2 + im ** 2)
        glu = torch.nn.functional.glu(torch.cat([re, other], dim=-1), dim=-1)
        clamped = torch.clamp(re, min=-other.abs(), max=other.abs())
        trunc = torch.div(re, den, rounding_mode="trunc")
        powed = torch.pow(other.abs() + 0.5, im)
        return phase, magnitude, glu, clamped, trunc, powed, torch.sin(phase) * torch.cos(phase)


@pytest.mark.parametrize("precision,target", [("fp32", "iOS17"), ("fp16", "iOS17"), ("fp16", "iOS18")])
@given(data=st.data())
def test_speech_patterns_match_torch(precision, target, data):
    shape = data.draw(SHAPES, label="shape")
    re = data.draw(fp16_values(shape, -4.0, 4.0), label="re")
    # im stays away from 0: atan2(0, x < 0) is pi in torch and 0 in the frontend's decomposition.
    im = data.draw(fp16_values(shape, 2.0 ** -4, 3.0), label="|im|")
    im = im * data.draw(hnp.arrays(np.float32, shape, elements=st.sampled_from([np.float32(-1), np.float32(1)])))
    other = data.draw(fp16_values(shape, 0.5, 4.0), label="other")
    # Powers of two keep re / den exact in fp16: a quotient rounded onto an integer would shift trunc by 1.
    powers = [np.float32(sign * 2.0 ** k) for sign in (-1, 1) for k in range(-2, 3)]
    den = data.draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(powers)), label="den")
    expect = {"atan", "real_div", "logical_and", "sqrt", "pow", "sigmoid", "maximum", "minimum", "sign", "floor"}
    check_module(SpeechPatterns(), [re, im, other, den], SpeechPatterns.NAMES, expect, precision=precision,
                 target=target)


# ---- ops torch does not emit: builder programs --------------------------------------------------------------
BUILDER_TOL = {"fp32": FP32_TOLERANCE, "fp16": ONE_OP_FP16}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("target", ["iOS15", "iOS17"])
@given(data=st.data())
def test_float_builder_ops(target, precision, data):
    """Epsilons of inverse/log/rsqrt (default or given), square, exp2, threshold, clip, logical_not, and mod,
    whose result takes the sign of the divisor (Python's ``%``, the spec's reference).

    iOS15 types epsilon/alpha/beta like ``x`` (fp16 in fp16 programs), iOS17 may keep them fp32: the drawn values
    are fp16-exact so both agree, except the defaults 1e-4 / 1e-12, whose fp16 rounding is below tolerance.
    """
    shape = data.draw(SHAPES, label="shape")
    x = data.draw(fp16_values(shape, 2.0 ** -7, 16.0), label="x")  # small x makes inverse's epsilon visible
    y = data.draw(grid_values(shape, -3.0, 3.0, 0.5, nonzero=True), label="y")
    inv_eps = data.draw(st.sampled_from([None, 0.5, 0.0]), label="inverse epsilon")
    log_eps = data.draw(st.sampled_from([None, 0.5, 2.0]), label="log epsilon")
    rsqrt_eps = data.draw(st.sampled_from([None, 0.25]), label="rsqrt epsilon")
    alpha = data.draw(st.floats(-4.0, 4.0, width=16), label="alpha")
    beta = data.draw(st.floats(4.5, 12.0, width=16), label="beta")

    def eps(value):
        return {} if value is None else {"epsilon": np.float32(value)}

    def build(x0, x1):
        return (mb.inverse(x=x0, **eps(inv_eps)), mb.log(x=x0, **eps(log_eps)), mb.rsqrt(x=x0, **eps(rsqrt_eps)),
                mb.square(x=x0), mb.exp2(x=mb.mul(x=x0, y=np.float32(-1))),
                mb.threshold(x=x0, alpha=np.float32(alpha)),
                mb.clip(x=x0, alpha=np.float32(alpha), beta=np.float32(beta)),
                mb.cast(x=mb.logical_not(x=mb.greater(x=x0, y=np.float32(1))), dtype="fp32"), mb.mod(x=x0, y=x1),
                mb.mod(x=mb.mul(x=x0, y=np.float32(-1)), y=x1))

    names = ["inverse", "log", "rsqrt", "square", "exp2", "threshold", "clip", "logical_not", "mod", "mod_negative"]
    got = run_builder(build, [x, y], set(names) - {"mod_negative"}, precision=precision, target=target)
    x64 = x.astype(np.float64)
    expected = [1 / (x64 + (1e-4 if inv_eps is None else inv_eps)), np.log(x64 + (log_eps or 0.0)),
                1 / np.sqrt(x64 + (1e-12 if rsqrt_eps is None else rsqrt_eps)), x64 ** 2, 2.0 ** -x64,
                np.maximum(x64, alpha), np.clip(x64, alpha, beta), (x64 <= 1).astype(np.float64),
                np.mod(x64, y), np.mod(-x64, y)]
    # One rounding per output in fp16: fmod is exact and mod adds y once when signs differ; exp2 reads -x (exact),
    # and its results down to 2**-16 are fp16 subnormals, whose 2**-25 steps atol 1e-5 covers.
    assert_outputs_close(got, expected, names, BUILDER_TOL[precision])


@given(data=st.data())
def test_int32_builder_ops(data):
    """Integer real_div (truncated by the int32 output), floor_div and mod (Python signs), pow, unary int ops."""
    shape = data.draw(SHAPES, label="shape")
    x = data.draw(hnp.arrays(np.int32, shape, elements=st.integers(-40, 40)), label="x")
    y = data.draw(hnp.arrays(np.int32, shape, elements=st.integers(-6, 6).filter(bool)), label="y")

    def build(x0, x1):
        return (mb.real_div(x=x0, y=x1), mb.floor_div(x=x0, y=x1), mb.mod(x=x0, y=x1),
                mb.pow(x=x1, y=mb.abs(x=mb.sign(x=x0))), mb.pow(x=x1, y=np.int32(3)), mb.square(x=x0),
                mb.exp2(x=mb.mod(x=x0, y=np.int32(9))), mb.threshold(x=x0, alpha=np.int32(-3)),
                mb.maximum(x=x0, y=x1), mb.less_equal(x=x0, y=x1))

    names = ["real_div", "floor_div", "mod", "pow_tensor", "pow3", "square", "exp2", "threshold", "maximum",
             "less_equal"]
    got = run_builder(build, [x, y], ["real_div", "floor_div", "mod", "pow", "square", "exp2", "threshold", "sign"],
                      precision="fp32", target="iOS17")
    x64, y64 = x.astype(np.int64), y.astype(np.int64)
    expected = [np.trunc(x64 / y64), np.floor_divide(x64, y64), np.mod(x64, y64), y64 ** np.abs(np.sign(x64)),
                y64 ** 3, x64 ** 2, 2 ** np.mod(x64, 9), np.maximum(x64, -3), np.maximum(x64, y64), x64 <= y64]
    assert_outputs_close(got, expected, names, FP32_TOLERANCE)
