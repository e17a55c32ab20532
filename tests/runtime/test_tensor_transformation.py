"""Tensor transformation kernels (reshape, transpose, squeeze, slicing, space/depth shuffles, sliding windows ...).

Torch modules converted by coremltools cover what the torch frontend emits; MIL builder programs cover inputs
and modes torch never produces (masks, negative strides, ``0`` in reshape shapes, DCR depth_to_space ...),
against numpy references written here. Programs with flexible input dims (``ct.RangeDim`` / symbolic builder
dims) are converted once and run at several hypothesis-chosen sizes: there the shapes reaching ``reshape``,
``fill`` and ``slice_by_size`` are runtime int32 tensors computed by ``shape``.
"""

from __future__ import annotations

import functools
import warnings

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import get_new_symbol, types
from hypothesis import assume, given
from hypothesis import strategies as st

from conversions.testing import (TorchFunction, assert_close, assert_outputs_close, convert_module, convert_program,
                                 op_types, predict_outputs, run_on_runtime, torch_outputs)

PRECISIONS = ["fp32", "fp16"]
TARGETS = ["iOS17", "iOS18"]


# ---- helpers --------------------------------------------------------------------------------------------
def convert_flexible(module, example_inputs, flexible: dict[tuple[int, int], int], target: str, precision: str):
    """Trace ``module`` and convert it with ``ct.RangeDim(1, upper)`` at each (input index, axis) in ``flexible``."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), tuple(example_inputs))
        inputs = []
        for i, x in enumerate(example_inputs):
            shape = [ct.RangeDim(1, flexible[(i, a)], default=d) if (i, a) in flexible else d
                     for a, d in enumerate(x.shape)]
            inputs.append(ct.TensorType(name=f"x{i}", shape=shape,
                                        dtype=np.float32 if x.is_floating_point() else np.int32))
        return convert_program(traced, target, precision, inputs=inputs)


def assert_converted_matches_torch(module, inputs, precision: str, expect_ops=()) -> None:
    """Like ``assert_matches_torch`` (same tolerances), converting once and checking ``expect_ops`` are emitted."""
    mlmodel = convert_module(module, inputs, precision=precision)
    assert set(expect_ops) <= set(op_types(mlmodel)), f"expected {expect_ops} in {op_types(mlmodel)}"
    got = run_on_runtime(mlmodel, inputs, precision=precision)
    assert_outputs_close(got, torch_outputs(module, inputs), precision=precision)


def floats(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- converted torch modules ----------------------------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
@given(b=st.integers(1, 2), t=st.integers(1, 6), heads=st.integers(1, 3), head_dim=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_attention_head_reshapes_match_torch(precision, b, t, heads, head_dim, seed):
    """squeeze -> reshape into heads -> transpose -> merge back with -1 -> unsqueeze, as attention blocks do."""

    def heads_roundtrip(x):  # x: [b, 1, t, heads*head_dim]
        q = x.squeeze(1).reshape(b, t, heads, head_dim).transpose(1, 2)
        merged = (q * 2.0).transpose(1, 2).reshape(b, -1, heads * head_dim)
        return q, merged.unsqueeze(1).unsqueeze(-1), x.flatten(0, 2)

    x = torch.from_numpy(floats((b, 1, t, heads * head_dim), seed))
    assert_converted_matches_torch(TorchFunction(heads_roundtrip), [x], precision,
                                   {"squeeze", "reshape", "transpose", "expand_dims"})


@st.composite
def slices(draw, n: int):
    start, stop = draw(st.integers(-n - 1, n + 1)), draw(st.integers(-n - 1, n + 1))
    step = draw(st.integers(1, 3))
    assume(len(range(*slice(start, stop, step).indices(n))) > 0)  # Core ML tensors are never empty
    return slice(start, stop, step)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(data=st.data(), n0=st.integers(1, 3), n1=st.integers(1, 8), n2=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_slicing_matches_torch(precision, data, n0, n1, n2, seed):
    """Start/stop/step slices with negative and out-of-range bounds, integer indexing (squeeze_mask)."""
    s1 = data.draw(slices(n1), label="s1")
    index = data.draw(st.integers(-n2, n2 - 1), label="index")

    def take(x):
        return x[:, s1, index], x[..., -1:] * 3.0

    x = torch.from_numpy(floats((n0, n1, n2), seed))
    assert_converted_matches_torch(TorchFunction(take), [x], precision, {"slice_by_index"})


@pytest.mark.parametrize("precision", PRECISIONS)
@given(factor=st.integers(1, 3), channels=st.integers(1, 3), h=st.integers(1, 3), w=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_pixel_shuffle_and_unshuffle_match_torch(precision, factor, channels, h, w, seed):
    def shuffle(x):
        up = F.pixel_shuffle(x, factor)
        return up, F.pixel_unshuffle(up + 1.0, factor)

    x = torch.from_numpy(floats((1, channels * factor * factor, h, w), seed))
    expect = {"pixel_shuffle", "pixel_unshuffle"} if factor > 1 else ()  # factor 1 is folded away
    assert_converted_matches_torch(TorchFunction(shuffle), [x], precision, expect)


HEADS = 2


def rel_shift_attention(scores, lengths):
    """NeMo's relative-position shift (pad + reshape + slice) with a padding mask from range_1d + less + select.

    ``scores``: [1, HEADS, T, P] with flexible T and P (P = 2T - 1 in the model); ``lengths``: [1] int32.
    """
    t, p = scores.shape[2], scores.shape[3]
    x = F.pad(scores, (1, 0))
    x = x.view(1, HEADS, -1, t)[:, :, 1:].view(1, HEADS, t, p)[..., :t]
    valid = torch.arange(t)[None, :] < lengths[:, None]
    return x.masked_fill(~valid[:, None, None, :], -1000.0)


@functools.cache
def rel_shift_model(target: str, precision: str):
    example = [torch.zeros(1, HEADS, 4, 7), torch.tensor([3], dtype=torch.int32)]
    mlmodel = convert_flexible(TorchFunction(rel_shift_attention), example, {(0, 2): 32, (0, 3): 64}, target, precision)
    assert {"shape", "pad", "concat", "reshape", "slice_by_index", "range_1d", "select"} <= set(op_types(mlmodel))
    return mlmodel


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
@given(t=st.integers(1, 32), data=st.data(), seed=st.integers(0, 2**16))
def test_flexible_length_rel_shift_matches_torch(target, precision, t, data, seed):
    """One conversion with flexible T, run at hypothesis-chosen T: reshape targets come from ``shape`` at run time."""
    length = data.draw(st.integers(0, t), label="length")
    scores = torch.from_numpy(floats((1, HEADS, t, 2 * t - 1), seed))
    lengths = torch.tensor([length], dtype=torch.int32)
    (got,) = predict_outputs(rel_shift_model(target, precision), {"x0": scores.numpy(), "x1": lengths.numpy()}, precision)
    assert_close(got, rel_shift_attention(scores, lengths).numpy(), precision, f"T={t}")


# ---- MIL builder programs -------------------------------------------------------------------------------
SLICE_CASES = {  # id: (stride, begin_mask, end_mask, squeeze_mask) for x of shape (4, 5, 6)
    "positive-strides": ([1, 2, 3], None, None, None),
    "negative-strides": ([-1, -2, 1], None, None, None),
    "begin-end-masks": ([1, -1, 2], [True, False, True], [False, True, True], None),
    "squeeze-mask": ([2, 1, -1], None, None, [False, True, False]),
    "all-squeezed": ([1, 1, 1], [True, False, False], None, [True, True, True]),
}
SLICE_SHAPE = (4, 5, 6)


@functools.cache
def slice_program(case: str):
    stride, begin_mask, end_mask, squeeze_mask = SLICE_CASES[case]
    masks = {"begin_mask": begin_mask, "end_mask": end_mask, "squeeze_mask": squeeze_mask}
    masks = {k: v for k, v in masks.items() if v}

    @mb.program(input_specs=[mb.TensorSpec(shape=SLICE_SHAPE), mb.TensorSpec(shape=(3,), dtype=types.int32),
                             mb.TensorSpec(shape=(3,), dtype=types.int32)], opset_version=ct.target.iOS17)
    def prog(x, begin, end):
        return mb.slice_by_index(x=x, begin=begin, end=end, stride=stride, **masks)

    return convert_program(prog)


@pytest.mark.parametrize("case", list(SLICE_CASES))
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_slice_by_index_masks_and_strides_match_numpy(case, data, seed):
    """Runtime begin/end (clamped, negative, empty ranges) under each stride/mask combination: numpy slicing."""
    stride, begin_mask, end_mask, squeeze_mask = SLICE_CASES[case]
    begin_mask, end_mask, squeeze_mask = (m or [False] * 3 for m in (begin_mask, end_mask, squeeze_mask))
    begin, end, index = [], [], []
    for n, squeezed in zip(SLICE_SHAPE, squeeze_mask):
        begin.append(data.draw(st.integers(-n, n - 1) if squeezed else st.integers(-n - 2, n + 2)))
        end.append(data.draw(st.integers(-n - 2, n + 2)))
    for d in range(3):
        if squeeze_mask[d]:
            index.append(0 if begin_mask[d] else begin[d])
        else:
            index.append(slice(None if begin_mask[d] else begin[d], None if end_mask[d] else end[d], stride[d]))
    x = floats(SLICE_SHAPE, seed)
    (got,) = predict_outputs(slice_program(case),
                             {"x": x, "begin": np.array(begin, np.int32), "end": np.array(end, np.int32)})
    assert_close(got, x[tuple(index)], what=f"begin={begin} end={end}")


RESHAPE_CASES = [  # (opset, x shape, shape argument, expected output shape), expectations from the op docs
    ("iOS15", (2, 3, 4), [0, -1, 2], (2, 6, 2)),  # iOS15: 0 copies the same dim, len(shape) == rank(x)
    ("iOS15", (2, 3, 4), [-1, 0, 1], (8, 3, 1)),
    ("iOS17", (2, 50), [1, 0, -1, 0], (1, 1, 2, 50)),  # iOS17: 0s right-aligned, unmatched 0 -> 1 (docs example)
    ("iOS17", (2, 3, 4), [0, -1], (3, 8)),
    ("iOS17", (6,), [-1, 3, 1], (2, 3, 1)),
]


@pytest.mark.parametrize("opset, x_shape, shape, expected", RESHAPE_CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}-to-{c[2]}" for c in RESHAPE_CASES])
def test_reshape_zero_and_minus_one_entries(opset, x_shape, shape, expected):
    target = getattr(ct.target, opset)

    @mb.program(input_specs=[mb.TensorSpec(shape=x_shape)], opset_version=target)
    def prog(x):
        return mb.reshape(x=mb.mul(x=x, y=2.0), shape=shape)  # mul keeps reshape off the input (no folding)

    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target,
                         compute_precision=ct.precision.FLOAT32)
    assert "reshape" in op_types(mlmodel)
    x = floats(x_shape, 0)
    (got,) = predict_outputs(mlmodel, {"x": x})
    assert_close(got, (x * 2).reshape(expected))


S0, S1 = get_new_symbol(), get_new_symbol()
BIG = (6, 7)


@functools.cache
def runtime_shape_program(target: str, precision: str):
    """``shape`` of a flexible input drives fill, slice_by_size, reshape and slice_by_index end at run time."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(S0, S1)), mb.TensorSpec(shape=BIG),
                             mb.TensorSpec(shape=(2,), dtype=types.int32)], opset_version=getattr(ct.target, target))
    def prog(x, y, begin):
        s = mb.shape(x=x)
        filled = mb.fill(shape=s, value=2.0)
        window = mb.slice_by_size(x=y, begin=begin, size=s)
        cols = mb.slice_by_index(x=s, begin=[1], end=[2])
        swapped = mb.reshape(x=mb.add(x=window, y=filled), shape=mb.concat(values=[cols, [-1]], axis=0))
        corner = mb.slice_by_index(x=y, begin=[0, 0], end=s)
        rest = mb.slice_by_size(x=y, begin=begin, size=[-1, -1])
        return swapped, mb.mul(x=corner, y=x), mb.add(x=rest, y=0.5)

    inputs = [ct.TensorType(name="x", shape=(ct.RangeDim(1, 6), ct.RangeDim(1, 7))), ct.TensorType(name="y", shape=BIG),
              ct.TensorType(name="begin", shape=(2,), dtype=np.int32)]
    mlmodel = convert_program(prog, target, precision, inputs=inputs)
    assert {"shape", "fill", "slice_by_size", "reshape", "slice_by_index"} <= set(op_types(mlmodel))
    return mlmodel


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
@given(d0=st.integers(1, 6), d1=st.integers(1, 7), data=st.data(), seed=st.integers(0, 2**16))
def test_runtime_shapes_feed_fill_slice_and_reshape(target, precision, d0, d1, data, seed):
    b0 = data.draw(st.integers(0, BIG[0] - d0), label="b0")
    b1 = data.draw(st.sampled_from([BIG[1] - d1, -d1]), label="b1")  # the same column, counted from the end
    x, y = floats((d0, d1), seed), floats(BIG, seed + 1)
    got = predict_outputs(runtime_shape_program(target, precision), {"x": x, "y": y, "begin": np.array([b0, b1], np.int32)},
                  precision)
    c1 = b1 % BIG[1]
    window = y[b0:b0 + d0, c1:c1 + d1]
    assert_close(got[0], (window + 2.0).reshape(d1, -1), precision, "fill + slice_by_size + reshape")
    assert_close(got[1], y[:d0, :d1] * x, precision, "slice_by_index with runtime end")
    assert_close(got[2], y[b0:, c1:] + 0.5, precision, "slice_by_size with size -1")


H, W, T = get_new_symbol(), get_new_symbol(), get_new_symbol()


def depth_to_space_reference(x: np.ndarray, b: int) -> np.ndarray:
    """TensorFlow order ("DCR"): out[n, c, h*b+i, w*b+j] = x[n, (i*b + j)*C_out + c, h, w]."""
    n, c, h, w = x.shape
    c_out = c // (b * b)
    out = np.zeros((n, c_out, h * b, w * b), x.dtype)
    for ch in range(c_out):
        for i in range(b):
            for j in range(b):
                out[:, ch, i::b, j::b] = x[:, (i * b + j) * c_out + ch]
    return out


@functools.cache
def space_depth_program(block: int):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2 * block * block, H, W))], opset_version=ct.target.iOS17)
    def prog(x):
        up = mb.depth_to_space(x=x, block_size=block)
        return up, mb.space_to_depth(x=mb.mul(x=up, y=-1.0), block_size=block)

    mlmodel = convert_program(prog, inputs=[ct.TensorType(name="x", shape=(1, 2 * block * block, ct.RangeDim(1, 5),
                                                                         ct.RangeDim(1, 5)))])
    assert {"depth_to_space", "space_to_depth"} <= set(op_types(mlmodel))
    return mlmodel


def test_depth_to_space_follows_the_core_ml_spec_example():
    """NeuralNetwork.proto ReorganizeData example: C=8, H=1, W=2, block 2 (DEPTH_TO_SPACE is not pixel shuffle)."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, 1, 2))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.depth_to_space(x=x, block_size=2)

    x = np.arange(1, 17, dtype=np.float32).reshape(1, 8, 1, 2)
    (got,) = predict_outputs(convert_program(prog), {"x": x})
    expected = np.array([[[[1, 5, 2, 6], [9, 13, 10, 14]], [[3, 7, 4, 8], [11, 15, 12, 16]]]], np.float32)
    assert_close(got, expected)


@pytest.mark.parametrize("block", [2, 3])
@given(h=st.integers(1, 5), w=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_depth_to_space_and_back_match_numpy(block, h, w, seed):
    x = floats((1, 2 * block * block, h, w), seed)
    up, back = predict_outputs(space_depth_program(block), {"x": x})
    assert_close(up, depth_to_space_reference(x, block))
    assert_close(back, -x)  # space_to_depth is the exact inverse


def space_to_batch_reference(x: np.ndarray, block: tuple[int, int], pads) -> np.ndarray:
    """TensorFlow's space_to_batch_nd in NCHW: out[(i*bw + j)*N + n, c, h, w] = padded[n, c, h*bh + i, w*bw + j]."""
    bh, bw = block
    padded = np.pad(x, [(0, 0), (0, 0), tuple(pads[0]), tuple(pads[1])])
    n, c, hp, wp = padded.shape
    out = np.zeros((n * bh * bw, c, hp // bh, wp // bw), x.dtype)
    for i in range(bh):
        for j in range(bw):
            for b in range(n):
                out[(i * bw + j) * n + b] = padded[b, :, i::bh, j::bw]
    return out


SPACE_BATCH_CASES = {"block-2x2-pad": ((2, 2), [[1, 1], [0, 1]]), "block-1x3": ((1, 3), [[0, 0], [2, 1]])}


@functools.cache
def space_batch_program(case: str):
    block, pads = SPACE_BATCH_CASES[case]

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3, 4, 3))], opset_version=ct.target.iOS17)
    def prog(x):
        batched = mb.space_to_batch(x=x, block_shape=list(block), paddings=pads)
        return batched, mb.batch_to_space(x=mb.add(x=batched, y=1.0), block_shape=list(block), crops=pads)

    mlmodel = convert_program(prog)
    assert {"space_to_batch", "batch_to_space"} <= set(op_types(mlmodel))
    return mlmodel


@pytest.mark.parametrize("case", list(SPACE_BATCH_CASES))
@given(seed=st.integers(0, 2**16))
def test_space_to_batch_and_back_match_numpy(case, seed):
    block, pads = SPACE_BATCH_CASES[case]
    x = floats((2, 3, 4, 3), seed)
    batched, back = predict_outputs(space_batch_program(case), {"x": x})
    assert_close(batched, space_to_batch_reference(x, block, pads))
    assert_close(back, x + 1.0)  # batch_to_space with crops == paddings undoes it


SLIDING_CASES = {"axis1-size3-stride2": (1, 3, 2), "axis-1-size2": (-1, 2, 1), "axis0-size1-stride3": (0, 1, 3)}


@functools.cache
def sliding_program(case: str, precision: str):
    axis, size, stride = SLIDING_CASES[case]

    @mb.program(input_specs=[mb.TensorSpec(shape=(4, T, 3))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.sliding_windows(x=x, axis=axis, size=size, stride=stride)

    mlmodel = convert_program(prog, precision=precision,
                              inputs=[ct.TensorType(name="x", shape=(4, ct.RangeDim(3, 12), 3))])
    assert "sliding_windows" in op_types(mlmodel)
    return mlmodel


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", list(SLIDING_CASES))
@given(t=st.integers(3, 12), seed=st.integers(0, 2**16))
def test_sliding_windows_match_numpy(case, precision, t, seed):
    axis, size, stride = SLIDING_CASES[case]
    x = floats((4, t, 3), seed)
    windows = np.lib.stride_tricks.sliding_window_view(x, size, axis=axis)  # window dim appended last
    windows = np.take(windows, np.arange(0, windows.shape[axis], stride), axis=axis)
    expected = np.moveaxis(windows, -1, (axis % 3) + 1)
    (got,) = predict_outputs(sliding_program(case, precision), {"x": x}, precision)
    assert_close(got, expected, precision)


@functools.cache
def shape_ops_program():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 1, 3, 1)), mb.TensorSpec(shape=(2, 5, 3))],
                opset_version=ct.target.iOS17)
    def prog(x, ref):
        y = mb.mul(x=x, y=3.0)
        return (mb.flatten2d(x=y, axis=-1), mb.flatten2d(x=y),  # default axis 1
                mb.squeeze(x=y, axes=[-1, 1]), mb.squeeze(x=y),  # explicit axes / every unit dim
                mb.expand_dims(x=mb.squeeze(x=y), axes=[0, -1, 2]), mb.expand_dims(x=mb.squeeze(x=y), axes=[2, 0]),
                mb.reshape_like(x=y, ref_tensors=(ref, ref), begins=(0, 2), ends=(1, 0), end_masks=(False, True)),
                mb.identity(x=y))

    mlmodel = convert_program(prog)
    assert {"flatten2d", "squeeze", "expand_dims", "reshape_like"} <= set(op_types(mlmodel))
    return mlmodel


@given(seed=st.integers(0, 2**16))
def test_flatten_squeeze_expand_reshape_like_match_numpy(seed):
    x = floats((2, 1, 3, 1), seed)
    got = predict_outputs(shape_ops_program(), {"x": x, "ref": floats((2, 5, 3), seed)})
    y = x * 3
    expected = [y.reshape(6, 1), y.reshape(2, 3), y.reshape(2, 3), y.reshape(2, 3),
                y.reshape(1, 2, 1, 3, 1),  # axes 0, 2 and -1 of the rank-5 output
                y.reshape(1, 2, 1, 3),  # unsorted axes index the output, not the input
                y.reshape(2, 3),  # ref.shape[0:1] + ref.shape[2:]
                y]
    assert_outputs_close(got, expected)
