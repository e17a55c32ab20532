"""Image resizing ops: ``upsample_nearest_neighbor``, ``upsample_bilinear``, ``resize_nearest_neighbor``,
``resize_bilinear``, ``resize`` (iOS17), ``crop``, ``crop_resize``, ``affine``, ``resample``
(MIL ``image_resizing``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.image_resizing

Resizing is separable: each resized axis is interpolated on its own grid of source positions. The grids of
the ``sampling_mode`` values follow the spec (Core ML's ``SamplingMode``): for an input interval ``[0, X-1]``
sampled at ``N`` points,

- ``STRICT_ALIGN_CORNERS``: ``i * (X-1)/(N-1)`` (``0`` when ``N == 1``);
- ``ALIGN_CORNERS``: the same, but ``(X-1)/2`` when ``N == 1``;
- ``DEFAULT``: ``i * X/N`` (TensorFlow's legacy resize);
- ``OFFSET_CORNERS``: ``(i + 0.5) * max(1, X-1)/N``;
- ``UNALIGN_CORNERS``: ``(i + 0.5) * X/N - 0.5`` (half-pixel centres, torch ``align_corners=False``);

every point clamped into ``[0, X-1]``. Scale-factor ops take the output size ``floor(scale * X)`` (computed in
fp32 like coremltools' type inference) and then use the recomputed ratio ``X/N``, not ``1/scale``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import register
from ._util import floating, ints, scalar

SAMPLING_MODES = ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "DEFAULT", "OFFSET_CORNERS", "UNALIGN_CORNERS")


def _grid(length: float, n: int, mode: str) -> torch.Tensor:
    """Source positions (float64) of ``n`` output points on an interval ``[0, length]`` (``length = X-1``)."""
    i = torch.arange(n, dtype=torch.float64)
    size = length + 1
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n == 1:
            g = torch.full((1,), length / 2 if mode == "ALIGN_CORNERS" else 0.0, dtype=torch.float64)
        else:
            g = i * (length / (n - 1))
    elif mode == "DEFAULT":
        g = i * (size / n)
    elif mode == "OFFSET_CORNERS":
        spacing = max(1.0, length) / n
        g = (i + 0.5) * spacing
    elif mode == "UNALIGN_CORNERS":
        g = (i + 0.5) * (size / n) - 0.5
    else:
        raise NotImplementedError(f"sampling_mode {mode!r}")
    low, high = min(0.0, length), max(0.0, length)
    return g.clamp(low, high)


def _linear(x: torch.Tensor, axis: int, pos: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``x`` along ``axis`` at source positions ``pos`` (inside ``[0, size-1]``)."""
    size = x.shape[axis]
    lo = pos.floor().clamp(0, size - 1)
    frac = (pos - lo).to(torch.float32)
    lo = lo.long()
    hi = (lo + 1).clamp(max=size - 1)
    shape = [1] * x.dim()
    shape[axis] = -1
    a, b = x.index_select(axis, lo), x.index_select(axis, hi)
    return a + (b - a) * frac.reshape(shape)


def _nearest(x: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    return x.index_select(axis, index.long().clamp(0, x.shape[axis] - 1))


def _scaled_size(size: int, scale) -> int:
    return int(np.floor(np.float32(scale) * np.float32(size)))


@register("upsample_nearest_neighbor")
def upsample_nearest_neighbor(x, scale_factor_height=1, scale_factor_width=1):
    """Nearest neighbour on the last two axes: output index ``i`` reads ``floor(i * X/N)`` (torch's
    ``nearest``, TensorFlow's legacy mode; Core ML's fractional-scale results in coremltools' tests agree)."""
    x = floating(x)
    for axis, scale in ((-2, scale_factor_height), (-1, scale_factor_width)):
        size = x.shape[axis]
        n = _scaled_size(size, scalar(scale))
        index = torch.floor(torch.arange(n, dtype=torch.float64) * (size / n))
        x = _nearest(x, x.dim() + axis, index)
    return x


@register("upsample_bilinear")
def upsample_bilinear(x, scale_factor_height=1, scale_factor_width=1, align_corners=True, half_pixel_centers=None):
    """Bilinear on the last two axes. ``align_corners`` -> ``STRICT_ALIGN_CORNERS`` grid; otherwise
    ``half_pixel_centers`` (iOS16, default ``not align_corners``) picks ``UNALIGN_CORNERS`` (torch's
    ``align_corners=False``) or, when False, ``DEFAULT`` (TensorFlow's legacy)."""
    x = floating(x)
    align = bool(scalar(align_corners))
    half = (not align) if half_pixel_centers is None else bool(scalar(half_pixel_centers))
    if align and half:
        raise NotImplementedError("upsample_bilinear with align_corners=True and half_pixel_centers=True")
    mode = "STRICT_ALIGN_CORNERS" if align else ("UNALIGN_CORNERS" if half else "DEFAULT")
    for axis, scale in ((-2, scale_factor_height), (-1, scale_factor_width)):
        size = x.shape[axis]
        n = _scaled_size(size, scalar(scale))
        x = _linear(x, x.dim() + axis, _grid(size - 1, n, mode))
    return x


def _resize_axes(x: torch.Tensor, sizes: list[int], linear: bool, mode: str) -> torch.Tensor:
    """Resize the last ``len(sizes)`` axes of ``x`` to ``sizes``."""
    if mode not in SAMPLING_MODES:
        raise NotImplementedError(f"sampling_mode {mode!r}")
    first = x.dim() - len(sizes)
    for k, n in enumerate(sizes):
        axis = first + k
        size = x.shape[axis]
        if linear:
            x = _linear(x, axis, _grid(size - 1, n, mode))
        elif mode in ("DEFAULT", "UNALIGN_CORNERS"):
            # Half-pixel nearest: floor((i + 0.5) * X/N), TensorFlow's half_pixel_centers nearest (coremltools
            # maps it to these ops) and torch's ``nearest-exact``.
            x = _nearest(x, axis, torch.floor((torch.arange(n, dtype=torch.float64) + 0.5) * (size / n)))
        else:
            x = _nearest(x, axis, torch.floor(_grid(size - 1, n, mode) + 0.5))
    return x


@register("resize_bilinear")
def resize_bilinear(x, target_size_height=1, target_size_width=1, sampling_mode="DEFAULT"):
    """Bilinear resize of the last two axes to a target size, on the ``sampling_mode`` grid."""
    sizes = [int(scalar(target_size_height)), int(scalar(target_size_width))]
    return _resize_axes(floating(x), sizes, True, str(sampling_mode))


@register("resize_nearest_neighbor")
def resize_nearest_neighbor(x, target_size_height, target_size_width):
    """Nearest resize of the last two axes: output index ``i`` reads ``floor((i + 0.5) * X/N)`` (half-pixel
    centres; Core ML's results in coremltools' ``resize`` tests agree)."""
    sizes = [int(scalar(target_size_height)), int(scalar(target_size_width))]
    return _resize_axes(floating(x), sizes, False, "DEFAULT")


@register("resize")
def resize(x, shape, resized_dims, interpolation_mode="LINEAR", sampling_mode="DEFAULT"):
    """iOS17: resize the last ``resized_dims`` axes to the last ``resized_dims`` entries of ``shape`` (which
    may be a runtime tensor); a 0 there keeps the input size. ``NEAREST_NEIGHBOR`` with ``DEFAULT`` or
    ``UNALIGN_CORNERS`` uses the half-pixel rule of ``resize_nearest_neighbor``, with the align modes it
    rounds the mode's grid. Integer inputs are interpolated in fp32 (the executor casts back)."""
    k = int(scalar(resized_dims))
    mode = str(interpolation_mode)
    if mode not in ("LINEAR", "NEAREST_NEIGHBOR"):
        raise NotImplementedError(f"resize interpolation_mode {mode!r}")
    x = floating(x)
    if k == 0:
        return x.clone()
    wanted = ints(shape)[-k:]
    sizes = [w if w != 0 else x.shape[x.dim() - k + i] for i, w in enumerate(wanted)]
    return _resize_axes(x, sizes, mode == "LINEAR", str(sampling_mode))


@register("crop")
def crop(x, crop_height, crop_width):
    """Drop ``crop_height[0]`` rows at the top and ``crop_height[1]`` at the bottom (axis -2), likewise
    ``crop_width`` on axis -1."""
    top, bottom = ints(crop_height)
    left, right = ints(crop_width)
    h, w = x.shape[-2], x.shape[-1]
    return x[..., top:h - bottom, left:w - right]


def _box_corners(boxes: torch.Tensor, mode: str) -> torch.Tensor:
    """``[N, 4]`` boxes in ``mode`` as ``[N, 4]`` = ``(h_start, w_start, h_end, w_end)``."""
    a, b, c, d = boxes.unbind(-1)
    if mode == "CORNERS_HEIGHT_FIRST":
        return torch.stack([a, b, c, d], -1)
    if mode == "CORNERS_WIDTH_FIRST":
        return torch.stack([b, a, d, c], -1)
    if mode == "CENTER_SIZE_HEIGHT_FIRST":
        return torch.stack([a - c / 2, b - d / 2, a + c / 2, b + d / 2], -1)
    if mode == "CENTER_SIZE_WIDTH_FIRST":
        return torch.stack([b - d / 2, a - c / 2, b + d / 2, a + c / 2], -1)
    raise NotImplementedError(f"box_coordinate_mode {mode!r}")


def _crop_one(image: torch.Tensor, box, th: int, tw: int, mode: str, pad_value: float) -> torch.Tensor:
    """One ``[C, th, tw]`` crop of ``image`` (``[C, H, W]``); sample points outside the image get ``pad_value``."""
    h_start, w_start, h_end, w_end = [float(v) for v in box]
    height, width = image.shape[-2], image.shape[-1]
    ys = h_start + _grid(h_end - h_start, th, mode)
    xs = w_start + _grid(w_end - w_start, tw, mode)
    outside = bool((ys < 0).any() or (ys > height - 1).any() or (xs < 0).any() or (xs > width - 1).any())
    if mode == "UNALIGN_CORNERS" and (outside or h_end < h_start or w_end < w_start):
        # Core ML's rule here is not the one below and is not documented. The only published Core ML result
        # (coremltools' op tests, iOS15/test_image_resizing.py TestCropResize, run on device for the iOS15 and
        # iOS16 opsets): roi [2, 2, 1, 1], normalized_coordinates=True, UNALIGN_CORNERS, 2x2 crop of
        # arange(1, 17).reshape(4, 4) gives [[3.5, 5.5], [11.5, 13.5]], i.e. it reads rows/columns 0.5 and 2.5
        # (inside the image, in increasing order), where this grid puts every point outside the image (pad) and
        # clamping them into it would read 16s. Several rules fit that one point, none is confirmed: refuse
        # rather than return made-up values. (ALIGN_CORNERS boxes outside or inverted are confirmed by
        # coremltools' iOS14/16/17 tests: inverted boxes sample backwards, outside points read pad_value.)
        raise NotImplementedError(
            f"crop_resize: box (h_start, w_start, h_end, w_end) = {[h_start, w_start, h_end, w_end]} in pixels "
            f"on a {height}x{width} image is inverted or samples outside the image, and Core ML's rule for such "
            f"boxes under sampling_mode UNALIGN_CORNERS is undocumented (it does not pad: coremltools' own "
            f"tests show it reading inside the image); expected a box with start <= end inside "
            f"[0, {height - 1}] x [0, {width - 1}]")
    out = _linear(_linear(image, 1, ys.clamp(0, height - 1)), 2, xs.clamp(0, width - 1))
    inside = ((ys >= 0) & (ys <= height - 1))[:, None] & ((xs >= 0) & (xs <= width - 1))[None, :]
    return torch.where(inside, out, torch.tensor(pad_value, dtype=out.dtype))


@register("crop_resize")
def crop_resize(x, roi=None, boxes=None, box_indices=None, target_height=1, target_width=1,
                normalized_coordinates=False, spatial_scale=1.0, box_coordinate_mode="CORNERS_HEIGHT_FIRST",
                sampling_mode="DEFAULT", pad_value=0.0):
    """Bilinear crops of boxes of ``x`` (``[B, C, H, W]``), like TensorFlow's ``crop_and_resize``.

    iOS15/16 take ``roi`` ``[N, 1, 4|5, 1, 1]`` and return ``[N, B, C, th, tw]`` (4 numbers: each box on every
    image) or ``[N, 1, C, th, tw]`` (5 numbers: the first is the image index); iOS17 takes ``boxes``
    ``[N, 4]`` with ``box_indices`` (default ``arange(N)``) and returns ``[N, C, th, tw]``. Box coordinates
    are multiplied by ``spatial_scale``, and by ``(H-1, W-1)`` when ``normalized_coordinates``; the
    ``sampling_mode`` grid runs from the box start to its end (an inverted box flips the crop); sample points
    outside ``[0, H-1] x [0, W-1]`` read ``pad_value`` (iOS16+). Centre-size boxes span centre -/+ size/2.
    With ``UNALIGN_CORNERS``, inverted boxes and boxes that sample outside the image raise NotImplementedError:
    Core ML neither pads nor clamps them, by an undocumented rule (see ``_crop_one``).
    """
    x = floating(x)
    th, tw = int(scalar(target_height)), int(scalar(target_width))
    mode, pad = str(sampling_mode), float(scalar(pad_value))
    if mode not in SAMPLING_MODES:
        raise NotImplementedError(f"sampling_mode {mode!r}")
    if roi is not None:
        flat = floating(roi)
        flat = flat.reshape(flat.shape[0], -1)
        indices = flat[:, 0].round().long() if flat.shape[1] == 5 else None
        coords = flat[:, -4:]
    else:
        coords = floating(boxes).reshape(-1, 4)
        indices = (torch.arange(coords.shape[0]) if box_indices is None
                   else torch.as_tensor(box_indices).reshape(-1).long())
    corners = _box_corners(coords.double(), str(box_coordinate_mode)) * float(scalar(spatial_scale))
    if scalar(normalized_coordinates):
        scale = torch.tensor([x.shape[2] - 1, x.shape[3] - 1] * 2, dtype=torch.float64)
        corners = corners * scale
    crops = []
    for n, box in enumerate(corners):
        images = range(x.shape[0]) if indices is None else [int(indices[n])]
        crops.append(torch.stack([_crop_one(x[b], box, th, tw, mode, pad) for b in images]))
    out = torch.stack(crops)  # [N, B or 1, C, th, tw]
    return out if roi is not None else out[:, 0]


def _pixel_positions(coords: torch.Tensor, size: int, coordinates_mode: str, align_corners: bool) -> torch.Tensor:
    """Coordinates in ``coordinates_mode`` as pixel positions (0 = centre of the first pixel)."""
    if coordinates_mode == "unnormalized":
        return coords
    if coordinates_mode == "normalized_minus_one_to_one":
        unit = (coords + 1) / 2
    elif coordinates_mode == "normalized_zero_to_one":
        unit = coords
    else:
        raise NotImplementedError(f"coordinates_mode {coordinates_mode!r}")
    return unit * (size - 1) if align_corners else unit * size - 0.5


def _sample(x, px, py, sampling_mode: str, padding_mode: str, padding_value: float) -> torch.Tensor:
    """``x`` (``[B, C, H, W]``) read at pixel positions ``px``, ``py`` (``[B, Ho, Wo]``) with torch's
    ``grid_sample``: MIL ``reflection`` (mirror about the edge pixel centres) is torch's reflection with
    ``align_corners=True``, MIL ``symmetric`` (mirror about the image border) the one with ``False``."""
    if sampling_mode not in ("bilinear", "nearest"):
        raise NotImplementedError(f"sampling_mode {sampling_mode!r}")
    height, width = x.shape[-2], x.shape[-1]
    if padding_mode == "reflection":
        gx = 2 * px / max(width - 1, 1) - 1
        gy = 2 * py / max(height - 1, 1) - 1
        align, torch_padding = True, "reflection"
    else:
        gx = (2 * px + 1) / width - 1
        gy = (2 * py + 1) / height - 1
        align = False
        torch_padding = {"constant": "zeros", "border": "border", "symmetric": "reflection"}.get(padding_mode)
        if torch_padding is None:
            raise NotImplementedError(f"padding_mode {padding_mode!r}")
    grid = torch.stack([gx, gy], -1).to(torch.float32)
    out = F.grid_sample(x, grid, mode=sampling_mode, padding_mode=torch_padding, align_corners=align)
    if padding_mode == "constant" and padding_value != 0.0:
        weight_inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode=sampling_mode, padding_mode="zeros",
                                      align_corners=align)
        out = out + padding_value * (1 - weight_inside)
    return out


@register("resample")
def resample(x, coordinates, sampling_mode, padding_mode, padding_value, coordinates_mode, align_corners):
    """Reads ``x`` (``[B, C, H, W]``) at ``coordinates`` (``[B, Ho, Wo, 2]``, ``(x, y)`` = ``(w, h)``) with
    bilinear or nearest sampling; ``align_corners`` decides whether the normalized extrema are the corner
    pixel centres or the image border (ignored for ``unnormalized``). Nearest rounds halves to even (torch)."""
    x = floating(x)
    coords = floating(coordinates).double()
    mode, align = str(coordinates_mode), bool(scalar(align_corners))
    px = _pixel_positions(coords[..., 0], x.shape[-1], mode, align)
    py = _pixel_positions(coords[..., 1], x.shape[-2], mode, align)
    return _sample(x, px, py, str(sampling_mode), str(padding_mode), float(scalar(padding_value)))


def _normalized_centres(n: int, align_corners: bool) -> torch.Tensor:
    """Normalized ``[-1, 1]`` coordinates of ``n`` output pixel centres (one pixel: 0, as torch)."""
    if align_corners:
        return torch.linspace(-1.0, 1.0, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    return (2 * torch.arange(n, dtype=torch.float64) + 1) / n - 1


@register("affine")
def affine(x, transform_matrix, output_height, output_width, sampling_mode, padding_mode, padding_value,
           coordinates_mode, align_corners):
    """Output pixel at normalized ``(x, y)`` (``[-1, 1]``, extrema per ``align_corners``) reads the input at
    ``(a0*x + a1*y + a2, b0*x + b1*y + b2)``, then samples like ``resample`` (torch's ``affine_grid`` +
    ``grid_sample``). A ``transform_matrix`` with one row applies to every image."""
    x = floating(x)
    if str(coordinates_mode) != "normalized_minus_one_to_one":
        raise NotImplementedError(f"affine coordinates_mode {coordinates_mode!r}")
    align = bool(scalar(align_corners))
    m = floating(transform_matrix).double().reshape(-1, 6).expand(x.shape[0], 6)[:, :, None, None]
    ys = _normalized_centres(int(scalar(output_height)), align)[:, None]
    xs = _normalized_centres(int(scalar(output_width)), align)[None, :]
    src_x = m[:, 0] * xs + m[:, 1] * ys + m[:, 2]
    src_y = m[:, 3] * xs + m[:, 4] * ys + m[:, 5]
    px = _pixel_positions(src_x, x.shape[-1], "normalized_minus_one_to_one", align)
    py = _pixel_positions(src_y, x.shape[-2], "normalized_minus_one_to_one", align)
    return _sample(x, px, py, str(sampling_mode), str(padding_mode), float(scalar(padding_value)))
