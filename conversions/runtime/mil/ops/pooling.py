"""Pooling ops: ``avg_pool``, ``max_pool``, ``l2_pool`` (MIL ``pool``), 1-D to 3-D.

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.pool

Padding follows ``conv`` (``same``/``same_lower`` pad like TensorFlow, ``pad`` is read only with
``pad_type="custom"``). ``ceil_mode`` output size is MIL's: ``floor((in + pads - k + stride - 1) / stride) + 1``,
minus one if the last window would start past ``in + pad_begin`` and there is padding. Windows running past
the padded input (ceil mode) only see the real and padded elements. Without padding, a stride longer than the
kernel can leave a last window wholly past the input (torch would drop it): it gives ``-inf`` (max) or 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import register
from ._util import floating, ints, scalar
from ._util import torch_pad_order
from .conv import resolve_pads


def _geometry(x, kernel_sizes, strides, pad_type, pad, ceil_mode):
    """Kernel, strides, explicit pads, and the extra end padding that ceil mode needs, per spatial dim."""
    n = x.dim() - 2
    kernel = ints(kernel_sizes)
    strides = ints(strides) if strides is not None else [1] * n
    pads = resolve_pads(str(pad_type).lower(), pad, x.shape[2:], kernel, strides, [1] * n)
    extra = []
    for i in range(n):
        size, k, s = x.shape[2 + i], kernel[i], strides[i]
        total = pads[2 * i] + pads[2 * i + 1]
        if scalar(ceil_mode):
            out = math.floor((size + total - k + s - 1) / s) + 1
            if (out - 1) * s >= size + total / 2 and total > 0:
                out -= 1
        else:
            out = math.floor((size + total - k) / s) + 1
        extra.append(max((out - 1) * s + k - (size + total), 0))
    return kernel, strides, pads, extra


def _window_sum(t: torch.Tensor, kernel, strides) -> torch.Tensor:
    """Sum over each window of an already padded tensor (1-D pools run as 2-D with a unit height)."""
    if len(kernel) == 1:
        return _window_sum(t.unsqueeze(-2), [1] + kernel, [1] + strides).squeeze(-2)
    fn = F.avg_pool2d if len(kernel) == 2 else F.avg_pool3d
    return fn(t, kernel, strides, divisor_override=1)


def _padded(x, pads, extra, value):
    """``x`` with its explicit pads filled with ``value`` and the ceil-mode overhang with ``value`` too."""
    n = len(extra)
    full = [p + (extra[i // 2] if i % 2 else 0) for i, p in enumerate(pads[: 2 * n])]
    return F.pad(x, torch_pad_order(full), value=value)


@register("avg_pool")
def avg_pool(x, kernel_sizes, pad_type="valid", strides=None, pad=None, exclude_padding_from_average=False,
             ceil_mode=False):
    """Mean over each window. The divisor counts the real elements only when
    ``exclude_padding_from_average``, else the real and padded ones (not the ceil-mode overhang: torch's
    ``count_include_pad`` rule)."""
    x = floating(x)
    kernel, strides, pads, extra = _geometry(x, kernel_sizes, strides, pad_type, pad, ceil_mode)
    n = len(kernel)
    total = _window_sum(_padded(x, pads, extra, 0.0), kernel, strides)
    real = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype)
    if scalar(exclude_padding_from_average):
        counted = _padded(real, pads, extra, 0.0)
    else:  # the explicit padding counts, the ceil-mode overhang does not
        counted = _padded(F.pad(real, torch_pad_order(pads[: 2 * n]), value=1.0), [0] * (2 * n), extra, 0.0)
    count = _window_sum(counted, kernel, strides).clamp(min=1)
    return total / count


@register("max_pool")
def max_pool(x, kernel_sizes, pad_type="valid", strides=None, pad=None, ceil_mode=False):
    """Max over each window; padding never wins (it is ``-inf``)."""
    x = floating(x)
    kernel, strides, pads, extra = _geometry(x, kernel_sizes, strides, pad_type, pad, ceil_mode)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
    return fn(_padded(x, pads, extra, float("-inf")), kernel, strides)


@register("l2_pool")
def l2_pool(x, kernel_sizes, pad_type="valid", strides=None, pad=None, ceil_mode=False):
    """``sqrt(sum(x**2))`` over each window (padding adds zeros)."""
    x = floating(x)
    kernel, strides, pads, extra = _geometry(x, kernel_sizes, strides, pad_type, pad, ceil_mode)
    return torch.sqrt(_window_sum(_padded(x * x, pads, extra, 0.0), kernel, strides).clamp(min=0))
