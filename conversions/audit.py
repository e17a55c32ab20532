"""``coreml-parity audit``: the fp16 doctor. Which ops of an fp16 program must stay fp32, found and verified.

    coreml-parity audit FAMILY/COMPONENT [--input NAME=FILE.npy ...] [--calls N] [--json]
    coreml-parity audit PACKAGE.mlpackage [--input NAME=FILE.npy ...] [--atol A] [--psnr DB]

1. **Measure.** The audited program (a FAMILY/COMPONENT is re-exported with *every* op in fp16, whatever its converter
   keeps fp32, through :func:`conversions.export.keep_fp32_override`) is streamed over the family's clip on the
   portable runtime with fp16 storage and checked against the component's declared fp16 bounds. If it passes, there
   is nothing to keep fp32.
2. **Flag.** On the calls where it is worst (``--calls``), every op's output is traced with fp16 storage and compared
   with its exact value (the fp32 export of the same component; for a bare package, the same program with fp32
   storage): ops whose exact value **overflows** fp16 (|x| > 65504), ops that **underflow** (fp16 value 0 where the
   exact one is not, or a growing share of subnormals: precision lost before a log or a division), and ops where the
   **error jumps** (:func:`conversions.runtime.mil.compare_traces`, with a floor no coarser than the bounds).
3. **Rank.** Each flagged op's effect on the outputs it feeds: their error, in units of their bounds, when the op's
   output is replaced by its exact value in the fp16 run (``MILModel.predict(..., overrides=...)``), and when the op
   is kept fp32 together with its *region* -- the fp16 ops its (damaged) inputs come from, and the consumers that
   must stay fp32 while its exact value is out of fp16's range (an op kept fp32 alone changes nothing if its output
   is cast back to fp16 before it is used).
4. **Greedy.** Starting from nothing kept, each step adds the region that brings the outputs closest to their bounds
   (a score summing every output's excess on a log scale), measured on the portable runtime's emulation of the
   mixed export (``MILModel.with_fp16_ops``: the fp32 export with the other ops computing in fp16, casts included; it
   reproduces real exports bit for bit). Flags are recomputed after each step; when no flagged op's region helps,
   ops whose own error is above the bounds' scale without jumping are tried. Once every output is within
   ``--headroom`` of its bound on the whole clip, ops are pruned one at a time while that holds.
5. **Verify.** The FAMILY/COMPONENT is re-exported with exactly the proposed set kept fp32 and streamed over the whole
   clip: each output against its declared bound, PASS/FAIL (if the pruned set fails, the unpruned one is tried). The
   proposal is printed as a ``keep_fp32`` function to paste into the converter, in the names coremltools' op
   selector sees at conversion time (recorded while exporting; ops it fuses away later are kept with their
   neighbours, or the fusion would not happen).

Exit 0: a verified proposal, or the all-fp16 program already passes; 1: no set within the flagged ops verifies (the
report says what was tried); 2: usage errors (unknown family/component, unreadable or wrong ``--input``).
See docs/audit.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .registry import Bound

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0 ** -14
CAST_SUFFIX = "_cast_fp16"  # coremltools' add_fp16_cast renames each op it moves to fp16 <name>_cast_fp16
SELECTOR_OPS_KEY = "audit_selector_ops"  # package metadata: the ops as the keep-fp32 selector saw them
AUDIT_EXPORT_FORMAT = 1  # in the cache key of the audit's exports: bump when what they record changes
DEFAULT_CALLS = 2
DEFAULT_HEADROOM = 0.9
MAX_PRUNE_ROUNDS = 8
DEFAULT_GENERATED = 32  # inputs drawn from a component's random_inputs, checked against its random_bounds
JUMP_FACTOR = 4.0
JUMP_FLOOR = 1e-3  # compare_traces' default; lowered to the tightest bound's relative size
TABLE_ROWS = 20  # flagged ops printed (--json has them all)
NONFINITE_EXCESS = 1e6  # an inf/NaN output counts as this many times its bound in the search's score
RANGE_FRACTION = 1e-3  # an exact value with this share of subnormal (or any overflowing) elements is out of range
# Ops that only move or select elements: they cannot create an underflow, only carry one.
DATA_MOVEMENT = frozenset({
    "identity", "reshape", "transpose", "expand_dims", "squeeze", "concat", "stack", "split", "slice_by_index",
    "slice_by_size", "gather", "gather_nd", "gather_along_axis", "pad", "tile", "select", "reverse", "reverse_sequence",
    "space_to_depth", "depth_to_space", "pixel_shuffle", "sliding_windows", "scatter", "scatter_nd",
    "scatter_along_axis", "band_part", "fill_like", "shape",
})


class UsageError(ValueError):
    """A bad command line: exit 2 with the message."""


def _progress(message: str) -> None:
    print(f"audit: {message}", file=sys.stderr, flush=True)


# ---- reading programs ------------------------------------------------------------------------------------------
def base_name(name: str) -> str:
    """An op's name as in an fp32 export of the same module (without coremltools' ``_cast_fp16`` suffix)."""
    return name[: -len(CAST_SUFFIX)] if name.endswith(CAST_SUFFIX) else name


def sanitized(name: str) -> str:
    """An op name at conversion time as the saved program spells it (coremltools' name sanitizer for ops)."""
    new = re.sub("[^a-zA-Z0-9_]", "_", name)
    return "op_" + new if re.match("[^a-zA-Z_]", new) else new


def _dtype(t) -> str | None:
    return getattr(t, "dtype", None)


def _computed_ops(model) -> list:
    return [op for op in model.function.operations if op.op_type not in ("const", "cast")]


def _fp16_params(op, types) -> tuple[str, ...] | None:
    """The names of an op's fp16-typed inputs (what coremltools cast to fp16 before it); None if it does not compute
    in fp16 (no fp16 input nor output)."""
    params = tuple(p for p, bindings in op.inputs.items()
                   if any(_dtype(types.get(b.var) if b.var else b.type) == "fp16" for b in bindings))
    return params if params or any(_dtype(v.type) == "fp16" for v in op.outputs) else None


def fp16_ops(model) -> dict[str, tuple[str, ...]]:
    """The ops of a loaded program that compute in fp16 (an fp16 input or output), by base name, with the names of
    their fp16-typed inputs."""
    types = model.executor.types
    found = ((base_name(op.name), _fp16_params(op, types)) for op in _computed_ops(model))
    return {name: params for name, params in found if params is not None}


class Graph:
    """Producers and consumers of the exact program's variables, for regions of ops."""

    def __init__(self, model):
        types = model.executor.types
        self.op_type = {}
        self.order = {}
        self.float_inputs: dict[str, list[str]] = {}
        self.outputs: dict[str, list[str]] = {}
        self.producer: dict[str, str] = {}
        self.consumers: dict[str, list[str]] = {}
        self.function_outputs = set(model.function.outputs)
        self._reach: dict[str, set[str]] | None = None
        for i, op in enumerate(model.function.operations):
            if op.op_type == "const":
                continue
            self.op_type[op.name] = op.op_type
            self.order[op.name] = i
            self.outputs[op.name] = [v.name for v in op.outputs]
            for v in op.outputs:
                self.producer[v.name] = op.name
            floats = [b.var for bindings in op.inputs.values() for b in bindings
                      if b.var is not None and _dtype(types.get(b.var)) in ("fp16", "fp32")]
            self.float_inputs[op.name] = floats
            for var in floats:
                self.consumers.setdefault(var, []).append(op.name)

    def ancestors(self, op: str, stop: Callable[[str], bool]) -> set[str]:
        """Ops whose float outputs ``op`` depends on, not walking past ops where ``stop`` holds."""
        found, pending = set(), [op]
        while pending:
            for var in self.float_inputs.get(pending.pop(), ()):
                producer = self.producer.get(var)
                if producer is not None and producer not in found and not stop(producer):
                    found.add(producer)
                    pending.append(producer)
        return found

    def feeds(self, op: str) -> set[str]:
        """The function outputs (variable names) that depend on ``op``."""
        if self._reach is None:
            self._reach = {}
            for name in sorted(self.order, key=self.order.get, reverse=True):
                reach = {v for v in self.outputs[name] if v in self.function_outputs}
                for consumer in self.direct_consumers(name):
                    reach |= self._reach.get(consumer, set())
                self._reach[name] = reach
        return self._reach.get(op, set())

    def direct_consumers(self, op: str) -> set[str]:
        return {c for var in self.outputs.get(op, ()) for c in self.consumers.get(var, ())}


# ---- measuring outputs against their bounds ---------------------------------------------------------------------
def output_excess(reference, candidate, bound: Bound) -> float:
    """How far an output is from its bound: the larger of the worst element's error over ``atol + rtol*|ref|`` and
    the RMS error over the one the PSNR floor allows. At most 1.0 means within the bound; ``inf`` for NaN, unmatched
    infinities or a shape mismatch."""
    from . import metrics

    ref = np.asarray(reference, np.float64)
    got = np.asarray(candidate, np.float64)
    if ref.shape != got.shape:
        return math.inf
    excess = 0.0
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        same = got == ref
        if bound.atol is not None:
            allowed = bound.atol + bound.rtol * np.abs(ref)
            ratio = np.where(same, 0.0, np.abs(got - ref) / allowed)
            ratio = np.where(np.isnan(ratio), np.inf, ratio)
            excess = float(ratio.max()) if ratio.size else 0.0
        elif not bool(np.all(same | (np.isfinite(got) & np.isfinite(ref)))):
            excess = math.inf
    if math.isfinite(bound.psnr_min_db) and ref.size:
        psnr = metrics.psnr(ref, got)
        shortfall = 0.0 if psnr == math.inf else (math.inf if psnr == -math.inf else
                                                   10.0 ** ((bound.psnr_min_db - psnr) / 20.0))
        excess = max(excess, shortfall)
    return excess


def outputs_excess(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                   bounds: Mapping[str, Bound]) -> tuple[float, dict[str, float]]:
    per = {name: output_excess(reference[name], candidate[name], bound) for name, bound in bounds.items()}
    return max(per.values(), default=0.0), per


def output_figures(reference, candidate, bounds) -> list[dict]:
    """Each output's max_abs and PSNR against its bound (the figures of check_outputs), as plain values."""
    from .parity import check_outputs

    rows = []
    for check in check_outputs(reference, candidate, bounds):
        m, b = check.metrics, check.bound
        rows.append({"output": check.name, "passed": check.passed, "problem": check.problem,
                     "max_abs": m.get("max_abs"), "psnr_db": m.get("psnr_db"), "atol": b.atol, "rtol": b.rtol,
                     "psnr_min_db": b.psnr_min_db,
                     "excess": output_excess(reference[check.name], candidate[check.name], b)
                     if check.problem is None else math.inf})
    return rows


def _jump_floor(reference: Mapping[str, np.ndarray], bounds: Mapping[str, Bound]) -> float:
    """compare_traces' floor, no coarser than the tightest bound as a share of its output's peak: an 80 dB floor
    allows an RMS error of 1e-4 of the peak, so an op adding 3e-4 of its output's peak must show."""
    floor = JUMP_FLOOR
    for name, bound in bounds.items():
        ref = np.asarray(reference[name])
        if ref.dtype.kind != "f" or not ref.size:
            continue
        peak = float(np.abs(ref[np.isfinite(ref)]).max(initial=0.0))
        if bound.atol is not None and peak > 0 and bound.atol > 0:
            floor = min(floor, bound.atol / peak)
        if math.isfinite(bound.psnr_min_db) and bound.psnr_min_db > 0:
            floor = min(floor, 10.0 ** (-bound.psnr_min_db / 20.0))
    return floor


# ---- what is audited -----------------------------------------------------------------------------------------
@dataclass
class Subject:
    """A program to audit and everything needed to judge and re-export it.

    ``program``: the audited fp16 program (loaded on the portable runtime, fp16 storage); ``exact``: where exact
    values come from (the fp32 export of the same module, or the program itself with fp32 storage); ``reference``:
    the outputs the bounds are measured against, stacked per call of ``call_feeds`` (streamed with ``state``);
    ``reexport(keep)``: the module re-exported in fp16 keeping the given ops fp32 (exact-program op names), or None;
    ``selector``: the ops as the keep-fp32 selector sees them at conversion time (:class:`SelectorOps`);
    ``already_fp32``: ops the audited program already computes in fp32; ``converter_fp32``: what the component's own
    converter keeps; ``cases``: generated inputs (complete feeds, each an independent call) with their reference
    outputs (``case_reference``), each checked against ``case_bounds`` (the component's ``random_bounds``)."""

    label: str
    program: Any
    exact: Any
    exact_source: str
    bounds: Mapping[str, Bound]
    reference: Mapping[str, np.ndarray]
    call_feeds: list[dict]
    state: Mapping[str, str] = field(default_factory=dict)
    initial_state: Mapping[str, np.ndarray] = field(default_factory=dict)
    reexport: Callable[[frozenset[str]], Any] | None = None
    selector: SelectorOps | None = None
    already_fp32: frozenset[str] = frozenset()
    converter_fp32: frozenset[str] | None = None
    notes: list[str] = field(default_factory=list)
    cases: list[dict] = field(default_factory=list)
    case_reference: list[dict] = field(default_factory=list)
    case_bounds: Mapping[str, Bound] = field(default_factory=dict)
    evidence: str = "whole clip"  # what call_feeds are, for the report

    def stream(self, model, feeds: Sequence[dict] | None = None) -> tuple[dict[str, np.ndarray], list[dict]]:
        """``model``'s outputs over the clip (state carried), fp16 outputs rounded as the program stores them."""
        from .parity import run_stream

        fp16_outputs = {s.name for s in self.program.outputs if np.dtype(s.dtype) == np.float16}

        def run(f):
            out = model.predict(f)
            return {k: (np.asarray(v).astype(np.float16) if k in fp16_outputs else np.asarray(v))
                    for k, v in out.items()}

        result = run_stream(run, self.call_feeds if feeds is None else feeds, self.state, self.initial_state)
        return result.outputs, result.feeds


# ---- the report ------------------------------------------------------------------------------------------------
@dataclass
class Flag:
    op: str
    op_type: str
    kinds: list[str]
    calls: list[int]
    overflow: int = 0  # elements whose exact value exceeds fp16's range
    flushed: int = 0  # elements stored 0 in fp16 whose exact value is not
    flushed_fraction: float = 0.0  # of the op's non-zero exact elements
    subnormal_fraction: float = 0.0  # of the op's non-zero fp16 elements: below 6.1e-5, stored with fewer bits
    rel_error: float = 0.0  # compare_traces: max |error| / max |exact|
    input_rel_error: float = 0.0
    outputs: list[str] = field(default_factory=list)  # the outputs that depend on it
    excess_if_exact: float | None = None  # their worst excess with this op's outputs exact in the fp16 run
    excess_if_kept: float | None = None  # ... with this op and its region kept fp32 (emulated export)
    region: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = []
        if "overflow" in self.kinds:
            parts.append(f"overflow ({self.overflow} elements > 65504)")
        if "nonfinite" in self.kinds:
            parts.append("first inf/NaN")
        if "underflow" in self.kinds:
            parts.append(f"underflow ({self.flushed_fraction:.2%} flushed to 0, {self.subnormal_fraction:.1%} "
                         "subnormal)")
        if "jump" in self.kinds:
            parts.append(f"error jump (rel {self.rel_error:.2g} vs inputs {self.input_rel_error:.2g})")
        return "; ".join(parts)


@dataclass
class GreedyStep:
    added: list[str]
    flagged_op: str | None
    kept: int
    excess: float
    outputs: dict[str, float]  # output -> excess on the traced calls
    note: str = ""
    figures: list[dict] = field(default_factory=list)  # each output's max_abs / PSNR on the traced calls


@dataclass
class Verification:
    method: str  # "re-export" or "runtime emulation"
    kept: list[str]
    passed: bool
    outputs: list[dict]
    matched: list[str] = field(default_factory=list)  # proposed ops computing fp32 in the re-export
    unmatched: list[str] = field(default_factory=list)
    stray_fp32: list[str] = field(default_factory=list)  # ops computing fp32 in the re-export though not proposed
    emulated_excess: float | None = None  # what the runtime's emulation of this export predicted (worst output)
    generated: dict = field(default_factory=dict)  # the re-export on the generated inputs


@dataclass
class AuditResult:
    subject: str
    exact_source: str
    all_fp16: list[dict]  # output figures of the audited program over the whole clip
    passes_already: bool
    calls: list = field(default_factory=list)  # traced: clip call indices, "generated <i>" for generated inputs
    clip_calls: int = 0
    evidence: str = "whole clip"
    generated: dict = field(default_factory=dict)  # the audited program on the generated inputs (see _cases_summary)
    jump_floor: float = JUMP_FLOOR
    headroom: float = DEFAULT_HEADROOM
    fp16_op_count: int = 0
    flags: list[Flag] = field(default_factory=list)
    steps: list[GreedyStep] = field(default_factory=list)
    greedy_set: list[str] = field(default_factory=list)
    proposal: list[str] = field(default_factory=list)  # exact-program op names, program order
    proposal_selector_names: list[str] = field(default_factory=list)
    proposal_op_types: dict[str, int] = field(default_factory=dict)
    already_fp32: list[str] = field(default_factory=list)
    converter_fp32: list[str] | None = None
    converter_op_types: dict[str, int] | None = None
    verifications: list[Verification] = field(default_factory=list)
    verified: bool = False
    selector_code: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0 if (self.passes_already or self.verified) else 1

    def to_json(self) -> dict:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        return _json_safe(data)


def _json_safe(value):
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _json_safe(value.item())
    return value


# ---- the doctor ------------------------------------------------------------------------------------------------
class Doctor:
    def __init__(self, subject: Subject, calls: int = DEFAULT_CALLS, headroom: float = DEFAULT_HEADROOM,
                 progress: Callable[[str], None] | None = _progress):
        from .parity import DIAGNOSIS_MEMORY_BYTES, trace_bytes

        self.s = subject
        self.calls_wanted = max(1, int(calls))
        self.headroom = float(headroom)
        self.say = progress or (lambda message: None)
        self.graph = Graph(subject.exact)
        self.fp16_outputs = {o.name for o in subject.program.outputs if np.dtype(o.dtype) == np.float16}
        self._cast_outputs = {v.name for op in subject.program.function.operations if op.op_type == "cast"
                              for v in op.outputs}
        self.exact_ops = {op.name for op in _computed_ops(subject.exact)}
        # the audited program's fp16 ops, by their exact-program names (ops only one of the programs has are left out)
        types = subject.program.executor.types
        self.plan, missing = {}, []
        for op in _computed_ops(subject.program):
            params = _fp16_params(op, types)
            if params is not None:
                name = self._exact_name(op.name)
                if name in self.exact_ops:
                    self.plan[name] = params
                else:
                    missing.append(op.name)
        if missing:
            subject.notes.append(f"{len(missing)} fp16 op(s) of the audited program have no counterpart in "
                                 f"{subject.exact_source} and cannot be proposed: {', '.join(missing[:8])}")
        self.to_exact_var = self._map_variables()
        self.to_program_var = {e: v for v, e in self.to_exact_var.items() if v not in self._cast_outputs}
        self.memory_needed = 2 * trace_bytes(subject.exact)
        self.memory_limit = DIAGNOSIS_MEMORY_BYTES
        self.range_problem: dict[str, bool] = {}
        self.carriers: dict[str, float] = {}  # fp16 ops whose own error exceeds the floor without jumping
        self.floor = JUMP_FLOOR

    def _exact_name(self, name: str) -> str:
        """An op of the audited program -> its name in the exact program (itself, or without ``_cast_fp16``)."""
        return name if name in self.exact_ops else base_name(name)

    # -- evaluation
    def emulated(self, keep: Iterable[str]):
        """The exact program computing as an fp16 export keeping ``keep`` (and what the audited program keeps) fp32."""
        keep = set(keep)
        return self.s.exact.with_fp16_ops({n: p for n, p in self.plan.items() if n not in keep})

    def _predict(self, model, call: int, overrides: dict | None = None) -> dict[str, np.ndarray]:
        got = model.predict(self.feeds[call], overrides=overrides) if overrides else model.predict(self.feeds[call])
        return {name: (np.asarray(got[name]).astype(np.float16) if name in self.fp16_outputs else np.asarray(got[name]))
                for name in got}

    def _case(self, call: int) -> int | None:
        """The generated case a call index stands for (None: a call of the clip)."""
        return call - self.n_clip if call >= self.n_clip else None

    def excess_on(self, model, calls: Sequence[int], overrides: Sequence[dict] | None = None):
        """(worst, per-output excess, score) of ``model`` on ``calls``: the clip's calls stacked against the clip
        bounds, each generated case on its own against the generated-input bounds (keys ``<output> (generated i)``)."""
        clip_calls = [c for c in calls if self._case(c) is None]
        per: dict[str, float] = {}
        outs: dict[str, list] = {}
        for i, call in enumerate(calls):
            got = self._predict(model, call, overrides[i] if overrides else None)
            case = self._case(call)
            if case is None:
                for name in self.s.bounds:
                    outs.setdefault(name, []).append(got[name])
                continue
            ref = self.s.case_reference[case]
            for name, bound in self.s.case_bounds.items():
                per[f"{name} (generated {case})"] = output_excess(ref[name], got[name], bound)
        if clip_calls:
            ref = {name: np.stack([np.asarray(self.s.reference[name])[c] for c in clip_calls]) for name in self.s.bounds}
            per.update(outputs_excess(ref, {k: np.stack(v) for k, v in outs.items()}, self.s.bounds)[1])
        return max(per.values(), default=0.0), per, self.score(per)

    def figures_on(self, model, calls: Sequence[int]) -> list[dict]:
        """Each output's figures against its clip bound (max_abs, PSNR) on the clip's ``calls``."""
        clip_calls = [c for c in calls if self._case(c) is None]
        if not clip_calls:
            return []
        outs: dict[str, list] = {}
        for call in clip_calls:
            got = self._predict(model, call)
            for name in self.s.bounds:
                outs.setdefault(name, []).append(got[name])
        ref = {name: np.stack([np.asarray(self.s.reference[name])[c] for c in clip_calls]) for name in self.s.bounds}
        return output_figures(ref, {k: np.stack(v) for k, v in outs.items()}, self.s.bounds)

    def score(self, per: Mapping[str, float]) -> float:
        """What the search minimises: every output's excess beyond the headroom, on a log scale, summed (0: all
        within it). Unlike the worst output alone, it sees an op that fixes one output while another is still off."""
        total = 0.0
        for value in per.values():
            value = NONFINITE_EXCESS if math.isnan(value) else min(value, NONFINITE_EXCESS)
            total += math.log10(max(value, self.headroom) / self.headroom)
        return total

    def full_excess(self, model) -> tuple[float, dict, dict, dict]:
        """(worst, per-output excess, clip outputs, per-case worst excess) on the whole evidence: the clip streamed
        with its state carried, and every generated case."""
        outputs, _ = self.s.stream(model)
        worst, per = outputs_excess(self.s.reference, outputs, self.s.bounds)
        cases = {}
        for case in range(len(self.s.cases)):
            got = self._predict(model, self.n_clip + case)
            cases[case] = outputs_excess(self.s.case_reference[case], got, self.s.case_bounds)[0]
        return max([worst, *cases.values()]), per, outputs, cases

    def _cases_summary(self, model) -> dict:
        """Each generated case checked against its bounds: how many pass, and the worst one's figures."""
        if not self.s.cases:
            return {}
        rows = []
        for case in range(len(self.s.cases)):
            got = self._predict(model, self.n_clip + case)
            ref = {k: np.asarray(v)[None] for k, v in self.s.case_reference[case].items()}
            figures = output_figures(ref, {k: v[None] for k, v in got.items()}, self.s.case_bounds)
            rows.append((max(r["excess"] for r in figures), case, figures))
        worst = max(rows, key=lambda r: r[0])
        return {"total": len(rows), "passed": sum(all(f["passed"] for f in r[2]) for r in rows),
                "worst_case": worst[1], "worst_excess": worst[0], "worst": worst[2],
                "failing": [case for _, case, figures in rows if not all(f["passed"] for f in figures)]}

    # -- flags
    def _map_variables(self) -> dict[str, str]:
        """The audited program's variables -> the exact program's (ops by base name, outputs by position; a cast's
        output stands for its input)."""
        var_map: dict[str, str] = {}
        for op in self.s.program.function.operations:
            if op.op_type == "const":
                continue
            if op.op_type == "cast":
                source = [b.var for b in op.inputs.get("x", ()) if b.var is not None]
                for v in op.outputs:
                    var_map[v.name] = var_map.get(source[0], source[0]) if source else v.name
                continue
            exact_vars = self.graph.outputs.get(self._exact_name(op.name))
            if exact_vars is not None and len(exact_vars) == len(op.outputs):
                var_map.update((v.name, e) for v, e in zip(op.outputs, exact_vars))
        return var_map

    def _aligned(self, trace):
        """A trace of the audited program with its ops and variables named as in the exact program (casts skipped)."""
        from .runtime.mil.trace import Trace, TracedOp

        var_map = self.to_exact_var
        aligned = Trace()
        for name, op in trace.items():
            exact_name = self._exact_name(name)
            if op.op_type == "cast" or exact_name not in self.graph.outputs or not all(v in var_map for v in op.outputs):
                continue
            outputs = type(op.outputs)((var_map[v], a) for v, a in op.outputs.items())
            aligned[exact_name] = TracedOp(exact_name, op.op_type, [var_map.get(v, v) for v in op.inputs], outputs)
        return aligned

    def flags_at(self, exact_trace, candidate_trace, stored_fp16: set[str], call: int,
                 flags: dict[str, Flag]) -> None:
        """Merge the flags of one call into ``flags`` (op -> Flag)."""
        from .runtime.mil import compare_traces

        comparison = compare_traces(exact_trace, candidate_trace, jump_factor=JUMP_FACTOR, floor=self.floor)
        by_var: dict[str, tuple[float, float]] = {}  # var -> (flushed fraction, subnormal fraction) in fp16 storage
        for row in comparison.rows:
            if row.op not in stored_fp16:
                continue
            exact = np.asarray(exact_trace[row.op].outputs[row.output])
            stored = np.asarray(candidate_trace[row.op].outputs[row.output])
            if exact.dtype.kind != "f" or exact.shape != stored.shape:
                continue
            finite = np.isfinite(exact)
            nonzero = finite & (exact != 0)
            n_nonzero = int(nonzero.sum())
            overflow = int((finite & (np.abs(exact) > FP16_MAX)).sum())
            flushed = int(((stored == 0) & nonzero).sum())
            stored_nonzero = (stored != 0) & np.isfinite(stored)
            subnormal = int((stored_nonzero & (np.abs(stored) < FP16_MIN_NORMAL)).sum())
            exact_small = int((nonzero & (np.abs(exact) < FP16_MIN_NORMAL)).sum())
            flushed_fraction = flushed / n_nonzero if n_nonzero else 0.0
            subnormal_fraction = subnormal / max(int(stored_nonzero.sum()), 1)
            by_var[row.output] = (flushed_fraction, subnormal_fraction)
            problem = overflow > 0 or (n_nonzero and exact_small / n_nonzero >= RANGE_FRACTION)
            self.range_problem[row.op] = self.range_problem.get(row.op, False) or bool(problem)
            kinds = []
            if overflow:
                kinds.append("overflow")
            if row.introduces_nonfinite and not overflow:
                kinds.append("nonfinite")
            if self.graph.op_type.get(row.op) not in DATA_MOVEMENT:
                inputs = [by_var.get(v, (0.0, 0.0)) for v in candidate_trace[row.op].inputs]
                in_flushed = max((f for f, _ in inputs), default=0.0)
                in_subnormal = max((s for _, s in inputs), default=0.0)
                if (flushed and flushed_fraction > in_flushed) or (
                        subnormal_fraction >= RANGE_FRACTION and subnormal_fraction > 1.5 * in_subnormal):
                    kinds.append("underflow")
            if row.jump:
                kinds.append("jump")
            elif row.rel_error > self.floor and math.isfinite(row.rel_error):
                self.carriers[row.op] = max(self.carriers.get(row.op, 0.0), row.rel_error)
            if not kinds:
                continue
            flag = flags.get(row.op)
            if flag is None:
                flag = flags[row.op] = Flag(row.op, row.op_type, [], [])
            flag.kinds = sorted(set(flag.kinds) | set(kinds), key=["overflow", "nonfinite", "underflow", "jump"].index)
            flag.calls = sorted(set(flag.calls) | {call})
            flag.overflow = max(flag.overflow, overflow)
            flag.flushed = max(flag.flushed, flushed)
            flag.flushed_fraction = max(flag.flushed_fraction, flushed_fraction)
            flag.subnormal_fraction = max(flag.subnormal_fraction, subnormal_fraction)
            if row.rel_error >= flag.rel_error:
                flag.rel_error, flag.input_rel_error = row.rel_error, row.input_rel_error

    def region(self, op: str, kept: set[str]) -> set[str]:
        """``op`` with what keeping it fp32 needs: the fp16 ops its float inputs come from (their values are damaged
        too, or the op would not have been flagged), and its consumers while the exact value is out of fp16's range
        (else the cast back to fp16 before them brings the problem back)."""
        stored_fp16 = {n for n in self.plan if n not in kept}
        region = {op} | (self.graph.ancestors(op, stop=lambda p: p in kept) & stored_fp16)
        pending = [op]
        while pending:
            current = pending.pop()
            if not self.range_problem.get(current):
                continue
            for consumer in self.graph.direct_consumers(current):
                if consumer in stored_fp16 and consumer not in region:
                    region.add(consumer)
                    pending.append(consumer)
        return region

    def trace_flags(self, candidate_model, stored_fp16: set[str], aligned: bool) -> dict[str, Flag]:
        flags: dict[str, Flag] = {}
        self.carriers = {}
        for call in self.calls:
            exact_trace = self.s.exact.trace(self.feeds[call])
            candidate = candidate_model.trace(self.feeds[call])
            if aligned:
                candidate = self._aligned(candidate)
            self.flags_at(exact_trace, candidate, stored_fp16, call, flags)
            del exact_trace, candidate
        return flags

    # -- the whole audit
    def run(self) -> AuditResult:
        started = time.monotonic()
        s = self.s
        result = AuditResult(subject=s.label, exact_source=s.exact_source, all_fp16=[], passes_already=False,
                             headroom=self.headroom, already_fp32=sorted(s.already_fp32, key=self._order),
                             notes=s.notes, evidence=s.evidence)
        self.say(f"streaming {s.label} over {len(s.call_feeds)} call(s) with fp16 storage"
                 + (f", and {len(s.cases)} generated input(s)" if s.cases else ""))
        outputs, clip_feeds = s.stream(s.program)
        self.n_clip = len(clip_feeds)
        self.feeds = list(clip_feeds) + [dict(c) for c in s.cases]
        result.clip_calls = self.n_clip
        result.all_fp16 = output_figures(s.reference, outputs, s.bounds)
        result.generated = self._cases_summary(s.program)
        result.fp16_op_count = len(self.plan)
        if s.converter_fp32 is not None:
            result.converter_fp32 = sorted(s.converter_fp32, key=self._order)
            result.converter_op_types = self._histogram(s.converter_fp32)
        if all(row["passed"] for row in result.all_fp16) and not result.generated.get("failing"):
            result.passes_already = True
            result.seconds = time.monotonic() - started
            return result
        self.floor = _jump_floor(s.reference, s.bounds)
        if s.cases:
            self.floor = min(self.floor, *(_jump_floor({k: np.asarray(v) for k, v in ref.items()}, s.case_bounds)
                                           for ref in s.case_reference))
        result.jump_floor = self.floor
        failing_cases = sorted(result.generated.get("failing", []),
                               key=lambda c: -self.excess_on(s.program, [self.n_clip + c])[0])
        clip_failing = not all(row["passed"] for row in result.all_fp16)
        self.calls = sorted(self._worst_calls(outputs)[: self.calls_wanted] if clip_failing else []) + [
            self.n_clip + c for c in failing_cases[: self.calls_wanted]]
        result.calls = self._call_labels()
        if self.memory_needed > self.memory_limit:
            result.notes.append(f"not traced: two traces of this program hold every intermediate, "
                                f"~{self.memory_needed / 1e9:.1f} GB > {self.memory_limit / 1e9:.0f} GB (the limit of "
                                "conversions.parity.DIAGNOSIS_MEMORY_BYTES); audit a smaller component of the model")
            result.seconds = time.monotonic() - started
            return result

        # 2-3: flags of the audited program, ranked by their effect on the outputs
        self.say(f"tracing call(s) {self._call_labels()} with fp16 and exact ({s.exact_source}) values")
        base = self.excess_on(s.program, self.calls)
        exact_effect: dict[str, tuple] = {}  # op -> (worst, per output, score) with its outputs exact
        flags = self.trace_flags(s.program, set(self.plan), aligned=True)
        self.say(f"{len(flags)} op(s) flagged; measuring each one's effect on the outputs")
        self._exact_effects(flags, exact_effect)
        kept_score: dict[str, float] = {}
        for name, flag in flags.items():
            flag.outputs = [o for o in s.bounds if o in self.graph.feeds(name)] or list(s.bounds)
            flag.excess_if_exact = _worst_for(exact_effect[name][1], flag.outputs)
            flag.region = sorted(self.region(name, set()), key=self._order) if name in self.plan else []
            if flag.region:
                _, per, kept_score[name] = self.excess_on(self.emulated(flag.region), self.calls)
                flag.excess_if_kept = _worst_for(per, flag.outputs)
        result.flags = sorted(flags.values(), key=lambda f: (exact_effect[f.op][2], _num(f.excess_if_exact),
                                                             kept_score.get(f.op, math.inf), self._order(f.op)))

        # 4: greedy on the emulated mixed export, then pruning
        kept = self._greedy(result, flags, base)
        result.greedy_set = sorted(kept, key=self._order)
        clip_value = self.full_excess(self.emulated(kept))[0] if kept else math.inf
        target = self.headroom
        if clip_value > self.headroom:
            if clip_value > 1.0:
                result.notes.append(f"the greedy search over the flagged ops reached {_times(clip_value)} of the bounds "
                                    f"on the whole evidence with {len(kept)} op(s) kept fp32")
                result.seconds = time.monotonic() - started
                return result
            target = 1.0
            result.notes.append(f"the headroom {self.headroom:g} was not reached ({_times(clip_value)} of the bounds "
                                "on the whole evidence): proposing a set within the bounds themselves")
        self.say(f"within {_times(clip_value)} of the bounds with {len(kept)} op(s) kept fp32; pruning")
        pruned = self._prune(kept, target)
        for _ in range(MAX_PRUNE_ROUNDS):  # pruned on the traced calls: does it hold on the whole evidence?
            full, clip_per, clip_outputs, cases = self.full_excess(self.emulated(pruned))
            if full <= target or pruned == kept:
                break
            added = self._add_call(clip_per, clip_outputs, cases, target)
            result.notes.append(f"pruning to {len(pruned)} op(s) held on the traced calls but not on {added} "
                                f"({_times(full)}): traced it too and pruned again")
            result.calls = self._call_labels()
            pruned = self._prune(kept, target)
        else:
            pruned = kept
        if self.full_excess(self.emulated(pruned))[0] > target:
            pruned = kept
        result.proposal = sorted(pruned, key=self._order)

        # 5: verification
        tried = [pruned] if pruned == kept else [pruned, kept]
        for keep in tried:
            verification = self._verify(keep)
            result.verifications.append(verification)
            if verification.passed:
                result.verified = True
                result.proposal = sorted(keep, key=self._order)
                break
        every = set(result.proposal) | set(s.already_fp32)
        if s.selector is not None:
            result.proposal_selector_names = s.selector.names_for(every)
        else:
            result.proposal_selector_names = [base_name(n) for n in sorted(every, key=self._order)]
            result.notes.append("the names are as saved in the package: coremltools saves an op named 'x.11' or '70' "
                                "at conversion time as 'x_11' or 'op_70'; adjust them to what your converter's "
                                "selector sees (FAMILY/COMPONENT audits print those names)")
        result.proposal_op_types = self._histogram(result.proposal)
        result.selector_code = selector_code(result.proposal_selector_names, len(result.proposal),
                                             len(s.already_fp32), s.label, result.proposal_op_types,
                                             result.verifications[-1].method if result.verifications else "")
        result.seconds = time.monotonic() - started
        return result

    def _exact_effects(self, flags: Mapping[str, Flag], effects: dict[str, tuple]) -> None:
        """Each flagged op's effect on the outputs: the audited program run with that op's outputs replaced by their
        exact values (one call's trace at a time, so only two traces are ever held)."""
        per_call: dict[str, list] = {name: [] for name in flags}
        for call in self.calls:
            exact_trace = self.s.exact.trace(self.feeds[call])
            for name in flags:
                op = exact_trace.get(name)
                per_call[name].append({} if op is None else {self.to_program_var[v]: value
                                                             for v, value in op.outputs.items()
                                                             if v in self.to_program_var})
            del exact_trace
        for name, overrides in per_call.items():
            effects[name] = self.excess_on(self.s.program, self.calls, overrides)

    def _greedy(self, result: AuditResult, flags: dict[str, Flag], base) -> set[str]:
        """Add, step by step, the region of the flagged op that brings the outputs closest to their bounds; flags are
        recomputed after each step. When no flagged op's region helps, ops whose own error is above the bounds' scale
        (without jumping) are tried too. Stops within the headroom on the whole clip, or when nothing helps."""
        kept: set[str] = set()
        worst, per, current = base
        result.steps.append(GreedyStep([], None, 0, worst, per, "all fp16",
                                       self.figures_on(self.s.program, self.calls)))
        carriers = dict(self.carriers)
        for _ in range(len(self.plan) + 1):
            candidates = {op: f.describe() for op, f in flags.items() if op in self.plan and op not in kept}
            choice = self._best_region(kept, candidates, current)
            if choice is None:
                others = {op: f"its error {rel:.2g} is above the bounds' scale ({self.floor:.2g}), though it does "
                              "not jump" for op, rel in carriers.items() if op not in candidates and op not in kept}
                choice = self._best_region(kept, others, current)
            if choice is None:
                every = [*candidates, *(op for op in carriers if op not in kept)]
                union = frozenset().union(*(self.region(op, kept) for op in every)) if every else frozenset()
                measured = self.excess_on(self.emulated(kept | union), self.calls) if union else None
                if measured is None or not measured[2] < current - 0.01:
                    result.notes.append(f"greedy stopped: no flagged op's region brings the outputs closer to their "
                                        f"bounds ({_times(worst)} with {len(kept)} op(s) kept)")
                    break
                choice = (*measured, union, None, "every flagged region at once (no single one helped)")
            worst, per, current, region, op, why = choice
            kept |= region
            result.steps.append(GreedyStep(sorted(region, key=self._order), op, len(kept), worst, per, why,
                                           self.figures_on(self.emulated(kept), self.calls)))
            self.say(f"step {len(result.steps) - 1}: +{len(region)} op(s) (region of {op or 'every flagged op'}) -> "
                     f"{_times(worst)} of the bounds on the traced calls")
            if current <= 0:  # every output within the headroom on the traced calls: and on the whole evidence?
                full, clip_per, clip_outputs, cases = self.full_excess(self.emulated(kept))
                if full <= self.headroom:
                    break
                added = self._add_call(clip_per, clip_outputs, cases)
                result.calls = self._call_labels()
                worst, per, current = self.excess_on(self.emulated(kept), self.calls)
                result.steps[-1].note += f"; on the whole evidence {_times(full)}: {added} traced too"
            flags = self.trace_flags(self.emulated(kept), {n for n in self.plan if n not in kept}, aligned=False)
            carriers = dict(self.carriers)
        return kept

    def _best_region(self, kept: set[str], candidates: Mapping[str, str], current: float):
        """(worst, per-output excess, score, region, op, why) of the candidate whose region helps most, if any."""
        options: dict[frozenset, str] = {}
        for op in sorted(candidates, key=self._order):
            options.setdefault(frozenset(self.region(op, kept)), op)
        scored = []
        for region, op in options.items():
            worst, per, score = self.excess_on(self.emulated(kept | region), self.calls)
            scored.append((_bucket(score), len(region), self._order(op), worst, per, score, region, op))
        if not scored:
            return None
        _, _, _, worst, per, score, region, op = min(scored, key=lambda t: t[:3])
        if not score < current - 0.01:
            return None
        return worst, per, score, region, op, f"{op}: {candidates[op]}"

    def _prune(self, kept: set[str], target: float) -> set[str]:
        """Drop ops one at a time (the least harmful first) while the outputs stay within ``target`` of their bounds
        on the traced calls."""
        harm = []
        for op in kept:
            value, _, _ = self.excess_on(self.emulated(kept - {op}), self.calls)
            harm.append((value, self._order(op), op))
        result = set(kept)
        for value, _, op in sorted(harm):
            if value > target:
                continue
            trial = result - {op}
            if self.excess_on(self.emulated(trial), self.calls)[0] <= target:
                result = trial
        return result

    def _verify(self, keep: set[str]) -> Verification:
        s = self.s
        if s.reexport is None:
            model = self.emulated(keep)
            outputs, _ = s.stream(model)
            rows = output_figures(s.reference, outputs, s.bounds)
            generated = self._cases_summary(model)
            return Verification("runtime emulation", sorted(keep, key=self._order),
                                all(r["passed"] for r in rows) and not generated.get("failing"), rows,
                                generated=generated)
        from .runtime import load_model

        self.say(f"verifying: re-exporting {s.label} with {len(keep)} op(s) kept fp32")
        model = load_model(s.reexport(frozenset(keep | set(s.already_fp32))), backend="mil")
        outputs, _ = s.stream(model)
        rows = output_figures(s.reference, outputs, s.bounds)
        generated = self._cases_summary(model)
        still_fp16 = set(fp16_ops(model))
        matched = sorted((n for n in keep if n not in still_fp16), key=self._order)
        unmatched = sorted((n for n in keep if n in still_fp16), key=self._order)
        stray = sorted((n for n in self.plan if n not in keep and n not in still_fp16), key=self._order)
        return Verification("re-export", sorted(keep, key=self._order),
                            all(r["passed"] for r in rows) and not generated.get("failing"), rows, matched, unmatched,
                            stray, self.full_excess(self.emulated(keep))[0], generated)

    # -- helpers
    def _add_call(self, clip_per: Mapping[str, float], clip_outputs, cases: Mapping[int, float],
                  limit: float | None = None) -> str:
        """Trace one more call where the whole evidence is still beyond ``limit`` (default: the headroom): the worst
        of the clip's calls or of the generated cases not traced yet."""
        limit = self.headroom if limit is None else limit
        options = []
        if max(clip_per.values(), default=0.0) > limit:
            beyond = [c for c in self._worst_calls(clip_outputs) if c not in self.calls]
            if beyond:
                options.append((max(clip_per.values()), beyond[0], f"call {beyond[0]}"))
        for case, value in cases.items():
            if value > limit and self.n_clip + case not in self.calls:
                options.append((value, self.n_clip + case, f"generated input {case}"))
        if not options:
            self.calls = sorted(set(self.calls) | set(range(len(self.feeds))))
            return "every call and generated input"
        _, call, label = max(options)
        self.calls = sorted(self.calls + [call])
        return label

    def _call_labels(self) -> list:
        return [c if self._case(c) is None else f"generated {self._case(c)}" for c in self.calls]

    def _worst_calls(self, outputs: Mapping[str, np.ndarray]) -> list[int]:
        """Every call, the worst first: the worst call of each output beyond its bound, then by worst excess."""
        n = len(next(iter(outputs.values())))
        per_call = [{name: output_excess(np.asarray(self.s.reference[name])[c], np.asarray(outputs[name])[c], b)
                     for name, b in self.s.bounds.items()} for c in range(n)]
        chosen: list[int] = []
        for name in self.s.bounds:
            worst = max(range(n), key=lambda c: per_call[c][name])
            if per_call[worst][name] > 1.0 and worst not in chosen:
                chosen.append(worst)
        overall = sorted(range(n), key=lambda c: -max(per_call[c].values(), default=0.0))
        return chosen + [c for c in overall if c not in chosen]

    def _order(self, op: str) -> int:
        return self.graph.order.get(op, 1 << 30)

    def _histogram(self, ops: Iterable[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in ops:
            t = self.graph.op_type.get(op, "?")
            counts[t] = counts.get(t, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _worst_for(per: Mapping[str, float], outputs: Iterable[str]) -> float:
    """The worst excess of ``outputs``, on the clip and on every generated input."""
    outputs = set(outputs)
    return max((v for k, v in per.items() if k.split(" (generated ")[0] in outputs), default=0.0)


def _num(value) -> float:
    return math.inf if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _bucket(score: float) -> float:
    """Scores within ~1% of excess of each other rank equal (then the smaller region wins)."""
    return math.inf if math.isinf(score) else round(score / 0.005)


def _times(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.3g}x"


def selector_code(names: Sequence[str], proposed: int, already: int, label: str, histogram: Mapping[str, int],
                  method: str) -> str:
    """The proposal as code to paste into the converter (``names``: as the selector sees them)."""
    kinds = ", ".join(f"{t} {n}" for t, n in histogram.items())
    lines = [f"# coreml-parity audit {label}: {proposed} op(s) kept fp32 ({kinds})"
             + (f", verified by {method}" if method else "")]
    if already:
        lines.append(f"# (with the {already} op(s) the audited package already computed in fp32)")
    if len(names) > proposed + already:
        lines.append(f"# {len(names) - proposed - already} more name(s): ops coremltools fuses away after the "
                     "selector runs (they must stay fp32 for the fusion to happen)")
    lines.append("KEEP_FP32 = {")
    row = "   "
    for name in names:
        item = f" {json.dumps(name)},"
        if len(row) + len(item) > 118:
            lines.append(row)
            row = "   "
        row += item
    if row.strip():
        lines.append(row)
    lines.append("}")
    lines += ["", "", "def keep_fp32(block):  # pass as convert_traced(..., keep_fp32=keep_fp32)",
              "    return {op for op in block.operations if op.name in KEEP_FP32}"]
    return "\n".join(lines)


# ---- subjects: a FAMILY/COMPONENT, a package, a torch module ---------------------------------------------------
class SelectorOps:
    """The ops of a block as the keep-fp32 selector sees them (before coremltools' later passes): their names, types
    and the ops their inputs come from, recorded while converting. Maps saved-program names (sanitized: ``70`` is
    saved as ``op_70``, ``x.11`` as ``x_11``) back to these names, and finds the ops that exist only at conversion
    time (fused away later, e.g. ``sqrt`` then ``pow(2)`` -> ``identity``): such an op must be kept fp32 with its
    neighbours, or the fusion does not happen and it computes in fp16 between them."""

    def __init__(self, records: Sequence[Sequence]):
        records = [r for r in records if isinstance(r, (list, tuple)) and len(r) == 3]
        self.names = [str(r[0]) for r in records]
        self.types = {str(r[0]): str(r[1]) for r in records}
        self.producers = {str(r[0]): [str(p) for p in r[2]] for r in records}
        self.consumers: dict[str, list[str]] = {}
        for name, producers in self.producers.items():
            for p in producers:
                self.consumers.setdefault(p, []).append(name)
        by_saved: dict[str, list[str]] = {}
        for name in self.names:
            by_saved.setdefault(sanitized(name), []).append(name)
        self.by_saved = {saved: found[0] for saved, found in by_saved.items() if len(found) == 1}
        self.saved_names: set[str] = set()  # set by the subject: the op names the saved programs have

    @staticmethod
    def recording(keep: set[str] | None, records: list):
        """A keep-fp32 selector keeping the ops named in ``keep`` (None: none) that records the block's ops."""

        def select(block):
            for op in block.operations:
                if op.op_type == "const":
                    continue
                producers = []
                for value in op.inputs.values():
                    for var in value if isinstance(value, (list, tuple)) else (value,):
                        producer = getattr(var, "op", None)
                        if producer is not None and producer.op_type != "const":
                            producers.append(producer.name)
                records.append([op.name, op.op_type, producers])
            return {op for op in block.operations if keep and op.name in keep}

        return select

    def names_for(self, keep: Iterable[str]) -> list[str]:
        """Selector-time names of the saved-program ops ``keep``, with the conversion-time-only ops between them."""
        chosen = {self.by_saved.get(n, n) for n in keep}
        hidden = [n for n in self.names if self.types[n] != "cast" and sanitized(n) not in self.saved_names]
        changed = True
        while changed:
            changed = False
            for name in hidden:
                around = self.producers.get(name, []) + self.consumers.get(name, [])
                if name not in chosen and around and all(x in chosen for x in around):
                    chosen.add(name)
                    changed = True
        order = {n: i for i, n in enumerate(self.names)}
        return sorted(chosen, key=lambda n: (order.get(n, len(order)), n))


def _token(selector_names: Iterable[str] | None) -> str:
    if selector_names is None:
        return "all-fp16"
    digest = hashlib.sha256(json.dumps(sorted(selector_names)).encode()).hexdigest()[:16]
    return f"audit-keep-{digest}"


def module_subject(module, example_inputs: Mapping[str, Any], output_names: Sequence[str],
                   bounds: Mapping[str, Bound], feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
                   label: str = "module", convert: Callable | None = None) -> Subject:
    """A torch module converted all-fp16 through :func:`conversions.export.convert_traced` (or ``convert(module,
    precision, keep_fp32)`` -> MLModel), audited on ``feeds`` (default: the example inputs) against the torch
    module's own outputs, re-exported the same way to verify."""
    import torch

    from .export import convert_traced, keep_fp32_override
    from .runtime import load_model

    def build(precision, keep_fp32=None):
        if convert is not None:
            return convert(module, precision, keep_fp32)
        return convert_traced(module, {k: torch.as_tensor(v) for k, v in example_inputs.items()}, output_names,
                              precision=precision, keep_fp32=keep_fp32)

    records: list = []
    with keep_fp32_override(SelectorOps.recording(None, records), _token(None)):
        program = load_model(build("fp16"), backend="mil")
    exact = load_model(build("fp32"), backend="mil", precision="fp32")
    selector = SelectorOps(records)
    selector.saved_names = {base_name(op.name) for op in _computed_ops(program)} | {
        op.name for op in _computed_ops(exact)}
    feeds = [dict(f) for f in (feeds or [{k: np.asarray(v) for k, v in example_inputs.items()}])]
    reference: dict[str, list] = {}
    module = module.eval()
    for f in feeds:
        with torch.no_grad():
            out = module(*(torch.as_tensor(f[k]) for k in example_inputs))
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        for name, value in zip(output_names, out):
            reference.setdefault(name, []).append(value.detach().numpy())

    def reexport(keep):
        names = set(selector.names_for(keep))
        with keep_fp32_override(SelectorOps.recording(names, []), _token(names)):
            return build("fp16")

    return Subject(label, program, exact, "the fp32 export", dict(bounds), {k: np.stack(v) for k, v in reference.items()},
                   feeds, reexport=reexport, selector=selector, evidence="the given inputs")


def generated_inputs(component, model, count: int) -> list[dict]:
    """``count`` inputs drawn from the component's ``random_inputs`` strategy (what ``test_parity_random`` checks),
    deterministically (hypothesis derandomized, generation only)."""
    if count <= 0:
        return []
    from hypothesis import HealthCheck, Phase, given, settings

    drawn: list[dict] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(component.random_inputs(model))
    def draw(feeds):
        drawn.append({k: np.asarray(v) for k, v in feeds.items()})

    draw()
    return drawn[:count]


def family_subject(family, component, export_dir: str | os.PathLike, inputs: Mapping[str, np.ndarray] | None = None,
                   package: str | os.PathLike | None = None, progress: Callable[[str], None] = _progress,
                   generated: int | None = None, bounds: str = "clip") -> Subject:
    """A FAMILY/COMPONENT of the registry: its all-fp16 export (or ``package``) audited on the family's clip (or one
    call on ``inputs``) and on ``generated`` inputs of its ``random_inputs`` (default: DEFAULT_GENERATED, none with
    ``inputs``) against its torch reference and declared fp16 bounds (``bounds="random"``: its random_bounds, e.g. for
    a generated input given as ``inputs``), re-exported through its own converter."""
    from .engine import ParitySession
    from .export import DEFAULT_TARGET, METADATA_PREFIX, export_key, keep_fp32_override, package_metadata
    from .parity import torch_runner
    from .runtime import load_model

    session = ParitySession(export_dir)
    progress(f"building the {family.name} reference")
    model, weights = session.reference(family)
    label = f"{family.name}/{component.name}" + (f" ({package})" if package is not None else "")

    def export(keep_selector_names: set[str] | None, what: str):
        records: list = []
        token = _token(keep_selector_names)
        with keep_fp32_override(SelectorOps.recording(keep_selector_names, records), token):
            key = export_key(component.convert, weights, {"family": family.name, "component": component.name,
                                                          "precision": "fp16", "target": DEFAULT_TARGET,
                                                          "audit_format": AUDIT_EXPORT_FORMAT})

            def build():
                progress(f"exporting {label} ({what})")
                mlmodel = component.convert(model, "fp16", DEFAULT_TARGET)
                meta = mlmodel.user_defined_metadata
                meta[METADATA_PREFIX + "model"] = family.name
                meta[METADATA_PREFIX + "component"] = component.name
                meta[METADATA_PREFIX + SELECTOR_OPS_KEY] = json.dumps(records)
                return mlmodel

            return session.cache.get_or_export(f"{family.name}-{component.name}-audit", key, build).path

    all_fp16_path = export(None, "every op in fp16")
    selector = SelectorOps(json.loads(package_metadata(all_fp16_path).get(SELECTOR_OPS_KEY, "[]")))
    all_fp16 = load_model(all_fp16_path, backend="mil")
    program = all_fp16 if package is None else load_model(package, backend="mil")
    progress(f"exporting {label} in fp32 and with its converter's own keep-fp32 set (or reusing the cached ones)")
    exact = load_model(session.package(family, component, "fp32").path, backend="mil", precision="fp32")
    converter_own = load_model(session.package(family, component, "fp16").path, backend="mil")
    universe = set(fp16_ops(all_fp16))
    selector.saved_names = {base_name(op.name) for op in _computed_ops(all_fp16)} | {
        op.name for op in _computed_ops(exact)}
    converter_fp32 = frozenset(universe - set(fp16_ops(converter_own)))
    already = frozenset(universe - set(fp16_ops(program))) if package is not None else frozenset()
    notes = []
    if not converter_fp32:
        converter_fp32 = None
    if inputs is None:
        progress("streaming the torch reference over the clip")
        reference = session.torch_clip_stream(family, component).outputs
        call_feeds, state, initial = session.clip_feeds(family, component), component.state, \
            session.initial_state(family, component)
    else:
        run = torch_runner(component.reference(model), component.inputs, component.reference_outputs)
        reference = {k: np.stack([v]) for k, v in run(dict(inputs)).items()}
        call_feeds, state, initial = [dict(inputs)], {}, {}
        notes.append("audited on the given --input (one call) instead of the family's clip")

    def reexport(keep):
        return export(set(selector.names_for(keep)), f"{len(keep)} op(s) kept fp32")

    count = (0 if inputs is not None else DEFAULT_GENERATED) if generated is None else generated
    cases = generated_inputs(component, model, count)
    if cases:
        progress(f"drawing {len(cases)} generated input(s) of {label} (its random_inputs) and their torch outputs")
    run = torch_runner(component.reference(model), component.inputs, component.reference_outputs)
    case_reference = [{k: v for k, v in run(dict(f)).items() if k in component.outputs} for f in cases]
    declared = component.bounds["fp16"] if bounds == "clip" else component.random_bounds["fp16"]
    if bounds != "clip":
        notes.append("the clip's calls (or --input) are held to the component's random_bounds (--bounds random)")
    return Subject(label, program, exact, "the fp32 export", dict(declared),
                   {k: np.asarray(v) for k, v in reference.items() if k in component.outputs}, list(call_feeds),
                   dict(state), dict(initial), reexport, selector, already, converter_fp32, notes, cases, case_reference,
                   dict(component.random_bounds["fp16"]) if cases else {},
                   "whole clip" if inputs is None else "the given --input")


def package_subject(path: str | os.PathLike, inputs: Mapping[str, np.ndarray], atol: float,
                    psnr: float | None) -> Subject:
    """A bare package: fp16 storage against the same program with fp32 storage, on one call's ``inputs``; the
    proposal can only be checked on the runtime's emulation (its weights stay as stored)."""
    from .runtime import load_model

    program = load_model(path, backend="mil")
    exact = load_model(path, backend="mil", precision="fp32")
    reference = {k: np.stack([v]) for k, v in exact.predict(dict(inputs)).items()}
    bounds = {}
    for spec in program.outputs:
        if np.dtype(spec.dtype).kind == "f":
            bounds[spec.name] = Bound(atol, 0.0, -math.inf if psnr is None else psnr, "--atol/--psnr")
        else:
            bounds[spec.name] = Bound(0.0, 0.0, -math.inf, "non-float output: exact")
    already = frozenset()
    notes = ["bare package: the reference is the same program with fp32 storage (its weights stay as stored, fp16 "
             "included), the proposal is verified on the runtime's emulation only; re-export verification needs "
             "FAMILY/COMPONENT"]
    return Subject(str(path), program, exact, "the same program with fp32 storage", bounds, reference,
                   [dict(inputs)], reexport=None, already_fp32=already, notes=notes, evidence="the given --input")


def audit(subject: Subject, calls: int = DEFAULT_CALLS, headroom: float = DEFAULT_HEADROOM,
          progress: Callable[[str], None] | None = _progress) -> AuditResult:
    """Run the doctor on ``subject`` (see the module docstring)."""
    return Doctor(subject, calls=calls, headroom=headroom, progress=progress).run()


# ---- the text report ---------------------------------------------------------------------------------------------
def _figures_line(row: dict) -> str:
    if row.get("problem"):
        return f"{row['output']}: {row['problem']}"
    bound = "no elementwise bound" if row["atol"] is None else f"atol {row['atol']:g}"
    psnr = "" if not math.isfinite(row["psnr_min_db"]) else f", floor {row['psnr_min_db']:g} dB"
    return (f"{'PASS' if row['passed'] else 'FAIL'} {row['output']}: max_abs {row['max_abs']:.3g} ({bound}), "
            f"PSNR {row['psnr_db']:.1f} dB{psnr} -> {_times(row['excess'])} of the bound")


def _step_figures(row: dict) -> str:
    if row.get("problem"):
        return f"{row['output']} {row['problem']}"
    parts = [f"max_abs {row['max_abs']:.3g}"]
    if math.isfinite(row["psnr_min_db"]) and row["psnr_min_db"] > 0:
        parts.append(f"{row['psnr_db']:.1f} dB")
    return f"{row['output']} {_times(row['excess'])} ({', '.join(parts)})"


def _generated_line(summary: dict) -> str:
    if not summary:
        return ""
    worst = ", ".join(_step_figures(row) for row in summary["worst"])
    return (f"generated inputs ({summary['total']}, against random_bounds): {summary['passed']} pass; worst: input "
            f"{summary['worst_case']}: {worst}")


def _generated_step(per: Mapping[str, float]) -> str:
    cases = {k: v for k, v in per.items() if " (generated " in k}
    if not cases:
        return ""
    beyond = sum(v > 1.0 for v in cases.values())
    return f"; traced generated inputs: {beyond} of {len(cases)} beyond, worst {_times(max(cases.values()))}"


def format_report(result: AuditResult) -> str:
    lines = [f"coreml-parity audit {result.subject}"]
    lines.append(f"audited program, fp16 storage, {result.evidence} ({result.clip_calls} call(s)):")
    lines += [f"  {_figures_line(r)}" for r in result.all_fp16]
    if result.generated:
        lines.append(f"  {_generated_line(result.generated)}")
    if result.passes_already:
        more = f" (beyond the {len(result.already_fp32)} op(s) it computes in fp32 already)" if result.already_fp32 \
            else ""
        lines.append(f"it passes its fp16 bounds already: nothing to keep fp32{more}.")
        lines += [f"note: {n}" for n in result.notes]
        return "\n".join(lines)
    lines.append(f"exact values: {result.exact_source}; traced call(s) {result.calls}; error-jump floor "
                 f"{result.jump_floor:.2g}; {result.fp16_op_count} op(s) compute in fp16")
    if result.flags:
        lines += ["", "flagged ops, ranked by their effect on the outputs (the worst error of the outputs an op feeds, "
                  f"in units of its bound; all fp16: {_times(result.steps[0].excess if result.steps else None)}):",
                  f"  {'#':>3}  {'op':<28} {'type':<14} {'if exact':>9} {'if kept':>9}  {'region':>6}  what"]
        for i, f in enumerate(result.flags[:TABLE_ROWS], 1):
            lines.append(f"  {i:>3}  {f.op:<28} {f.op_type:<14} {_times(f.excess_if_exact):>9} "
                         f"{_times(f.excess_if_kept):>9}  {len(f.region):>6}  {f.describe()}")
        if len(result.flags) > TABLE_ROWS:
            lines.append(f"  ... {len(result.flags) - TABLE_ROWS} more (--json lists them all)")
        lines.append("  (if exact: this op's output replaced by its exact value in the fp16 run; if kept: the op and "
                     "its region -- the fp16 ops its damaged inputs come from, and consumers while its value is out "
                     "of fp16's range -- computed in fp32, emulated)")
    if result.steps:
        lines += ["", f"greedy (emulated mixed export, traced calls; target: every output within {result.headroom:g}"
                  " of its bound):"]
        for i, step in enumerate(result.steps):
            outs = ", ".join(_step_figures(row) for row in step.figures) or \
                ", ".join(f"{k} {_times(v)}" for k, v in step.outputs.items())
            outs += _generated_step(step.outputs)
            if i == 0:
                lines.append(f"  start: nothing kept -> {outs}")
                continue
            added = ", ".join(step.added[:12]) + (f", ... ({len(step.added)})" if len(step.added) > 12 else "")
            via = f"region of {step.flagged_op}" if step.flagged_op else "all flagged regions"
            lines.append(f"  step {i}: + {len(step.added)} op(s), {via}: {added}")
            lines.append(f"          {step.kept} kept -> {outs}" + (f"  [{step.note}]" if step.note else ""))
    if result.greedy_set and result.proposal:
        dropped = [n for n in result.greedy_set if n not in result.proposal]
        lines.append(f"  pruned: {len(result.greedy_set)} -> {len(result.proposal)} op(s)"
                     + (f" (dropped {', '.join(dropped[:12])}{' ...' if len(dropped) > 12 else ''})" if dropped
                        else ""))
    for v in result.verifications:
        lines += ["", f"verification by {v.method} ({len(v.kept)} op(s) kept fp32): {'PASS' if v.passed else 'FAIL'}"]
        lines += [f"  {_figures_line(r)}" for r in v.outputs]
        if v.generated:
            lines.append(f"  {_generated_line(v.generated)}")
        if v.method == "re-export":
            worst = max((r["excess"] for r in v.outputs), default=0.0)
            worst = max([worst, v.generated.get("worst_excess", 0.0)]) if v.generated else worst
            lines.append(f"  worst output {_times(worst)} of its bound; the emulation predicted "
                         f"{_times(v.emulated_excess)}")
            lines.append(f"  {len(v.matched)} of {len(v.kept)} proposed op(s) compute fp32 in the re-export"
                         + (f"; not matched: {', '.join(v.unmatched)}" if v.unmatched else "")
                         + (f"; also fp32 there: {', '.join(v.stray_fp32[:8])}" if v.stray_fp32 else ""))
    if result.converter_fp32 is not None and result.proposal:
        inside = [n for n in result.proposal if n in set(result.converter_fp32)]
        kinds = ", ".join(f"{t} {n}" for t, n in (result.converter_op_types or {}).items())
        lines += ["", f"the converter's own keep-fp32 set: {len(result.converter_fp32)} op(s) ({kinds}); the proposal "
                  f"keeps {len(result.proposal)}, {len(inside)} of them within it"]
    if result.verified:
        lines += ["", "paste into the converter:", "", result.selector_code]
    elif not result.passes_already:
        tried = "; ".join(f"{len(v.kept)} op(s) by {v.method}: FAIL" for v in result.verifications) or "none verified"
        lines += ["", f"no keep-fp32 set within the flagged ops verifies (tried: {tried})"]
    lines += [f"note: {n}" for n in result.notes]
    lines.append(f"({result.seconds:.0f} s of streaming, tracing and search, exports and the reference aside)")
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------------------------
def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "audit", help="find the ops an fp16 program must keep in fp32 (overflow, underflow, error jumps), verified",
        description="The fp16 doctor: traces the program with fp16 and exact values, ranks the ops that overflow, "
                    "underflow or make the error jump by their effect on the outputs, and proposes the keep-fp32 op "
                    "set that brings the outputs within the component's declared bounds (verified by re-export), as "
                    "code to paste into the converter.")
    p.add_argument("target", metavar="PACKAGE|FAMILY/COMPONENT",
                   help="a .mlpackage, or a family/component of the registry (e.g. parakeet-tdt-v3/preprocessor)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="one call's inputs instead of the family's clip (one per program input)")
    p.add_argument("--calls", type=int, default=DEFAULT_CALLS,
                   help=f"calls of the clip to trace, the worst ones, and as many of the failing generated inputs "
                        f"(default {DEFAULT_CALLS}; more are traced where the whole evidence disagrees)")
    p.add_argument("--generated", type=int, default=None, metavar="N",
                   help=f"FAMILY/COMPONENT: also hold the proposal to N inputs drawn from the component's random_inputs "
                        f"against its random_bounds, as test_parity_random does (default {DEFAULT_GENERATED}; 0 with "
                        "--input unless given)")
    p.add_argument("--bounds", choices=["clip", "random"], default="clip",
                   help="FAMILY/COMPONENT: the declared fp16 bounds the clip (or --input) is held to: the clip's "
                        "(default) or those of generated inputs (random_bounds: for an --input drawn like them)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--export-dir", default=".cache/exports", help="export cache (default .cache/exports)")
    p.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                   help="share of each bound the proposal may use, on the clip and on the generated inputs "
                        "(default 0.9; 1 = the whole bound)")
    p.add_argument("--atol", type=float, help="bare package: the elementwise bound of every float output")
    p.add_argument("--psnr", type=float, help="bare package: the PSNR floor (dB) of every float output")
    p.add_argument("--torch-threads", type=int, default=1, metavar="N",
                   help="torch intra-op threads (default 1, as the test suite: the figures do not depend on the core "
                        "count, and the runtime's many small fp16 roundings run faster; 0 = torch's default)")
    p.set_defaults(func=run)
    return p


def _find_component(spec: str):
    from . import registry

    family_name, sep, component_name = spec.partition("/")
    try:
        family = registry.find_family(family_name)
    except KeyError:
        family = None
    if not sep or family is None or component_name not in [c.name for c in family.components]:
        known = [f"{f.name}/{c.name}" for f in registry.families() for c in f.components]
        raise UsageError(f"{spec!r} is neither a package nor a known FAMILY/COMPONENT; known: {', '.join(known)}")
    return family, family.component(component_name)


def _read_inputs(pairs: Sequence[str], names: Sequence[str]) -> dict[str, np.ndarray] | None:
    """``--input NAME=FILE.npy`` pairs read and checked against the program's input names (None: none given)."""
    from .__main__ import _parse_inputs

    if not pairs:
        return None
    try:
        feeds = _parse_inputs(list(pairs))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    unknown = sorted(set(feeds) - set(names))
    if unknown:
        raise UsageError(f"--input {', '.join(unknown)}: the program has no such input; its inputs are "
                         f"{', '.join(names)}")
    missing = [n for n in names if n not in feeds]
    if missing:
        raise UsageError(f"--input: missing {', '.join(missing)} (the program's inputs are {', '.join(names)})")
    return feeds


def _subject(args) -> Subject:
    from .export import package_metadata
    from .runtime import ModelPackageError, load_model

    if args.calls < 1:
        raise UsageError("--calls must be at least 1")
    if args.generated is not None and args.generated < 0:
        raise UsageError("--generated must be 0 or more")
    if not Path(args.target).exists():
        family, component = _find_component(args.target)
        inputs = _read_inputs(args.input, component.inputs)
        return family_subject(family, component, args.export_dir, inputs, generated=args.generated,
                              bounds=args.bounds)
    try:
        program = load_model(args.target, backend="mil")
        meta = package_metadata(args.target)
    except (ModelPackageError, NotImplementedError, ValueError, OSError) as exc:
        raise UsageError(f"{args.target}: {exc}") from None
    inputs = _read_inputs(args.input, [spec.name for spec in program.inputs])
    try:
        family, component = _find_component(f"{meta.get('model')}/{meta.get('component')}")
    except UsageError:
        family = component = None
    if family is not None:
        return family_subject(family, component, args.export_dir, inputs, package=args.target,
                              generated=args.generated, bounds=args.bounds)
    if inputs is None:
        raise UsageError(f"{args.target}: its metadata names no known family/component, so there is no clip: give "
                         "--input NAME=FILE.npy for each input")
    if args.atol is None:
        raise UsageError(f"{args.target}: a bare package declares no bounds: give --atol (and optionally --psnr)")
    return package_subject(args.target, inputs, args.atol, args.psnr)


def run(args) -> int:
    import torch

    from .engine import FamilyUnavailable

    threads = getattr(args, "torch_threads", 1)
    if threads < 0:
        print("error: --torch-threads must be 0 (torch's default) or more", file=sys.stderr)
        return 2
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        try:
            subject = _subject(args)
        except (UsageError, FamilyUnavailable) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        result = audit(subject, calls=args.calls, headroom=args.headroom)
    finally:
        torch.set_num_threads(before)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_report(result))
    return result.exit_code
