"""Markdown tables of measured figures, rendered from a parity report, so that no figure in docs/ is typed by hand.

Usage::

    python scripts/report_tables.py build/report                  # print every family's tables
    python scripts/report_tables.py build/report --update docs/   # rewrite the marked blocks of docs/*.md
    python scripts/report_tables.py build/report --update docs/ --family silero-vad

It reads ``<report>/<family>/metadata.json`` and ``quantization_summary.json`` (schemas: ``conversions/report.py``
and docs/report.md) and renders, per family:

- ``parity``: one row per result of ``test_parity`` (``clip``) and ``test_parity_random`` (``random``): component,
  variant, test, calls, per output its max abs error against its ``atol`` and its PSNR against its floor, the task
  metrics against their minimums, the package size and the verdict; then the family's pipeline checks (e.g.
  Parakeet's transcript), one row per variant;
- ``quantization``: per component, the uncompressed fp16 package, then one row per strategy: weight KiB,
  compression ratio, quality of the primary output vs the fp16 package and vs torch, PSNR vs torch, task metrics,
  verdict; strategies that were not applied are listed below the table with the reason.

Each block starts with a line naming the commit, platform and tool versions the report came from.

``--update DIR`` replaces what lies between these lines (each alone on its line, outside fenced code) in every
``DIR/*.md``::

    <!-- report-tables:BEGIN <family> <parity|quantization> -->
    <!-- report-tables:END -->

A marker of a family whose report file is missing gets a one-line note saying how to produce it. A family and
kind of the report without a marker in any page is an error (its figures would silently go nowhere): add the
markers, or name the families to update with ``--family``. Malformed markers are errors too. Nothing is written
unless every page is valid; changed pages are replaced atomically (``conversions.files.atomic_write``).
Exit codes: 0 done, 2 error (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conversions.files import atomic_write  # noqa: E402
from conversions.report_schema import RAN, as_float, nonfinite_text, outcome_of, reason_counts, tally  # noqa: E402

METADATA = "metadata.json"
QUANTIZATION = "quantization_summary.json"
KINDS = ("parity", "quantization")
SOURCE_FILE = {"parity": METADATA, "quantization": QUANTIZATION}
SCHEMA_VERSION = 1
MISSING = "—"
MAX_REASON_CHARS = 240
TEST_ORDER = {"clip": 0, "random": 1}

FAMILY_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
BEGIN = re.compile(rf"<!-- report-tables:BEGIN (?P<family>{FAMILY_NAME}) (?P<kind>\S+) -->")
END = "<!-- report-tables:END -->"
ANY_MARKER = re.compile(r"<!--\s*report-tables:")


class ReportTablesError(Exception):
    """A problem with the report or the pages, worded for the person running the script."""


# ---------------------------------------------------------------------------------------------------------------
# reading the report


def load_report_file(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportTablesError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ReportTablesError(f"cannot read {path}: expected a JSON object, got {type(data).__name__}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ReportTablesError(f"{path}: schema_version {data.get('schema_version')!r}, this script reads "
                                f"version {SCHEMA_VERSION}")
    return data


def report_families(report_dir: Path) -> list[str]:
    """The family directories of a report (``.records`` and other hidden entries are a run's scratch space)."""
    if not report_dir.is_dir():
        raise ReportTablesError(f"no report directory {report_dir} (run pytest first; it writes build/report/)")
    return sorted(p.name for p in report_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and re.fullmatch(FAMILY_NAME, p.name)
                  and any((p / f).is_file() for f in SOURCE_FILE.values()))


# ---------------------------------------------------------------------------------------------------------------
# formatting


def sci(value: Any, digits: int = 2) -> str:
    """An error figure: ``0``, ``2.9e-3``, ``0.12``, ``35``; ``NaN``/``inf`` spelled out; missing as a dash."""
    x = as_float(value)
    if x is None:
        return MISSING
    if not math.isfinite(x):
        return nonfinite_text(x)
    if x == 0:
        return "0"
    if 0.01 <= abs(x) < 1000:
        return f"{x:.{digits}g}"
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def plain(value: Any, digits: int = 4) -> str:
    """A bound, a ratio of agreement, a quality: shortest form with ``digits`` significant digits."""
    x = as_float(value)
    if x is None:
        return MISSING if value is None else str(value)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m[1].replace('+', '')}{m[2]}", f"{x:.{digits}g}")


def decibels(value: Any) -> str:
    x = as_float(value)
    if x is None:
        return MISSING
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return "NaN" if math.isnan(x) else f"{x:.1f}"


def kib(value: Any) -> str:
    x = as_float(value)
    return MISSING if x is None else f"{x / 1024:.0f}"


def cell(value: Any) -> str:
    """Text safe in a markdown table cell: one line, pipes escaped, HTML not interpreted (``<br>`` is added by the
    callers after escaping)."""
    text = MISSING if value is None or value == "" else " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def verdict(record: dict) -> str:
    """pytest's outcome of the check (a record written outside pytest: its match)."""
    outcome = outcome_of(record)
    return "passed" if outcome == "passed" else f"**{outcome}**"


def skipped_lines(records: list[dict]) -> list[str]:
    return [f"Skipped here: {n} x {cell(reason)}" for reason, n in reason_counts(records, "skipped")]


def provenance(data: dict, source: str) -> str:
    """The block's first line: which report, commit, platform and tools the figures come from."""
    commit = data.get("git_commit")
    state = ("" if data.get("git_dirty") is False else " with uncommitted changes" if data.get("git_dirty")
             else " (clean state unknown)")
    where = f"commit `{str(commit)[:12]}`{state}" if commit else "no git commit recorded"
    platform = data.get("platform") if isinstance(data.get("platform"), dict) else {}
    system = platform.get("platform") or platform.get("system") or "unknown platform"
    python = f", Python {platform['python']}" if platform.get("python") else ""
    tools = data.get("tool_versions") if isinstance(data.get("tool_versions"), dict) else {}
    versions = ", ".join(f"{name} {version}" for name, version in tools.items() if version) or "no tool versions"
    when = f", {data['generated_at']}" if data.get("generated_at") else ""
    return (f"_Generated by `scripts/report_tables.py` from `{source}` ({where}{when}); {cell(system)}{python}; "
            f"{cell(versions)}. Do not edit by hand._")


def task_cell(figures: Any, minimums: Any) -> str:
    """``decision_agreement 1 (≥ 0.99)`` per figure; informational figures (no minimum) without the bracket."""
    if not isinstance(figures, dict) or not figures:
        return MISSING
    minimums = minimums if isinstance(minimums, dict) else {}
    parts = []
    for name, value in figures.items():
        floor = f" (≥ {plain(minimums[name])})" if name in minimums else ""
        parts.append(cell(f"{name} {plain(value)}{floor}"))
    return "<br>".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# tables


def _parity_sort_key(record: dict) -> tuple:
    return (str(record.get("component")), TEST_ORDER.get(str(record.get("test")), 9), str(record.get("variant")))


def outputs_cell(record: dict) -> str:
    """Per output: ``name max_abs / atol, PSNR dB / floor``; outputs bounded by PSNR only say so."""
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    bounds = record.get("bounds") if isinstance(record.get("bounds"), dict) else {}
    parts = []
    for name, m in metrics.items():
        m = m if isinstance(m, dict) else {}
        bound = bounds.get(name) if isinstance(bounds.get(name), dict) else {}
        atol = bound.get("atol")
        floor = as_float(bound.get("psnr_min_db"))
        rtol = as_float(bound.get("rtol"))
        if atol is None:
            against = " (PSNR only)" if floor is not None and math.isfinite(floor) else " (no numeric bound)"
        elif rtol:
            against = f" / {plain(atol)} + {plain(rtol)}·\\|ref\\|"
        else:
            against = f" / {plain(atol)}"
        psnr = f"{decibels(m.get('psnr_db'))} dB"
        if floor is not None and math.isfinite(floor):
            psnr += f" / ≥ {plain(floor)}"
        parts.append(f"{cell(name)} {sci(m.get('max_abs'))}{against}, {psnr}")
    return "<br>".join(parts) or MISSING


def parity_table(metadata: dict, source: str = f"<family>/{METADATA}") -> str:
    everything = [r for r in metadata.get("results") or [] if isinstance(r, dict)]
    results = [r for r in everything if outcome_of(r) in RAN]
    checks = sorted((r for r in results if r.get("test") in TEST_ORDER), key=_parity_sort_key)
    pipelines = [r for r in results if r.get("test") == "pipeline"]
    others = [r for r in results if r not in checks and r not in pipelines]
    lines = [provenance(metadata, source), "",
             f"Results: {tally(everything)}. Per output: max abs error / `atol` (+ `rtol`·\\|ref\\| "
             "where declared), PSNR / floor, over the streamed clip (`clip`) or the generated cases together "
             "(`random`).", ""]
    skipped = skipped_lines(everything)
    if skipped:
        lines += [*skipped, ""]
    if checks:
        lines += [row("component", "variant", "test", "calls", "outputs: max abs / atol, PSNR dB / floor",
                      "task metrics (minimum)", "package KiB", "outcome"),
                  row("---", "---", "---", "---:", "---", "---", "---:", "---")]
        for r in checks:
            lines.append(row(cell(r.get("component")), cell(r.get("variant")), cell(r.get("test")),
                             cell(r.get("calls")), outputs_cell(r),
                             task_cell(r.get("task_metrics"), r.get("task_bounds")),
                             kib(r.get("package_size_bytes")), verdict(r)))
        lines.append("")
    if pipelines:
        lines += [row("pipeline check", "variant", "result", "outcome"), row("---", "---", "---", "---")]
        for r in sorted(pipelines, key=lambda r: (str(r.get("component")), str(r.get("variant")))):
            lines.append(row(cell(r.get("component")), cell(r.get("variant")),
                             cell(r.get("summary") or r.get("failure")), verdict(r)))
        lines.append("")
    for r in others:
        lines.append(f"- {cell(r.get('test_id') or r.get('component'))}: test kind {cell(r.get('test'))}, "
                     f"outcome {verdict(r)}")
    return "\n".join(lines).rstrip() + "\n"


def _primary(record: dict) -> dict:
    outputs = record.get("outputs") if isinstance(record.get("outputs"), dict) else {}
    primary = outputs.get(record.get("primary_output"))
    return primary if isinstance(primary, dict) else {}


def strategy_cell(record: dict) -> str:
    recipe = record.get("recipe")
    name = cell(record.get("strategy"))
    if isinstance(recipe, dict) and isinstance(recipe.get("kept_fp16"), list):
        kept, compressed = recipe["kept_fp16"], recipe.get("compressed") or []
        layers = len(kept) + len(compressed)
        return f"{name} ({cell(recipe.get('candidate'))}; {len(kept)} of {layers} layers kept fp16)"
    return name


def _reason(record: dict) -> str:
    text = " ".join(str(record.get("reason") or record.get("failure") or "no failure message recorded").split())
    if len(text) > MAX_REASON_CHARS:
        text = text[:MAX_REASON_CHARS - 1] + "…"
    return cell(text)


def quantization_table(summary: dict, source: str = f"<family>/{QUANTIZATION}") -> str:
    everything = [v for v in summary.get("variants") or [] if isinstance(v, dict)]
    variants = [v for v in everything if outcome_of(v) != "skipped"]
    applied = [v for v in variants if v.get("weight_bytes") is not None]
    not_applied = [v for v in variants if v.get("weight_bytes") is None]
    lines = [provenance(summary, source), "",
             "Quality = 1 − ‖ref − x‖₂/‖ref‖₂ of the component's primary output over the streamed clip (1 = "
             "identical), against the uncompressed fp16 package on the same backend and against torch; task "
             "metrics against torch.", ""]
    lines += [row("component", "variant", "strategy", "weight KiB", "ratio", "quality vs fp16 / vs torch",
                  "PSNR vs torch dB", "task metrics", "gate"),
              row("---", "---", "---", "---:", "---:", "---", "---:", "---", "---")]
    order = sorted({(str(v.get("component")), str(v.get("variant"))) for v in variants})
    for component, variant in order:
        mine = sorted((v for v in applied if (str(v.get("component")), str(v.get("variant"))) == (component, variant)),
                      key=lambda v: str(v.get("strategy")))
        primary_name = next((v.get("primary_output") for v in mine if v.get("primary_output")), None)
        base = next((v for v in mine if v.get("baseline_weight_bytes") is not None), None)
        if base is not None:
            label = f"fp16 (uncompressed; primary output {cell(primary_name)})" if primary_name else "fp16 (uncompressed)"
            lines.append(row(cell(component), cell(variant), label, kib(base.get("baseline_weight_bytes")), "1.00x",
                             f"1 / {plain(base.get('baseline_quality_vs_torch'))}", MISSING,
                             task_cell(base.get("baseline_task_metrics"), {}), MISSING))
        for v in mine:
            primary = _primary(v)
            ratio = as_float(v.get("compression_ratio"))
            lines.append(row(cell(component), cell(variant), strategy_cell(v), kib(v.get("weight_bytes")),
                             MISSING if ratio is None else f"{ratio:.2f}x",
                             f"{plain(primary.get('quality_vs_baseline'))} / {plain(primary.get('quality_vs_torch'))}",
                             decibels(primary.get("psnr_vs_torch_db")), task_cell(v.get("task_metrics"), {}),
                             verdict(v)))
    lines.append("")
    if not_applied:
        lines += ["Not applied (a declared `inapplicable` strategy is a strict xfail; anything else failed):", ""]
        for v in sorted(not_applied, key=lambda v: (str(v.get("component")), str(v.get("strategy")))):
            lines.append(f"- {cell(v.get('component'))} / {cell(v.get('strategy'))} / {cell(v.get('variant'))} "
                         f"({outcome_of(v)}): {_reason(v)}")
    skipped = skipped_lines(everything)
    if skipped:
        lines += ["", *skipped]
    return "\n".join(lines).rstrip() + "\n"


def missing_note(family: str) -> str:
    return (f"_No report for {family} here: run `pytest -k {family}` then "
            "`python scripts/report_tables.py build/report --update docs/`._\n")


def render_block(report_dir: Path, family: str, kind: str) -> str:
    """The content of one marked block: the table, or the note saying how to produce it."""
    if kind not in KINDS:
        raise ReportTablesError(f"unknown table kind {kind!r} for {family}: choose from {KINDS}")
    data = load_report_file(report_dir / family / SOURCE_FILE[kind])
    if data is None:
        return missing_note(family)
    source = f"{family}/{SOURCE_FILE[kind]}"
    return parity_table(data, source) if kind == "parity" else quantization_table(data, source)


# ---------------------------------------------------------------------------------------------------------------
# marked blocks in the pages


@dataclass(frozen=True)
class Block:
    family: str
    kind: str
    begin: int  # index of the BEGIN line
    end: int  # index of the END line


def find_blocks(text: str, where: str) -> list[Block]:
    """The marked blocks of a page; malformed markers raise :class:`ReportTablesError` naming the line."""
    blocks, open_block, fence = [], None, None
    for i, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = None if fence == marker else (fence or marker)
            continue
        if fence or not ANY_MARKER.match(stripped):
            continue
        begin = BEGIN.fullmatch(stripped)
        if begin:
            if open_block is not None:
                raise ReportTablesError(f"{where}:{i + 1}: a BEGIN marker inside the block opened at line "
                                        f"{open_block[2] + 1} (missing `{END}`)")
            if begin["kind"] not in KINDS:
                raise ReportTablesError(f"{where}:{i + 1}: unknown table kind {begin['kind']!r} (choose from {KINDS})")
            open_block = (begin["family"], begin["kind"], i)
        elif stripped == END:
            if open_block is None:
                raise ReportTablesError(f"{where}:{i + 1}: `{END}` without a BEGIN marker")
            blocks.append(Block(open_block[0], open_block[1], open_block[2], i))
            open_block = None
        else:
            raise ReportTablesError(f"{where}:{i + 1}: malformed marker {stripped!r}: expected "
                                    f"`<!-- report-tables:BEGIN <family> <{'|'.join(KINDS)}> -->` or `{END}`")
    if open_block is not None:
        raise ReportTablesError(f"{where}:{open_block[2] + 1}: `<!-- report-tables:BEGIN {open_block[0]} "
                                f"{open_block[1]} -->` has no `{END}`")
    return blocks


def replace_blocks(text: str, blocks: list[Block], contents: dict[tuple[str, str], str]) -> str:
    """``text`` with the lines between each block's markers replaced by its content (markers kept)."""
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    for block in sorted(blocks, key=lambda b: b.begin, reverse=True):
        # A blank line closes the last table or paragraph before the END comment.
        body = contents[(block.family, block.kind)].rstrip("\n").split("\n") + [""]
        lines[block.begin + 1:block.end] = [line + newline for line in body]
    return "".join(lines)


def update_pages(report_dir: Path, docs_dir: Path, families: list[str] | None = None) -> list[Path]:
    """Fill every marked block of ``docs_dir/*.md``; returns the pages that changed. See the module docstring."""
    if not docs_dir.is_dir():
        raise ReportTablesError(f"--update {docs_dir}: not a directory")
    pages = sorted(docs_dir.glob("*.md"))
    found = {page: find_blocks(page.read_text(encoding="utf-8"), str(page)) for page in pages}
    marked = {(b.family, b.kind) for blocks in found.values() for b in blocks}
    if families is None:  # every table the report has must land somewhere
        wanted = [(family, kind) for family in report_families(report_dir) for kind in KINDS
                  if (report_dir / family / SOURCE_FILE[kind]).is_file()]
    else:  # a family asked for by name needs both blocks
        if not report_dir.is_dir():
            raise ReportTablesError(f"no report directory {report_dir} (run pytest first; it writes build/report/)")
        wanted = [(family, kind) for family in families for kind in KINDS]
    unmarked = [f"{family} {kind}" for family, kind in wanted if (family, kind) not in marked]
    if unmarked:
        raise ReportTablesError(
            f"no marker in {docs_dir}/*.md for: {', '.join(unmarked)}. Add `<!-- report-tables:BEGIN <family> <kind> "
            f"-->` and `{END}` lines to the family's page, or choose the families to update with --family")
    contents = {key: render_block(report_dir, *key) for key in sorted(marked)
                if families is None or key[0] in families}
    changed = []
    for page, blocks in found.items():
        mine = [b for b in blocks if (b.family, b.kind) in contents]
        if not mine:
            continue
        old = page.read_text(encoding="utf-8")
        new = replace_blocks(old, mine, contents)
        if new != old:
            changed.append((page, new))
    for page, new in changed:
        atomic_write(page, new)
    return [page for page, _ in changed]


def render_all(report_dir: Path, families: list[str] | None = None) -> str:
    """Every family's tables, as one markdown document (stdout mode)."""
    families = report_families(report_dir) if families is None else families
    if not families:
        raise ReportTablesError(f"{report_dir} holds no family report (no <family>/{METADATA} or {QUANTIZATION})")
    parts = []
    for family in families:
        for kind in KINDS:
            parts.append(f"## {family}: {kind}\n\n{render_block(report_dir, family, kind)}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="report_tables.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("report_dir", type=Path, help="the report directory (build/report)")
    parser.add_argument("--update", type=Path, metavar="DOCS_DIR",
                        help="rewrite the marked blocks of DOCS_DIR/*.md instead of printing")
    parser.add_argument("--family", action="append", metavar="NAME",
                        help="only this family (repeatable); default: every family of the report")
    args = parser.parse_args(argv)
    try:
        if args.update is None:
            sys.stdout.write(render_all(args.report_dir, args.family))
        else:
            for page in update_pages(args.report_dir, args.update, args.family):
                print(f"updated {page}")
    except ReportTablesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
