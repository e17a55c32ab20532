"""Attention: ``scaled_dot_product_attention`` (iOS18, MIL ``transformers``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS18.transformers
"""

from __future__ import annotations

import math

import torch

from . import register
from ._util import floating


@register("scaled_dot_product_attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None):
    """``softmax(Q @ K^T / sqrt(E) + mask) @ V`` over ``[B, *, L, E]`` / ``[B, *, S, E]`` / ``[B, *, S, EV]``.

    The scale is always ``1/sqrt(E)``: the op has no ``scale`` input (coremltools decomposes torch calls that
    pass one). A bool mask keeps the positions that are True (the others get ``-inf``, so a fully masked row
    is NaN, as in torch); a float mask is added; either broadcasts to ``[B, *, L, S]``. No dropout, no
    ``is_causal`` (the converter turns it into a bool mask).
    """
    q, k, v = floating(query), floating(key), floating(value)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        mask = torch.as_tensor(attn_mask)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    return torch.matmul(torch.softmax(scores, dim=-1), v)
