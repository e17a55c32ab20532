"""Convolution ops: ``conv``, ``conv_transpose``, ``conv_quantized`` (MIL ``conv``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.conv

iOS17 lets ``weight``/``bias`` have another float dtype than ``x`` and ``conv_transpose``'s weight be a
variable; both kernels take any of these (computing in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register, specializer
from ._util import as_tensor, floating, ints, scalar, torch_pad_order


def _same_pads(in_sizes, kernel, strides, dilations, lower: bool):
    """Core ML's SamePadding: output ``ceil(in/stride)``; an odd total puts the extra element at the end
    (``BOTTOM_RIGHT_HEAVY``) or, for ``same_lower``, at the beginning (``TOP_LEFT_HEAVY``)."""
    pads = []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        pads += [big, small] if lower else [small, big]
    return pads


def resolve_pads(pad_type: str, pad, in_sizes, kernel, strides, dilations) -> list[int]:
    """Explicit [begin_0, end_0, begin_1, end_1, ...] padding for MIL's pad_type."""
    n = len(in_sizes)
    if pad_type == "valid":
        return [0] * (2 * n)
    if pad_type == "custom":
        return ints(pad) if pad is not None else [0] * (2 * n)
    if pad_type in ("same", "same_lower"):
        return _same_pads(in_sizes, kernel, strides, dilations, lower=pad_type == "same_lower")
    raise NotImplementedError(f"pad_type {pad_type!r}")


def conv_padding(pads: list[int]) -> tuple[list[int] | None, list[int]]:
    """MIL pads as a conv call takes them: ``(None, per-dim padding)`` when symmetric, else ``(F.pad's list, 0s)``
    (the input padded first, asymmetrically, then an unpadded conv)."""
    n = len(pads) // 2
    if all(pads[2 * i] == pads[2 * i + 1] for i in range(n)):
        return None, [pads[2 * i] for i in range(n)]
    return torch_pad_order(pads), [0] * n


@register("conv")
def conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    """1-D/2-D/3-D convolution; ``weight`` is ``[C_out, C_in/groups, *K]`` and may be a variable.

    ``same`` pads like TensorFlow (output ``ceil(in/stride)``, an odd total puts the extra element at the
    end); ``same_lower`` puts it at the beginning; ``pad`` is read only with ``pad_type="custom"``.
    """
    x, weight = floating(x), floating(weight)
    n = x.dim() - 2
    strides = ints(strides) if strides is not None else [1] * n
    dilations = ints(dilations) if dilations is not None else [1] * n
    extra, padding = conv_padding(resolve_pads(str(pad_type), pad, x.shape[2:], weight.shape[2:], strides, dilations))
    if extra is not None:
        x = F.pad(x, extra)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return fn(x, weight, None if bias is None else floating(bias), strides, padding, dilations, int(scalar(groups)))


@register("conv_transpose")
def conv_transpose(x, weight, bias=None, pad=None, output_shape=None, pad_type="valid", strides=None,
                   dilations=None, groups=1):
    """Transposed convolution; ``weight`` is ``[C_in, C_out/groups, *K]`` (torch's layout).

    Computed as the full transposed convolution (spatial size ``(D_in-1)*stride + (K-1)*dilation + 1``),
    then cropped: ``custom`` drops ``pad[2i]`` elements at the beginning and ``pad[2i+1]`` at the end,
    ``valid`` keeps everything, ``same`` keeps ``D_in*stride`` elements centred like TensorFlow's
    ``conv2d_transpose`` (the smaller half dropped at the beginning). ``output_shape`` (``[N, C_out, *D]`` or
    just ``*D``), when given, fixes the output size instead; positions past the full output (what torch's
    ``output_padding`` adds) hold only the bias.
    """
    x, weight = floating(x), floating(weight)
    n = x.dim() - 2
    strides = ints(strides) if strides is not None else [1] * n
    dilations = ints(dilations) if dilations is not None else [1] * n
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    full = fn(x, weight, None, strides, 0, 0, int(scalar(groups)), dilations)
    pad_type = str(pad_type)
    if pad_type not in ("valid", "same", "custom"):
        raise NotImplementedError(f"conv_transpose pad_type {pad_type!r}")
    pads = ints(pad) if (pad is not None and pad_type == "custom") else [0] * (2 * n)
    wanted = ints(output_shape)[-n:] if output_shape is not None else None
    out = full
    for i in range(n):
        axis, size = 2 + i, full.shape[2 + i]
        if wanted is not None:
            length = wanted[i]
        elif pad_type == "same":
            length = x.shape[2 + i] * strides[i]
        else:
            length = size - pads[2 * i] - pads[2 * i + 1]
        begin = max(size - length, 0) // 2 if pad_type == "same" else pads[2 * i]
        kept = out.narrow(axis, begin, min(length, size - begin))
        if kept.shape[axis] < length:  # zeros past the full output
            extra = [0, 0] * (out.dim() - 1 - axis) + [0, length - kept.shape[axis]]
            kept = F.pad(kept, extra)
        out = kept
    if bias is not None:
        out = out + floating(bias).reshape([1, -1] + [1] * n)
    return out


@register("conv_quantized")
def conv_quantized(x, weight, quantization_type, quant_scale, quant_bias, nbits=8, bias=None, strides=None,
                   pad_type="valid", pad=None, dilations=None, groups=1):
    """iOS15's experimental ``conv`` with an inline-quantized weight: ``W = weight * quant_scale + quant_bias``,
    then :func:`conv` with every other input as is.

    ``weight`` holds uint8 codes below ``2**nbits`` (``1 <= nbits <= 8``); ``quant_scale`` / ``quant_bias`` are a
    scalar (or one value) or one value per output channel. Only ``quantization_type="linear"`` is defined: the
    op has no lookup-table input, so ``"lut"`` has no meaning and is refused. A ``bias`` is refused too: the
    definition types it uint8 like the weight without saying whether it is dequantized (coremltools' neural-network
    backend adds it unscaled); the converters that emit this op (coremltools' TensorFlow frontend) never give one.
    """
    if str(quantization_type) != "linear":
        raise NotImplementedError(f"conv_quantized: input 'quantization_type' {str(quantization_type)!r} is not "
                                  "supported; only 'linear' is defined (the op has no lookup-table input for 'lut')")
    if bias is not None:
        raise NotImplementedError("conv_quantized: input 'bias' is not supported: the op definition types it uint8 "
                                  "like the weight but does not say whether it is dequantized")
    bits = int(scalar(nbits))
    if not 1 <= bits <= 8:
        raise ValueError(f"conv_quantized: input 'nbits' must lie in [1, 8], got {bits}")
    codes = as_tensor(weight)
    if codes.is_floating_point() or codes.dtype == torch.bool:
        raise ValueError(f"conv_quantized: input 'weight' must be uint8 codes, got {codes.dtype}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise ValueError(f"conv_quantized: input 'weight' holds codes in [{int(codes.min())}, {int(codes.max())}], "
                         f"expected [0, {2**bits - 1}] for nbits={bits}")
    c_out = codes.shape[0]

    def per_channel(name, value):
        t = floating(value).reshape(-1)
        if t.numel() == 1:
            return t.reshape([])
        if t.numel() != c_out:
            raise ValueError(f"conv_quantized: input {name!r} must hold 1 or {c_out} (output channels) values, "
                             f"got {t.numel()}")
        return t.reshape([c_out] + [1] * (codes.dim() - 1))

    dequantized = codes.float() * per_channel("quant_scale", quant_scale) + per_channel("quant_bias", quant_bias)
    return conv(x, dequantized, None, strides, pad_type, pad, dilations, groups)


# ---- specializer: constant weight and attributes prepared once per step (see ``ops.specializer``) ------------
@specializer("conv")
def _conv_special(consts, var_params):
    """A constant weight: strides, dilations, groups, bias parsed once, the padding once per input size; then
    the same ``F.conv*d`` call as :func:`conv`."""
    if var_params != ("x",) or not isinstance(consts.get("weight"), torch.Tensor):
        return None
    consts = dict(consts)
    weight = floating(consts["weight"])
    n = weight.dim() - 2
    if n not in (1, 2, 3):
        return None
    strides = ints(consts["strides"]) if consts.get("strides") is not None else [1] * n
    dilations = ints(consts["dilations"]) if consts.get("dilations") is not None else [1] * n
    bias = None if consts.get("bias") is None else floating(consts["bias"])
    groups = int(scalar(consts.get("groups", 1)))
    pad_type = str(consts.get("pad_type", "valid"))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    by_size: dict = {}

    def plan(sizes):
        return conv_padding(resolve_pads(pad_type, consts.get("pad"), sizes, weight.shape[2:], strides, dilations))

    def run(x):
        if x.__class__ is torch.Tensor and x.dim() == n + 2:
            if x.dtype is not torch.float32:
                x = floating(x)
            sizes = x.shape[2:]
            how = by_size.get(sizes)
            if how is None:
                how = by_size[sizes] = plan(sizes)
            extra, padding = how
            if extra is not None:
                x = F.pad(x, extra)
            return fn(x, weight, bias, strides, padding, dilations, groups)
        return conv(x, **consts)

    return run
