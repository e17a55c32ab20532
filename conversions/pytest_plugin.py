"""pytest plugin of the parity suite, registered through the ``pytest11`` entry point of the installed package (and
by the repository's ``conftest.py`` when run from a checkout without installing), so its options exist whatever the
rootdir and however paths are written (``--export-dir /abs/dir``).

Options:
  ``--backend LIST``     narrow the variants: ``mil``, ``coreml`` or variant ids (``mil-fp16,coreml-all-fp16``)
  ``--export-dir DIR``   the export cache (default ``<rootdir>/.cache/exports``)
  ``--report-dir DIR``   where ``<model>/metadata.json`` and the plots go (default ``<rootdir>/build/report``)
  ``--torch-threads N``  torch threads while checking (default 1)
  ``--<family>-...``     each family's own model-source options (``ModelFamily.options``)

Both directories are created and probed for writing at startup: an impossible path is a usage error, not a
traceback per test.

Parametrization (every family of :mod:`conversions.registry`, as configured by its options): ``parity_case`` runs
once per (family, component, variant), ids like ``silero-vad/unified-36ms/mil-fp16``; ``quantization_case`` per
(family, swept component, strategy, fp16 variant); ``compression_case`` per (family, swept component, strategy);
``pipeline_case`` per (family, pipeline check, variant or ``torch``); ``bench_case`` per (family, component,
engine); ``parity_upstream``, ``parity_export`` and ``parity_family`` per component, export and family. The
``parity`` session fixture exports each (family, component, precision) once per session and reuses the on-disk
cache across sessions; tests hand it their results, and at the end of the session the controller process (also
under pytest-xdist) writes the report.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from . import engine, registry
from .engine import ParityCase  # noqa: F401  (re-exported: tests and plugins import it from here)

RECORDS_ENV = "COREML_PARITY_RECORDS_DIR"
GENERATED_IDS = pytest.StashKey[set]()
REPORT_PATHS = pytest.StashKey[list]()
IMPROVEMENTS = pytest.StashKey[list]()
FAMILIES = pytest.StashKey[tuple]()
MAX_TORCH_THREADS_PER_CORE = 4  # beyond this torch only thrashes (and 100000 threads crash it)


@dataclass(frozen=True)
class PipelineCase:
    family: registry.ModelFamily
    pipeline: registry.PipelineCheck
    variant: registry.Variant | None  # None: the torch components

    @property
    def id(self) -> str:
        return f"{self.family.name}/{self.pipeline.name}/{self.variant.id if self.variant else 'torch'}"


# ---- hypothesis profiles (here, so that any project using the plugin has them) ----------------------------------
def _register_hypothesis_profiles() -> None:
    from hypothesis import HealthCheck, settings

    # Conversions take ~0.1-1 s each: hypothesis examples are few and have no deadline.
    quiet = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
    settings.register_profile("default", max_examples=8, deadline=None, suppress_health_check=quiet)
    settings.register_profile("thorough", max_examples=60, deadline=None, suppress_health_check=quiet)
    # CI: the same examples on every run (a red CI must be reproducible); locally, new examples each run.
    settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True, database=None,
                              suppress_health_check=quiet)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))


# ---- options -----------------------------------------------------------------------------------------------
def pytest_addoption(parser):
    group = parser.getgroup("coreml-parity")
    group.addoption("--backend", default=None, metavar="LIST",
                    help="run parity tests only on these backends (mil, coreml) or variant ids (e.g. mil-fp16), "
                         "comma-separated; default: all (coreml variants skip off macOS)")
    group.addoption("--export-dir", default=None, metavar="DIR",
                    help="export cache directory (default: <rootdir>/.cache/exports)")
    group.addoption("--report-dir", default=None, metavar="DIR",
                    help="parity report directory (default: <rootdir>/build/report)")
    group.addoption("--torch-threads", type=int, default=1, metavar="N",
                    help="torch intra-op threads while checking parity (default 1: torch's and the portable runtime's "
                         "summation order, hence fp16 figures and their baselines, do not depend on the machine's core "
                         "count; 0 keeps torch's default). Timed benchmark runs keep torch's default.")
    group.addoption("--allow-empty-selection", action="store_true", default=False,
                    help="exit 0 even when the selected parity checks all skip (e.g. --backend coreml off macOS, a "
                         "family whose extra is missing); by default such a run fails, saying what was requested "
                         "and why nothing ran")
    for family in registry.families():
        for option in family.options:
            group.addoption(option.flag, dest=option.dest, default=None, metavar=option.metavar,
                            help=f"[{family.name}] {option.help}")


def configured_families(config) -> tuple[registry.ModelFamily, ...]:
    """Every declared family, configured by its own options (a user's checkpoint instead of the default model)."""
    if FAMILIES not in config.stash:
        configured = []
        for family in registry.families():
            values = {o.dest: config.getoption(o.dest, default=None) for o in family.options}
            try:
                configured.append(family.with_options(values))
            except ValueError as e:
                raise pytest.UsageError(str(e)) from None
        config.stash[FAMILIES] = tuple(configured)
    return config.stash[FAMILIES]


def selected_variants(config) -> tuple[registry.Variant, ...]:
    try:
        return registry.select_variants(config.getoption("--backend"))
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None


def export_dir(config) -> Path:
    value = config.getoption("--export-dir")
    return Path(value).resolve() if value else Path(config.rootpath) / ".cache" / "exports"


def report_dir(config) -> Path:
    value = config.getoption("--report-dir")
    return Path(value).resolve() if value else Path(config.rootpath) / "build" / "report"


def _check_writable(option: str, directory: Path) -> None:
    """Create ``directory`` and write a probe file in it, or fail the run at startup naming the option."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise pytest.UsageError(f"{option} {directory}: cannot create or write there ({e.strerror or e})") from None


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config):
    _CONFIG["config"] = config
    _register_hypothesis_profiles()
    selected_variants(config)  # a bad --backend fails at startup
    configured_families(config)  # bad model-source options fail at startup
    threads = config.getoption("--torch-threads")
    most = MAX_TORCH_THREADS_PER_CORE * (os.cpu_count() or 1)
    if not 0 <= threads <= most:
        raise pytest.UsageError(f"--torch-threads must be between 0 (torch's default) and {most} "
                                f"({MAX_TORCH_THREADS_PER_CORE} per core of this machine), got {threads}")
    if not _is_worker(config):
        _check_writable("--export-dir", export_dir(config))
        _check_writable("--report-dir", report_dir(config))
    config.stash[GENERATED_IDS] = set()
    if not _is_worker(config):
        # xdist workers start after this and inherit the environment: all processes write to one directory.
        os.environ[RECORDS_ENV] = str(report_dir(config) / ".records" / uuid.uuid4().hex)
    from .benchmarking import REQUEST_OPTIONS, disable_unless_requested

    disable_unless_requested(config)  # a plain run executes each benchmark body once, untimed
    timing = any(config.getoption(name, default=None) for name in REQUEST_OPTIONS)
    if threads and not timing:
        # Measured: Parakeet's fp16 fused mel+encoder on the clip differs from torch by 5.8e-3 with 2 threads
        # and 7.4e-3 with 1 (matmul/conv summation order, then fp16 rounding), more than a baseline's slack.
        import torch

        torch.set_num_threads(threads)


# ---- parametrization -----------------------------------------------------------------------------------------
def pytest_generate_tests(metafunc):
    config = metafunc.config
    families = configured_families(config)
    variants = selected_variants(config)
    name = metafunc.function.__name__
    generated = config.stash[GENERATED_IDS]

    def parametrize(argname, values, ids):
        metafunc.parametrize(argname, values, ids=ids)
        generated.update(f"{name}[{i}]" for i in ids)

    if "parity_case" in metafunc.fixturenames:
        cases = [ParityCase(f, c, v) for f in families for c in f.components for v in variants]
        parametrize("parity_case", cases, [c.id for c in cases])
    if "quantization_case" in metafunc.fixturenames:
        from .quantize import STRATEGIES

        fp16 = [v for v in variants if v.program_precision == "fp16"]
        cases = [(ParityCase(f, c, v), s) for f in families for c in f.swept_components
                 for s in f.sweep_strategies(tuple(STRATEGIES)) for v in fp16]
        parametrize("quantization_case",
                    [pytest.param(cs, marks=_inapplicable_marks(cs[0].family, cs[0].component, cs[1])) for cs in cases],
                    [f"{case.family.name}/{case.component.name}/{s}/{case.variant.id}" for case, s in cases])
    if "compression_case" in metafunc.fixturenames:
        from .quantize import STRATEGIES

        triples = [(f, c, s) for f in families for c in f.swept_components for s in f.sweep_strategies(tuple(STRATEGIES))]
        parametrize("compression_case", [pytest.param(t, marks=_inapplicable_marks(*t)) for t in triples],
                    [f"{f.name}/{c.name}/{s}" for f, c, s in triples])
    if "pipeline_case" in metafunc.fixturenames:
        cases = [PipelineCase(f, p, v) for f in families for p in f.pipelines for v in (None, *variants)]
        parametrize("pipeline_case", cases, [c.id for c in cases])
    if "bench_case" in metafunc.fixturenames:
        from .benchmarking import bench_cases

        cases = bench_cases(families, variants)
        parametrize("bench_case", cases, [c.id for c in cases])
    if "parity_upstream" in metafunc.fixturenames:
        pairs = [(f, c) for f in families for c in f.components if c.upstream is not None]
        parametrize("parity_upstream", pairs, [f"{f.name}/{c.name}" for f, c in pairs])
    if "parity_export" in metafunc.fixturenames:
        triples = [(f, c, p) for f in families for c in f.components for p in registry.PRECISIONS]
        parametrize("parity_export", triples, [f"{f.name}/{c.name}/{p}" for f, c, p in triples])
    if "parity_family" in metafunc.fixturenames:
        parametrize("parity_family", families, [f.name for f in families])


def _inapplicable_marks(family, component, strategy: str):
    reason = family.inapplicable.get((component.name, strategy))
    if reason is None:
        return ()
    from .quantize import StrategyNotApplicable

    return (pytest.mark.xfail(strict=True, raises=StrategyNotApplicable,
                              reason=f"{strategy} cannot apply to {family.name}/{component.name}: {reason}"),)


# ---- the session: the engine's (conversions.engine), with skips and the report ------------------------------
class ParitySession(engine.ParitySession):
    """:class:`conversions.engine.ParitySession` configured by pytest's options: a family whose extra is missing
    skips its tests, and results go to the report's records."""

    def __init__(self, config):
        super().__init__(export_dir(config), Path(os.environ.get(RECORDS_ENV) or report_dir(config) / ".records" / "local"))
        self.config = config

    def reference(self, family: registry.ModelFamily):
        try:
            return super().reference(family)
        except engine.FamilyUnavailable as e:
            pytest.skip(str(e))

    def record(self, request, case: ParityCase, kind: str, checks, *, calls: int, task=None, task_bounds=None,
               failure: str | None = None, started: float, series: dict | None = None,
               waveforms: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        """Hand one result to the report."""
        from .export import DEFAULT_TARGET
        from .report import write_record

        model = self.model(case)
        package = self.package(case.family, case.component, case.variant.program_precision)

        match = all(c.passed for c in checks) and failure is None
        record = {
            "test_id": request.node.nodeid, "model": case.family.name, "component": case.component.name,
            "test": kind, "variant": case.variant.id, "backend": case.variant.backend,
            "compute_units": case.variant.compute_units, "precision": case.variant.program_precision,
            "runtime_precision": case.variant.runtime_precision, "target": DEFAULT_TARGET,
            "inputs": [_spec(s) for s in model.inputs], "outputs": [_spec(s) for s in model.outputs],
            "calls": calls,
            "metrics": {c.name: c.metrics for c in checks},
            "bounds": {c.name: c.bound.as_dict() for c in checks},
            "task_metrics": dict(task or {}), "task_bounds": dict(task_bounds or {}),
            "match": match, "failure": failure,
            "package": str(package.path), "package_size_bytes": package.size_bytes, "cache_key": package.key,
            "package_source": "cache" if package.reused else "exported",  # by this process, this session
            "duration_s": round(time.perf_counter() - started, 3),
        }
        if series:
            record["series"] = series
        if waveforms:
            record["waveforms"] = self._save_waveforms(request, case, waveforms)
        write_record(self.records_dir, record)

    def _save_waveforms(self, request, case: ParityCase, waveforms) -> dict:
        """The audio outputs of a clip stream (output -> (reference, candidate), [calls, ...]) saved beside the records
        for the report to write as WAV files and plot (``report._write_audio``)."""
        from .files import atomic_path
        from .report import _slug

        arrays = {}
        for output, (reference, candidate) in waveforms.items():
            for call, (r, c) in enumerate(zip(np.asarray(reference), np.asarray(candidate))):
                arrays[f"{output}/reference/{call}"] = np.asarray(r, np.float32).reshape(-1)
                arrays[f"{output}/candidate/{call}"] = np.asarray(c, np.float32).reshape(-1)
        path = self.records_dir / "waveforms" / f"{_slug(request.node.nodeid)}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        rates = {case.component.audio_outputs[o] for o in waveforms}
        if len(rates) != 1:
            raise ValueError(f"{case.id}: audio outputs with different sample rates {sorted(rates)}")
        return {"file": str(path), "sample_rate": rates.pop()}



_spec = engine._spec

@pytest.fixture(scope="session")
def parity(pytestconfig) -> ParitySession:
    return ParitySession(pytestconfig)


def skip_unless_runnable(variant: registry.Variant) -> None:
    """Skip a Core ML variant where Apple's runtime is missing (everything else runs everywhere)."""
    from .runtime import coreml_available

    if variant.backend == "coreml" and not coreml_available():
        # One reason for every Core ML variant (the variant is in the test id), so skip summaries group them.
        pytest.skip(f"Apple's Core ML runtime runs on macOS only (this is {sys.platform}); the mil-* variants "
                    f"check the same packages here")


# ---- outcomes: pytest's own verdict of every generated check ------------------------------------------------
CASE_PROPERTY = "coreml_parity_case"  # item.user_properties key: what a generated check is (travels with xdist)
OUTCOMES = pytest.StashKey[dict]()
FAILURE_TEXT_CHARS = 4000


def _case_meta(item) -> dict | None:
    """What a generated numeric check is (family, component, variant, kind), from its parametrization."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    name = getattr(item, "originalname", item.name)
    if "parity_case" in params:
        case = params["parity_case"]
        meta = {"test": "clip" if name == "test_parity" else "random", "component": case.component.name}
        variant, family = case.variant, case.family
    elif "quantization_case" in params:
        case, strategy = params["quantization_case"]
        from .report import QUANTIZATION_TEST

        meta = {"test": QUANTIZATION_TEST, "component": case.component.name, "strategy": strategy}
        variant, family = case.variant, case.family
    elif "pipeline_case" in params:
        case = params["pipeline_case"]
        meta = {"test": "pipeline", "component": case.pipeline.name}
        variant, family = case.variant, case.family
        if variant is None:
            return {**meta, "model": family.name, "variant": "torch", "backend": "torch", "compute_units": None,
                    "precision": "fp32"}
    else:
        return None
    return {**meta, "model": family.name, "variant": variant.id, "backend": variant.backend,
            "compute_units": variant.compute_units, "precision": variant.program_precision}


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        meta = _case_meta(item)
        if meta is not None:
            item.user_properties.append((CASE_PROPERTY, meta))


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(getattr(report, "longreprtext", "") or longrepr or "skipped")


def _failure_text(report) -> str:
    """The assertion's own lines of a failed report (pytest's ``E`` lines), or its last lines."""
    text = getattr(report, "longreprtext", "") or ""
    lines = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    chosen = "\n".join(lines) if lines else "\n".join(text.splitlines()[-20:])
    return chosen[:FAILURE_TEXT_CHARS]


def pytest_runtest_logreport(report):
    """Every phase's report of a generated check, in the process that sees the whole session (the controller under
    pytest-xdist): the check's final outcome, reason and failure text go into the report by construction."""
    config = _CONFIG.get("config")
    if config is None or _is_worker(config):
        return
    meta = next((value for key, value in getattr(report, "user_properties", ()) if key == CASE_PROPERTY), None)
    if meta is None:
        return
    entry = config.stash.setdefault(OUTCOMES, {}).setdefault(report.nodeid, {"meta": meta, "outcome": None})
    xfail = getattr(report, "wasxfail", None)
    if report.failed:
        entry.update(outcome="failed", failure=_failure_text(report) if report.when != "teardown" else
                     f"teardown failed: {_failure_text(report)}")
    elif entry["outcome"] == "failed":
        return
    elif report.skipped and xfail is not None:
        entry.update(outcome="xfailed", reason=str(xfail))
    elif report.skipped:
        entry.update(outcome="skipped", reason=_skip_reason(report))
    elif report.when == "call":
        entry.update(outcome="xpassed" if xfail is not None else "passed")


_CONFIG: dict = {}


# ---- the report ---------------------------------------------------------------------------------------------
def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if _is_worker(config) or RECORDS_ENV not in os.environ:
        return
    from .report import build_reports, read_records, with_outcomes

    records_dir = Path(os.environ[RECORDS_ENV])
    from .snapshots import read_improvements

    config.stash[IMPROVEMENTS] = read_improvements(records_dir)
    outcomes = config.stash.get(OUTCOMES, {})
    # The report says what pytest says: every generated check's final outcome (snapshot gate, xfail, skip included)
    # overrides what the test body could record before its last assertion.
    records = with_outcomes(read_records(records_dir), outcomes)
    if records:
        tools = tuple(dict.fromkeys(t for f in configured_families(config) for t in f.tools))
        config.stash[REPORT_PATHS] = build_reports(records, report_dir(config), None, tools=tools)
    shutil.rmtree(records_dir, ignore_errors=True)
    try:
        records_dir.parent.rmdir()  # only if no other session's records are there
    except OSError:
        pass
    empty = _empty_selection(config, outcomes)
    if empty:
        config.stash[EMPTY_SELECTION] = empty
        if exitstatus == pytest.ExitCode.OK and not config.getoption("--allow-empty-selection"):
            session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED


EMPTY_SELECTION = pytest.StashKey[str]()


def _empty_selection(config, outcomes: dict) -> str | None:
    """One line when parity checks were selected but none ran (all skipped): what was requested, why not."""
    if not outcomes or any(e["outcome"] in ("passed", "failed", "xpassed") for e in outcomes.values()):
        return None
    reasons = Counter(e.get("reason") or e["outcome"] for e in outcomes.values())
    requested = f"--backend {config.getoption('--backend')}" if config.getoption("--backend") else "the selection"
    why = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(3))
    return (f"no parity check ran: {requested} selected {len(outcomes)} checks and every one was skipped or "
            f"xfailed ({why}). Nothing was compared, so this run cannot pass; add --allow-empty-selection if that "
            f"is what you want.")


def pytest_terminal_summary(terminalreporter, config):
    outcomes = config.stash.get(OUTCOMES, {})
    skipped = Counter(e.get("reason") or "" for e in outcomes.values() if e["outcome"] == "skipped")
    if skipped:
        terminalreporter.write_sep("-", f"coreml-parity: {sum(skipped.values())} parity checks skipped, by reason")
        for reason, n in skipped.most_common():
            terminalreporter.write_line(f"{n:5d} x {reason}")
    empty = config.stash.get(EMPTY_SELECTION, None)
    if empty:
        allowed = config.getoption("--allow-empty-selection")
        terminalreporter.write_sep("=" if not allowed else "-", "coreml-parity: nothing was checked",
                                   red=not allowed, yellow=allowed)
        terminalreporter.write_line(empty)
    improvements = config.stash.get(IMPROVEMENTS, [])
    if improvements:
        terminalreporter.write_sep("-", f"better than the snapshot baselines ({len(improvements)}; "
                                        "pin them with --snapshot-update)")
        for line in improvements:
            terminalreporter.write_line(line)
    paths = config.stash.get(REPORT_PATHS, [])
    metadata = [p for p in paths if Path(p).name == "metadata.json"]
    if metadata:
        terminalreporter.write_sep("-", "coreml-parity report")
        for p in metadata:
            terminalreporter.write_line(f"{p}  (+ plots in {Path(p).parent})")
