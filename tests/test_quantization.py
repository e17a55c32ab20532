"""The quantization sweep, generated from the declarations: every model family x component x compression
strategy (``conversions/quantize.py``) x backend variant running the fp16 program.

Each test compresses the component's fp16 package (cached like exports), streams the family's clip through it
(state carried) and scores it against the uncompressed fp16 package on the same backend and against the torch
module: quality (1 - ||ref - x|| / ||ref||), PSNR, the task metric, weight bytes and compression ratio. The
figures are pinned in ``tests/__snapshots__/<backend family>/<family>.json`` (syrupy, with slack): a change that
makes a variant worse than its baseline by more than the slack fails; improvements pass and are listed in the
terminal summary; ``pytest --snapshot-update`` rewrites the baselines. ``pytest -k "silero and palettize"``.
"""

from __future__ import annotations

import time
from pathlib import Path

from conversions.engine import quantization_figures, weight_bytes
from conversions.parity import pinned_quantization_metrics
from conversions.pytest_plugin import skip_unless_runnable
from conversions.quantize import StrategyNotApplicable
from conversions.report import QUANTIZATION_TEST, write_record
from conversions.snapshots import metrics_snapshot


def test_quantization(quantization_case, parity, snapshot, request):
    case, strategy_name = quantization_case
    skip_unless_runnable(case.variant)
    family, component = case.family, case.component
    started = time.perf_counter()
    try:
        package, recipe, base, strategy, exclude = parity.quantized(family, component, strategy_name)
    except StrategyNotApplicable as e:
        write_record(parity.records_dir, {
            "test_id": request.node.nodeid, "model": family.name, "component": component.name,
            "test": QUANTIZATION_TEST, "strategy": strategy_name, "variant": case.variant.id,
            "backend": case.variant.backend, "match": False, "failure": str(e),
            "duration_s": round(time.perf_counter() - started, 3)})
        raise

    figures = quantization_figures(parity, case, package.path, base.path)
    outputs, task, size, base_size = figures.outputs, figures.task, figures.weight_bytes, figures.baseline_weight_bytes
    primary = figures.primary

    pinned = pinned_quantization_metrics(outputs, size, task, component.task)

    failure = None
    try:
        assert metrics_snapshot(snapshot, family=family.name, backend_family=case.variant.baseline_family) == pinned
    except AssertionError as e:
        failure = str(e) or "worse than its snapshot baseline"
        raise
    finally:
        write_record(parity.records_dir, {
            "test_id": request.node.nodeid, "model": family.name, "component": component.name,
            "test": QUANTIZATION_TEST, "strategy": strategy_name, "description": strategy.description,
            "variant": case.variant.id, "backend": case.variant.backend, "compute_units": case.variant.compute_units,
            "target": strategy.min_target, "config": strategy.config(exclude), "exclude_ops": list(exclude),
            "recipe": recipe, "package": str(package.path), "size_bytes": package.size_bytes,
            "weight_bytes": size, "baseline_weight_bytes": base_size,
            "compression_ratio": base_size / size if size else None,
            "outputs": outputs, "primary_output": primary,
            "primary_quality_vs_torch": outputs[primary]["quality_vs_torch"],
            "baseline_quality_vs_torch": figures.baseline_quality_vs_torch,
            "task_metrics": task, "baseline_task_metrics": figures.baseline_task,
            "match": failure is None, "failure": failure, "duration_s": round(time.perf_counter() - started, 3),
        })


def test_quantized_package_is_compressed_and_keeps_exact_ops(compression_case, parity):
    """Every strategy really compresses (no silent fallback to the fp16 package), and the ops the family keeps
    exact (Silero's STFT basis) are not fed by any decompression op."""
    from conversions.runtime import load_model

    family, component, strategy_name = compression_case
    package, _, base, _, exclude = parity.quantized(family, component, strategy_name)
    label = f"{family.name}/{component.name}/{strategy_name}"
    ops = load_model(package.path, backend="mil").function.operations
    constexpr_outputs = {o.name for op in ops if op.op_type.startswith("constexpr_") for o in op.outputs}
    assert constexpr_outputs, f"{label}: no constexpr_* op: nothing was compressed"
    assert weight_bytes(package.path) < weight_bytes(base.path), f"{label}: weights did not shrink"
    for op in ops:
        if op.name in exclude:
            fed = [b.var for bindings in op.inputs.values() for b in bindings if b.var in constexpr_outputs]
            assert not fed, f"{label}: {op.name} must stay exact but reads {fed}"


GATE_PROJECT_TEST = '''
import os

import numpy as np
from conversions import metrics, quantize
from conversions.parity import model_runner, run_stream
from conversions.runtime import load_model
from conversions.snapshots import Metric, metrics_snapshot
from conversions.audio import load_speech_clip
from conversions.models.silero_vad import FAMILY, converters, modules

import pytest

BITS = int(os.environ["GATE_BITS"])


@pytest.mark.parametrize("case", ["silero-vad/unified-36ms/palettize/mil-fp16"])
def test_quantization(snapshot, case):
    model = modules.build_clean_model()
    component = FAMILY.component("unified-36ms")
    base = component.convert(model, "fp16")
    exclude = converters.stft_basis_ops(base)
    step = quantize.Step("palettize_weights", "OpPalettizerConfig",
                         (("mode", "kmeans"), ("nbits", BITS), ("granularity", "per_tensor")))
    compressed = quantize.Strategy(f"palettize-{BITS}bit", "gate demo", "iOS17", (step,)).apply(base, exclude)
    feeds = component.clip_feeds(model, load_speech_clip())[:120]

    def probability(m):
        out = run_stream(model_runner(load_model(m, backend="mil")), feeds, component.state, component.initial_state(model))
        return out.outputs["probability"]

    q = metrics.quality(probability(base), probability(compressed))
    assert metrics_snapshot(snapshot, family="silero-vad", backend_family="mil") == {
        "probability.quality_vs_baseline": Metric(q, "higher", slack=0.002)}
'''


def test_baseline_gate_fails_a_degraded_variant(tmp_path):
    """The gate bites: a 2-bit palettization of the real unified 36 ms model, scored against the baseline its 8-bit
    version pinned, fails, naming model, test case (component, variant), metric, baseline and new value; and
    --snapshot-update accepts the new figure."""
    import json
    import os
    import subprocess
    import sys

    from conversions.testing import clean_subprocess_env

    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_gate.py").write_text(GATE_PROJECT_TEST)
    repo = Path(__file__).resolve().parents[1]
    env = clean_subprocess_env({"PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
                                "TQDM_DISABLE": "1"})

    def run(bits: int, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                               "--snapshot-ignore-file-extensions=json", "-W", "ignore", *args, "tests/test_gate.py"],
                              cwd=tmp_path, env={**env, "GATE_BITS": str(bits)}, capture_output=True, text=True,
                              timeout=600)

    created = run(8, "--snapshot-update")
    assert created.returncode == 0, created.stdout + created.stderr
    baseline_file = tests / "__snapshots__" / "mil" / "silero-vad.json"
    entry = "test_quantization[silero-vad/unified-36ms/palettize/mil-fp16]"
    baseline = json.loads(baseline_file.read_text())[entry]["probability.quality_vs_baseline"]["value"]
    assert baseline > 0.99

    degraded = run(2)
    assert degraded.returncode == 1, degraded.stdout + degraded.stderr
    line = next((ln for ln in degraded.stdout.splitlines() if "quality_vs_baseline fell" in ln), None)
    assert line is not None, degraded.stdout
    assert "silero-vad" in line and entry in line and f"fell {baseline:.6g} -> " in line, line
    new_value = float(line.split("->")[1].split()[0])
    assert new_value < baseline - 0.002, line

    assert run(2, "--snapshot-update").returncode == 0
    assert run(2).returncode == 0
