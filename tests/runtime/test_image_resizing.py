"""Image resizing kernels against torch, numpy references written from the spec, and Core ML's own
results (expected values that coremltools' op tests check on Apple devices)."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types as mil_types
from hypothesis import example, given, strategies as st

from conversions.runtime import load_model
from conversions.testing import assert_matches_torch, convert_module, op_types, run_program

PRECISIONS = ["fp32", "fp16"]


class Interpolations(torch.nn.Module):
    """Nearest by integer scale factors and by size, bilinear with and without align_corners."""

    def __init__(self, scale: tuple[int, int], size: tuple[int, int]):
        super().__init__()
        self.scale, self.size = scale, size

    def forward(self, x):
        return (F.interpolate(x, scale_factor=self.scale, mode="nearest"),
                F.interpolate(x, size=self.size, mode="nearest"),
                F.interpolate(x, size=self.size, mode="bilinear", align_corners=False),
                F.interpolate(x, size=self.size, mode="bilinear", align_corners=True),
                F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False))


@pytest.mark.parametrize("precision", PRECISIONS)
@given(h=st.integers(1, 8), w=st.integers(1, 8), scale=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       size=st.tuples(st.integers(1, 12), st.integers(1, 12)), seed=st.integers(0, 2**16))
def test_torch_interpolate_2d(precision, h, w, scale, size, seed):
    """Up- and down-sizing; sizes become fractional scale factors that the kernels turn back into sizes."""
    torch.manual_seed(seed)
    assert_matches_torch(Interpolations(scale, size), [torch.randn(1, 2, h, w)], precision=precision)


class KokoroUpsample1d(torch.nn.Module):
    """Kokoro's UpSample1d(\"half\"): nearest neighbour, scale factor 2 along time; and linear 1-D."""

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="linear")


@pytest.mark.parametrize("precision", PRECISIONS)
@given(channels=st.integers(1, 8), frames=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_kokoro_upsample_1d(precision, channels, frames, seed):
    torch.manual_seed(seed)
    assert_matches_torch(KokoroUpsample1d(), [torch.randn(1, channels, frames)], precision=precision)


class GridSample(torch.nn.Module):
    def __init__(self, mode: str, padding_mode: str, align_corners: bool):
        super().__init__()
        self.kwargs = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)

    def forward(self, x, grid):
        return F.grid_sample(x, grid, **self.kwargs)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(mode=st.sampled_from(["bilinear", "nearest"]), padding_mode=st.sampled_from(["zeros", "border", "reflection"]),
       align_corners=st.booleans(), h=st.integers(1, 6), w=st.integers(1, 6), oh=st.integers(1, 5),
       ow=st.integers(1, 5), seed=st.integers(0, 2**16))
# A coordinate 0.04 pixel below a tie, which a fixed +0.04 pixel nudge used to move onto the tie.
@example(mode="nearest", padding_mode="zeros", align_corners=True, h=1, w=6, oh=1, ow=2, seed=10262)
def test_torch_grid_sample_is_resample(precision, mode, padding_mode, align_corners, h, w, oh, ow, seed):
    torch.manual_seed(seed)
    grid = torch.rand(2, oh, ow, 2) * 3 - 1.5  # in and out of the image
    if mode == "nearest":
        # Keep clear of the rounding ties between two pixels, which fp16 coordinates can flip: a coordinate within
        # 0.05 pixel of a tie moves 0.1 pixel away from it (a grid unit spans `span` / 2 pixels).
        size = torch.tensor([w, h])
        span = (size - 1 if align_corners else size).clamp(min=1)
        pixels = (grid + 1) * span / 2 - (0.0 if align_corners else 0.5)
        offset = pixels - pixels.floor() - 0.5  # 0 at a tie
        away = torch.where(offset < 0, -0.1, 0.1) * 2 / span
        grid = torch.where(offset.abs() < 0.05, grid + away, grid)
    assert_matches_torch(GridSample(mode, padding_mode, align_corners), [torch.randn(2, 3, h, w), grid],
                         precision=precision)


class AffineWarp(torch.nn.Module):
    def __init__(self, theta: torch.Tensor, out_hw: tuple[int, int], align_corners: bool):
        super().__init__()
        self.register_buffer("theta", theta)
        self.out_hw, self.align_corners = out_hw, align_corners

    def forward(self, x):
        grid = F.affine_grid(self.theta, [x.shape[0], x.shape[1], *self.out_hw], align_corners=self.align_corners)
        return F.grid_sample(x, grid, align_corners=self.align_corners)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(batch=st.integers(1, 2), h=st.integers(1, 6), w=st.integers(1, 6),
       out_hw=st.tuples(st.integers(1, 6), st.integers(1, 6)), align_corners=st.booleans(), seed=st.integers(0, 2**16))
def test_torch_affine_grid_sample_is_affine(precision, batch, h, w, out_hw, align_corners, seed):
    torch.manual_seed(seed)
    theta = torch.randn(batch, 2, 3) * 0.7
    assert_matches_torch(AffineWarp(theta, out_hw, align_corners), [torch.randn(batch, 2, h, w)], precision=precision)


def test_converted_programs_use_these_ops():
    x = torch.randn(1, 2, 3, 4)
    assert op_types(convert_module(Interpolations((2, 3), (5, 2)), [x]), include_const=False) == (
        ["upsample_nearest_neighbor"] * 2 + ["upsample_bilinear"] * 3)
    grid_model = convert_module(GridSample("bilinear", "zeros", True), [x, torch.rand(1, 2, 2, 2)])
    assert op_types(grid_model, include_const=False) == ["resample"]
    assert op_types(convert_module(AffineWarp(torch.randn(1, 2, 3), (2, 2), True), [x]), include_const=False) == ["affine"]
    assert "upsample_nearest_neighbor" in op_types(convert_module(KokoroUpsample1d(), [torch.randn(1, 2, 3)]))


# ---- builder programs, numpy references written from the spec's sampling grids -------------------------

def spec_grid(x_in: int, n: int, mode: str) -> np.ndarray:
    """Source positions of resize_bilinear's sampling modes, transcribed from the MIL op documentation."""
    i = np.arange(n, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n == 1:
            g = np.array([(x_in - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0])
        else:
            g = i * (x_in - 1) / (n - 1)
    elif mode == "DEFAULT":
        g = i * (x_in - x_in / n) / (n - 1) if n > 1 else np.zeros(1)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, x_in - 1) / n
        g = 0.5 * delta + i * delta
    else:  # UNALIGN_CORNERS
        g = i * x_in / n + 0.5 * x_in / n - 0.5
    return np.clip(g, 0, x_in - 1)


def interp_matrix(x_in: int, positions: np.ndarray) -> np.ndarray:
    """[n, x_in] linear-interpolation weights: output = matrix @ input."""
    m = np.zeros((len(positions), x_in))
    for row, p in enumerate(positions):
        lo = int(np.floor(p))
        hi = min(lo + 1, x_in - 1)
        m[row, lo] += 1 - (p - lo)
        m[row, hi] += p - lo
    return m


SAMPLING_MODES = ["STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "DEFAULT", "OFFSET_CORNERS", "UNALIGN_CORNERS"]


@given(h=st.integers(1, 6), w=st.integers(1, 6), th=st.integers(1, 9), tw=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_builder_resize_bilinear_sampling_modes(h, w, th, tw, seed):
    """resize_bilinear and iOS17 resize(LINEAR) in every sampling mode, one program."""
    x = np.random.default_rng(seed).standard_normal((1, 2, h, w)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(a):
        outs = [mb.resize_bilinear(x=a, target_size_height=th, target_size_width=tw, sampling_mode=m)
                for m in SAMPLING_MODES]
        outs += [mb.resize(x=a, shape=np.array([th, tw], dtype=np.int32), resized_dims=np.uint32(2), sampling_mode=m)
                 for m in SAMPLING_MODES]
        return tuple(outs)

    kinds, outputs = run_program(prog, {"a": x})
    assert kinds == ["resize_bilinear"] * 5 + ["resize"] * 5
    for mode, got_a, got_b in zip(SAMPLING_MODES, outputs[:5], outputs[5:], strict=True):
        rows, cols = interp_matrix(h, spec_grid(h, th, mode)), interp_matrix(w, spec_grid(w, tw, mode))
        expected = rows @ x.astype(np.float64) @ cols.T
        np.testing.assert_allclose(got_a, expected, atol=1e-5, rtol=1e-4, err_msg=mode)
        np.testing.assert_allclose(got_b, expected, atol=1e-5, rtol=1e-4, err_msg=mode)


@given(shape=st.lists(st.integers(1, 5), min_size=3, max_size=4), data=st.data(), seed=st.integers(0, 2**16))
def test_builder_resize_dynamic_shape_and_nearest(shape, data, seed):
    """iOS17 resize with the target shape as a runtime input: 0 keeps a size; NEAREST_NEIGHBOR reads
    floor((i + 0.5) * in/out) like resize_nearest_neighbor; resized_dims picks how many trailing axes."""
    rank = len(shape)
    resized = data.draw(st.integers(1, rank), label="resized_dims")
    target = [data.draw(st.integers(0, 7), label="target") for _ in range(resized)]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    target_arr = np.array(target, dtype=np.int32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape), mb.TensorSpec(shape=(resized,), dtype=mil_types.int32)],
                opset_version=ct.target.iOS17)
    def prog(a, s):
        return (mb.resize(x=a, shape=s, resized_dims=np.uint32(resized), interpolation_mode="NEAREST_NEIGHBOR"),
                mb.resize(x=a, shape=s, resized_dims=np.uint32(resized), interpolation_mode="LINEAR",
                          sampling_mode="UNALIGN_CORNERS"))

    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                         compute_precision=ct.precision.FLOAT32)
    model = load_model(mlmodel, backend="mil", precision="fp32")
    outs = model.predict({"a": x, "s": target_arr})
    nearest, linear = (outs[o.name] for o in model.outputs)
    expected_n, expected_l = x.astype(np.float64), x.astype(np.float64)
    for k, t in enumerate(target):
        axis = rank - resized + k
        size = shape[axis]
        n = t or size
        index = np.minimum(np.floor((np.arange(n) + 0.5) * size / n).astype(int), size - 1)
        expected_n = np.take(expected_n, index, axis=axis)
        expected_l = np.moveaxis(np.tensordot(interp_matrix(size, spec_grid(size, n, "UNALIGN_CORNERS")),
                                              np.moveaxis(expected_l, axis, 0), axes=1), 0, axis)
    np.testing.assert_array_equal(nearest, expected_n.astype(np.float32))
    np.testing.assert_allclose(linear, expected_l, atol=1e-5, rtol=1e-4)
    # torch's nearest-exact is the same rule
    if resized == 2 and all(target):
        exact = F.interpolate(torch.from_numpy(x).reshape(-1, 1, *shape[-2:]), size=target, mode="nearest-exact")
        np.testing.assert_array_equal(nearest.reshape(exact.shape), exact.numpy())


@pytest.mark.parametrize("precision", PRECISIONS)
@given(h=st.integers(1, 6), w=st.integers(1, 6), th=st.integers(1, 9), tw=st.integers(1, 9),
       top=st.integers(1, 2), bottom=st.integers(0, 2), left=st.integers(0, 2), right=st.integers(0, 2),
       half_pixel=st.booleans(), seed=st.integers(0, 2**16))
def test_builder_nearest_crop_and_upsample_bilinear_half_pixel(precision, h, w, th, tw, top, bottom, left, right,
                                                                half_pixel, seed):
    """resize_nearest_neighbor (half-pixel, torch's nearest-exact), crop, and iOS16's
    upsample_bilinear(half_pixel_centers) with align_corners=False: TensorFlow's two conventions."""
    x = np.random.default_rng(seed).standard_normal((1, 2, h + top + bottom, w + left + right)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(a):
        return (mb.resize_nearest_neighbor(x=a, target_size_height=th, target_size_width=tw),
                mb.crop(x=a, crop_height=[top, bottom], crop_width=[left, right]),
                mb.upsample_bilinear(x=a, scale_factor_height=2, scale_factor_width=3, align_corners=False,
                                     half_pixel_centers=half_pixel))

    kinds, (nearest, cropped, upsampled) = run_program(prog, {"a": x}, precision)
    assert {"resize_nearest_neighbor", "crop", "upsample_bilinear"} <= set(kinds)
    tol = dict(atol=1e-6, rtol=1e-6) if precision == "fp32" else dict(atol=2e-2, rtol=2e-2)
    exact = F.interpolate(torch.from_numpy(x), size=(th, tw), mode="nearest-exact").numpy()
    np.testing.assert_allclose(nearest, exact, **tol)
    np.testing.assert_allclose(cropped, x[..., top:x.shape[2] - bottom, left:x.shape[3] - right], **tol)
    hh, ww = x.shape[2:]
    mode = "UNALIGN_CORNERS" if half_pixel else "DEFAULT"
    rows, cols = interp_matrix(hh, spec_grid(hh, 2 * hh, mode)), interp_matrix(ww, spec_grid(ww, 3 * ww, mode))
    expected = rows @ x.astype(np.float64) @ cols.T
    np.testing.assert_allclose(upsampled, expected, **tol)


BOX_MODES = ["CORNERS_HEIGHT_FIRST", "CORNERS_WIDTH_FIRST", "CENTER_SIZE_HEIGHT_FIRST", "CENTER_SIZE_WIDTH_FIRST"]


def crop_positions(start, end, n, mode):
    """Source positions of a crop_resize box from ``start`` to ``end`` (pixels) sampled at ``n`` points."""
    length = end - start
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n == 1:
            rel = np.full(1, length / 2 if mode == "ALIGN_CORNERS" else 0.0)
        else:
            rel = np.arange(n) * length / (n - 1)
    elif mode == "DEFAULT":
        rel = np.arange(n) * (length + 1) / n
    elif mode == "OFFSET_CORNERS":
        rel = (np.arange(n) + 0.5) * max(1.0, length) / n
    else:
        rel = (np.arange(n) + 0.5) * (length + 1) / n - 0.5
    return start + np.clip(rel, min(0, length), max(0, length))


def unalign_box_unknown(box_hw, th, tw, height, width) -> bool:
    """An UNALIGN_CORNERS box for which Core ML's rule is unknown: inverted, or sampling outside the image."""
    (h0, w0, h1, w1) = box_hw
    ys, xs = crop_positions(h0, h1, th, "UNALIGN_CORNERS"), crop_positions(w0, w1, tw, "UNALIGN_CORNERS")
    outside = (ys < 0).any() or (ys > height - 1).any() or (xs < 0).any() or (xs > width - 1).any()
    return bool(outside or h1 < h0 or w1 < w0)


def crop_resize_reference(image, box_hw, th, tw, mode, pad_value):
    """One [C, th, tw] crop: bilinear reads on the sampling-mode grid from box start to end, pad_value
    outside the image (TensorFlow's crop_and_resize rule)."""
    (h0, w0, h1, w1) = box_hw
    height, width = image.shape[-2:]
    ys, xs = crop_positions(h0, h1, th, mode), crop_positions(w0, w1, tw, mode)
    out = np.full((image.shape[0], th, tw), pad_value, dtype=np.float64)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            if 0 <= y <= height - 1 and 0 <= x <= width - 1:
                y0, x0 = int(np.floor(y)), int(np.floor(x))
                y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
                fy, fx = y - y0, x - x0
                out[:, i, j] = ((1 - fy) * ((1 - fx) * image[:, y0, x0] + fx * image[:, y0, x1])
                                + fy * ((1 - fx) * image[:, y1, x0] + fx * image[:, y1, x1]))
    return out


@pytest.mark.parametrize("opset", ["iOS16", "iOS17"])
@given(batch=st.integers(1, 2), h=st.integers(2, 6), w=st.integers(2, 6), n=st.integers(1, 3), th=st.integers(1, 4),
       tw=st.integers(1, 4), box_mode=st.sampled_from(BOX_MODES), sampling=st.sampled_from(SAMPLING_MODES),
       normalized=st.booleans(), seed=st.integers(0, 2**16))
def test_builder_crop_resize(opset, batch, h, w, n, th, tw, box_mode, sampling, normalized, seed):
    """iOS16 (``roi`` [N,1,5,1,1] with image index) and iOS17 (``boxes`` + ``box_indices``) forms."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 2, h, w)).astype(np.float32)
    corners = rng.uniform(-0.5, 1.2, (n, 4))
    if sampling == "UNALIGN_CORNERS" and rng.random() < 0.75:
        # mostly boxes inside the image, start <= end: Core ML's rule for the others is unknown (refused)
        hs, ws = np.sort(rng.uniform(0, 1, (n, 2)), 1), np.sort(rng.uniform(0, 1, (n, 2)), 1)
        corners = np.stack([hs[:, 0], ws[:, 0], hs[:, 1], ws[:, 1]], 1)
    corners = corners * ([1, 1, 1, 1] if normalized else [h - 1, w - 1] * 2)
    spatial_scale = 1.0 if normalized else float(rng.choice([0.5, 1.0]))
    hw = corners / spatial_scale  # the op multiplies by spatial_scale
    a, b, c, d = hw.T  # (h_start, w_start, h_end, w_end) before the scaling
    boxes = {"CORNERS_HEIGHT_FIRST": np.stack([a, b, c, d], 1), "CORNERS_WIDTH_FIRST": np.stack([b, a, d, c], 1),
             "CENTER_SIZE_HEIGHT_FIRST": np.stack([(a + c) / 2, (b + d) / 2, c - a, d - b], 1),
             "CENTER_SIZE_WIDTH_FIRST": np.stack([(b + d) / 2, (a + c) / 2, d - b, c - a], 1)}[box_mode]
    boxes = boxes.astype(np.float32)
    indices = rng.integers(0, batch, n).astype(np.int32)
    common = dict(target_height=th, target_width=tw, normalized_coordinates=normalized,
                  spatial_scale=np.float32(spatial_scale), box_coordinate_mode=box_mode, sampling_mode=sampling,
                  pad_value=np.float32(-3.0))
    target = getattr(ct.target, opset)

    # iOS16: a 5-number roi (image index first) gives [N, 1, C, h, w], but coremltools' type inference
    # declares [N, B, ...]; with several images the roi is the 4-number form (each box on every image).
    roi_with_index = opset == "iOS16" and batch == 1

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=target)
    def prog(image):
        if opset == "iOS16":
            roi = np.concatenate([indices[:, None].astype(np.float32), boxes], 1) if roi_with_index else boxes
            return mb.crop_resize(x=image, roi=roi.reshape(n, 1, -1, 1, 1), **common)
        return mb.crop_resize(x=image, boxes=boxes, box_indices=indices, **common)

    scale = np.array([h - 1, w - 1] * 2) if normalized else 1.0
    # the reference reads the box back from the float32 numbers the op received
    b32 = boxes.astype(np.float64)
    back = {"CORNERS_HEIGHT_FIRST": b32, "CORNERS_WIDTH_FIRST": b32[:, [1, 0, 3, 2]],
            "CENTER_SIZE_HEIGHT_FIRST": np.stack([b32[:, 0] - b32[:, 2] / 2, b32[:, 1] - b32[:, 3] / 2,
                                                  b32[:, 0] + b32[:, 2] / 2, b32[:, 1] + b32[:, 3] / 2], 1),
            "CENTER_SIZE_WIDTH_FIRST": np.stack([b32[:, 1] - b32[:, 3] / 2, b32[:, 0] - b32[:, 2] / 2,
                                                 b32[:, 1] + b32[:, 3] / 2, b32[:, 0] + b32[:, 2] / 2], 1)}[box_mode]
    pixel_boxes = back * np.float32(spatial_scale) * scale
    if sampling == "UNALIGN_CORNERS" and any(unalign_box_unknown(b, th, tw, h, w) for b in pixel_boxes):
        with pytest.raises(NotImplementedError, match="UNALIGN_CORNERS is undocumented"):
            run_program(prog, {"image": x}, target=opset)
        return
    kinds, (got,) = run_program(prog, {"image": x}, target=opset)
    assert "crop_resize" in kinds
    images = [[indices[k]] if (opset == "iOS17" or roi_with_index) else range(batch) for k in range(n)]
    expected = np.stack([
        np.stack([crop_resize_reference(x[i].astype(np.float64), pixel_boxes[k], th, tw, sampling, -3.0)
                  for i in images[k]])
        for k in range(n)])
    if opset == "iOS17":
        expected = expected[:, 0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("opset", ["iOS15", "iOS16"])
def test_crop_resize_unalign_corners_box_outside_the_image_is_refused(opset):
    """coremltools' iOS15 TestCropResize (run on device for the iOS15 and iOS16 opsets): roi [2, 2, 1, 1],
    normalized_coordinates=True, UNALIGN_CORNERS, a 2x2 crop of arange(1, 17).reshape(4, 4) gives Core ML's
    [[3.5, 5.5], [11.5, 13.5]]: no padding, reads inside the image. No documented rule produces that, so the
    runtime refuses the box instead of returning zeros (what it did) or guessing. The same image and sampling
    mode with the box [0, 0, 1, 1] (the whole image, in range) reads rows/columns (0 + 0.5) * 4/2 - 0.5 = 0.5
    and 2.5 by the spec's UNALIGN_CORNERS grid: the 2x2 block means, by hand."""
    image = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)

    def build(box):
        @mb.program(input_specs=[mb.TensorSpec(shape=image.shape)], opset_version=getattr(ct.target, opset))
        def prog(img):
            return mb.crop_resize(x=img, roi=np.array(box, dtype=np.float32).reshape(1, 1, 4, 1, 1), target_height=2,
                                  target_width=2, normalized_coordinates=True, box_coordinate_mode="CORNERS_HEIGHT_FIRST",
                                  sampling_mode="UNALIGN_CORNERS")
        return prog

    with pytest.raises(NotImplementedError, match=r"crop_resize.*\[6\.0, 6\.0, 3\.0, 3\.0\].*4x4.*UNALIGN_CORNERS"):
        run_program(build([2, 2, 1, 1]), {"img": image}, target=opset)
    _, (got,) = run_program(build([0, 0, 1, 1]), {"img": image}, target=opset)
    np.testing.assert_allclose(got.ravel(), [3.5, 5.5, 11.5, 13.5], rtol=1e-6)
    # Inverted but inside the image: refused as well (no Core ML result to follow).
    with pytest.raises(NotImplementedError, match="inverted or samples outside"):
        run_program(build([0.8, 0.2, 0.2, 0.8]), {"img": image}, target=opset)


def test_core_ml_results_from_coremltools_op_tests():
    """Expected values that coremltools' op tests check against Core ML itself (iOS14-17 test suites)."""
    row = np.array([0, 1], dtype=np.float32).reshape(1, 1, 2)
    image = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)
    x4 = np.array([11.0, 22.0, 33.0, 44.0], dtype=np.float32).reshape(1, 1, 2, 2)
    coords = np.array([-1.0, -2.0, -3.7, -1.0, 0.0, 0.0, 3.5, 1.2], dtype=np.float32).reshape(1, 2, 2, 2)
    theta = np.array([-1.0, -2.0, -3.7, -1.0, 3.5, 1.2], dtype=np.float32).reshape(1, 6)
    three = np.array([1.5, -2.5, 3.5], dtype=np.float32).reshape(1, 1, 1, 3)
    boxes = np.array([[0.1, 0.3, 1.3, 1.0], [0.5, 1.8, 1.0, 0.3], [0.0, 0.4, 0.6, 0.7]], dtype=np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=s) for s in (row.shape, image.shape, x4.shape, coords.shape,
                                                               theta.shape, three.shape)],
                opset_version=ct.target.iOS17)
    def prog(r, img, x, c, t, v):
        resample = dict(x=x, coordinates=c)
        affine = dict(x=x, transform_matrix=t, sampling_mode="bilinear", padding_mode="constant", padding_value=0.0,
                      coordinates_mode="normalized_minus_one_to_one", align_corners=True)
        return (
            mb.resize_bilinear(x=r, target_size_height=1, target_size_width=5, sampling_mode="STRICT_ALIGN_CORNERS"),
            mb.resize_bilinear(x=r, target_size_height=1, target_size_width=5, sampling_mode="DEFAULT"),
            mb.resize_bilinear(x=r, target_size_height=1, target_size_width=5, sampling_mode="OFFSET_CORNERS"),
            mb.resize_bilinear(x=r, target_size_height=1, target_size_width=5, sampling_mode="UNALIGN_CORNERS"),
            mb.upsample_bilinear(x=r, scale_factor_height=1, scale_factor_width=3, align_corners=True),
            mb.upsample_bilinear(x=r, scale_factor_height=1.0, scale_factor_width=2.6, align_corners=False),
            mb.upsample_nearest_neighbor(x=v, scale_factor_height=3.17, scale_factor_width=0.67),
            mb.upsample_nearest_neighbor(x=v, scale_factor_height=2.0, scale_factor_width=1.12),
            mb.crop_resize(x=img, boxes=np.array([[1, 1, 2, 2]], dtype=np.float32), target_height=4, target_width=4,
                           sampling_mode="ALIGN_CORNERS"),
            mb.crop_resize(x=img, boxes=np.array([[1, 1, 2, 2]], dtype=np.float32), target_height=1, target_width=1,
                           sampling_mode="ALIGN_CORNERS"),
            mb.crop_resize(x=img, boxes=np.array([[2, 2, 1, 1]], dtype=np.float32), target_height=2, target_width=2,
                           sampling_mode="ALIGN_CORNERS"),
            mb.crop_resize(x=img, boxes=boxes, box_indices=np.zeros(3, dtype=np.int32), target_height=2, target_width=2,
                           normalized_coordinates=True, sampling_mode="ALIGN_CORNERS", pad_value=10.0),
            mb.resample(**resample, sampling_mode="bilinear", padding_mode="constant", padding_value=6.17,
                        coordinates_mode="normalized_minus_one_to_one", align_corners=True),
            mb.resample(**resample, sampling_mode="nearest", padding_mode="border", padding_value=-1.0,
                        coordinates_mode="unnormalized", align_corners=False),
            mb.resample(**resample, sampling_mode="bilinear", padding_mode="reflection", padding_value=-1.0,
                        coordinates_mode="normalized_zero_to_one", align_corners=True),
            mb.resample(**resample, sampling_mode="nearest", padding_mode="symmetric", padding_value=-1.0,
                        coordinates_mode="normalized_zero_to_one", align_corners=False),
            mb.affine(**affine, output_height=3, output_width=3),
            mb.affine(**affine, output_height=2, output_width=5),
        )

    feeds = {"r": row, "img": image, "x": x4, "c": coords, "t": theta, "v": three}
    _, outputs = run_program(prog, feeds)
    expected = [
        [0, 0.25, 0.5, 0.75, 1], [0, 0.4, 0.8, 1, 1], [0.1, 0.3, 0.5, 0.7, 0.9], [0.0, 0.1, 0.5, 0.9, 1.0],
        [0, 0.2, 0.4, 0.6, 0.8, 1], [0, 0.1, 0.5, 0.9, 1],
        [1.5, -2.5, 1.5, -2.5, 1.5, -2.5], [1.5, -2.5, 3.5, 1.5, -2.5, 3.5],
        [6, 6.333333, 6.66666, 7, 7.333333, 7.666666, 8, 8.333333, 8.666666, 9, 9.3333333, 9.666666, 10, 10.333333,
         10.666666, 11],
        [8.5], [11, 10, 7, 6], [3.1, 5.2, 10.0, 10.0, 10.0, 7.899, 10.0, 13.9, 2.2, 3.1, 9.4, 10.3],
        [8.585, 6.17, 27.5, 6.17], [11.0, 11.0, 11.0, 44.0], [22.0, 36.3, 11.0, 34.1], [22.0, 33.0, 11.0, 33.0],
        [10.752501, 2.5025, 0.0, 1.9799997, 0.0, 0.0, 0.0, 0.0, 0.0],
        [10.752501, 5.94, 2.5025, 0.44000006, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    assert len(outputs) == len(expected)
    for i, (got, want) in enumerate(zip(outputs, expected)):
        # the published values are rounded to ~4-6 significant digits
        np.testing.assert_allclose(got.ravel(), want, atol=2e-3, rtol=1e-4, err_msg=f"output {i}")
