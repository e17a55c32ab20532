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

# Slack of the figures pinned in the snapshot baselines (tests/__snapshots__/). On the portable runtime a package's
# figures are deterministic (same tools, same package); the slack absorbs what a harmless converter or tool change
# moves (op order, the rounding of a scale), while a real degradation moves them by far more. An error may grow by
# a tenth of its declared tolerance before the baseline gate fails, even while it is still inside the tolerance.
MAX_ABS_SLACK_FRACTION = 0.1
PSNR_SLACK_DB = 1.0
PSNR_PIN_CAP_DB = 200.0  # beyond this a PSNR says "fp32 rounding noise" (or exact): pin the cap, not inf
QUALITY_SLACK = 0.002
TASK_SLACK = {"decision_agreement": 0.01, "segment_f1": 0.05,  # VAD
              # ASR decisions (token / duration argmax of the joint), overall and where the reference is confident
              "token_agreement": 0.01, "duration_agreement": 0.01,
              "confident_token_agreement": 0.005, "confident_duration_agreement": 0.005}
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

    fp32 = load_model(package, backend="mil", precision="fp32").trace(feeds)
    fp16 = load_model(package, backend="mil", precision="fp16").trace(feeds)
    return compare_traces(fp32, fp16).summary(limit)


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


def pinned_parity_metrics(checks: Sequence[OutputCheck], task: Mapping[str, float]) -> dict:
    """The clip figures a parity test pins in its snapshot baseline (:mod:`conversions.snapshots`)."""
    from .snapshots import Metric

    pinned = {}
    for c in checks:
        if c.problem:
            continue
        tolerance = c.bound.atol if c.bound.atol is not None else c.metrics["max_abs"]
        pinned[f"{c.name}.max_abs"] = Metric(c.metrics["max_abs"], "lower", slack=MAX_ABS_SLACK_FRACTION * tolerance)
        pinned[f"{c.name}.psnr_db"] = Metric(min(c.metrics["psnr_db"], PSNR_PIN_CAP_DB), "higher", slack=PSNR_SLACK_DB)
    for metric, slack in TASK_SLACK.items():
        if metric in task:
            pinned[f"task.{metric}"] = Metric(task[metric], "higher", slack=slack)
    return pinned
