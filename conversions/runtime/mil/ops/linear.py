"""Linear algebra ops: ``linear``, ``matmul``, ``einsum`` (MIL ``linear``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.linear
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ._util import floating


@register("linear")
def linear(x, weight, bias=None):
    return F.linear(floating(x), floating(weight), None if bias is None else floating(bias))
