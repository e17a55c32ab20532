"""Convolution kernels (``conv``, ``conv_transpose``) against torch and a direct numpy definition."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb
from hypothesis import given, strategies as st
from torch.nn.utils.parametrizations import weight_norm

from conversions.testing import TorchFunction, assert_matches_torch, convert_module, op_types, run_program

PRECISIONS = ["fp32", "fp16"]
# fp16 programs: weights and activations rounded to fp16 (relative 2**-11 each); a conv output sums
# C_in/groups * K products, so with <= ~50 terms of size ~1 the absolute error stays well under 2e-2 * |y|
# plus 2e-2: the default fp16 tolerance holds.


@st.composite
def conv_config(draw, dim: int):
    groups = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    c_in = groups * (1 if depthwise else draw(st.integers(1, 3)))
    c_out = groups * draw(st.integers(1, 2))
    kernel = draw(st.integers(1, 3 if dim == 3 else 5))
    stride = draw(st.integers(1, 2))
    dilation = draw(st.integers(1, 2))
    span = (kernel - 1) * dilation + 1
    if stride == 1 and draw(st.booleans()):
        padding = "same"
    else:
        padding = draw(st.integers(0, span // 2))
    max_size = 6 if dim == 3 else 12
    sizes = [draw(st.integers(span, max_size + span)) for _ in range(dim)]
    return dict(in_channels=c_in, out_channels=c_out, kernel_size=kernel, stride=stride, dilation=dilation,
                padding=padding, groups=groups, bias=draw(st.booleans())), [1, c_in] + sizes


class ConvZoo(torch.nn.Module):
    """A 1-D, a 2-D and a 3-D convolution, and a 1-D one whose weight is a model input."""

    def __init__(self, configs, weight_padding: int):
        super().__init__()
        self.convs = torch.nn.ModuleList(
            cls(**kwargs) for cls, kwargs in zip((torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d), configs))
        self.weight_padding = weight_padding

    def forward(self, x1, x2, x3, y, w):
        return (*(conv(x) for conv, x in zip(self.convs, (x1, x2, x3))),
                F.conv1d(y, w, padding=self.weight_padding))


@pytest.mark.parametrize("precision", PRECISIONS)
@given(data=st.data(), weight_shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
       seed=st.integers(0, 2**16))
def test_torch_conv(precision, data, weight_shape, seed):
    """Groups (depthwise included), strides, dilations, zero/int/"same" padding, bias or not; 1-D to 3-D;
    and a weight fed at runtime."""
    drawn = [data.draw(conv_config(dim), label=f"conv{dim}d") for dim in (1, 2, 3)]
    torch.manual_seed(seed)
    c_out, c_in, k = weight_shape
    module = ConvZoo([kwargs for kwargs, _ in drawn], k // 2)
    inputs = [torch.randn(*shape) for _, shape in drawn] + [torch.randn(2, c_in, 9), torch.randn(c_out, c_in, k)]
    assert_matches_torch(module, inputs, precision=precision)


class ConformerConvModule(torch.nn.Module):
    """NeMo FastConformer's convolution module, with ReLU for the gates (Swish/GLU are other op families)."""

    def __init__(self, d_model: int, kernel_size: int = 9):
        super().__init__()
        self.pointwise1 = torch.nn.Conv1d(d_model, d_model, 1)
        self.depthwise = torch.nn.Conv1d(d_model, d_model, kernel_size, padding=(kernel_size - 1) // 2,
                                         groups=d_model)
        self.norm = torch.nn.BatchNorm1d(d_model)
        self.pointwise2 = torch.nn.Conv1d(d_model, d_model, 1)
        self.norm.running_mean.uniform_(-0.5, 0.5)
        self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x):  # [B, T, D]
        x = self.pointwise1(x.transpose(1, 2))
        x = torch.relu(self.norm(self.depthwise(x)))
        return self.pointwise2(x).transpose(1, 2)


class Subsampling(torch.nn.Module):
    """FastConformer's conv subsampling: stride-2 3x3 convs over (time, mel), the second one depthwise."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels)
        self.conv3 = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x):  # [B, 1, T, F]
        x = torch.relu(self.conv1(x))
        return torch.relu(self.conv3(self.conv2(x)))


class FastConformerConvs(torch.nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.subsampling = Subsampling(4)
        self.conv_module = ConformerConvModule(d_model)

    def forward(self, mel, features):
        return self.subsampling(mel), self.conv_module(features)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(frames=st.integers(3, 24), mels=st.integers(3, 20), d_model=st.sampled_from([4, 8, 16]),
       seed=st.integers(0, 2**16))
def test_fastconformer_convolutions(precision, frames, mels, d_model, seed):
    torch.manual_seed(seed)
    module = FastConformerConvs(d_model)
    assert_matches_torch(module, [torch.randn(1, 1, frames, mels), torch.randn(1, frames, d_model)],
                         precision=precision)


class KokoroUpsample(torch.nn.Module):
    """Kokoro's decoder pieces: a weight-normed conv, then UpSample1d's depthwise
    ConvTranspose1d(k=3, stride=2, padding=1, output_padding=1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = weight_norm(torch.nn.Conv1d(channels, channels, 3, padding=1))
        self.up = torch.nn.ConvTranspose1d(channels, channels, 3, stride=2, padding=1, output_padding=1,
                                           groups=channels)

    def forward(self, x):
        return self.up(self.conv(x))


@pytest.mark.parametrize("precision", PRECISIONS)
@given(channels=st.integers(1, 8), frames=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_kokoro_weight_norm_and_upsampling(precision, channels, frames, seed):
    torch.manual_seed(seed)
    assert_matches_torch(KokoroUpsample(channels), [torch.randn(1, channels, frames)], precision=precision)


def test_converted_programs_use_these_ops():
    torch.manual_seed(0)
    # weight_norm's g * v / |v| is folded into a constant weight: the program is one conv.
    assert "conv" in op_types(convert_module(KokoroUpsample(2).conv, [torch.randn(1, 2, 5)]))
    kinds = op_types(convert_module(KokoroUpsample(2), [torch.randn(1, 2, 5)]), include_const=False)
    assert kinds[:2] == ["conv", "conv_transpose"]
    weight_input = TorchFunction(lambda x, w: F.conv1d(x, w))
    weight_model = convert_module(weight_input, [torch.randn(1, 2, 5), torch.randn(3, 2, 2)])
    assert op_types(weight_model, include_const=False) == ["conv"]
    # output_padding in 2-D: conv_transpose with output_shape, then crop
    t2 = torch.nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1)
    assert op_types(convert_module(t2, [torch.randn(1, 2, 4, 4)]), include_const=False) == ["conv_transpose", "crop"]


def tf_same_pads(size: int, kernel: int, stride: int, dilation: int, lower: bool) -> tuple[int, int]:
    """Core ML's SamePadding (NeuralNetwork.proto): output ceil(size/stride), the odd element at the end
    (BOTTOM_RIGHT_HEAVY, ``same``) or at the beginning (TOP_LEFT_HEAVY, ``same_lower``)."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + (kernel - 1) * dilation + 1 - size)
    small = total // 2
    return (total - small, small) if lower else (small, total - small)


PAD_TYPES = ("same", "same_lower", "custom", "valid")


@given(h=st.integers(3, 10), w=st.integers(3, 10), kh=st.integers(1, 4), kw=st.integers(1, 4),
       stride=st.integers(1, 3), dilation=st.integers(1, 2), pads=st.lists(st.integers(0, 3), min_size=4, max_size=4),
       seed=st.integers(0, 2**16))
def test_builder_conv_pad_types(h, w, kh, kw, stride, dilation, pads, seed):
    """One program, one conv per pad_type, against torch on an explicitly padded input."""
    rng = np.random.default_rng(seed)
    h, w = h + (kh - 1) * dilation, w + (kw - 1) * dilation  # room for a valid conv
    x = rng.standard_normal((1, 2, h, w)).astype(np.float32)
    weight = rng.standard_normal((3, 2, kh, kw)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(a):
        return tuple(mb.conv(x=a, weight=weight, strides=[stride, stride], pad_type=pad_type,
                             pad=pads if pad_type == "custom" else None, dilations=[dilation, dilation])
                     for pad_type in PAD_TYPES)

    kinds, outputs = run_program(prog, {"a": x})
    assert kinds == ["conv"] * 4
    for pad_type, got in zip(PAD_TYPES, outputs, strict=True):
        if pad_type in ("same", "same_lower"):
            top, bottom = tf_same_pads(h, kh, stride, dilation, pad_type == "same_lower")
            left, right = tf_same_pads(w, kw, stride, dilation, pad_type == "same_lower")
        elif pad_type == "custom":
            top, bottom, left, right = pads
        else:
            top = bottom = left = right = 0
        padded = F.pad(torch.from_numpy(x), (left, right, top, bottom))
        expected = F.conv2d(padded, torch.from_numpy(weight), stride=stride, dilation=dilation).numpy()
        assert got.shape == expected.shape, pad_type
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4, err_msg=pad_type)


@st.composite
def conv_transpose_config(draw, dim: int):
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    padding = draw(st.integers(0, ((kernel - 1) * dilation) // 2))
    # torch needs output_padding < max(stride, dilation); the converter rejects it without padding, and in
    # 1-D it becomes a slice_by_index (another op family), so output padding is exercised in 2-D only.
    output_padding = draw(st.integers(0, max(stride, dilation) - 1)) if (dim == 2 and padding > 0) else 0
    sizes = [draw(st.integers(1, 8)) for _ in range(dim)]
    return dict(in_channels=c_in, out_channels=c_out, kernel_size=kernel, stride=stride, dilation=dilation,
                padding=padding, output_padding=output_padding, groups=groups), [1, c_in] + sizes


class ConvTransposeZoo(torch.nn.Module):
    def __init__(self, config1, config2):
        super().__init__()
        self.t1 = torch.nn.ConvTranspose1d(**config1)
        self.t2 = torch.nn.ConvTranspose2d(**config2)

    def forward(self, x1, x2):
        return self.t1(x1), self.t2(x2)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_torch_conv_transpose(precision, data, seed):
    (config1, shape1), (config2, shape2) = (data.draw(conv_transpose_config(d), label=f"{d}d") for d in (1, 2))
    torch.manual_seed(seed)
    module = ConvTransposeZoo(config1, config2)
    assert_matches_torch(module, [torch.randn(*shape1), torch.randn(*shape2)], precision=precision)


def conv_transpose_reference(x, weight, stride, dilation, groups, begin, length):
    """1-D transposed convolution by its definition (every input scatters ``x[i] * w[k]`` to output
    position ``i*stride + k*dilation``), then the window ``[begin, begin + length)`` of that full output
    (zeros past its end)."""
    n, c_in, size = x.shape
    _, c_out_g, k = weight.shape
    full = np.zeros((n, c_out_g * groups, (size - 1) * stride + (k - 1) * dilation + 1))
    per_group = c_in // groups
    for ci in range(c_in):
        g = ci // per_group
        for co in range(c_out_g):
            for i in range(size):
                for kk in range(k):
                    full[:, g * c_out_g + co, i * stride + kk * dilation] += x[:, ci, i] * weight[ci, co, kk]
    out = np.zeros((n, full.shape[1], length))
    kept = full[:, :, begin:begin + length]
    out[:, :, :kept.shape[2]] = kept
    return out


@given(size=st.integers(1, 8), k=st.integers(1, 5), stride=st.integers(1, 3), dilation=st.integers(1, 2),
       groups=st.integers(1, 2), pads=st.lists(st.integers(0, 2), min_size=2, max_size=2), extra=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_builder_conv_transpose(size, k, stride, dilation, groups, pads, extra, seed):
    """One program with a conv_transpose per pad mode, against the definition."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2 * groups, size)).astype(np.float32)
    weight = rng.standard_normal((2 * groups, 2, k)).astype(np.float32)
    full = (size - 1) * stride + (k - 1) * dilation + 1
    if pads[0] + pads[1] >= full:
        pads = [0, 0]
    cases = {  # mode: (conv_transpose arguments, expected window of the full output: begin, length)
        "valid": (dict(pad_type="valid"), (0, full)),
        # TensorFlow's conv2d_transpose SAME: D_in * stride outputs, the smaller half cropped at the start.
        "same": (dict(pad_type="same"), (max(full - size * stride, 0) // 2, size * stride)),
        "custom": (dict(pad_type="custom", pad=pads), (pads[0], full - pads[0] - pads[1])),
        # output_shape as the torch converter writes it for output_padding: may run past the full output.
        "custom+output_shape": (
            dict(pad_type="custom", pad=pads, output_shape=[1, 2 * groups, full - pads[0] - pads[1] + extra]),
            (pads[0], full - pads[0] - pads[1] + extra)),
    }

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(a):
        return tuple(mb.conv_transpose(x=a, weight=weight, strides=[stride], dilations=[dilation], groups=groups,
                                       **kwargs) for kwargs, _ in cases.values())

    kinds, outputs = run_program(prog, {"a": x})
    assert kinds == ["conv_transpose"] * 4
    for (mode, (_, (begin, length))), got in zip(cases.items(), outputs, strict=True):
        expected = conv_transpose_reference(x.astype(np.float64), weight.astype(np.float64), stride, dilation,
                                            groups, begin, length)
        assert got.shape == expected.shape, mode
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4, err_msg=mode)
