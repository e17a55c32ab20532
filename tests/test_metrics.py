"""Tests of ``conversions.metrics``: hand-worked examples, properties, and the non-finite and bad-input edges.

Expected values come from arithmetic done by hand in the comments, from numpy's own ``allclose``, or from the
metric's definition written out element by element; never from the function under test. Values in the exact
tests are dyadic (multiples of 1/8 or 1/64), so float64 sums and differences of them are exact.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conversions import metrics
from conversions.metrics import (
    allclose,
    decision_agreement,
    max_abs,
    max_rel,
    psnr,
    quality,
    segment_f1,
    speech_segments,
    tensor_metrics,
    vad_metrics,
    worst_index,
)

SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5)
FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
PROBS = hnp.arrays(np.float64, st.integers(1, 60), elements=st.floats(0.0, 1.0))


@st.composite
def array_pairs(draw, elements=FINITE):
    """Two float64 arrays of one random shape."""
    shape = draw(SHAPES)
    return draw(hnp.arrays(np.float64, shape, elements=elements)), draw(hnp.arrays(np.float64, shape, elements=elements))


@st.composite
def dyadic_arrays(draw, low=-640, high=640, denominator=64):
    """float64 arrays of multiples of 1/64: every sum and difference of a few of them is exact."""
    shape = draw(SHAPES)
    return draw(hnp.arrays(np.int64, shape, elements=st.integers(low, high))).astype(np.float64) / denominator


def disjoint_segments():
    """Sorted segments with a silence gap between each: what ``speech_segments`` returns."""
    def pair_up(bounds):
        bounds = sorted(bounds)
        return [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds) - 1, 2)]

    return st.lists(st.integers(0, 200), unique=True, max_size=14).map(pair_up)


ANY_SEGMENTS = st.lists(st.tuples(st.integers(0, 100), st.integers(1, 40)).map(lambda t: (t[0], t[0] + t[1])),
                        max_size=10)


# ------------------------------------------------------------------------------------------------- tensor metrics

@given(hnp.arrays(np.float64, SHAPES, elements=FINITE))
def test_identical_arrays_score_perfectly(array):
    assert max_abs(array, array.copy()) == 0.0
    assert max_rel(array, array.copy()) == 0.0
    assert psnr(array, array.copy()) == math.inf
    assert quality(array, array.copy()) == 1.0
    assert allclose(array, array.copy(), atol=0.0, rtol=0.0) is True


def test_max_abs_worked_example():
    reference = [[1.0, -2.0], [3.5, 0.0]]
    candidate = [[1.25, -2.0], [3.0, 0.0]]
    # errors 0.25, 0, 0.5, 0
    assert max_abs(reference, candidate) == 0.5
    assert max_abs(candidate, reference) == 0.5


@given(array_pairs())
def test_max_abs_is_symmetric_and_the_largest_elementwise_error(pair):
    a, b = pair
    largest = max(abs(x - y) for x, y in zip(a.flat, b.flat))
    assert max_abs(a, b) == max_abs(b, a) == largest


@given(dyadic_arrays(), st.data(), st.integers(1, 800), st.sampled_from([1, -1]))
def test_one_perturbed_element_gives_exactly_its_size(reference, data, k, sign):
    d = k / 8  # dyadic, so reference + d is exact and the error is d itself
    index = data.draw(st.integers(0, reference.size - 1))
    candidate = reference.copy()
    candidate.flat[index] += sign * d
    assert max_abs(reference, candidate) == d


def test_accepts_float32_and_integer_inputs_and_compares_in_float64():
    # 2**25 - 1 needs 25 significant bits: float32 arithmetic would round the error to 2**25
    reference = np.array([2.0**25, 0.0], dtype=np.float32)
    candidate = np.array([1.0, 0.0], dtype=np.float32)
    assert max_abs(reference, candidate) == 2.0**25 - 1
    assert max_abs([1, 2, 3], [1, 2, 5]) == 2.0
    assert max_abs(np.float32(1.5), np.float32(1.0)) == 0.5  # 0-d arrays are one element


def test_max_rel_worked_example_with_default_floor():
    # floor = 1e-3 * max|ref| = 0.01; relative errors 0.5/10 = 0.05, 0.001/max(0, 0.01) = 0.1, 0
    assert max_rel([10.0, 0.0, -2.0], [10.5, 0.001, -2.0]) == pytest.approx(0.1, rel=1e-12)


def test_max_rel_zero_reference_entry_is_guarded_by_the_tensor_scale():
    # without the guard, 1e-6 / 0 would be inf; with it, 1e-6 / (1e-3 * 1) = 1e-3
    result = max_rel([1.0, 0.0], [1.0, 1e-6])
    assert math.isfinite(result)
    assert result == pytest.approx(1e-3, rel=1e-9)


def test_max_rel_all_zero_reference_uses_the_tiny_guard():
    assert max_rel([0.0, 0.0], [0.0, 2e-12]) == pytest.approx(2e-12 / metrics.ZERO_REFERENCE_FLOOR, rel=1e-12)
    assert max_rel([0.0, 0.0], [0.0, 0.0]) == 0.0


def test_max_rel_explicit_floor():
    # floor 1: errors 1/max(10, 1) = 0.1 and 0.125/max(0.5, 1) = 0.125
    assert max_rel([10.0, 0.5], [11.0, 0.625], floor=1.0) == 0.125
    # floor 0 is the unguarded relative error: any error at a zero entry is infinite, an exact zero is not
    assert max_rel([1.0, 0.0], [1.0, 1e-9], floor=0.0) == math.inf
    assert max_rel([1.0, 0.0], [1.5, 0.0], floor=0.0) == 0.5


@given(array_pairs(), st.floats(1e-6, 10.0))
def test_max_rel_matches_its_definition_elementwise(pair, floor):
    reference, candidate = pair
    expected = max(abs(x - r) / max(abs(r), floor) for r, x in zip(reference.flat, candidate.flat))
    assert max_rel(reference, candidate, floor=floor) == pytest.approx(expected, rel=1e-12)


def test_psnr_worked_examples():
    # peak 4, errors (0, 2): rmse = sqrt(4 / 2) = sqrt(2); 20 log10(4 / sqrt 2) = 20 log10(2^1.5) = 30 log10 2
    assert psnr([3.0, -4.0], [3.0, -2.0]) == pytest.approx(30 * math.log10(2), rel=1e-12)
    # peak 1 given, errors (0.1, 0): rmse = 0.1 / sqrt 2; 20 log10(sqrt(2) / 0.1) = 10 log10(200)
    assert psnr([0.0, 0.5], [0.1, 0.5], peak=1.0) == pytest.approx(10 * math.log10(200), rel=1e-12)


def test_psnr_all_zero_reference_with_error_is_minus_inf_unless_a_peak_is_given():
    assert psnr([0.0, 0.0], [0.0, 0.5]) == -math.inf
    # rmse = 0.5 / sqrt 2; 20 log10(1 / rmse) = 20 log10(2 sqrt 2) = 30 log10 2
    assert psnr([0.0, 0.0], [0.0, 0.5], peak=1.0) == pytest.approx(30 * math.log10(2), rel=1e-12)


@given(dyadic_arrays(), st.data())
def test_psnr_falls_by_20_log10_4_when_the_noise_is_four_times_larger(reference, data):
    reference.flat[0] = 5.0  # a non-zero peak
    noise = data.draw(hnp.arrays(np.int64, reference.shape, elements=st.integers(-64, 64))).astype(np.float64) / 64
    noise.flat[-1] = 0.5  # some noise
    quiet, loud = psnr(reference, reference + noise), psnr(reference, reference + 4 * noise)
    assert quiet > loud
    assert quiet - loud == pytest.approx(20 * math.log10(4), abs=1e-9)


def test_quality_worked_examples():
    assert quality([3.0, 4.0], [3.0, 4.5]) == pytest.approx(0.9, abs=1e-15)  # 1 - 0.5 / 5
    assert quality([1.0, 0.0], [-1.0, 0.0]) == -1.0  # 1 - 2 / 1: worse than predicting zeros
    assert quality([0.0, 0.0], [0.0, 0.0]) == 1.0
    assert quality([0.0, 0.0], [0.0, 1e-9]) == -math.inf


@given(hnp.arrays(np.float64, SHAPES, elements=FINITE).filter(lambda a: np.any(a != 0)))
def test_quality_of_an_all_zero_candidate_is_zero(reference):
    assert quality(reference, np.zeros_like(reference)) == 0.0  # 1 - ||ref|| / ||ref||


@given(array_pairs(elements=st.floats(-100, 100)), st.floats(1e-3, 1e3))
def test_quality_is_invariant_under_scaling_both(pair, scale):
    reference, candidate = pair
    reference.flat[0] = 1.0  # non-zero reference norm
    assert quality(scale * reference, scale * candidate) == pytest.approx(quality(reference, candidate),
                                                                          rel=1e-9, abs=1e-9)


@given(hnp.arrays(np.float64, SHAPES, elements=FINITE), st.data(),
       st.sampled_from([0.0, 1e-6, 1e-3, 1.0]), st.floats(0.0, 1e-2), st.floats(0.0, 1e-2))
def test_allclose_agrees_with_numpy(reference, data, noise_scale, atol, rtol):
    noise = data.draw(hnp.arrays(np.float64, reference.shape, elements=st.floats(-1.0, 1.0)))
    candidate = reference + noise_scale * noise
    assert allclose(reference, candidate, atol, rtol) == np.allclose(candidate, reference, rtol=rtol, atol=atol)


def test_allclose_scales_the_tolerance_with_the_reference_only():
    assert allclose([1.0], [1.5], atol=0.0, rtol=0.4) is False  # 0.5 > 0.4 * 1
    assert allclose([1.5], [1.0], atol=0.0, rtol=0.4) is True  # 0.5 <= 0.4 * 1.5


@pytest.mark.parametrize("reference, candidate", [
    ([np.inf, 1.0], [np.inf, 1.0]),
    ([np.inf, 1.0], [-np.inf, 1.0]),
    ([np.inf, 1.0], [1e308, 1.0]),
    ([1.0, 2.0], [np.inf, 2.0]),
    ([1.0, 2.0], [np.nan, 2.0]),
    ([np.nan, 2.0], [np.nan, 2.0]),
])
def test_allclose_non_finite_values_follow_numpy(reference, candidate):
    expected = np.allclose(candidate, reference, rtol=0.1, atol=1e-3)
    assert allclose(reference, candidate, atol=1e-3, rtol=0.1) is bool(expected)


@pytest.mark.parametrize("reference, candidate", [
    ([1.0, 2.0, 3.0], [1.0, np.nan, 3.0]),  # NaN in the candidate
    ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]),  # NaN in the reference: a broken reference is no pass either
    ([1.0, np.nan, 3.0], [1.0, np.nan, 3.0]),  # NaN in both at the same place
])
def test_nan_never_looks_like_a_pass(reference, candidate):
    assert max_abs(reference, candidate) == math.inf
    assert max_rel(reference, candidate) == math.inf
    assert psnr(reference, candidate) == -math.inf
    assert quality(reference, candidate) == -math.inf
    assert allclose(reference, candidate, atol=1e300, rtol=1.0) is False
    assert worst_index(reference, candidate, atol=1e300, rtol=1.0) == (1,)


def test_matching_infinities_are_exact_and_left_out_of_the_scale():
    reference, candidate = [np.inf, 1.0], [np.inf, 1.5]
    assert max_abs(reference, candidate) == 0.5
    assert max_rel(reference, candidate) == 0.5  # 0.5 / max(1, 1e-3 * 1)
    # rmse = 0.5 / sqrt 2, peak 1 (the finite entries): 20 log10(2 sqrt 2) = 30 log10 2
    assert psnr(reference, candidate) == pytest.approx(30 * math.log10(2), rel=1e-12)
    assert quality(reference, candidate) == 0.5  # 1 - 0.5 / 1


@pytest.mark.parametrize("candidate", [[-np.inf, 1.0], [5.0, 1.0]])
def test_an_unmatched_infinity_fails_every_metric(candidate):
    reference = [np.inf, 1.0]
    assert max_abs(reference, candidate) == math.inf
    assert max_rel(reference, candidate) == math.inf
    assert psnr(reference, candidate) == -math.inf
    assert quality(reference, candidate) == -math.inf
    assert allclose(reference, candidate, atol=1.0, rtol=1.0) is False


def test_worst_index_points_at_the_largest_excess_over_the_tolerance():
    reference = np.zeros((3, 4))
    candidate = reference.copy()
    candidate[1, 2] = 5.0
    candidate[2, 0] = 1.0
    assert worst_index(reference, candidate, atol=1e-3, rtol=0.0) == (1, 2)
    # the larger raw error (1 at index 0) is within 1% of 100; the smaller one (0.5 at index 1) is not of 1
    assert worst_index([100.0, 1.0], [101.0, 1.5], atol=0.0, rtol=0.01) == (1,)
    assert worst_index(np.float64(2.0), np.float64(3.0), atol=0.0, rtol=0.0) == ()


def test_tensor_metrics_worked_example_as_json_ready_values():
    result = tensor_metrics([3.0, -4.0], [3.0, -2.0], atol=0.1, rtol=0.1)
    assert set(result) == {"max_abs", "max_rel", "psnr_db", "quality", "allclose"}
    assert result["max_abs"] == 2.0
    assert result["max_rel"] == 0.5  # 2 / max(4, 1e-3 * 4)
    assert result["psnr_db"] == pytest.approx(30 * math.log10(2), rel=1e-12)
    assert result["quality"] == pytest.approx(0.6, abs=1e-15)  # 1 - 2 / 5
    assert result["allclose"] is False  # 2 > 0.1 + 0.1 * 4
    assert all(type(result[key]) is float for key in ("max_abs", "max_rel", "psnr_db", "quality"))
    json.dumps(result)
    broken = tensor_metrics([1.0], [np.nan], atol=0.1, rtol=0.1)
    assert broken == {"max_abs": math.inf, "max_rel": math.inf, "psnr_db": -math.inf, "quality": -math.inf,
                      "allclose": False}
    assert type(broken["max_abs"]) is float


TENSOR_FUNCTIONS = [
    max_abs,
    max_rel,
    psnr,
    quality,
    lambda r, c: allclose(r, c, atol=0.0, rtol=0.0),
    lambda r, c: worst_index(r, c, atol=0.0, rtol=0.0),
    lambda r, c: tensor_metrics(r, c, atol=0.0, rtol=0.0),
]
TENSOR_IDS = ["max_abs", "max_rel", "psnr", "quality", "allclose", "worst_index", "tensor_metrics"]


@pytest.mark.parametrize("function", TENSOR_FUNCTIONS, ids=TENSOR_IDS)
def test_shape_mismatch_names_both_shapes(function):
    with pytest.raises(ValueError, match=r"reference has shape \(2, 3\) but candidate has shape \(3, 2\)"):
        function(np.zeros((2, 3)), np.zeros((3, 2)))


@pytest.mark.parametrize("function", TENSOR_FUNCTIONS, ids=TENSOR_IDS)
def test_empty_arrays_are_rejected(function):
    with pytest.raises(ValueError, match="empty"):
        function(np.zeros((0, 3)), np.zeros((0, 3)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="candidate must be a real numeric array"):
        max_abs([1.0], ["a"])
    with pytest.raises(ValueError, match="reference must be a real numeric array"):
        quality([1 + 1j], [1.0])
    with pytest.raises(ValueError, match="atol must be >= 0"):
        allclose([1.0], [1.0], atol=-1e-3, rtol=0.0)
    with pytest.raises(ValueError, match="rtol must be finite"):
        tensor_metrics([1.0], [1.0], atol=0.0, rtol=math.nan)
    with pytest.raises(ValueError, match="peak must be > 0"):
        psnr([1.0], [1.0], peak=0.0)
    with pytest.raises(ValueError, match="floor must be >= 0"):
        max_rel([1.0], [1.0], floor=-1.0)


# ---------------------------------------------------------------------------------------------------- VAD metrics

@given(PROBS)
def test_identical_probabilities_agree_everywhere(probs):
    assert decision_agreement(probs, probs.copy()) == 1.0


def test_decision_agreement_worked_examples():
    assert decision_agreement([0.9, 0.1, 0.6, 0.2], [0.9, 0.1, 0.4, 0.2]) == 0.75  # chunk 2 flipped
    assert decision_agreement([0.5], [0.49]) == 0.0  # p == threshold is speech
    assert decision_agreement([0.5], [0.7]) == 1.0
    assert decision_agreement([0.3, 0.9], [0.1, 0.3], threshold=0.25) == 0.5  # chunk 0 flipped
    # a NaN chunk disagrees even with a silent reference chunk (NaN >= 0.5 is False, like silence)
    assert decision_agreement([0.1, 0.9], [np.nan, 0.9]) == 0.5


PROBS_EXAMPLE = [0.1, 0.9, 0.8, 0.2, 0.7, 0.1, 0.1, 0.6]  # speech at chunks 1, 2, 4, 7


@pytest.mark.parametrize("min_speech, min_silence, expected", [
    (1, 1, [(1, 3), (4, 5), (7, 8)]),  # raw runs
    (1, 2, [(1, 5), (7, 8)]),  # the 1-chunk gap at 3 is bridged, the 2-chunk gap at 5-6 is not
    (1, 3, [(1, 8)]),  # both gaps bridged
    (2, 1, [(1, 3)]),  # 1-chunk runs dropped
    (2, 2, [(1, 5)]),  # bridging first: (1,3)+(4,5) become (1,5), which survives; (7,8) is dropped
    (5, 2, []),
])
def test_speech_segments_bridge_then_drop(min_speech, min_silence, expected):
    assert speech_segments(PROBS_EXAMPLE, min_speech_chunks=min_speech, min_silence_chunks=min_silence) == expected


def test_speech_segments_edges():
    assert speech_segments([0.1, 0.9, 0.1], min_silence_chunks=5) == [(1, 2)]  # edge silence is no gap
    assert speech_segments([0.1, 0.2]) == []
    assert speech_segments([0.6, 0.7, 0.5]) == [(0, 3)]
    assert speech_segments([0.3, 0.2, 0.4], threshold=0.25) == [(0, 1), (2, 3)]
    assert speech_segments([]) == []
    segments = speech_segments(np.array([0.9, 0.1, 0.9]))
    assert all(type(i) is int for segment in segments for i in segment)


@given(PROBS, st.floats(0.05, 0.95))
def test_raw_speech_segments_cover_exactly_the_speech_chunks(probs, threshold):
    segments = speech_segments(probs, threshold=threshold)
    covered = np.zeros(probs.size, dtype=bool)
    for start, end in segments:
        covered[start:end] = True
    np.testing.assert_array_equal(covered, probs >= threshold)
    assert all(prev_end < start for (_, prev_end), (start, _) in zip(segments, segments[1:]))  # separated runs


@given(PROBS, st.integers(1, 5), st.integers(1, 5))
def test_speech_segments_respect_the_minimum_lengths(probs, min_speech, min_silence):
    segments = speech_segments(probs, min_speech_chunks=min_speech, min_silence_chunks=min_silence)
    assert all(end - start >= min_speech for start, end in segments)
    assert all(start - prev_end >= min_silence for (_, prev_end), (start, _) in zip(segments, segments[1:]))
    # every segment starts and ends on a speech chunk; bridging never extends past the speech
    assert all(probs[start] >= 0.5 and probs[end - 1] >= 0.5 for start, end in segments)


def test_speech_segments_bad_input():
    with pytest.raises(ValueError, match=r"probs must be 1-D .* got shape \(2, 2\)"):
        speech_segments(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="min_speech_chunks must be an integer >= 1, got 0"):
        speech_segments([0.9], min_speech_chunks=0)
    with pytest.raises(ValueError, match="min_silence_chunks must be an integer >= 1"):
        speech_segments([0.9], min_silence_chunks=1.5)
    with pytest.raises(ValueError, match="NaN at chunk 1"):
        speech_segments([0.9, np.nan])


def test_segment_f1_worked_examples():
    assert segment_f1([], []) == 1.0
    assert segment_f1([(0, 10)], []) == 0.0
    assert segment_f1([], [(0, 10)]) == 0.0
    assert segment_f1([(0, 10), (20, 30)], [(10, 20), (30, 40)]) == 0.0  # touching is not overlapping
    # one match of 2 reference and 3 candidate segments: P = 1/3, R = 1/2, F1 = 2 (1/6) / (5/6) = 0.4
    assert segment_f1([(0, 10), (20, 30)], [(0, 10), (50, 60), (70, 80)]) == pytest.approx(0.4, abs=1e-15)
    # one-to-one: both candidates overlap the reference enough, only one may match: P = 1/2, R = 1, F1 = 2/3
    assert segment_f1([(0, 10)], [(0, 10), (0, 9)]) == pytest.approx(2 / 3, abs=1e-15)
    # time segments in seconds work the same way
    assert segment_f1([(0.0, 1.5)], [(0.1, 1.5)]) == 1.0


def test_segment_f1_iou_threshold_is_inclusive():
    assert segment_f1([(0, 100)], [(0, 51)]) == 1.0  # IoU 0.51
    assert segment_f1([(0, 100)], [(0, 49)]) == 0.0  # IoU 0.49
    assert segment_f1([(0, 10)], [(5, 10)]) == 1.0  # IoU 5/10 = 0.5 exactly
    assert segment_f1([(0, 10)], [(2, 8)], iou=0.6) == 1.0  # IoU 0.6
    assert segment_f1([(0, 10)], [(2, 8)], iou=0.61) == 0.0


def test_segment_f1_matches_greedily_by_best_iou():
    # A = (0,10), B = (5,15); X = (3,13), Y = (0,8). IoU: A-Y 8/10, B-X 8/12, A-X 7/13, B-Y 3/15.
    # Best first: A-Y, then B-X: 2 matches, F1 = 1. Matching X first to A (in list order) would leave Y with B
    # at IoU 0.2 < 0.3: 1 match, F1 = 0.5.
    assert segment_f1([(0, 10), (5, 15)], [(3, 13), (0, 8)], iou=0.3) == 1.0


@given(ANY_SEGMENTS)
def test_segment_f1_of_identical_lists_is_one(segments):
    assert segment_f1(segments, list(segments)) == 1.0


@given(disjoint_segments(), disjoint_segments(), st.sampled_from([0.5, 0.7, 1.0]))
def test_segment_f1_is_symmetric(reference, candidate, iou):
    assert segment_f1(reference, candidate, iou) == segment_f1(candidate, reference, iou)


@given(ANY_SEGMENTS, ANY_SEGMENTS, st.floats(0.01, 1.0))
def test_segment_f1_is_between_zero_and_one(reference, candidate, iou):
    assert 0.0 <= segment_f1(reference, candidate, iou) <= 1.0


def test_segment_f1_bad_input():
    with pytest.raises(ValueError, match=r"candidate_segments\[1\] must have finite start < end"):
        segment_f1([(0, 10)], [(0, 5), (7, 7)])
    with pytest.raises(ValueError, match=r"reference_segments\[0\] must be a \(start, end\) pair"):
        segment_f1([(0, 1, 2)], [])
    with pytest.raises(ValueError, match="iou must be > 0"):
        segment_f1([(0, 10)], [(0, 10)], iou=0.0)
    with pytest.raises(ValueError, match="iou must be <= 1"):
        segment_f1([(0, 10)], [(0, 10)], iou=1.5)


def test_vad_metrics_worked_example():
    reference = [0.9, 0.9, 0.1, 0.1, 0.8, 0.8, 0.1, 0.1]  # speech (0,2), (4,6)
    candidate = [0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.6]  # speech (0,2), (7,8)
    # chunks 4, 5 and 7 disagree: 5/8 agree; one segment matches of 2 + 2: F1 = 2 * 1 / 4
    assert vad_metrics(reference, candidate) == {"decision_agreement": 0.625, "segment_f1": 0.5,
                                                 "reference_segments": 2, "candidate_segments": 2}
    json.dumps(vad_metrics(reference, candidate))


def test_vad_metrics_nan_fails_the_segment_score():
    # NaN at chunk 1 would segment like the reference's silence there; it must not score as a match
    result = vad_metrics([0.9, 0.1], [0.9, np.nan])
    assert result == {"decision_agreement": 0.5, "segment_f1": 0.0, "reference_segments": 1, "candidate_segments": 1}


def test_vad_metrics_bad_input():
    with pytest.raises(ValueError, match="reference_probs has 3 chunks but candidate_probs has 2"):
        vad_metrics([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"candidate_probs must be 1-D .* got shape \(2, 1\)"):
        vad_metrics([0.1, 0.2], [[0.1], [0.2]])
    with pytest.raises(ValueError, match="empty"):
        decision_agreement([], [])
    with pytest.raises(ValueError, match="threshold must be finite"):
        decision_agreement([0.1], [0.1], threshold=math.inf)


# ---------------------------------------------------------------------------------------------------- TTS metrics

TTS_RATE = 24000


def speech_like(seconds=1.0, seed=0):
    """A voiced-speech stand-in at 24 kHz: a gliding 120-220 Hz fundamental with 12 harmonics (falling 6 dB per
    octave), switched on and off like syllables, over a little noise; peak about 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * TTS_RATE)) / TTS_RATE
    phase = 2 * np.pi * np.cumsum(120 + 100 * (0.5 + 0.5 * np.sin(2 * np.pi * 1.5 * t))) / TTS_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 13))
    syllables = np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    x = syllables * voiced + 0.01 * rng.standard_normal(t.size)
    return 0.5 * x / np.max(np.abs(x))


def slaney_mel_to_hz(mel):
    """Slaney's scale written out: 200/3 Hz per mel up to 15 mels (1 kHz), then a factor 6.4 per 27 mels."""
    return 200 / 3 * mel if mel < 15 else 1000 * 6.4 ** ((mel - 15) / 27)


def slaney_edges(n_mels=80, fmax=12000.0):
    top = 15 + 27 * math.log(fmax / 1000) / math.log(6.4)  # fmin = 0 is 0 mels
    return [slaney_mel_to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]


def test_tts_identical_waveforms_score_perfectly():
    x = speech_like()
    result = metrics.tts_metrics(x, x.copy())
    assert result == {"waveform_correlation": 1.0, "mel_correlation": 1.0, "mel_psnr_db": math.inf,
                      "mrstft_similarity": 1.0, "mrstft_distance": 0.0}
    assert all(type(value) is float for value in result.values())
    json.dumps(result)
    # float32, [1, n] and [n, 1] inputs are the same waveform
    x32 = x.astype(np.float32)
    assert metrics.waveform_correlation(x32[None], x32[:, None]) == 1.0
    assert metrics.multi_resolution_stft_distance(x32[None], x32) == 0.0
    assert metrics.mel_psnr_db(x32, x32[None]) == math.inf  # like psnr: identical means inf, no finite cap


def test_slaney_mel_scale_worked_values():
    assert metrics._hz_to_mel(0.0) == 0.0
    assert metrics._hz_to_mel(500.0) == pytest.approx(7.5, rel=1e-15)  # 3 mels per 200 Hz
    assert metrics._hz_to_mel(1000.0) == pytest.approx(15.0, rel=1e-15)
    assert metrics._hz_to_mel(6400.0) == pytest.approx(42.0, rel=1e-15)  # 27 mels per factor 6.4
    mels = np.linspace(0, 50, 11)
    np.testing.assert_allclose(metrics._mel_to_hz(metrics._hz_to_mel(metrics._mel_to_hz(mels))),
                               metrics._mel_to_hz(mels), rtol=1e-13)


def test_mel_filterbank_rows_have_unit_area_and_peak_at_two_over_their_width():
    bank = metrics.mel_filterbank(TTS_RATE, n_fft=1024, n_mels=80)
    assert bank.shape == (80, 513)
    assert (bank >= 0).all()
    edges = slaney_edges()
    bins = np.arange(513) * TTS_RATE / 1024
    bin_width = TTS_RATE / 1024
    for m in range(80):
        lower, centre, upper = edges[m], edges[m + 1], edges[m + 2]
        row = bank[m]
        outside = (bins <= lower) | (bins >= upper)
        assert (row[outside] == 0).all(), m
        height = 2 / (upper - lower)  # a triangle of unit area in Hz
        assert row.max() <= height * (1 + 1e-12), m
        # the triangle written out bin by bin: rising from lower to centre, falling from centre to upper
        expected = [height * max(0.0, min((f - lower) / (centre - lower), (upper - f) / (upper - centre))) for f in bins]
        np.testing.assert_allclose(row, expected, rtol=1e-9, atol=1e-15 * height)
        if upper - lower >= 10 * bin_width:  # many bins wide: the sampled triangle sums to its area / bin width
            assert row.sum() == pytest.approx(1024 / TTS_RATE, rel=0.01), m


def test_pure_tone_log_mel_peaks_in_its_mel_bin():
    edges = slaney_edges()
    for m in (10, 40, 70):  # linear and logarithmic parts of the scale
        t = np.arange(TTS_RATE // 2) / TTS_RATE
        tone = 0.5 * np.sin(2 * np.pi * edges[m + 1] * t)  # at filter m's centre frequency
        log_mel = metrics.log_mel_spectrogram(tone)
        assert log_mel.shape == (80, 1 + tone.size // 256)
        assert int(np.argmax(log_mel[:, 4:-4].mean(axis=1))) == m
    silence = metrics.log_mel_spectrogram(np.zeros(1000), n_mels=40)
    assert silence.shape == (40, 1 + 1000 // 256)
    assert (silence == math.log(1e-5)).all()


def test_waveform_correlation_worked_examples():
    assert metrics.waveform_correlation([1, 2, 3], [2, 4, 6]) == 1.0  # gain and offset do not count
    assert metrics.waveform_correlation([1, 2, 3], [3, 2, 1]) == -1.0
    # centred (-1.5, -0.5, 0.5, 1.5) and (-1.5, 0.5, -0.5, 1.5): dot 4, squared norms 5 and 5: 4 / 5
    assert metrics.waveform_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8, rel=1e-15)
    # constant waveforms: undefined Pearson, defined as 1.0 for an exact copy and 0.0 otherwise
    assert metrics.waveform_correlation([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]) == 1.0
    assert metrics.waveform_correlation([0.0, 0.0, 0.0], [0.0, 0.1, 0.0]) == 0.0
    assert metrics.waveform_correlation([0.0, 0.1, 0.0], [0.2, 0.2, 0.2]) == 0.0


@given(array_pairs(elements=st.floats(-1.0, 1.0)).filter(lambda p: p[0].size > 1))
def test_waveform_correlation_is_symmetric_and_bounded(pair):
    a, b = pair
    value = metrics.waveform_correlation(a.reshape(-1), b.reshape(-1))
    assert -1.0 <= value <= 1.0
    assert value == pytest.approx(metrics.waveform_correlation(b.reshape(-1), a.reshape(-1)), abs=1e-12)


def test_tts_figures_fall_as_the_noise_rises():
    x = speech_like()
    noise = np.random.default_rng(1).standard_normal(x.size)
    noise *= np.sqrt(np.mean(x ** 2) / np.mean(noise ** 2))  # 0 dB SNR
    results = [metrics.tts_metrics(x, x + 10 ** (-snr / 20) * noise) for snr in (40, 20, 0)]
    for key in ("waveform_correlation", "mel_correlation", "mel_psnr_db", "mrstft_similarity"):
        values = [r[key] for r in results]
        assert values[0] > values[1] > values[2], (key, values)
    distances = [r["mrstft_distance"] for r in results]
    assert 0 < distances[0] < distances[1] < distances[2]
    assert all(r["mrstft_similarity"] == pytest.approx(1 / (1 + r["mrstft_distance"]), rel=1e-15) for r in results)


def test_gain_and_delay():
    x = speech_like()
    quieter = 0.5 * x  # -6 dB: the waveform correlation ignores gain, the spectral figures do not
    assert metrics.waveform_correlation(x, quieter) == pytest.approx(1.0, abs=1e-12)
    assert metrics.mel_correlation(x, quieter) < 1.0
    assert math.isfinite(metrics.mel_psnr_db(x, quieter))
    assert metrics.multi_resolution_stft_distance(x, quieter) > metrics.multi_resolution_stft_distance(x, 0.9 * x)
    delayed = [np.concatenate((np.zeros(d), x[:x.size - d])) for d in (1, 4, 16)]
    correlations = [metrics.waveform_correlation(x, y) for y in delayed]
    assert 1.0 > correlations[0] > correlations[1] > correlations[2]
    psnrs = [metrics.mel_psnr_db(x, y) for y in delayed]
    assert psnrs[0] > psnrs[1] > psnrs[2]


def test_silent_reference_edges():
    silence, sound = np.zeros(2000), speech_like()[:2000]
    assert metrics.mel_psnr_db(silence, silence) == math.inf
    assert metrics.mel_psnr_db(silence, sound) == -math.inf  # no range to scale the error by
    assert metrics.multi_resolution_stft_distance(silence, silence) == 0.0
    assert metrics.multi_resolution_stft_distance(silence, sound) == math.inf
    assert metrics.tts_metrics(silence, sound)["mrstft_similarity"] == 0.0


def test_fifteen_seconds_of_24_khz_audio_is_fast():
    import time

    x = speech_like(15.525)  # 372,600 samples
    assert x.size == 372_600
    y = x + 0.01 * np.random.default_rng(2).standard_normal(x.size)
    start = time.perf_counter()
    metrics.tts_metrics(x, y)
    assert time.perf_counter() - start < 2.0  # about 0.25 s on 2 cores; generous for a loaded CI runner


TTS_FUNCTIONS = [metrics.waveform_correlation, metrics.mel_correlation, metrics.mel_psnr_db,
                 metrics.multi_resolution_stft_distance]
TTS_IDS = ["waveform_correlation", "mel_correlation", "mel_psnr_db", "multi_resolution_stft_distance"]


@pytest.mark.parametrize("function", TTS_FUNCTIONS, ids=TTS_IDS)
def test_tts_bad_waveforms_are_named(function):
    x = speech_like(0.1)
    with pytest.raises(ValueError, match="reference has 2400 samples but candidate has 2399"):
        function(x, x[:-1])
    with pytest.raises(ValueError, match=r"candidate has a non-finite sample \(nan\) at index 7"):
        function(x, np.where(np.arange(x.size) == 7, np.nan, x))
    with pytest.raises(ValueError, match="reference has a non-finite sample"):
        function(np.full(x.size, np.inf), x)
    with pytest.raises(ValueError, match="reference is empty"):
        function([], [])
    with pytest.raises(ValueError, match=r"candidate must be a 1-D waveform .* got shape \(2, 1200\)"):
        function(x, x.reshape(2, -1))


def test_tts_metrics_bad_input_names_its_arguments():
    x = speech_like(0.1)
    with pytest.raises(ValueError, match="reference_audio has 2400 samples but candidate_audio has 10"):
        metrics.tts_metrics(x, x[:10])
    with pytest.raises(ValueError, match="candidate_audio has a non-finite sample"):
        metrics.tts_metrics(x, x * np.nan)
    with pytest.raises(ValueError, match="reference_audio is empty"):
        metrics.tts_metrics(np.zeros(0), x)
    with pytest.raises(ValueError, match="sample_rate must be an integer >= 1"):
        metrics.tts_metrics(x, x, sample_rate=0)


def test_spectrogram_settings_are_checked():
    x = speech_like(0.1)
    with pytest.raises(ValueError, match="audio has a non-finite sample"):
        metrics.log_mel_spectrogram(np.full(10, np.nan))
    with pytest.raises(ValueError, match="hop must be an integer >= 1"):
        metrics.log_mel_spectrogram(x, hop=0)
    with pytest.raises(ValueError, match="fmax must be <= 12000"):
        metrics.log_mel_spectrogram(x, fmax=13000)
    with pytest.raises(ValueError, match="fmax must be > fmin"):
        metrics.log_mel_spectrogram(x, fmin=4000, fmax=2000)
    with pytest.raises(ValueError, match="floor must be > 0"):
        metrics.log_mel_spectrogram(x, floor=0.0)
    with pytest.raises(ValueError, match="resolutions is empty"):
        metrics.multi_resolution_stft_distance(x, x, resolutions=())
    with pytest.raises(ValueError, match=r"resolutions\[1\].win_length must be <= n_fft"):
        metrics.multi_resolution_stft_distance(x, x, resolutions=((512, 128, 512), (256, 64, 512)))
    with pytest.raises(ValueError, match=r"resolutions\[0\] must be \(n_fft, hop, win_length\)"):
        metrics.multi_resolution_stft_distance(x, x, resolutions=((512, 128),))


# ------------------------------------------------------------------------------------------------------ WAV files

def test_write_wav_round_trips_24_khz_audio_through_read_wav(tmp_path):
    from conversions.audio import read_wav, write_wav

    x = speech_like(0.5)
    path = write_wav(tmp_path / "out" / "nested" / "speech.wav", x, TTS_RATE)  # parents are created
    assert path == tmp_path / "out" / "nested" / "speech.wav"
    back = read_wav(path, sample_rate=TTS_RATE)
    assert back.dtype == np.float32 and back.shape == x.shape
    assert np.max(np.abs(back - x)) <= 1 / 32767
    with pytest.raises(ValueError, match="expected 16-bit mono 16000 Hz, got 1 channel.*24000 Hz"):
        read_wav(path)  # the 16 kHz default still refuses other rates
    assert sorted(p.name for p in path.parent.iterdir()) == ["speech.wav"]  # no temporary file left


def test_write_wav_clips_to_the_pcm_range(tmp_path):
    from conversions.audio import read_wav, write_wav

    path = write_wav(tmp_path / "clipped.wav", np.array([[1.5, 1.0, -1.0, -2.0, 0.25]], np.float32), 8000)
    # clipped to [-1, 1], then x * 32768 limited to the int16 range: 1 -> 32767, -1 -> -32768
    np.testing.assert_array_equal(read_wav(path, 8000), np.array([32767, 32767, -32768, -32768, 8192]) / 32768)


def test_write_wav_bad_input_writes_nothing(tmp_path):
    from conversions.audio import write_wav

    with pytest.raises(ValueError, match="audio has 1 non-finite sample"):
        write_wav(tmp_path / "a.wav", [0.0, np.nan], TTS_RATE)
    with pytest.raises(ValueError, match=r"audio must be a 1-D waveform .* got shape \(2, 2\)"):
        write_wav(tmp_path / "a.wav", np.zeros((2, 2)), TTS_RATE)
    with pytest.raises(ValueError, match="sample_rate must be an integer >= 1"):
        write_wav(tmp_path / "a.wav", [0.0], 24000.0)
    assert list(tmp_path.iterdir()) == []


def test_write_wav_failing_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    from conversions import files
    from conversions.audio import write_wav

    path = write_wav(tmp_path / "speech.wav", [0.5, -0.5], TTS_RATE)
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_wav(path, speech_like(0.1), TTS_RATE)
    assert list(tmp_path.iterdir()) == [path]  # the old file, untouched, and no temporary file beside it
    assert path.read_bytes() == before
