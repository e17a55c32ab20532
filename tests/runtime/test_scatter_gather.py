"""Scatter/gather kernels and ``slice_update``: torch modules that emit them, and MIL builder programs for the
modes and arguments torch never emits (scatter modes sub/mul/div/max/min, ``batch_dims``, negative indices),
checked against numpy references written here, loop by loop, from the MIL spec."""

from __future__ import annotations

import functools
import warnings

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types
from hypothesis import assume, given, strategies as st

from conversions.runtime import load_model
from conversions.runtime.mil.executor import RuntimeOpError
from conversions.testing import assert_matches_torch, convert_module, op_types

PRECISIONS = ["fp32", "fp16"]
TARGETS = ["iOS17", "iOS18"]
SEEDS = st.integers(0, 2**16)


# ---- torch modules ---------------------------------------------------------------------------------------
class Embedding(torch.nn.Module):
    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.table = torch.nn.Embedding(vocab, dim)

    def forward(self, tokens):
        return self.table(tokens)


class Gather(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x, index):
        return torch.gather(x, self.dim, index)


class IndexSelect(Gather):
    def forward(self, x, index):
        return torch.index_select(x, self.dim, index)


class Scatter(torch.nn.Module):
    def __init__(self, dim: int, kind: str):
        super().__init__()
        self.dim, self.kind = dim, kind

    def forward(self, x, index, src):
        if self.kind == "scatter_":
            return x.clone().scatter_(self.dim, index, src)
        if self.kind == "scatter_add_":
            return x.clone().scatter_add_(self.dim, index, src)
        return x.scatter(self.dim, index, src, reduce="multiply")


class SliceAssign(torch.nn.Module):
    def __init__(self, index: tuple):
        super().__init__()
        self.index = index

    def forward(self, x, y):
        x = x.clone()
        x[self.index] = y
        return x


class AdvancedIndex(torch.nn.Module):
    def forward(self, x, i, j):
        return x[i, j]


class IndexPut(torch.nn.Module):
    def __init__(self, accumulate: bool):
        super().__init__()
        self.accumulate = accumulate

    def forward(self, x, i, v):
        return x.index_put((i,), v, accumulate=self.accumulate)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(vocab=st.integers(2, 40), dim=st.integers(1, 16), batch=st.integers(1, 3), steps=st.integers(1, 10),
       seed=SEEDS)
def test_embedding_lookup(precision, vocab, dim, batch, steps, seed):
    torch.manual_seed(seed)
    module = Embedding(vocab, dim)
    assert_matches_torch(module, [torch.randint(0, vocab, (batch, steps))], precision=precision)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), data=st.data(), seed=SEEDS)
def test_torch_gather(precision, shape, data, seed):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    index_shape = list(shape)
    index_shape[dim] = data.draw(st.integers(1, 7), label="picks")
    torch.manual_seed(seed)
    x, index = torch.randn(shape), torch.randint(0, shape[dim], index_shape)
    assert_matches_torch(Gather(dim), [x, index], precision=precision)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), data=st.data(), seed=SEEDS)
def test_index_select(precision, shape, data, seed):
    dim = data.draw(st.integers(0, len(shape) - 1), label="dim")
    picks = data.draw(st.integers(1, 8), label="picks")
    torch.manual_seed(seed)
    x, index = torch.randn(shape), torch.randint(0, shape[dim], (picks,))
    assert_matches_torch(IndexSelect(dim), [x, index], precision=precision)


@pytest.mark.parametrize("kind", ["scatter_", "scatter_add_", "scatter_reduce_multiply"])
@pytest.mark.parametrize("precision", PRECISIONS)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data(), seed=SEEDS)
def test_torch_scatter(precision, kind, shape, data, seed):
    dim = data.draw(st.integers(0, len(shape) - 1), label="dim")
    torch.manual_seed(seed)
    x = torch.randn(shape)
    if kind == "scatter_":
        # Overwriting one element twice leaves the winner unspecified (torch and MIL alike): unique targets.
        picks = data.draw(st.integers(1, shape[dim]), label="picks")
        index = torch.argsort(torch.rand(shape), dim=dim).narrow(dim, 0, picks)
    else:
        index_shape = list(shape)
        index_shape[dim] = data.draw(st.integers(1, 7), label="picks")
        index = torch.randint(0, shape[dim], index_shape)
    src = torch.randn(index.shape)
    assert_matches_torch(Scatter(dim, kind), [x, index, src], precision=precision)


_SLICE_PARTS = st.one_of(
    st.just(slice(None)),
    st.builds(slice, st.one_of(st.none(), st.integers(-6, 5)), st.one_of(st.none(), st.integers(-6, 6)),
              st.sampled_from([None, 1, 2, 3])),
    st.integers(-6, 5),
)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("precision", PRECISIONS)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), data=st.data(), seed=SEEDS)
def test_slice_assignment(precision, target, shape, data, seed):
    parts = []
    for size in shape:
        part = data.draw(_SLICE_PARTS, label="part")
        if isinstance(part, int):
            assume(-size <= part < size)
        parts.append(part)
    index = tuple(parts)
    assume(any(isinstance(p, slice) for p in index) and any(p != slice(None) for p in index))
    torch.manual_seed(seed)
    x = torch.randn(shape)
    target_shape = x[index].shape
    assume(0 not in target_shape)
    assert_matches_torch(SliceAssign(index), [x, torch.randn(target_shape)], precision=precision, target=target)


def test_slice_assignment_lowers_to_scatter_then_slice_update():
    x, y = torch.randn(3, 8), torch.randn(3, 3)
    assert "scatter" in op_types(convert_module(SliceAssign((slice(None), slice(2, 5))), [x, y], target="iOS17"))
    assert "slice_update" in op_types(convert_module(SliceAssign((slice(None), slice(2, 5))), [x, y], target="iOS18"))


@pytest.mark.parametrize("precision", PRECISIONS)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), picks=st.integers(1, 6), seed=SEEDS)
def test_advanced_indexing_with_negative_indices(precision, shape, picks, seed):
    torch.manual_seed(seed)
    x = torch.randn(shape)
    i = torch.randint(-shape[0], shape[0], (picks,))
    j = torch.randint(-shape[1], shape[1], (picks,))
    assert_matches_torch(AdvancedIndex(), [x, i, j], precision=precision)


@pytest.mark.parametrize("accumulate", [False, True], ids=["index_put", "index_put_accumulate"])
@pytest.mark.parametrize("precision", PRECISIONS)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data(), seed=SEEDS)
def test_index_put(precision, accumulate, shape, data, seed):
    torch.manual_seed(seed)
    rows = shape[0]
    if accumulate:
        i = torch.randint(-rows, rows, (data.draw(st.integers(1, 6), label="picks"),))
    else:  # unique rows: which of two overwrites wins is unspecified
        picks = data.draw(st.integers(1, rows), label="picks")
        i = torch.randperm(rows)[:picks] - rows * torch.randint(0, 2, (picks,))  # some negative
    v = torch.randn(len(i), *shape[1:])
    assert_matches_torch(IndexPut(accumulate), [torch.randn(shape), i, v], precision=precision)


def test_torch_modules_emit_the_ops():
    x, i2 = torch.randn(4, 5), torch.randint(0, 4, (4, 5))
    i1 = torch.tensor([0, 2])
    assert "gather" in op_types(convert_module(Embedding(5, 3), [i1]))
    assert "gather_along_axis" in op_types(convert_module(Gather(0), [x, i2]))
    assert "scatter_along_axis" in op_types(convert_module(Scatter(0, "scatter_add_"), [x, i2, x]))
    assert "gather_nd" in op_types(convert_module(AdvancedIndex(), [x, i1, i1]))
    assert "scatter_nd" in op_types(convert_module(IndexPut(True), [x, i1, torch.randn(2, 5)]))


# ---- MIL builder programs --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _compiled(builder, opset: str, specs: tuple, *attrs):
    """A builder program ``builder(*inputs, *attrs)`` over inputs ``specs`` ((shape, dtype) pairs), converted
    with fp32 compute precision and no graph passes (the program holds exactly the ops built: no folding, no
    index guards), loaded on the runtime in fp32. Cached: hypothesis mostly varies values only."""
    target = getattr(ct.target, opset)
    tensor_specs = [mb.TensorSpec(shape=shape, dtype=dtype) for shape, dtype in specs]

    # mb.program names inputs after the function's positional parameters: spell them out.
    body = {
        1: lambda a: builder(a, *attrs),
        2: lambda a, b: builder(a, b, *attrs),
        3: lambda a, b, c: builder(a, b, c, *attrs),
        4: lambda a, b, c, d: builder(a, b, c, d, *attrs),
        5: lambda a, b, c, d, e: builder(a, b, c, d, e, *attrs),
    }[len(specs)]
    prog = mb.program(input_specs=tensor_specs, opset_version=target)(body)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target,
                             compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY)
    return load_model(mlmodel, backend="mil", precision="fp32")


def run_builder(builder, opset, feeds: list[np.ndarray], *attrs, expect_op: str | None = None):
    """The program's output (a list if it has several) for ``feeds``."""
    specs = tuple((a.shape, types.int32 if a.dtype.kind == "i" else types.fp32) for a in feeds)
    model = _compiled(builder, opset, specs, *attrs)
    if expect_op is not None:
        assert expect_op in [op.op_type for op in model.function.operations]
    outs = list(model.predict({spec.name: a for spec, a in zip(model.inputs, feeds)}).values())
    return outs[0] if len(outs) == 1 else outs


# References: one element (or slice) at a time, in the order the spec states the updates.
COMBINE = {
    "update": lambda old, new: new,
    "add": lambda old, new: old + new,
    "sub": lambda old, new: old - new,
    "mul": lambda old, new: old * new,
    "div": lambda old, new: old / new,
    "max": np.maximum,
    "min": np.minimum,
}
MODES = list(COMBINE)


def ref_scatter(data, indices, updates, axis, mode):
    """Indices of any rank: ``updates`` has dims ``data.shape[:axis] + indices.shape + data.shape[axis+1:]``
    (coremltools' type inference), and the slice at index position ``pos`` goes to ``indices[pos]``."""
    out = data.copy()
    for pos in np.ndindex(indices.shape):
        dst = (slice(None),) * axis + (indices[pos],)
        src = (slice(None),) * axis + pos
        out[dst] = COMBINE[mode](out[dst], updates[src])
    return out


def ref_scatter_along_axis(data, indices, updates, axis, mode):
    out = data.copy()
    for pos in np.ndindex(indices.shape):
        dst = pos[:axis] + (indices[pos],) + pos[axis + 1:]
        out[dst] = COMBINE[mode](out[dst], updates[pos])
    return out


def ref_scatter_nd(data, indices, updates, mode):
    out = data.copy()
    for pos in np.ndindex(indices.shape[:-1]):
        dst = tuple(indices[pos])
        out[dst] = COMBINE[mode](out[dst], updates[pos])
    return out


def ref_gather(x, indices, axis, batch_dims):
    batch = x.shape[:batch_dims]
    out = np.empty(x.shape[:axis] + indices.shape[batch_dims:] + x.shape[axis + 1:], x.dtype)
    for b in np.ndindex(batch):
        out[b] = np.take(x[b], indices[b], axis=axis - batch_dims)  # np.take wraps negative indices
    return out


def ref_gather_nd(x, indices, batch_dims):
    out = np.empty(indices.shape[:-1] + x.shape[batch_dims + indices.shape[-1]:], x.dtype)
    for pos in np.ndindex(indices.shape[:-1]):
        out[pos] = x[pos[:batch_dims] + tuple(indices[pos])]
    return out


def _values(rng, shape, positive_magnitude=False):
    """Test values; with ``positive_magnitude``, magnitudes in [0.5, 2] so that quotients/products stay tame."""
    if positive_magnitude:
        return (rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], shape)).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


# Dividing by the product of several updates vs dividing by each in turn differs by a few ulp.
SCATTER_TOL = dict(rtol=1e-5, atol=1e-6)


def _scatter_program(data, indices, updates, axis, mode):
    return mb.scatter(data=data, indices=indices, updates=updates, axis=axis, mode=mode)


def _every_mode(op):
    """A builder with one ``op`` per scatter mode. ``update`` gets its own indices without repeats (which of
    several updates to one element wins is unspecified); the other modes share indices that may repeat."""
    def build(data, indices, updates, unique_indices, unique_updates, *attrs):
        outs = [op(data, unique_indices, unique_updates, *attrs, "update")]
        return tuple(outs + [op(data, indices, updates, *attrs, mode) for mode in MODES[1:]])

    return build


SCATTER_EVERY_MODE = _every_mode(_scatter_program)
SCATTER_ALONG_AXIS_EVERY_MODE = _every_mode(
    lambda data, indices, updates, axis, mode:
        mb.scatter_along_axis(data=data, indices=indices, updates=updates, axis=axis, mode=mode))
SCATTER_ND_EVERY_MODE = _every_mode(
    lambda data, indices, updates, mode: mb.scatter_nd(data=data, indices=indices, updates=updates, mode=mode))


# Negative indices are defined up to iOS16; from iOS17 on they are out of bounds, so only iOS15/16 programs
# get them (each family is checked on one older and one newer opset).
def _opsets(old: str, new: str):
    return pytest.mark.parametrize("opset,negative", [(old, True), (new, False)],
                                   ids=[f"{old}-negative-indices", new])


def _some_negative(rng, indices, sizes):
    """The same positions, about half of them spelled as negative indices."""
    return (indices - np.asarray(sizes, np.int32) * rng.integers(0, 2, indices.shape)).astype(np.int32)


def _check_every_mode(got, reference):
    for mode, out in zip(MODES, got, strict=True):
        np.testing.assert_allclose(out, reference(mode), err_msg=f"mode {mode!r}", **SCATTER_TOL)


def _unique_index_shape(data, size: int, rank: int) -> tuple:
    """An index shape of ``rank`` dims holding at most ``size`` positions (room for distinct indices)."""
    dims, room = [], size
    for _ in range(rank):
        dims.append(data.draw(st.integers(1, room), label="unique dim"))
        room //= dims[-1]
    return tuple(dims)


@_opsets("iOS15", "iOS17")
@pytest.mark.parametrize("index_rank", [1, 2, 3])
@given(shape=st.sampled_from([(5,), (4, 3), (2, 3, 4)]), data=st.data(), seed=SEEDS)
def test_scatter_modes(opset, negative, index_rank, shape, data, seed):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    size = shape[axis]
    index_shape = tuple(data.draw(st.lists(st.sampled_from([1, 2, 3]), min_size=index_rank - 1,
                                           max_size=index_rank - 1), label="index dims"))
    index_shape += (data.draw(st.sampled_from([1, 3, 6]), label="picks"),)
    indices = rng.integers(0, size, index_shape).astype(np.int32)
    unique_shape = _unique_index_shape(data, size, index_rank)
    unique = rng.permutation(size)[: int(np.prod(unique_shape))].reshape(unique_shape).astype(np.int32)

    def updates_for(idx):
        a = axis % len(shape)
        return _values(rng, shape[:a] + idx.shape + shape[a + 1:], positive_magnitude=True)

    x, updates, unique_updates = _values(rng, shape), updates_for(indices), updates_for(unique)
    feeds = [x, indices, updates, unique, unique_updates]
    if negative:
        feeds[1], feeds[3] = _some_negative(rng, indices, size), _some_negative(rng, unique, size)
    got = run_builder(SCATTER_EVERY_MODE, opset, feeds, axis, expect_op="scatter")
    axis %= len(shape)
    _check_every_mode(got, lambda mode: ref_scatter(x, unique, unique_updates, axis, mode) if mode == "update"
                      else ref_scatter(x, indices, updates, axis, mode))


@_opsets("iOS16", "iOS18")
@given(shape=st.sampled_from([(6,), (3, 4), (2, 3, 4)]), data=st.data(), seed=SEEDS)
def test_scatter_along_axis_modes(opset, negative, shape, data, seed):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    size = shape[axis]
    index_shape = list(shape)
    index_shape[axis] = data.draw(st.sampled_from([1, 3, 6]), label="picks")
    indices = rng.integers(0, size, index_shape).astype(np.int32)
    picks = data.draw(st.integers(1, size), label="unique picks")  # distinct targets along each line:
    unique = np.argsort(rng.random(shape), axis=axis).take(range(picks), axis=axis).astype(np.int32)
    x = _values(rng, shape)
    updates, unique_updates = (_values(rng, i.shape, positive_magnitude=True) for i in (indices, unique))
    feeds = [x, indices, updates, unique, unique_updates]
    if negative:
        feeds[1], feeds[3] = _some_negative(rng, indices, size), _some_negative(rng, unique, size)
    got = run_builder(SCATTER_ALONG_AXIS_EVERY_MODE, opset, feeds, axis, expect_op="scatter_along_axis")
    axis %= len(shape)
    _check_every_mode(got, lambda mode: ref_scatter_along_axis(x, unique, unique_updates, axis, mode)
                      if mode == "update" else ref_scatter_along_axis(x, indices, updates, axis, mode))


@_opsets("iOS16", "iOS17")
@given(shape=st.sampled_from([(6,), (3, 4), (2, 3, 4)]), data=st.data(), seed=SEEDS)
def test_scatter_nd_modes(opset, negative, shape, data, seed):
    rng = np.random.default_rng(seed)
    depth = data.draw(st.integers(1, len(shape)), label="depth")
    lead = shape[:depth]
    count = int(np.prod(lead))

    def as_indices(flat):
        return np.stack(np.unravel_index(flat, lead), axis=-1).astype(np.int32)

    indices = as_indices(rng.integers(0, count, data.draw(st.sampled_from([1, 3, 6]), label="picks")))
    unique = as_indices(rng.permutation(count)[: data.draw(st.integers(1, min(count, 4)), label="unique picks")])
    x = _values(rng, shape)
    updates, unique_updates = (_values(rng, i.shape[:-1] + shape[depth:], positive_magnitude=True)
                               for i in (indices, unique))
    feeds = [x, indices, updates, unique, unique_updates]
    if negative:
        feeds[1], feeds[3] = _some_negative(rng, indices, lead), _some_negative(rng, unique, lead)
    got = run_builder(SCATTER_ND_EVERY_MODE, opset, feeds, expect_op="scatter_nd")
    _check_every_mode(got, lambda mode: ref_scatter_nd(x, unique, unique_updates, mode) if mode == "update"
                      else ref_scatter_nd(x, indices, updates, mode))


def test_scatter_on_int32_data():
    data = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    indices = np.array([1, 0, 1], np.int32)
    updates = np.array([[5, 6, 7], [8, 9, 10], [-20, 0, 7]], np.int32)
    for mode in ("add", "sub", "mul", "max", "min", "update"):
        if mode == "update":
            indices, updates = indices[:2], updates[:2]
        got = run_builder(_scatter_program, "iOS17", [data, indices, updates], 0, mode)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, ref_scatter(data, indices, updates, 0, mode), err_msg=mode)
    # The spec's own example.
    got = run_builder(_scatter_program, "iOS17", [data, np.array([1, 0], np.int32), updates[:2]], 0, "add")
    np.testing.assert_array_equal(got, [[9, 11, 13], [9, 11, 13]])


@pytest.mark.parametrize("opset", ["iOS15", "iOS17"])
def test_scatter_with_2d_indices(opset):
    # The independent check's case: indices of rank 2 address rows of a 3x2 `data`; `updates` has shape
    # indices.shape + data.shape[1:] = (2, 2, 2). Row 2 is hit twice (positions (0, 1) and (1, 0)).
    data = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    indices = np.array([[0, 2], [2, 1]], np.int32)
    updates = np.array([[[10, 20], [30, 40]], [[50, 60], [70, 80]]], np.float32)
    got = run_builder(_scatter_program, opset, [data, indices, updates], 0, "add", expect_op="scatter")
    np.testing.assert_array_equal(got, [[11, 22], [73, 84], [85, 106]])
    got = run_builder(_scatter_program, opset, [data, indices, updates], 0, "max")
    np.testing.assert_array_equal(got, [[10, 20], [70, 80], [50, 60]])
    # Along axis 1 of a 2x3 `data`: updates (2,) + (2, 2) + () = (2, 2, 2), distinct targets for `update`.
    data = np.zeros((2, 3), np.float32)
    indices = np.array([[2, 0]], np.int32)
    updates = np.array([[[1, 2]], [[3, 4]]], np.float32)
    got = run_builder(_scatter_program, opset, [data, indices, updates], 1, "update")
    np.testing.assert_array_equal(got, [[2, 0, 1], [4, 0, 3]])


# iOS15: negative indices, no batch_dims; iOS16: both; iOS17: batch_dims, indices in [0, size).
GATHER_OPSETS = pytest.mark.parametrize("opset,negative", [("iOS15", True), ("iOS16", True), ("iOS17", False)],
                                        ids=["iOS15-negative-indices", "iOS16-negative-indices", "iOS17"])


def _gather_program(x, indices, axis, batch_dims):
    if batch_dims is None:  # iOS15 has no batch_dims input
        return mb.gather(x=x, indices=indices, axis=axis)
    return mb.gather(x=x, indices=indices, axis=axis, batch_dims=batch_dims)


def _gather_nd_program(x, indices, batch_dims):
    if batch_dims is None:
        return mb.gather_nd(x=x, indices=indices)
    return mb.gather_nd(x=x, indices=indices, batch_dims=batch_dims)


def _gather_along_axis_program(x, indices, axis):
    return mb.gather_along_axis(x=x, indices=indices, axis=axis)


@GATHER_OPSETS
@given(shape=st.sampled_from([(5,), (3, 4), (2, 3, 4), (2, 3, 2, 3)]), data=st.data(), seed=SEEDS)
def test_gather_axis_and_batch_dims(opset, negative, shape, data, seed):
    rng = np.random.default_rng(seed)
    rank = len(shape)
    batch_dims = 0 if opset == "iOS15" else data.draw(st.integers(0, rank - 1), label="batch_dims")
    axis = data.draw(st.integers(batch_dims, rank - 1), label="axis")
    tail = tuple(data.draw(st.lists(st.integers(1, 4), max_size=2), label="index dims"))
    indices = rng.integers(0, shape[axis], shape[:batch_dims] + tail).astype(np.int32)
    if negative:
        indices = indices - shape[axis] * rng.integers(0, 2, indices.shape).astype(np.int32)
    if indices.ndim == 0:
        indices = indices.reshape(1)
    x = _values(rng, shape)
    neg_axis = data.draw(st.booleans(), label="negative axis")
    got = run_builder(_gather_program, opset, [x, indices], axis - rank if neg_axis else axis,
                      None if opset == "iOS15" else batch_dims, expect_op="gather")
    np.testing.assert_array_equal(got, ref_gather(x, indices, axis, batch_dims))


def test_gather_with_scalar_constant_index_drops_the_axis():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)

    def builder(x):
        return mb.gather(x=x, indices=np.int32(-2), axis=1)

    got = run_builder(builder, "iOS16", [x])
    np.testing.assert_array_equal(got, x[:, 1, :])


@GATHER_OPSETS
@given(shape=st.sampled_from([(5,), (3, 4), (2, 3, 4), (2, 3, 2, 3)]), data=st.data(), seed=SEEDS)
def test_gather_nd_and_batch_dims(opset, negative, shape, data, seed):
    rng = np.random.default_rng(seed)
    rank = len(shape)
    batch_dims = 0 if opset == "iOS15" else data.draw(st.integers(0, rank - 1), label="batch_dims")
    depth = data.draw(st.integers(1, rank - batch_dims), label="depth")
    middle = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2), label="index dims"))
    sizes = np.array(shape[batch_dims:batch_dims + depth], dtype=np.int32)
    indices = (rng.random(shape[:batch_dims] + middle + (depth,)) * sizes).astype(np.int32)
    if negative:
        indices = indices - sizes * rng.integers(0, 2, indices.shape).astype(np.int32)
    x = _values(rng, shape)
    got = run_builder(_gather_nd_program, opset, [x, indices], None if opset == "iOS15" else batch_dims,
                      expect_op="gather_nd")
    np.testing.assert_array_equal(got, ref_gather_nd(x, indices, batch_dims))


@_opsets("iOS15", "iOS17")
@given(shape=st.sampled_from([(5,), (3, 4), (2, 3, 4)]), data=st.data(), seed=SEEDS)
def test_gather_along_axis(opset, negative, shape, data, seed):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    index_shape = list(shape)
    index_shape[axis] = data.draw(st.sampled_from([1, 4, 7]), label="picks")
    indices = rng.integers(0, shape[axis], index_shape).astype(np.int32)
    if negative:
        indices = indices - shape[axis] * rng.integers(0, 2, indices.shape).astype(np.int32)
    x = _values(rng, shape)
    got = run_builder(_gather_along_axis_program, opset, [x, indices], axis, expect_op="gather_along_axis")
    np.testing.assert_array_equal(got, np.take_along_axis(x, indices, axis))


def test_gather_on_int32_data():
    x = np.array([[10, 20, 30], [40, 50, 60]], np.int32)
    got = run_builder(_gather_program, "iOS17", [x, np.array([2, 0, 2], np.int32)], 1, 0)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [[30, 10, 30], [60, 40, 60]])


# slice_update: begin/end as program inputs (as torch's frontend emits them), stride and masks constant.
def _slice_update_program(x, update, begin, end, stride, begin_mask, end_mask, squeeze_mask):
    return mb.slice_update(x=x, update=update, begin=begin, end=end, stride=np.array(stride, np.int32),
                           begin_mask=np.array(begin_mask), end_mask=np.array(end_mask),
                           squeeze_mask=np.array(squeeze_mask))


@given(shape=st.sampled_from([(6,), (4, 5), (2, 3, 5)]), data=st.data(), seed=SEEDS)
def test_slice_update_begin_end_stride_masks(shape, data, seed):
    rng = np.random.default_rng(seed)
    begin, end, stride, begin_mask, end_mask, squeeze_mask, index = [], [], [], [], [], [], []
    for size in shape:
        b, e = data.draw(st.integers(-size - 1, size + 1)), data.draw(st.integers(-size - 1, size + 1))
        s = data.draw(st.sampled_from([1, 2, 3, -1, -2]))
        bm, em, sq = data.draw(st.booleans()), data.draw(st.booleans()), data.draw(st.booleans())
        if sq:
            b = data.draw(st.integers(-size, size - 1))
            bm = em = False
            index.append(b)
        else:
            index.append(slice(None if bm else b, None if em else e, s))
        begin.append(b), end.append(e), stride.append(s)
        begin_mask.append(bm), end_mask.append(em), squeeze_mask.append(sq)
    x = _values(rng, shape)
    expected = x.copy()
    assume(expected[tuple(index)].ndim > 0 and expected[tuple(index)].size > 0)  # rank-0 update: not allowed
    update = _values(rng, expected[tuple(index)].shape)
    expected[tuple(index)] = update
    attrs = (tuple(stride), tuple(begin_mask), tuple(end_mask), tuple(squeeze_mask))
    got = run_builder(_slice_update_program, "iOS18",
                      [x, update, np.array(begin, np.int32), np.array(end, np.int32)], *attrs,
                      expect_op="slice_update")
    np.testing.assert_array_equal(got, expected)


def test_slice_update_without_optional_inputs():
    x = np.zeros((3, 4), np.float32)
    update = np.ones((2, 2), np.float32)

    def builder(x, update):
        return mb.slice_update(x=x, update=update, begin=np.array([1, -3], np.int32), end=np.array([5, -1], np.int32))

    expected = x.copy()
    expected[1:5, -3:-1] = update
    np.testing.assert_array_equal(run_builder(builder, "iOS18", [x, update]), expected)


# ---- errors ----------------------------------------------------------------------------------------------
def test_out_of_bounds_index_is_an_error_not_a_value():
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    with pytest.raises(RuntimeOpError, match="out of bounds"):
        run_builder(_gather_program, "iOS17", [x, np.array([0, 5], np.int32)], 1, 0)
    with pytest.raises(RuntimeOpError, match="out of bounds"):  # iOS17+: negative indices are out of bounds
        run_builder(_gather_program, "iOS17", [x, np.array([-1], np.int32)], 1, 0)
    np.testing.assert_array_equal(run_builder(_gather_program, "iOS16", [x, np.array([-1], np.int32)], 1, 0),
                                  x[:, [4]])
    with pytest.raises(RuntimeOpError, match="out of bounds"):
        run_builder(_gather_program, "iOS16", [x, np.array([-6], np.int32)], 1, 0)
    # scatter with N-D indices: iOS17 still calls a negative index out of bounds, iOS15 still wraps it.
    data, updates = np.zeros((3, 2), np.float32), np.ones((2, 2, 2), np.float32)
    indices = np.array([[0, -1], [2, 1]], np.int32)
    with pytest.raises(RuntimeOpError, match="out of bounds"):
        run_builder(_scatter_program, "iOS17", [data, indices, updates], 0, "add")
    np.testing.assert_array_equal(run_builder(_scatter_program, "iOS15", [data, indices, updates], 0, "add"),
                                  [[1, 1], [1, 1], [2, 2]])
    with pytest.raises(RuntimeOpError, match="out of bounds"):
        run_builder(SCATTER_ND_EVERY_MODE, "iOS17",
                    [x, np.array([[1, 5]], np.int32), np.ones(1, np.float32), np.array([[0, 0]], np.int32),
                     np.ones(1, np.float32)])


def test_unknown_scatter_mode_is_not_implemented():
    from conversions.runtime.mil.ops import REGISTRY

    with pytest.raises(NotImplementedError, match="'xor'"):
        REGISTRY["scatter_nd"].fn(data=torch.zeros(3), indices=torch.tensor([[1]]), updates=torch.ones(1), mode="xor")
    with pytest.raises(ValueError, match=r"'updates' must have shape .*\[2, 2, 2\].* got \[4, 2\]"):
        REGISTRY["scatter"].fn(data=torch.zeros(3, 2), indices=torch.tensor([[0, 2], [2, 1]]),
                               updates=torch.ones(4, 2), mode="add")
    with pytest.raises(NotImplementedError, match="'div' on integer"):
        REGISTRY["scatter"].fn(data=torch.zeros(3, dtype=torch.int32), indices=torch.tensor([1]),
                               updates=torch.ones(1, dtype=torch.int32), mode="div")
