"""Benchmark gate: is this checkout slower than a base commit, measured like with like on this machine?

``pytest --benchmark-compare`` judges a run against a run saved elsewhere (another runner, another moment): on a
shared or busy machine a 40-80 % "regression" of unchanged code is ordinary. This gate measures both sides here and
now instead, alternating them so that a busy phase of the machine hits both:

1. **Checkouts.** ``head`` is the working tree (default), a directory, or a revision; ``base`` is a revision,
   checked out with ``git worktree add --detach`` into a temporary directory and removed afterwards. Each side runs
   in its own subprocess with cwd and ``PYTHONPATH`` set to its checkout and the same interpreter, so each imports
   its own ``conversions`` (a ``PYTHONPATH`` entry wins over the editable install's finder, which comes last).
2. **Blocks.** One block is one ``pytest tests/test_benchmarks.py --benchmark-only -k "<expr> and
   test_benchmark_latency" --benchmark-json FILE`` in a checkout: the suite's own benchmarks with their own rounds
   and warm-up calls. After one discarded warm-up block per side (exports into a per-side temporary
   ``--export-dir``; exporting is never timed), ``--blocks N`` pairs run in ABBA order: base head, head base, ...
3. **Statistics.** Per benchmark and pair, the ratio head median / base median of two neighbouring blocks; the
   estimate is the median of the pair ratios, with the distribution-free (sign-test) confidence interval of that
   median: order statistics of the sorted ratios (with 5 to 7 pairs, the lower bound is the smallest ratio).
   A benchmark is a **regression** only if the interval's lower bound exceeds ``--threshold`` (default 1.25:
   head 25 % slower): a noisy block moves one ratio, not the bound, and a real slowdown moves every pair.

The verdict is a table (benchmark, base median, head median, ratio, interval, verdict), optionally written as JSON,
and the exit status: 0 no regression, 1 a regression, 2 a usage or setup error (unknown revision, not a git
repository, no benchmark selected, a benchmark run that failed). Errors are one message, never a traceback.

This module only uses the standard library: it runs from the head checkout and imports nothing of the suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2

DEFAULT_THRESHOLD = 1.25
DEFAULT_BLOCKS = 5  # pairs: with 5 the interval's lower bound is the smallest ratio, at 97 % one-sided confidence
DEFAULT_ALPHA = 0.05  # one-sided: the chance that a lower bound lies above the true median ratio
DEFAULT_BENCH_FILE = "tests/test_benchmarks.py"
BENCH_TEST = "test_benchmark_latency"
DEFAULT_TIMEOUT_S = 1800.0

# Inherited from an enclosing pytest session, these would change what the child pytest does: an xdist worker's
# variables make pytest-benchmark disable itself, PYTEST_ADDOPTS adds options, PYTEST_CURRENT_TEST is the outer test.
# What a child process must not inherit from a pytest session (pytest-xdist's worker identity, the parent's options
# and the parity plugin's records directory); conversions.testing.clean_subprocess_env uses the same lists.
SCRUBBED_ENV = ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "COREML_PARITY_RECORDS_DIR")
SCRUBBED_ENV_PREFIXES = ("PYTEST_XDIST_",)

VERDICT_REGRESSION = "REGRESSION"
VERDICT_NOISY = "noisy"  # the median ratio is over the threshold but the interval is not: no failure
VERDICT_OK = "ok"
VERDICT_FASTER = "faster"
VERDICT_NEW = "new"  # only in head: nothing to compare with
VERDICT_REMOVED = "removed"  # only in base


class GateError(Exception):
    """A usage or setup problem: reported as one line, exit status 2."""


# ---- statistics ------------------------------------------------------------------------------------------------
def sign_test_rank(n: int, alpha: float = DEFAULT_ALPHA) -> tuple[int, float]:
    """The 1-based rank ``k`` of the order statistic that is a one-sided lower confidence bound of the median of
    ``n`` independent values, and that bound's actual confidence ``1 - P(Binomial(n, 1/2) <= k - 1)``.

    ``k`` is the largest rank whose confidence is at least ``1 - alpha``; below 5 values no rank reaches 95 %, and
    the smallest value (``k = 1``, confidence ``1 - 2**-n``) is returned."""
    if n < 1:
        raise ValueError(f"n: expected at least 1 value, got {n}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha: expected a probability in (0, 0.5), got {alpha}")
    cdf, k = 0.0, 1
    for j in range(n):
        cdf += math.comb(n, j) / 2 ** n  # P(B <= j)
        if cdf > alpha:
            break
        k = j + 1  # P(B <= k - 1) <= alpha
    k = min(k, (n + 1) // 2)
    return k, 1.0 - sum(math.comb(n, j) for j in range(k)) / 2 ** n


def median_interval(values: Sequence[float], alpha: float = DEFAULT_ALPHA) -> tuple[float, float, float]:
    """``(low, high, confidence)``: the distribution-free interval ``[x_(k), x_(n+1-k)]`` of the median of
    ``values`` (sign test), each bound holding with one-sided ``confidence`` (see :func:`sign_test_rank`)."""
    ordered = sorted(values)
    k, confidence = sign_test_rank(len(ordered), alpha)
    return ordered[k - 1], ordered[len(ordered) - k], confidence


@dataclass
class Comparison:
    """One benchmark's verdict. Times in seconds; the ``*_medians`` lists hold one value per block pair."""

    name: str
    group: str | None = None
    engine: str | None = None
    base_medians: list[float] = field(default_factory=list)
    head_medians: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    base_median: float | None = None
    head_median: float | None = None
    ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    verdict: str = VERDICT_OK

    @property
    def label(self) -> str:
        """The test id's parameters (``silero-vad/unified-36ms/mil-fp16``), or the test name if it has none."""
        if "[" in self.name and self.name.endswith("]"):
            return self.name[self.name.index("[") + 1:-1]
        return self.name


def compare(name: str, base_medians: Sequence[float | None], head_medians: Sequence[float | None],
            threshold: float = DEFAULT_THRESHOLD, alpha: float = DEFAULT_ALPHA, group: str | None = None,
            engine: str | None = None) -> Comparison:
    """The verdict on one benchmark from its per-block medians, ``base_medians[i]`` and ``head_medians[i]`` measured
    next to each other (pair ``i``); ``None`` where a block did not run it. Only pairs with both sides count."""
    if not threshold > 1:
        raise ValueError(f"threshold: expected a slowdown factor above 1, got {threshold}")
    if len(base_medians) != len(head_medians):
        raise ValueError(f"expected one base and one head median per pair, got {len(base_medians)} and "
                         f"{len(head_medians)}")
    result = Comparison(name, group, engine)
    base = [b for b in base_medians if b is not None]
    head = [h for h in head_medians if h is not None]
    result.base_median = statistics.median(base) if base else None
    result.head_median = statistics.median(head) if head else None
    if not base:
        result.verdict = VERDICT_NEW
        return result
    if not head:
        result.verdict = VERDICT_REMOVED
        return result
    pairs = [(b, h) for b, h in zip(base_medians, head_medians) if b is not None and h is not None]
    if not pairs:  # each side ran in different blocks only: no neighbouring measurements to compare
        result.verdict = VERDICT_NEW
        return result
    for b, h in pairs:
        if not (b > 0 and h > 0 and math.isfinite(b) and math.isfinite(h)):
            raise ValueError(f"{name}: medians must be positive durations, got base {b} and head {h}")
    result.base_medians = [b for b, _ in pairs]
    result.head_medians = [h for _, h in pairs]
    result.ratios = [h / b for b, h in pairs]
    result.ratio = statistics.median(result.ratios)
    result.ci_low, result.ci_high, result.confidence = median_interval(result.ratios, alpha)
    if result.ci_low > threshold:
        result.verdict = VERDICT_REGRESSION
    elif result.ratio > threshold:
        result.verdict = VERDICT_NOISY
    elif result.ci_high < 1 / threshold:
        result.verdict = VERDICT_FASTER
    else:
        result.verdict = VERDICT_OK
    return result


# ---- the table -------------------------------------------------------------------------------------------------
def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}" if seconds / scale < 100 else f"{seconds / scale:.0f} {unit}"
    return f"{seconds / 1e-9:.0f} ns"


def format_table(rows: Sequence[Comparison]) -> str:
    header = ("benchmark", "base median", "head median", "ratio", "interval", "verdict")
    lines = [header]
    for row in rows:
        ratio = "—" if row.ratio is None else f"{row.ratio:.2f}x"
        interval = "—" if row.ci_low is None else f"[{row.ci_low:.2f}, {row.ci_high:.2f}]"
        lines.append((row.label, format_seconds(row.base_median), format_seconds(row.head_median), ratio, interval,
                      row.verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:-1], widths[1:-1])] + [line[-1]]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# ---- git and the checkouts -------------------------------------------------------------------------------------
def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise GateError("git is not installed (needed to check out the base commit)") from None


def repository_root(where: Path) -> Path:
    done = _git(where, "rev-parse", "--show-toplevel")
    if done.returncode != 0:
        raise GateError(f"{where} is not inside a git repository: {done.stderr.strip()}")
    return Path(done.stdout.strip())


def resolve_commit(repo: Path, rev: str) -> str:
    if not rev or rev.startswith("-"):
        raise GateError(f"not a revision: {rev!r}")
    done = _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
    if done.returncode != 0:
        raise GateError(f"unknown revision {rev!r} in {repo} (a shallow clone may lack it: fetch it first)")
    return done.stdout.strip()


@dataclass
class Side:
    """One side of the comparison: where it runs and what it is."""

    role: str  # "base" or "head"
    checkout: Path
    description: str
    sha: str | None = None
    export_dir: Path | None = None
    report_dir: Path | None = None
    worktree: bool = False  # a temporary worktree of ours, removed at the end


def add_worktree(repo: Path, sha: str, path: Path) -> None:
    done = _git(repo, "worktree", "add", "--detach", "--quiet", str(path), sha)
    if done.returncode != 0:
        raise GateError(f"git worktree add {path} {sha[:12]} failed: {done.stderr.strip()}")


def remove_worktree(repo: Path, path: Path, log: Callable[[str], None]) -> None:
    done = _git(repo, "worktree", "remove", "--force", str(path))
    if done.returncode != 0:
        log(f"warning: could not remove the worktree {path}: {done.stderr.strip()}")


# ---- measuring -------------------------------------------------------------------------------------------------
def subprocess_env(checkout: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a measurement in ``checkout``: the caller's, without pytest's session variables, with
    ``PYTHONPATH`` set to the checkout alone (so it imports its own code)."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items()
           if k not in SCRUBBED_ENV and not k.startswith(SCRUBBED_ENV_PREFIXES)}
    env["PYTHONPATH"] = str(checkout)
    env.setdefault("TQDM_DISABLE", "1")
    return env


def selection(expr: str | None) -> str:
    return f"({expr}) and {BENCH_TEST}" if expr and expr.strip() else BENCH_TEST


def pytest_command(side: Side, expr: str | None, json_out: Path, bench_file: str,
                   extra: Sequence[str] = ()) -> list[str]:
    command = [sys.executable, "-m", "pytest", bench_file, "--benchmark-only", "-k", selection(expr),
               "--benchmark-json", str(json_out), "-p", "no:cacheprovider", "-q"]
    if side.export_dir is not None:
        command += ["--export-dir", str(side.export_dir)]
    if side.report_dir is not None:
        command += ["--report-dir", str(side.report_dir)]
    return command + list(extra)


@dataclass(frozen=True)
class Measurement:
    name: str
    group: str | None
    engine: str | None
    median: float


def read_benchmark_json(path: Path) -> dict[str, Measurement]:
    """Per test name, the median and labels of each benchmark in a pytest-benchmark ``--benchmark-json`` file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    found = {}
    for bench in data.get("benchmarks", []):
        extra = bench.get("extra_info") or {}
        found[bench["name"]] = Measurement(bench["name"], bench.get("group"), extra.get("engine"),
                                           float(bench["stats"]["median"]))
    return found


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def run_block(side: Side, expr: str | None, workdir: Path, tag: str, bench_file: str, extra: Sequence[str] = (),
              timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Measurement]:
    """One block: the selected benchmarks once in ``side``'s checkout, in a subprocess. Returns their medians
    (none if the selection is empty there); a failing or timed-out run is a :class:`GateError`."""
    json_out = workdir / f"{tag}-{side.role}.json"
    log_path = workdir / f"{tag}-{side.role}.log"
    command = pytest_command(side, expr, json_out, bench_file, extra)
    with open(log_path, "w", encoding="utf-8") as log_file:
        try:
            done = subprocess.run(command, cwd=side.checkout, env=subprocess_env(side.checkout), stdout=log_file,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise GateError(f"{side.role} ({side.description}): the benchmarks took over {timeout_s:.0f} s "
                            f"(--timeout); last output:\n{_tail(log_path)}") from None
    if done.returncode == 5:  # pytest: no tests collected
        return {}
    if done.returncode != 0 or not json_out.exists():
        raise GateError(f"{side.role} ({side.description}): pytest exited with {done.returncode}; "
                        f"command: {' '.join(command)}\nlast output:\n{_tail(log_path)}")
    try:
        return read_benchmark_json(json_out)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GateError(f"{side.role} ({side.description}): unreadable --benchmark-json {json_out}: {e!r}") from None


def block_order(pairs: int) -> list[tuple[int, str]]:
    """``(pair, role)`` in ABBA order: base head, head base, base head, ..."""
    order = []
    for pair in range(pairs):
        roles = ("base", "head") if pair % 2 == 0 else ("head", "base")
        order += [(pair, role) for role in roles]
    return order


@dataclass
class GateResult:
    base: Side
    head: Side
    pairs: int
    threshold: float
    alpha: float
    expression: str | None
    rows: list[Comparison]

    @property
    def regressions(self) -> list[Comparison]:
        return [r for r in self.rows if r.verdict == VERDICT_REGRESSION]

    @property
    def exit_code(self) -> int:
        return EXIT_REGRESSION if self.regressions else EXIT_OK

    def to_json(self) -> dict:
        def side(s: Side) -> dict:
            return {"description": s.description, "sha": s.sha, "checkout": str(s.checkout) if not s.worktree
                    else None}

        return {"verdict": "fail" if self.regressions else "pass", "base": side(self.base), "head": side(self.head),
                "pairs": self.pairs, "order": "ABBA", "threshold": self.threshold, "alpha": self.alpha,
                "expression": self.expression, "selection": selection(self.expression),
                "benchmarks": [{**asdict(r), "label": r.label} for r in self.rows]}

    def report(self) -> str:
        confidence = max((r.confidence for r in self.rows if r.confidence is not None), default=None)
        lines = [f"bench gate: head {self.head.description} vs base {self.base.description}",
                 f"{self.pairs} block pairs alternated on this machine (ABBA); ratio = median over pairs of head/base "
                 f"median; a REGRESSION needs the interval's lower bound above {self.threshold:.2f}x"
                 + (f" (one-sided confidence {confidence:.1%})" if confidence is not None else ""),
                 "", format_table(self.rows), ""]
        if self.regressions:
            names = ", ".join(r.label for r in self.regressions)
            lines.append(f"FAIL: {len(self.regressions)} of {len(self.rows)} benchmarks slower than "
                         f"{self.threshold:.2f}x beyond the noise: {names}")
        else:
            noisy = [r.label for r in self.rows if r.verdict == VERDICT_NOISY]
            lines.append(f"PASS: no benchmark slower than {self.threshold:.2f}x beyond the noise ({len(self.rows)} "
                         "compared)" + (f"; noisy, rerun to be sure: {', '.join(noisy)}" if noisy else ""))
        return "\n".join(lines)


def measure(base: Side, head: Side, expr: str | None, pairs: int, warmup_blocks: int, workdir: Path,
            bench_file: str, extra: Sequence[str], timeout_s: float, threshold: float, alpha: float,
            log: Callable[[str], None]) -> GateResult:
    sides = {"base": base, "head": head}
    present = {role: (s.checkout / bench_file).is_file() for role, s in sides.items()}
    if not present["head"]:
        raise GateError(f"head ({head.description}) has no {bench_file}")
    if not present["base"]:
        log(f"base ({base.description}) has no {bench_file}: every benchmark is new")

    def block(role: str, tag: str) -> dict[str, Measurement]:
        if not present[role]:
            return {}
        started = time.perf_counter()
        found = run_block(sides[role], expr, workdir, tag, bench_file, extra, timeout_s)
        log(f"  {tag:>9} {role}: {len(found)} benchmarks in {time.perf_counter() - started:.1f} s")
        return found

    for i in range(warmup_blocks):  # exports, imports, caches: not counted
        for role in ("base", "head"):
            found = block(role, f"warmup{i + 1}")
            if role == "head" and not found:
                raise GateError(f"no benchmark selected in head by -k {selection(expr)!r}")
    results: dict[str, list[dict[str, Measurement]]] = {"base": [{} for _ in range(pairs)],
                                                        "head": [{} for _ in range(pairs)]}
    for pair, role in block_order(pairs):
        results[role][pair] = block(role, f"block{pair + 1}")
        if pair == 0 and role == "head" and not results["head"][0]:
            raise GateError(f"no benchmark selected in head by -k {selection(expr)!r}")

    names: list[str] = []
    for role in ("head", "base"):
        for found in results[role]:
            names += [n for n in found if n not in names]
    rows = []
    for name in names:
        base_medians = [found[name].median if name in found else None for found in results["base"]]
        head_medians = [found[name].median if name in found else None for found in results["head"]]
        labels = next(found[name] for role in ("head", "base") for found in results[role] if name in found)
        rows.append(compare(name, base_medians, head_medians, threshold, alpha, labels.group, labels.engine))
    return GateResult(base, head, pairs, threshold, alpha, expr, rows)


# ---- the command line ------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit status for usage errors is 2 as well; keep its message short
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bench_gate.py",
        description="Compare the latency benchmarks of a head checkout with a base commit, both measured here in "
                    "alternated blocks; fail only on a slowdown beyond the noise. Arguments after -- go to pytest.",
        epilog="exit status: 0 no regression, 1 a regression, 2 a usage or setup error")
    parser.add_argument("--base", required=True, metavar="REV", help="the base commit (checked out in a temporary "
                        "git worktree)")
    parser.add_argument("--head", default=None, metavar="PATH_OR_REV", help="a directory (used as it is) or a "
                        "revision (checked out like the base); default: the working tree of the current repository")
    parser.add_argument("-k", dest="expr", default=None, metavar="EXPR", help="pytest -k expression selecting "
                        f"benchmarks (ANDed with {BENCH_TEST})")
    parser.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS, metavar="N", help="block pairs (one base "
                        f"run and one head run each, ABBA order; default {DEFAULT_BLOCKS})")
    parser.add_argument("--warmup-blocks", type=int, default=1, metavar="N", help="discarded blocks per side "
                        "first (exports, imports, caches; default 1)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, metavar="X", help="fail when head is "
                        f"slower than X times base beyond the noise (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="one-sided error rate of the interval's "
                        f"lower bound (default {DEFAULT_ALPHA})")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the table as JSON")
    parser.add_argument("--bench-file", default=DEFAULT_BENCH_FILE, metavar="PATH", help="the benchmark test file, "
                        f"relative to each checkout (default {DEFAULT_BENCH_FILE})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S", help="per block "
                        f"(default {DEFAULT_TIMEOUT_S:.0f} s)")
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, extra: Sequence[str], log: Callable[[str], None] = _log) -> GateResult:
    repo = repository_root(Path.cwd())
    base_sha = resolve_commit(repo, args.base)
    head_path = Path(args.head) if args.head else None
    head_sha = None
    if head_path is None:
        head_path, head_description = repo, f"working tree {repo}"
    elif head_path.is_dir():
        head_path, head_description = head_path.resolve(), f"directory {head_path.resolve()}"
    else:
        head_sha = resolve_commit(repo, args.head)
        head_path, head_description = None, f"{args.head} ({head_sha[:12]})"

    workdir = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    base = Side("base", workdir / "base", f"{args.base} ({base_sha[:12]})", base_sha, worktree=True)
    head = Side("head", head_path or workdir / "head", head_description, head_sha, worktree=head_path is None)
    try:
        for side in (base, head):
            side.export_dir = workdir / f"exports-{side.role}"
            side.report_dir = workdir / f"report-{side.role}"
            if side.worktree:
                add_worktree(repo, side.sha, side.checkout)
        log(f"bench gate: base {base.description} in {base.checkout}; head {head.description}")
        return measure(base, head, args.expr, args.blocks, args.warmup_blocks, workdir, args.bench_file, extra,
                       args.timeout, args.threshold, args.alpha, log)
    finally:
        for side in (base, head):
            if side.worktree and side.checkout.exists():
                remove_worktree(repo, side.checkout, log)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.blocks < 1:
        parser.error(f"--blocks: expected at least 1 pair, got {args.blocks}")
    if args.warmup_blocks < 0:
        parser.error(f"--warmup-blocks: expected 0 or more, got {args.warmup_blocks}")
    if not (args.threshold > 1 and math.isfinite(args.threshold)):
        parser.error(f"--threshold: expected a slowdown factor above 1 (1.25 = 25 % slower), got {args.threshold}")
    if not 0 < args.alpha < 0.5:
        parser.error(f"--alpha: expected a probability in (0, 0.5), got {args.alpha}")
    if not args.timeout > 0:
        parser.error(f"--timeout: expected a positive number of seconds, got {args.timeout}")
    try:
        result = run(args, extra)
    except GateError as e:
        print(f"bench gate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a temporary directory, a log file: the machine, not the gate
        print(f"bench gate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("bench gate: interrupted", file=sys.stderr)
        return 130
    print(result.report(), flush=True)
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            print(f"bench gate: error: cannot write --json {args.json}: {e.strerror or e}", file=sys.stderr)
            return EXIT_USAGE
    return result.exit_code
