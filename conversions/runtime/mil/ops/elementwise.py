"""Elementwise unary and binary ops (MIL ``elementwise_unary`` / ``elementwise_binary``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.elementwise_binary
"""

from __future__ import annotations

import torch

from . import register
from ._util import as_tensor, floating


def _pair(x, y):
    """Both operands as tensors, promoted as MIL does: float wins, otherwise the wider int."""
    x = as_tensor(x, y if isinstance(y, torch.Tensor) else None)
    y = as_tensor(y, x)
    return x, y


@register("add")
def add(x, y):
    x, y = _pair(x, y)
    return x + y


@register("sub")
def sub(x, y):
    x, y = _pair(x, y)
    return x - y


@register("mul")
def mul(x, y):
    x, y = _pair(x, y)
    return x * y
