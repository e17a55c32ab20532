"""Reduction ops (MIL ``reduction``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.reduction

``reduce_*`` take ``axes`` (omitted or None: every axis; an empty list: no axis, the reference's
``np.sum(x, axis=())``) and ``keep_dims`` (default False). ``reduce_argmax``/``reduce_argmin`` take one ``axis``
(default -1) and, from iOS17, ``output_dtype`` (``int32`` or ``uint16``; the executor casts to it).
int32 inputs are reduced in fp32 where torch needs it (mean, norms, logs) and truncated back by the executor.
"""

from __future__ import annotations

import torch

from . import register
from ._util import as_tensor, floating, ints, norm_axis


def _dims(x: torch.Tensor, axes) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(x.dim()))
    return tuple(sorted({norm_axis(a, x.dim()) for a in ints(axes)}))


def _reduce(fn, x: torch.Tensor, axes, keep_dims) -> torch.Tensor:
    """``fn(x, dims, keepdim)`` over the normalized axes; nothing to reduce returns ``x`` unchanged."""
    dims = _dims(x, axes)
    if not dims:
        return x
    return fn(x, dims, bool(keep_dims))


def _prod(x, dims, keepdim):
    for d in reversed(dims):  # torch.prod reduces one dim at a time
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x


def _log_sum(x, dims, keepdim):
    return torch.log(torch.sum(x, dim=dims, keepdim=keepdim))


def _l1(x, dims, keepdim):
    return torch.sum(torch.abs(x), dim=dims, keepdim=keepdim)


def _sum_square(x, dims, keepdim):
    return torch.sum(x * x, dim=dims, keepdim=keepdim)


def _l2(x, dims, keepdim):
    return torch.sqrt(_sum_square(x, dims, keepdim))


_REDUCTIONS = {  # op type -> (fn(x, dims, keepdim), computed in fp32?)
    "reduce_sum": (lambda x, d, k: torch.sum(x, dim=d, keepdim=k), False),
    "reduce_max": (lambda x, d, k: torch.amax(x, dim=d, keepdim=k), False),
    "reduce_min": (lambda x, d, k: torch.amin(x, dim=d, keepdim=k), False),
    "reduce_prod": (_prod, False),
    "reduce_l1_norm": (_l1, False),
    "reduce_sum_square": (_sum_square, False),
    "reduce_mean": (lambda x, d, k: torch.mean(x, dim=d, keepdim=k), True),
    "reduce_l2_norm": (_l2, True),
    "reduce_log_sum": (_log_sum, True),
    "reduce_log_sum_exp": (lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k), True),  # max-subtracted
}


def _reduction(op_type, fn, in_float):
    def kernel(x, axes=None, keep_dims=False):
        x = floating(x) if in_float else as_tensor(x)
        return _reduce(fn, x, axes, keep_dims)

    kernel.__name__ = op_type
    kernel.__doc__ = f"``{op_type}`` over ``axes`` (None: all)."
    return kernel


for _op_type, (_fn, _in_float) in _REDUCTIONS.items():
    register(_op_type)(_reduction(_op_type, _fn, _in_float))


_ARG_DTYPES = ("int32", "uint16")


def _arg(fn, x, axis, keep_dims, output_dtype):
    if str(output_dtype).lower() not in _ARG_DTYPES:
        raise NotImplementedError(f"output_dtype {output_dtype!r} is not supported ({', '.join(_ARG_DTYPES)} are)")
    x = as_tensor(x)
    return fn(x, dim=norm_axis(int(axis), x.dim()), keepdim=bool(keep_dims))


@register("reduce_argmax")
def reduce_argmax(x, axis=-1, keep_dims=False, output_dtype="int32"):
    """Index of the maximum along ``axis``; ties give the first index (the spec does not guarantee which)."""
    return _arg(torch.argmax, x, axis, keep_dims, output_dtype)


@register("reduce_argmin")
def reduce_argmin(x, axis=-1, keep_dims=False, output_dtype="int32"):
    """Index of the minimum along ``axis``; ties give the first index (the spec does not guarantee which)."""
    return _arg(torch.argmin, x, axis, keep_dims, output_dtype)
