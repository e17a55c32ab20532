"""Numerical and task metrics comparing a converted component's outputs with its torch reference.

One module so that every parity test, failure message and report figure means the same thing by "max_rel" or
"PSNR". Everything is pure numpy computed in float64, so a float32 or float16 output is compared exactly as it
came out and the metric itself adds no rounding worth speaking of. Argument order is always
``(reference, candidate)``: the torch output first, the converted program's output second.

Tensor metrics take two array-likes of the same shape. Non-finite values follow one rule: a NaN in either array
is a failure (it must never look like a pass, so errors become ``inf``, scores ``-inf``, ``allclose`` False),
while the same infinity at the same place in both counts as an exact match and is left out of any scale
(``max_rel``'s floor, ``psnr``'s peak, ``quality``'s norm).

VAD task metrics take speech probabilities, one per 32 ms chunk, and compare the decisions and speech segments
that a user of the model would actually see.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

REL_FLOOR_FRACTION = 1e-3
"""Default ``max_rel`` floor as a fraction of ``max |reference|``: entries far below the tensor's own scale are
judged on absolute error, so a near-zero entry of a large tensor cannot dominate the relative error."""

ZERO_REFERENCE_FLOOR = 1e-12
"""Default ``max_rel`` floor when ``reference`` has no non-zero finite entry: a tiny guard, so any error of a
zero reference reads as a huge relative error (``max_abs * 1e12``) instead of a division by zero."""


# ---------------------------------------------------------------------------------------------------- validation

def _as_float_array(name: str, value) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


def _pair(reference, candidate, *, flat: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 arrays of the same shape, flattened unless ``flat=False`` (no metric but ``worst_index``
    needs the shape, and 1-D keeps 0-d inputs arrays rather than numpy scalars through the arithmetic)."""
    ref = _as_float_array("reference", reference)
    cand = _as_float_array("candidate", candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"reference has shape {ref.shape} but candidate has shape {cand.shape}; they must match")
    if ref.size == 0:
        raise ValueError(f"reference and candidate are empty (shape {ref.shape}); there is nothing to compare")
    return (ref.reshape(-1), cand.reshape(-1)) if flat else (ref, cand)


def _real(name: str, value, *, minimum: float | None = None, exclusive: bool = False, maximum: float | None = None,
          allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value < minimum or (exclusive and value == minimum)):
        raise ValueError(f"{name} must be {'>' if exclusive else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def _count(name: str, value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value}")
    return value


# -------------------------------------------------------------------------------------------------------- helpers

def _abs_error(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """|candidate - reference| per element; 0 where they are equal (equal infinities too), inf wherever a NaN is."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(cand - ref)
    err[ref == cand] = 0.0  # inf - inf is NaN, but the same infinity on both sides is a match
    err[np.isnan(err)] = np.inf
    return err


def _has_nan(*arrays: np.ndarray) -> bool:
    return any(bool(np.isnan(a).any()) for a in arrays)


def _finite_abs_max(ref: np.ndarray) -> float:
    finite = np.abs(ref[np.isfinite(ref)])
    return float(finite.max()) if finite.size else 0.0


def _l2(values: np.ndarray) -> float:
    """Euclidean norm, scaled by the largest entry first so that squaring cannot overflow or underflow."""
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    if largest == 0.0 or math.isinf(largest):
        return largest
    return largest * math.sqrt(float(np.sum(np.square(values / largest))))


# ------------------------------------------------------------------------------------------------- tensor metrics

def _max_abs(ref: np.ndarray, cand: np.ndarray) -> float:
    return float(_abs_error(ref, cand).max())


def max_abs(reference, candidate) -> float:
    """Largest absolute error ``max |reference - candidate|``.

    A NaN in either array gives ``inf``; the same infinity at the same place in both is an error of 0, any other
    infinity an error of ``inf``.
    """
    return _max_abs(*_pair(reference, candidate))


def _max_rel(ref: np.ndarray, cand: np.ndarray, floor: float | None) -> float:
    if floor is None:
        scale = _finite_abs_max(ref)
        floor = REL_FLOOR_FRACTION * scale if scale > 0 else ZERO_REFERENCE_FLOOR
    else:
        floor = _real("floor", floor, minimum=0.0)
    err = _abs_error(ref, cand)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = err / np.maximum(np.abs(ref), floor)
    rel[err == 0] = 0.0  # 0/0 with floor=0 at a zero reference entry that matches exactly
    rel[np.isnan(rel)] = np.inf  # inf/inf: an infinite reference entry that the candidate missed
    return float(rel.max())


def max_rel(reference, candidate, floor: float | None = None) -> float:
    """Largest guarded relative error ``max |reference - candidate| / max(|reference|, floor)``.

    ``floor`` defaults to ``REL_FLOOR_FRACTION * max |reference|`` (1e-3 of the largest finite reference
    magnitude), so entries much smaller than the tensor's scale are judged on absolute error against that floor;
    if the reference has no non-zero finite entry the floor is ``ZERO_REFERENCE_FLOOR`` (1e-12). An explicit
    ``floor`` must be >= 0 (0 gives the unguarded relative error, ``inf`` for any error at a zero entry).
    NaN anywhere gives ``inf``; matching infinities give 0.
    """
    ref, cand = _pair(reference, candidate)
    return _max_rel(ref, cand, floor)


def _psnr(ref: np.ndarray, cand: np.ndarray, peak: float | None) -> float:
    if peak is not None:
        peak = _real("peak", peak, minimum=0.0, exclusive=True)
    if _has_nan(ref, cand):
        return -math.inf
    rmse = _l2(_abs_error(ref, cand)) / math.sqrt(ref.size)
    if rmse == 0:
        return math.inf
    if peak is None:
        peak = _finite_abs_max(ref)
    if peak == 0 or math.isinf(rmse):
        return -math.inf
    # difference of logs: peak / rmse itself could overflow or underflow
    return 20.0 * (math.log10(peak) - math.log10(rmse))


def psnr(reference, candidate, peak: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``20 * log10(peak / rmse)``, ``rmse`` of ``reference - candidate``.

    ``peak`` defaults to ``max |reference|`` over finite entries (Apple's ml-stable-diffusion and WhisperKit
    ports use this form and ask for >= 35 dB per tensor). Identical arrays give ``inf``; NaN anywhere, an
    unmatched infinity, or a non-zero error against an all-zero reference with the default peak give ``-inf``.
    """
    ref, cand = _pair(reference, candidate)
    return _psnr(ref, cand, peak)


def _quality(ref: np.ndarray, cand: np.ndarray) -> float:
    if _has_nan(ref, cand):
        return -math.inf
    err_norm = _l2(_abs_error(ref, cand))
    ref_norm = _l2(ref[np.isfinite(ref)])
    if ref_norm == 0:
        return 1.0 if err_norm == 0 else -math.inf
    return 1.0 - err_norm / ref_norm


def quality(reference, candidate) -> float:
    """``1 - ||reference - candidate||_2 / ||reference||_2``: 1.0 for identical arrays, 0.0 for an all-zero
    candidate, negative when the error is larger than the signal.

    A zero reference norm gives 1.0 if the candidate is all zero too, else ``-inf``. NaN anywhere, or an
    unmatched infinity, gives ``-inf``; matching infinities are left out of both norms.
    """
    return _quality(*_pair(reference, candidate))


def _tolerances(atol, rtol) -> tuple[float, float]:
    return _real("atol", atol, minimum=0.0), _real("rtol", rtol, minimum=0.0)


def _allclose(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float) -> bool:
    # numpy.isclose's own expression with reference as ``b``; computed in float64 whatever the input dtypes
    with np.errstate(invalid="ignore", over="ignore"):
        close = ((np.abs(cand - ref) <= atol + rtol * np.abs(ref)) & np.isfinite(ref)) | (cand == ref)
    return bool(close.all())


def allclose(reference, candidate, atol: float, rtol: float) -> bool:
    """True when every ``|candidate - reference| <= atol + rtol * |reference|``.

    The semantics of ``numpy.allclose(candidate, reference, rtol, atol)`` (the tolerance scales with the
    reference only): matching infinities are close, NaN is never close, different shapes raise ``ValueError``.
    ``atol`` and ``rtol`` must be finite and >= 0.
    """
    atol, rtol = _tolerances(atol, rtol)
    ref, cand = _pair(reference, candidate)
    return _allclose(ref, cand, atol, rtol)


def worst_index(reference, candidate, atol: float, rtol: float) -> tuple[int, ...]:
    """Index (a tuple, one int per dimension; ``()`` for a 0-d array) of the element that most exceeds
    ``atol + rtol * |reference|``, i.e. where ``|candidate - reference| - (atol + rtol * |reference|)`` is largest.

    For failure messages: it points at the element that breaks ``allclose`` worst (or comes closest to breaking
    it). A NaN or unmatched infinity counts as infinitely bad, a matching infinity as infinitely good; ties go to
    the first element in C order.
    """
    atol, rtol = _tolerances(atol, rtol)
    ref, cand = _pair(reference, candidate, flat=False)
    ref, cand, shape = ref.reshape(-1), cand.reshape(-1), ref.shape
    finite = np.isfinite(ref) & np.isfinite(cand)
    with np.errstate(invalid="ignore", over="ignore"):
        excess = np.where(finite, np.abs(cand - ref) - (atol + rtol * np.abs(ref)),
                          np.where(cand == ref, -np.inf, np.inf))
    flat = int(np.argmax(excess))
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def tensor_metrics(reference, candidate, atol: float, rtol: float) -> dict:
    """All tensor metrics at once, as plain Python values for JSON reports.

    Keys: ``max_abs``, ``max_rel`` (default floor), ``psnr_db`` (default peak), ``quality`` (floats; infinities
    stay float ``inf``/``-inf``) and ``allclose`` (bool, under ``atol``/``rtol``).
    """
    atol, rtol = _tolerances(atol, rtol)
    ref, cand = _pair(reference, candidate)
    return {
        "max_abs": _max_abs(ref, cand),
        "max_rel": _max_rel(ref, cand, None),
        "psnr_db": _psnr(ref, cand, None),
        "quality": _quality(ref, cand),
        "allclose": _allclose(ref, cand, atol, rtol),
    }


# ---------------------------------------------------------------------------------------------------- VAD metrics

def _probs(name: str, value) -> np.ndarray:
    probs = _as_float_array(name, value)
    if probs.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one speech probability per chunk), got shape {probs.shape}")
    return probs


def _probs_pair(reference_probs, candidate_probs) -> tuple[np.ndarray, np.ndarray]:
    ref = _probs("reference_probs", reference_probs)
    cand = _probs("candidate_probs", candidate_probs)
    if ref.shape != cand.shape:
        raise ValueError(f"reference_probs has {ref.shape[0]} chunks but candidate_probs has {cand.shape[0]}; "
                         "they must match")
    if ref.size == 0:
        raise ValueError("reference_probs and candidate_probs are empty; there is nothing to compare")
    return ref, cand


def decision_agreement(reference_probs, candidate_probs, threshold: float = 0.5) -> float:
    """Fraction of chunks where the speech decisions ``p >= threshold`` agree (1.0 = identical decisions).

    A chunk where either probability is NaN counts as a disagreement.
    """
    threshold = _real("threshold", threshold)
    ref, cand = _probs_pair(reference_probs, candidate_probs)
    agree = ((ref >= threshold) == (cand >= threshold)) & ~np.isnan(ref) & ~np.isnan(cand)
    return np.count_nonzero(agree) / agree.size


def _segments(speech: np.ndarray, min_speech_chunks: int, min_silence_chunks: int) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate(([0], speech.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return []
    # a gap of silence between two speech runs survives only if it is at least min_silence_chunks long
    kept_gap = (starts[1:] - ends[:-1]) >= min_silence_chunks
    starts = starts[np.concatenate(([True], kept_gap))]
    ends = ends[np.concatenate((kept_gap, [True]))]
    long_enough = (ends - starts) >= min_speech_chunks
    return [(int(s), int(e)) for s, e in zip(starts[long_enough], ends[long_enough])]


def speech_segments(probs, threshold: float = 0.5, min_speech_chunks: int = 1,
                    min_silence_chunks: int = 1) -> list[tuple[int, int]]:
    """Speech segments as half-open chunk ranges ``[start, end)``, in order, where ``p >= threshold``.

    Bridging comes first, then dropping: a silence gap between two speech runs shorter than
    ``min_silence_chunks`` is filled (leading and trailing silence is never a gap), then speech runs shorter than
    ``min_speech_chunks`` are dropped, so two short bursts joined by a short gap can survive as one segment.
    The defaults (1, 1) keep the raw runs. Empty ``probs`` give ``[]``; a NaN probability raises ``ValueError``.
    """
    threshold = _real("threshold", threshold)
    min_speech_chunks = _count("min_speech_chunks", min_speech_chunks)
    min_silence_chunks = _count("min_silence_chunks", min_silence_chunks)
    probs = _probs("probs", probs)
    nan = np.flatnonzero(np.isnan(probs))
    if nan.size:
        raise ValueError(f"probs has NaN at chunk {int(nan[0])} ({nan.size} NaN chunks); it cannot be segmented")
    return _segments(probs >= threshold, min_speech_chunks, min_silence_chunks)


def _segment_array(name: str, segments) -> np.ndarray:
    rows = []
    for i, segment in enumerate(segments):
        try:
            start, end = segment
            start, end = float(start), float(end)
        except (TypeError, ValueError):
            raise ValueError(f"{name}[{i}] must be a (start, end) pair of numbers, got {segment!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or not start < end:
            raise ValueError(f"{name}[{i}] must have finite start < end, got {segment!r}")
        rows.append((start, end))
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def segment_f1(reference_segments, candidate_segments, iou: float = 0.5) -> float:
    """Segment-level F1 of ``candidate_segments`` against ``reference_segments`` (``(start, end)`` pairs).

    A candidate matches a reference segment when their intersection-over-union (lengths of half-open intervals)
    is >= ``iou`` (0 < iou <= 1). Matching is one-to-one and greedy: all qualifying pairs in decreasing IoU order
    (ties by reference then candidate position), each taken if neither side is matched yet. With ``M`` matches,
    precision ``M / len(candidate)``, recall ``M / len(reference)``, ``F1 = 2PR / (P + R) = 2M / (len(reference) +
    len(candidate))``. Both empty give 1.0, one empty 0.0.
    """
    iou = _real("iou", iou, minimum=0.0, exclusive=True, maximum=1.0)
    ref = _segment_array("reference_segments", reference_segments)
    cand = _segment_array("candidate_segments", candidate_segments)
    if len(ref) == 0 and len(cand) == 0:
        return 1.0
    pairs = []
    cand_lengths = cand[:, 1] - cand[:, 0]
    for i, (start, end) in enumerate(ref):
        # one reference row at a time: memory stays linear for long recordings with thousands of segments
        intersection = np.minimum(end, cand[:, 1]) - np.maximum(start, cand[:, 0])
        overlapping = np.flatnonzero(intersection > 0)
        inter = intersection[overlapping]
        ious = inter / ((end - start) + cand_lengths[overlapping] - inter)
        pairs.extend((-float(v), i, int(j)) for v, j in zip(ious, overlapping) if v >= iou)
    pairs.sort()
    matched_ref: set[int] = set()
    matched_cand: set[int] = set()
    for _, i, j in pairs:
        if i not in matched_ref and j not in matched_cand:
            matched_ref.add(i)
            matched_cand.add(j)
    return 2 * len(matched_ref) / (len(ref) + len(cand))


def vad_metrics(reference_probs, candidate_probs, threshold: float = 0.5, *, iou: float = 0.5,
                min_speech_chunks: int = 1, min_silence_chunks: int = 1) -> dict:
    """VAD task metrics as plain Python values: ``decision_agreement``, ``segment_f1`` (segments from
    ``speech_segments`` with the given threshold and minimum lengths, matched at ``iou``), and the segment counts
    ``reference_segments`` and ``candidate_segments``.

    NaN probabilities count as silence for segmenting (so the counts stay integers), but any NaN forces
    ``segment_f1`` to 0.0 and disagrees in ``decision_agreement``: a NaN never looks like a pass.
    """
    threshold = _real("threshold", threshold)
    iou = _real("iou", iou, minimum=0.0, exclusive=True, maximum=1.0)
    min_speech_chunks = _count("min_speech_chunks", min_speech_chunks)
    min_silence_chunks = _count("min_silence_chunks", min_silence_chunks)
    ref, cand = _probs_pair(reference_probs, candidate_probs)
    ref_segments = _segments(ref >= threshold, min_speech_chunks, min_silence_chunks)
    cand_segments = _segments(cand >= threshold, min_speech_chunks, min_silence_chunks)
    f1 = 0.0 if _has_nan(ref, cand) else segment_f1(ref_segments, cand_segments, iou)
    return {
        "decision_agreement": decision_agreement(ref, cand, threshold),
        "segment_f1": f1,
        "reference_segments": len(ref_segments),
        "candidate_segments": len(cand_segments),
    }
