"""Pooling kernels (``avg_pool``, ``max_pool``, ``l2_pool``) against torch."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb
from hypothesis import assume, given, strategies as st

from conversions.testing import assert_matches_torch, convert_module, op_types, run_program

PRECISIONS = ["fp32", "fp16"]


@st.composite
def pool_config(draw, dim: int):
    # The converter drops ceil_mode for 3-D pools (it pads instead, and refuses averages that would count
    # that padding), so 3-D pools here are floor-mode.
    ceil_mode = draw(st.booleans()) if dim < 3 else False
    kernel = [draw(st.integers(1, 3)) for _ in range(dim)]
    padding = [draw(st.integers(0, k // 2)) for k in kernel]  # torch: padding <= kernel / 2
    # Without padding, a stride longer than the kernel can make torch's ceil mode drop a last window that
    # MIL's output-size rule keeps (it only drops one when there is padding): the converted program then
    # has another shape than torch's output, a converter discrepancy, not a runtime one.
    stride = [draw(st.integers(1, k if (ceil_mode and p == 0) else 3)) for k, p in zip(kernel, padding)]
    sizes = [draw(st.integers(k, k + 7)) for k in kernel]
    return dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode), sizes


class Pools(torch.nn.Module):
    def __init__(self, max_config, avg_config, count_include_pad: bool, dim: int):
        super().__init__()
        self.max = {1: torch.nn.MaxPool1d, 2: torch.nn.MaxPool2d, 3: torch.nn.MaxPool3d}[dim](**max_config)
        self.avg = {1: torch.nn.AvgPool1d, 2: torch.nn.AvgPool2d, 3: torch.nn.AvgPool3d}[dim](
            **avg_config, count_include_pad=count_include_pad)

    def forward(self, x, y):
        return self.max(x), self.avg(y)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("dim", [1, 2, 3], ids=["1d", "2d", "3d"])
@given(data=st.data(), count_include_pad=st.booleans(), seed=st.integers(0, 2**16))
def test_torch_max_and_avg_pool(dim, precision, data, count_include_pad, seed):
    """Padding, strides, ceil_mode (1-D/2-D), padding counted in the average or not."""
    (max_config, max_sizes), (avg_config, avg_sizes) = (data.draw(pool_config(dim), label=n) for n in ("max", "avg"))
    torch.manual_seed(seed)
    module = Pools(max_config, avg_config, count_include_pad, dim)
    assert_matches_torch(module, [torch.randn(1, 2, *max_sizes), torch.randn(2, 3, *avg_sizes)], precision=precision)


def test_converted_programs_use_these_ops():
    module = Pools(dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                   dict(kernel_size=2, stride=2, padding=1, ceil_mode=True), False, 2)
    kinds = op_types(convert_module(module, [torch.randn(1, 1, 6, 7), torch.randn(1, 1, 5, 5)]), include_const=False)
    assert kinds == ["max_pool", "avg_pool"]


def tf_same_pads(size: int, kernel: int, stride: int, lower: bool) -> tuple[int, int]:
    """Core ML's SamePadding (NeuralNetwork.proto): output ceil(size/stride); the odd element at the end
    (``same``) or at the beginning (``same_lower``)."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + kernel - size)
    return (total - total // 2, total // 2) if lower else (total // 2, total - total // 2)


@pytest.mark.parametrize("pad_type", ["same", "same_lower", "custom"])
@given(dim=st.integers(1, 2), data=st.data(), seed=st.integers(0, 2**16))
def test_builder_pools_by_pad_type(pad_type, dim, data, seed):
    """max/avg (padding in the average or not)/l2 pools in one program; references from torch on an explicitly
    padded input: -inf padding for max, zeros for the sums, and a count of the real elements."""
    kernel = [data.draw(st.integers(1, 4), label="kernel") for _ in range(dim)]
    stride = [data.draw(st.integers(1, 3), label="stride") for _ in range(dim)]
    sizes = [data.draw(st.integers(1, 9), label="size") + k for k in kernel]
    custom = [data.draw(st.integers(0, k - 1), label="pad") for k in kernel for _ in range(2)]
    if pad_type == "custom":
        pads = custom
    else:
        pads = [p for i in range(dim) for p in tf_same_pads(sizes[i], kernel[i], stride[i], pad_type == "same_lower")]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal([2, 3] + sizes).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(a):
        common = dict(x=a, kernel_sizes=kernel, strides=stride, pad_type=pad_type,
                      pad=custom if pad_type == "custom" else None)
        return (mb.max_pool(**common), mb.avg_pool(**common, exclude_padding_from_average=False),
                mb.avg_pool(**common, exclude_padding_from_average=True), mb.l2_pool(**common))

    kinds, (mx, avg_in, avg_ex, l2) = run_program(prog, {"a": x})
    assert kinds == ["max_pool", "avg_pool", "avg_pool", "l2_pool"]
    torch_pad = [p for i in reversed(range(dim)) for p in pads[2 * i: 2 * i + 2]]
    t = torch.from_numpy(x).double()
    avg = {1: F.avg_pool1d, 2: F.avg_pool2d}[dim]
    maxp = {1: F.max_pool1d, 2: F.max_pool2d}[dim]

    def window_sum(v):
        return avg(F.pad(v, torch_pad), kernel, stride) * np.prod(kernel)

    ones = torch.ones_like(t)
    expected = {
        "max": maxp(F.pad(t, torch_pad, value=float("-inf")), kernel, stride),
        "avg, padding counted": window_sum(t) / np.prod(kernel),
        "avg, padding excluded": window_sum(t) / window_sum(ones),
        "l2": window_sum(t * t).sqrt(),
    }
    for (name, e), got in zip(expected.items(), (mx, avg_in, avg_ex, l2)):
        assert got.shape == tuple(e.shape), name
        np.testing.assert_allclose(got, e.numpy(), atol=1e-5, rtol=1e-4, err_msg=name)


@given(size=st.integers(1, 12), kernel=st.integers(1, 4), stride=st.integers(1, 4), pad=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_builder_ceil_mode_follows_mil_output_size(size, kernel, stride, pad, seed):
    """MIL's ceil-mode size: ceil((in + 2p - k) / s) + 1, less one when the last window starts past
    in + p and there is padding. Windows hanging past the padded input average only what they cover."""
    # pad 0 with stride > kernel can leave a last window past the input (see pool_config): undefined.
    assume(pad <= kernel // 2 and size + 2 * pad >= kernel and (pad > 0 or stride <= kernel))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2, size)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(a):
        common = dict(x=a, kernel_sizes=[kernel], strides=[stride], pad_type="custom", pad=[pad, pad], ceil_mode=True)
        return mb.max_pool(**common), mb.avg_pool(**common), mb.l2_pool(**common)

    _, (mx, avg, l2) = run_program(prog, {"a": x})
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if (out - 1) * stride >= size + pad and pad > 0:
        out -= 1
    assert mx.shape == avg.shape == l2.shape == (1, 2, out)
    padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pad, pad)])
    for i in range(out):
        start = i * stride
        window = padded[..., start:min(start + kernel, size + 2 * pad)]  # padded zeros count, overhang does not
        real = x[..., max(start - pad, 0):min(start - pad + kernel, size)]
        if real.shape[-1]:
            np.testing.assert_allclose(mx[..., i], real.max(-1), rtol=1e-6)
        np.testing.assert_allclose(avg[..., i], window.mean(-1), atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(l2[..., i], np.sqrt((window ** 2).sum(-1)), atol=1e-6, rtol=1e-5)
