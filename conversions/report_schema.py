"""What a report record means, shared by the report (:mod:`conversions.report`) and the CI job summary
(``scripts/job_summary.py``), so both name the same output as the worst one. Standard library only: the job summary
runs on the bare runner Python, without the project installed.
"""

from __future__ import annotations

import math
from typing import Any


def as_float(value: Any) -> float | None:
    """A number from a record (``None``, strings and booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed")


def outcome_of(record: dict) -> str:
    """A record's outcome: pytest's final verdict of its test (merged in by the plugin from pytest's report hooks),
    else derived from its ``match`` (records written outside a pytest run)."""
    outcome = record.get("outcome")
    if outcome in OUTCOMES:
        return outcome
    return "passed" if record.get("match") is True else "failed"


RAN = ("passed", "failed", "xpassed")  # outcomes of checks that compared something


def tally(records: list[dict]) -> str:
    """The outcome counts of ``records`` in one phrase: ``3 passed, 1 failed, 412 skipped``."""
    counts = {o: sum(1 for r in records if outcome_of(r) == o) for o in OUTCOMES}
    return ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no results"


def reason_counts(records: list[dict], outcome: str) -> list[tuple[str, int]]:
    """(reason, count) of the records with ``outcome``, most frequent first (one line each in a summary)."""
    reasons: dict[str, int] = {}
    for r in records:
        if outcome_of(r) == outcome:
            reason = " ".join(str(r.get("reason") or r.get("failure") or "no reason recorded").split())
            reasons[reason] = reasons.get(reason, 0) + 1
    return sorted(reasons.items(), key=lambda kv: -kv[1])


def nonfinite_text(value: float) -> str | None:
    """``NaN``, ``inf`` or ``-inf`` for a non-finite number (errors are written that way), else None."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


def worst_output(record: dict) -> tuple[str, float | None, float | None] | None:
    """``(output, max_abs, atol)`` of the output furthest from its absolute bound: among outputs with an ``atol``,
    one that failed its allclose check first, then the largest ``max_abs / atol`` (outputs differ in scale, so the
    ratio to their own bound says which one is closest to failing; ``atol`` 0 means exact, any error is infinitely
    far). Outputs whose ``atol`` is null are held to a PSNR bound only (their allclose flag means nothing), so they
    are picked, by largest ``max_abs``, only when no output has an ``atol``. A NaN error counts as the worst
    possible. None without metrics."""
    metrics = record.get("metrics") or {}
    bounds = record.get("bounds") or {}
    best = None
    for output, m in metrics.items():
        if not isinstance(m, dict):
            continue
        max_abs = as_float(m.get("max_abs"))
        atol = as_float((bounds.get(output) or {}).get("atol"))
        err = math.inf if max_abs is None or math.isnan(max_abs) else max_abs
        if atol is None:
            rank = (False, False, err)
        elif atol > 0:
            rank = (True, m.get("allclose") is False, err / atol)
        else:
            rank = (True, m.get("allclose") is False, math.inf if err > 0 else 0.0)
        if best is None or rank > best[0]:
            best = (rank, output, max_abs, atol)
    return None if best is None else best[1:]
