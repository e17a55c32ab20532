"""Tensor operation ops (MIL ``tensor_operation``) and ``cast``.

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.tensor_operation
"""

from __future__ import annotations

import torch

from . import register
from ._util import TORCH_DTYPES, as_tensor


@register("cast")
def cast(x, dtype):
    """Float -> int truncates toward zero, as C casts do; fp16 targets are rounded by the executor."""
    target = TORCH_DTYPES[dtype]
    return as_tensor(x).to(target)
