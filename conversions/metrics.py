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


# ---------------------------------------------------------------------------------------------------- TTS metrics
#
# Text-to-speech parity (Kokoro-82M writes 24 kHz audio) compares the two waveforms themselves and what a listener
# hears of them: their log-mel spectrograms and their STFT magnitudes at several resolutions. Unlike the tensor
# metrics, these refuse NaN or infinite audio outright (a ValueError naming the argument), since a spectrogram of
# a broken waveform has no meaning to compare.

TTS_SAMPLE_RATE = 24000
"""Kokoro-82M's output sample rate, the default of the TTS metrics."""

MRSTFT_RESOLUTIONS = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))
"""``(n_fft, hop, win_length)`` of each STFT in ``multi_resolution_stft_distance`` (Parallel WaveGAN's usual three
at 24 kHz: about 21, 43 and 85 ms windows)."""

MRSTFT_FLOOR = 1e-7
"""Magnitude floor inside the log term of ``multi_resolution_stft_distance``: ``log(max(|S|, 1e-7))``."""


def _waveform(name: str, value) -> np.ndarray:
    """A waveform as 1-D float64: any shape with at most one dimension longer than 1 (``[1, n]``, ``[n, 1]``...),
    non-empty and finite."""
    audio = _as_float_array(name, value)
    if audio.ndim == 0 or sum(size != 1 for size in audio.shape) > 1:
        raise ValueError(f"{name} must be a 1-D waveform (or squeezable to 1-D), got shape {audio.shape}")
    audio = audio.reshape(-1)
    if audio.size == 0:
        raise ValueError(f"{name} is empty; there is no audio to compare")
    bad = np.flatnonzero(~np.isfinite(audio))
    if bad.size:
        raise ValueError(f"{name} has a non-finite sample ({audio[bad[0]]}) at index {int(bad[0])} "
                         f"({bad.size} non-finite samples)")
    return audio


def _waveform_pair(reference, candidate, names=("reference", "candidate")) -> tuple[np.ndarray, np.ndarray]:
    ref = _waveform(names[0], reference)
    cand = _waveform(names[1], candidate)
    if ref.size != cand.size:
        raise ValueError(f"{names[0]} has {ref.size} samples but {names[1]} has {cand.size}; they must match")
    return ref, cand


def _hann(length: int) -> np.ndarray:
    """Periodic Hann window (the DFT-even one ``torch.hann_window`` and ``scipy.signal.get_window`` return)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


def _stft_magnitude(audio: np.ndarray, n_fft: int, hop: int, win_length: int) -> np.ndarray:
    """``|STFT|`` as ``[n_fft // 2 + 1, frames]``: centred frames (``n_fft // 2`` reflect padding each side, so
    ``1 + len // hop`` frames for an even ``n_fft``), a periodic Hann window of ``win_length`` zero-padded in the
    middle of ``n_fft``."""
    pad = n_fft // 2
    padded = np.pad(audio, pad, mode="reflect")  # numpy reflects repeatedly when the audio is shorter than pad
    window = np.zeros(n_fft)
    offset = (n_fft - win_length) // 2
    window[offset:offset + win_length] = _hann(win_length)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * window, axis=1)).T


def _hz_to_mel(hz):
    """Slaney's mel scale (the Auditory Toolbox's, librosa's default): linear at 3 mels per 200 Hz below 1 kHz,
    logarithmic above, 27 mels per factor 6.4 in frequency."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz * 3.0 / 200.0
    with np.errstate(divide="ignore"):
        logarithmic = 15.0 + np.log(np.maximum(hz, 1e-300) / 1000.0) * 27.0 / math.log(6.4)
    return np.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((mel - 15.0) * math.log(6.4) / 27.0), mel * 200.0 / 3.0)


def _mel_settings(sample_rate, n_fft, n_mels, fmin, fmax) -> tuple[int, int, int, float, float]:
    sample_rate = _count("sample_rate", sample_rate)
    n_fft = _count("n_fft", n_fft)
    n_mels = _count("n_mels", n_mels)
    nyquist = sample_rate / 2.0
    fmin = _real("fmin", fmin, minimum=0.0)
    fmax = nyquist if fmax is None else _real("fmax", fmax, maximum=nyquist)
    if not fmax > fmin:
        raise ValueError(f"fmax must be > fmin, got fmin={fmin}, fmax={fmax}")
    return sample_rate, n_fft, n_mels, fmin, fmax


def mel_filterbank(sample_rate: int = TTS_SAMPLE_RATE, n_fft: int = 1024, n_mels: int = 80, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Slaney-style mel filterbank, ``[n_mels, n_fft // 2 + 1]`` float64 weights for the rfft bins.

    ``n_mels + 2`` edge frequencies equally spaced on Slaney's mel scale (``_hz_to_mel``) from ``fmin`` to ``fmax``
    (default: Nyquist); filter ``m`` is the triangle rising from edge ``m`` to 1 at edge ``m + 1`` and falling to 0
    at edge ``m + 2``, sampled at the bin frequencies ``k * sample_rate / n_fft``. Each triangle is then scaled by
    ``2 / (edge[m + 2] - edge[m])`` (Slaney area normalisation): every filter has unit area in Hz, so a row sums to
    about ``n_fft / sample_rate`` (exactly so for a filter many bins wide), and a row peaks at
    ``2 / (edge[m + 2] - edge[m])`` when a bin falls on its centre. The same weights as
    ``librosa.filters.mel(htk=False, norm="slaney")``, the filterbank HiFi-GAN-style vocoders are trained with.
    """
    sample_rate, n_fft, n_mels, fmin, fmax = _mel_settings(sample_rate, n_fft, n_mels, fmin, fmax)
    return _mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)


def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    bins = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (upper - lower))


def _log_mel(audio: np.ndarray, n_fft: int, hop: int, filterbank: np.ndarray, floor: float) -> np.ndarray:
    magnitude = _stft_magnitude(audio, n_fft, hop, n_fft)
    return np.log(np.maximum(filterbank @ magnitude, floor))


def log_mel_spectrogram(audio, sample_rate: int = TTS_SAMPLE_RATE, n_fft: int = 1024, hop: int = 256,
                        n_mels: int = 80, fmin: float = 0.0, fmax: float | None = None,
                        floor: float = 1e-5) -> np.ndarray:
    """Log-mel spectrogram ``[n_mels, 1 + len(audio) // hop]`` (float64; that frame count for an even ``n_fft``) of
    a 1-D waveform.

    Frames of ``n_fft`` samples every ``hop``, centred (``n_fft // 2`` samples of reflect padding at each end), a
    periodic Hann window of ``n_fft``; the STFT *magnitude* ``|X|`` (not power) goes through ``mel_filterbank``
    (Slaney mel scale and area normalisation), and the result is ``ln(max(mel, floor))``: natural log, with
    ``floor`` (1e-5, HiFi-GAN's, about -11.5) standing for silence. ``audio`` may be any shape squeezable to 1-D;
    it must be non-empty and finite.
    """
    audio = _waveform("audio", audio)
    sample_rate, n_fft, n_mels, fmin, fmax = _mel_settings(sample_rate, n_fft, n_mels, fmin, fmax)
    hop = _count("hop", hop)
    floor = _real("floor", floor, minimum=0.0, exclusive=True)
    return _log_mel(audio, n_fft, hop, _mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax), floor)


def _unit_scaled(values: np.ndarray) -> np.ndarray:
    largest = float(np.max(np.abs(values)))
    return values / largest if largest > 0 else values


def _pearson(ref: np.ndarray, cand: np.ndarray) -> float:
    ref_constant = bool(ref.max() == ref.min())
    cand_constant = bool(cand.max() == cand.min())
    if ref_constant or cand_constant:
        return 1.0 if ref_constant and cand_constant and np.array_equal(ref, cand) else 0.0
    # scaled to at most 1 in magnitude so no sum can overflow; for identical inputs dot(a, a) / sqrt(dot(a, a)**2)
    # is exactly 1 (IEEE sqrt of a correctly rounded square returns the number)
    a = _unit_scaled(ref - ref.mean())
    b = _unit_scaled(cand - cand.mean())
    value = float(np.dot(a, b)) / math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return min(1.0, max(-1.0, value))


def waveform_correlation(reference, candidate) -> float:
    """Pearson correlation of the two waveforms, sample by sample, in ``[-1, 1]`` (1.0 = identical up to gain and
    DC offset).

    Gain-invariant (a copy at half the level still scores 1.0: ``mel_psnr_db`` and the MR-STFT figures see
    level), and phase-sensitive: a delay of a fraction of a period, or a vocoder whose noise source draws
    differently, lowers it even when the two sound the same. When either waveform is constant the Pearson
    coefficient is undefined: it is defined here as 1.0 if the two are exactly equal (a perfect copy of silence)
    and 0.0 otherwise (no linear relation to measure); it never raises for that. The waveforms must have the same
    number of samples.
    """
    return _pearson(*_waveform_pair(reference, candidate))


def _log_mel_pair(ref: np.ndarray, cand: np.ndarray, sample_rate) -> tuple[np.ndarray, np.ndarray]:
    sample_rate, n_fft, n_mels, fmin, fmax = _mel_settings(sample_rate, 1024, 80, 0.0, None)
    filterbank = _mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    return _log_mel(ref, n_fft, 256, filterbank, 1e-5), _log_mel(cand, n_fft, 256, filterbank, 1e-5)


def mel_correlation(reference, candidate, sample_rate: int = TTS_SAMPLE_RATE) -> float:
    """Pearson correlation of the two ``log_mel_spectrogram``\\ s (default settings), flattened, in ``[-1, 1]``.

    Insensitive to phase, so it measures whether the two sound alike rather than whether the samples match. The
    constant case follows ``waveform_correlation`` (two all-silent waveforms give 1.0 if identical).
    """
    return _pearson(*(m.reshape(-1) for m in _log_mel_pair(*_waveform_pair(reference, candidate), sample_rate)))


def _mel_psnr(ref_mel: np.ndarray, cand_mel: np.ndarray) -> float:
    ref, cand = ref_mel.reshape(-1), cand_mel.reshape(-1)
    if np.array_equal(ref, cand):
        return math.inf
    peak = float(ref.max() - ref.min())
    if peak == 0:
        return -math.inf
    return _psnr(ref, cand, peak)


def mel_psnr_db(reference, candidate, sample_rate: int = TTS_SAMPLE_RATE) -> float:
    """PSNR in dB of the candidate's ``log_mel_spectrogram`` against the reference's: ``20 * log10(peak / rmse)``.

    ``peak`` is the reference log-mel's range ``max - min`` (its dynamic range in nepers), not ``psnr``'s default
    ``max |reference|``: log-mel values are mostly negative and their largest magnitude is usually the silence
    floor ``ln(1e-5)``, an arbitrary constant, while the range is what the spectrogram actually spans and does not
    move when the level changes. Like ``psnr``, identical spectrograms give ``inf`` (no finite cap), and a
    constant reference log-mel (all silence) with any error gives ``-inf``.
    """
    ref, cand = _waveform_pair(reference, candidate)
    return _mel_psnr(*_log_mel_pair(ref, cand, sample_rate))


def _resolutions(resolutions) -> tuple[tuple[int, int, int], ...]:
    try:
        triples = [tuple(r) for r in resolutions]
    except TypeError:
        raise ValueError(f"resolutions must be (n_fft, hop, win_length) triples, got {resolutions!r}") from None
    if not triples:
        raise ValueError("resolutions is empty; give at least one (n_fft, hop, win_length)")
    checked = []
    for i, triple in enumerate(triples):
        if len(triple) != 3:
            raise ValueError(f"resolutions[{i}] must be (n_fft, hop, win_length), got {triple!r}")
        n_fft, hop, win_length = (_count(f"resolutions[{i}].{name}", v)
                                  for name, v in zip(("n_fft", "hop", "win_length"), triple))
        if win_length > n_fft:
            raise ValueError(f"resolutions[{i}].win_length must be <= n_fft, got {win_length} > {n_fft}")
        checked.append((n_fft, hop, win_length))
    return tuple(checked)


def _mrstft(ref: np.ndarray, cand: np.ndarray, resolutions) -> float:
    total = 0.0
    for n_fft, hop, win_length in resolutions:
        ref_mag = _stft_magnitude(ref, n_fft, hop, win_length)
        cand_mag = _stft_magnitude(cand, n_fft, hop, win_length)
        error, scale = _l2(ref_mag - cand_mag), _l2(ref_mag)
        convergence = error / scale if scale > 0 else (0.0 if error == 0 else math.inf)
        log_distance = float(np.mean(np.abs(np.log(np.maximum(ref_mag, MRSTFT_FLOOR))
                                            - np.log(np.maximum(cand_mag, MRSTFT_FLOOR)))))
        total += convergence + log_distance
    return total / len(resolutions)


def multi_resolution_stft_distance(reference, candidate, resolutions=MRSTFT_RESOLUTIONS) -> float:
    """Multi-resolution STFT distance (Parallel WaveGAN's MR-STFT loss), >= 0, lower is better, 0 for identical
    waveforms.

    For each ``(n_fft, hop, win_length)`` in ``resolutions``, with ``R = |STFT(reference)|`` and
    ``C = |STFT(candidate)|`` (centred, reflect-padded, periodic Hann of ``win_length`` inside ``n_fft``, as
    ``log_mel_spectrogram`` frames): spectral convergence ``||R - C||_F / ||R||_F`` plus log-magnitude distance
    ``mean |ln max(R, 1e-7) - ln max(C, 1e-7)|`` (``MRSTFT_FLOOR``). The result is the mean of that sum over
    the resolutions. A silent reference (``||R||_F = 0``) makes spectral convergence 0 if the candidate is
    silent too, else ``inf``.
    """
    resolutions = _resolutions(resolutions)
    return _mrstft(*_waveform_pair(reference, candidate), resolutions)


def tts_metrics(reference_audio, candidate_audio, sample_rate: int = TTS_SAMPLE_RATE) -> dict:
    """TTS task metrics of two waveforms as plain Python floats, every score higher-is-better:

    - ``waveform_correlation``, ``mel_correlation``: as the functions of those names, 1.0 at best;
    - ``mel_psnr_db``: as ``mel_psnr_db``, ``inf`` for identical spectrograms;
    - ``mrstft_similarity``: ``1 / (1 + mrstft_distance)``, in ``(0, 1]``, 1.0 for identical waveforms, 0.5 at
      distance 1 (0.0 for an infinite distance);
    - ``mrstft_distance``: ``multi_resolution_stft_distance`` at ``MRSTFT_RESOLUTIONS``, lower is better
      (informational; gate on the similarity).

    The waveforms must be 1-D (or squeezable), non-empty, finite and of the same length; errors name
    ``reference_audio`` or ``candidate_audio``.
    """
    ref, cand = _waveform_pair(reference_audio, candidate_audio, ("reference_audio", "candidate_audio"))
    ref_mel, cand_mel = _log_mel_pair(ref, cand, sample_rate)
    distance = _mrstft(ref, cand, MRSTFT_RESOLUTIONS)
    return {
        "waveform_correlation": _pearson(ref, cand),
        "mel_correlation": _pearson(ref_mel.reshape(-1), cand_mel.reshape(-1)),
        "mel_psnr_db": _mel_psnr(ref_mel, cand_mel),
        "mrstft_similarity": 1.0 / (1.0 + distance),
        "mrstft_distance": distance,
    }
