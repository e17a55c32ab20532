"""Measuring a full-size model through the converters, one component at a time: the machinery that
``scripts/parakeet_full_size.py`` (Parakeet TDT v3) and ``scripts/parakeet_eou_full_size.py`` (Parakeet Realtime
EOU) share. What differs per model (how it is built, its components and their converters, its contract, what is
measured on top of a conversion) stays in the script; this module holds what is the same logic for any model:

- **memory** (Linux ``/proc``): :func:`available_mb`, :func:`rss_mb`, :func:`peak_rss_mb` (``VmHWM``) and
  :func:`reset_peak_rss` (``/proc/self/clear_refs``), so that each phase of a child (model build, conversion,
  runtime) has a peak of its own; :func:`status_kb` reads another process's figures;
- **packages**: :func:`save_package` (atomic), :func:`package_size`, and the shapes a package declares
  (:func:`declared_input_shapes`, :func:`declared_output_shapes`), checked against a hand-written contract by
  :func:`contract_problems`;
- **one component in this process**: :func:`convert_component` (conversion and save timed, the conversion's peak
  RSS), :func:`run_component` (one run on the portable runtime against a torch reference, :func:`errors_against`),
  :func:`latency_against_torch` (the program vs torch CPU eager, timed in alternation), :func:`torch_run`;
- **one component in a fresh child process**: :func:`measure_component` (its phases, model build, conversion and
  runtime, each with a peak of its own) in the script's ``--child`` mode (:func:`child_main`), which
  :func:`measure_in_child` runs and watches: the child's peak RSS polled and read back with ``wait4``, the child killed
  when the system's available memory falls below a guard, a child that did not fit reported (``out-of-memory``)
  rather than raised;
- **the command line and the report**: :func:`argument_parser` / :func:`parse_arguments` (the options both scripts
  take), :func:`measure_components` (every component in turn, the JSON file, the summary and exit code), and the
  report of a component (:func:`format_component`, with :func:`gib` and :func:`error_text` for the model's own
  lines) and the summary table (:func:`summary_table`).

And for the scripts' slow tests, what they share: :func:`converted_once` (a fixture's conversions),
:func:`figure_shapes`, :func:`declared_contract`,
:func:`assert_errors_close`, :func:`parameter_count`, :func:`assert_fp16_package_size`, :func:`assert_measured_in_child` and
:func:`assert_reported_out_of_memory`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

PRECISIONS = ("fp16", "fp32")
DEFAULT_GUARD_MB = 1024  # --memory-guard-mb: a child is killed when the system's available memory falls below this
POLL_SECONDS = 0.25  # how often the parent polls a child's peak RSS and the available memory
MB = 1024 * 1024


# ---- memory ---------------------------------------------------------------------------------------------------
def status_kb(field: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def available_mb() -> float:
    """``MemAvailable`` of ``/proc/meminfo``: what the kernel estimates a new allocation can get without swapping."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def rss_mb() -> float:
    """This process's resident set size now (``VmRSS``), in MiB."""
    return (status_kb("VmRSS") or 0) / 1024


def peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``) since it started or since :func:`reset_peak_rss`, in MiB."""
    return (status_kb("VmHWM") or 0) / 1024


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0); False where the kernel refuses, in which
    case phase peaks are cumulative (the figures say so)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---- names ------------------------------------------------------------------------------------------------------
def check_component(component: str, components: Sequence[str]) -> str:
    """``component`` if it is one of ``components``, else ValueError naming them."""
    if component not in components:
        raise ValueError(f"unknown component {component!r}; expected one of {', '.join(components)}")
    return component


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


# ---- inputs and torch -------------------------------------------------------------------------------------------
def speech_window(samples: int) -> np.ndarray:
    """``samples`` samples of speech: the committed clip (``conversions.audio.SPEECH_CLIP``) repeated to fill them
    (no zero padding: every mel frame and every encoder frame sees audio)."""
    from conversions.audio import SPEECH_CLIP, read_wav

    clip = np.asarray(read_wav(SPEECH_CLIP), np.float32).reshape(-1)
    return np.resize(clip, samples).astype(np.float32)


def torch_run(module, feeds: dict, names: Sequence[str], half: bool = False) -> dict[str, np.ndarray]:
    """``module`` on ``feeds`` (in its input order), its outputs named ``names``; ``half``: float feeds cast to
    float16 (for a ``.half()`` copy), float outputs back to float32."""
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()]
    if half:
        tensors = [t.half() if t.is_floating_point() else t for t in tensors]
    with torch.no_grad():
        out = module(*tensors)
    out = out if isinstance(out, tuple) else (out,)
    return dict(zip(names, ((o.float() if o.is_floating_point() else o).numpy() for o in out)))


# ---- packages, contract and errors --------------------------------------------------------------------------------
def package_size(path) -> int:
    """Bytes of every file below ``path`` (a package directory)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def save_package(mlmodel, dest) -> Path:
    """Save ``mlmodel`` to ``dest`` (a ``.mlpackage`` directory) atomically: written beside it under a temporary
    name, then renamed; an existing package is moved aside first and removed after, so ``dest`` is never a
    half-written package."""
    dest = Path(dest)
    if dest.suffix != ".mlpackage":
        raise ValueError(f"package path must end in .mlpackage, got {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    from conversions.files import atomic_path

    with atomic_path(dest) as tmp:
        mlmodel.save(str(tmp))
    return dest


def declared_input_shapes(package) -> dict[str, tuple]:
    """Input shapes as the package declares them (no weights are read): an int per fixed axis, ``(low, high)`` for
    a ranged one (``high`` None when unbounded), ``("one of", shapes)`` for enumerated shapes."""
    import coremltools as ct

    from conversions.runtime.io import specs_from_description

    spec = ct.utils.load_spec(str(package))
    shapes = {}
    for s in specs_from_description(spec.description.input):
        if s.enumerated_shapes is not None:
            shapes[s.name] = ("one of", s.enumerated_shapes)
        elif s.shape_range is not None:
            shapes[s.name] = tuple(lo if lo == hi else (lo, hi) for lo, hi in s.shape_range)
        else:
            shapes[s.name] = tuple(s.shape)
    return shapes


def declared_output_shapes(package) -> dict[str, tuple[int | None, ...]]:
    """Output shapes as the package declares them (no weights are read): the model description's, or where it
    declares none (an output following a flexible input), the program's own type, ``None`` for an unknown axis."""
    import coremltools as ct

    from conversions.runtime.io import specs_from_description
    from conversions.runtime.mil.program import TensorType, parse_type

    spec = ct.utils.load_spec(str(package))
    described = {s.name: tuple(s.shape) for s in specs_from_description(spec.description.output)}
    function = spec.mlProgram.functions[spec.description.defaultFunctionName or "main"]
    block = function.block_specializations[function.opset]
    typed = {}
    for op in block.operations:
        for out in op.outputs:
            if out.name in block.outputs:
                kind = parse_type(out.type)
                if isinstance(kind, TensorType) and kind.shape is not None:
                    typed[out.name] = kind.shape
    return {name: shape or typed.get(name, shape) for name, shape in described.items()}


def contract_problems(component: str, contract: dict[str, tuple], shapes: dict[str, tuple],
                      flexible: dict[str, tuple[int, ...]] | None = None, side: str = "outputs") -> list[str]:
    """Every way ``shapes`` (name -> shape of ``component``'s ``side``, ``inputs`` or ``outputs``; ``None`` = an axis
    the program leaves unknown) departs from ``contract`` (name -> shape, written out by hand); empty when it holds.
    An unknown axis passes only where ``flexible`` (name -> axes) allows it: an output whose axis follows a flexible
    input."""
    if side not in ("inputs", "outputs"):
        raise ValueError(f"side must be 'inputs' or 'outputs', got {side!r}")
    flexible = flexible or {}
    problems = []
    for name, want in contract.items():
        got = shapes.get(name)
        if got is None:
            problems.append(f"{component}: no {side[:-1]} {name!r} ({side}: {sorted(shapes)})")
            continue
        got, allowed = tuple(got), flexible.get(name, ())
        if len(got) != len(want) or any(g != w and not (g is None and axis in allowed)
                                         for axis, (g, w) in enumerate(zip(got, want))):
            shown = ["?" if g is None else g for g in got]
            problems.append(f"{component}: {side[:-1]} {name} has shape {shown}, the contract says {list(want)}")
    extra = sorted(set(shapes) - set(contract))
    if extra:
        problems.append(f"{component}: {side} {extra} are not in the contract")
    return problems


def errors_against(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per output: float outputs -> max_abs, the reference's peak |value|, PSNR and quality (1 - relative L2
    error); integer outputs -> the fraction of equal entries."""
    from conversions import metrics

    figures = {}
    for name, ref in reference.items():
        got = outputs[name]
        if np.asarray(ref).dtype.kind == "f":
            figures[name] = {"max_abs": metrics.max_abs(ref, got), "peak": float(np.abs(ref).max()),
                             "psnr_db": metrics.psnr(ref, got), "quality": metrics.quality(ref, got)}
        else:
            figures[name] = {"agreement": float((np.asarray(ref) == np.asarray(got)).mean())}
    return figures


# ---- one component, in this process --------------------------------------------------------------------------
def convert_component(model, component: str, precision: str, out_dir, convert: Callable,
                      describe: Callable[[Path], dict]) -> dict:
    """``convert(model, precision=precision)``, saved as ``out_dir/<component>.mlpackage``: conversion and save
    times, package size, the RSS before and the conversion's peak (``peak_reset``: whether the kernel let the peak
    be reset first, else it is the process's whole-life peak), and whatever ``describe(package)`` says (declared
    shapes, contract problems)."""
    check_precision(precision)
    gc.collect()
    baseline = rss_mb()
    reset = reset_peak_rss()
    start = time.perf_counter()
    mlmodel = convert(model, precision=precision)
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    package = save_package(mlmodel, Path(out_dir) / f"{component}.mlpackage")
    save_s = time.perf_counter() - start
    del mlmodel  # its temporary package (the weights) goes with it
    gc.collect()
    described = describe(package)
    return {"component": component, "precision": precision, "package": str(package), "convert_s": convert_s,
            "save_s": save_s, "package_bytes": package_size(package), "rss_before_mb": baseline,
            "convert_peak_mb": peak_rss_mb(), "peak_reset": reset, **described}


def run_component(package, precision: str, feeds: dict, reference: dict[str, np.ndarray],
                  problems: Callable[[dict[str, tuple]], list[str]]) -> dict:
    """The package run once on the portable runtime on ``feeds``: load and run wall times, output shapes (and the
    contract ``problems`` found in them), error against ``reference`` (torch on the same feeds)."""
    from conversions.runtime import load_model

    start = time.perf_counter()
    program = load_model(str(package), backend="mil", precision=precision)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    outputs = program.predict(feeds)
    run_s = time.perf_counter() - start
    shapes = {k: tuple(v.shape) for k, v in outputs.items()}
    return {"runtime_load_s": load_s, "runtime_run_s": run_s, "runtime_shapes": {k: list(v) for k, v in shapes.items()},
            "runtime_contract_problems": problems(shapes), "errors": errors_against(reference, outputs)}


def latency_against_torch(package, precision: str, module, feeds: dict, runs: int = 5) -> dict:
    """Wall time of one call on ``feeds``: the package on the portable runtime vs the torch ``module`` (CPU eager,
    no_grad), each after one untimed warm-up run. The two are timed in alternation (the order flipping every run)
    so that load from other processes on the machine falls on both alike; the medians are the figures, the
    minimums and every run are kept too, with the 1-minute load average before and after."""
    import torch

    from conversions.runtime import load_model

    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    program = load_model(str(package), backend="mil", precision=precision)
    tensors = [torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()]

    def torch_once():
        with torch.no_grad():
            module(*tensors)

    def runtime_once():
        program.predict(feeds)

    load_before = os.getloadavg()[0]
    torch_once()
    runtime_once()
    times: dict[str, list[float]] = {"runtime": [], "torch": []}
    for i in range(runs):
        order = (("runtime", runtime_once), ("torch", torch_once))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    runtime_ms, torch_ms = (statistics.median(times[k]) * 1e3 for k in ("runtime", "torch"))
    return {"runs": runs, "torch_threads": torch.get_num_threads(), "runtime_ms": runtime_ms, "torch_ms": torch_ms,
            "runtime_over_torch": runtime_ms / torch_ms, "runtime_min_ms": min(times["runtime"]) * 1e3,
            "torch_min_ms": min(times["torch"]) * 1e3, "runtime_all_ms": [t * 1e3 for t in times["runtime"]],
            "torch_all_ms": [t * 1e3 for t in times["torch"]], "loadavg_1min": [load_before, os.getloadavg()[0]]}


def measure_component(figures: dict, build: Callable[[], object], convert: Callable[[object], dict],
                      run: Callable[[object, str], dict] | None = None,
                      latency: Callable[[object, str], dict] | None = None,
                      after_runtime: Callable[[object, str], dict] | None = None) -> dict:
    """One component's phases in this process, into ``figures``, each phase's peak RSS its own (as far as the kernel
    lets :func:`reset_peak_rss` reset it): the model ``build()`` (``build_s``, ``build_peak_mb``); ``convert(model)``
    (:func:`convert_component`'s figures, ``package`` among them); when ``run`` is given, the runtime phase:
    ``run(model, package)`` (:func:`run_component`'s figures) and ``latency(model, package)`` (as ``latency``),
    their peak as ``runtime_peak_mb``; then ``after_runtime(model, package)``, whose figures are added, outside
    that peak (torch's own fp16 yardstick: its half-precision copy of the weights is not the runtime's). Meant to
    run in a fresh child process (:func:`measure_in_child`)."""
    start = time.perf_counter()
    model = build()
    figures["build_s"] = time.perf_counter() - start
    figures["build_peak_mb"] = peak_rss_mb()
    figures.update(convert(model))
    if run:
        reset_peak_rss()
        figures.update(run(model, figures["package"]))
        if latency:
            figures["latency"] = latency(model, figures["package"])
        figures["runtime_peak_mb"] = peak_rss_mb()
        if after_runtime:
            figures.update(after_runtime(model, figures["package"]))
    return figures


# ---- one component, in a fresh child process --------------------------------------------------------------------
def write_json(path, data) -> None:
    """``data`` as indented, key-sorted JSON, written atomically."""
    from conversions.files import atomic_write

    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def measure_in_child(script, component: str, precision: str, out_dir, runs: int = 5, run: bool = True,
                     guard_mb: float = DEFAULT_GUARD_MB, log_dir=None, options: dict | None = None) -> dict:
    """``python <script> --child <component> ...`` (the script's measurement of one component, :func:`child_main`)
    in a fresh process, watched: the parent polls the child's peak RSS and the system's available memory, kills
    the child when available memory falls below ``guard_mb``, and reaps it with ``wait4`` (that child's own peak
    RSS, not the maximum over all children). ``options``: further ``--name value`` arguments of the script's.
    The child's output goes to ``log_dir/<component>.log`` (``log_dir`` defaults to ``out_dir``). Never raises for
    a child that failed or did not fit: the figures say ``status`` (``ok``, ``failed``, ``out-of-memory``) and
    why."""
    from conversions.testing import clean_subprocess_env

    check_precision(precision)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir or out_dir)
    result = log_dir / f".{component}-{uuid.uuid4().hex[:8]}.json"
    log = log_dir / f"{component}.log"
    command = [sys.executable, str(Path(script).resolve()), "--child", component, "--precision", precision,
               "--out", str(out_dir), "--result", str(result), "--runs", str(runs)]
    for name, value in (options or {}).items():
        command += [f"--{name}", str(value)]
    command += [] if run else ["--no-run"]
    env = clean_subprocess_env({"TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"})
    available_at_start = available_mb()
    min_available, polled_peak, guard_killed = available_at_start, 0.0, False
    start = time.perf_counter()
    with open(log, "w") as log_file:
        child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            polled_peak = max(polled_peak, (status_kb("VmHWM", child.pid) or 0) / 1024)
            min_available = min(min_available, available_mb())
            if min_available < guard_mb and not guard_killed:
                guard_killed = True
                child.send_signal(signal.SIGKILL)
            time.sleep(POLL_SECONDS)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    wall_s = time.perf_counter() - start
    figures = json.loads(result.read_text()) if result.is_file() else {"component": component, "precision": precision}
    result.unlink(missing_ok=True)
    peak = max(usage.ru_maxrss / 1024, polled_peak)  # Linux: ru_maxrss in kB
    figures.update({"child_wall_s": wall_s, "child_peak_mb": peak, "available_at_start_mb": available_at_start,
                    "min_available_mb": min_available, "returncode": child.returncode, "log": str(log)})
    if figures.get("status") == "ok" and child.returncode == 0:
        return figures
    killed = child.returncode == -signal.SIGKILL
    if guard_killed or killed or figures.get("error_type") == "MemoryError":
        why = ("killed by this script's guard: available memory fell below "
               f"{guard_mb:.0f} MB" if guard_killed else
               "killed by SIGKILL (the kernel's OOM killer)" if killed else "MemoryError in the child")
        # how much more it needed is unknowable once stopped; what is known: how far it got, against what it had
        figures.update({"status": "out-of-memory", "why": f"{why}; peak RSS {peak / 1024:.2f} GiB when stopped vs "
                        f"{available_at_start / 1024:.2f} GiB available at its start (lowest available "
                        f"{min_available / 1024:.2f} GiB)"})
    else:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        figures.update({"status": "failed", "why": figures.get("error") or f"exit code {child.returncode}",
                        "log_tail": tail})
    return figures


def child_main(args: argparse.Namespace, measure: Callable[[argparse.Namespace], dict]) -> int:
    """A script's ``--child`` mode: ``measure(args)`` (one component, ``args.child``, in this process) and its
    figures, or the error, written to ``args.result`` for :func:`measure_in_child`. Exit code 0, 3 (MemoryError) or
    1 (any other error, its traceback printed to the child's log)."""
    try:
        figures = measure(args)
        figures["status"] = "ok"
        code = 0
    except MemoryError as exc:
        figures = {"status": "failed", "error_type": "MemoryError", "error": f"MemoryError: {exc}",
                   "peak_mb": peak_rss_mb()}
        code = 3
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        traceback.print_exc()
        figures = {"status": "failed", "error_type": type(exc).__name__, "error": f"{type(exc).__name__}: {exc}"}
        code = 1
    figures.update({"component": args.child, "precision": args.precision})
    write_json(args.result, figures)
    return code


# ---- the command line ---------------------------------------------------------------------------------------------
def argument_parser(doc: str, components: Sequence[str], runs_help: str,
                    add_options: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.ArgumentParser:
    """The options every full-size script takes (``--components``, ``--precision``, ``--out``, ``--json``,
    ``--runs``, ``--no-run``, ``--memory-guard-mb`` and the hidden ``--child``/``--result`` of a child process);
    ``add_options(parser)`` adds the script's own after ``--runs``. The description is the first paragraph of
    ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--components", default=",".join(components),
                        help=f"comma-separated, from {', '.join(components)} (default: all)")
    parser.add_argument("--precision", default="fp16", choices=PRECISIONS)
    parser.add_argument("--out", help="directory to keep the .mlpackage files in (default: a temporary one, removed)")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--runs", type=int, default=5, help=runs_help)
    if add_options:
        add_options(parser)
    parser.add_argument("--no-run", action="store_true", help="convert only: no portable-runtime run, no latency")
    parser.add_argument("--memory-guard-mb", type=float, default=DEFAULT_GUARD_MB,
                        help="kill a child when the system's available memory falls below this (default 1024)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv, components: Sequence[str],
                    minimums: dict[str, int] | None = None) -> argparse.Namespace:
    """``parser``'s arguments, checked (a usage error exits 2): ``--runs`` >= 1 and each option of ``minimums``
    (dest -> least value) at least that; ``--child`` needs ``--out`` and ``--result``; otherwise ``--components``
    must name some of ``components``, and becomes a list."""
    args = parser.parse_args(argv)
    for dest, least in {"runs": 1, **(minimums or {})}.items():
        if getattr(args, dest) < least:
            parser.error(f"--{dest} must be >= {least}, got {getattr(args, dest)}")
    if args.child:
        if not (args.out and args.result):
            parser.error("--child needs --out and --result")
        return args
    args.components = [c.strip() for c in args.components.split(",") if c.strip()]
    unknown = [c for c in args.components if c not in components]
    if unknown or not args.components:
        parser.error(f"--components: unknown {unknown or 'none given'}; expected some of {', '.join(components)}")
    return args


def is_broken(f: dict) -> bool:
    """Whether a component's figures are not ok: it failed or did not fit, or its contract does not hold (as
    declared or as run)."""
    return bool(f.get("status") != "ok" or f.get("contract_problems") or f.get("runtime_contract_problems"))


def measure_components(components: Sequence[str], measure: Callable[[str, Path, Path], dict], *, out, json_path,
                       precision: str, prefix: str, format_component: Callable[[dict], str],
                       format_summary: Callable[[list[dict]], str]) -> int:
    """A script's run: ``measure(component, out_dir, work_dir)`` (one child process, :func:`measure_in_child`) for
    each component in turn, so no two children's peaks overlap, each printed by ``format_component`` as it comes;
    packages kept in ``out`` (else in a temporary directory, removed); the figures written to ``json_path`` if given;
    the logs of failed children kept. Then ``format_summary`` of them all and the total time; exit code 1 when a
    component is not ok (:func:`is_broken`)."""
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    out_dir = Path(out) if out else work / "packages"
    results = []
    try:
        for component in components:  # one at a time: a child's peak is never shared with another's
            figures = measure(component, out_dir, work)
            if not out:
                figures.pop("package", None)
            results.append(figures)
            print(format_component(figures), flush=True)
    finally:
        total_s = time.perf_counter() - start
        if json_path:
            write_json(json_path, {"precision": precision, "total_s": total_s, "components": results})
        failed = [f["component"] for f in results if f.get("status") != "ok"]
        if failed:
            shutil.rmtree(work / "packages", ignore_errors=True)
            print(f"logs of the failed children kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    broken = [f["component"] for f in results if is_broken(f)]
    print(format_summary(results))
    print(f"total {total_s:.0f} s; " + (f"not ok: {', '.join(broken)}" if broken else "every component ok"))
    return 1 if broken else 0


# ---- the report -------------------------------------------------------------------------------------------------
def gib(mb: float | None) -> str:
    """MiB as ``"x.xx GiB"``; ``-`` for None."""
    return "-" if mb is None else f"{mb / 1024:.2f} GiB"


def error_text(e: dict) -> str:
    """One output's :func:`errors_against` figures in words."""
    if "agreement" in e:
        return f"agreement {e['agreement']:.4f}"
    return (f"max_abs {e['max_abs']:.3g} (peak {e['peak']:.3g}), PSNR {e['psnr_db']:.1f} dB, relative L2 error "
            f"{1 - e['quality']:.2e}")


def latency_text(lat: dict, digits: int = 0) -> str:
    """:func:`latency_against_torch`'s figures in words, milliseconds to ``digits`` decimals: the medians (the
    minimums in brackets), torch's threads and the ratio."""
    return (f"portable runtime {lat['runtime_ms']:.{digits}f} ms ({lat['runtime_min_ms']:.{digits}f}) vs torch CPU "
            f"eager {lat['torch_ms']:.{digits}f} ms ({lat['torch_min_ms']:.{digits}f}), {lat['torch_threads']} "
            f"threads: runtime/torch = {lat['runtime_over_torch']:.2f}")


def load_text(lat: dict) -> str:
    """The 1-minute load average before and after the timed runs, in brackets."""
    return f"(load average {lat['loadavg_1min'][0]:.1f} -> {lat['loadavg_1min'][1]:.1f})"


def shapes_text(shapes: dict) -> str:
    """``name shape, name shape, ...``."""
    return ", ".join(f"{k} {v}" for k, v in shapes.items())


def failure_text(f: dict) -> str | None:
    """The report of a component that is not ``ok`` (its heading, why, the tail of its log); None when it is."""
    if f.get("status") == "ok":
        return None
    lines = [f"== {f['component']} ({f['precision']}): {f.get('status')}", f"   {f.get('why')}"]
    lines += [f"   | {line}" for line in f.get("log_tail", [])]
    return "\n".join(lines)


def format_component(f: dict, details: Callable[[dict], list[str]] | None = None,
                     latency: Callable[[dict], str] | None = None, what: str = "runtime vs torch") -> str:
    """A component's report: for one that is not ok, :func:`failure_text`; else its conversion
    (:func:`conversion_lines`), the shapes its package declares (:func:`declared_lines`), its run on the portable
    runtime (:func:`runtime_lines`, errors labelled ``what``), the model's ``details(f)`` lines, the contract
    (:func:`contract_line`) and, when the figures have ``latency``, the model's ``latency(f["latency"])`` line."""
    failure = failure_text(f)
    if failure:
        return failure
    lines = conversion_lines(f) + declared_lines(f) + runtime_lines(f, what) + (details(f) if details else [])
    lines.append(contract_line(f))
    if latency and "latency" in f:
        lines.append(latency(f["latency"]))
    return "\n".join(lines)


def conversion_lines(f: dict) -> list[str]:
    """An ``ok`` component's heading, its build and conversion times and its peaks."""
    reset = "" if f.get("peak_reset") else " (VmHWM could not be reset: cumulative)"
    return [f"== {f['component']} ({f['precision']}): {f.get('status')}",
            f"   model build {f['build_s']:.1f} s (peak RSS {gib(f['build_peak_mb'])}) | conversion "
            f"{f['convert_s']:.1f} s + save {f['save_s']:.1f} s | child process {f['child_wall_s']:.1f} s",
            f"   peak RSS of the conversion {gib(f['convert_peak_mb'])} (model resident before: "
            f"{gib(f['rss_before_mb'])}, so +{gib(f['convert_peak_mb'] - f['rss_before_mb'])}){reset}; "
            f"child's whole-life peak {gib(f['child_peak_mb'])}"]


def declared_lines(f: dict) -> list[str]:
    """The package's size and the shapes it declares: its outputs, after its inputs where the figures have them
    (``declared_inputs``)."""
    size = f"   package {f['package_bytes'] / MB:.1f} MiB | declared "
    if "declared_inputs" not in f:
        return [size + "outputs: " + shapes_text(f["declared_shapes"])]
    return [size + "inputs: " + shapes_text(f["declared_inputs"]), "   declared outputs: "
            + shapes_text(f["declared_shapes"])]


def runtime_lines(f: dict, what: str = "runtime vs torch") -> list[str]:
    """The portable runtime's run of the package (:func:`run_component`), its errors labelled ``what``; none
    without a run."""
    if "runtime_shapes" not in f:
        return []
    lines = [f"   portable runtime (load {f['runtime_load_s']:.1f} s, first run {f['runtime_run_s']:.2f} s, peak "
             f"RSS {gib(f.get('runtime_peak_mb'))}): {shapes_text(f['runtime_shapes'])}"]
    return lines + [f"   {what}, {name}: {error_text(e)}" for name, e in f["errors"].items()]


def contract_line(f: dict) -> str:
    """``contract: ok``, or every problem found in the declared and the returned shapes."""
    problems = f["contract_problems"] + f.get("runtime_contract_problems", [])
    return "   contract: " + ("ok" if not problems else "; ".join(problems))


def summary_table(results: list[dict], header: str, cells: Callable[[dict], str]) -> str:
    """One row per component: status, conversion time, the conversion's peak RSS and the package size, then
    ``cells(figures)`` under ``header`` (a failed component's row says why instead)."""
    rows = [f"{'component':<20} {'status':<14} {'convert s':>9} {'peak RSS GiB':>12} {'package MiB':>11}{header}"]
    for f in results:
        if f.get("status") != "ok":
            rows.append(f"{f['component']:<20} {f.get('status', '?'):<14} "
                        f"{'-':>9} {f.get('child_peak_mb', 0) / 1024:>12.2f} {'-':>11}  {f.get('why', '')}")
            continue
        rows.append(f"{f['component']:<20} {'contract!' if is_broken(f) else 'ok':<14} {f['convert_s']:>9.1f} "
                    f"{f['convert_peak_mb'] / 1024:>12.2f} {f['package_bytes'] / MB:>11.1f}{cells(f)}")
    return "\n".join(rows)


# ---- checks for the scripts' tests --------------------------------------------------------------------------------
@contextlib.contextmanager
def converted_once(convert_component: Callable[..., dict], model, out_dir, precision: str = "fp16"):
    """For a module-scoped fixture: yields ``component -> convert_component(model, component, precision, out_dir)``
    (a script's conversion figures: package path, declared shapes ...), each component converted once; ``out_dir``
    and its packages are removed on exit (pytest would keep its last temporary directories)."""
    try:
        yield functools.cache(lambda component: convert_component(model, component, precision, out_dir))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def figure_shapes(figures: dict, key: str) -> dict[str, tuple]:
    """``figures[key]`` (name -> shape, as lists once through JSON) with tuples for shapes and ranged axes."""
    return {name: tuple(tuple(a) if isinstance(a, list) else a for a in shape) for name, shape in figures[key].items()}


def declared_contract(outputs: dict[str, tuple], flexible: dict[str, tuple[int, ...]] | None) -> dict[str, tuple]:
    """The output shapes a package should declare: the contract's, with ``None`` on each ``flexible`` axis (an
    output axis following a flexible input is declared unknown; a run pins it)."""
    expected = dict(outputs)
    for name, axes in (flexible or {}).items():
        expected[name] = tuple(None if axis in axes else size for axis, size in enumerate(expected[name]))
    return expected


def assert_errors_close(errors: dict[str, dict], quality: float = 0.99, exact: bool = False) -> None:
    """:func:`errors_against`'s figures of a run: every float output finite (NaN or inf anywhere reads as an
    infinite error) with a quality above ``quality``; with ``exact``, every integer output equal too."""
    for name, e in errors.items():
        if "max_abs" in e:
            assert np.isfinite(e["max_abs"]), (name, e)
            assert e["quality"] > quality, (name, e)
        elif exact:
            assert e["agreement"] == 1.0, (name, e)


def parameter_count(module) -> int:
    """A torch module's parameters, counted."""
    return sum(p.numel() for p in module.parameters())


def assert_fp16_package_size(size: int, weights: int) -> None:
    """An fp16 package stores two bytes per weight: within 5 % below (a folded weight: coremltools replaces a
    layer's weight by the smaller constant it produces) and 1 % + 4 MiB above (constants that are not parameters,
    the description)."""
    assert 0.95 * 2 * weights < size < 1.01 * 2 * weights + 4 * MB, (size, weights)


def assert_measured_in_child(figures: dict, model, package) -> None:
    """What :func:`measure_in_child` must say of a component that fits: ok, the contract kept, the conversion's
    peak its own (``VmHWM`` reset, Linux >= 4.0) and at least the model's fp32 weights (resident when the
    conversion starts; every later peak is at least that), the package at ``package`` with its size, no temporary
    left beside it."""
    assert figures["status"] == "ok" and figures["returncode"] == 0, (figures.get("why"), figures.get("log_tail"))
    assert figures["contract_problems"] == [] and figures["runtime_contract_problems"] == []
    weight_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / MB
    assert figures["peak_reset"] is True  # Linux >= 4.0: the conversion's peak is its own, not the build's
    assert weight_mb <= figures["rss_before_mb"] <= figures["convert_peak_mb"] <= figures["child_peak_mb"]
    package = Path(package)
    assert Path(figures["package"]) == package and package.is_dir()
    assert figures["package_bytes"] == package_size(package)
    assert not [p for p in package.parent.iterdir() if p.name.startswith(".")]  # no temporary left beside it


def assert_reported_out_of_memory(measure: Callable[..., dict], component: str, tmp_path,
                                  format_component: Callable[[dict], str]) -> None:
    """``measure`` (a script's ``measure_in_child``) with a guard above the whole machine's memory: the child is
    killed at the first poll, and the figures (and ``format_component``'s report) say which component, why, and
    its peak against the memory available; no package is left."""
    guard_mb = available_mb() + 64 * 1024
    figures = measure(component, "fp16", tmp_path / "packages", guard_mb=guard_mb, log_dir=tmp_path)
    assert figures["status"] == "out-of-memory" and figures["component"] == component
    assert figures["returncode"] == -9
    assert "guard" in figures["why"] and "GiB available" in figures["why"]
    assert not (tmp_path / "packages" / f"{component}.mlpackage").exists()
    assert "out-of-memory" in format_component(figures)
