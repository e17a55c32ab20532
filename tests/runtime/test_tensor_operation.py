"""Tensor operation kernels (pad, split/concat/stack, tile, reverse, band_part, range_1d, fill, one_hot, topk,
argsort, non_zero, cumsum, select, cast, non_maximum_suppression ...).

Torch modules converted by coremltools cover what the torch frontend emits, most of them with a flexible input
dim (``ct.RangeDim``): converted once, run at hypothesis-chosen lengths, so that ``shape``-derived int32 tensors
reach ``fill``/``range_1d``/``one_hot`` at run time, as in Silero VAD, NeMo and Kokoro. MIL builder programs
cover the modes torch never emits, against numpy references written here.
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
from coremltools.converters.mil.mil import types
from hypothesis import assume, given
from hypothesis import strategies as st

from conversions.testing import (TorchFunction, assert_close, assert_outputs_close, convert_module, convert_program,
                                 op_types, predict_outputs, run_on_runtime, torch_outputs)

PRECISIONS = ["fp32", "fp16"]
TARGETS = ["iOS17", "iOS18"]


# ---- helpers --------------------------------------------------------------------------------------------
def convert_flexible(module, example_inputs, flexible: dict[tuple[int, int], tuple[int, int]], target: str = "iOS17",
                     precision: str = "fp32", expect_ops=()):
    """Trace ``module``; convert with ``ct.RangeDim(low, high)`` at each (input index, axis) key of ``flexible``."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), tuple(example_inputs))
        inputs = []
        for i, x in enumerate(example_inputs):
            shape = [ct.RangeDim(*flexible[(i, a)], default=d) if (i, a) in flexible else d
                     for a, d in enumerate(x.shape)]
            inputs.append(ct.TensorType(name=f"x{i}", shape=shape,
                                        dtype=np.float32 if x.is_floating_point() else np.int32))
        mlmodel = convert_program(traced, target, precision, inputs=inputs)
    assert set(expect_ops) <= set(op_types(mlmodel)), f"expected {expect_ops} in {op_types(mlmodel)}"
    return mlmodel


def assert_runtime_matches_torch(mlmodel, module, inputs, precision: str) -> None:
    got = run_on_runtime(mlmodel, inputs, precision=precision)
    assert_outputs_close(got, torch_outputs(module, inputs), precision=precision)


def floats(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def distinct(shape, seed: int) -> np.ndarray:
    """Distinct values exactly representable in fp16 (multiples of 1/4), so that fp16 programs sort without ties."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n).reshape(shape) * 0.25 - n / 8).astype(np.float32)


# ---- converted torch modules ----------------------------------------------------------------------------
PAD_CASES = {  # id: (module, example shape, flexible axes -> RangeDim bounds)
    "silero-reflect-right-64": (lambda x: F.pad(x, (0, 64), mode="reflect"), (1, 100), {(0, 1): (65, 600)}),
    "reflect-2d": (lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect"), (1, 2, 4, 5), {(0, 2): (3, 8), (0, 3): (3, 8)}),
    "replicate-2d": (lambda x: F.pad(x, (1, 2, 3, 0), mode="replicate"), (1, 2, 4, 5), {(0, 3): (1, 8)}),
    "constant-value": (lambda x: F.pad(x, (2, 1, 0, 3), value=-1.5), (2, 3, 5), {(0, 2): (1, 8)}),
}


@functools.cache
def pad_model(case: str, precision: str):
    fn, shape, flexible = PAD_CASES[case]
    return convert_flexible(TorchFunction(fn), [torch.zeros(shape)], flexible, precision=precision, expect_ops={"pad"})


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", list(PAD_CASES))
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_pad_modes_match_torch(case, precision, data, seed):
    fn, shape, flexible = PAD_CASES[case]
    shape = list(shape)
    for (_, axis), (low, high) in flexible.items():
        shape[axis] = data.draw(st.integers(low, high), label=f"dim {axis}")
    x = torch.from_numpy(floats(shape, seed))
    assert_runtime_matches_torch(pad_model(case, precision), TorchFunction(fn), [x], precision)


def split_concat_stack(x, context):
    """x: [1, 6, T]; context: [1, 6, 3] prepended along time as Silero VAD does with its context samples."""
    low, high = torch.split(x, [2, 4], dim=1)
    thirds = torch.chunk(x, 3, dim=1)
    return torch.cat([high, low], dim=1), torch.stack(thirds, dim=-1), torch.cat([context, x * 2.0], dim=-1)


@functools.cache
def split_model(precision: str):
    example = [torch.zeros(1, 6, 5), torch.zeros(1, 6, 3)]
    return convert_flexible(TorchFunction(split_concat_stack), example, {(0, 2): (1, 16)}, precision=precision,
                            expect_ops={"split", "concat", "stack"})


@pytest.mark.parametrize("precision", PRECISIONS)
@given(t=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_split_concat_stack_match_torch(precision, t, seed):
    inputs = [torch.from_numpy(floats((1, 6, t), seed)), torch.from_numpy(floats((1, 6, 3), seed + 1))]
    assert_runtime_matches_torch(split_model(precision), TorchFunction(split_concat_stack), inputs, precision)


def tile_flip_bands(x):
    return x.repeat(2, 3), torch.flip(x, [0, 1]), torch.tril(x, -1), torch.triu(x, 2), torch.flip(x, [1]).tril()


@functools.cache
def tile_model(precision: str):
    return convert_flexible(TorchFunction(tile_flip_bands), [torch.zeros(3, 4)], {(0, 0): (1, 6), (0, 1): (1, 6)},
                            precision=precision, expect_ops={"tile", "reverse", "band_part"})


@pytest.mark.parametrize("precision", PRECISIONS)
@given(rows=st.integers(1, 6), cols=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_tile_flip_band_part_match_torch(precision, rows, cols, seed):
    x = torch.from_numpy(floats((rows, cols), seed))
    assert_runtime_matches_torch(tile_model(precision), TorchFunction(tile_flip_bands), [x], precision)


def sorting(x):
    top, top_idx = torch.topk(x, 3, dim=-1)
    low, low_idx = torch.topk(x, 2, dim=0, largest=False)
    return top, top_idx, low, low_idx, torch.argsort(x, dim=-1), torch.argsort(x, dim=0, descending=True)


@functools.cache
def sorting_model(precision: str):
    mlmodel = convert_module(TorchFunction(sorting), [torch.zeros(3, 8)], precision=precision)
    assert {"topk", "argsort"} <= set(op_types(mlmodel))
    return mlmodel


@pytest.mark.parametrize("precision", PRECISIONS)
@given(seed=st.integers(0, 2**16))
def test_topk_and_argsort_match_torch(precision, seed):
    x = torch.from_numpy(distinct((3, 8), seed))
    assert_runtime_matches_torch(sorting_model(precision), TorchFunction(sorting), [x], precision)


FRAMES = 24


def durations_to_alignment(durations, weights):
    """Kokoro-style: cumulative durations -> frame/token alignment from comparisons, plus a data-dependent range."""
    ends = torch.cumsum(durations, dim=-1)  # [1, N] int32
    starts = ends - durations
    frames = torch.arange(FRAMES)
    alignment = (frames[None, None, :] >= starts[..., None]) & (frames[None, None, :] < ends[..., None])
    total_frames = torch.arange(ends[0, -1])  # length known only at run time
    return alignment.float(), ends, total_frames, torch.cumsum(weights, dim=1)


@functools.cache
def alignment_model(target: str, precision: str):
    example = [torch.ones(1, 5, dtype=torch.int32), torch.zeros(1, 5)]
    return convert_flexible(TorchFunction(durations_to_alignment), example, {(0, 1): (1, 12), (1, 1): (1, 12)}, target,
                            precision, expect_ops={"cumsum", "range_1d"})


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_cumsum_alignment_matches_torch(target, precision, data, seed):
    durations = data.draw(st.lists(st.integers(0, 2), min_size=1, max_size=12), label="durations")
    assume(sum(durations) > 0)  # Core ML cannot hold the empty range
    inputs = [torch.tensor([durations], dtype=torch.int32), torch.from_numpy(floats((1, len(durations)), seed))]
    assert_runtime_matches_torch(alignment_model(target, precision), TorchFunction(durations_to_alignment), inputs,
                                 precision)


def length_dependent(x, labels):
    """x: [1, T, 4] with flexible T; labels: [1, T] int32 in [0, 5)."""
    t = x.shape[1]
    positions = torch.arange(t, dtype=torch.float32)[None, :, None]
    zeros = torch.zeros(t, 4)
    ones = torch.ones_like(x)
    masked = x.masked_fill(x < 0, -1000.0)
    truncated = (x * 3.0).to(torch.int32)  # toward zero, negatives included
    return (positions * ones + zeros, torch.full_like(x, 0.5) + x, masked, F.one_hot(labels.long(), 5),
            torch.nonzero(x > 0.5), truncated, (x > 0).float() * 2.0)


@functools.cache
def length_model(target: str, precision: str):
    example = [torch.zeros(1, 5, 4), torch.zeros(1, 5, dtype=torch.int32)]
    return convert_flexible(TorchFunction(length_dependent), example, {(0, 1): (1, 16), (1, 1): (1, 16)}, target, precision,
                            expect_ops={"shape", "range_1d", "fill", "fill_like", "select", "one_hot", "non_zero",
                                        "cast"})


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
@given(t=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_length_dependent_fill_range_one_hot_cast_match_torch(target, precision, t, seed):
    x = floats((1, t, 4), seed) * 2
    if precision == "fp16":  # keep x*3 away from integers, where fp16 rounding could move the truncation
        x = np.round(x * 3) / 3 + np.float32(1 / 6)
    labels = np.random.default_rng(seed).integers(0, 5, (1, t)).astype(np.int32)
    inputs = [torch.from_numpy(x), torch.from_numpy(labels)]
    assert_runtime_matches_torch(length_model(target, precision), TorchFunction(length_dependent), inputs, precision)


# ---- MIL builder programs -------------------------------------------------------------------------------
@functools.cache
def concat_split_program():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3, 6)), mb.TensorSpec(shape=(2, 3, 6))],
                opset_version=ct.target.iOS17)
    def prog(a, b):
        thirds = mb.split(x=a, num_splits=3, axis=-1)
        uneven = mb.split(x=b, split_sizes=[1, 4, 1], axis=2)
        return (mb.concat(values=[a, b], axis=1, interleave=True), mb.concat(values=[a, b, a], axis=-1),
                *thirds, *uneven, mb.stack(values=[a, b], axis=-1), mb.stack(values=[a, b], axis=0))

    mlmodel = convert_program(prog)
    assert {"concat", "split", "stack"} <= set(op_types(mlmodel))
    return mlmodel


@given(seed=st.integers(0, 2**16))
def test_concat_interleave_split_stack_match_numpy(seed):
    a, b = floats((2, 3, 6), seed), floats((2, 3, 6), seed + 1)
    got = predict_outputs(concat_split_program(), {"a": a, "b": b})
    interleaved = np.empty((2, 6, 6), np.float32)
    interleaved[:, 0::2], interleaved[:, 1::2] = a, b
    expected = [interleaved, np.concatenate([a, b, a], axis=-1), a[..., 0:2], a[..., 2:4], a[..., 4:6],
                b[..., :1], b[..., 1:5], b[..., 5:], np.stack([a, b], axis=-1), np.stack([a, b])]
    assert_outputs_close(got, expected)


@functools.cache
def pad_program():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3, 5)), mb.TensorSpec(shape=(6,), dtype=types.int32)],
                opset_version=ct.target.iOS17)
    def prog(x, pads):
        return (mb.pad(x=x, pad=[3, 4], mode="reflect"),  # last dim only, shorter pad vector
                mb.pad(x=x, pad=[1, 0, 6, 2], mode="replicate"),  # replicate may exceed the dim
                mb.pad(x=x, pad=pads, mode="constant", constant_val=7.0))  # runtime pads: 2 * rank values

    mlmodel = convert_program(prog)
    assert op_types(mlmodel).count("pad") == 3
    return mlmodel


@given(pads=st.lists(st.integers(0, 3), min_size=6, max_size=6), seed=st.integers(0, 2**16))
def test_pad_partial_and_runtime_pads_match_numpy(pads, seed):
    x = floats((2, 3, 5), seed)
    got = predict_outputs(pad_program(), {"x": x, "pads": np.array(pads, np.int32)})
    expected = [np.pad(x, [(0, 0), (0, 0), (3, 4)], mode="reflect"),
                np.pad(x, [(0, 0), (1, 0), (6, 2)], mode="edge"),
                np.pad(x, [tuple(pads[0:2]), tuple(pads[2:4]), tuple(pads[4:6])], constant_values=7.0)]
    assert_outputs_close(got, expected)


REVERSE_SEQUENCE_CASES = {"seq1-batch0": (1, 0), "seq0-batch1": (0, 1), "seq-1-batch1": (-1, 1)}
RS_SHAPE = (3, 4, 5)


@functools.cache
def reverse_sequence_program(case: str):
    seq_axis, batch_axis = REVERSE_SEQUENCE_CASES[case]

    @mb.program(input_specs=[mb.TensorSpec(shape=RS_SHAPE), mb.TensorSpec(shape=(RS_SHAPE[batch_axis],),
                                                                          dtype=types.int32)],
                opset_version=ct.target.iOS17)
    def prog(x, lengths):
        return mb.reverse_sequence(x=x, lengths=lengths, seq_axis=seq_axis, batch_axis=batch_axis)

    mlmodel = convert_program(prog)
    assert "reverse_sequence" in op_types(mlmodel)
    return mlmodel


@pytest.mark.parametrize("case", list(REVERSE_SEQUENCE_CASES))
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_reverse_sequence_matches_numpy(case, data, seed):
    seq_axis, batch_axis = REVERSE_SEQUENCE_CASES[case]
    seq_len = RS_SHAPE[seq_axis]
    lengths = data.draw(st.lists(st.integers(0, seq_len), min_size=RS_SHAPE[batch_axis],
                                 max_size=RS_SHAPE[batch_axis]), label="lengths")
    x = floats(RS_SHAPE, seed)
    expected = np.moveaxis(x.copy(), (batch_axis, seq_axis), (0, 1))  # view as [batch, seq, rest]
    for b, n in enumerate(lengths):
        expected[b, :n] = expected[b, :n][::-1]
    expected = np.moveaxis(expected, (0, 1), (batch_axis, seq_axis))
    (got,) = predict_outputs(reverse_sequence_program(case), {"x": x, "lengths": np.array(lengths, np.int32)})
    assert_close(got, expected, what=f"lengths={lengths}")


BANDS = [(0, -1), (-1, 0), (0, 0), (1, 2), (2, -1), (-1, -1)]


@functools.cache
def band_program():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4, 5)), mb.TensorSpec(shape=(4, 5), dtype=types.int32)],
                opset_version=ct.target.iOS17)
    def prog(x, n):
        return (*[mb.band_part(x=x, lower=lo, upper=up) for lo, up in BANDS], mb.band_part(x=n, lower=1, upper=0))

    mlmodel = convert_program(prog)
    assert "band_part" in op_types(mlmodel)
    return mlmodel


def band_reference(x: np.ndarray, lower: int, upper: int) -> np.ndarray:
    """Negative lower/upper keep the whole lower/upper triangle (numpy tril/triu, independent of the kernel)."""
    kept = np.tril(x, upper) if upper >= 0 else x
    return np.triu(kept, -lower) if lower >= 0 else kept


@given(seed=st.integers(0, 2**16))
def test_band_part_matches_numpy(seed):
    x = floats((2, 4, 5), seed)
    n = np.random.default_rng(seed).integers(-9, 9, (4, 5)).astype(np.int32)
    got = predict_outputs(band_program(), {"x": x, "n": n})
    expected = [band_reference(x, lo, up) for lo, up in BANDS] + [band_reference(n, 1, 0)]
    assert_outputs_close(got, expected)


@functools.cache
def range_program():
    """Start, end and step are runtime scalars (inputs are [1] vectors, squeezed)."""
    specs = [mb.TensorSpec(shape=(1,), dtype=types.int32) for _ in range(3)] + [mb.TensorSpec(shape=(1,))
                                                                                 for _ in range(3)]

    @mb.program(input_specs=specs, opset_version=ct.target.iOS17)
    def prog(i_start, i_end, i_step, f_start, f_end, f_step):
        i_start, i_end, i_step, f_start, f_end, f_step = (mb.squeeze(x=v) for v in
                                                          (i_start, i_end, i_step, f_start, f_end, f_step))
        return mb.range_1d(start=i_start, end=i_end, step=i_step), mb.range_1d(start=f_start, end=f_end, step=f_step)

    mlmodel = convert_program(prog)
    assert op_types(mlmodel).count("range_1d") == 2
    return mlmodel


# The end is drawn as a distance from the start in the step's direction: drawn independently, three draws in
# four gave an empty range, which assume() discarded until hypothesis's filter_too_much health check failed.
@given(start=st.integers(-10, 10), span=st.integers(1, 20), step=st.sampled_from([-3, -1, 1, 2]),
       fstart=st.floats(-5, 5, width=32), fspan=st.floats(0.125, 10, width=32),
       fstep=st.sampled_from([-0.7, -0.25, 0.3, 1.5]))
def test_range_1d_matches_numpy(start, span, step, fstart, fspan, fstep):
    end = start + span if step > 0 else start - span
    fend = float(np.float32(fstart + fspan if fstep > 0 else fstart - fspan))
    ints_expected = np.arange(start, end, step)
    floats_expected = np.arange(np.float64(fstart), np.float64(fend), np.float64(np.float32(fstep))).astype(np.float32)
    assume(ints_expected.size > 0 and floats_expected.size > 0)  # Core ML cannot hold empty tensors
    feeds = {"i_start": start, "i_end": end, "i_step": step, "f_start": fstart, "f_end": fend, "f_step": fstep}
    feeds = {k: np.array([v], np.int32 if k.startswith("i_") else np.float32) for k, v in feeds.items()}
    got_ints, got_floats = predict_outputs(range_program(), feeds)
    assert_close(got_ints, ints_expected.astype(np.int32))
    assert_close(got_floats, floats_expected)


@functools.cache
def fill_one_hot_program():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3)), mb.TensorSpec(shape=(2, 3), dtype=types.int32),
                             mb.TensorSpec(shape=(1,), dtype=types.int32)], opset_version=ct.target.iOS17)
    def prog(x, labels, depth):
        return (mb.fill_like(ref_tensor=x, value=3), mb.fill_like(ref_tensor=labels, value=True),
                mb.one_hot(indices=labels, one_hot_vector_size=mb.squeeze(x=depth), axis=0, on_value=2.5,
                           off_value=-1.0),
                mb.one_hot(indices=labels, one_hot_vector_size=6),
                mb.add(x=mb.identity(x=x), y=1.0))

    mlmodel = convert_program(prog)
    assert {"fill_like", "one_hot"} <= set(op_types(mlmodel))
    return mlmodel


@given(depth=st.integers(4, 6), seed=st.integers(0, 2**16))
def test_fill_like_one_hot_identity_match_numpy(depth, seed):
    x = floats((2, 3), seed)
    labels = np.random.default_rng(seed).integers(0, 4, (2, 3)).astype(np.int32)
    got = predict_outputs(fill_one_hot_program(), {"x": x, "labels": labels, "depth": np.array([depth], np.int32)})
    hot = np.eye(depth, dtype=bool)[labels]  # [2, 3, depth]
    expected = [np.full((2, 3), 3, np.int32), np.ones((2, 3), bool),
                np.moveaxis(np.where(hot, 2.5, -1.0), -1, 0).astype(np.float32),
                np.eye(6, dtype=np.int32)[labels], x + 1.0]
    assert_outputs_close(got, expected)


@functools.cache
def sorting_program(opset: str):
    @mb.program(input_specs=[mb.TensorSpec(shape=(4, 6))], opset_version=getattr(ct.target, opset))
    def prog(x):
        values, indices = mb.topk(x=x, k=2, axis=0, ascending=True)
        largest = mb.topk(x=x, k=3, return_indices=False)  # iOS16+: values only
        return values, indices, largest, mb.argsort(x=x, axis=0, ascending=True), mb.argsort(x=x)

    mlmodel = convert_program(prog, opset)
    assert {"topk", "argsort"} <= set(op_types(mlmodel))
    return mlmodel


@pytest.mark.parametrize("opset", ["iOS16", "iOS17"])
@given(seed=st.integers(0, 2**16))
def test_topk_argsort_options_match_numpy(opset, seed):
    x = distinct((4, 6), seed)
    got = predict_outputs(sorting_program(opset), {"x": x})
    up0 = np.argsort(x, axis=0, kind="stable")
    down1 = np.argsort(-x, axis=-1, kind="stable")
    expected = [np.take_along_axis(x, up0[:2], axis=0), up0[:2], np.take_along_axis(x, down1[:, :3], axis=-1),
                up0, down1]
    assert_outputs_close(got, expected)


def test_argsort_ties_keep_input_order():
    """Equal keys (common after fp16 rounding) come out lowest index first, in both directions."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 6))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.argsort(x=x), mb.argsort(x=x, ascending=True), mb.topk(x=x, k=4)[1]

    x = np.array([[1.0, 2.0, 1.0, 2.0, 0.5, 1.0]], np.float32)
    down, up, top = predict_outputs(convert_program(prog), {"x": x})
    np.testing.assert_array_equal(down, [[1, 3, 0, 2, 5, 4]])
    np.testing.assert_array_equal(up, [[4, 0, 2, 5, 1, 3]])
    np.testing.assert_array_equal(top, [[1, 3, 0, 2]])


@functools.cache
def cumsum_program():
    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 5)), mb.TensorSpec(shape=(3, 5), dtype=types.int32)],
                opset_version=ct.target.iOS17)
    def prog(x, n):
        flags = [(False, False), (True, False), (False, True), (True, True)]
        return (*[mb.cumsum(x=x, axis=1, exclusive=e, reverse=r) for e, r in flags], mb.cumsum(x=x),  # axis 0
                mb.cumsum(x=n, axis=-1, exclusive=True, reverse=True))

    mlmodel = convert_program(prog)
    assert op_types(mlmodel).count("cumsum") == 6
    return mlmodel


def cumsum_reference(x: np.ndarray, axis: int, exclusive: bool, reverse: bool) -> np.ndarray:
    y = np.flip(x, axis) if reverse else x
    out = np.cumsum(y, axis=axis, dtype=np.float64 if x.dtype.kind == "f" else np.int64)
    if exclusive:
        out = np.concatenate([np.zeros_like(np.take(out, [0], axis)), np.delete(out, -1, axis)], axis)
    return (np.flip(out, axis) if reverse else out).astype(x.dtype)


@given(seed=st.integers(0, 2**16))
def test_cumsum_exclusive_reverse_match_numpy(seed):
    x = floats((3, 5), seed)
    n = np.random.default_rng(seed).integers(-5, 5, (3, 5)).astype(np.int32)
    got = predict_outputs(cumsum_program(), {"x": x, "n": n})
    flags = [(False, False), (True, False), (False, True), (True, True)]
    expected = [cumsum_reference(x, 1, e, r) for e, r in flags] + [cumsum_reference(x, 0, False, False),
                                                                   cumsum_reference(n, 1, True, True)]
    assert_outputs_close(got, expected)


@functools.cache
def cast_program():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 8)), mb.TensorSpec(shape=(2, 8), dtype=types.int32)],
                opset_version=ct.target.iOS17)
    def prog(x, n):
        as_bool = mb.cast(x=x, dtype="bool")
        return (mb.cast(x=x, dtype="int32"), as_bool, mb.cast(x=as_bool, dtype="fp32"), mb.cast(x=n, dtype="fp16"),
                mb.cast(x=x, dtype="int16"), mb.cast(x=mb.cast(x=n, dtype="bool"), dtype="int32"))

    mlmodel = convert_program(prog)
    assert op_types(mlmodel).count("cast") >= 6
    return mlmodel


@pytest.mark.parametrize("precision", PRECISIONS)
@given(seed=st.integers(0, 2**16))
def test_cast_truncates_and_maps_bools(precision, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 8)) * 40).astype(np.float32)
    x[0, :4] = [0.0, -0.0, 2.999, -2.999]
    n = rng.integers(-5000, 5000, (2, 8)).astype(np.int32)
    n[0, 0] = 0
    got = predict_outputs(cast_program(), {"x": x, "n": n}, precision)
    expected = [np.trunc(x).astype(np.int32), x != 0, (x != 0).astype(np.float32),
                n.astype(np.float16) if precision == "fp16" else n.astype(np.float32),  # fp16 rounding emulated
                np.trunc(x).astype(np.int16), (n != 0).astype(np.int32)]
    assert_outputs_close(got, expected)
    assert got[3].dtype == (np.float16 if precision == "fp16" else np.float32)


# ---- non_maximum_suppression ----------------------------------------------------------------------------
N_BOXES, N_CLASSES, MAX_BOXES, IOU, SCORE_MIN = 7, 2, 4, 0.3, 0.2


def nms_reference(boxes: np.ndarray, scores: np.ndarray, score_min: float | None, per_class: bool):
    """Greedy NMS on one batch: boxes [B, 4] (center x, center y, w, h), scores [B, K]; returns kept indices."""
    best, cls = scores.max(-1), scores.argmax(-1)
    x0, x1 = boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 0] + boxes[:, 2] / 2
    y0, y1 = boxes[:, 1] - boxes[:, 3] / 2, boxes[:, 1] + boxes[:, 3] / 2
    kept: list[int] = []
    for i in sorted(range(len(best)), key=lambda k: (-best[k], k)):
        if len(kept) == MAX_BOXES or (score_min is not None and best[i] < score_min):
            continue
        suppressed = False
        for j in kept:
            inter = max(0.0, min(x1[i], x1[j]) - max(x0[i], x0[j])) * max(0.0, min(y1[i], y1[j]) - max(y0[i], y0[j]))
            union = boxes[i, 2] * boxes[i, 3] + boxes[j, 2] * boxes[j, 3] - inter
            if inter / union > IOU and (not per_class or cls[i] == cls[j]):
                suppressed = True
        if not suppressed:
            kept.append(i)
    if not kept and score_min is not None:
        kept = [int(np.argmax(best))]  # Core ML keeps the best box even below the score threshold
    return kept


@functools.cache
def nms_program(opset: str, per_class: bool):
    if opset == "iOS15":
        @mb.program(input_specs=[mb.TensorSpec(shape=(2, N_BOXES, 4)), mb.TensorSpec(shape=(2, N_BOXES, N_CLASSES))],
                    opset_version=ct.target.iOS15)
        def prog(boxes, scores):
            return mb.non_maximum_suppression(boxes=boxes, scores=scores, iou_threshold=IOU, score_threshold=SCORE_MIN,
                                              max_boxes=MAX_BOXES, per_class_suppression=per_class)
    else:
        @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4, N_BOXES)), mb.TensorSpec(shape=(2, N_CLASSES, N_BOXES))],
                    opset_version=ct.target.iOS17)
        def prog(boxes, scores):
            return mb.non_maximum_suppression(boxes=boxes, scores=scores, iou_threshold=IOU, max_boxes=MAX_BOXES,
                                              per_class_suppression=per_class)

    mlmodel = convert_program(prog, opset)
    assert "non_maximum_suppression" in op_types(mlmodel)
    return mlmodel


@pytest.mark.parametrize("per_class", [False, True], ids=["all-classes", "per-class"])
@pytest.mark.parametrize("opset", ["iOS15", "iOS17"])
@given(seed=st.integers(0, 2**16))
def test_non_maximum_suppression_matches_greedy_reference(opset, per_class, seed):
    rng = np.random.default_rng(seed)
    boxes = np.concatenate([rng.uniform(0, 3, (2, N_BOXES, 2)), rng.uniform(0.5, 2, (2, N_BOXES, 2))], -1)
    boxes = boxes.astype(np.float32)
    scores = (rng.permutation(2 * N_BOXES * N_CLASSES).reshape(2, N_BOXES, N_CLASSES) / (2 * N_BOXES * N_CLASSES))
    scores = (scores * 0.3).astype(np.float32)  # distinct, about a third above SCORE_MIN
    ios15 = opset == "iOS15"
    feeds = {"boxes": boxes, "scores": scores} if ios15 else \
        {"boxes": boxes.transpose(0, 2, 1).copy(), "scores": scores.transpose(0, 2, 1).copy()}
    got = predict_outputs(nms_program(opset, per_class), feeds)
    out_boxes, out_scores, out_indices = got[:3]
    if not ios15:
        out_boxes, out_scores = out_boxes.transpose(0, 2, 1), out_scores.transpose(0, 2, 1)
    for b in range(2):
        kept = nms_reference(boxes[b], scores[b], SCORE_MIN if ios15 else None, per_class)
        expected_indices = np.full(MAX_BOXES, -1)
        expected_indices[:len(kept)] = kept
        np.testing.assert_array_equal(out_indices[b], expected_indices, err_msg=f"batch {b}")
        assert_close(out_boxes[b, :len(kept)], boxes[b, kept])
        assert_close(out_scores[b, :len(kept)], scores[b, kept])
        assert not out_boxes[b, len(kept):].any() and not out_scores[b, len(kept):].any()  # zero padding
        if ios15:
            assert got[3][b] == len(kept)
