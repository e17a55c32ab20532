"""Linear algebra ops: ``linear``, ``matmul``, ``einsum`` (MIL ``linear``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.linear

iOS17 only relaxes dtypes (``weight``/``bias`` of ``linear`` and a const operand of ``matmul`` may have another
dtype than the other input); the kernels compute in fp32 either way, and exactly in integers when every
operand is an integer (the ``int32`` type domain), since fp32 would round products beyond 2**24.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ._util import as_tensor, floating, scalar


def _operands(*values):
    """The operands as tensors of one dtype: int64 when all are integers, else fp32."""
    tensors = [as_tensor(v) for v in values]
    if all(not t.is_floating_point() and t.dtype != torch.bool for t in tensors):
        return [t.to(torch.int64) for t in tensors]
    return [floating(t) for t in tensors]


@register("linear")
def linear(x, weight, bias=None):
    """``x @ weight.T + bias``; ``x`` has rank 1 to 3, ``weight`` is ``[D_out, D_in]``."""
    if bias is None:
        x, weight = _operands(x, weight)
        return F.linear(x, weight)
    x, weight, bias = _operands(x, weight, bias)
    return F.linear(x, weight, bias)


@register("matmul")
def matmul(x, y, transpose_x=False, transpose_y=False):
    """NumPy-style batched matmul (batch dims broadcast; a rank-1 operand gets a dim prepended/appended
    and removed again, so two vectors give a scalar). ``transpose_*`` swap the last two dims of a
    rank >= 2 operand and have no effect on a vector (MIL rejects ``transpose_x`` on a vector)."""
    x, y = _operands(x, y)
    if scalar(transpose_x) and x.dim() >= 2:
        x = x.transpose(-1, -2)
    if scalar(transpose_y) and y.dim() >= 2:
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


def _labels(equation: str) -> tuple[list[int], list[int], list[int]]:
    """Each operand's subscripts numbered by first appearance: ``"nchw,nwhu->nchu"`` -> 0123, 0324, 0124."""
    lhs, out = equation.replace(" ", "").split("->")
    first, second = lhs.split(",")
    numbers: dict[str, int] = {}
    for ch in first + second + out:
        numbers.setdefault(ch, len(numbers))
    return [numbers[c] for c in first], [numbers[c] for c in second], [numbers[c] for c in out]


# The two layouts MIL's einsum accepts: a matmul over dims -1 (x) and -3 (y), the others batch.
_EINSUM_LAYOUTS = {
    ((0, 1, 2, 3), (0, 3, 2, 4), (0, 1, 2, 4)): "nchw,nwhu->nchu",
    ((0, 1, 2), (2, 1, 3), (0, 1, 3)): "chw,whu->chu",
}


@register("einsum", variadic=("values",))
def einsum(values, equation):
    """Only the layouts of the MIL spec (``"nchw,nwhu->nchu"``, ``"chw,whu->chu"`` under any letters);
    the ``n`` and ``h`` dims broadcast when one operand has size 1 there."""
    x, y = _operands(*values)
    layout = tuple(tuple(v) for v in _labels(str(equation)))
    if layout not in _EINSUM_LAYOUTS:
        raise NotImplementedError(f"einsum equation {equation!r} (MIL supports only the 'nchw,nwhu->nchu' "
                                  "and 'chw,whu->chu' layouts)")
    return torch.einsum(_EINSUM_LAYOUTS[layout], x, y)
