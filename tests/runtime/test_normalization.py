"""Normalization kernels (``batch_norm``, ``instance_norm``, ``layer_norm``, ``l2_norm``,
``local_response_norm``) against torch and numpy."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from hypothesis import given, strategies as st

from conversions.testing import assert_matches_torch, convert_module, op_types, run_program

PRECISIONS = ["fp32", "fp16"]


class Norms(torch.nn.Module):
    """BatchNorm (inference), LayerNorm over the last one or two dims, InstanceNorm with/without affine."""

    def __init__(self, channels: int, length: int, affine: bool):
        super().__init__()
        self.bn1 = torch.nn.BatchNorm1d(channels)
        self.bn2 = torch.nn.BatchNorm2d(channels, affine=affine)
        self.ln1 = torch.nn.LayerNorm(length, elementwise_affine=affine)
        self.ln2 = torch.nn.LayerNorm([channels, length], eps=1e-3)
        self.inorm = torch.nn.InstanceNorm1d(channels, affine=affine)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.25, 4)
        for p in self.parameters():  # non-trivial affine parameters
            torch.nn.init.uniform_(p, -1.5, 1.5)

    def forward(self, x, image):
        return self.bn1(x), self.bn2(image), self.ln1(x), self.ln2(x), self.inorm(x)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(batch=st.integers(1, 2), channels=st.integers(1, 8), length=st.integers(2, 16), affine=st.booleans(),
       shift=st.floats(-3, 3), seed=st.integers(0, 2**16))
def test_torch_norms(precision, batch, channels, length, affine, shift, seed):
    torch.manual_seed(seed)
    module = Norms(channels, length, affine).eval()
    x = torch.randn(batch, channels, length) * 2 + shift
    image = torch.randn(batch, channels, 3, length)
    # fp16: x - mean loses ~|shift| * 2**-11 before the division by std (~2), well inside 2e-2 for |shift| <= 3
    assert_matches_torch(module, [x, image], precision=precision)


class AdaIN1d(torch.nn.Module):
    """Kokoro's AdaIN: InstanceNorm1d without affine, then ``(1 + gamma) * x + beta`` from a style vector."""

    def __init__(self, style_dim: int, channels: int):
        super().__init__()
        self.norm = torch.nn.InstanceNorm1d(channels, affine=False)
        self.gamma = torch.nn.Linear(style_dim, channels)
        self.beta = torch.nn.Linear(style_dim, channels)

    def forward(self, x, style):  # x [B, C, T], style [B, 1, S]
        normed = self.norm(x).transpose(1, 2)  # [B, T, C]
        return ((1 + self.gamma(style)) * normed + self.beta(style)).transpose(1, 2)


@pytest.mark.parametrize("precision", PRECISIONS)
# One channel is left out: coremltools' fuse_linear_bias pass crashes on ``1 + linear(...)`` with D_out == 1.
@given(channels=st.integers(2, 8), frames=st.integers(2, 20), style_dim=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_kokoro_adain(precision, channels, frames, style_dim, seed):
    torch.manual_seed(seed)
    module = AdaIN1d(style_dim, channels)
    inputs = [torch.randn(1, channels, frames), torch.randn(1, 1, style_dim)]
    assert_matches_torch(module, inputs, precision=precision)


def test_converted_programs_use_these_ops():
    torch.manual_seed(0)
    norms = convert_module(Norms(2, 3, True).eval(), [torch.randn(1, 2, 3), torch.randn(1, 2, 3, 3)])
    kinds = op_types(norms, include_const=False)
    assert sorted(kinds) == ["batch_norm", "batch_norm", "instance_norm", "layer_norm", "layer_norm"]
    assert "instance_norm" in op_types(convert_module(AdaIN1d(2, 3), [torch.randn(1, 3, 4), torch.randn(1, 1, 2)]))


def numpy_layer_norm(x, axes, gamma, beta, eps):
    mean = x.mean(axis=tuple(axes), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=tuple(axes), keepdims=True)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    return (x - mean) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), data=st.data(),
       eps=st.sampled_from([1e-5, 1e-2, 0.5]), seed=st.integers(0, 2**16))
def test_builder_layer_norm_any_axes(precision, shape, data, eps, seed):
    """Axes need not be trailing nor sorted (negative too); gamma/beta follow the axes in increasing order."""
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True), label="axes")
    written = [a - rank if data.draw(st.booleans(), label=f"negative {a}") else a for a in axes]
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    norm_shape = [shape[i] for i in sorted(axes)]
    gamma = rng.uniform(-2, 2, norm_shape).astype(np.float32)
    beta = rng.uniform(-2, 2, norm_shape).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(a):
        return mb.layer_norm(x=a, axes=written, gamma=gamma, beta=beta, epsilon=np.float32(eps))

    kinds, (got,) = run_program(prog, {"a": x}, precision)
    assert "layer_norm" in kinds
    expected = numpy_layer_norm(x.astype(np.float64), sorted(axes), gamma, beta, eps)
    # fp16: normalized values up to ~|gamma| * sqrt(N) ~ 10, relative 2**-11 per rounding: 5e-2 absolute
    tol = dict(atol=1e-5, rtol=1e-4) if precision == "fp32" else dict(atol=5e-2, rtol=2e-2)
    np.testing.assert_allclose(got, expected, **tol)


@given(batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       spatial=st.lists(st.integers(1, 5), min_size=3, max_size=3), eps=st.sampled_from([1e-6, 1e-2, 5.7]),
       size=st.integers(1, 5), alpha=st.floats(1e-4, 0.5), beta=st.floats(0.25, 1.0), k=st.floats(0.5, 2.0),
       seed=st.integers(0, 2**16))
def test_builder_l2_norm_and_local_response_norm(batch, spatial, eps, size, alpha, beta, k, seed):
    """l2_norm: the last three axes, leading ones are batch. local_response_norm: across axis -3, so a rank-3
    input is one [C, H, W] image (torch's LocalResponseNorm on it with a batch axis added)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(batch + spatial).astype(np.float32) * 2
    image = x.reshape([-1] + spatial)[0]  # rank 3

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape), mb.TensorSpec(shape=image.shape)],
                opset_version=ct.target.iOS17)
    def prog(a, b):
        lrn_input = a if a.rank == 4 else b
        return (mb.l2_norm(x=a, epsilon=np.float32(eps)),
                mb.local_response_norm(x=lrn_input, size=size, alpha=np.float32(alpha), beta=np.float32(beta),
                                       k=np.float32(k)))

    kinds, (l2, lrn) = run_program(prog, {"a": x, "b": image})
    assert {"l2_norm", "local_response_norm"} <= set(kinds)
    x64 = x.astype(np.float64)
    squares = (x64 ** 2).sum(axis=(-3, -2, -1), keepdims=True)
    np.testing.assert_allclose(l2, x64 / np.sqrt(squares + eps), atol=1e-6, rtol=1e-5)
    lrn_input = torch.from_numpy(x if x.ndim == 4 else image[None]).double()
    expected = torch.nn.functional.local_response_norm(lrn_input, size, alpha=alpha, beta=beta, k=k)
    np.testing.assert_allclose(lrn, expected.reshape(lrn.shape).numpy(), atol=1e-5, rtol=1e-4)


def test_local_response_norm_matches_core_ml_results():
    """Core ML's own outputs, from coremltools' op tests: on a rank-3 input each element is its own channel
    window (axis -3 has size 1), and the divisor is ``size``."""
    x = np.array([[[1.0, -7.0], [5.0, -6.0], [-3.0, -5.0]]], dtype=np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(a):
        return mb.local_response_norm(x=a, size=2), mb.l2_norm(x=a, epsilon=np.float32(1e-10))

    _, (lrn, l2) = run_program(prog, {"a": x})
    np.testing.assert_allclose(
        lrn.ravel(), [0.99996257, -6.98716545, 4.99531746, -5.99191284, -2.99898791, -4.99531746], rtol=1e-6)
    np.testing.assert_allclose(l2.ravel(), [0.08304548, -0.58131838, 0.41522741, -0.4982729, -0.24913645, -0.41522741],
                               rtol=1e-6)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(rank=st.integers(3, 5), channels=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_builder_batch_norm_rank_3_to_5_without_affine(precision, rank, channels, seed):
    rng = np.random.default_rng(seed)
    shape = [2, channels] + list(rng.integers(1, 4, rank - 2))
    x = rng.standard_normal(shape).astype(np.float32)
    mean = rng.uniform(-1, 1, channels).astype(np.float32)
    var = rng.uniform(0.1, 3, channels).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(a):
        return mb.batch_norm(x=a, mean=mean, variance=var, epsilon=np.float32(1e-3))

    kinds, (got,) = run_program(prog, {"a": x}, precision)
    assert "batch_norm" in kinds
    bshape = [1, channels] + [1] * (rank - 2)
    expected = (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-3)
    tol = dict(atol=1e-5, rtol=1e-4) if precision == "fp32" else dict(atol=2e-2, rtol=2e-2)
    np.testing.assert_allclose(got, expected, **tol)
