"""Kernel specializers (``ops.specializer``): what the fast path runs for a step with constant attributes must be
what the kernel computes, bit for bit, and the kernel's own handling (errors, uncovered cases) must stay.

Each case calls the registered kernel and the function its specializer returns on the same inputs; the model case
runs a small conv + pad + slice + lstm network through the fast path (``predict``) and the plain loop (``trace``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conversions.runtime import load_model
from conversions.runtime.mil.ops import REGISTRY, SPECIALIZERS
from conversions.testing import convert_module


def _same(a, b) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def _both(op_type, consts, **inputs):
    special = SPECIALIZERS[op_type](dict(consts), tuple(inputs))
    assert special is not None, f"{op_type}: the specializer declined {sorted(consts)}"
    return REGISTRY[op_type].fn(**consts, **inputs), special(**inputs)


@pytest.mark.parametrize("hidden, batch, direction, sequence", [
    (128, 1, "forward", True), (64, 3, "reverse", True), (32, 2, "forward", False), (96, 5, "reverse", False)])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_matches_the_kernel_bit_for_bit(hidden, batch, direction, sequence, bias):
    g = torch.Generator().manual_seed(hidden + batch)
    consts = {"weight_ih": 0.3 * torch.randn(4 * hidden, 7, generator=g),
              "weight_hh": 0.3 * torch.randn(4 * hidden, hidden, generator=g),
              "direction": direction, "output_sequence": sequence}
    if bias:
        consts["bias"] = torch.randn(4 * hidden, generator=g)
    x = torch.randn(6, batch, 7, generator=g)
    h, c = torch.randn(batch, hidden, generator=g), 3 * torch.randn(batch, hidden, generator=g)
    kernel, special = _both("lstm", consts, x=x, initial_h=h, initial_c=c)
    assert _same(kernel, special)


def test_lstm_specializer_leaves_other_cases_to_the_kernel():
    w = {"weight_ih": torch.randn(80, 4), "weight_hh": torch.randn(80, 20)}
    make = SPECIALIZERS["lstm"]
    assert make({**w}, ("x", "initial_h", "initial_c")) is None  # H = 20: partial vectors
    w = {"weight_ih": torch.randn(128, 4), "weight_hh": torch.randn(128, 32)}
    assert make({**w, "clip": 1.0}, ("x", "initial_h", "initial_c")) is None
    assert make({**w, "peephole": torch.zeros(96)}, ("x", "initial_h", "initial_c")) is None
    assert make({**w, "recurrent_activation": "hard_sigmoid"}, ("x", "initial_h", "initial_c")) is None
    assert make({**w, "direction": "bidirectional"}, ("x", "initial_h", "initial_c")) is None
    special = make(dict(w), ("x", "initial_h", "initial_c"))
    with pytest.raises(ValueError, match="initial state 'initial_h' must have shape"):  # the kernel's check
        special(x=torch.randn(3, 2, 4), initial_h=torch.zeros(1, 32), initial_c=torch.zeros(2, 32))


@pytest.mark.parametrize("pad_type, pad, strides, dilations, size", [
    ("valid", None, [128], [1], 640), ("custom", [1, 1], [2], [1], 4), ("custom", [2, 0], [1], [1], 9),
    ("same", None, [2], [2], 11), ("same_lower", None, [3], [1], 10)])
def test_conv_matches_the_kernel(pad_type, pad, strides, dilations, size):
    g = torch.Generator().manual_seed(size)
    consts = {"weight": torch.randn(6, 3, 5, generator=g), "bias": torch.randn(6, generator=g), "pad_type": pad_type,
              "strides": torch.tensor(strides, dtype=torch.int32), "dilations": torch.tensor(dilations, dtype=torch.int32),
              "groups": 1}
    if pad is not None:
        consts["pad"] = torch.tensor(pad, dtype=torch.int32)
    for length in (size, size + 3):  # the padding is planned per input size
        kernel, special = _both("conv", consts, x=torch.randn(2, 3, length, generator=g))
        assert _same(kernel, special)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
def test_pad_matches_the_kernel(mode):
    consts = {"pad": torch.tensor([0, 0, 2, 3], dtype=torch.int32), "mode": mode, "constant_val": 0.5}
    for shape in ((2, 5, 7), (4, 6)):
        kernel, special = _both("pad", consts, x=torch.randn(shape))
        assert _same(kernel, special)
    special = SPECIALIZERS["pad"](consts, ("x",))
    if mode == "reflect":  # pad >= dim: the kernel's error
        with pytest.raises(ValueError, match="reflect pad"):
            special(x=torch.randn(2, 3))


def test_slice_by_index_matches_the_kernel():
    consts = {"begin": torch.tensor([0, -5, 1], dtype=torch.int32), "end": torch.tensor([1, 100, 0], dtype=torch.int32),
              "stride": torch.tensor([1, 2, 1], dtype=torch.int32), "end_mask": torch.tensor([True, False, True])}
    for shape in ((2, 9, 4), (3, 3, 2)):
        kernel, special = _both("slice_by_index", consts, x=torch.randn(shape))
        assert _same(kernel, special)
    squeezing = {**consts, "squeeze_mask": torch.tensor([True, False, False])}
    assert SPECIALIZERS["slice_by_index"](squeezing, ("x",)) is None  # the kernel's general path


def test_small_ops_match_the_kernel():
    x = torch.randn(2, 1, 3)
    for op_type, consts, inputs in [
        ("expand_dims", {"axes": torch.tensor([-1, 0], dtype=torch.int32)}, {"x": x}),
        ("squeeze", {"axes": torch.tensor([1, 0], dtype=torch.int32)}, {"x": x}),
        ("transpose", {"perm": torch.tensor([2, 0, 1], dtype=torch.int32)}, {"x": x}),
        ("cast", {"dtype": "int32"}, {"x": 3 * x}),
        ("sub", {"x": 1.0}, {"y": x}), ("add", {"x": 0.1}, {"y": x}), ("mul", {"x": 3.3}, {"y": x}),
        ("sub", {"x": 1.0}, {"y": torch.tensor([1, 2], dtype=torch.int32)}),
        ("pow", {"y": 2.0}, {"x": torch.randn(1000)}), ("pow", {"y": 0.5}, {"x": torch.tensor([4, 9], dtype=torch.int32)}),
    ]:
        kernel, special = _both(op_type, consts, **inputs)
        assert _same(kernel, special), op_type


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 32, 3, stride=2, padding=1)
        self.lstm = torch.nn.LSTM(32, 32)

    def forward(self, x, h, c):
        y = torch.relu(self.conv(torch.nn.functional.pad(x, (0, 3), mode="reflect")))  # [1, 32, T]
        out, (h1, c1) = self.lstm(y.permute(2, 0, 1), (h.unsqueeze(0), c.unsqueeze(0)))
        return 1 - out[:, :, :8], h1.squeeze(0), c1.squeeze(0)


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_model_fast_path_matches_plain_loop(precision):
    torch.manual_seed(0)
    net = _Net().eval()
    example = [torch.randn(1, 4, 17), 0.5 * torch.randn(1, 32), 0.5 * torch.randn(1, 32)]
    model = load_model(convert_module(net, example, names=["x", "h", "c"], precision=precision), backend="mil",
                       precision=precision)
    ops = {step.op.op_type for step in model.executor.steps}
    assert {"conv", "lstm", "pad", "slice_by_index", "sub"} <= ops, ops
    feeds = {"x": example[0].numpy(), "h": example[1].numpy(), "c": example[2].numpy()}
    fast = model.predict(feeds)
    plain_outputs = model.predict(feeds, trace=True)[0]  # the plain loop: the kernels themselves
    for name, value in fast.items():
        np.testing.assert_array_equal(value, plain_outputs[name], err_msg=name)
    with torch.no_grad():
        expected = net(*example)
    tol = 2e-2 if precision == "fp16" else 1e-5
    for value, ref in zip(fast.values(), expected):
        np.testing.assert_allclose(value, ref.numpy(), atol=tol, rtol=0)
