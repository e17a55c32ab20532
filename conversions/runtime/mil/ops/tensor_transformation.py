"""Tensor transformation ops (MIL ``tensor_transformation``): reshape, transpose, squeeze, slicing ...

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.tensor_transformation

Shape-like arguments (``shape``, ``begin``, ``end``, ``size``) may be runtime variables (int32 tensors from
``shape``/``concat`` in programs with flexible input dims) or constants; both are read with ``ints``.
"""

from __future__ import annotations

import math

import torch

from . import register, specializer
from ._util import as_tensor, ints, norm_axis, scalar


@register("reshape")
def reshape(x, shape):
    """``-1`` infers one dim; ``0`` copies a dim of ``x``, right-aligned (iOS17 rule; a ``0`` with no matching
    dim of ``x`` becomes 1). iOS15/16 only allow ``0`` when ``len(shape) == rank(x)``, where both rules agree."""
    x = as_tensor(x)
    target = ints(shape)
    offset = x.dim() - len(target)
    for i, d in enumerate(target):
        if d == 0:
            j = i + offset
            target[i] = x.shape[j] if j >= 0 else 1
    return x.reshape(target)


@register("reshape_like", variadic=("ref_tensors", "begins", "ends", "end_masks"))
def reshape_like(x, ref_tensors, begins, ends, end_masks):
    """Output shape: the concatenation of ``ref.shape[begin:end]`` (``ref.shape[begin:]`` when end_mask) per ref."""
    target: list[int] = []
    for ref, begin, end, end_mask in zip(ref_tensors, begins, ends, end_masks):
        dims = list(as_tensor(ref).shape)
        b, e = int(scalar(begin)), int(scalar(end))
        target += dims[b:] if bool(scalar(end_mask)) else dims[b:e]
    return as_tensor(x).reshape(target)


@register("expand_dims")
def expand_dims(x, axes):
    """Axes index the output (``-rank(x)-1 <= axis <= rank(x)``); they are inserted in ascending order."""
    x = as_tensor(x)
    axes = ints(axes)
    out_rank = x.dim() + len(axes)
    for axis in sorted(norm_axis(a, out_rank) for a in axes):
        x = x.unsqueeze(axis)
    return x


@register("squeeze")
def squeeze(x, axes=None):
    """Without ``axes`` every size-1 dim goes; listed axes that are not of size 1 are kept (PyTorch rule)."""
    x = as_tensor(x)
    if axes is None:
        return x.squeeze()
    rank = x.dim()
    for axis in sorted((norm_axis(a, rank) for a in ints(axes)), reverse=True):
        if x.shape[axis] == 1:
            x = x.squeeze(axis)
    return x


@register("transpose")
def transpose(x, perm):
    return as_tensor(x).permute(ints(perm))


def _forward_index(shape, begin, end, stride, begin_mask, end_mask, squeeze_mask) -> tuple[slice, ...] | None:
    """The common case of ``slice_by_index`` -- forward strides, no squeeze -- as one index tuple for ``shape``
    (None otherwise)."""
    if any(squeeze_mask) or any(s <= 0 for s in stride):
        return None
    return tuple(slice(*slice(None if begin_mask[d] else begin[d], None if end_mask[d] else end[d],
                              stride[d]).indices(shape[d])) for d in range(len(shape)))


@register("slice_by_index")
def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    """``x[begin[i]:end[i]:stride[i], ...]`` with Python/numpy rules: negative indices count from the end, bounds
    are clamped, negative strides walk backwards, and a masked begin/end means "from the start/to the end" in
    the walking direction (numpy's ``None``; the spec's "0"/"shape[i]" is the same for positive strides).
    ``squeeze_mask[i]`` picks the single element at ``begin[i]`` (0 if begin-masked) and drops the dim."""
    x = as_tensor(x)
    rank = x.dim()
    begin, end = ints(begin), ints(end)
    stride = ints(stride) if stride is not None else [1] * rank
    begin_mask = _flags(begin_mask, rank)
    end_mask = _flags(end_mask, rank)
    squeeze_mask = _flags(squeeze_mask, rank)
    index = _forward_index(x.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)
    if index is not None:
        return x[index]
    out = x
    for dim in range(rank):
        n = x.shape[dim]
        if squeeze_mask[dim]:
            index = 0 if begin_mask[dim] else begin[dim]
            out = out.narrow(dim, index + n if index < 0 else index, 1)
            continue
        start, stop, step = slice(None if begin_mask[dim] else begin[dim], None if end_mask[dim] else end[dim],
                                  stride[dim]).indices(n)
        if step > 0:
            out = out[(slice(None),) * dim + (slice(start, stop, step),)]
        else:
            count = len(range(start, stop, step))
            out = out.index_select(dim, start + step * torch.arange(count, dtype=torch.long))
    for dim in reversed(range(rank)):
        if squeeze_mask[dim]:
            out = out.squeeze(dim)
    return out


def _flags(mask, rank: int) -> list[bool]:
    if mask is None:
        return [False] * rank
    if isinstance(mask, torch.Tensor):
        return [bool(v) for v in mask.reshape(-1).tolist()]
    if isinstance(mask, (list, tuple)):
        return [bool(v) for v in mask]
    return [bool(mask)] * rank


@register("slice_by_size")
def slice_by_size(x, begin, size):
    """A negative ``begin`` counts from the end; ``size == -1`` takes everything from ``begin`` on."""
    x = as_tensor(x)
    out = x
    for dim, (b, s) in enumerate(zip(ints(begin), ints(size))):
        n = x.shape[dim]
        b = b + n if b < 0 else b
        out = out.narrow(dim, b, n - b if s == -1 else s)
    return out


@register("pixel_shuffle")
def pixel_shuffle(x, upscale_factor):
    """PyTorch's PixelShuffle ("CRD" order): ``out[n, c, h*f+i, w*f+j] = x[n, c*f*f + i*f + j, h, w]``."""
    return torch.nn.functional.pixel_shuffle(x, int(scalar(upscale_factor)))


@register("pixel_unshuffle")
def pixel_unshuffle(x, downscale_factor):
    """Inverse of ``pixel_shuffle``, as PyTorch's PixelUnshuffle."""
    return torch.nn.functional.pixel_unshuffle(x, int(scalar(downscale_factor)))


@register("depth_to_space")
def depth_to_space(x, block_size):
    """TensorFlow's depth_to_space in NCHW ("DCR" order, unlike pixel_shuffle), as in the example of Core ML's
    ReorganizeData DEPTH_TO_SPACE: ``out[n, c, h*b+i, w*b+j] = x[n, (i*b + j)*C_out + c, h, w]``."""
    b = int(scalar(block_size))
    n, c, h, w = x.shape
    blocks = x.reshape(n, b, b, c // (b * b), h, w)  # [n, i, j, c, h, w]
    return blocks.permute(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)


@register("space_to_depth")
def space_to_depth(x, block_size):
    """Inverse of ``depth_to_space`` (TensorFlow's space_to_depth in NCHW, "DCR" order)."""
    b = int(scalar(block_size))
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // b, b, w // b, b)  # [n, c, h, i, w, j]
    return blocks.permute(0, 3, 5, 1, 2, 4).reshape(n, c * b * b, h // b, w // b)


@register("space_to_batch")
def space_to_batch(x, block_shape, paddings):
    """TensorFlow's space_to_batch_nd in NCHW: zero-pad H and W, then
    ``out[(i*bw + j)*N + n, c, h, w] = padded[n, c, h*bh + i, w*bw + j]`` (block offset is the major part of the
    new batch index)."""
    bh, bw = ints(block_shape)
    (pt, pb), (pl, pr) = _pairs(paddings)
    x = torch.nn.functional.pad(x, (pl, pr, pt, pb))
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // bh, bh, w // bw, bw)  # [n, c, h, i, w, j]
    return blocks.permute(3, 5, 0, 1, 2, 4).reshape(bh * bw * n, c, h // bh, w // bw)


@register("batch_to_space")
def batch_to_space(x, block_shape, crops):
    """Inverse of ``space_to_batch`` (TensorFlow's batch_to_space_nd in NCHW), then crop H and W."""
    bh, bw = ints(block_shape)
    (ct, cb), (cl, cr) = _pairs(crops)
    nb, c, h, w = x.shape
    n = nb // (bh * bw)
    blocks = x.reshape(bh, bw, n, c, h, w)  # [i, j, n, c, h, w]
    out = blocks.permute(2, 3, 4, 0, 5, 1).reshape(n, c, h * bh, w * bw)
    return out[:, :, ct:h * bh - cb, cl:w * bw - cr]


def _pairs(value) -> list[tuple[int, int]]:
    flat = ints(value)
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


@register("sliding_windows")
def sliding_windows(x, axis, size, stride=1):
    """Windows of ``size`` every ``stride`` along ``axis``: the window count replaces ``axis`` and the window
    elements form a new dim right after it (``[..., (d - size)//stride + 1, size, ...]``)."""
    x = as_tensor(x)
    axis = norm_axis(int(scalar(axis)), x.dim())
    windows = x.unfold(axis, int(scalar(size)), int(scalar(stride)))  # window elements land in the last dim
    return windows.movedim(-1, axis + 1)


@register("flatten2d")
def flatten2d(x, axis=1):
    """``[prod(shape[:axis]), prod(shape[axis:])]``; a negative axis counts from the end."""
    x = as_tensor(x)
    axis = norm_axis(int(scalar(axis)), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


# ---- specializers: constant attributes parsed once per step (see ``ops.specializer``) -----------------------
@specializer("expand_dims")
def _expand_dims_special(consts, var_params):
    if var_params != ("x",) or "axes" not in consts:
        return None
    axes, by_rank = ints(consts["axes"]), {}

    def run(x):
        if x.__class__ is not torch.Tensor:
            return expand_dims(x, axes)
        order = by_rank.get(x.dim())
        if order is None:
            out_rank = x.dim() + len(axes)
            order = by_rank[x.dim()] = sorted(norm_axis(a, out_rank) for a in axes)
        for axis in order:
            x = x.unsqueeze(axis)
        return x

    return run


@specializer("squeeze")
def _squeeze_special(consts, var_params):
    if var_params != ("x",) or consts.get("axes") is None:
        return None
    axes = ints(consts["axes"])

    def run(x):
        if x.__class__ is not torch.Tensor:
            return squeeze(x, axes)
        rank = x.dim()
        for axis in sorted((norm_axis(a, rank) for a in axes), reverse=True):
            if x.shape[axis] == 1:
                x = x.squeeze(axis)
        return x

    return run


@specializer("transpose")
def _transpose_special(consts, var_params):
    if var_params != ("x",):
        return None
    perm = ints(consts["perm"])

    def run(x):
        return (x if x.__class__ is torch.Tensor else as_tensor(x)).permute(perm)

    return run


@specializer("slice_by_index")
def _slice_special(consts, var_params):
    """Constant bounds: the index tuple computed once per input shape (the kernel's common case), the kernel
    itself for the rest (squeeze, negative strides)."""
    if var_params != ("x",) or "begin" not in consts or "end" not in consts:
        return None
    consts = dict(consts)
    begin, end = ints(consts["begin"]), ints(consts["end"])
    rank = len(begin)
    stride = ints(consts["stride"]) if consts.get("stride") is not None else [1] * rank
    begin_mask, end_mask = _flags(consts.get("begin_mask"), rank), _flags(consts.get("end_mask"), rank)
    squeeze_mask = _flags(consts.get("squeeze_mask"), rank)
    if (any(len(v) != rank for v in (end, stride, begin_mask, end_mask, squeeze_mask)) or any(squeeze_mask)
            or any(s <= 0 for s in stride)):
        return None
    by_shape: dict = {}

    def run(x):
        if x.__class__ is torch.Tensor:
            index = by_shape.get(x.shape)
            if index is not None:
                return x[index]
            if x.dim() == rank:
                index = by_shape[x.shape] = _forward_index(x.shape, begin, end, stride, begin_mask, end_mask,
                                                           squeeze_mask)
                return x[index]
        return slice_by_index(x, **consts)

    return run
