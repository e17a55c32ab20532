"""Latency benchmarks, generated from the model family declarations like the parity suite, and their machinery.

``test_benchmark_latency[<family>/<component>/<engine>]`` times one realistic streaming call (a call from the
middle of the family's clip, with the component's initial state) on ``torch-cpu`` and on every selected variant
(``--backend``; Core ML variants skip off macOS). One pytest-benchmark group per component compares its engines;
``extra_info`` carries the load time, the first call, the real-time factor and the speed-up over torch.

    pytest tests/test_benchmarks.py --benchmark-enable          # time and print the tables
    pytest tests/test_benchmarks.py --benchmark-autosave        # ... and save the run (.benchmarks/)
    pytest tests/test_benchmarks.py --benchmark-compare --benchmark-compare-fail=median:25%   # gate on the last run

Without a benchmark option each body runs once (``conversions.benchmarking.disable_unless_requested``). The
machinery tests at the end run pytest in a scratch project on a tiny sleeping function: saving a run, comparing
against it (passing, and failing on an injected slowdown), and the default of timing nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conversions import benchmarking as bm
from conversions import registry
from conversions.pytest_plugin import skip_unless_runnable

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_latency(bench_case, parity, benchmark):
    family, component, engine = bench_case.family, bench_case.component, bench_case.engine
    if engine.variant is not None:
        skip_unless_runnable(engine.variant)
    feeds = bm.realistic_feeds(parity.clip_feeds(family, component), parity.initial_state(family, component))
    loaded = bm.load_engine(parity, family, component, engine)
    started = time.perf_counter()
    first = loaded.run(feeds)
    first_call_ms = 1000 * (time.perf_counter() - started)
    missing = set(component.outputs) - set(first)
    assert not missing, f"{bench_case.id}: outputs {sorted(missing)} missing from {sorted(first)}"
    assert all(np.isfinite(np.asarray(first[n], dtype=np.float64)).all() for n in component.outputs), bench_case.id

    benchmark.group = bench_case.group
    audio_ms = bm.audio_ms_per_call(component)
    benchmark.extra_info.update(
        engine=engine.id, backend=engine.backend, compute_units=engine.compute_units, precision=engine.precision,
        package_size_bytes=loaded.package_size_bytes, audio_ms_per_call=audio_ms,
        load_s=round(loaded.load_s, 4), first_call_ms=round(first_call_ms, 3))
    started = time.perf_counter()
    loaded.run(feeds)  # one warm call sizes the rounds
    rounds = bm.rounds_for(time.perf_counter() - started)
    out = benchmark.pedantic(loaded.run, args=(feeds,), rounds=rounds, warmup_rounds=2, iterations=1)
    assert set(component.outputs) <= set(out)

    if not benchmark.enabled:
        return
    median = benchmark.stats["median"]
    benchmark.extra_info["real_time_factor"] = round(bm.real_time_factor(audio_ms, median), 2)
    if engine.backend == "torch":
        bm.note_torch_median(bench_case.group, median)
        benchmark.extra_info["speedup_vs_torch"] = 1.0
        return
    reference = bm.torch_median(bench_case.group)
    if reference is None:  # torch-cpu deselected (-k): time it quickly outside pytest-benchmark
        torch_engine = bm.load_engine(parity, family, component, bm.TORCH_ENGINE)
        reference = bm.quick_median(torch_engine.run, feeds)
    benchmark.extra_info["speedup_vs_torch"] = round(bm.speedup(reference, median), 3)


# ---- helpers: hand-worked figures ------------------------------------------------------------------------------
def test_engines_put_torch_first_then_the_variants_in_order():
    variants = registry.select_variants("mil")
    got = bm.engines(variants)
    assert [e.id for e in got] == ["torch-cpu", "mil-fp16", "mil-fp32"]
    assert [e.precision for e in got] == ["fp32", "fp16", "fp32"]
    assert got[0].variant is None and got[1].variant is variants[0]


def test_bench_cases_group_each_component_with_torch_first():
    family = registry.families()[0]
    cases = bm.bench_cases([family], registry.select_variants("mil"))
    assert len(cases) == 3 * len(family.components)
    for start in range(0, len(cases), 3):
        group = cases[start:start + 3]
        assert {c.group for c in group} == {f"{family.name}/{group[0].component.name}"}
        assert group[0].engine.id == "torch-cpu"
    assert cases[1].id == f"{family.name}/{family.components[0].name}/mil-fp16"


def test_realistic_feeds_take_the_middle_call_with_the_initial_state():
    calls = [{"x": np.full(2, i, np.float32)} for i in range(5)]
    state = {"h": np.zeros(3, np.float32)}
    feeds = bm.realistic_feeds(calls, state)
    assert feeds["x"].tolist() == [2.0, 2.0] and feeds["h"].tolist() == [0.0, 0.0, 0.0]
    assert bm.realistic_feeds(calls[:4], {})["x"][0] == 2.0  # 4 calls: index 4 // 2
    assert bm.realistic_feeds(calls, {}, call=0)["x"][0] == 0.0
    assert calls[2] == {"x": calls[2]["x"]}  # the clip's own dicts are not modified


@pytest.mark.parametrize("calls, call, match", [([], None, "call_feeds"), ([{"x": 1}], 1, "call: .*got 1"),
                                                ([{"x": 1}], -1, "call: .*got -1")])
def test_realistic_feeds_reject_bad_input(calls, call, match):
    with pytest.raises(ValueError, match=match):
        bm.realistic_feeds(calls, {}, call)


def test_audio_per_call_is_what_the_component_declares():
    assert bm.audio_ms_per_call(SimpleNamespace(audio_ms_per_call=256.0)) == 256.0
    with pytest.raises(ValueError, match="audio_ms_per_call"):
        bm.audio_ms_per_call(SimpleNamespace(audio_ms_per_call=None))


def test_real_time_factor_and_speedup_by_hand():
    assert bm.real_time_factor(32.0, 0.002) == pytest.approx(16.0)  # 32 ms of audio in 2 ms
    assert bm.real_time_factor(256.0, 0.512) == pytest.approx(0.5)
    assert bm.speedup(0.004, 0.002) == pytest.approx(2.0)
    assert bm.speedup(0.001, 0.004) == pytest.approx(0.25)
    for call, name in ((lambda: bm.real_time_factor(0.0, 1.0), "audio_ms"), (lambda: bm.real_time_factor(1.0, 0.0),
                        "median_s"), (lambda: bm.speedup(-1.0, 1.0), "reference_median_s"),
                       (lambda: bm.speedup(1.0, float("nan")), "median_s")):
        with pytest.raises(ValueError, match=name):
            call()


def test_rounds_fit_the_budget_within_the_limits():
    assert bm.rounds_for(0.004, budget_s=0.4) == 100
    assert bm.rounds_for(1e-6, budget_s=0.4) == 200
    assert bm.rounds_for(0.5, budget_s=0.4) == 10
    with pytest.raises(ValueError, match="call_s"):
        bm.rounds_for(0.0)
    with pytest.raises(ValueError, match="min_rounds"):
        bm.rounds_for(0.01, min_rounds=5, max_rounds=2)


def test_quick_median_measures_a_known_sleep():
    assert 0.004 <= bm.quick_median(lambda feeds: time.sleep(0.004), {}, repeat=5, warmup=0) < 0.05


def _fake_config(**given):
    options = {"benchmark_disable": False, "benchmark_only": False, "benchmark_enable": False,
               "benchmark_autosave": None, "benchmark_save": None, "benchmark_compare": [], "benchmark_json": None,
               "benchmark_histogram": [], "benchmark_cprofile": None, **given}
    option = SimpleNamespace(**options)
    return SimpleNamespace(option=option, getoption=lambda name, default=None: getattr(option, name, default))


def test_disable_unless_requested_disables_a_plain_run():
    config = _fake_config()
    assert bm.disable_unless_requested(config) is True
    assert config.option.benchmark_disable is True


@pytest.mark.parametrize("given", [{"benchmark_only": True}, {"benchmark_enable": True},
                                   {"benchmark_autosave": "tag"}, {"benchmark_save": "name"},
                                   {"benchmark_compare": True}, {"benchmark_compare": "0001"},
                                   {"benchmark_json": Path("out.json")}, {"benchmark_histogram": ["h"]},
                                   {"benchmark_cprofile": "tottime"}], ids=lambda g: next(iter(g)))
def test_disable_unless_requested_keeps_requested_timings(given):
    config = _fake_config(**given)
    assert bm.disable_unless_requested(config) is False
    assert config.option.benchmark_disable is False


def test_disable_unless_requested_without_pytest_benchmark_does_nothing():
    option = SimpleNamespace()
    config = SimpleNamespace(option=option, getoption=lambda name, default=None: getattr(option, name, default))
    assert bm.disable_unless_requested(config) is False
    assert not hasattr(option, "benchmark_disable")


# ---- the machinery, end to end in a scratch project ------------------------------------------------------------
SCRATCH_CONFTEST = """
from conversions.benchmarking import disable_unless_requested


def pytest_configure(config):
    disable_unless_requested(config)
"""

# Sleeps rather than spins: a sleep's median holds on a loaded machine, so the 25% gate only sees the injection.
SCRATCH_TEST = """
import os
import time


def work():
    with open(os.environ["BENCH_CALLS_FILE"], "a") as f:
        f.write("x")
    time.sleep(0.002 * float(os.environ.get("BENCH_SLOWDOWN", "1")))


def test_tiny(benchmark):
    benchmark(work)
"""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_scratch")
    (root / "pytest.ini").write_text("[pytest]\n")  # its own rootdir: not the repository's addopts or conftest
    (root / "conftest.py").write_text(textwrap.dedent(SCRATCH_CONFTEST))
    (root / "test_tiny.py").write_text(textwrap.dedent(SCRATCH_TEST))
    return root


def _run_scratch(root: Path, *args: str, slowdown: float = 1.0) -> tuple[subprocess.CompletedProcess, int]:
    """pytest in the scratch project; returns the process and how many times the benchmarked function ran."""
    from conversions.testing import clean_subprocess_env

    calls_file = root / f"calls-{time.monotonic_ns()}"
    # Clean: under pytest-xdist an inherited PYTEST_XDIST_WORKER makes the child's pytest-benchmark disable itself.
    env = clean_subprocess_env({"PYTHONPATH": str(REPO), "BENCH_CALLS_FILE": str(calls_file),
                                "BENCH_SLOWDOWN": str(slowdown)})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-p", "no:hypothesispytest", "-p", "no:syrupy", "test_tiny.py",
                           "--benchmark-min-rounds=5", "--benchmark-max-time=0.05", "--benchmark-warmup=off",
                           *args], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    calls = len(calls_file.read_text()) if calls_file.exists() else 0
    return proc, calls


def test_autosave_then_compare_passes_unchanged_and_fails_on_a_slowdown(scratch, tmp_path):
    storage = f"--benchmark-storage={tmp_path / 'runs'}"
    saved, calls = _run_scratch(scratch, "--benchmark-autosave", storage)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    assert calls >= 6  # one calibration/first call plus at least the 5 minimum rounds
    runs = list((tmp_path / "runs").rglob("*.json"))
    assert len(runs) == 1, runs
    saved_run = json.loads(runs[0].read_text())
    assert [b["name"] for b in saved_run["benchmarks"]] == ["test_tiny"]
    assert saved_run["benchmarks"][0]["stats"]["median"] >= 0.002

    gate = ("--benchmark-compare", "--benchmark-compare-fail=median:25%", storage)
    same, _ = _run_scratch(scratch, *gate)
    assert same.returncode == 0, same.stdout + same.stderr
    slower, _ = _run_scratch(scratch, *gate, slowdown=3.0)
    assert slower.returncode != 0, slower.stdout + slower.stderr
    assert "Performance has regressed" in slower.stdout + slower.stderr


def test_without_benchmark_options_the_body_runs_once_untimed(scratch):
    plain, calls = _run_scratch(scratch)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert calls == 1
    assert "Name (time in" not in plain.stdout  # the header of pytest-benchmark's stats table

    timed, calls = _run_scratch(scratch, "--benchmark-enable")
    assert timed.returncode == 0, timed.stdout + timed.stderr
    assert calls >= 6 and "Name (time in" in timed.stdout
