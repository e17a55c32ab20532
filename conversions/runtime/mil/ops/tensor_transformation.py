"""Tensor transformation ops (MIL ``tensor_transformation``): reshape, transpose, squeeze, slicing ...

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.tensor_transformation
"""

from __future__ import annotations

import torch

from . import register
from ._util import ints


@register("transpose")
def transpose(x, perm):
    return x.permute(ints(perm))
