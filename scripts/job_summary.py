"""Markdown summary of a parity report directory, for a CI job's summary page (``$GITHUB_STEP_SUMMARY``).

Usage: ``python scripts/job_summary.py REPORT_DIR >> "$GITHUB_STEP_SUMMARY"``

For each model directory ``REPORT_DIR/<model>/`` it prints

- from ``metadata.json``: matched/total and a table of parity results (component, variant, test, match, the worst
  output's max abs error against that output's ``atol`` bound) with the failure messages below it;
- from ``quantization_summary.json``: a collapsed table of the quantization sweep (strategy, weight size,
  compression, quality vs torch of the primary output, task metrics, match or failure).

Why a separate script and not pytest's output: the summary page is what a reviewer sees first, and a table of
"which component on which backend is how far from its bound" answers the PR question faster than a log.

It runs in the CI step that follows the tests with ``if: always()``, so it must not turn a report problem into a
second failure: a missing directory or file, or an unreadable one, becomes a line saying so and the exit code
stays 0 (the test step already decides the job's outcome). Only standard library, so it runs on the bare runner
Python. The report files are read with Python's ``json``, which accepts the ``NaN``/``Infinity`` tokens the
report writes for non-finite errors (see ``conversions/report.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The rule for the worst output is the report's own (a stdlib-only module of the project): both name the same one.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conversions.report_schema import (RAN, as_float, nonfinite_text, outcome_of, reason_counts, tally,  # noqa: E402
                                       worst_output)

METADATA = "metadata.json"
QUANTIZATION = "quantization_summary.json"
# Long failure messages (coremltools errors run to several lines) would make the page unreadable; the full text
# is in the uploaded report artifact.
MAX_FAILURE_CHARS = 300
MISSING = "—"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: job_summary.py REPORT_DIR", file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    sys.stdout.write(render(Path(args[0])))
    return 0


def render(report_dir: Path) -> str:
    """The whole summary as markdown, one section per model directory of ``report_dir``."""
    if not report_dir.is_dir():
        return f"No parity report: `{report_dir}` does not exist (the test run wrote no report).\n"
    # hidden folders (.records: a run in progress) are not models
    model_dirs = sorted(p for p in report_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not model_dirs:
        return f"No parity report: `{report_dir}` has no model directories.\n"
    return "\n".join(_render_model(d) for d in model_dirs)


def _render_model(model_dir: Path) -> str:
    lines = [f"## Parity: {model_dir.name}", ""]
    metadata, problem = _load(model_dir / METADATA)
    if metadata is None:
        lines += [problem, ""]
    else:
        lines += _parity_section(metadata)
    quantization, problem = _load(model_dir / QUANTIZATION)
    if quantization is None:
        lines += [problem, ""]
    else:
        lines += _quantization_section(quantization)
    return "\n".join(lines)


def _load(path: Path) -> tuple[dict | None, str]:
    if not path.is_file():
        return None, f"No `{path.name}` in `{path.parent}`."
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"Could not read `{path}`: {_cell(str(e))}"
    if not isinstance(data, dict):
        return None, f"Could not read `{path}`: expected a JSON object, got {type(data).__name__}"
    return data, ""


# ---------------------------------------------------------------------------------------------------------------
# parity results (metadata.json)


def _reasons(records: list[dict], outcome: str) -> list[str]:
    """One line per reason of the records with ``outcome`` (e.g. 412 x Core ML runs on macOS only)."""
    return [f"- {n} x {_cell(reason)}" for reason, n in reason_counts(records, outcome)]


def _parity_section(metadata: dict) -> list[str]:
    results = [r for r in metadata.get("results") or [] if isinstance(r, dict)]
    ran = [r for r in results if outcome_of(r) in RAN]
    failed = sum(1 for r in results if outcome_of(r) == "failed")
    verdict = f"{failed} FAILED" if failed else ("all passed" if ran else "NOTHING RAN")
    partial = " — partial run merged into the commit's report" if (metadata.get("summary") or {}).get("partial") else ""
    lines = [f"**Parity: {tally(results)}** ({verdict}){_provenance(metadata)}{partial}", ""]
    if not results:
        return lines + ["No parity results in `metadata.json`.", ""]
    skipped = _reasons(results, "skipped")
    if skipped:
        lines += ["Skipped:", "", *skipped, ""]
    if not ran:
        return lines
    lines += [
        "| component | variant | test | outcome | worst output | max abs error | atol | error / atol |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    results = ran
    unbounded = False
    for r in results:
        worst = worst_output(r)
        output, max_abs, atol = worst if worst else (MISSING, None, None)
        unbounded |= worst is not None and atol is None
        ratio = max_abs / atol if max_abs is not None and atol else None
        lines.append(_row(r.get("component"), r.get("variant"), r.get("test"), _verdict(r), output,
                          _number(max_abs), _number(atol), _number(ratio, "{:.2f}")))
    lines.append("")
    if unbounded:
        lines += [f"{MISSING} in *atol*: no output of that result has an absolute bound (PSNR floors only).", ""]
    lines += _failures("Failures", results, lambda r: f"{r.get('component')} / {r.get('variant')} / {r.get('test')}")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# quantization sweep (quantization_summary.json)


def _quantization_section(summary: dict) -> list[str]:
    variants = [v for v in summary.get("variants") or [] if isinstance(v, dict)]
    failed = sum(1 for v in variants if outcome_of(v) == "failed")
    lines = [f"**Quantization sweep: {tally(variants)}**" + (f" ({failed} FAILED)" if failed else ""), ""]
    if not variants:
        return lines + ["No variants in `quantization_summary.json`.", ""]
    ran = [v for v in variants if outcome_of(v) in RAN]
    # Collapsed: the sweep is components x strategies rows, and the parity table is what gates.
    lines += [
        "<details><summary>Quantization variants</summary>",
        "",
        "Gate: no figure worse than its pinned baseline beyond its slack (the quality itself is a figure, not a "
        "pass mark: a strategy that wrecks a model passes the gate if it wrecked it before too).",
        "",
        "| component | strategy | variant | weight KiB | compression | quality vs torch | task metrics | gate |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for v in ran:
        weight = as_float(v.get("weight_bytes"))
        lines.append(_row(v.get("component"), v.get("strategy"), v.get("variant"),
                          _number(None if weight is None else weight / 1024, "{:.1f}"),
                          _number(as_float(v.get("compression_ratio")), "{:.2f}x"),
                          _number(as_float(v.get("primary_quality_vs_torch")), "{:.4f}"),
                          _task_metrics(v.get("task_metrics")), _verdict(v)))
    lines += ["", "</details>", ""]
    declared = [v for v in variants if outcome_of(v) == "xfailed"]
    if declared:
        lines += ["Declared inapplicable (strict xfail):", ""]
        lines += [f"- {_cell(str(v.get('component')))} / {_cell(str(v.get('strategy')))}: "
                  f"{_cell(str(v.get('reason') or v.get('failure') or ''))}" for v in declared]
        lines.append("")
    skipped = _reasons(variants, "skipped")
    if skipped:
        lines += ["Skipped:", "", *skipped, ""]
    lines += _failures("Failures", variants, lambda v: f"{v.get('component')} / {v.get('strategy')} / {v.get('variant')}")
    return lines


def _task_metrics(metrics: Any) -> str:
    if not isinstance(metrics, dict) or not metrics:
        return MISSING
    parts = []
    for name, value in metrics.items():
        number = as_float(value)
        if number is None:
            parts.append(f"{name} {value}")
        elif isinstance(value, int):
            parts.append(f"{name} {value}")
        else:
            parts.append(f"{name} {number:.3f}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# formatting


def _provenance(data: dict) -> str:
    commit = data.get("git_commit")
    system = (data.get("platform") or {}).get("system") if isinstance(data.get("platform"), dict) else None
    bits = [f"commit `{str(commit)[:10]}`" if commit else None, system]
    bits = [b for b in bits if b]
    return f" — {', '.join(bits)}" if bits else ""


def _verdict(record: dict) -> str:
    return {"passed": "✅", "failed": "❌", "xpassed": "⚠️ xpassed", "xfailed": "➖ xfailed",
            "skipped": "⏭ skipped"}[outcome_of(record)]


def _failures(heading: str, records: list[dict], label) -> list[str]:
    failed = [r for r in records if outcome_of(r) == "failed"]
    if not failed:
        return []
    lines = [f"{heading}:", ""]
    for r in failed:
        text = r.get("failure") or "no failure message recorded"
        text = " ".join(str(text).split())
        if len(text) > MAX_FAILURE_CHARS:
            text = text[:MAX_FAILURE_CHARS - 1] + "…"
        lines.append(f"- **{_cell(label(r))}**: {_cell(text)}")
    return lines + [""]


def _number(value: float | None, fmt: str = "{:.2e}") -> str:
    if value is None:
        return MISSING
    return nonfinite_text(value) or fmt.format(value)


def _cell(value: Any) -> str:
    """Text safe inside a markdown table cell or list item: one line, pipes escaped, HTML not interpreted."""
    text = MISSING if value is None else " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _row(*cells: Any) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


if __name__ == "__main__":
    sys.exit(main())
