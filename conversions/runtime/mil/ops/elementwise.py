"""Elementwise unary and binary ops (MIL ``elementwise_unary`` / ``elementwise_binary``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.elementwise_unary
https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.elementwise_binary

Binary ops broadcast numpy-style. Their operands share one type in a valid program (fp16, fp32 or int32);
should they differ, the float one wins, as coremltools' ``promote_types`` does. ``cast`` lives with the
tensor operations. iOS17 only lets ``epsilon`` of ``inverse``/``log``/``rsqrt`` and ``alpha``/``beta`` of
``clip`` have another float type than ``x`` (and requires ``alpha < beta`` in ``clip``): no change here.
"""

from __future__ import annotations

import torch

from . import register, specializer
from ._util import as_tensor, floating, scalar


_Tensor = torch.Tensor


def _same_kind(x, y) -> bool:
    """The common case, computed as is without ``_pair``: two tensors of one dtype, or an fp32 tensor and a float
    constant (torch treats the Python float as a 0-d scalar operand, as it does the 0-d tensor ``_pair`` makes)."""
    if x.__class__ is _Tensor:
        return (y.__class__ is _Tensor and x.dtype is y.dtype) or (y.__class__ is float and x.dtype is torch.float32)
    return False


def _pair(x, y):
    """Both operands as tensors; a float operand makes both float (coremltools promotes int32 to float)."""
    x, y = as_tensor(x), as_tensor(y)
    if x.is_floating_point() != y.is_floating_point():
        x, y = floating(x), floating(y)
    return x, y


# ---- unary: float only (an int input is promoted; the executor casts back to the declared type) -----------
_FLOAT_UNARY = {
    "acos": torch.acos, "asin": torch.asin, "atan": torch.atan, "atanh": torch.atanh,
    "ceil": torch.ceil, "floor": torch.floor, "cos": torch.cos, "cosh": torch.cosh, "sin": torch.sin,
    "sinh": torch.sinh, "tan": torch.tan, "tanh": torch.tanh, "erf": torch.erf, "exp": torch.exp,
    "sqrt": torch.sqrt,
}


def _float_unary(op_type, fn):
    def kernel(x):
        return fn(floating(x))

    kernel.__name__ = op_type
    kernel.__doc__ = f"``{fn.__name__}`` of ``x``, computed in fp32."
    return kernel


for _op_type, _fn in _FLOAT_UNARY.items():
    register(_op_type)(_float_unary(_op_type, _fn))


@register("round")
def round_(x):
    """Round to nearest, ties to even (the spec: ``0.5`` rounds to ``0``; its reference is ``np.round``)."""
    return torch.round(floating(x))


@register("exp2")
def exp2(x):
    """``2 ** x``; also typed for int32, where negative exponents truncate to 0 in the executor's cast."""
    return torch.exp2(floating(x))


# ---- unary: int32 allowed ----------------------------------------------------------------------------------
@register("abs")
def abs_(x):
    return torch.abs(as_tensor(x))


@register("sign")
def sign(x):
    """-1, 0 or 1 (``sign(0) == 0``)."""
    return torch.sign(as_tensor(x))


@register("square")
def square(x):
    x = as_tensor(x)
    return x * x


@register("threshold")
def threshold(x, alpha):
    """``max(x, alpha)``: a lower bound, not torch's ``threshold`` (which replaces values below it)."""
    x = as_tensor(x)
    return torch.clamp(x, min=scalar(alpha))


@register("clip")
def clip(x, alpha, beta):
    """``min(max(x, alpha), beta)``."""
    return torch.clamp(floating(x), min=float(scalar(alpha)), max=float(scalar(beta)))


# ---- unary with epsilon -------------------------------------------------------------------------------------
@register("inverse")
def inverse(x, epsilon=1e-4):
    """``1 / (x + epsilon)``; the default epsilon is 1e-4 (the torch frontend passes 0 for ``reciprocal``)."""
    return 1.0 / (floating(x) + float(scalar(epsilon)))


@register("log")
def log(x, epsilon=1e-45):
    """``log(x + epsilon)``; the default 1e-45 is an fp32 denormal, so ``log(0)`` is about -103, not -inf."""
    return torch.log(floating(x) + float(scalar(epsilon)))


@register("rsqrt")
def rsqrt(x, epsilon=1e-12):
    """``1 / sqrt(x + epsilon)``; default epsilon 1e-12."""
    return torch.rsqrt(floating(x) + float(scalar(epsilon)))


@register("logical_not")
def logical_not(x):
    return torch.logical_not(as_tensor(x))


# ---- binary arithmetic --------------------------------------------------------------------------------------
@register("add")
def add(x, y):
    if _same_kind(x, y):
        return x + y
    x, y = _pair(x, y)
    return x + y


@register("sub")
def sub(x, y):
    if _same_kind(x, y):
        return x - y
    x, y = _pair(x, y)
    return x - y


@register("mul")
def mul(x, y):
    if _same_kind(x, y):
        return x * y
    x, y = _pair(x, y)
    return x * y


@register("real_div")
def real_div(x, y):
    """True division. int32 operands are divided in fp32 and the int32 output truncates toward zero
    (the executor's cast); the spec leaves integer rounding unstated, its reference divides exactly."""
    if _same_kind(x, y) and x.dtype is torch.float32:
        return x / y
    x, y = _pair(x, y)
    return floating(x) / floating(y)


@register("floor_div")
def floor_div(x, y):
    """``x / y`` rounded toward -inf, for ints and floats. Floats follow Python/numpy ``//`` (the spec's
    reference), which differs from ``floor(x / y)`` only when the quotient rounds onto an integer."""
    x, y = _pair(x, y)
    return torch.div(x, y, rounding_mode="floor")


@register("mod")
def mod(x, y):
    """Python-style modulo (the spec's reference is ``%``): the result takes the sign of ``y``."""
    x, y = _pair(x, y)
    return torch.remainder(x, y)


@register("pow")
def pow_(x, y):
    """``x ** y``. A negative base with a non-integer exponent gives NaN. int32 operands stay integer unless
    an exponent is negative, which is computed in fp32 and truncated by the executor's cast."""
    x, y = _pair(x, y)
    if not x.is_floating_point() and bool((y < 0).any()):
        x, y = x.float(), y.float()
    return torch.pow(x, y)


@register("maximum")
def maximum(x, y):
    x, y = _pair(x, y)
    return torch.maximum(x, y)


@register("minimum")
def minimum(x, y):
    x, y = _pair(x, y)
    return torch.minimum(x, y)


# ---- binary comparisons and logic (bool outputs) ------------------------------------------------------------
_COMPARISONS = {
    "equal": torch.eq, "not_equal": torch.ne, "greater": torch.gt, "greater_equal": torch.ge,
    "less": torch.lt, "less_equal": torch.le,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or, "logical_xor": torch.logical_xor,
}


def _comparison(op_type, fn):
    def kernel(x, y):
        x, y = _pair(x, y)
        return fn(x, y)

    kernel.__name__ = op_type
    kernel.__doc__ = f"``{fn.__name__}(x, y)`` with broadcasting; a bool tensor."
    return kernel


for _op_type, _fn in _COMPARISONS.items():
    register(_op_type)(_comparison(_op_type, _fn))


# ---- specializers: a constant operand prepared once per step (see ``ops.specializer``) -----------------------
def _const_left_special(kernel, op):
    def make(consts, var_params):
        x = consts.get("x")
        if var_params != ("y",) or x.__class__ is not float:
            return None

        def run(y):
            if y.__class__ is _Tensor and y.dtype is torch.float32:
                return op(x, y)  # the Python float is a 0-d scalar operand, as the 0-d tensor of ``_pair``
            return kernel(x, y)

        return run

    return make


specializer("add")(_const_left_special(add, lambda x, y: x + y))
specializer("sub")(_const_left_special(sub, lambda x, y: x - y))
specializer("mul")(_const_left_special(mul, lambda x, y: x * y))


@specializer("pow")
def _pow_special(consts, var_params):
    y = consts.get("y")
    if var_params != ("x",) or y.__class__ is not float:
        return None
    exponent = as_tensor(y)  # what ``_pair`` makes of it (torch.pow with a 0-d tensor, not a Python scalar)

    def run(x):
        if x.__class__ is _Tensor and x.dtype is torch.float32:
            return torch.pow(x, exponent)
        return pow_(x, y)

    return run
