"""Parakeet EOU: parity bounds per output (caches included) and program precision, and the decision task metric.
Each bound quotes the measurement behind it (tiny model, portable runtime, torch 2.13 CPU with one thread,
coremltools 9.0): the clip streamed chunk by chunk with caches carried on each side, and hypothesis cases."""

from __future__ import annotations

import numpy as np

from conversions.registry import Bound, TaskMetric


def _fp32(atol: float, measured: str) -> Bound:
    return Bound(atol, 1e-5, 90.0, f"fp32 program: summation order only ({measured})")


_EXACT = Bound(0.0, 0.0, 0.0, "integer length arithmetic: exact")
_DECISION = Bound(None, 0.0, float("-inf"), "an integer decision (an index): judged by the task metric, exact "
                                            "wherever the reference's top-2 margin exceeds DECISION_MARGIN")
_PASSTHROUGH_FP16 = Bound(0.02, 0.0, 60.0, "the mel frames passed through to the next chunk: fp16 storage of log-mel "
                                           "values (|x| <= 17, half the fp16 spacing there: 0.0078; measured 7.8e-3)")
_PASSTHROUGH_FP32 = Bound(0.0, 0.0, 0.0, "the mel frames passed through: exact in fp32 (measured 0)")
JOINT_LOGITS_FP16_ATOL = 0.025

# How they were set: each component streamed over the clip with its state carried on each side (the encoders over
# 65 / 33 / 9 chunks at 160 / 320 / 1280 ms, caches carried; 79 decoder steps; the joint over 32 full 320 ms chunks;
# the single-step joint at the clip's 131 streamed frames) and over hypothesis cases; the worst measured figure is
# quoted, the bound is about twice it, the PSNR floor about 8 dB below. Figures identical across the three chunk
# variants where not said otherwise.


def _encoder_bounds() -> dict:
    return {
        "fp16": {"encoded_output": Bound(0.015, 0.0, 63.0, "fp16 weights and activations through the conformer "
                                                            "blocks, caches carried: measured 6.3e-3, 71 dB"),
                 "encoded_length": _EXACT, "new_pre_cache": _PASSTHROUGH_FP16,
                 "new_cache_last_channel": Bound(0.015, 0.0, 63.0, "each layer's input frames kept for attention: "
                                                                   "measured 5.6e-3, 72 dB"),
                 "new_cache_last_time": Bound(0.015, 0.0, 68.0, "each layer's conv-module input frames: measured "
                                                                "6.2e-3, 78 dB"),
                 "new_cache_last_channel_len": _EXACT},
        "fp32": {"encoded_output": _fp32(1e-5, "measured 1.4e-6 with caches carried"), "encoded_length": _EXACT,
                 "new_pre_cache": _PASSTHROUGH_FP32, "new_cache_last_channel": _fp32(1e-5, "measured 9.5e-7"),
                 "new_cache_last_time": _fp32(1e-5, "measured 1.4e-6"), "new_cache_last_channel_len": _EXACT},
    }


BOUNDS = {
    "preprocessor": {
        "fp16": {"mel": Bound(0.02, 0.0, 72.0, "front end fp32 (front_end_ops), the output stored fp16: unnormalised "
                                               "log-mel up to |17| (fp16 half-spacing 0.0078); measured 8.5e-3, 81 dB"),
                 "mel_length": _EXACT},
        "fp32": {"mel": _fp32(5e-3, "DFT-as-conv vs FFT rounding in the log of quiet frames: measured 2.1e-3, "
                                    "113 dB"), "mel_length": _EXACT}},
    **{f"encoder-{v}": _encoder_bounds() for v in ("160ms", "320ms", "1280ms")},
    "decoder": {
        "fp16": {"decoder": Bound(4e-3, 0.0, 67.0, "79 steps: measured 1.9e-3, 76 dB"),
                 "h_out": Bound(4e-3, 0.0, 67.0, "measured 1.9e-3, 76 dB"),
                 "c_out": Bound(0.015, 0.0, 70.0, "the unbounded cell state: measured 5.6e-3, 79 dB")},
        "fp32": {"decoder": _fp32(1e-5, "7.2e-7"), "h_out": _fp32(1e-5, "7.2e-7"), "c_out": _fp32(1e-5, "1.9e-6")}},
    "joint": {
        "fp16": {"logits": Bound(JOINT_LOGITS_FP16_ATOL, 0.0, 68.0, "32 chunks x 4 frames: measured 1.16e-2 (fp16 "
                                                                    "spacing of the logits), 77 dB")},
        "fp32": {"logits": _fp32(1e-5, "measured 0")}},
    "joint-decision-step": {
        "fp16": {"token_id": _DECISION,
                 "top_k_ids": Bound(None, 0.0, float("-inf"), "ranks 2-5 swap where their logits tie within the "
                                                              "fp16 error (measured on the clip); top_k_logits bound "
                                                              "the values, the task metric the decision"),
                 "token_prob": Bound(5e-3, 0.0, 60.0, "131 frames: measured 2.1e-3, 69 dB"),
                 "top_k_logits": Bound(JOINT_LOGITS_FP16_ATOL, 0.0, 68.0, "sorted logits: measured 1.07e-2, 77 dB")},
        "fp32": {"token_id": _DECISION, "top_k_ids": _DECISION, "token_prob": _fp32(1e-6, "measured 0"),
                 "top_k_logits": _fp32(1e-5, "measured 0")}},
}
# Over a chunk's frames the same softmax and top-k of the same logits (measured on the clip's 32 full chunks:
# token_prob 2.3e-3 / 68.5 dB, top_k_logits 9.1e-3 / 76.9 dB; decisions 100% agreement).
BOUNDS["joint-decision"] = BOUNDS["joint-decision-step"]

RANDOM_BOUNDS = {name: {p: dict(outputs) for p, outputs in per_precision.items()} for name, per_precision in BOUNDS.items()}
# Generated audio includes pure tones, whose leakage-only mel bins differ between coremltools' DFT-as-conv and
# torch's FFT after the log (as in the TDT family; here unnormalised): measured up to 0.17 in the fp16 program (fp32
# front end) and 8e-3 in fp32 on a 323-sample tone. No stable elementwise figure: PSNR only.
_TONES = "PSNR only: pure tones' leakage-only mel bins (DFT-as-conv vs FFT, then log): measured up to 0.17, 75 dB"
RANDOM_BOUNDS["preprocessor"]["fp16"]["mel"] = Bound(None, 0.0, 45.0, _TONES)
RANDOM_BOUNDS["preprocessor"]["fp32"]["mel"] = Bound(None, 0.0, 45.0, _TONES)

# ---- task metric: the decisions -----------------------------------------------------------------------------
# A decision may flip only where the reference's top-2 logit margin is within the numerical error of the logits
# (both can move by the joint's fp16 bound, in opposite directions).
DECISION_MARGIN = 2 * JOINT_LOGITS_FP16_ATOL


def _tokens(outputs: dict) -> np.ndarray:
    if "logits" in outputs:
        return np.asarray(outputs["logits"], np.float64).argmax(-1)
    return np.asarray(outputs["token_id"])


def decision_task_metric(reference: dict, candidate: dict) -> dict:
    """Token agreement (blank and ``<EOU>`` included) with the torch reference, overall and where the reference's
    top-2 margin exceeds :data:`DECISION_MARGIN` (``confident_*``: must be exact)."""
    ref, got = _tokens(reference), _tokens(candidate)
    margin = np.asarray(reference["margin"]).reshape(ref.shape)
    confident = margin > DECISION_MARGIN
    return {"token_agreement": float((ref == got).mean()),
            "confident_token_agreement": float((ref == got)[confident].mean()) if confident.any() else 1.0,
            "confident_token_fraction": float(confident.mean())}


DECISIONS_TASK = TaskMetric(
    name="decisions",
    compute=decision_task_metric,
    minimums={"fp16": {"confident_token_agreement": 1.0, "token_agreement": 0.99},
              "fp32": {"confident_token_agreement": 1.0, "token_agreement": 1.0}},
    per_case_minimums={"fp16": {"confident_token_agreement": 1.0}, "fp32": {"confident_token_agreement": 1.0}},
    slack={"token_agreement": 0.01, "confident_token_agreement": 0.005},
    informational=("confident_token_fraction",),
)
