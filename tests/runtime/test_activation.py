"""Activation kernels (``ops/activation.py``) against torch and independent numpy references.

Inputs and parameters are drawn fp16-representable, so fp16 programs see them exactly (iOS15 rounds ``alpha`` /
``beta`` to fp16, iOS17 may keep them fp32: both agree) and the fp16 loss is the rounding of each op's output.
Ops or modes torch never emits (``clamped_relu``, ``scaled_tanh``, ``softplus_parametric``, ``linear_activation``,
``softsign``, gelu ``SIGMOID_APPROXIMATION`` ...) run in MIL builder programs. The torch frontend emits the same
activation ops for iOS17 and iOS18, so the torch modules run at iOS17 only.

Domains kept out: softmax inputs span [-3, 3] so no probability falls into fp16 subnormals, where the fp16
program's ``log_softmax`` (``softmax`` then ``log``) legitimately loses digits; ``prelu`` runs on rank-4 inputs
(the frontend passes rank-3 inputs straight to MIL ``prelu``, which requires one shared alpha there).
"""

from __future__ import annotations

import math

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conversions.runtime.mil.ops import REGISTRY
from conversions.testing import (FP32_TOLERANCE, assert_outputs_close, convert_module, op_types, run_on_runtime,
                                 torch_outputs)

# fp16 programs with fp16-exact inputs: each output went through at most three fp16 roundings (2**-11 relative
# each; e.g. mish = softplus -> tanh -> mul), so 4 ulps; atol for outputs that cancel towards 0.
FEW_OPS_FP16 = {"atol": 2e-3, "rtol": 2e-3}
ONE_OP_FP16 = {"atol": 1e-5, "rtol": 1e-3}  # a single op: only its output rounding
SHAPES = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)
PRECISIONS = pytest.mark.parametrize("precision", ["fp32", "fp16"])


def fp16_values(shape, lo, hi):
    """float32 arrays of fp16-representable values in ``[lo, hi]`` (bounds must be fp16-exact)."""
    return hnp.arrays(np.float16, shape, elements=st.floats(lo, hi, width=16)).map(lambda a: a.astype(np.float32))


def fp16_params(lo, hi, n=None):
    """A float (or ``n`` distinct floats) in ``+-[lo, hi]``, fp16-exact, never 0 or 1: graph passes would fold
    trivial parameters, and turn a ``prelu`` whose alphas are all equal into ``leaky_relu``."""
    value = st.floats(lo, hi, width=16).filter(lambda v: v != 1.0).flatmap(lambda v: st.sampled_from([v, -v]))
    if n is None:
        return value
    return st.lists(value, min_size=n, max_size=n, unique=True).map(lambda v: np.array(v, np.float32))


# Rank 4 with at least 2 channels, for per-channel parameters (prelu, softplus_parametric).
CHANNEL_SHAPES = st.tuples(st.integers(1, 2), st.integers(2, 4), st.integers(1, 4), st.integers(1, 4))


# ---- torch modules ------------------------------------------------------------------------------------------
class Activations(torch.nn.Module):
    NAMES = ("relu", "relu6", "leaky_relu", "elu", "hardsigmoid", "hardswish", "sigmoid", "silu", "softplus",
             "softplus_beta2", "gelu", "gelu_tanh", "mish", "selu", "tanhshrink", "softmax", "log_softmax", "prelu")

    def __init__(self, alpha: float, dim: int, prelu_weight: np.ndarray):
        super().__init__()
        self.alpha, self.dim = alpha, dim
        self.prelu = torch.nn.PReLU(len(prelu_weight))
        with torch.no_grad():
            self.prelu.weight.copy_(torch.from_numpy(prelu_weight))

    def forward(self, x, s, x4):
        F = torch.nn.functional
        return (F.relu(x), F.relu6(x), F.leaky_relu(x, self.alpha), F.elu(x, self.alpha), F.hardsigmoid(x),
                F.hardswish(x), torch.sigmoid(x), F.silu(x), F.softplus(x), F.softplus(x, beta=2.0), F.gelu(x),
                F.gelu(x, approximate="tanh"), F.mish(x), F.selu(x), F.tanhshrink(x),
                F.softmax(s, self.dim), F.log_softmax(s, self.dim), self.prelu(x4))


@PRECISIONS
@given(data=st.data())
def test_activations_match_torch(precision, data):
    shape = data.draw(SHAPES, label="shape")
    shape4 = data.draw(CHANNEL_SHAPES, label="prelu shape")
    module = Activations(alpha=data.draw(fp16_params(0.0625, 2.0), label="alpha"),
                         dim=data.draw(st.integers(-len(shape), len(shape) - 1), label="softmax dim"),
                         prelu_weight=data.draw(fp16_params(0.0625, 2.0, n=shape4[1]), label="prelu weight"))
    inputs = [torch.from_numpy(data.draw(fp16_values(shape, -8.0, 8.0), label="x")),
              torch.from_numpy(data.draw(fp16_values(shape, -3.0, 3.0), label="softmax input")),
              torch.from_numpy(data.draw(fp16_values(shape4, -4.0, 4.0), label="prelu input"))]
    mlmodel = convert_module(module, inputs, precision=precision)
    expect = {"relu", "relu6", "leaky_relu", "elu", "sigmoid_hard", "thresholded_relu", "sigmoid", "silu", "softplus",
              "gelu", "tanh", "softmax", "log", "prelu"}
    assert expect <= set(op_types(mlmodel)), f"the converted program lacks {expect - set(op_types(mlmodel))}"
    got = run_on_runtime(mlmodel, inputs, precision=precision)
    assert_outputs_close(got, torch_outputs(module, inputs), Activations.NAMES,
                         FP32_TOLERANCE if precision == "fp32" else FEW_OPS_FP16)


# ---- builder programs ---------------------------------------------------------------------------------------
def ref_gelu(x, mode):
    if mode == "EXACT":
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return x / (1 + np.exp(-1.702 * x))


def per_channel(v, rank):
    return v.reshape([1, -1] + [1] * (rank - 2))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("target", ["iOS15", "iOS17"])
@given(data=st.data())
def test_builder_activations(target, precision, data):
    shape = data.draw(CHANNEL_SHAPES, label="shape")
    x = data.draw(fp16_values(shape, -6.0, 6.0), label="x")
    a, b = data.draw(fp16_params(0.125, 3.0), label="alpha"), data.draw(fp16_params(0.125, 3.0), label="beta")
    ca = data.draw(fp16_params(0.125, 2.0, n=shape[1]), label="channel alpha")
    cb = data.draw(fp16_params(0.125, 2.0, n=shape[1]), label="channel beta")
    x.flat[0] = b  # the thresholded_relu boundary: x == alpha is kept
    f32 = np.float32

    def build(x0):
        return (mb.clamped_relu(x=x0, alpha=f32(a), beta=f32(abs(b))),
                mb.scaled_tanh(x=x0, alpha=f32(a), beta=f32(b)), mb.sigmoid_hard(x=x0, alpha=f32(a), beta=f32(b)),
                mb.linear_activation(x=x0, alpha=f32(a), beta=f32(b)), mb.thresholded_relu(x=x0, alpha=f32(b)),
                mb.elu(x=x0, alpha=f32(a)), mb.leaky_relu(x=x0, alpha=f32(a)), mb.softsign(x=x0),
                mb.softplus_parametric(x=x0, alpha=ca, beta=cb), mb.prelu(x=x0, alpha=ca),
                mb.gelu(x=x0, mode="EXACT"), mb.gelu(x=x0, mode="TANH_APPROXIMATION"),
                mb.gelu(x=x0, mode="SIGMOID_APPROXIMATION"), mb.softmax(x=x0), mb.relu6(x=x0))

    opset = getattr(ct.target, target)
    prog = mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=types.fp32)], opset_version=opset)(build)
    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=opset,
                         compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    names = ["clamped_relu", "scaled_tanh", "sigmoid_hard", "linear_activation", "thresholded_relu", "elu",
             "leaky_relu", "softsign", "softplus_parametric", "prelu", "gelu_exact", "gelu_tanh", "gelu_sigmoid",
             "softmax", "relu6"]
    expect = set(names[:10]) | {"gelu", "softmax", "relu6"}
    assert expect <= set(op_types(mlmodel)), f"the converted program lacks {expect - set(op_types(mlmodel))}"
    got = run_on_runtime(mlmodel, [torch.from_numpy(x)], precision=precision)

    x = x.astype(np.float64)
    cal, cbe = per_channel(ca.astype(np.float64), x.ndim), per_channel(cb.astype(np.float64), x.ndim)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    expected = [np.minimum(abs(b), np.where(x >= 0, x, a * x)), a * np.tanh(b * x), np.clip(a * x + b, 0, 1),
                a * x + b, np.where(x >= b, x, 0), np.where(x > 0, x, a * np.expm1(x)), np.where(x >= 0, x, a * x),
                x / (1 + np.abs(x)), cal * np.logaddexp(0, cbe * x), np.where(x > 0, x, cal * x),
                ref_gelu(x, "EXACT"), ref_gelu(x, "TANH_APPROXIMATION"), ref_gelu(x, "SIGMOID"),
                e / e.sum(axis=-1, keepdims=True), np.clip(x, 0, 6)]
    assert_outputs_close(got, expected, names, FP32_TOLERANCE if precision == "fp32" else ONE_OP_FP16)


def test_gelu_rejects_an_unknown_mode():
    with pytest.raises(NotImplementedError, match="ERF_APPROXIMATION"):
        REGISTRY["gelu"].fn(x=torch.zeros(2), mode="ERF_APPROXIMATION")
