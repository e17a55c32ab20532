"""The machinery behind the generated parity tests: streaming with carried state, bound checks, failure
messages, coverage of declarations, backend selection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conversions import registry
from conversions.parity import check_outputs, check_task, diagnose_fp16, failure_message, run_stream, worst_check
from conversions.registry import Bound
from conversions.models import silero_vad as silero


def test_run_stream_carries_each_state_output_into_the_next_call():
    """State outputs feed the next call's inputs; other inputs come from the call list; all calls recorded."""
    calls = [{"x": np.array([10.0])}, {"x": np.array([20.0])}, {"x": np.array([30.0])}]
    result = run_stream(lambda f: {"y": f["x"] + f["s"], "s_next": f["s"] + 1}, calls, {"s_next": "s"},
                        {"s": np.array([0.0])})
    assert result.outputs["y"].tolist() == [[10.0], [21.0], [32.0]]
    assert [f["s"].item() for f in result.feeds] == [0.0, 1.0, 2.0]
    assert result.outputs["s_next"].shape == (3, 1)


def test_run_stream_feeds_state_in_the_inputs_dtype():
    """An fp16 state output goes back as the declared float32 input, with its fp16 value."""
    out = run_stream(lambda f: {"s_next": (f["s"] + np.float32(1 / 3)).astype(np.float16)},
                     [{}, {}], {"s_next": "s"}, {"s": np.zeros(1, np.float32)})
    second = out.feeds[1]["s"]
    assert second.dtype == np.float32 and second[0] == np.float32(np.float16(1 / 3))


def _bound(atol=0.1, rtol=0.0, psnr=0.0):
    return Bound(atol, rtol, psnr, "test")


def test_check_outputs_passes_within_and_fails_beyond_the_bound():
    ref = {"y": np.linspace(0, 1, 20).reshape(4, 5)}
    near = {"y": ref["y"] + 0.05}
    far = {"y": ref["y"].copy()}
    far["y"][2, 3] += 0.3
    assert check_outputs(ref, near, {"y": _bound()})[0].passed
    failed = check_outputs(ref, far, {"y": _bound()})[0]
    assert not failed.passed and failed.worst_call == 2 and "EXCEEDED" in failed.describe()


def test_check_outputs_applies_the_psnr_floor_and_psnr_only_bounds():
    ref = {"y": np.ones((10, 4))}
    got = {"y": ref["y"] + 0.01}  # PSNR 40 dB
    assert not check_outputs(ref, got, {"y": _bound(atol=1.0, psnr=45.0)})[0].passed
    assert check_outputs(ref, got, {"y": _bound(atol=1.0, psnr=35.0)})[0].passed
    psnr_only = check_outputs(ref, got, {"y": Bound(None, 0.0, 35.0, "test")})[0]
    assert psnr_only.passed and "no elementwise bound" in psnr_only.describe()
    nan = {"y": np.where(np.eye(10, 4) > 0, np.nan, 1.0)}
    assert not check_outputs(ref, nan, {"y": Bound(None, 0.0, -np.inf, "test")})[0].passed


def test_check_outputs_fails_missing_outputs_and_shape_mismatches():
    ref = {"y": np.zeros((3, 2)), "z": np.zeros((3, 1))}
    checks = check_outputs(ref, {"y": np.zeros((3, 3))}, {"y": _bound(), "z": _bound()})
    assert [c.passed for c in checks] == [False, False]
    assert "shape (3, 3)" in checks[0].describe() and "(3, 2)" in checks[0].describe()
    assert "missing" in checks[1].describe()


def test_check_task_lists_metrics_below_their_minimum():
    assert check_task({"decision_agreement": 1.0, "segment_f1": 0.8}, {"decision_agreement": 0.99}) == []
    assert check_task({"decision_agreement": 0.9}, {"decision_agreement": 0.99, "segment_f1": 0.9}) == [
        "decision_agreement 0.9 < 0.99", "segment_f1 nan < 0.9"]


def test_failure_message_names_the_case_the_worst_output_and_the_diverging_ops(parity):
    """What a red CI log shows: model/component/backend, the worst output's figures vs its bound, and the first
    ops of the real fp16 program that depart from its fp32-storage run."""
    from conversions.parity import model_runner
    from conversions.runtime import load_model

    family = silero.FAMILY
    component = family.component("unified-36ms")
    package = parity.package(family, component, "fp16").path
    feeds = parity.clip_feeds(family, component)[:40]
    reference = parity.torch_clip_stream(family, component)
    got = run_stream(model_runner(load_model(package, backend="mil")), feeds, component.state,
                     parity.initial_state(family, component))
    truncated = {k: v[:40] for k, v in reference.outputs.items()}
    impossible = {name: dataclasses.replace(b, atol=1e-7) for name, b in component.bounds["fp16"].items()}
    checks = check_outputs(truncated, got.outputs, impossible)
    assert not any(c.passed for c in checks)
    worst = worst_check(checks)
    message = failure_message("silero-vad/unified-36ms/mil-fp16 (clip)", checks,
                              diagnosis=diagnose_fp16(package, got.feeds[worst.worst_call]))
    op_names = {op.name for op in load_model(package, backend="mil").function.operations}
    assert message.startswith("silero-vad/unified-36ms/mil-fp16 (clip)")
    assert f"worst output: {worst.name}: max_abs" in message and "atol 1e-07" in message
    assert "first ops where the fp16 program departs" in message
    diagnosis_lines = message.split("first ops where the fp16 program departs")[1].splitlines()[1:]
    assert any(line.split()[0] in op_names for line in diagnosis_lines if line.strip())


def test_missing_coverage_reports_untested_components_and_unbounded_outputs():
    family = silero.FAMILY
    all_ids = {f"{test}[{family.name}/{c.name}/{v.id}]" for c in family.components
               for v in registry.PORTABLE_VARIANTS for test in ("test_parity", "test_parity_random")}
    assert registry.missing_coverage(family, all_ids) == []

    stft = family.component("stft")
    unbounded = dataclasses.replace(stft, name="stft-unbounded", bounds={"fp16": {}, "fp32": stft.bounds["fp32"]})
    broken = dataclasses.replace(family, components=(*family.components, unbounded))
    problems = registry.missing_coverage(broken, all_ids)
    assert "silero-vad/stft-unbounded: no test_parity on mil-fp16" in problems
    assert "silero-vad/stft-unbounded: output 'magnitude' has no fp16 clip bound" in problems
    assert not any("silero-vad/stft:" in p for p in problems)


def test_backend_selection():
    assert [v.id for v in registry.select_variants("mil")] == ["mil-fp16", "mil-fp32"]
    assert [v.id for v in registry.select_variants("mil-fp16, coreml-all-fp16")] == ["mil-fp16", "coreml-all-fp16"]
    assert len(registry.select_variants(None)) == len(registry.VARIANTS)
    with pytest.raises(ValueError, match="unknown \\['gpu'\\].*mil"):
        registry.select_variants("gpu")


def test_a_wrong_index_on_a_generated_case_fails_the_per_case_decision_rule():
    """Generated cases of the joint+decision components are judged per case by the decision metric: an index the
    reference is confident about (top-2 margin above DECISION_MARGIN) that the converted component gets wrong fails,
    while a flip at a near-tie is tolerated (the integer outputs have no elementwise bound of their own)."""
    from conversions.models.parakeet_tdt.bounds import DECISION_MARGIN, DECISIONS_TASK

    reference = {"token_id": np.array([[[3], [7]]]), "duration": np.array([[[1], [2]]]),
                 "token_prob": np.zeros((1, 2, 1)),
                 "token_margin": np.array([[[5.0], [DECISION_MARGIN / 2]]]),
                 "duration_margin": np.array([[[5.0], [5.0]]])}
    floors = DECISIONS_TASK.per_case_minimums["fp16"]
    near_tie_flip = {**reference, "token_id": np.array([[[3], [8]]])}
    assert check_task(DECISIONS_TASK.measure(reference, near_tie_flip), floors) == []
    confident_flip = {**reference, "token_id": np.array([[[4], [7]]])}
    assert check_task(DECISIONS_TASK.measure(reference, confident_flip), floors) == ["confident_token_agreement 0 < 1"]
    wrong_duration = {**reference, "duration": np.array([[[1], [0]]])}
    assert "confident_duration_agreement 0.5 < 1" in check_task(DECISIONS_TASK.measure(reference, wrong_duration),
                                                                floors)
