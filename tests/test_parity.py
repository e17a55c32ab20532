"""The parity suite, generated from the model family declarations (``conversions/registry.py``).

For every declared (model family, component, variant):

- ``test_parity``: the converted component and its torch module, streamed call by call over the family's real
  clip (each side carrying its own state), every output within its declared bound, task metrics above theirs,
  and no figure worse than its snapshot baseline (``tests/__snapshots__/<backend family>/<family>.json``) beyond
  its slack;
- ``test_parity_random``: the same on hypothesis-generated inputs (elementwise bounds per case, PSNR over all
  cases);

and per component or family: the torch reference against the upstream implementation, the metadata recorded in
each exported package, and the coverage of every declaration. ``pytest -k silero`` selects one family,
``-k unified-36ms`` one component, ``--backend mil`` one backend. Adding a model family needs no test here.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from hypothesis import given

from conversions import registry
from conversions.engine import clip_parity, diagnose
from conversions.export import DEFAULT_TARGET, TRACE_COMPUTE_UNITS, package_metadata
from conversions.parity import (check_outputs, check_task, failure_message, model_runner,
                                pinned_parity_metrics, torch_runner)
from conversions.pytest_plugin import GENERATED_IDS, selected_variants, skip_unless_runnable
from conversions.report import write_record
from conversions.snapshots import metrics_snapshot


def _at_most(examples: int | None):
    """hypothesis settings capping the profile's ``max_examples`` at a component's ``random_examples``."""
    from hypothesis import settings

    if examples is None:
        return lambda test: test
    return settings(max_examples=min(examples, settings().max_examples))


def test_parity(parity_case, parity, request, snapshot):
    """The component streamed over the real clip on one backend vs torch."""
    skip_unless_runnable(parity_case.variant)
    family, component, variant = parity_case.family, parity_case.component, parity_case.variant
    started = time.perf_counter()
    model = parity.model(parity_case)
    result = clip_parity(parity, family, component, variant, model, parity_case.id)
    checks, task, task_bounds, failure = result.checks, result.task, result.task_bounds, result.failure
    series = component.plot(result.reference, result.outputs) if component.plot is not None else None
    waveforms = {name: (result.reference[name], result.outputs[name]) for name in component.audio_outputs}
    parity.record(request, parity_case, "clip", checks, calls=result.calls, task=task, task_bounds=task_bounds,
                  failure=failure, started=started, series=series.as_dict() if series is not None else None,
                  waveforms=waveforms)
    assert failure is None, failure
    # Inside the tolerance is not enough: no worse than the pinned baseline (tests/__snapshots__/) beyond its slack.
    assert metrics_snapshot(snapshot, family=family.name, backend_family=variant.baseline_family) == \
        pinned_parity_metrics(checks, task, component.task)


def test_parity_random(parity_case, parity, request):
    """The component on hypothesis-generated inputs vs torch: every case within the elementwise bounds and, where
    the task metric declares per-case minimums (decisions the reference is confident about), within those too (a
    failing case is shrunk and reported with its trace diagnosis); the PSNR of all cases together above the floor."""
    skip_unless_runnable(parity_case.variant)
    family, component, variant = parity_case.family, parity_case.component, parity_case.variant
    started = time.perf_counter()
    reference_model, _ = parity.reference(family)
    run_torch = torch_runner(component.reference(reference_model), component.inputs, component.reference_outputs)
    run_model = model_runner(parity.model(parity_case))
    bounds = component.random_bounds[variant.program_precision]
    per_case_bounds = {name: dataclasses.replace(b, psnr_min_db=float("-inf")) for name, b in bounds.items()}
    per_case_task = (dict(component.task.per_case_minimums.get(variant.program_precision, {}))
                     if component.task is not None else {})
    seen: list[tuple[dict, dict]] = []

    @given(feeds=component.random_inputs(reference_model))
    @_at_most(component.random_examples)
    def case_within_bounds(feeds):
        expected, got = run_torch(feeds), run_model(feeds)
        seen.append((expected, got))
        checks = check_outputs({k: v[None] for k, v in expected.items()}, {k: v[None] for k, v in got.items()},
                               per_case_bounds)
        task_failures = []
        if per_case_task:
            task_failures = check_task(component.task.measure({k: v[None] for k, v in expected.items()},
                                                              {k: v[None] for k, v in got.items()}), per_case_task)
        if task_failures or not all(c.passed for c in checks):
            inputs = ", ".join(f"{k} {v.shape} max|x| {np.abs(v).max():.3g}" for k, v in feeds.items())
            raise AssertionError(failure_message(f"{parity_case.id} (one generated case: {inputs})", checks,
                                                 task_failures,
                                                 diagnosis=diagnose(parity, family, component, variant, feeds)))

    failure = None
    try:
        case_within_bounds()
    except AssertionError as e:
        failure = str(e)
        raise
    finally:
        stacked_ref = {k: _stack([e[k] for e, _ in seen]) for k in component.outputs} if seen else {}
        stacked_got = {k: _stack([g[k] for _, g in seen]) for k in component.outputs} if seen else {}
        checks = check_outputs(stacked_ref, stacked_got, bounds) if seen else []
        if failure is None and not all(c.passed for c in checks):
            failure = failure_message(f"{parity_case.id} ({len(seen)} generated cases together)", checks)
        parity.record(request, parity_case, "random", checks, calls=len(seen), failure=failure, started=started,
                      task_bounds=per_case_task)
    assert seen, "hypothesis generated no case"
    assert failure is None, failure


def test_pipeline(pipeline_case, parity, request):
    """An end-to-end check the family declares (e.g. Parakeet's transcript): the host code driving the converted
    components on one variant (or the torch components) gives the upstream library's own result."""
    family, pipeline, variant = pipeline_case.family, pipeline_case.pipeline, pipeline_case.variant
    if variant is not None:
        skip_unless_runnable(variant)
    started = time.perf_counter()
    model = parity.reference(family)[0]
    components = None
    if variant is not None:
        components = {name: variant.load(parity.package(family, family.component(name), variant.program_precision).path)
                      for name in pipeline.components}
    result = pipeline.run(model, parity.clip(family), components)
    write_record(parity.records_dir, {
        "test_id": request.node.nodeid, "model": family.name, "component": pipeline.name, "test": "pipeline",
        "variant": variant.id if variant else "torch", "backend": variant.backend if variant else "torch",
        "compute_units": variant.compute_units if variant else None,
        "precision": variant.program_precision if variant else "fp32", "summary": result.summary,
        "figures": dict(result.figures), "match": bool(result.passed), "failure": result.failure,
        "series": result.series.as_dict() if result.series is not None else None,
        "duration_s": round(time.perf_counter() - started, 3)})
    assert result.passed, f"{pipeline_case.id}: {result.failure or result.summary}"


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """The generated cases of one output as ``[cases, ...]``; cases of different shapes (a flexible input, e.g. the
    Parakeet preprocessor's audio length) as one row of all their elements (each case's shape was checked alone)."""
    arrays = [np.asarray(a) for a in arrays]
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    return np.concatenate([a.reshape(-1) for a in arrays])[None]


def test_reference_matches_upstream(parity_upstream, parity):
    """Our torch module (what every converted component is compared with) vs the upstream implementation."""
    family, component = parity_upstream
    ours, upstream = component.upstream(parity.reference(family)[0], parity.clip(family))
    diff = np.abs(np.asarray(ours, np.float64) - np.asarray(upstream, np.float64))
    assert len(diff) >= 10, f"{family.name}/{component.name}: only {len(diff)} upstream values compared"
    worst = int(diff.argmax())
    assert diff.max() <= component.upstream_atol, (
        f"{family.name}/{component.name}: torch reference vs upstream max |diff| {diff.max():.3g} at call {worst} "
        f"(ours {ours[worst]:.6f}, upstream {upstream[worst]:.6f}) > {component.upstream_atol:g} "
        f"({component.upstream_why})")


def test_export_metadata(parity_export, parity):
    """Each exported package says what it is, and what it says matches the program it holds."""
    from conversions.inspect_model import summarize
    from conversions.runtime import load_model

    family, component, precision = parity_export
    package = parity.package(family, component, precision)
    recorded = package_metadata(package.path)
    summary = summarize(load_model(package.path, backend="mil"))
    assert recorded["model"] == family.name and recorded["component"] == component.name
    assert recorded["requested_precision"] == precision
    expected = component.program_precision.get(precision, precision)
    assert recorded["compute_precision"] == summary.precision == expected, (recorded, summary.precision, expected)
    assert recorded["deployment_target"] == summary.deployment_target == DEFAULT_TARGET
    assert recorded["traced_compute_units"] == TRACE_COMPUTE_UNITS
    assert [s.name for s in load_model(package.path, backend="mil").inputs] == list(component.inputs)
    assert [s.name for s in load_model(package.path, backend="mil").outputs] == list(component.outputs)


def test_every_declared_component_is_covered(parity_family, pytestconfig):
    """Fails when a declared component would go unchecked: no parity tests on a portable variant, no
    quantization test of a strategy, an output without a bound, a task metric without minimums (the coverage test
    of optimum's exporter suite). Run it with the whole test suite: it sees what this session collected."""
    from conversions.quantize import STRATEGIES

    variants = [v for v in registry.PORTABLE_VARIANTS if v in selected_variants(pytestconfig)]
    generated = pytestconfig.stash[GENERATED_IDS]
    # The sweep's and the benchmarks' coverage is checked when their module is part of the session (not under
    # `pytest tests/test_parity.py`).
    sweep_collected = any(i.startswith("test_quantization[") for i in generated)
    benchmarks_collected = any(i.startswith("test_benchmark_latency[") for i in generated)
    problems = registry.missing_coverage(parity_family, generated, variants,
                                         strategies=tuple(STRATEGIES) if sweep_collected else (),
                                         benchmarks=benchmarks_collected)
    assert not problems, "\n".join(problems)
