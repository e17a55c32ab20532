"""``conv_quantized`` (iOS15, experimental): a convolution whose uint8 weight codes are dequantized inline,
``W = codes * quant_scale + quant_bias`` (scalar or per output channel), against a direct numpy convolution of the
dequantized weight. coremltools 9 serializes the op into an ML Program unchanged (its passes leave it alone)."""

from __future__ import annotations

import itertools
import math

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb

from conversions.runtime import load_model
from conversions.runtime.mil.executor import RuntimeOpError
from conversions.testing import assert_close, convert_program


def reference_conv(x, w, strides, pads, dilations, groups):
    """Direct definition: out[n, o, p] = sum over the group's input channels c and kernel offsets k of
    x_padded[n, c, p * stride + k * dilation] * w[o, c, k]; ``pads`` is [begin_0, end_0, begin_1, end_1, ...]."""
    dims = x.ndim - 2
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(pads[2 * i], pads[2 * i + 1]) for i in range(dims)])
    c_out, c_per_group, *kernel = w.shape
    out_sizes = [(x.shape[2 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(dims)]
    out = np.zeros((x.shape[0], c_out, *out_sizes))
    per_group_out = c_out // groups
    for o in range(c_out):
        g = o // per_group_out
        channels = x[:, g * c_per_group:(g + 1) * c_per_group]
        for pos in itertools.product(*[range(s) for s in out_sizes]):
            for k in itertools.product(*[range(s) for s in kernel]):
                idx = tuple(pos[i] * strides[i] + k[i] * dilations[i] for i in range(dims))
                out[(slice(None), o) + pos] += channels[(slice(None), slice(None)) + idx] @ w[(o, slice(None)) + k]
    return out


def same_pads(sizes, kernel, strides, dilations):
    """MIL ``same``: output ceil(size / stride); an odd total padding puts the extra element at the end."""
    pads = []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return pads


CASES = {
    # 2-D, 4-bit codes, one scale/offset per output channel, stride, dilation and an asymmetric custom pad.
    "2d-per-channel-nbits4": dict(
        x_shape=(1, 3, 7, 9), codes_shape=(4, 3, 3, 3), nbits=4,
        scale=np.array([0.1, 0.05, 0.08, 0.12], np.float32), offset=np.array([-0.75, -0.4, -0.6, -0.9], np.float32),
        conv=dict(strides=[2, 1], pad_type="custom", pad=[1, 0, 2, 1], dilations=[1, 2], groups=1)),
    # 1-D, 8-bit codes, one scale/offset for the whole weight, 2 groups, "same" padding with dilation.
    "1d-scalar-groups-same": dict(
        x_shape=(2, 4, 12), codes_shape=(6, 2, 3), nbits=8,
        scale=np.float32(0.01), offset=np.float32(-1.28),
        conv=dict(strides=[1], pad_type="same", dilations=[2], groups=2)),
}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
def test_conv_quantized_matches_dequantized_reference(case, precision):
    c = CASES[case]
    rng = np.random.default_rng(len(case))
    x = rng.standard_normal(c["x_shape"]).astype(np.float32)
    codes = rng.integers(0, 2 ** c["nbits"], size=c["codes_shape"]).astype(np.uint8)
    assert codes.max() >= 2 ** c["nbits"] - 4, "draw codes over the whole nbits range"

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(inp):
        return mb.conv_quantized(x=inp, weight=codes, quantization_type="linear", nbits=c["nbits"],
                                 quant_scale=c["scale"], quant_bias=c["offset"], **c["conv"])

    model = load_model(convert_program(prog, precision=precision), backend="mil", precision=precision)
    assert "conv_quantized" in {op.op_type for op in model.function.operations}
    (got,) = model.predict({"inp": x}).values()

    scale, offset = (np.asarray(v, np.float64) for v in (c["scale"], c["offset"]))
    shape = [-1] + [1] * (codes.ndim - 1)
    w = codes.astype(np.float64) * (scale.reshape(shape) if scale.ndim else scale) + (
        offset.reshape(shape) if offset.ndim else offset)
    conv = c["conv"]
    dims = x.ndim - 2
    pads = (conv["pad"] if conv["pad_type"] == "custom"
            else same_pads(x.shape[2:], codes.shape[2:], conv["strides"], conv["dilations"]))
    expected = reference_conv(x, w, conv["strides"], pads, conv["dilations"], conv["groups"])
    assert expected.ndim == dims + 2
    # fp16 program: input, dequantization parameters and output in fp16 (the default fp16 tolerance, see
    # tests/runtime/test_conv.py: terms of size <= 1, at most 27 of them).
    assert_close(got, expected.astype(np.float32), precision, case)


def _run(**kwargs):
    codes = kwargs.pop("codes", np.ones((2, 1, 3), np.uint8))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 5))], opset_version=ct.target.iOS17)
    def prog(inp):
        return mb.conv_quantized(x=inp, weight=codes, quant_scale=np.float32(0.5), quant_bias=np.float32(0.0),
                                 name="qconv", **kwargs)

    return load_model(convert_program(prog), backend="mil").predict({"inp": np.ones((1, 1, 5), np.float32)})


@pytest.mark.parametrize("kwargs, error, expected", [
    (dict(quantization_type="lut"), NotImplementedError, "input 'quantization_type' 'lut' is not supported"),
    (dict(quantization_type="linear", nbits=2, codes=np.array([[[0, 1, 5]], [[0, 0, 0]]], np.uint8)), RuntimeOpError,
     "input 'weight' holds codes in [0, 5], expected [0, 3] for nbits=2"),
    (dict(quantization_type="linear", bias=np.array([1, 2], np.uint8)), NotImplementedError,
     "input 'bias' is not supported"),
], ids=["lut", "code-above-nbits", "bias"])
def test_conv_quantized_refuses_what_is_undefined(kwargs, error, expected):
    with pytest.raises(error) as info:
        _run(**kwargs)
    assert "'qconv'" in str(info.value) and expected in str(info.value), str(info.value)
