"""Linear algebra kernels (``linear``, ``matmul``, ``einsum``) against torch and numpy."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types as mil_types
from hypothesis import given, strategies as st

from conversions.testing import TorchFunction, assert_matches_torch, convert_module, op_types, run_program

PRECISIONS = ["fp32", "fp16"]
# The fp16 programs keep activations and weights in fp16; products of K ~ 8-16 terms of size ~1 carry
# ~K * 2**-11 relative error, so the default fp16 tolerance (2e-2) is loosened only where K is larger.


dims = st.integers(1, 6)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(lead=st.lists(dims, min_size=0, max_size=3), d_in=st.integers(1, 12), d_out=st.integers(1, 12),
       seed=st.integers(0, 2**16))
def test_nn_linear_any_rank(precision, lead, d_in, d_out, seed):
    torch.manual_seed(seed)
    module = torch.nn.Linear(d_in, d_out)
    x = torch.randn(*lead, d_in)
    assert_matches_torch(module, [x], precision=precision)


# Batch shapes of x and y that broadcast against each other (NumPy rules), x possibly a vector.
@st.composite
def matmul_shapes(draw):
    m, k, n = draw(dims), draw(dims), draw(dims)
    batch = draw(st.lists(dims, min_size=0, max_size=2))
    x_batch = [b if draw(st.booleans()) else 1 for b in batch]
    y_batch = [b if draw(st.booleans()) else 1 for b in batch]
    x_batch = x_batch[draw(st.integers(0, len(x_batch))):]  # x may have fewer batch dims
    if draw(st.integers(0, 4)) == 0:
        # A vector on the left, with a matrix: MIL's type inference rejects a vector on the right and
        # drops the wrong dim when y has batch dims, so coremltools cannot express those cases.
        return [k], [k, n]
    return x_batch + [m, k], y_batch + [k, n]


@pytest.mark.parametrize("precision", PRECISIONS)
@given(shapes=matmul_shapes(), seed=st.integers(0, 2**16))
def test_matmul_broadcasts_batch_dims(precision, shapes, seed):
    torch.manual_seed(seed)
    x_shape, y_shape = shapes
    assert_matches_torch(TorchFunction(torch.matmul), [torch.randn(*x_shape), torch.randn(*y_shape)], precision=precision)


@pytest.mark.parametrize("equation, transposes", [
    ("bnqd,bnkd->bnqk", (False, True)),   # attention scores: converted to matmul(transpose_y=True)
    ("bhcq,bhck->bhqk", (True, False)),   # converted to matmul(transpose_x=True)
])
@given(b=dims, h=dims, q=dims, k=dims, d=dims, seed=st.integers(0, 2**16))
def test_einsum_lowered_to_transposed_matmul(equation, transposes, b, h, q, k, d, seed):
    torch.manual_seed(seed)
    a_shape, b_shape = ([b, h, q, d], [b, h, k, d]) if transposes[1] else ([b, h, d, q], [b, h, d, k])
    module, inputs = TorchFunction(lambda x, y: torch.einsum(equation, x, y)), [torch.randn(*a_shape), torch.randn(*b_shape)]
    assert op_types(convert_module(module, inputs), include_const=False) == ["matmul"]
    assert_matches_torch(module, inputs, precision="fp32")


@given(c=dims, h=dims, w=dims, u=dims, n=st.integers(1, 3), broadcast=st.sampled_from(["none", "n", "h"]),
       reverse=st.booleans(), seed=st.integers(0, 2**16))
def test_mil_einsum_layouts(c, h, w, u, n, broadcast, reverse, seed):
    """``nchw,nwhu->nchu`` (also written with the operands swapped) and its rank-3 form stay MIL einsum ops;
    the n and h dims broadcast from size 1."""
    torch.manual_seed(seed)
    x_shape, y_shape = [n, c, h, w], [n, w, h, u]
    if broadcast == "n":
        x_shape[0] = 1
    elif broadcast == "h":
        y_shape[2] = 1
    x, y = torch.randn(*x_shape), torch.randn(*y_shape)
    if reverse:
        module, inputs = TorchFunction(lambda b_, a_: torch.einsum("nwhu,nchw->nchu", b_, a_)), [y, x]
    else:
        module, inputs = TorchFunction(lambda a_, b_: torch.einsum("nchw,nwhu->nchu", a_, b_)), [x, y]
    assert "einsum" in op_types(convert_module(module, inputs))
    assert_matches_torch(module, inputs, precision="fp32")
    rank3 = TorchFunction(lambda a_, b_: torch.einsum("chw,whu->chu", a_, b_))
    assert_matches_torch(rank3, [x[0], y[0]], precision="fp16")


@pytest.mark.parametrize("precision", PRECISIONS)
@given(transpose_x=st.booleans(), transpose_y=st.booleans(), m=dims, k=dims, n=dims, batch=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_builder_matmul_transposes(precision, transpose_x, transpose_y, m, k, n, batch, seed):
    rng = np.random.default_rng(seed)
    x_shape = [batch, k, m] if transpose_x else [batch, m, k]
    y_shape = [k, n] if not transpose_y else [n, k]
    x, y = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(y_shape).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=tuple(x_shape)), mb.TensorSpec(shape=tuple(y_shape))],
                opset_version=ct.target.iOS17)
    def prog(a, b):
        return mb.matmul(x=a, y=b, transpose_x=transpose_x, transpose_y=transpose_y)

    types, (got,) = run_program(prog, {"a": x, "b": y}, precision)
    assert "matmul" in types
    expected = np.matmul(np.swapaxes(x, -1, -2) if transpose_x else x, y.T if transpose_y else y)
    tol = 1e-5 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(got, expected, atol=tol, rtol=tol)


def test_builder_int32_matmul_and_linear_are_exact():
    """int32 operands stay integers: products beyond 2**24 would be rounded in fp32."""
    x = np.array([[4097, -3], [5, 4099]], dtype=np.int32)
    w = np.array([[4093, 7], [-11, 4091]], dtype=np.int32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 2), dtype=mil_types.int32)],
                opset_version=ct.target.iOS17)
    def prog(a):
        return mb.add(x=mb.matmul(x=a, y=w), y=mb.linear(x=a, weight=w, bias=np.array([1, 2], dtype=np.int32)))

    types, (got,) = run_program(prog, {"a": x})
    assert {"matmul", "linear"} <= set(types)
    expected = x.astype(np.int64) @ w + (x.astype(np.int64) @ w.T + [1, 2])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


def test_einsum_rejects_other_equations():
    from conversions.runtime.mil.ops.linear import einsum

    with pytest.raises(NotImplementedError, match="ab,bc->ac"):
        einsum([torch.ones(2, 2), torch.ones(2, 2)], "ab,bc->ac")
