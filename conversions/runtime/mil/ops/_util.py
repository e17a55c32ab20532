"""Small helpers shared by the kernels: turning inputs that may be Python scalars or tensors into what torch wants."""

from __future__ import annotations

from typing import Any

import torch

TORCH_DTYPES = {
    "fp16": torch.float32,  # carried in fp32, rounded by the executor
    "fp32": torch.float32,
    "fp64": torch.float32,
    "bf16": torch.float32,
    "int4": torch.int8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint1": torch.uint8,
    "uint2": torch.uint8,
    "uint3": torch.uint8,
    "uint4": torch.uint8,
    "uint6": torch.uint8,
    "uint8": torch.uint8,
    "uint16": torch.int32,
    "uint32": torch.int64,
    "uint64": torch.int64,
    "bool": torch.bool,
}


def as_tensor(value: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    """A tensor for ``value`` (tensor, Python scalar or list); scalars take ``like``'s dtype when given."""
    if isinstance(value, torch.Tensor):
        return value
    if like is not None and not isinstance(value, (list, tuple)):
        return torch.tensor(value, dtype=like.dtype)
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float32)
    if isinstance(value, bool):
        return torch.tensor(value, dtype=torch.bool)
    if isinstance(value, int):
        return torch.tensor(value, dtype=torch.int32)
    t = torch.tensor(value)
    return t.float() if t.is_floating_point() else t


def ints(value: Any) -> list[int]:
    """A list of Python ints from a tensor, list or scalar (attributes such as ``perm``, ``axes``, ``pad``)."""
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def scalar(value: Any):
    """A Python scalar from a rank-0/size-1 tensor or a Python scalar."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1)[0].item()
    return value


def floating(value: Any) -> torch.Tensor:
    """A float32 tensor (integer inputs of float ops are promoted)."""
    t = as_tensor(value)
    return t if t.dtype == torch.float32 else t.float()


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def torch_pad_order(pads: list[int]) -> list[int]:
    """MIL's [begin_0, end_0, begin_1, end_1, ...] as ``F.pad`` wants it: last dimension first."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[2 * i], pads[2 * i + 1]]
    return out
