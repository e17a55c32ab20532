"""scripts/report_tables.py: the measured-figure tables of docs/ are rendered from a report, never typed by hand.

Small hand-written report files in tmp_path; each figure checked is a specific cell, so a table that shows a wrong
figure (another output's, a rounding that changes it, a bound instead of the measurement) fails here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "report_tables.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("report_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


rt = _load_script()

HEADER = {
    "schema_version": 1, "generated_at": "2030-01-02T03:04:05+00:00",
    "git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False,
    "platform": {"platform": "Linux-6.8-x86_64-with-glibc2.39", "system": "Linux", "machine": "x86_64",
                 "python": "3.11.9"},
    "tool_versions": {"coremltools": "9.0", "torch": "2.13.0+cpu", "silero-vad": "6.2.3", "nemo_toolkit": None},
}


def _clip_record(**overrides) -> dict:
    record = {
        "test_id": "tests/test_parity.py::test_parity[fam/unified/mil-fp16]", "model": "fam", "component": "unified",
        "test": "clip", "variant": "mil-fp16", "backend": "mil", "compute_units": None, "precision": "fp16",
        "calls": 326,
        "metrics": {"probability": {"max_abs": 0.0029123, "max_rel": 0.01, "psnr_db": 72.1234, "quality": 0.9997,
                                    "allclose": True},
                    "new_cell_state": {"max_abs": 0.0834, "max_rel": 0.1, "psnr_db": 77.51, "quality": 0.998,
                                       "allclose": True}},
        "bounds": {"probability": {"atol": 0.005, "rtol": 0.0, "psnr_min_db": 62.0, "why": "clip"},
                   "new_cell_state": {"atol": 0.17, "rtol": 0.0, "psnr_min_db": 67.0, "why": "clip"}},
        "task_metrics": {"decision_agreement": 0.9939, "segment_f1": 1.0, "reference_segments": 3.0},
        "task_bounds": {"decision_agreement": 0.99, "segment_f1": 0.9},
        "match": True, "failure": None, "package_size_bytes": 636931,
    }
    record.update(overrides)
    return record


def _random_record() -> dict:
    return _clip_record(test="random", calls=8, variant="mil-fp32",
                        metrics={"probability": {"max_abs": 4.1e-8, "psnr_db": float("inf")},
                                 "new_cell_state": {"max_abs": 0.67, "psnr_db": 44.8}},
                        bounds={"probability": {"atol": 1e-5, "rtol": 1e-5, "psnr_min_db": 100.0, "why": "fp32"},
                                "new_cell_state": {"atol": None, "rtol": 0.0, "psnr_min_db": 38.0, "why": "PSNR"}},
                        task_metrics={}, task_bounds={}, match=False, failure="too far",
                        package_size_bytes=1253 * 1024)


def _pipeline_record() -> dict:
    return {"test_id": "tests/test_parity.py::test_pipeline[fam/transcript/torch]", "model": "fam",
            "component": "transcript", "test": "pipeline", "variant": "torch", "backend": "torch",
            "summary": "25 tokens 'good morning' vs NeMo's 25", "figures": {"tokens": 25}, "match": True,
            "failure": None}


def _quantization_variants() -> list[dict]:
    common = {"model": "fam", "component": "unified", "test": "quantization", "variant": "mil-fp16",
              "backend": "mil", "baseline_weight_bytes": 619520, "baseline_quality_vs_torch": 0.99971,
              "baseline_task_metrics": {"decision_agreement": 1.0}, "primary_output": "probability",
              "match": True, "failure": None}
    return [
        {**common, "strategy": "palettize-6bit", "weight_bytes": 317760, "compression_ratio": 1.94962,
         "outputs": {"probability": {"quality_vs_baseline": 0.957296, "quality_vs_torch": 0.95738,
                                     "psnr_vs_torch_db": 29.4321},
                     "new_cell_state": {"quality_vs_baseline": 0.5, "quality_vs_torch": 0.4}},
         "task_metrics": {"decision_agreement": 0.99387}},
        {**common, "strategy": "mixed", "weight_bytes": 393984, "compression_ratio": 1.5725,
         "recipe": {"candidate": "palettize-6bit", "kept_fp16": ["a", "b", "c"], "compressed": ["d", "e"]},
         "outputs": {"probability": {"quality_vs_baseline": 0.98616, "quality_vs_torch": 0.98641,
                                     "psnr_vs_torch_db": 39.3}},
         "task_metrics": {"decision_agreement": 0.9939}},
        {"model": "fam", "component": "unified", "test": "quantization", "strategy": "int4-per-block",
         "variant": "mil-fp16", "backend": "mil", "match": False,
         "failure": "compression strategy 'int4-per-block' cannot be applied to op 'op_54': 129 input channels"},
    ]


def _write_report(root: Path, family: str = "fam", parity: bool = True, quantization: bool = True) -> Path:
    directory = root / "report" / family
    directory.mkdir(parents=True, exist_ok=True)
    if parity:
        metadata = {**HEADER, "model": family, "summary": {},
                    "results": [_clip_record(), _random_record(), _pipeline_record()]}
        (directory / "metadata.json").write_text(json.dumps(metadata))
    if quantization:
        summary = {**HEADER, "model": family, "variants": _quantization_variants()}
        (directory / "quantization_summary.json").write_text(json.dumps(summary))
    return root / "report"


def _table(markdown: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose first header cell is ``first_header``, as header -> cell."""
    lines = markdown.splitlines()
    split = lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]  # noqa: E731
    for i, line in enumerate(lines):
        if line.startswith("|") and split(line)[0] == first_header:
            header, rows = split(line), []
            for body in lines[i + 2:]:
                if not body.startswith("|"):
                    break
                rows.append(dict(zip(header, split(body))))
            return rows
    raise AssertionError(f"no table starting with {first_header!r} in:\n{markdown}")


# ---- the tables -------------------------------------------------------------------------------------------------
def test_parity_table_shows_each_output_against_its_bound(tmp_path):
    report = _write_report(tmp_path)
    text = rt.render_block(report, "fam", "parity")
    rows = _table(text, "component")
    assert [(r["test"], r["variant"]) for r in rows] == [("clip", "mil-fp16"), ("random", "mil-fp32")]
    clip, random = rows
    outputs = clip["outputs: max abs / atol, PSNR dB / floor"].split("<br>")
    assert outputs == ["probability 2.9e-3 / 0.005, 72.1 dB / ≥ 62", "new_cell_state 0.083 / 0.17, 77.5 dB / ≥ 67"]
    assert clip["calls"] == "326" and clip["package KiB"] == "622" and clip["outcome"] == "passed"
    assert clip["task metrics (minimum)"].split("<br>") == ["decision_agreement 0.9939 (≥ 0.99)",
                                                             "segment_f1 1 (≥ 0.9)", "reference_segments 3"]
    outputs = random["outputs: max abs / atol, PSNR dB / floor"].split("<br>")
    assert outputs == ["probability 4.1e-8 / 1e-5 + 1e-5·\\|ref\\|, ∞ dB / ≥ 100",
                       "new_cell_state 0.67 (PSNR only), 44.8 dB / ≥ 38"]
    assert random["outcome"] == "**failed**" and random["task metrics (minimum)"] == "—"
    assert random["package KiB"] == "1253"

    pipeline = _table(text, "pipeline check")
    assert pipeline == [{"pipeline check": "transcript", "variant": "torch",
                         "result": "25 tokens 'good morning' vs NeMo's 25", "outcome": "passed"}]
    assert "Results: 2 passed, 1 failed." in text


def test_quantization_table_shows_the_primary_output_and_the_fp16_baseline(tmp_path):
    report = _write_report(tmp_path)
    text = rt.render_block(report, "fam", "quantization")
    rows = {r["strategy"]: r for r in _table(text, "component")}
    baseline = rows["fp16 (uncompressed; primary output probability)"]
    assert (baseline["weight KiB"], baseline["ratio"], baseline["quality vs fp16 / vs torch"]) == ("605", "1.00x",
                                                                                                  "1 / 0.9997")
    six = rows["palettize-6bit"]
    assert six["weight KiB"] == "310" and six["ratio"] == "1.95x"
    assert six["quality vs fp16 / vs torch"] == "0.9573 / 0.9574"  # the primary output's, not new_cell_state's
    assert six["PSNR vs torch dB"] == "29.4" and six["task metrics"] == "decision_agreement 0.9939"
    assert six["gate"] == "passed"
    mixed = rows["mixed (palettize-6bit; 3 of 5 layers kept fp16)"]
    assert mixed["weight KiB"] == "385" and mixed["quality vs fp16 / vs torch"] == "0.9862 / 0.9864"
    assert "int4-per-block" not in rows
    assert "- unified / int4-per-block / mil-fp16 (failed): compression strategy 'int4-per-block' cannot be applied" in text


def test_every_block_starts_with_the_reports_commit_platform_and_tools(tmp_path):
    report = _write_report(tmp_path)
    for kind in rt.KINDS:
        first = rt.render_block(report, "fam", kind).splitlines()[0]
        assert "commit `0123456789ab`" in first and "uncommitted" not in first
        assert "Linux-6.8-x86_64-with-glibc2.39, Python 3.11.9" in first
        assert "coremltools 9.0, torch 2.13.0+cpu, silero-vad 6.2.3." in first  # tools not installed are left out
        assert "2030-01-02T03:04:05+00:00" in first
        assert f"`fam/{rt.SOURCE_FILE[kind]}`" in first


@pytest.mark.parametrize("value, expected", [(0.0029123, "2.9e-3"), (0, "0"), (0.0834, "0.083"), (35.4, "35"),
                                             (float("nan"), "NaN"), (float("inf"), "inf"), (None, "—"),
                                             (True, "—"), (12345.0, "1.2e4")])
def test_error_figures_are_formatted_without_losing_what_they_mean(value, expected):
    assert rt.sci(value) == expected


# ---- updating docs/ ------------------------------------------------------------------------------------------------
PAGE = """# Family

Intro text stays.

<!-- report-tables:BEGIN fam parity -->
stale figures typed by hand: 9.9e-9
<!-- report-tables:END -->

Between the blocks.

<!-- report-tables:BEGIN fam quantization -->
<!-- report-tables:END -->

```markdown
<!-- report-tables:BEGIN fam parity -->
an example inside a fence is not a block
<!-- report-tables:END -->
```

Outro.
"""


def test_update_replaces_only_what_lies_between_the_markers(tmp_path):
    report = _write_report(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    page = docs / "fam.md"
    page.write_text(PAGE)
    (docs / "other.md").write_text("no markers here\n")

    assert rt.update_pages(report, docs) == [page]
    text = page.read_text()
    assert "9.9e-9" not in text
    assert text.startswith("# Family\n\nIntro text stays.\n\n<!-- report-tables:BEGIN fam parity -->\n_Generated by")
    assert "an example inside a fence is not a block" in text and text.endswith("```\n\nOutro.\n")
    parity = text.split("<!-- report-tables:BEGIN fam parity -->\n")[1].split("<!-- report-tables:END -->")[0]
    assert _table(parity, "component")[0]["package KiB"] == "622"
    assert parity.endswith("vs NeMo's 25 | passed |\n\n")  # a blank line closes the table before the END comment
    quantization = text.split("<!-- report-tables:BEGIN fam quantization -->\n")[1].split("<!-- report-tables:END")[0]
    assert {r["strategy"] for r in _table(quantization, "component")} >= {"palettize-6bit"}
    assert (docs / "other.md").read_text() == "no markers here\n"
    assert rt.update_pages(report, docs) == []  # idempotent: nothing changes, nothing is rewritten
    assert page.read_text() == text


def test_a_family_without_a_report_file_gets_a_note_saying_how_to_make_it(tmp_path):
    report = _write_report(tmp_path, quantization=False)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "fam.md").write_text(PAGE.replace("fam quantization", "other-family parity"))
    rt.update_pages(report, docs)
    block = (docs / "fam.md").read_text().split("<!-- report-tables:BEGIN other-family parity -->\n")[1]
    assert block.split("\n")[0] == ("_No report for other-family here: run `pytest -k other-family` then "
                                    "`python scripts/report_tables.py build/report --update docs/`._")


def test_a_report_table_without_a_marker_is_an_error_and_nothing_is_written(tmp_path):
    report = _write_report(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    only_parity = PAGE.split("Between the blocks.")[0]
    (docs / "fam.md").write_text(only_parity)
    with pytest.raises(rt.ReportTablesError, match=r"no marker in .*docs/\*\.md for: fam quantization"):
        rt.update_pages(report, docs)
    assert (docs / "fam.md").read_text() == only_parity
    # Naming the families to update: one with no marker at all is still an error, whatever the report holds.
    with pytest.raises(rt.ReportTablesError, match="ghost parity, ghost quantization"):
        rt.update_pages(report, docs, ["ghost"])


@pytest.mark.parametrize("page, message", [
    ("<!-- report-tables:BEGIN fam parity -->\ntext\n", r"fam.md:1: .*BEGIN fam parity.* has no `<!-- report-tables:END"),
    ("x\n<!-- report-tables:END -->\n", r"fam.md:2: `<!-- report-tables:END -->` without a BEGIN marker"),
    ("<!-- report-tables:BEGIN fam latency -->\n<!-- report-tables:END -->\n", r"fam.md:1: unknown table kind"),
    ("<!-- report-tables:BEGIN fam parity -->\n<!-- report-tables:BEGIN fam parity -->\n", r"fam.md:2: a BEGIN"),
    ("<!-- report-tables:begin fam parity -->\n", r"fam.md:1: malformed marker"),
], ids=["no-end", "end-without-begin", "unknown-kind", "nested", "malformed"])
def test_malformed_markers_are_errors_naming_the_line(tmp_path, page, message):
    report = _write_report(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "fam.md").write_text(page)
    with pytest.raises(rt.ReportTablesError, match=message):
        rt.update_pages(report, docs)
    assert (docs / "fam.md").read_text() == page


def test_command_line_prints_or_updates_and_fails_with_one_line(tmp_path):
    report = _write_report(tmp_path)
    run = lambda *args: subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,  # noqa: E731
                                       text=True, timeout=120)
    printed = run(str(report))
    assert printed.returncode == 0, printed.stderr
    assert "## fam: parity" in printed.stdout and "## fam: quantization" in printed.stdout

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "fam.md").write_text(PAGE)
    updated = run(str(report), "--update", str(docs))
    assert updated.returncode == 0, updated.stderr
    assert updated.stdout.strip() == f"updated {docs / 'fam.md'}"

    (docs / "fam.md").write_text("nothing marked\n")
    failed = run(str(report), "--update", str(docs))
    assert failed.returncode == 2 and failed.stderr.startswith("error: no marker in")
    assert "Traceback" not in failed.stderr
    missing = run(str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no report directory" in missing.stderr


def test_skipped_checks_are_counted_not_tabled(tmp_path):
    """pytest's outcomes in the report: skipped checks are one line per reason, outside the table; a declared
    xfail is listed as such among the strategies that did not apply."""
    report = _write_report(tmp_path)
    path = report / "fam" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["results"].append({"test_id": "t::skip", "model": "fam", "component": "unified", "test": "clip",
                                "variant": "coreml-all-fp16", "outcome": "skipped", "match": False,
                                "reason": "Core ML runs on macOS only"})
    path.write_text(json.dumps(metadata))
    text = rt.render_block(report, "fam", "parity")
    assert "Results: 2 passed, 1 failed, 1 skipped." in text
    assert "Skipped here: 1 x Core ML runs on macOS only" in text
    assert all(r["variant"] != "coreml-all-fp16" for r in _table(text, "component"))
