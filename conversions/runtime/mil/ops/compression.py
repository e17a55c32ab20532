"""Weight compression (``constexpr_*``) and activation quantization (``quantize``, ``dequantize``).

The ``constexpr_*`` ops are what ``coremltools.optimize.coreml`` writes for compressed weights; the executor
evaluates them once, at load time. They come in two generations:

- iOS16 (written for targets iOS16/iOS17): operands are op *attributes* (the loader turns them into constant
  inputs), and ``constexpr_lut_to_dense`` / ``constexpr_sparse_to_dense`` take *flat packed bytes* plus an
  explicit ``shape``.
  https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops
- iOS18: operands are inputs, sub-byte tensors are typed (``uint1`` masks, ``uint4`` indices, ``int4`` data;
  the loader unpacks them into uint8/int8 tensors of their declared shape), LUTs and scales may be per block,
  and two sparse-to-sparse ops (``constexpr_lut_to_sparse``, ``constexpr_sparse_blockwise_shift_scale``)
  return a ``(mask, nonzero_data)`` pair that a ``constexpr_sparse_to_dense`` turns dense (joint compression).
  https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS18.compression

``quantize`` / ``dequantize`` (iOS17) act on activations at run time:
https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS17.quantization_ops
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..blob import unpack_subbyte
from . import register
from ._util import as_tensor, floating, ints, norm_axis, scalar

_QUANTIZED_RANGES = {"int8": (torch.int8, -128, 127), "uint8": (torch.uint8, 0, 255)}


def _along_axis(param, rank: int, axis: int | None) -> torch.Tensor | float:
    """A scale / zero point (scalar or vector along ``axis``) shaped to broadcast against a rank-``rank`` tensor."""
    if not isinstance(param, torch.Tensor):
        return float(param)
    param = param.float()
    if param.dim() == 0 or (param.numel() == 1 and axis is None):
        return param.reshape(())
    if param.dim() != 1 or axis is None:
        raise ValueError(f"scale/zero_point must be a scalar or a vector along `axis`, got shape {list(param.shape)}")
    shape = [1] * rank
    shape[axis] = param.numel()
    return param.reshape(shape)


def _unpack_bytes(packed, nbits: int, count: int) -> torch.Tensor:
    """``count`` unsigned ``nbits``-wide values from bytes packed LSB first (the iOS16 layout; same bit order as
    the weight file's sub-byte blobs, so the loader's numpy unpacker serves both)."""
    raw = np.asarray(packed.numpy() if isinstance(packed, torch.Tensor) else packed, dtype=np.uint8).reshape(-1)
    expected = math.ceil(nbits * count / 8)
    if raw.size != expected:
        raise ValueError(f"{raw.size} packed bytes, expected ceil({nbits} bits x {count} elements / 8) = {expected}")
    return torch.from_numpy(unpack_subbyte(raw, nbits, count, signed=False).astype(np.int64))


def _blockwise(data: torch.Tensor, param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``data`` viewed as [n0, b0, n1, b1, ...] and ``param`` (shape [n0, n1, ...]) as [n0, 1, n1, 1, ...]."""
    if param.dim() != data.dim():
        raise ValueError(f"scale/offset rank {param.dim()} differs from the data rank {data.dim()}")
    data_view, param_view = [], []
    for size, n in zip(data.shape, param.shape):
        if n == 0 or size % n:
            raise ValueError(f"data shape {list(data.shape)} is not divisible into blocks by {list(param.shape)}")
        data_view += [n, size // n]
        param_view += [n, 1]
    return data.reshape(data_view), param.reshape(param_view)


def _shift_scale(data: torch.Tensor, scale, offset) -> torch.Tensor:
    data = data.float()
    scale = as_tensor(scale).float()
    blocks, scale_view = _blockwise(data, scale)
    if offset is not None:
        _, offset_view = _blockwise(data, as_tensor(offset).float())
        blocks = blocks - offset_view
    return (blocks * scale_view).reshape(data.shape)


def _lut_lookup(indices: torch.Tensor, lut: torch.Tensor, vector_axis) -> torch.Tensor:
    """iOS18 LUT decoding: one palette per block of ``indices`` (lut shape [*blocks, palettes, vector])."""
    rank = indices.dim()
    if lut.dim() != rank + 2:
        raise ValueError(f"lut has rank {lut.dim()}, expected indices rank + 2 = {rank + 2}")
    palettes, vector = lut.shape[-2], lut.shape[-1]
    # Flat number of the palette that serves each element: its block coordinates in the lut's first dims.
    palette_id = torch.zeros(indices.shape, dtype=torch.int64)
    stride = 1
    for dim in reversed(range(rank)):
        size, n = indices.shape[dim], lut.shape[dim]
        if size % n:
            raise ValueError(f"indices dim {dim} ({size}) is not divisible by the lut's {n} blocks")
        coord = torch.arange(size) // (size // n) * stride
        palette_id = palette_id + coord.reshape([size if d == dim else 1 for d in range(rank)])
        stride *= n
    values = lut.reshape(-1, vector)[palette_id * palettes + indices.long()]  # indices.shape + [vector]
    if vector == 1:
        return values.squeeze(-1)
    if vector_axis is None:
        raise ValueError(f"vector palettization (vector size {vector}) needs vector_axis")
    axis = norm_axis(int(vector_axis), rank)
    out_shape = list(indices.shape)
    out_shape[axis] *= vector
    return values.movedim(-1, axis + 1).reshape(out_shape)


def _scatter(nonzero_data: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dense tensor of ``mask``'s shape: ``nonzero_data`` at the set positions in row-major order, 0 elsewhere."""
    mask = mask != 0
    nonzero_data = as_tensor(nonzero_data).reshape(-1)
    count = int(mask.sum())
    if count != nonzero_data.numel():
        raise ValueError(f"mask has {count} set bits but nonzero_data has {nonzero_data.numel()} elements")
    dense = torch.zeros(mask.shape, dtype=nonzero_data.dtype)
    dense[mask] = nonzero_data
    return dense


@register("constexpr_affine_dequantize")
def constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    """iOS16: ``scale * (quantized_data - zero_point)``; scale and zero point are scalars or vectors along ``axis``."""
    data = floating(quantized_data)
    axis = norm_axis(int(scalar(axis)), data.dim())
    return (data - _along_axis(zero_point, data.dim(), axis)) * _along_axis(scale, data.dim(), axis)


@register("constexpr_cast")
def constexpr_cast(source_val, output_dtype):
    """fp16 constant to fp32 (the only cast MIL defines): the values are already exact, only the type changes."""
    if output_dtype != "fp32":
        raise NotImplementedError(f"constexpr_cast output_dtype {output_dtype!r} (only 'fp32' is defined)")
    return floating(source_val)


@register("constexpr_lut_to_dense")
def constexpr_lut_to_dense(indices, lut, shape=None, vector_axis=None):
    """Palettized weights: every index picks a value (or a vector) of a look-up table.

    iOS16 form (``shape`` given): ``lut`` is one flat palette of 2**nbits entries, ``indices`` the flat uint8
    bytes holding the nbits-wide indices packed LSB first, row-major. iOS18 form: ``indices`` has its own shape
    (unpacked by the loader), ``lut`` is [*blocks, 2**nbits, vector_size] with one palette per block, and a
    vector of size > 1 fills consecutive elements along ``vector_axis``.
    """
    lut = as_tensor(lut)
    if shape is not None:
        size = lut.numel()
        nbits = size.bit_length() - 1
        if lut.dim() != 1 or size != 1 << nbits or nbits not in (1, 2, 4, 6, 8):
            raise ValueError(f"iOS16 lut must be a vector of 2, 4, 16, 64 or 256 entries, got shape {list(lut.shape)}")
        out_shape = ints(shape)
        flat = _unpack_bytes(indices, nbits, math.prod(out_shape))
        return lut[flat].reshape(out_shape)
    return _lut_lookup(as_tensor(indices), lut, vector_axis)


@register("constexpr_sparse_to_dense")
def constexpr_sparse_to_dense(nonzero_data, mask, shape=None):
    """Pruned weights: ``nonzero_data`` fills the positions whose mask bit is set (row-major), zeros elsewhere.

    iOS16 form (``shape`` given): ``mask`` is flat uint8 bytes, one bit per element, LSB first. iOS18 form:
    ``mask`` is a uint1 tensor of the output shape (unpacked by the loader).
    """
    if shape is not None:
        out_shape = ints(shape)
        mask = _unpack_bytes(mask, 1, math.prod(out_shape)).reshape(out_shape)
    return _scatter(nonzero_data, as_tensor(mask))


@register("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(data, scale, offset=None):
    """iOS18: ``scale * (data - offset)`` with one scale/offset per block; block size = data dim / scale dim."""
    return _shift_scale(as_tensor(data), scale, offset)


@register("constexpr_sparse_blockwise_shift_scale")
def constexpr_sparse_blockwise_shift_scale(data_mask, nonzero_data, scale, offset=None):
    """iOS18 joint pruning + quantization: dequantizes the nonzero values with the scale of their dense
    position's block. Returns ``(data_mask, dequantized nonzero_data)``."""
    mask = as_tensor(data_mask)
    dense = _shift_scale(_scatter(nonzero_data, mask), scale, offset)
    return mask, dense[mask != 0]


@register("constexpr_lut_to_sparse")
def constexpr_lut_to_sparse(indices_mask, indices_nonzero_data, lut, vector_axis=None):
    """iOS18 joint pruning + palettization: looks the nonzero indices up with the palette of their dense
    position's block. Returns ``(mask, values)``; for vector palettes the mask is repeated ``vector_size`` times
    along ``vector_axis`` and every index yields a vector."""
    mask = as_tensor(indices_mask)
    lut = as_tensor(lut)
    dense = _lut_lookup(_scatter(indices_nonzero_data, mask), lut, vector_axis)
    if lut.shape[-1] > 1:
        mask = mask.repeat_interleave(lut.shape[-1], dim=norm_axis(int(vector_axis), mask.dim()))
    return mask, dense[mask != 0]


@register("quantize")
def quantize(input, scale, zero_point=None, axis=None, output_dtype="int8"):
    """``clip(round(input / scale) + zero_point)`` to int8/uint8.

    Rounding is half to even (``torch.round``), as coremltools' own value inference (``np.around``) does.
    Division happens in fp32 even when the program is fp16.
    """
    if output_dtype not in _QUANTIZED_RANGES:
        raise NotImplementedError(f"quantize output_dtype {output_dtype!r} (int8 and uint8 are defined)")
    dtype, low, high = _QUANTIZED_RANGES[output_dtype]
    x = floating(input)
    axis = None if axis is None else norm_axis(int(scalar(axis)), x.dim())
    q = torch.round(x / _along_axis(scale, x.dim(), axis))
    if zero_point is not None:
        q = q + _along_axis(zero_point, x.dim(), axis)
    return q.clamp(low, high).to(dtype)


@register("dequantize")
def dequantize(input, scale, zero_point=None, axis=None):
    """``scale * (input - zero_point)`` from int8/uint8 to float."""
    x = floating(input)
    axis = None if axis is None else norm_axis(int(scalar(axis)), x.dim())
    if zero_point is not None:
        x = x - _along_axis(zero_point, x.dim(), axis)
    return x * _along_axis(scale, x.dim(), axis)
