"""Scatter/gather ops (MIL ``scatter_gather``) and ``slice_update`` (MIL ``tensor_transformation``, iOS18).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.scatter_gather
https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS18.tensor_transformation

Conventions shared by every kernel here:

- Negative indices: iOS15/16 count them from the end of their dimension. From iOS17 on the spec calls them out
  of bounds (coremltools guards gather/gather_nd indices with ``select(indices >= 0, indices, indices + size)``
  and the torch frontend does the same for ``index_put``). The kernels tell the opsets apart by the
  ``validate_indices`` input, which exists from iOS17 on (the builder always writes it): present means
  negative indices are out of bounds, absent means they wrap.
- Out-of-bounds indices raise ``IndexError`` (the executor reports it with the op's name). On device,
  ``validate_indices=False`` (the default) leaves them undefined-but-memory-safe; a parity runtime should
  say so rather than invent values. Beyond that, ``validate_indices`` is ignored.
- Scatter ``mode`` combines ``updates`` into ``data``: ``update`` overwrites (which of several updates to the
  same element wins is unspecified), ``add``/``sub`` add/subtract all of them, ``mul``/``div`` multiply/divide
  by all of them, ``max``/``min`` take the extremum of the original value and all of them. The builder's
  default mode is ``add`` (the iOS15 docstring says ``update``, its code says ``add``; converted programs always
  spell the mode out).

The list ops (``make_list``, ``list_read`` ...) are not here: MIL lists only carry state through ``while_loop``
bodies, which the executor does not run.
"""

from __future__ import annotations

import math

import torch

from . import register
from ._util import as_tensor, ints, norm_axis

SCATTER_MODES = ("update", "add", "sub", "mul", "div", "max", "min")


def _wrap(indices, size, validate_indices) -> torch.Tensor:
    """int64 indices checked against ``size`` (an int, or one size per entry of the last dim). Negative ones
    count from the end unless ``validate_indices`` is given (iOS17+ op: they are out of bounds)."""
    given = as_tensor(indices).long()
    size = torch.as_tensor(size, dtype=torch.long)
    idx = given if validate_indices is not None else torch.where(given < 0, given + size, given)
    bad = (idx < 0) | (idx >= size)
    if bool(bad.any()):
        rule = "[0, size)" if validate_indices is not None else "[-size, size)"
        raise IndexError(f"index {given[bad][0].item()} is out of bounds: indices must lie in {rule} with "
                         f"size {size.tolist()}")
    return idx


def _batch_grids(shape, batch_dims: int, rank: int) -> list[torch.Tensor]:
    """``arange`` over each of the first ``batch_dims`` sizes, shaped to broadcast against a rank-``rank`` index."""
    return [torch.arange(shape[k]).view([-1 if j == k else 1 for j in range(rank)]) for k in range(batch_dims)]


@register("gather")
def gather(x, indices, axis=0, batch_dims=0, validate_indices=None):
    """``out[p, i..., q] = x[p, indices[i...], q]`` along ``axis``; output ``D[:axis] + N[batch_dims:] + D[axis+1:]``.

    With ``batch_dims = b`` (iOS16+), the first ``b`` dims of ``x`` and ``indices`` are shared batch dims: each
    batch element gathers with its own indices (``axis >= b``). Rank-0 indices drop the ``axis`` dim.
    """
    x = as_tensor(x)
    axis, b = norm_axis(int(axis), x.ndim), int(batch_dims)
    idx = _wrap(indices, x.shape[axis], validate_indices)
    # Bring axis next to the batch dims, index batch dims and axis together: (*B, *N', *pre, *post) ...
    picked = x.movedim(axis, b)[(*_batch_grids(x.shape, b, idx.ndim), idx)]
    # ... then put the dims between the batch dims and axis (pre) back in front of N'.
    n_idx, n_pre = idx.ndim - b, axis - b
    perm = (list(range(b)) + [idx.ndim + j for j in range(n_pre)] + [b + j for j in range(n_idx)]
            + list(range(idx.ndim + n_pre, picked.ndim)))
    return picked.permute(perm)


@register("gather_along_axis")
def gather_along_axis(x, indices, axis=0, validate_indices=None):
    """``torch.gather``: ``out[p, i, q] = x[p, indices[p, i, q], q]``; the output has the shape of ``indices``."""
    x = as_tensor(x)
    axis = norm_axis(int(axis), x.ndim)
    return torch.gather(x, axis, _wrap(indices, x.shape[axis], validate_indices))


@register("gather_nd")
def gather_nd(x, indices, batch_dims=0, validate_indices=None):
    """``out[i...] = x[indices[i..., :]]`` (``tf.gather_nd``); output ``K[:-1] + D[batch_dims + K[-1]:]``.

    With ``batch_dims = b`` (iOS16+), the index vectors address ``x[batch..., :]`` of their own batch element.
    """
    x = as_tensor(x)
    b = int(batch_dims)
    idx = as_tensor(indices).long()
    depth = idx.shape[-1]
    if depth == 0:
        raise NotImplementedError("gather_nd with indices.shape[-1] == 0 is not supported")
    idx = _wrap(idx, list(x.shape[b:b + depth]), validate_indices)
    return x[(*_batch_grids(x.shape, b, idx.ndim - 1), *idx.unbind(-1))]


def _scatter_into(data, dim: int, index: torch.Tensor, updates, mode: str) -> torch.Tensor:
    """``data`` with ``updates`` combined in by ``mode`` where ``Tensor.scatter`` would put them (``index`` has
    the shape of ``updates``, already wrapped). Integer ``div`` is rejected: its rounding is not specified."""
    if mode not in SCATTER_MODES:
        raise NotImplementedError(f"scatter mode {mode!r} is not supported (MIL modes: {', '.join(SCATTER_MODES)})")
    data = as_tensor(data)
    updates = as_tensor(updates, like=data).to(data.dtype)
    if mode == "update":
        return data.scatter(dim, index, updates)
    if mode in ("add", "sub"):
        return data.scatter_add(dim, index, updates if mode == "add" else -updates)
    if mode == "div":
        if not data.is_floating_point():
            raise NotImplementedError("scatter mode 'div' on integer data is not supported (rounding unspecified)")
        return data / torch.ones_like(data).scatter_reduce(dim, index, updates, "prod")
    reduce = {"mul": "prod", "max": "amax", "min": "amin"}[mode]
    return data.scatter_reduce(dim, index, updates, reduce, include_self=True)


@register("scatter")
def scatter(data, indices, updates, axis=0, mode="add", validate_indices=None):
    """Combine slice ``updates[p, i..., q]`` into ``data[p, indices[i...], q]`` by ``mode``.

    The docstrings call ``indices`` 1-D, but the op's type inference (iOS15, inherited by iOS17) accepts any
    rank: ``updates`` has shape ``data.shape[:axis] + indices.shape + data.shape[axis+1:]``, and Core ML runs
    such programs. N-D indices are the 1-D case on the flattened index positions: flatten ``indices`` and the
    matching run of ``updates`` dims alike (row-major, so position ``i...`` pairs with the same flat slot).
    """
    data = as_tensor(data)
    axis = norm_axis(int(axis), data.ndim)
    given = as_tensor(indices)
    idx = _wrap(given, data.shape[axis], validate_indices).reshape(-1)
    updates = as_tensor(updates, like=data)
    expected = list(data.shape[:axis]) + list(given.shape) + list(data.shape[axis + 1:])
    if list(updates.shape) != expected:
        raise ValueError(f"scatter: input 'updates' must have shape data.shape[:axis] + indices.shape + "
                         f"data.shape[axis+1:] = {expected} (data {list(data.shape)}, indices {list(given.shape)}, "
                         f"axis {axis}), got {list(updates.shape)}")
    updates = updates.reshape(list(data.shape[:axis]) + [idx.numel()] + list(data.shape[axis + 1:]))
    shape = [1] * data.ndim
    shape[axis] = -1
    return _scatter_into(data, axis, idx.view(shape).expand(updates.shape), updates, str(mode))


@register("scatter_along_axis")
def scatter_along_axis(data, indices, updates, axis=0, mode="add", validate_indices=None):
    """Combine ``updates[p, i, q]`` into ``data[p, indices[p, i, q], q]`` by ``mode`` (``Tensor.scatter_reduce``)."""
    data = as_tensor(data)
    axis = norm_axis(int(axis), data.ndim)
    return _scatter_into(data, axis, _wrap(indices, data.shape[axis], validate_indices), updates, str(mode))


@register("scatter_nd")
def scatter_nd(data, indices, updates, mode="add", validate_indices=None):
    """Combine ``updates[i...]`` (a slice of rank ``rank(data) - K[-1]``) into ``data[indices[i..., :]]`` by ``mode``."""
    data = as_tensor(data)
    idx = as_tensor(indices).long()
    depth = idx.shape[-1]
    lead, rest = list(data.shape[:depth]), list(data.shape[depth:])
    idx = _wrap(idx, lead, validate_indices).reshape(-1, depth)
    # Address the first `depth` dims as one flat dim, and scatter along it.
    strides = [math.prod(lead[k + 1:]) for k in range(depth)]
    flat_index = (idx * torch.tensor(strides, dtype=torch.long)).sum(-1)
    flat_updates = as_tensor(updates, like=data).reshape(-1, *rest)
    index = flat_index.view([-1] + [1] * len(rest)).expand(flat_updates.shape)
    out = _scatter_into(data.reshape(math.prod(lead), *rest), 0, index, flat_updates, str(mode))
    return out.reshape(data.shape)


def _flags(mask, rank: int) -> list[bool]:
    return [False] * rank if mask is None else [bool(v) for v in ints(mask)]


@register("slice_update")
def slice_update(x, update, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    """``x[begin[0]:end[0]:stride[0], ...] = update`` on a copy of ``x``, with ``slice_by_index``'s arguments.

    Python/numpy slice semantics per dim (negative begin/end count from the end, out-of-range ones clamp, a
    masked begin/end means "from the start"/"to the end" in the stride's direction). ``squeeze_mask[i]`` picks
    the single index ``begin[i]``; ``update`` then lacks that dim.
    """
    x = as_tensor(x)
    rank = x.ndim
    begin, end = ints(begin), ints(end)
    stride = [1] * rank if stride is None else ints(stride)
    begin_mask, end_mask, squeeze_mask = (_flags(m, rank) for m in (begin_mask, end_mask, squeeze_mask))
    grids = []
    for d, size in enumerate(x.shape):
        if squeeze_mask[d]:
            positions = _wrap(begin[d], size, None).reshape(1)  # slice semantics: -1 is the last
        else:
            window = slice(None if begin_mask[d] else begin[d], None if end_mask[d] else end[d], stride[d])
            positions = torch.tensor(range(*window.indices(size)), dtype=torch.long)
        grids.append(positions.view([-1 if j == d else 1 for j in range(rank)]))
    out = x.clone()
    out[tuple(grids)] = as_tensor(update, like=x).to(x.dtype).reshape([g.numel() for g in grids])
    return out
