"""Kokoro-82M: parity bounds per stage output and program precision, and the task metrics (durations, audio
length, waveform and mel-spectrogram agreement) with their minimums and snapshot slack. Each figure quotes the
measurement behind it (the committed utterances and generated ones, real recovered weights, portable runtime,
this machine; docs/kokoro.md has the tables)."""

from __future__ import annotations

import numpy as np

from conversions.registry import Bound, TaskMetric

SAMPLE_RATE = 24_000


def _valid_samples(reference: dict, call: int, audio: np.ndarray) -> int:
    """Samples of a call's utterance: the reference's ``audio_length_samples`` when the component has it, else up
    to the reference's last non-zero sample (the tail zeroes everything beyond the valid frames)."""
    if "audio_length_samples" in reference:
        return int(np.asarray(reference["audio_length_samples"])[call].reshape(-1)[0])
    nonzero = np.flatnonzero(audio)
    return int(nonzero[-1]) + 1 if nonzero.size else 0


def waveform_figures(reference, candidate) -> dict:
    """Per call (utterance), the reference's valid samples of both waveforms: correlation, log-mel correlation and
    PSNR, multi-resolution STFT similarity; the worst call of each figure."""
    from conversions import metrics

    ref_audio = np.asarray(reference["audio"], np.float64)
    cand_audio = np.asarray(candidate["audio"], np.float64)
    per_call = []
    for call in range(ref_audio.shape[0]):
        r, c = ref_audio[call].reshape(-1), cand_audio[call].reshape(-1)
        n = _valid_samples(reference, call, r)
        per_call.append(metrics.tts_metrics(r[:n], c[:n], SAMPLE_RATE))
    return _worst(per_call)


def _worst(per_call: list[dict]) -> dict:
    """The worst utterance of each figure; the log-mel PSNR capped at MEL_PSNR_CAP_DB (an exact fp32 stage gives
    inf, and a pinned inf could never be matched on a CPU whose last bits differ)."""
    figures = {k: min(f[k] for f in per_call) for k in ("waveform_correlation", "mel_correlation", "mrstft_similarity")}
    figures["mel_psnr_db"] = min(min(f["mel_psnr_db"] for f in per_call), MEL_PSNR_CAP_DB)
    figures["mrstft_distance"] = max(f["mrstft_distance"] for f in per_call)
    return figures


MEL_PSNR_CAP_DB = 100.0


def duration_figures(reference, candidate, margin: float) -> dict:
    """Integer durations of the valid tokens (reference ``pred_dur`` > 0): the fraction equal, and the fraction
    equal among tokens whose reference ``duration`` is at least ``margin`` away from a rounding boundary (k + 0.5)
    when the component outputs it. ``duration_flips`` counts the differing tokens (informational)."""
    ref = np.asarray(reference["pred_dur"]).reshape(-1)
    cand = np.asarray(candidate["pred_dur"]).reshape(-1)
    valid = ref > 0
    equal = ref[valid] == cand[valid]
    figures = {"duration_agreement": float(equal.mean()) if equal.size else 1.0,
               "duration_flips": float((~equal).sum())}
    if "duration" in reference:
        raw = np.asarray(reference["duration"], np.float64).reshape(-1)[valid]
        distance = np.abs(raw - np.floor(raw) - 0.5)
        confident = distance >= margin
        figures["confident_duration_agreement"] = float(equal[confident].mean()) if confident.any() else 1.0
        figures["smallest_rounding_margin"] = float(distance.min()) if distance.size else 0.5
    return figures


# A raw duration is a sum of 50 sigmoids, rounded. fp16 programs move it by up to 6.5e-3 (post-albert stage, clip
# and generated utterances) and more end to end (ALBERT in fp16 too: its hidden state moves by 0.03); the committed
# utterances have tokens 0.001 and 0.003 from a rounding boundary, and the fp16 buckets round both the other way
# (each shifts the rest of its utterance by one frame, 25 ms). A reference duration closer than DURATION_MARGIN
# (about 8x the stage's error) to k + 0.5 may round either way: only the others must agree exactly.
DURATION_MARGIN = 0.05


def _durations(reference, candidate) -> dict:
    return duration_figures(reference, candidate, DURATION_MARGIN)


def aligned_audio(ref_audio, cand_audio, ref_dur, cand_dur, samples_per_frame: int = 600):
    """The two waveforms cut to the tokens whose durations agree, each token's span at its own position on each
    side (a duration that rounded the other way shifts everything after it by a frame: compared unaligned, the
    rest of the utterance would be judged against itself a frame off). Spans beyond either buffer are cut."""
    ref_start = np.concatenate([[0], np.cumsum(ref_dur)[:-1]]) * samples_per_frame
    cand_start = np.concatenate([[0], np.cumsum(cand_dur)[:-1]]) * samples_per_frame
    ref_parts, cand_parts = [], []
    for r0, c0, d, agree in zip(ref_start, cand_start, ref_dur * samples_per_frame, ref_dur == cand_dur):
        n = int(min(d, ref_audio.size - r0, cand_audio.size - c0)) if agree else 0
        if n > 0:
            ref_parts.append(ref_audio[r0: r0 + n])
            cand_parts.append(cand_audio[c0: c0 + n])
    if not ref_parts:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ref_parts), np.concatenate(cand_parts)


def _bucket_figures(reference, candidate) -> dict:
    """Per utterance: the waveform figures over the tokens whose durations agree (:func:`aligned_audio`), the
    duration figures, and the audio length where no duration differs (a differing duration changes it by design);
    the worst utterance of each figure."""
    from conversions import metrics

    per_call, lengths, flips_total = [], [], 0
    for call in range(np.asarray(reference["audio"]).shape[0]):
        ref = {k: np.asarray(v)[call] for k, v in reference.items()}
        cand = {k: np.asarray(v)[call] for k, v in candidate.items()}
        ref_dur, cand_dur = (np.asarray(x["pred_dur"]).reshape(-1).astype(np.int64) for x in (ref, cand))
        ref_len = int(np.asarray(ref["audio_length_samples"]).reshape(-1)[0])
        cand_len = int(np.asarray(cand["audio_length_samples"]).reshape(-1)[0])
        r, c = aligned_audio(np.asarray(ref["audio"], np.float64).reshape(-1)[:ref_len],
                             np.asarray(cand["audio"], np.float64).reshape(-1)[:cand_len], ref_dur, cand_dur)
        per_call.append(metrics.tts_metrics(r, c, SAMPLE_RATE))
        flips = int((ref_dur != cand_dur).sum())
        flips_total += flips
        if not flips:
            lengths.append(ref_len == cand_len)
    figures = _worst(per_call)
    figures["audio_length_agreement"] = float(np.mean(lengths)) if lengths else 1.0
    figures.update(duration_figures(reference, candidate, DURATION_MARGIN))
    return figures


DURATION_TASK = TaskMetric(
    name="durations",
    compute=_durations,
    # post-albert fed torch's ALBERT output: fp16 flipped none of the 114 clip tokens (smallest margin 0.001, error
    # <= 6.5e-3); a flip is allowed only below the margin
    minimums={"fp16": {"confident_duration_agreement": 1.0, "duration_agreement": 0.97},
              "fp32": {"confident_duration_agreement": 1.0, "duration_agreement": 1.0}},
    per_case_minimums={"fp16": {"confident_duration_agreement": 1.0},
                       "fp32": {"confident_duration_agreement": 1.0}},
    slack={"duration_agreement": 0.02, "confident_duration_agreement": 0.0},
    informational=("duration_flips", "smallest_rounding_margin"),
)

# The tail (conv_post, exp/sin, inverse STFT) fed torch's vocoder features, computing in fp32 in both packages (the
# fp16 one casts its input and output): measured mel correlation 1.0 (to 5 digits), log-mel PSNR 67.5 dB, waveform
# correlation 1.0 for the fp16 package; the fp32 one is exact here (0 difference).
WAVEFORM_TASK = TaskMetric(
    name="waveform",
    compute=waveform_figures,
    minimums={"fp16": {"waveform_correlation": 0.9999, "mel_correlation": 0.99999, "mel_psnr_db": 60.0},
              "fp32": {"waveform_correlation": 0.99999, "mel_correlation": 0.99999, "mel_psnr_db": 80.0}},
    slack={"waveform_correlation": 0.0001, "mel_correlation": 0.00001, "mel_psnr_db": 2.0, "mrstft_similarity": 0.01},
    informational=("mrstft_distance",),
)

# End to end (bucket vs the same bucket in torch), waveform figures over the tokens whose durations agree
# (:func:`aligned_audio`). fp32: mel correlation >= 0.99996, waveform correlation >= 0.9997 on the committed
# utterances. fp16: mel correlation 0.995-0.997 (log-mel PSNR ~33 dB), and the waveform correlation is ~0: fp16
# moves F0 by up to 0.5 Hz (prosody stage), and SineGen integrates F0 into the harmonics' phase, which drifts by
# whole cycles within a second, so the waveform is a different (equally valid) one with the same spectrum. The
# waveform correlation is therefore gated for fp32 only and never pinned (informational): in fp16 it is noise.
BUCKET_TASK = TaskMetric(
    name="speech",
    compute=_bucket_figures,
    minimums={"fp16": {"mel_correlation": 0.99, "audio_length_agreement": 1.0, "confident_duration_agreement": 1.0,
                       "duration_agreement": 0.95},
              "fp32": {"waveform_correlation": 0.999, "mel_correlation": 0.9999, "audio_length_agreement": 1.0,
                       "duration_agreement": 1.0}},
    per_case_minimums={"fp16": {"confident_duration_agreement": 1.0, "mel_correlation": 0.98},
                       "fp32": {"confident_duration_agreement": 1.0, "mel_correlation": 0.9995}},
    slack={"mel_correlation": 0.002, "mel_psnr_db": 3.0, "mrstft_similarity": 0.05, "audio_length_agreement": 0.0,
           "duration_agreement": 0.02, "confident_duration_agreement": 0.0},
    informational=("waveform_correlation", "mrstft_distance", "duration_flips", "smallest_rounding_margin"),
)


# ---- parity bounds ---------------------------------------------------------------------------------------------
# How they were set: each converted stage fed the torch chain's values for the committed utterances that fit the
# 5 s bucket (2 calls) and for generated utterances (3-8 cases), the buckets the committed utterances (2 and 3
# calls) and 2 generated ones, on the portable runtime against torch; real recovered weights. The measured worst
# is quoted; elementwise bounds are about twice it, PSNR floors ~10 dB below.
def _b(atol, psnr, why, rtol=0.0) -> Bound:
    return Bound(atol, rtol, psnr, why)


_FP32 = "fp32 program: summation order only"
_EXACT = Bound(0.0, 0.0, float("-inf"), "integers: exact")
_BY_TASK_DURATIONS = Bound(None, 0.0, float("-inf"), "integer durations: judged by the task metric (a token whose "
                                                     "raw duration is within DURATION_MARGIN of k + 0.5 may round "
                                                     "either way in fp16)")
_PHASE_WHY = ("PSNR only: the phase of the source's STFT wraps at +-pi, so where a bin's imaginary part crosses 0 "
              "with a negative real part, or the bin is near-silent, two correct programs differ by 2 pi (measured "
              "max 6.28 in fp32 too); what it does to the audio is judged by the vocoder and the buckets")

BOUNDS = {
    # the worst element of 95k fp16-rounded values moves with torch's kernels: 3.4e-2 (AVX512), 4.7e-2
    # (ATEN_CPU_CAPABILITY=default); atol ~4x the larger, so its baseline pin (floored at atol / 4) holds on both
    "albert": {"fp16": {"bert_hidden": _b(0.2, 66.0, "clip: measured 3.4e-2 / 4.7e-2 (AVX512 / default kernels), "
                                                     "76.8 dB")},
               "fp32": {"bert_hidden": _b(5e-5, 100.0, f"{_FP32} (measured 2.2e-5)")}},
    "post-albert": {
        "fp16": {"duration": _b(0.015, 64.0, "clip: measured 6.5e-3, 74.0 dB"), "pred_dur": _BY_TASK_DURATIONS,
                 "d": _b(0.01, 73.0, "clip: measured 3.3e-3, 83.2 dB"),
                 "t_en": _b(0.005, 73.0, "clip: measured 1.8e-3, 83.7 dB")},
        # raw durations reach ~50 frames; a generated case in CI gave 2.5e-5 (clip 9.5e-7, our cases 7.4e-6)
        "fp32": {"duration": _b(1e-4, 100.0, f"{_FP32} (measured up to 2.5e-5 on durations ~20)"), "pred_dur": _EXACT,
                 "d": _b(2e-5, 100.0, f"{_FP32} (measured 4.5e-6)"), "t_en": _b(1e-5, 100.0, f"{_FP32} (1.3e-6)")}},
    "alignment": {
        "fp16": {"en": _b(0.004, 83.0, "fp16 storage of d: measured 9.3e-4, 93.2 dB"),
                 "asr": _b(5e-4, 75.0, "fp16 storage of t_en: measured 2.4e-4, 85.6 dB"), "frames": _EXACT},
        "fp32": {"en": _b(1e-6, 100.0, "a 0/1 matrix product: exact (measured 0)"),
                 "asr": _b(1e-6, 100.0, "a 0/1 matrix product: exact (measured 0)"), "frames": _EXACT}},
    "prosody": {
        "fp16": {"f0": _b(1.0, 65.0, "clip: measured 0.30 Hz on F0 up to ~400 Hz, 75.4 dB"),
                 "n": _b(0.015, 65.0, "clip: measured 6.4e-3, 75.2 dB")},
        "fp32": {"f0": _b(5e-4, 100.0, f"{_FP32} (measured 1.5e-4 Hz)", rtol=1e-5),
                 "n": _b(2e-5, 100.0, f"{_FP32} (measured 4.8e-6)")}},
    "noise-source": {
        "fp16": {"har_magnitude": _b(0.003, 80.0, "fp32 program, fp16 outputs: measured 1.1e-3 (values up to ~3), "
                                                  "89.5 dB"),
                 "har_phase": Bound(None, 0.0, 34.0, _PHASE_WHY + "; clip 39.8 dB")},
        "fp32": {"har_magnitude": _b(0.002, 83.0, "the source is a sin of a cumulative sum over 2F frames: summation "
                                                  "order moves it by ~1e-4 cycles; measured 9.1e-4, 92.5 dB"),
                 "har_phase": Bound(None, 0.0, 34.0, _PHASE_WHY + "; clip 39.8 dB")}},
    "vocoder": {"fp16": {"features": _b(1.5, 73.0, "clip: measured 0.69 on features up to ~100, 82.7 dB")},
                "fp32": {"features": _b(5e-4, 100.0, f"{_FP32} (measured 8.6e-5 on features up to ~100)")}},
    "tail": {"fp16": {"audio": _b(5e-4, 81.0, "fp32 program, fp16 input and output: measured 1.2e-4, 90.9 dB")},
             "fp32": {"audio": _b(1e-5, 100.0, f"{_FP32} (measured 0)")}},
}
_BUCKET_FP16_AUDIO = Bound(None, 0.0, float("-inf"), "judged by the speech task metric: fp16 moves F0 and SineGen "
                                                     "integrates it into the harmonics' phase, so the fp16 waveform "
                                                     "drifts off the reference by whole cycles (waveform correlation "
                                                     "~0) while its spectrum stays (mel correlation >= 0.995)")
for _bucket in ("bucket-5s", "bucket-15s"):
    BOUNDS[_bucket] = {
        "fp16": {"audio": _BUCKET_FP16_AUDIO, "audio_length_samples": _BY_TASK_DURATIONS,
                 "pred_dur": _BY_TASK_DURATIONS},
        # elementwise gate only: F0 moves by ~1e-4 Hz and SineGen integrates it into the harmonics' phase, so the
        # error depends on torch's kernels (5 s bucket: 7.5e-3 / 68.6 dB with AVX512, 1.1e-2 / 66.6 dB with the
        # default ones) and its PSNR is no stable figure to pin; the speech task metric gates mel correlation
        "fp32": {"audio": _b(0.1, float("-inf"), "fp32 end to end, phase drift of the harmonics: measured 7.5e-3 "
                                                  "(AVX512) / 1.1e-2 (default kernels) on 5 s, 9.5e-3 on 15 s"),
                 "audio_length_samples": _EXACT, "pred_dur": _EXACT}}

# Generated utterances reach other values than the clip's (and CI's hypothesis draws others than ours): bounds here
# are 4-5x the measured worst, since one larger case found later fails the run (a CI case gave a fp32 duration error
# 3x our worst, another a fp32 vocoder error 5.6x). "8 seeds": the worst over `pytest -k "test_parity_random and
# kokoro" --hypothesis-seed=11..18` (3-4 cases each), which set the bounds below at >= 4x that worst and the
# stacked-PSNR floors >= 8 dB under it (the 3-4 case stack varies by several dB between draws).
RANDOM_BOUNDS = {
    "albert": {"fp16": {"bert_hidden": _b(0.2, 62.0, "generated: measured 2.2e-2, 72.2 dB")},
               "fp32": {"bert_hidden": _b(3e-4, 100.0, f"{_FP32} (measured 1.7e-5; 6.8e-5 over 8 seeds)")}},
    "post-albert": {
        "fp16": {"duration": _b(0.06, 62.0, "generated: measured 6.5e-3, 72.2 dB; 1.4e-2, 71.6 dB over 8 seeds"),
                 "pred_dur": _BY_TASK_DURATIONS,
                 "d": _b(0.04, 80.0, "generated: measured 8.5e-3, 90.3 dB"),
                 "t_en": _b(0.01, 75.0, "generated: measured 1.9e-3, 85.8 dB")},
        "fp32": {**BOUNDS["post-albert"]["fp32"], "pred_dur": _BY_TASK_DURATIONS,  # fp32 durations: 1e-4
                 "d": _b(3e-5, 100.0, f"{_FP32} (measured 4.5e-6; 6.7e-6 over 8 seeds)")}},
    "alignment": {
        "fp16": {"en": _b(0.008, 89.0, "generated: measured 1.9e-3, 99.5 dB"),
                 "asr": _b(1e-3, 77.0, "generated: measured 2.4e-4, 87.5 dB (86.8 dB over 8 seeds)"), "frames": _EXACT},
        "fp32": BOUNDS["alignment"]["fp32"]},
    "prosody": {
        "fp16": {"f0": _b(2.0, 66.0, "generated: measured 0.51 Hz, 81.2 dB (76.2 dB over 8 seeds)"),
                 "n": _b(0.08, 67.0, "generated: measured 2.1e-2, 77.7 dB")},
        "fp32": {"f0": _b(2e-3, 100.0, f"{_FP32} (measured 2.3e-4 Hz; 4.4e-4 over 8 seeds)", rtol=1e-5),
                 "n": _b(1e-4, 100.0, f"{_FP32} (measured 2.2e-5)")}},
    "noise-source": {
        "fp16": {"har_magnitude": _b(0.005, 84.0, "generated: measured 6.5e-4, 93.9 dB; 1.0e-3, 92.5 dB over 8 seeds"),
                 "har_phase": Bound(None, 0.0, 36.0, _PHASE_WHY + "; generated 46.3 dB, 44.0 over 8 seeds")},
        "fp32": {"har_magnitude": _b(0.003, 89.0, "generated: measured 4.7e-4, 103.2 dB; 7.2e-4, 99.0 dB over 8 seeds"),
                 "har_phase": Bound(None, 0.0, 36.0, _PHASE_WHY + "; generated 44.9 dB, 44.0 over 8 seeds")}},
    "vocoder": {"fp16": {"features": _b(3.0, 74.0, "generated: measured 0.14, 89.7 dB; 0.66, 83.8 dB over 8 seeds")},
                # measured 1.3e-4 to 4.1e-4 over 8 hypothesis seeds here; one case a fresh CI drew gave 1.07e-3
                # (features up to ~100, f0 up to 346 Hz, 91 valid frames): the bound was 1e-3, now ~5x that case
                "fp32": {"features": _b(5e-3, 100.0, f"{_FP32} (measured 1.9e-4; a CI-drawn case 1.07e-3)")}},
    "tail": {"fp16": {"audio": _b(1e-3, 86.0, "generated: measured 2.4e-4, 104.4 dB; 94.2 dB over 8 seeds")},
             "fp32": BOUNDS["tail"]["fp32"]},
}
for _bucket in ("bucket-5s", "bucket-15s"):
    RANDOM_BOUNDS[_bucket] = {
        "fp16": BOUNDS[_bucket]["fp16"],
        "fp32": {"audio": _b(0.1, 56.0, "generated: measured 1.4e-2, 67.9 dB"),
                 "audio_length_samples": _BY_TASK_DURATIONS, "pred_dur": _BY_TASK_DURATIONS}}
