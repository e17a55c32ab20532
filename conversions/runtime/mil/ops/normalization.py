"""Normalization ops: ``batch_norm``, ``instance_norm``, ``layer_norm``, ``l2_norm``, ``local_response_norm``
(MIL ``normalization``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.normalization

iOS17 only lets the parameters (``gamma``, ``beta``, ``epsilon`` ...) have another float dtype than ``x``.
Variances are biased (divided by the element count), as in torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ._util import floating, ints, norm_axis, scalar


def _affine(y: torch.Tensor, gamma, beta, shape) -> torch.Tensor:
    if gamma is not None:
        y = y * floating(gamma).reshape(shape)
    if beta is not None:
        y = y + floating(beta).reshape(shape)
    return y


@register("batch_norm")
def batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    """Inference batch norm over axis 1 of a rank 3-5 ``x``:
    ``gamma * (x - mean) / sqrt(variance + epsilon) + beta`` (torch's fused inference kernel)."""
    x = floating(x)

    def channel(v):
        return None if v is None else floating(v).reshape(-1)

    return F.batch_norm(x, channel(mean), channel(variance), channel(gamma), channel(beta), training=False,
                        eps=float(scalar(epsilon)))


@register("instance_norm")
def instance_norm(x, gamma=None, beta=None, epsilon=1e-5):
    """Normalizes each ``(n, c)`` slice over all the spatial axes (2 onwards), then the per-channel affine."""
    x = floating(x)
    return F.instance_norm(x, weight=None if gamma is None else floating(gamma).reshape(-1),
                           bias=None if beta is None else floating(beta).reshape(-1), eps=float(scalar(epsilon)))


@register("layer_norm")
def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    """Normalizes over ``axes`` (default: all); ``gamma``/``beta`` have the shape of those axes, taken in
    increasing axis order whatever the order of ``axes``."""
    x = floating(x)
    rank = x.dim()
    dims = sorted({norm_axis(a, rank) for a in ints(axes)}) if axes is not None else list(range(rank))
    if not dims:
        return x.clone()
    if dims == list(range(rank - len(dims), rank)):  # trailing axes, the usual case: torch's fused kernel
        normalized = x.shape[rank - len(dims):]
        return F.layer_norm(x, normalized, None if gamma is None else floating(gamma).reshape(normalized),
                            None if beta is None else floating(beta).reshape(normalized), float(scalar(epsilon)))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + float(scalar(epsilon)))
    shape = [x.shape[i] if i in dims else 1 for i in range(rank)]
    return _affine(y, gamma, beta, shape)


@register("l2_norm")
def l2_norm(x, epsilon=1e-6):
    """``x / sqrt(sum(x**2) + epsilon)`` with the sum over the last three axes; leading axes are batch."""
    x = floating(x)
    dims = [x.dim() - 3, x.dim() - 2, x.dim() - 1]
    return x / torch.sqrt((x * x).sum(dim=dims, keepdim=True) + float(scalar(epsilon)))


@register("local_response_norm")
def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """``x / (k + alpha/size * sum(x_j**2))**beta``, the sum over a window of ``size`` channels.

    Quirks: the channel axis is axis -3, so a rank-3 ``x`` is one unbatched ``[C, H, W]`` image (Core ML's
    own results in coremltools' op tests show it; for rank 4 it is axis 1 as in torch). The window is
    torch's: channels ``c - size//2`` to ``c + (size-1)//2``, clipped to the tensor (zeros outside count
    in ``size``).
    """
    x = floating(x)
    size = int(scalar(size))
    moved = x.movedim(-3, -1)  # channels last
    squares = F.pad(moved * moved, (size // 2, (size - 1) // 2))
    window_sum = squares.unfold(-1, size, 1).sum(-1)
    denom = (float(scalar(k)) + float(scalar(alpha)) / size * window_sum) ** float(scalar(beta))
    return (moved / denom).movedim(-1, -3)
