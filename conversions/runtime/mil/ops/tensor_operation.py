"""Tensor operation ops (MIL ``tensor_operation``), plus ``cast`` (``elementwise_unary``) and ``select``
(``control_flow``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.tensor_operation

Ops whose outputs hold indices (``argsort``, ``topk``, ``non_zero`` ...) return int64 tensors; the executor
casts them to the declared int32.
"""

from __future__ import annotations

import math

import torch

from . import register, specializer
from ._util import TORCH_DTYPES, as_tensor, ints, norm_axis, scalar, torch_pad_order


@register("split")
def split(x, axis, num_splits=None, split_sizes=None):
    """``split_sizes`` wins when given (uneven pieces); otherwise ``num_splits`` equal pieces."""
    axis = int(scalar(axis))
    if split_sizes is not None:
        pieces = torch.split(x, ints(split_sizes), dim=axis)
    elif num_splits is not None:
        n = int(scalar(num_splits))
        pieces = torch.split(x, x.shape[axis] // n, dim=axis)
    else:
        raise ValueError("split needs num_splits or split_sizes")
    return pieces[0] if len(pieces) == 1 else tuple(pieces)


def _tensors(values) -> list[torch.Tensor]:
    """Variadic inputs as tensors; Python scalars (rank-0 constants) take the dtype of a tensor among them."""
    like = next((v for v in values if isinstance(v, torch.Tensor)), None)
    return [as_tensor(v, like) for v in values]


@register("concat", variadic=("values",))
def concat(values, axis, interleave=False):
    """Rank-0 values count as length-1 vectors. ``interleave`` takes one slice of each input in turn along
    ``axis`` (inputs of identical shape): ``out[k*i + j] = values[j][i]`` for ``k`` inputs."""
    tensors = [t.reshape(1) if t.dim() == 0 else t for t in _tensors(values)]
    axis = norm_axis(int(scalar(axis)), tensors[0].dim())
    if bool(scalar(interleave)):
        return torch.stack(tensors, dim=axis + 1).flatten(axis, axis + 1)
    return torch.cat(tensors, dim=axis)


@register("stack", variadic=("values",))
def stack(values, axis):
    """A new dim at ``axis`` (``-rank-1 <= axis <= rank`` of the inputs)."""
    return torch.stack(_tensors(values), dim=int(scalar(axis)))


@register("tile")
def tile(x, reps):
    return as_tensor(x).repeat(ints(reps))


def _pad_gathers(shape, pairs: list[int], mode: str) -> list[tuple[int, torch.Tensor]]:
    """Per padded dim, the source positions a ``reflect`` / ``replicate`` pad reads (an ``index_select`` each)."""
    gathers = []
    for dim, n in enumerate(shape):
        before, after = pairs[2 * dim], pairs[2 * dim + 1]
        if before == 0 and after == 0:
            continue
        pos = torch.arange(-before, n + after)
        if mode == "reflect":
            if max(before, after) >= n:
                raise ValueError(f"reflect pad ({before}, {after}) must be smaller than the dim ({n})")
            pos = pos.abs()
            pos = torch.where(pos >= n, 2 * (n - 1) - pos, pos)
        else:
            pos = pos.clamp(0, n - 1)
        gathers.append((dim, pos))
    return gathers


@register("pad")
def pad(x, pad, mode="constant", constant_val=0.0):
    """``pad`` holds (before, after) pairs for the *last* ``len(pad)/2`` dims, first of them first (the reverse
    of ``torch.nn.functional.pad``'s order). ``reflect`` mirrors without repeating the edge (pad < dim),
    ``replicate`` repeats the edge (any pad), ``constant`` fills with ``constant_val``."""
    x = as_tensor(x)
    pairs = ints(pad)
    pairs = [0] * (2 * x.dim() - len(pairs)) + pairs  # leading dims unpadded
    if mode == "constant":
        return torch.nn.functional.pad(x, torch_pad_order(pairs), value=scalar(constant_val))
    if mode not in ("reflect", "replicate"):
        raise NotImplementedError(f"pad mode {mode!r} is not supported (constant, reflect, replicate are)")
    for dim, pos in _pad_gathers(x.shape, pairs, mode):
        x = x.index_select(dim, pos)
    return x


@register("reverse")
def reverse(x, axes=None):
    """Flip ``axes`` (all dims when absent)."""
    x = as_tensor(x)
    dims = list(range(x.dim())) if axes is None else ints(axes)
    return torch.flip(x, dims)


@register("reverse_sequence")
def reverse_sequence(x, lengths, seq_axis=0, batch_axis=0):
    """For each index ``b`` along ``batch_axis``, reverse the first ``lengths[b]`` elements along ``seq_axis``;
    the rest stay in place."""
    x = as_tensor(x)
    seq_axis, batch_axis = norm_axis(int(scalar(seq_axis)), x.dim()), norm_axis(int(scalar(batch_axis)), x.dim())
    lengths = as_tensor(lengths).reshape(-1, 1).long()  # [B, 1]
    t = torch.arange(x.shape[seq_axis]).reshape(1, -1)  # [1, T]
    source = torch.where(t < lengths, lengths - 1 - t, t)  # [B, T]: where each output element comes from
    if batch_axis > seq_axis:
        source = source.t()
    view = [1] * x.dim()
    view[batch_axis], view[seq_axis] = x.shape[batch_axis], x.shape[seq_axis]
    return torch.gather(x, seq_axis, source.reshape(view).expand(x.shape))


@register("band_part")
def band_part(x, lower=-1, upper=-1):
    """Keeps ``x[..., m, n]`` where ``(lower < 0 or m - n <= lower) and (upper < 0 or n - m <= upper)``, zeroes
    (False for bool) the rest."""
    x = as_tensor(x)
    lower, upper = int(scalar(lower)), int(scalar(upper))
    m = torch.arange(x.shape[-2]).reshape(-1, 1)
    n = torch.arange(x.shape[-1]).reshape(1, -1)
    keep = torch.ones(x.shape[-2], x.shape[-1], dtype=torch.bool)
    if lower >= 0:
        keep &= (m - n) <= lower
    if upper >= 0:
        keep &= (n - m) <= upper
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype))


@register("range_1d")
def range_1d(start, end, step):
    """``start + i*step`` for ``i < ceil((end - start) / step)`` (empty when that is <= 0); computed in float64
    and rounded once for float ranges, as numpy/torch ``arange`` do."""
    start, end, step = scalar(start), scalar(end), scalar(step)
    count = max(0, math.ceil((end - start) / step))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end, step)):
        return start + torch.arange(count, dtype=torch.int64) * step
    return (start + torch.arange(count, dtype=torch.float64) * step).float()


@register("fill")
def fill(shape, value=0.0):
    """``shape`` may be a runtime int tensor (e.g. from ``shape`` + ``concat`` in flexible-shape programs)."""
    return torch.full(ints(shape), scalar(value))


@register("fill_like")
def fill_like(ref_tensor, value=0.0):
    """The shape of ``ref_tensor``, the type of ``value``."""
    return torch.full(tuple(as_tensor(ref_tensor).shape), scalar(value))


@register("shape")
def shape(x):
    return torch.tensor(list(as_tensor(x).shape), dtype=torch.int32)


@register("identity")
def identity(x):
    return x


@register("one_hot")
def one_hot(indices, one_hot_vector_size, axis=-1, on_value=1, off_value=0):
    """The new dim of size ``one_hot_vector_size`` is inserted at ``axis`` of the output (``-1``: last);
    indices outside ``[0, size)`` give all ``off_value``, as TensorFlow's one_hot."""
    indices = as_tensor(indices).long()
    size = int(scalar(one_hot_vector_size))
    hot = indices.unsqueeze(-1) == torch.arange(size)
    out = torch.where(hot, scalar(on_value), scalar(off_value))
    return out.movedim(-1, norm_axis(int(scalar(axis)), indices.dim() + 1))


def _sort(x, axis, ascending):
    """Stable sort: equal values keep their input order (lowest index first)."""
    return torch.sort(x, dim=axis, descending=not ascending, stable=True)


@register("topk")
def topk(x, k=1, axis=-1, ascending=False, sort=True, return_indices=True, output_indices_dtype="int32"):
    """The ``k`` largest (smallest if ``ascending``) along ``axis``, always returned sorted (``sort=False`` only
    allows any order); ties go to the lower index. ``k == -1`` (iOS17) takes all. Returns (values, indices), or
    values alone when ``return_indices`` is False (iOS16+)."""
    x = as_tensor(x)
    axis, k = int(scalar(axis)), int(scalar(k))
    values, indices = _sort(x, axis, bool(scalar(ascending)))
    if k != -1:
        values, indices = values.narrow(axis, 0, k), indices.narrow(axis, 0, k)
    return (values, indices) if bool(scalar(return_indices)) else values


@register("argsort")
def argsort(x, axis=-1, ascending=False):
    """Default order is *descending*; ties keep input order."""
    return _sort(as_tensor(x), int(scalar(axis)), bool(scalar(ascending))).indices


@register("non_zero")
def non_zero(x):
    """``[N, rank]`` coordinates of the non-zero elements, in row-major order."""
    return torch.nonzero(as_tensor(x))


@register("cumsum")
def cumsum(x, axis=0, exclusive=False, reverse=False):
    """Inclusive by default; ``exclusive`` shifts by one (first output 0); ``reverse`` sums from the end."""
    x = as_tensor(x)
    axis = norm_axis(int(scalar(axis)), x.dim())
    if bool(scalar(reverse)):
        x = x.flip(axis)
    out = torch.cumsum(x, dim=axis)
    if bool(scalar(exclusive)) and x.shape[axis] > 0:
        zero = torch.zeros_like(out.narrow(axis, 0, 1))
        out = torch.cat([zero, out.narrow(axis, 0, x.shape[axis] - 1)], dim=axis)
    return out.flip(axis) if bool(scalar(reverse)) else out


@register("select")
def select(cond, a, b):
    """``a`` where ``cond`` else ``b``, broadcasting all three (numpy ``where``)."""
    cond = as_tensor(cond)
    return torch.where(cond if cond.dtype == torch.bool else cond != 0, a, b)


@register("cast")
def cast(x, dtype):
    """Float -> int truncates toward zero (C cast; out-of-range values are undefined, as in Core ML);
    anything -> bool is ``x != 0``; bool -> number is 0/1. fp16 targets are rounded by the executor."""
    if dtype not in TORCH_DTYPES:
        raise NotImplementedError(f"cast to dtype {dtype!r} is not supported")
    return as_tensor(x).to(TORCH_DTYPES[dtype])


@register("non_maximum_suppression")
def non_maximum_suppression(boxes, scores, iou_threshold, max_boxes, score_threshold=None,
                            per_class_suppression=False):
    """Greedy NMS per batch. Boxes are (center x, center y, width, height); a box's score is its best class
    score. Boxes are visited by descending score (ties: lower index first) and kept unless their IoU with an
    already kept box (of the same best class if ``per_class_suppression``) is ``> iou_threshold``; at most
    ``max_boxes`` are kept, outputs are zero-padded and indices padded with -1.

    - iOS15: ``boxes [n, B, 4]``, ``scores [n, B, K]``; boxes scoring below ``score_threshold`` are dropped
      first, but if none is kept the best-scoring box is returned anyway (Core ML behaviour that coremltools'
      reference mimics). Outputs boxes ``[n, max, 4]``, scores ``[n, max, K]``, indices, and the kept count.
    - iOS17 (no ``score_threshold`` input): ``boxes [n, 4, B]``, ``scores [n, K, B]``, no threshold, outputs
      boxes ``[n, 4, max]``, scores ``[n, K, max]`` and indices (no count).
    """
    ios17 = score_threshold is None
    boxes, scores = as_tensor(boxes).float(), as_tensor(scores).float()
    if ios17:
        boxes, scores = boxes.transpose(1, 2), scores.transpose(1, 2)
    n_batch, n_box, n_class = scores.shape
    max_boxes, iou_threshold = int(scalar(max_boxes)), float(scalar(iou_threshold))
    out_boxes = torch.zeros(n_batch, max_boxes, 4)
    out_scores = torch.zeros(n_batch, max_boxes, n_class)
    out_indices = torch.full((n_batch, max_boxes), -1, dtype=torch.int64)
    counts = torch.zeros(n_batch, dtype=torch.int64)
    for b in range(n_batch):
        best, cls = scores[b].max(dim=-1)
        iou = _iou_matrix(boxes[b])
        order = torch.sort(best, descending=True, stable=True).indices.tolist()
        kept: list[int] = []
        for i in order:
            if len(kept) == max_boxes:
                break
            if not ios17 and best[i] < float(scalar(score_threshold)):
                continue
            if any(iou[i, j] > iou_threshold and (not per_class_suppression or cls[i] == cls[j]) for j in kept):
                continue
            kept.append(i)
        if not kept and not ios17 and n_box > 0 and max_boxes > 0:
            kept = order[:1]
        idx = torch.tensor(kept, dtype=torch.int64)
        out_boxes[b, :len(kept)] = boxes[b, idx]
        out_scores[b, :len(kept)] = scores[b, idx]
        out_indices[b, :len(kept)] = idx
        counts[b] = len(kept)
    if ios17:
        return out_boxes.transpose(1, 2), out_scores.transpose(1, 2), out_indices
    return out_boxes, out_scores, out_indices, counts


def _iou_matrix(boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of (center x, center y, width, height) boxes; 0/0 (empty boxes) gives NaN, which never
    suppresses."""
    cx, cy, w, h = boxes.unbind(-1)
    left, right, bottom, top = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
    inter_w = (torch.minimum(right[:, None], right[None]) - torch.maximum(left[:, None], left[None])).clamp(min=0)
    inter_h = (torch.minimum(top[:, None], top[None]) - torch.maximum(bottom[:, None], bottom[None])).clamp(min=0)
    inter = inter_w * inter_h
    area = w * h
    return inter / (area[:, None] + area[None] - inter)


# ---- specializers: constant attributes parsed once per step (see ``ops.specializer``) -----------------------
@specializer("pad")
def _pad_special(consts, var_params):
    """Constant pads: reflect/replicate source positions computed once per input shape (the kernel's own
    ``index_select`` path), the constant mode's torch order once per rank; the kernel for anything else."""
    if var_params != ("x",) or "pad" not in consts:
        return None
    consts = dict(consts)
    mode, pairs0 = consts.get("mode", "constant"), ints(consts["pad"])
    if mode not in ("constant", "reflect", "replicate") or len(pairs0) % 2:
        return None
    value = scalar(consts.get("constant_val", 0.0))
    by_shape: dict = {}

    def plan(x):
        if 2 * x.dim() < len(pairs0):
            return None
        pairs = [0] * (2 * x.dim() - len(pairs0)) + pairs0
        if mode == "constant":
            return torch_pad_order(pairs)
        try:
            return _pad_gathers(x.shape, pairs, mode)
        except ValueError:
            return None  # the kernel raises

    def run(x):
        if x.__class__ is torch.Tensor:
            how = by_shape.get(x.shape, False)
            if how is False:
                how = by_shape[x.shape] = plan(x)
            if how is not None:
                if mode == "constant":
                    return torch.nn.functional.pad(x, how, value=value)
                for dim, pos in how:
                    x = x.index_select(dim, pos)
                return x
        return pad(x, **consts)

    return run


@specializer("cast")
def _cast_special(consts, var_params):
    dtype = consts.get("dtype")
    if var_params != ("x",) or not isinstance(dtype, str) or dtype not in TORCH_DTYPES:
        return None
    target = TORCH_DTYPES[dtype]

    def run(x):
        return (x if x.__class__ is torch.Tensor else as_tensor(x)).to(target)

    return run
