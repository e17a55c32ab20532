"""Random sampling ops: ``random_bernoulli``, ``random_categorical``, ``random_normal``, ``random_uniform``.

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.random

(The iOS15 definitions are the only ones: later opsets do not change these ops.)

Seeds. Every op takes ``seed`` (default ``-1``). ``-1`` draws fresh values on every prediction (a generator seeded
from the OS); any other value seeds a ``torch.Generator`` at every call of the op, so two predictions of the same
program give the same values, as Core ML does for a fixed seed. Two ops with the same seed draw the same stream.

**Values do not reproduce Apple's generator.** Core ML's random number generator is not documented; a fixed seed
gives reproducible values *within this runtime*, not the values Core ML gives. What matches is the distribution:
the tests check sample moments, ranges and frequencies, never values against Core ML.

Semantics, per op (``shape`` is a 1-D int32 tensor of positive sizes, a constant or a variable):

- ``random_uniform(shape, low=0, high=1)``: values in ``[low, high)``; ``high == low`` gives ``low``,
  ``high < low`` (undefined in the definition) is an error. In an fp16 program the output is rounded to fp16,
  which can round a value just below ``high`` up to ``high``.
- ``random_normal(shape, mean=0, stddev=1)``: ``mean + stddev * N(0, 1)``; a negative ``stddev`` is an error.
- ``random_bernoulli(shape, prob=0.5)``: 1 with probability ``prob``, else 0 (as floats); ``prob`` outside
  ``[0, 1]`` is an error.
- ``random_categorical(x, mode="logits", size=1)``: ``x`` is ``[*D, K]``, one distribution over ``K`` classes
  per leading index; ``mode="logits"`` takes ``softmax(x)``, ``mode="probs"`` takes ``x`` normalised to sum 1
  (coremltools defines it as logits ``log(x)``, the same distribution). Draws ``size`` class indices with
  replacement per distribution; the output ``[*D, size]`` holds the indices as floats (the op's output type is
  ``x``'s float type).
"""

from __future__ import annotations

import torch

from . import register
from ._util import as_tensor, floating, ints, scalar


def _generator(seed) -> torch.Generator:
    seed = int(scalar(seed))
    generator = torch.Generator()
    if seed == -1:
        generator.seed()  # non-deterministic: from the OS's entropy source
    else:
        generator.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return generator


def _shape(op: str, shape) -> list[int]:
    t = as_tensor(shape)
    if t.dim() > 1:
        raise ValueError(f"{op}: input 'shape' must be a 1-D int32 tensor, got rank {t.dim()} {list(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{op}: input 'shape' must be int32, got {t.dtype}")
    sizes = ints(t)
    if any(s <= 0 for s in sizes):
        raise ValueError(f"{op}: input 'shape' must hold positive sizes, got {sizes}")
    return sizes


def _float(op: str, name: str, value) -> float:
    t = as_tensor(value)
    if t.numel() != 1:
        raise ValueError(f"{op}: input {name!r} must be a scalar, got shape {list(t.shape)}")
    return float(t.reshape(-1)[0])


@register("random_uniform")
def random_uniform(shape, low=0.0, high=1.0, seed=-1):
    sizes = _shape("random_uniform", shape)
    lo, hi = _float("random_uniform", "low", low), _float("random_uniform", "high", high)
    if hi < lo:
        raise ValueError(f"random_uniform: input 'high' must be >= 'low' (low={lo}), got high={hi}")
    u = torch.rand(sizes, generator=_generator(seed), dtype=torch.float32)
    out = lo + (hi - lo) * u
    if hi > lo:  # lo + (hi - lo) * u can round up to hi in fp32: keep the interval half-open
        below = torch.nextafter(torch.tensor(hi, dtype=torch.float32), torch.tensor(lo, dtype=torch.float32))
        out = torch.minimum(out, below)
    return out


@register("random_normal")
def random_normal(shape, mean=0.0, stddev=1.0, seed=-1):
    sizes = _shape("random_normal", shape)
    mu, sigma = _float("random_normal", "mean", mean), _float("random_normal", "stddev", stddev)
    if sigma < 0:
        raise ValueError(f"random_normal: input 'stddev' must be >= 0, got {sigma}")
    return mu + sigma * torch.randn(sizes, generator=_generator(seed), dtype=torch.float32)


@register("random_bernoulli")
def random_bernoulli(shape, prob=0.5, seed=-1):
    sizes = _shape("random_bernoulli", shape)
    p = _float("random_bernoulli", "prob", prob)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random_bernoulli: input 'prob' must lie in [0, 1], got {p}")
    u = torch.rand(sizes, generator=_generator(seed), dtype=torch.float32)
    return (u < p).to(torch.float32)


@register("random_categorical")
def random_categorical(x, mode="logits", size=1, seed=-1):
    x = floating(x)
    if x.dim() < 1:
        raise ValueError("random_categorical: input 'x' must have rank >= 1 (the last axis holds the classes), "
                         "got a scalar")
    draws = int(scalar(size))
    if draws < 1:
        raise ValueError(f"random_categorical: input 'size' must be >= 1, got {draws}")
    mode = str(mode)
    rows = x.reshape(-1, x.shape[-1])
    if mode == "logits":
        if bool(torch.isnan(rows).any()) or bool(torch.isposinf(rows).any()):
            raise ValueError("random_categorical: input 'x' (logits) must not hold NaN or +inf")
        if bool((rows == float("-inf")).all(dim=-1).any()):
            raise ValueError("random_categorical: input 'x' (logits) has a distribution whose logits are all -inf")
        probs = torch.softmax(rows, dim=-1)
    elif mode == "probs":
        if not bool(torch.isfinite(rows).all()) or bool((rows < 0).any()):
            raise ValueError("random_categorical: input 'x' (probs) must hold finite values >= 0")
        if bool((rows.sum(dim=-1) <= 0).any()):
            raise ValueError("random_categorical: input 'x' (probs) has a distribution that sums to 0")
        probs = rows
    else:
        raise ValueError(f"random_categorical: input 'mode' must be 'logits' or 'probs', got {mode!r}")
    picks = torch.multinomial(probs, draws, replacement=True, generator=_generator(seed))
    return picks.to(torch.float32).reshape(*x.shape[:-1], draws)
