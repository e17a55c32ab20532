"""Running a converted component and its torch reference on the same inputs, and judging the difference.

- :func:`run_stream` feeds a component call by call, carrying its state outputs into the next call's inputs
  (each side carries its *own* state, so state errors accumulate as they would in an app);
- :func:`check_outputs` measures every output against its declared :class:`~conversions.registry.Bound`;
- :func:`failure_message` writes what a red CI log must say: model, component, backend, the worst output, its
  figures vs the bounds, and :func:`diagnose_fp16`'s list of the first ops where the fp16 program departs from
  the same program run with fp32 storage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import metrics
from .registry import Bound

Feeds = dict[str, np.ndarray]

# ---- what the snapshot baselines pin, and how (the rule, written once) -------------------------------------------
# A baseline (tests/__snapshots__/) must hold on any CPU that runs the same code on the same model: it pins signal,
# never rounding noise. torch picks other kernels on other CPUs (ATEN_CPU_CAPABILITY=default / avx2 / avx512 here),
# which changes summation order, hence the last bits of fp32 results and, after fp16 rounding, sometimes one fp16
# ulp. So:
#
# 1. PSNR is pinned at most PSNR_PIN_CAP_DB. Above it (max|ref| / rmse > 1e5) the error is fp32 rounding noise
#    whose exact figure depends on the kernels: measured 146.8 vs 144.5 dB for Silero's fp32 256 ms probability
#    under this machine's AVX512 vs default kernels. A real regression of an fp32 program drops it far below 100 dB.
# 2. max_abs (of outputs with an elementwise bound) is pinned at no less than MAX_ABS_PIN_FLOOR_FRACTION of its
#    tolerance: an error that small is far inside its bound and its exact value is the kernels' (fp32 summation
#    order: 1.7e-6 vs 3e-6 on a 1e-5 tolerance). It may grow by MAX_ABS_SLACK_FRACTION of its tolerance beyond
#    the pinned value before the gate fails, even while it is still inside the tolerance.
# 3. Qualities (1 - relative L2 error) may fall by QUALITY_SLACK; PSNR by PSNR_SLACK_DB; task figures by the slack
#    their TaskMetric declares (every figure a task metric returns is pinned or declared informational).
# 4. Sizes (weight bytes) may not grow at all: they are integers decided by the strategy, not by arithmetic.
# 5. The default models are bit-identical on every machine (weights shipped in a package or committed, never
#    fitted at test time), so the figures describe the same model everywhere.
#
# Measured when the rule was set: the whole CI profile passes under ATEN_CPU_CAPABILITY=default, =avx2 and the
# native (AVX512) kernels, and with --torch-threads 2; tests/test_cpu_independence.py re-runs a representative
# slice under the default kernels and under 2 threads on every CI run.
MAX_ABS_SLACK_FRACTION = 0.1
MAX_ABS_PIN_FLOOR_FRACTION = 0.25
PSNR_SLACK_DB = 1.0
PSNR_PIN_CAP_DB = 100.0
QUALITY_SLACK = 0.002


def pinned_max_abs(value: float, tolerance: float) -> float:
    """What a baseline stores for an error of ``value`` under a tolerance (rule 2)."""
    return max(float(value), MAX_ABS_PIN_FLOOR_FRACTION * float(tolerance))


def pinned_psnr(value: float) -> float:
    """What a baseline stores for a PSNR of ``value`` dB (rule 1)."""
    return min(float(value), PSNR_PIN_CAP_DB)


Runner = Callable[[Feeds], Feeds]


def torch_runner(module: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str]) -> Runner:
    """``feeds -> outputs`` for a torch module called with the inputs in ``input_names`` order."""
    module = module.eval()

    def run(feeds: Feeds) -> Feeds:
        with torch.no_grad():
            out = module(*(torch.from_numpy(np.asarray(feeds[n])) for n in input_names))
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        if len(out) != len(output_names):
            raise ValueError(f"torch reference returned {len(out)} outputs, the component declares {list(output_names)}")
        return {n: o.detach().numpy() for n, o in zip(output_names, out)}

    return run


def model_runner(model) -> Runner:
    """``feeds -> outputs`` for a model loaded with :func:`conversions.runtime.load_model` (any backend)."""
    return lambda feeds: {k: np.asarray(v) for k, v in model.predict(feeds).items()}


@dataclass
class StreamResult:
    outputs: dict[str, np.ndarray]  # output name -> [calls, *output shape]
    feeds: list[Feeds]  # the complete inputs of each call, state included


def run_stream(run: Runner, call_feeds: Sequence[Feeds], state: Mapping[str, str] | None = None,
               initial_state: Feeds | None = None) -> StreamResult:
    """Call ``run`` once per entry of ``call_feeds``; ``state`` maps an output to the input it feeds on the
    next call (starting from ``initial_state``). Outputs are fed back as returned (an fp16 output stays
    fp16-valued). Without state, the calls are independent cases."""
    state = dict(state or {})
    carried = dict(initial_state or {})
    per_output: dict[str, list[np.ndarray]] = {}
    complete = []
    for feeds in call_feeds:
        feeds = {**feeds, **carried}
        complete.append(feeds)
        out = run(feeds)
        for name, value in out.items():
            per_output.setdefault(name, []).append(np.asarray(value))
        carried = {state[name]: np.asarray(out[name], dtype=np.asarray(feeds[state[name]]).dtype) for name in state}
    return StreamResult({k: np.stack(v) for k, v in per_output.items()}, complete)


@dataclass
class OutputCheck:
    name: str
    metrics: dict
    bound: Bound
    passed: bool
    worst_call: int | None  # the call holding the element furthest past the bound (or the largest error)
    problem: str | None = None  # shape/dtype/missing-output problems, which fail regardless of numbers

    def describe(self) -> str:
        if self.problem:
            return f"{self.name}: {self.problem}"
        m, b = self.metrics, self.bound
        if b.atol is None:
            elementwise = "no elementwise bound" if np.isfinite(m["max_abs"]) else "NOT FINITE"
        else:
            elementwise = f"atol {b.atol:g} + rtol {b.rtol:g}*|ref|: {'ok' if m['allclose'] else 'EXCEEDED'}"
        psnr = f"floor {b.psnr_min_db:g} dB: {'ok' if m['psnr_db'] >= b.psnr_min_db else 'BELOW'}"
        return (f"{self.name}: max_abs {m['max_abs']:.3g} ({elementwise}), PSNR {m['psnr_db']:.1f} dB ({psnr}), "
                f"max_rel {m['max_rel']:.3g}, "
                f"quality {m['quality']:.6f}, worst at call {self.worst_call}")


def check_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                  bounds: Mapping[str, Bound]) -> list[OutputCheck]:
    """One :class:`OutputCheck` per bounded output: passes when every element is within ``atol + rtol*|ref|``
    and the PSNR over the whole output reaches the floor. A missing output or a shape mismatch fails."""
    checks = []
    for name, bound in bounds.items():
        if name not in candidate:
            checks.append(OutputCheck(name, {}, bound, False, None, f"missing from the converted model's outputs "
                                                                  f"(it returned {sorted(candidate)})"))
            continue
        ref, got = np.asarray(reference[name]), np.asarray(candidate[name])
        if ref.shape != got.shape:
            checks.append(OutputCheck(name, {}, bound, False, None,
                                      f"shape {got.shape} (calls x output) vs the reference's {ref.shape}"))
            continue
        elementwise = bound.atol is not None
        atol, rtol = (bound.atol, bound.rtol) if elementwise else (0.0, 0.0)
        m = metrics.tensor_metrics(ref, got, atol=atol, rtol=rtol)
        worst = metrics.worst_index(ref, got, atol=atol, rtol=rtol)
        worst_call = int(worst[0]) if len(worst) else 0  # worst is an index tuple; outputs are [calls, ...]
        within = bool(m["allclose"]) if elementwise else bool(np.isfinite(m["max_abs"]))
        passed = within and m["psnr_db"] >= bound.psnr_min_db
        checks.append(OutputCheck(name, m, bound, passed, worst_call))
    return checks


def check_task(task: Mapping[str, float], minimums: Mapping[str, float]) -> list[str]:
    """Task metrics below their declared minimum, as readable lines."""
    return [f"{name} {task.get(name, float('nan')):.4g} < {minimum:g}" for name, minimum in minimums.items()
            if not task.get(name, float("-inf")) >= minimum]


def worst_check(checks: Sequence[OutputCheck]) -> OutputCheck:
    """The failing output furthest past its bound (or the first with a problem)."""
    failing = [c for c in checks if not c.passed] or list(checks)
    for c in failing:
        if c.problem:
            return c
    return max(failing, key=lambda c: (c.bound.atol is not None, c.metrics["max_abs"] / max(c.bound.atol or 0, 1e-30)))


def diagnose_fp16(package, feeds: Feeds, limit: int = 5) -> str:
    """Where the fp16 program departs from itself run with fp32 storage, on one call's inputs: the first ops
    whose own error jumps, and where inf/NaN first appear (:func:`conversions.runtime.mil.compare_traces`)."""
    from .runtime import load_model
    from .runtime.mil import compare_traces

    fp32_model = load_model(package, backend="mil", precision="fp32")
    needed = 2 * trace_bytes(fp32_model)
    if needed > DIAGNOSIS_MEMORY_BYTES:
        return (f"(trace diagnosis skipped: two traces of this program hold every intermediate, ~{needed / 1e9:.1f} GB "
                f"> {DIAGNOSIS_MEMORY_BYTES / 1e9:.0f} GB; diagnose a smaller component of the same model)")
    fp32 = fp32_model.trace(feeds)
    fp16 = load_model(package, backend="mil", precision="fp16").trace(feeds)
    return compare_traces(fp32, fp16).summary(limit)


# A trace keeps every intermediate value: the diagnosis runs only where two traces fit in this much memory (a
# 15 s Kokoro bucket's would take tens of GB; its stages are diagnosed instead).
DIAGNOSIS_MEMORY_BYTES = 4e9


def trace_bytes(model) -> int:
    """Bytes of every op output of a loaded portable-runtime program, as float32 (the size of one trace)."""
    total = 0
    for op in model.function.operations:
        for out in op.outputs:
            shape = getattr(out.type, "shape", None) or ()
            if all(isinstance(d, (int, np.integer)) for d in shape):
                total += 4 * int(np.prod(shape, dtype=np.int64))
    return total


def failure_message(label: str, checks: Sequence[OutputCheck], task_failures: Sequence[str] = (),
                    diagnosis: str | None = None) -> str:
    """``label`` (model/component/backend) and the worst output first, then every output, task metrics and the
    trace diagnosis."""
    lines = [f"{label}: converted outputs differ from torch beyond the declared bounds"]
    if any(not c.passed for c in checks):
        lines.append(f"worst output: {worst_check(checks).describe()}")
    lines += ["all outputs:"] + [f"  {'PASS' if c.passed else 'FAIL'} {c.describe()}" for c in checks]
    if task_failures:
        lines += ["task metrics below their minimum:"] + [f"  {t}" for t in task_failures]
    if diagnosis:
        lines += ["first ops where the fp16 program departs from its fp32-storage run (at the worst call):",
                  *(f"  {line}" for line in diagnosis.splitlines())]
    return "\n".join(lines)


def _pinned_task(task: Mapping[str, float], task_metric) -> dict:
    """The task figures a :class:`~conversions.registry.TaskMetric` pins, with its slack (rule 3)."""
    from .snapshots import Metric

    if task_metric is None:
        return {}
    return {f"task.{name}": Metric(value, "higher", slack=slack)
            for name, (value, slack) in task_metric.pinned(task).items()}


def pinned_parity_metrics(checks: Sequence[OutputCheck], task: Mapping[str, float], task_metric=None) -> dict:
    """The clip figures a parity test pins in its snapshot baseline (:mod:`conversions.snapshots`), per the rule
    above; ``task_metric`` (a :class:`~conversions.registry.TaskMetric`) says which task figures and their slack."""
    from .snapshots import Metric

    pinned = {}
    for c in checks:
        if c.problem:
            continue
        # An output without an elementwise bound has no stable worst element (or is an index judged by the task
        # metric): its max_abs is not pinned; nor is the PSNR of one without a PSNR floor (decisions).
        if c.bound.atol is not None:
            pinned[f"{c.name}.max_abs"] = Metric(pinned_max_abs(c.metrics["max_abs"], c.bound.atol), "lower",
                                                 slack=MAX_ABS_SLACK_FRACTION * c.bound.atol)
        if np.isfinite(c.bound.psnr_min_db):
            pinned[f"{c.name}.psnr_db"] = Metric(pinned_psnr(c.metrics["psnr_db"]), "higher", slack=PSNR_SLACK_DB)
    return {**pinned, **_pinned_task(task, task_metric)}


def pinned_quantization_metrics(outputs: Mapping[str, Mapping[str, float]], weight_bytes: int,
                                task: Mapping[str, float], task_metric=None) -> dict:
    """The figures a quantization test pins, per the rule above: per output quality vs torch and vs the fp16
    package and PSNR vs torch; task figures; weight bytes (which may not grow)."""
    from .snapshots import Metric

    pinned = {"weight_bytes": Metric(int(weight_bytes), "lower", slack=0)}
    for name, figures in outputs.items():
        pinned[f"{name}.quality_vs_torch"] = Metric(figures["quality_vs_torch"], "higher", slack=QUALITY_SLACK)
        pinned[f"{name}.quality_vs_baseline"] = Metric(figures["quality_vs_baseline"], "higher", slack=QUALITY_SLACK)
        pinned[f"{name}.psnr_vs_torch_db"] = Metric(pinned_psnr(figures["psnr_vs_torch_db"]), "higher",
                                                    slack=PSNR_SLACK_DB)
    return {**pinned, **_pinned_task(task, task_metric)}
