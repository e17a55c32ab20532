"""Convolution ops: ``conv``, ``conv_transpose`` (MIL ``conv``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.conv
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ._util import floating, ints, scalar


def _same_pads(in_sizes, kernel, strides, dilations, lower: bool):
    pads = []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        pads += [big, small] if lower else [small, big]
    return pads


def resolve_pads(pad_type: str, pad, in_sizes, kernel, strides, dilations) -> list[int]:
    """Explicit [begin_0, end_0, begin_1, end_1, ...] padding for MIL's pad_type."""
    n = len(in_sizes)
    if pad_type == "valid":
        return [0] * (2 * n)
    if pad_type == "custom":
        return ints(pad) if pad is not None else [0] * (2 * n)
    if pad_type in ("same", "same_lower"):
        return _same_pads(in_sizes, kernel, strides, dilations, lower=pad_type == "same_lower")
    raise NotImplementedError(f"pad_type {pad_type!r}")


@register("conv")
def conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    x, weight = floating(x), floating(weight)
    n = x.dim() - 2
    strides = ints(strides) if strides is not None else [1] * n
    dilations = ints(dilations) if dilations is not None else [1] * n
    pads = resolve_pads(pad_type, pad, x.shape[2:], weight.shape[2:], strides, dilations)
    symmetric = all(pads[2 * i] == pads[2 * i + 1] for i in range(n))
    if not symmetric:
        torch_pad = []
        for i in reversed(range(n)):
            torch_pad += [pads[2 * i], pads[2 * i + 1]]
        x = F.pad(x, torch_pad)
        padding = [0] * n
    else:
        padding = [pads[2 * i] for i in range(n)]
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return fn(x, weight, None if bias is None else floating(bias), strides, padding, dilations, int(scalar(groups)))
