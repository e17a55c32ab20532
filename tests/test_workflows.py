"""The CI workflows and the job-summary script they call.

A workflow file is only exercised when GitHub runs it, so a typo in a key, a runner label or a shell line would
first show up as a red (or, worse, silently skipped) check on someone's PR. These tests catch that here:

- every file in ``.github/workflows/`` validates against the GitHub-workflow JSON schema that check-jsonschema
  vendors (no network: the subprocess gets proxies that point nowhere, so a fetch would fail the test);
- ``ci.yml`` has the jobs and steps the project relies on (Linux and Apple Silicon parity runs, report upload,
  the benchmark regression gate, lint), its ``--backend`` ids are ones the registry knows, its shell lines parse
  (``bash -n``) and its inline Python compiles;
- ``scripts/job_summary.py`` renders hand-written report files into the expected markdown tables and reports a
  missing or broken report as a line, exit 0 (it runs after failed tests too).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conversions import registry

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
CI = WORKFLOW_DIR / "ci.yml"
JOB_SUMMARY = ROOT / "scripts" / "job_summary.py"
WORKFLOWS = sorted(p for p in WORKFLOW_DIR.glob("*") if p.suffix in (".yml", ".yaml"))

# A heredoc fed to python on its command line: (delimiter, body).
PYTHON_HEREDOC = re.compile(r"python[^\n]*<<-?'?(\w+)'?\n(.*?)\n\1$", re.S | re.M)

# Any attempt to reach the network goes to a closed local port and fails fast.
OFFLINE_ENV = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}


def _check_workflow_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, env=OFFLINE_ENV, timeout=60)


# ---------------------------------------------------------------------------------------------------------------
# schema


def test_ci_workflow_exists():
    assert CI in WORKFLOWS, f"expected {CI.relative_to(ROOT)}; found {[p.name for p in WORKFLOWS]}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_github_schema(path):
    result = _check_workflow_schema(path)
    assert result.returncode == 0, f"{path.name} is not a valid GitHub workflow:\n{result.stdout}\n{result.stderr}"


def test_schema_check_rejects_a_broken_workflow(tmp_path):
    # Guards the check above against passing vacuously (wrong schema name, a validator that accepts anything).
    broken = tmp_path / "broken.yml"
    broken.write_text("on: [pull_request]\njobs:\n  linux:\n    runs_on: ubuntu-latest\n    step:\n      - run: true\n")
    result = _check_workflow_schema(broken)
    assert result.returncode != 0, f"a job without runs-on/steps validated:\n{result.stdout}"


# ---------------------------------------------------------------------------------------------------------------
# ci.yml content


@pytest.fixture(scope="module")
def ci() -> dict:
    return yaml.safe_load(CI.read_text(encoding="utf-8"))


def _steps(ci: dict, job: str) -> list[dict]:
    assert job in ci["jobs"], f"ci.yml has no {job!r} job; it has {sorted(ci['jobs'])}"
    return ci["jobs"][job]["steps"]


def _runs(ci: dict, job: str) -> list[str]:
    return [s["run"] for s in _steps(ci, job) if "run" in s]


def _uses(ci: dict, job: str, action: str) -> list[dict]:
    return [s for s in _steps(ci, job) if str(s.get("uses", "")).split("@")[0] == action]


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_triggers_are_pull_requests_and_pushes_to_main(ci):
    on = ci.get("on", ci.get(True))  # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True
    assert "pull_request" in on
    assert on["push"]["branches"] == ["main"]


def test_linux_job_runs_the_test_suite_with_a_report(ci):
    assert str(ci["jobs"]["linux"]["runs-on"]).startswith("ubuntu-")
    runs = [r for r in _runs(ci, "linux") if "tox -e tests" in r]
    assert runs, "the linux job must run `tox -e tests`"
    assert any("--report-dir build/report" in r for r in runs)


def test_macos_job_runs_on_apple_silicon(ci):
    label = str(ci["jobs"]["macos"]["runs-on"])
    m = re.fullmatch(r"macos-(\d+)(-xlarge)?", label)
    # macos-13 and the "-large" labels are Intel: no Neural Engine, so CPU_AND_NE would not test what it says.
    assert m and int(m.group(1)) >= 14, f"macos job runs on {label!r}; need macos-14 or newer (Apple Silicon)"


def test_macos_parity_backends_are_known_core_ml_variants(ci):
    runs = [r for r in _runs(ci, "macos") if "tox -e tests" in r and "--backend" in r]
    assert len(runs) == 1, f"expected one Core ML parity run with --backend, got {runs}"
    spec = re.search(r"--backend[ =](\S+)", runs[0]).group(1)
    variants = registry.select_variants(spec)  # raises ValueError on an unknown id
    assert {v.backend for v in variants} == {"coreml"}
    assert {v.baseline_family for v in variants} == {"coreml-cpu", "coreml-ne"}, "both Core ML baselines are checked"


def test_macos_compiles_every_exported_package(ci):
    assert any("compile_model" in r and ".mlpackage" in r for r in _runs(ci, "macos"))


@pytest.mark.parametrize("job", ["linux", "macos"])
def test_report_is_summarized_and_uploaded_even_on_failure(ci, job):
    summaries = [s for s in _steps(ci, job) if "scripts/job_summary.py" in s.get("run", "")]
    assert summaries and all(s.get("if") == "always()" for s in summaries)
    assert all('>> "$GITHUB_STEP_SUMMARY"' in s["run"] for s in summaries)
    uploads = _uses(ci, job, "actions/upload-artifact")
    assert uploads, f"{job} uploads no artifact"
    for step in uploads:
        assert step["uses"].endswith("@v4")
        assert step.get("if") == "always()", "the report is most needed when the tests failed"
        assert str(step["with"]["path"]).startswith("build/report")


@pytest.mark.parametrize("job", ["linux", "macos"])
def test_export_cache_key_follows_converter_sources_and_pins(ci, job):
    caches = [s for s in _uses(ci, job, "actions/cache") if s["with"]["path"] == ".cache/exports"]
    assert len(caches) == 1
    key = caches[0]["with"]["key"]
    assert "runner.os" in key
    assert re.search(r"hashFiles\('conversions/\*\*/\*\.py', 'pyproject\.toml'\)", key), key


def test_benchmarks_compare_with_the_base_commit_and_fail_on_regressions(ci):
    """Pull requests run the benchmark gate (scripts/bench_gate.py through `tox -e bench-gate`): the PR and its base
    commit measured on the same runner in alternated blocks. No run saved elsewhere is a baseline any more: a
    quieter moment on another runner made unchanged code look 40-85 % slower."""
    import configparser

    steps = _steps(ci, "macos")
    gates = [s for s in steps if "bench-gate" in s.get("run", "") or "scripts/bench_gate.py" in s.get("run", "")]
    assert len(gates) == 1, f"expected one benchmark gate step, got {gates}"
    gate = gates[0]
    assert "pull_request" in gate.get("if", ""), "the gate compares a PR with its base: pull requests only"
    run = " ".join(gate["run"].replace("\\\n", " ").split())
    assert "python -m tox -e bench-gate -- " in run
    assert re.search(r"--base \$\{\{ github\.event\.pull_request\.base\.sha \}\}", run), run
    assert re.search(r"-k silero\b", run), run
    assert "--json build/report-coreml/" in run, "the gate's table goes into the uploaded report artifact"
    # the base commit must be in the clone: a full checkout or a fetch of that commit before the gate runs
    checkout = _uses(ci, "macos", "actions/checkout")[0]
    full_history = str(checkout.get("with", {}).get("fetch-depth")) == "0"
    fetched = re.search(r"git fetch [^\n]*origin \$\{\{ github\.event\.pull_request\.base\.sha \}\}", gate["run"])
    assert full_history or (fetched and fetched.start() < gate["run"].index("bench-gate")), gate["run"]
    # nothing left of the cross-run comparison: no cached .benchmarks baseline, no --benchmark-compare gate
    assert not _uses(ci, "macos", "actions/cache/restore") and not _uses(ci, "macos", "actions/cache/save")
    assert not [r for r in _runs(ci, "macos") if "--benchmark-compare" in r]
    assert steps.index(gate) > next(i for i, s in enumerate(steps) if "--backend" in s.get("run", "")), \
        "the gate runs after the parity suite"

    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini", encoding="utf-8")
    assert "testenv:bench-gate" in tox, "tox.ini has no [testenv:bench-gate]"
    assert "python scripts/bench_gate.py {posargs" in tox["testenv:bench-gate"]["commands"]
    assert (ROOT / "scripts" / "bench_gate.py").is_file()


def test_lint_job_runs_tox_lint(ci):
    assert any("tox -e lint" in r for r in _runs(ci, "lint"))


def test_step_references_name_existing_step_ids(ci):
    for name, job in ci["jobs"].items():
        ids = {s["id"] for s in job["steps"] if "id" in s}
        referenced = {m for s in _strings(job) for m in re.findall(r"\bsteps\.([A-Za-z0-9_-]+)\.", s)}
        assert referenced <= ids, f"job {name} references unknown step ids {sorted(referenced - ids)}"


def _shell_scripts() -> list[tuple[str, str]]:
    ci = yaml.safe_load(CI.read_text(encoding="utf-8")) if CI.exists() else {"jobs": {}}
    return [(f"{job}:{i}", step["run"]) for job, spec in ci["jobs"].items()
            for i, step in enumerate(spec["steps"]) if "run" in step]


@pytest.mark.parametrize("where,script", _shell_scripts(), ids=[w for w, _ in _shell_scripts()])
def test_run_scripts_parse(where, script):
    # Expressions are substituted by GitHub before the shell sees the script; any word stands in for them here.
    text = re.sub(r"\$\{\{.*?\}\}", "EXPR", script)
    result = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"step {where} is not valid bash: {result.stderr}"
    for _, body in PYTHON_HEREDOC.findall(text):
        compile(body, f"<{where} heredoc>", "exec")


def test_inline_python_is_found():
    # The macOS compile step's heredoc is Python that only runs on a Mac; make sure the check above sees it.
    bodies = [body for _, s in _shell_scripts() for _, body in PYTHON_HEREDOC.findall(s)]
    assert any("compile_model" in b for b in bodies), "expected the compile step's inline `python - <<'EOF'`"


# ---------------------------------------------------------------------------------------------------------------
# scripts/job_summary.py


def _summary(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(JOB_SUMMARY), *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def _tables(markdown: str) -> list[list[list[str]]]:
    """Markdown tables as rows of cells (header and separator rows dropped), escaped pipes kept as ``|``."""
    tables, current = [], None
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if current is None:
                current = [cells]
            elif not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        elif current is not None:
            tables.append(current)
            current = None
    if current is not None:
        tables.append(current)
    return tables


def _result(component, variant, test, match, metrics, bounds, failure=None):
    return {"test_id": f"tests/test_parity.py::test_parity[m/{component}/{variant}]", "model": "m",
            "component": component, "test": test, "variant": variant, "backend": variant.split("-")[0],
            "metrics": {o: {"max_abs": v, "allclose": ok} for o, (v, ok) in metrics.items()},
            "bounds": {o: {"atol": a, "rtol": 0.0, "psnr_min_db": 30.0, "why": "test"} for o, a in bounds.items()},
            "task_metrics": {}, "task_bounds": {}, "match": match, "failure": failure}


@pytest.fixture
def report(tmp_path) -> Path:
    model_dir = tmp_path / "report" / "tiny-vad"
    model_dir.mkdir(parents=True)
    results = [
        # worst by ratio: b (0.01 / 0.02 = 0.5) beats a (0.1 / 1.0 = 0.1) though a's raw error is larger
        _result("enc", "mil-fp16", "clip", True, {"a": (0.1, True), "b": (0.01, True)}, {"a": 1.0, "b": 0.02}),
        # an infinite error (fp16 overflow) against a tight bound; the failure text has a pipe and a newline
        _result("dec", "mil-fp32", "random", False, {"p": (float("inf"), False)}, {"p": 1e-5},
                failure="p: max abs inf > atol 1e-05 | see\nplot"),
        # h is PSNR-only (atol null): its allclose flag is meaningless, q with an atol is reported instead
        _result("uni", "mil-fp16", "random", True, {"h": (0.9, False), "q": (0.001, True)}, {"h": None, "q": 0.01}),
        # no absolute bound at all: the largest error is shown, without a bound
        _result("stft", "mil-fp16", "random", True, {"s": (0.5, False), "t": (0.25, False)}, {"s": None, "t": None}),
    ]
    metadata = {"schema_version": 1, "model": "tiny-vad", "git_commit": "0123456789abcdef", "git_dirty": False,
                "platform": {"system": "Darwin"}, "summary": {"results": 4, "matched": 3, "failed": 1},
                "results": results}
    (model_dir / "metadata.json").write_text(json.dumps(metadata))  # writes Infinity, as the report does
    variants = [
        {"component": "enc", "strategy": "int8-per-channel", "variant": "mil-fp16", "weight_bytes": 2048,
         "compression_ratio": 4.0, "primary_output": "a", "primary_quality_vs_torch": 0.98761,
         "task_metrics": {"segment_f1": 0.5, "reference_segments": 3}, "match": True, "failure": None},
        # what an inapplicable strategy records: no sizes, no quality
        {"component": "enc", "strategy": "int4-per-block", "variant": "mil-fp16", "match": False,
         "failure": "block size 32 does not divide 129"},
    ]
    (model_dir / "quantization_summary.json").write_text(json.dumps({"schema_version": 1, "variants": variants}))
    return tmp_path / "report"


def test_summary_tables_from_report_files(report):
    result = _summary(report)
    assert result.returncode == 0, result.stderr
    md = result.stdout
    assert "## Parity: tiny-vad" in md
    assert "**Parity: 3 passed, 1 failed** (1 FAILED)" in md
    parity, quantization = _tables(md)
    assert parity[0] == ["component", "variant", "test", "outcome", "worst output", "max abs error", "atol",
                         "error / atol"]
    assert parity[1:] == [
        ["enc", "mil-fp16", "clip", "✅", "b", "1.00e-02", "2.00e-02", "0.50"],
        ["dec", "mil-fp32", "random", "❌", "p", "inf", "1.00e-05", "inf"],
        ["uni", "mil-fp16", "random", "✅", "q", "1.00e-03", "1.00e-02", "0.10"],
        ["stft", "mil-fp16", "random", "✅", "s", "5.00e-01", "—", "—"],
    ]
    assert quantization[0] == ["component", "strategy", "variant", "weight KiB", "compression", "quality vs torch",
                               "task metrics", "gate"]
    assert quantization[1:] == [
        ["enc", "int8-per-channel", "mil-fp16", "2.0", "4.00x", "0.9876", "segment_f1 0.500, reference_segments 3",
         "✅"],
        ["enc", "int4-per-block", "mil-fp16", "—", "—", "—", "—", "❌"],
    ]
    # failure messages: one line each, pipes escaped so they cannot break the markdown
    assert "- **dec / mil-fp32 / random**: p: max abs inf &gt; atol 1e-05 \\| see plot" in md.splitlines()
    assert "- **enc / int4-per-block / mil-fp16**: block size 32 does not divide 129" in md.splitlines()
    assert "**Quantization sweep: 1 passed, 1 failed** (1 FAILED)" in md


def test_summary_agrees_with_pytest_outcomes(report):
    """Outcomes recorded from pytest's hooks: a snapshot failure after a matching record is a failure, declared
    xfails are neither matched nor failed, skips are grouped by reason and left out of the table."""
    path = report / "tiny-vad" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["results"][0].update(outcome="failed", match=False, failure="a.psnr_db fell 80 -> 60 (slack 1.0)")
    metadata["results"] += [{**metadata["results"][2], "test_id": f"skip-{i}", "variant": "coreml-all-fp16",
                             "outcome": "skipped", "match": False, "reason": "Core ML runs on macOS only",
                             "metrics": {}} for i in range(3)]
    path.write_text(json.dumps(metadata))
    quantization = json.loads((report / "tiny-vad" / "quantization_summary.json").read_text())
    quantization["variants"][1].update(outcome="xfailed", reason="int4-per-block cannot apply: 129 channels")
    (report / "tiny-vad" / "quantization_summary.json").write_text(json.dumps(quantization))
    md = _summary(report).stdout
    assert "**Parity: 2 passed, 2 failed, 3 skipped** (2 FAILED)" in md
    assert "- 3 x Core ML runs on macOS only" in md.splitlines()
    assert "- **enc / mil-fp16 / clip**: a.psnr_db fell 80 -&gt; 60 (slack 1.0)" in md.splitlines()
    parity, variants = _tables(md)
    assert len(parity) == 1 + 4 and all(row[1] != "coreml-all-fp16" for row in parity)
    assert "**Quantization sweep: 1 passed, 1 xfailed**" in md and "FAILED" not in md.split("Quantization sweep")[1]
    assert "- enc / int4-per-block: int4-per-block cannot apply: 129 channels" in md.splitlines()
    assert variants[1:] == [["enc", "int8-per-channel", "mil-fp16", "2.0", "4.00x", "0.9876",
                             "segment_f1 0.500, reference_segments 3", "✅"]]


def test_summary_truncates_long_failures(report):
    path = report / "tiny-vad" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["results"][1]["failure"] = "x" * 5000
    path.write_text(json.dumps(metadata))
    line = next(ln for ln in _summary(report).stdout.splitlines() if ln.startswith("- **dec"))
    assert line.endswith("…") and len(line) < 400


def test_summary_of_missing_report_dir_says_so(tmp_path):
    result = _summary(tmp_path / "nope")
    assert result.returncode == 0
    assert "does not exist" in result.stdout and "nope" in result.stdout


def test_summary_of_empty_report_dir_says_so(tmp_path):
    result = _summary(tmp_path)
    assert result.returncode == 0
    assert "no model directories" in result.stdout


def test_summary_names_missing_and_unreadable_files(report):
    (report / "tiny-vad" / "quantization_summary.json").unlink()
    (report / "tiny-vad" / "metadata.json").write_text('{"results": [')
    result = _summary(report)
    assert result.returncode == 0
    assert "Could not read" in result.stdout and "metadata.json" in result.stdout
    assert "No `quantization_summary.json`" in result.stdout
    assert _tables(result.stdout) == []


def test_summary_without_argument_is_a_usage_error():
    result = _summary()
    assert result.returncode == 2
    assert "usage" in result.stderr


def test_summary_and_report_name_the_same_worst_output(tmp_path):
    """The job summary and the report's error summary rank outputs by one rule (conversions/report_schema.py): an
    output held to a PSNR floor only never hides an elementwise-bounded one, whatever its raw max_abs."""
    from conversions.report_schema import worst_output

    record = {"metrics": {"probability": {"max_abs": 0.004, "allclose": True},
                          "new_cell_state": {"max_abs": 0.9, "allclose": True}},
              "bounds": {"probability": {"atol": 0.005}, "new_cell_state": {"atol": None}}}
    assert worst_output(record) == ("probability", 0.004, 0.005)
    model = tmp_path / "report" / "m"
    model.mkdir(parents=True)
    (model / "metadata.json").write_text(json.dumps({
        "model": "m", "summary": {"results": 1, "matched": 1, "failed": 0},
        "results": [{**record, "component": "c", "variant": "mil-fp16", "test": "clip", "match": True,
                     "failure": None}]}))
    done = _summary(tmp_path / "report")
    assert done.returncode == 0, done.stderr
    row = next(r for table in _tables(done.stdout) for r in table if r[:2] == ["c", "mil-fp16"])
    assert "probability" in row and "new_cell_state" not in row
