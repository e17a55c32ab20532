"""The executor itself: precision modes, tracing, trace comparison, in-memory vs saved models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from conversions.runtime import load_model
from conversions.runtime.mil import compare_traces
from conversions.testing import FP32_TOLERANCE, assert_matches_torch, assert_outputs_close, convert_module, torch_outputs


class LinearConvStack(torch.nn.Module):
    def __init__(self, features: int = 8, channels: int = 4):
        super().__init__()
        self.linear = torch.nn.Linear(features, channels)
        self.conv = torch.nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(torch.relu(self.conv(self.linear(x).transpose(1, 2))))


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
@given(frames=st.integers(1, 12), features=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_linear_conv_stack_matches_torch(precision, frames, features, seed):
    torch.manual_seed(seed)
    assert_matches_torch(LinearConvStack(features), [torch.randn(1, frames, features)], precision=precision)


@pytest.fixture(scope="module")
def stack_fp16():
    torch.manual_seed(0)
    module = LinearConvStack()
    x = torch.randn(1, 5, 8)
    return module, x, convert_module(module, [x], precision="fp16")


def test_fp16_storage_is_emulated(stack_fp16):
    module, x, mlmodel = stack_fp16
    fp16 = load_model(mlmodel, backend="mil").trace({"x0": x.numpy()})
    floats = [(op.name, arr) for op in fp16.values() for arr in op.outputs.values() if arr.dtype.kind == "f"]
    assert len(floats) >= 5  # linear, transpose, conv, relu, sigmoid at least: the loop below checks something
    for name, arr in floats:
        assert arr.dtype == np.float16, f"{name} output is {arr.dtype}, the program types it fp16"
    fp32 = load_model(mlmodel, backend="mil", precision="fp32").trace({"x0": x.numpy()})
    last = list(fp32)[-1]
    assert fp32[last].value.dtype == np.float32
    # Rounding to fp16 after each op must change the result measurably, but only at fp16's resolution.
    diff = np.abs(fp32[last].value - fp16[last].value.astype(np.float32)).max()
    assert 0 < diff < 1e-2


def test_outputs_follow_declared_dtype_and_names(stack_fp16):
    module, x, mlmodel = stack_fp16
    model = load_model(mlmodel, backend="mil")
    out = model.predict({"x0": x.numpy()})
    # Expectations from outside the runtime (coremltools' model description, torch's output shape), which
    # model.outputs must repeat: an fp16 program for iOS17 declares an fp16 output.
    from coremltools.proto import FeatureTypes_pb2

    (feature,) = mlmodel.get_spec().description.output
    assert feature.type.multiArrayType.dataType == FeatureTypes_pb2.ArrayFeatureType.FLOAT16
    (expected,) = torch_outputs(module, [x])
    assert list(out) == [s.name for s in model.outputs] == [feature.name]
    assert out[feature.name].dtype == model.outputs[0].dtype == np.float16
    assert out[feature.name].shape == model.outputs[0].shape == expected.shape


def test_saved_package_and_in_memory_model_agree(stack_fp16, tmp_path):
    _, x, mlmodel = stack_fp16
    path = tmp_path / "stack.mlpackage"
    mlmodel.save(str(path))
    a = load_model(mlmodel, backend="mil").predict({"x0": x.numpy()})
    b = load_model(str(path), backend="mil").predict({"x0": x.numpy()})
    assert list(a) == list(b) and len(a) == 1
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_trace_comparison_points_at_the_op_that_diverges(stack_fp16):
    module, x, mlmodel = stack_fp16
    model = load_model(mlmodel, backend="mil", precision="fp32")
    reference = model.trace({"x0": x.numpy()})
    candidate = model.trace({"x0": x.numpy()})
    conv_name = next(n for n, op in candidate.items() if op.op_type == "conv")
    var = next(iter(candidate[conv_name].outputs))
    candidate[conv_name].outputs[var] = candidate[conv_name].outputs[var] + 0.5  # inject an error at the conv
    comparison = compare_traces(reference, candidate)
    assert [r.op for r in comparison.jumps] == [conv_name]
    assert not comparison.first_nonfinite


def test_trace_comparison_finds_first_nonfinite(stack_fp16):
    _, x, mlmodel = stack_fp16
    model = load_model(mlmodel, backend="mil", precision="fp32")
    reference = model.trace({"x0": x.numpy()})
    candidate = model.trace({"x0": x.numpy()})
    names = list(candidate)
    target = names[1]
    var = next(iter(candidate[target].outputs))
    broken = candidate[target].outputs[var].copy()
    broken.flat[0] = np.inf
    candidate[target].outputs[var] = broken
    comparison = compare_traces(reference, candidate)
    assert [r.op for r in comparison.first_nonfinite] == [target]
    assert comparison.culprits()[0].op == target


def test_intermediates_are_freed_after_their_last_use(stack_fp16):
    _, x, mlmodel = stack_fp16
    executor = load_model(mlmodel, backend="mil").executor
    outputs = {executor.slot_of[name] for name in executor.function.outputs}
    freed: dict[int, int] = {}
    for i, step in enumerate(executor.steps):
        for slot in step.free_after:
            assert slot not in freed, f"slot {slot} freed twice"
            freed[slot] = i
    for i, step in enumerate(executor.steps):
        read = [slot for _, slot in step.var_kwargs]
        read += [v for _, items in step.list_kwargs for is_slot, v in items if is_slot]
        for slot in read:
            assert freed.get(slot, len(executor.steps)) >= i, f"step {i} ({step.op.name}) reads freed slot {slot}"
    assert set(freed) == set(executor.slot_of.values()) - outputs  # everything but the outputs is released
    assert not any(s.op.op_type == "const" for s in executor.steps)  # constants are resolved at load time


def test_multifunction_package_runs_each_function(tmp_path):
    """Each function of a multi-function package with its own I/O description (the top-level one is empty)."""
    import coremltools as ct

    torch.manual_seed(0)
    x = torch.randn(1, 5, 8)
    modules = {"first": LinearConvStack(), "second": LinearConvStack(channels=3)}
    descriptor = ct.utils.MultiFunctionDescriptor()
    for name, module in modules.items():
        path = tmp_path / f"{name}.mlpackage"
        convert_module(module, [x], precision="fp32", target="iOS18").save(str(path))
        descriptor.add_function(str(path), src_function_name="main", target_function_name=name)
    descriptor.default_function_name = "second"
    package = tmp_path / "multi.mlpackage"
    ct.utils.save_multifunction(descriptor, str(package))
    for function_name, name in [(None, "second"), ("first", "first"), ("second", "second")]:
        model = load_model(package, backend="mil", precision="fp32", function_name=function_name)
        assert model.function.name == name and [s.name for s in model.inputs] == ["x0"]
        out = model.predict({"x0": x.numpy()})
        assert_outputs_close([out[s.name] for s in model.outputs], torch_outputs(modules[name], [x]),
                             tol=FP32_TOLERANCE)
