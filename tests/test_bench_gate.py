"""The benchmark gate (``conversions/bench_gate.py``, ``scripts/bench_gate.py``): statistics and end to end.

The statistics are checked on made-up block medians: identical code with noise passes, a 2x slowdown fails, one
noisy block (either side) does not decide. End to end, the gate runs on a scratch git repository with a tiny
package whose benchmark sleeps (a sleep's median holds on a loaded machine): a head commit that doubles the sleep
exits 1 and names the benchmark; unchanged code exits 0; bad revisions and empty selections exit 2, never with a
traceback; the temporary worktrees are gone afterwards.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conversions import bench_gate as gate

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_gate.py"


# ---- statistics ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, rank, confidence", [(1, 1, 0.5), (3, 1, 0.875), (5, 1, 31 / 32), (7, 1, 127 / 128),
                                                 (8, 2, 1 - 9 / 256), (10, 2, 1 - 11 / 1024),
                                                 (11, 3, 1 - 67 / 2048)])
def test_sign_test_rank_by_hand(n, rank, confidence):
    # rank k: the largest with P(Binomial(n, 1/2) <= k - 1) <= 5 %; below 5 values the minimum, at what it covers
    assert gate.sign_test_rank(n) == (rank, pytest.approx(confidence))


def test_median_interval_takes_order_statistics():
    low, high, confidence = gate.median_interval([1.3, 0.9, 1.1, 1.0, 5.0, 1.2, 0.95, 1.05])
    assert (low, high) == (0.95, 1.3)  # n = 8: the 2nd smallest and the 2nd largest
    assert confidence == pytest.approx(1 - 9 / 256)
    with pytest.raises(ValueError, match="n"):
        gate.median_interval([])


def _noisy(rng: random.Random, median: float, n: int, spread: float = 0.15) -> list[float]:
    return [median * rng.uniform(1 - spread, 1 + spread) for _ in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_identical_code_with_noise_passes(seed):
    rng = random.Random(seed)
    load = [rng.choice([1.0, 1.0, 1.6, 2.2]) for _ in range(5)]  # the machine's load changes between pairs
    base = [m * f for m, f in zip(_noisy(rng, 0.004, 5), load)]
    head = [m * f for m, f in zip(_noisy(rng, 0.004, 5), load)]
    result = gate.compare("b", base, head)
    assert result.verdict in (gate.VERDICT_OK, gate.VERDICT_FASTER, gate.VERDICT_NOISY), result
    assert result.ci_low <= 1.25
    assert result.ci_low <= result.ratio <= result.ci_high


@pytest.mark.parametrize("seed", range(20))
def test_twice_as_slow_fails(seed):
    rng = random.Random(seed)
    base = _noisy(rng, 0.004, 5)
    head = _noisy(rng, 0.008, 5)
    result = gate.compare("b", base, head)
    assert result.verdict == gate.VERDICT_REGRESSION, result
    assert result.ratio == pytest.approx(2.0, rel=0.35)
    assert result.ci_low > 1.25


def test_one_noisy_block_does_not_fail():
    base = [0.0040, 0.0041, 0.0039, 0.0040, 0.0040]
    head = [0.0040, 0.0120, 0.0040, 0.0041, 0.0039]  # a busy moment during one head block: 3x
    result = gate.compare("b", base, head)
    assert result.verdict == gate.VERDICT_OK and result.ratio == pytest.approx(1.0, abs=0.03)
    assert max(result.ratios) == pytest.approx(2.93, rel=0.01) and result.ci_low < 1.0


def test_a_slowdown_over_the_threshold_in_most_pairs_only_is_noisy_not_a_regression():
    base = [0.004] * 5
    head = [0.0060, 0.0062, 0.0058, 0.0040, 0.0061]  # 1.5x, but one pair says unchanged
    result = gate.compare("b", base, head)
    assert result.verdict == gate.VERDICT_NOISY and result.ratio > 1.25 and result.ci_low <= 1.25


def test_faster_new_and_removed():
    assert gate.compare("b", [0.004] * 3, [0.001] * 3).verdict == gate.VERDICT_FASTER
    new = gate.compare("b", [None, None], [0.002, 0.002])
    assert new.verdict == gate.VERDICT_NEW and new.ratio is None and new.head_median == 0.002
    assert gate.compare("b", [0.002, 0.002], [None, None]).verdict == gate.VERDICT_REMOVED
    partial = gate.compare("b", [0.002, None, 0.002], [0.004, 0.004, 0.004])  # pair 2 had no base
    assert partial.ratios == [2.0, 2.0]


@pytest.mark.parametrize("kwargs, match", [({"threshold": 1.0}, "threshold"), ({"threshold": 0.8}, "threshold")])
def test_compare_rejects_bad_thresholds(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gate.compare("b", [1.0], [1.0], **kwargs)


def test_compare_rejects_bad_medians():
    with pytest.raises(ValueError, match="one base and one head"):
        gate.compare("b", [1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        gate.compare("b", [0.0], [1.0])


def test_blocks_alternate_abba():
    assert gate.block_order(3) == [(0, "base"), (0, "head"), (1, "head"), (1, "base"), (2, "base"), (2, "head")]


def test_table_names_each_benchmark_with_times_ratio_interval_verdict():
    rows = [gate.compare("test_benchmark_latency[fam/comp/mil-fp16]", [0.0004] * 5, [0.0008] * 5),
            gate.compare("test_benchmark_latency[fam/comp/torch-cpu]", [0.0123] * 5, [0.0121] * 5),
            gate.compare("test_plain", [None] * 5, [1.5] * 5)]
    lines = gate.format_table(rows).splitlines()
    assert lines[0].split() == ["benchmark", "base", "median", "head", "median", "ratio", "interval", "verdict"]
    assert lines[2].split() == ["fam/comp/mil-fp16", "400", "us", "800", "us", "2.00x", "[2.00,", "2.00]",
                                "REGRESSION"]
    assert lines[3].split() == ["fam/comp/torch-cpu", "12.3", "ms", "12.1", "ms", "0.98x", "[0.98,", "0.98]", "ok"]
    assert lines[4].split() == ["test_plain", "—", "1.5", "s", "—", "—", "new"]


def test_subprocess_env_scrubs_pytest_session_variables(tmp_path):
    env = gate.subprocess_env(tmp_path, {"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_TESTRUNUID": "x",
                                         "PYTEST_ADDOPTS": "-x", "PYTEST_CURRENT_TEST": "t (call)",
                                         "PYTHONPATH": "/elsewhere", "PATH": "/bin", "KEEP": "1"})
    assert env == {"PYTHONPATH": str(tmp_path), "PATH": "/bin", "KEEP": "1", "TQDM_DISABLE": "1"}


def test_pytest_command_selects_the_latency_benchmarks_into_a_json_file(tmp_path):
    side = gate.Side("base", tmp_path, "x", export_dir=tmp_path / "e", report_dir=tmp_path / "r")
    command = gate.pytest_command(side, "silero and unified-36ms", tmp_path / "o.json", "tests/test_benchmarks.py",
                                  ["--backend", "mil"])
    assert command[:3] == [sys.executable, "-m", "pytest"]
    assert command[command.index("-k") + 1] == "(silero and unified-36ms) and test_benchmark_latency"
    for option, value in (("--benchmark-json", tmp_path / "o.json"), ("--export-dir", tmp_path / "e"),
                          ("--report-dir", tmp_path / "r"), ("-p", "no:cacheprovider")):
        assert command[command.index(option) + 1] == str(value)
    assert "--benchmark-only" in command and command[-2:] == ["--backend", "mil"]
    assert gate.selection(None) == gate.selection(" ") == "test_benchmark_latency"


def test_read_benchmark_json(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"benchmarks": [
        {"name": "test_benchmark_latency[f/c/e]", "group": "f/c", "extra_info": {"engine": "e"},
         "stats": {"median": 0.25}}]}))
    assert gate.read_benchmark_json(path) == {
        "test_benchmark_latency[f/c/e]": gate.Measurement("test_benchmark_latency[f/c/e]", "f/c", "e", 0.25)}


# ---- end to end in a scratch git repository --------------------------------------------------------------------
SCRATCH_PACKAGE = """
import time

DELAY_S = {delay}


def work():
    time.sleep(DELAY_S)


def other():
    time.sleep(0.002)
"""

SCRATCH_BENCHMARKS = """
import pytest

import tinypkg


@pytest.mark.parametrize("case", ["tiny/work/sleep", "tiny/other/sleep"])
def test_benchmark_latency(benchmark, case):
    benchmark.group = case.rsplit("/", 1)[0]
    benchmark.extra_info["engine"] = "sleep"
    run = tinypkg.work if case == "tiny/work/sleep" else tinypkg.other
    benchmark.pedantic(run, rounds=15, warmup_rounds=1, iterations=1)


def test_not_a_latency_benchmark(benchmark):
    raise AssertionError("the gate selects test_benchmark_latency only")
"""

# The suite's parity plugin defines these; the scratch project runs without it (faster), so it accepts them itself.
SCRATCH_CONFTEST = """
def pytest_addoption(parser):
    for flag in ("--export-dir", "--report-dir"):
        try:
            parser.addoption(flag, default=None)
        except ValueError:  # the installed parity plugin already defines it
            pass
"""

# What the scratch pytest runs need no part of: the parity plugin (it would import the suite), xdist, hypothesis.
QUICK = ("--", "-p", "no:conversions.pytest_plugin", "-p", "no:xdist", "-p", "no:hypothesispytest",
         "-p", "no:syrupy")


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                           "-c", "commit.gpgsign=false", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _write_package(root: Path, delay: float) -> None:
    (root / "tinypkg").mkdir(exist_ok=True)
    (root / "tinypkg" / "__init__.py").write_text(textwrap.dedent(SCRATCH_PACKAGE.format(delay=delay)))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A git repository with a base commit (2 ms of work) and a head commit that doubles it (4 ms)."""
    root = tmp_path_factory.mktemp("bench_gate_scratch")
    _git(root, "init", "-q")
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "conftest.py").write_text(textwrap.dedent(SCRATCH_CONFTEST))
    (root / "tests").mkdir()
    (root / "tests" / "test_benchmarks.py").write_text(textwrap.dedent(SCRATCH_BENCHMARKS))
    _write_package(root, 0.002)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "base")
    _write_package(root, 0.004)
    _git(root, "commit", "-q", "-am", "head: twice the work")
    return root


def _gate(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=root, env=gate.subprocess_env(REPO),
                          capture_output=True, text=True, timeout=timeout)


def _worktrees(root: Path) -> list[str]:
    return [ln for ln in _git(root, "worktree", "list", "--porcelain").splitlines() if ln.startswith("worktree ")]


def _row(table: dict, label: str) -> dict:
    return next(r for r in table["benchmarks"] if r["label"] == label)


def test_a_doubled_sleep_fails_and_the_table_names_it(scratch, tmp_path):
    # base = the previous commit in a worktree, head = the working tree: each must import its own tinypkg, or
    # both would sleep 4 ms and the gate would pass
    out = tmp_path / "gate.json"
    done = _gate(scratch, "--base", "HEAD~1", "--blocks", "3", "--warmup-blocks", "0", "--json", str(out), *QUICK)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    row = next(ln for ln in done.stdout.splitlines() if ln.startswith("tiny/work/sleep"))
    assert row.endswith("REGRESSION"), done.stdout
    assert "FAIL: 1 of 2 benchmarks" in done.stdout and "tiny/work/sleep" in done.stdout.splitlines()[-1]
    table = json.loads(out.read_text())
    assert table["verdict"] == "fail" and table["pairs"] == 3
    work, other = _row(table, "tiny/work/sleep"), _row(table, "tiny/other/sleep")
    assert work["verdict"] == "REGRESSION" and work["engine"] == "sleep" and work["group"] == "tiny/work"
    assert 0.002 <= work["base_median"] < 0.0035 <= 0.004 <= work["head_median"], work
    assert work["ci_low"] > 1.25 and len(work["ratios"]) == 3
    assert other["verdict"] != "REGRESSION" and other["ci_low"] < 1.25
    assert [r["label"] for r in table["benchmarks"]] == ["tiny/work/sleep", "tiny/other/sleep"]
    assert _worktrees(scratch) == [f"worktree {scratch.resolve()}"]


def test_unchanged_code_passes(scratch):
    # head as a revision: both sides in temporary worktrees of the same commit
    done = _gate(scratch, "--base", "HEAD", "--head", "HEAD", "--blocks", "3", "--warmup-blocks", "0", *QUICK)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {ln.split()[0]: ln.split()[-1] for ln in done.stdout.splitlines() if ln.startswith("tiny/")}
    assert set(rows) == {"tiny/work/sleep", "tiny/other/sleep"} and "REGRESSION" not in rows.values(), done.stdout
    assert done.stdout.splitlines()[-1].startswith("PASS")
    assert _worktrees(scratch) == [f"worktree {scratch.resolve()}"]


@pytest.mark.parametrize("args, message", [
    (("--base", "no-such-rev"), "unknown revision 'no-such-rev'"),
    (("--base", "HEAD", "--head", "no-such-rev"), "unknown revision 'no-such-rev'"),
    (("--base", "HEAD", "--blocks", "0"), "--blocks"),
    (("--base", "HEAD", "--threshold", "0.9"), "--threshold"),
    (("--head", "HEAD"), "--base"),
])
def test_usage_errors_exit_2_without_a_traceback(scratch, args, message):
    done = _gate(scratch, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_outside_a_git_repository_is_a_usage_error(tmp_path):
    done = _gate(tmp_path, "--base", "HEAD")
    assert done.returncode == 2 and "not inside a git repository" in done.stderr


def test_a_selection_without_benchmarks_is_a_usage_error(scratch):
    done = _gate(scratch, "--base", "HEAD", "-k", "nothing_matches_this", "--blocks", "1", "--warmup-blocks", "0",
                 *QUICK)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no benchmark selected" in done.stderr and "Traceback" not in done.stderr
    assert _worktrees(scratch) == [f"worktree {scratch.resolve()}"]


def test_a_failing_benchmark_run_is_reported_not_raised(scratch, tmp_path):
    done = _gate(scratch, "--base", "HEAD", "--bench-file", "tests/missing.py", "--blocks", "1", *QUICK)
    assert done.returncode == 2 and "has no tests/missing.py" in done.stderr
    done = _gate(scratch, "--base", "HEAD", "--blocks", "1", "--warmup-blocks", "0", "--", "--no-such-option")
    assert done.returncode == 2 and "pytest exited with 4" in done.stderr and "Traceback" not in done.stderr
    assert _worktrees(scratch) == [f"worktree {scratch.resolve()}"]
