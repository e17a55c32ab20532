"""Per-op intermediates of one prediction, and the comparison of two such traces.

``compare_traces(reference, candidate)`` answers the debugging question behind every failed parity check:
*which op made it diverge?* For each op present in both traces it measures the candidate's error against the
reference, and flags

- the ops whose own error jumps: error (relative to the reference's magnitude) at least ``jump_factor`` times
  the largest error among its inputs, and above ``floor``. Errors that merely propagate are not flagged;
- the first ops where inf or NaN appear in the candidate although all their inputs were finite.

Typical pairs: the fp16 program vs the same program at ``precision="fp32"``, a quantized package vs its
unquantized twin, the portable runtime vs Core ML (traces of the former only).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np


@dataclass
class TracedOp:
    """One executed op: its type, the variable names it read, and its outputs (var name -> array)."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: "OrderedDict[str, np.ndarray]"

    @property
    def value(self) -> np.ndarray:
        if len(self.outputs) != 1:
            raise ValueError(f"op {self.name!r} ({self.op_type}) has {len(self.outputs)} outputs: use .outputs")
        return next(iter(self.outputs.values()))


class Trace(OrderedDict):
    """Ordered mapping of MIL op name -> :class:`TracedOp`, in execution order."""

    def by_var(self) -> dict[str, np.ndarray]:
        return {var: arr for op in self.values() for var, arr in op.outputs.items()}


@dataclass
class OpError:
    op: str
    op_type: str
    output: str
    max_abs: float
    rel_error: float  # max_abs / max|reference|
    input_rel_error: float  # the largest rel_error among the op's inputs (0 for program inputs)
    nonfinite: bool  # candidate has inf/NaN here
    introduces_nonfinite: bool
    jump: bool

    def __str__(self) -> str:
        flags = []
        if self.jump:
            flags.append("error jumps here")
        if self.introduces_nonfinite:
            flags.append("first inf/NaN")
        return (f"{self.op} ({self.op_type}) -> {self.output}: max_abs={self.max_abs:.3g} rel={self.rel_error:.3g} "
                f"(inputs rel={self.input_rel_error:.3g})" + (f" [{', '.join(flags)}]" if flags else ""))


@dataclass
class TraceComparison:
    rows: list[OpError] = field(default_factory=list)

    @property
    def jumps(self) -> list[OpError]:
        return [r for r in self.rows if r.jump]

    @property
    def first_nonfinite(self) -> list[OpError]:
        return [r for r in self.rows if r.introduces_nonfinite]

    def culprits(self, limit: int = 5) -> list[OpError]:
        """The ops to look at first: where inf/NaN appear, then the largest error jumps, in program order."""
        picked = self.first_nonfinite[:limit]
        jumps = sorted(self.jumps, key=lambda r: r.rel_error / max(r.input_rel_error, 1e-12), reverse=True)
        for r in jumps:
            if len(picked) >= limit:
                break
            if r not in picked:
                picked.append(r)
        order = {id(r): i for i, r in enumerate(self.rows)}
        return sorted(picked, key=lambda r: order[id(r)])

    def summary(self, limit: int = 5) -> str:
        culprits = self.culprits(limit)
        if not culprits:
            return "no op introduces a notable error"
        return "\n".join(str(r) for r in culprits)


def compare_traces(reference: Trace, candidate: Trace, jump_factor: float = 4.0, floor: float = 1e-3) -> TraceComparison:
    rel_of_var: dict[str, float] = {}
    finite_of_var: dict[str, bool] = {}
    result = TraceComparison()
    for name, cand_op in candidate.items():
        ref_op = reference.get(name)
        if ref_op is None:
            continue
        in_rel = max((rel_of_var.get(v, 0.0) for v in cand_op.inputs), default=0.0)
        inputs_finite = all(finite_of_var.get(v, True) for v in cand_op.inputs)
        for var, cand in cand_op.outputs.items():
            ref = ref_op.outputs.get(var)
            if ref is None or np.shape(ref) != np.shape(cand):
                continue
            ref64 = np.asarray(ref, dtype=np.float64)
            cand64 = np.asarray(cand, dtype=np.float64)
            finite = bool(np.all(np.isfinite(cand64)))
            ref_finite = bool(np.all(np.isfinite(ref64)))
            with np.errstate(invalid="ignore", over="ignore"):
                diff = np.abs(ref64 - cand64)
            mask = np.isfinite(diff)
            max_abs = float(diff[mask].max()) if mask.any() else 0.0
            scale = float(np.abs(ref64[np.isfinite(ref64)]).max()) if np.isfinite(ref64).any() else 0.0
            rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
            rel_of_var[var] = rel
            finite_of_var[var] = finite
            introduces = (not finite) and ref_finite and inputs_finite
            jump = rel > floor and rel >= jump_factor * in_rel
            result.rows.append(OpError(name, cand_op.op_type, var, max_abs, rel, in_rel, not finite, introduces, jump))
    return result
