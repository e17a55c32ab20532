"""Activation ops (MIL ``activation``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.activation

iOS17 only lets ``alpha``/``beta`` have another float type than ``x``: same semantics. ``prelu`` and
``softplus_parametric`` take per-channel parameters along axis 1.
"""

from __future__ import annotations

import math

import torch

from . import register
from ._util import floating, scalar


def _per_channel(param, x: torch.Tensor) -> torch.Tensor:
    """A rank-1 ``[C]`` parameter shaped to broadcast along axis 1 of ``x`` (a scalar broadcasts as is)."""
    p = floating(param)
    if p.dim() == 0 or p.numel() == 1:
        return p.reshape(())
    return p.reshape([1, -1] + [1] * (x.dim() - 2))


@register("relu")
def relu(x):
    return x.relu() if x.__class__ is torch.Tensor else torch.relu(x)


@register("relu6")
def relu6(x):
    """``min(max(x, 0), 6)``."""
    return torch.clamp(x, 0.0, 6.0)


@register("sigmoid")
def sigmoid(x):
    return x.sigmoid() if x.__class__ is torch.Tensor else torch.sigmoid(x)


@register("silu")
def silu(x):
    """``x * sigmoid(x)`` (torch's fused kernel: one pass instead of two)."""
    return torch.nn.functional.silu(x)


@register("softsign")
def softsign(x):
    """``x / (1 + |x|)``."""
    return x / (1.0 + torch.abs(x))


@register("softplus")
def softplus(x):
    """``log(1 + exp(x))``, computed without overflow (as the spec's reference does)."""
    return torch.logaddexp(x, torch.zeros_like(x))


@register("softmax")
def softmax(x, axis=-1):
    """Softmax along ``axis`` (default -1), max-subtracted."""
    return torch.softmax(x, dim=int(axis))


@register("elu")
def elu(x, alpha):
    """``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``."""
    return torch.where(x > 0, x, float(scalar(alpha)) * torch.expm1(x))


@register("leaky_relu")
def leaky_relu(x, alpha):
    """``x`` if ``x >= 0`` else ``alpha * x``."""
    return torch.where(x >= 0, x, float(scalar(alpha)) * x)


@register("thresholded_relu")
def thresholded_relu(x, alpha):
    """``x`` if ``x >= alpha`` else 0."""
    return torch.where(x >= float(scalar(alpha)), x, torch.zeros_like(x))


@register("clamped_relu")
def clamped_relu(x, alpha, beta):
    """``min(beta, x)`` if ``x >= 0`` else ``min(beta, alpha * x)``."""
    y = torch.where(x >= 0, x, float(scalar(alpha)) * x)
    return torch.clamp(y, max=float(scalar(beta)))


@register("linear_activation")
def linear_activation(x, alpha, beta):
    """``alpha * x + beta``."""
    return float(scalar(alpha)) * x + float(scalar(beta))


@register("scaled_tanh")
def scaled_tanh(x, alpha, beta):
    """``alpha * tanh(beta * x)``."""
    return float(scalar(alpha)) * torch.tanh(float(scalar(beta)) * x)


@register("sigmoid_hard")
def sigmoid_hard(x, alpha, beta):
    """``min(max(alpha * x + beta, 0), 1)``."""
    return torch.clamp(float(scalar(alpha)) * x + float(scalar(beta)), 0.0, 1.0)


@register("prelu")
def prelu(x, alpha):
    """``x`` if ``x > 0`` else ``alpha[c] * x``, ``c`` indexing axis 1 (``x`` of rank 3 to 5)."""
    return torch.where(x > 0, x, _per_channel(alpha, x) * x)


@register("softplus_parametric")
def softplus_parametric(x, alpha, beta):
    """``alpha[c] * log(1 + exp(beta[c] * x))``, ``c`` indexing axis 1 (``x`` of rank >= 3)."""
    z = _per_channel(beta, x) * x
    return _per_channel(alpha, x) * torch.logaddexp(z, torch.zeros_like(z))


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@register("gelu")
def gelu(x, mode="EXACT"):
    """``EXACT``: ``0.5 x (1 + erf(x / sqrt 2))``; ``TANH_APPROXIMATION``: ``0.5 x (1 + tanh(sqrt(2/pi)
    (x + 0.044715 x^3)))``; ``SIGMOID_APPROXIMATION``: ``x * sigmoid(1.702 x)``."""
    if mode == "EXACT":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise NotImplementedError(f"gelu mode {mode!r} is not supported (EXACT, TANH_APPROXIMATION, "
                              "SIGMOID_APPROXIMATION are)")
