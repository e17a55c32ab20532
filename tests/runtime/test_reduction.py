"""Reduction kernels (``ops/reduction.py``) against torch and independent numpy references.

Inputs are drawn fp16-representable, so the fp16 programs' input cast is exact and the only fp16 loss is the
rounding of each reduced output (reductions accumulate in fp32 here). Ops torch never emits (``reduce_prod``,
``reduce_l1_norm``, ``reduce_sum_square``, ``reduce_log_sum``, ``output_dtype``, empty ``axes``, int32 inputs of
float reductions) run in MIL builder programs. The torch frontend emits the same reductions for iOS17 and iOS18.

Kept out: ties in ``reduce_argmax``/``reduce_argmin`` (the spec does not say which index wins; inputs are drawn
distinct), and products that overflow.
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

from conversions.runtime.mil.ops import REGISTRY
from conversions.testing import (FP32_TOLERANCE, assert_outputs_close, convert_module, op_types, run_on_runtime,
                                 torch_outputs)

ONE_OP_FP16 = {"atol": 1e-5, "rtol": 1e-3}  # fp16 program, exact inputs, fp32 accumulation: the output rounding only


def distinct_fp16(shape, lo, hi):
    """float32 arrays of distinct fp16-representable values in ``[lo, hi]``."""
    return hnp.arrays(np.float16, shape, elements=st.floats(lo, hi, width=16), unique=True).map(
        lambda a: a.astype(np.float32))


def axes_of(rank):
    """A non-empty sorted set of axes, each written positive or negative at random."""
    return st.sets(st.integers(0, rank - 1), min_size=1).flatmap(
        lambda axes: st.tuples(*[st.sampled_from([a, a - rank]) for a in sorted(axes)]))


# ---- torch modules ------------------------------------------------------------------------------------------
class Reductions(torch.nn.Module):
    NAMES = ("sum", "mean", "amax", "amin", "l2_norm", "logsumexp", "sum_all", "max_values", "max_indices",
             "argmax", "argmin")

    def __init__(self, axes: tuple[int, ...], axis: int, keep: bool):
        super().__init__()
        self.axes, self.axis, self.keep = list(axes), axis, keep

    def forward(self, x):
        d, k = self.axes, self.keep
        values, indices = x.max(dim=self.axis, keepdim=k)
        return (x.sum(d, keepdim=k), x.mean(d, keepdim=k), x.amax(d, keepdim=k), x.amin(d, keepdim=k),
                torch.linalg.vector_norm(x, dim=d, keepdim=k), torch.logsumexp(x, d, keepdim=k), x.sum(),
                values, indices, torch.argmax(x, self.axis, keepdim=k), torch.argmin(x, self.axis, keepdim=k))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@given(data=st.data())
def test_reductions_match_torch(precision, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), label="shape")
    module = Reductions(axes=data.draw(axes_of(len(shape)), label="axes"),
                        axis=data.draw(st.integers(-len(shape), len(shape) - 1), label="arg axis"),
                        keep=data.draw(st.booleans(), label="keep_dims"))
    inputs = [torch.from_numpy(data.draw(distinct_fp16(shape, -4.0, 4.0), label="x"))]
    mlmodel = convert_module(module, inputs, precision=precision)
    expect = {"reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_l2_norm", "reduce_log_sum_exp",
              "reduce_argmax", "reduce_argmin"}
    assert expect <= set(op_types(mlmodel)), f"the converted program lacks {expect - set(op_types(mlmodel))}"
    got = run_on_runtime(mlmodel, inputs, precision=precision)
    assert_outputs_close(got, torch_outputs(module, inputs), Reductions.NAMES,
                         FP32_TOLERANCE if precision == "fp32" else ONE_OP_FP16)


# ---- builder programs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("target", ["iOS15", "iOS17"])
@given(data=st.data())
def test_builder_reductions(target, precision, data):
    """Every reduce_* with drawn axes, axes omitted (all) and empty (none), int32 inputs, argmax's output_dtype."""
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), label="shape")  # <= 64 elements
    x = data.draw(distinct_fp16(shape, 0.5, 1.125), label="x")  # positive (log_sum), products stay in fp16 range
    n = data.draw(hnp.arrays(np.int32, shape, elements=st.integers(-20, 20)), label="n")
    axes = np.array(data.draw(axes_of(len(shape)), label="axes"), np.int32)
    keep = data.draw(st.booleans(), label="keep_dims")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="arg axis")
    arg_dtype = {} if target == "iOS15" else {"output_dtype": "uint16"}  # output_dtype is new in iOS17

    def build(x0, x1):
        r = {"axes": axes, "keep_dims": keep}
        signed = mb.sub(x=x0, y=np.float32(0.8125))  # exact in fp16: x and 13/16 are multiples of 2**-11
        return (mb.reduce_prod(x=x0, **r), mb.reduce_l1_norm(x=signed, **r), mb.reduce_sum_square(x=signed, **r),
                mb.reduce_log_sum(x=x0, **r), mb.reduce_log_sum_exp(x=x0, **r), mb.reduce_mean(x=x0),
                mb.reduce_sum(x=x0, axes=np.zeros(0, np.int32)), mb.reduce_max(x=x0, **r), mb.reduce_min(x=x0, **r),
                mb.reduce_l2_norm(x=signed, **r),
                mb.reduce_argmax(x=x0, axis=axis, keep_dims=keep, **arg_dtype), mb.reduce_argmin(x=x0),
                mb.reduce_sum(x=x1, **r), mb.reduce_max(x=x1, **r), mb.reduce_mean(x=x1, **r))

    opset = getattr(ct.target, target)
    specs = [mb.TensorSpec(shape=shape, dtype=types.fp32), mb.TensorSpec(shape=shape, dtype=types.int32)]
    prog = mb.program(input_specs=specs, opset_version=opset)(build)
    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=opset,
                         compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    names = ["prod", "l1_norm", "sum_square", "log_sum", "log_sum_exp", "mean_all_axes", "sum_no_axes", "max",
             "min", "l2_norm", "argmax", "argmin_default_axis", "int_sum", "int_max", "int_mean"]
    expect = {"reduce_prod", "reduce_l1_norm", "reduce_sum_square", "reduce_log_sum", "reduce_log_sum_exp",
              "reduce_mean", "reduce_sum", "reduce_max", "reduce_min", "reduce_l2_norm", "reduce_argmax",
              "reduce_argmin"}
    assert expect <= set(op_types(mlmodel)), f"the converted program lacks {expect - set(op_types(mlmodel))}"
    got = run_on_runtime(mlmodel, [torch.from_numpy(x), torch.from_numpy(n)], precision=precision)

    x64, n64, ax = x.astype(np.float64), n.astype(np.int64), tuple(int(a) for a in axes)
    r = {"axis": ax, "keepdims": keep}
    signed = x64 - 0.8125
    expected = [np.prod(x64, **r), np.abs(signed).sum(**r), (signed ** 2).sum(**r), np.log(x64.sum(**r)),
                np.log(np.exp(x64).sum(**r)), np.asarray(x64.mean()), x64, x64.max(**r), x64.min(**r),
                np.sqrt((signed ** 2).sum(**r)), np.argmax(x64, axis=axis, keepdims=keep), np.argmin(x64, axis=-1),
                n64.sum(**r), n64.max(**r), np.trunc(n64.mean(**r)).astype(np.int64)]  # int mean: the spec's astype
    assert_outputs_close(got, expected, names, FP32_TOLERANCE if precision == "fp32" else ONE_OP_FP16)


def test_arg_reductions_reject_other_output_dtypes():
    with pytest.raises(NotImplementedError, match="int16"):
        REGISTRY["reduce_argmax"].fn(x=torch.zeros(2, 3), axis=0, output_dtype="int16")
