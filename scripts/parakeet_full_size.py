"""Full-size Parakeet TDT v3 through the same converters as the tiny model: what it costs and whether it keeps the
contract.

The parity suite runs on a tiny random-weight instance of the v3 architecture; users ship the real 0.6B model.
This script builds the real architecture at full size (24 FastConformer layers, d_model 1024, 8 heads, 2-layer
LSTM 640, joint 640, 8192 tokens -> 8198 logits; random weights, through NeMo's ``EncDecRNNTBPEModel`` with
``build_tiny_parakeet_tdt(seed=0, scale={})``) and sends every component through the converters of
``conversions/models/parakeet_tdt/``. Per component it prints:

- conversion wall time (trace + ``ct.convert``) and the time to save the package;
- peak RSS: each component is converted in a fresh child process (figures do not accumulate across components;
  ``RUSAGE_CHILDREN`` would, as it keeps the maximum over every child reaped so far). The child reads its own
  ``VmHWM`` per phase, resetting it in between (``/proc/self/clear_refs``), so the conversion's peak is told apart
  from the model build's; the parent also records the child's whole-life peak (``wait4``);
- package size, and the output shapes the converted program declares, checked against the contract of
  ``shared/MODELS.md`` (:data:`CONTRACT`, written out by hand);
- the package run once on the portable runtime (``load_model(pkg, backend="mil")``): output shapes, and the error
  against torch on the same inputs;
- for the encoder: latency of the fp16 program on the portable runtime vs Torch CPU eager (medians) on the mel of
  15 s of audio, and the ratio.

A component that does not fit this machine's memory is reported, not fatal: the parent kills the child when the
system's available memory falls below ``--memory-guard-mb`` (so the rest of the machine is never pushed into the
OOM killer), and a child that dies of SIGKILL or MemoryError is reported the same way, with its peak RSS against
the memory that was available when it started. Nothing here is a timed assertion: figures are printed.

Usage (``/work/venv/bin/python`` has NeMo)::

    python scripts/parakeet_full_size.py                                # every component, fp16
    python scripts/parakeet_full_size.py --components encoder,joint --precision fp32 --out /tmp/pkgs --json f.json

``tests/test_parakeet_full_size.py`` (``pytest -m slow``) reuses these functions.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

import numpy as np

COMPONENTS = ("preprocessor", "encoder", "mel-encoder", "decoder", "joint", "joint-decision", "joint-decision-step")
PRECISIONS = ("fp16", "fp32")

# The Core ML contract of the real model (shared/MODELS.md), by hand: 15 s window = 240,000 samples -> 1501 mel
# frames -> 188 encoder frames; d_model 1024; LSTM 2 x 640; 8192 tokens + blank + 5 durations = 8198 logits.
CONTRACT: dict[str, dict[str, tuple[int, ...]]] = {
    "preprocessor": {"mel": (1, 128, 1501), "mel_length": (1,)},
    "encoder": {"encoder": (1, 1024, 188), "encoder_length": (1,)},
    "mel-encoder": {"encoder": (1, 1024, 188), "encoder_length": (1,)},
    "decoder": {"decoder": (1, 640, 1), "h_out": (2, 1, 640), "c_out": (2, 1, 640)},
    "joint": {"logits": (1, 188, 1, 8198)},
    "joint-decision": {"token_id": (1, 188, 1), "token_prob": (1, 188, 1), "duration": (1, 188, 1)},
    "joint-decision-step": {"token_id": (1, 1, 1), "token_prob": (1, 1, 1), "duration": (1, 1, 1)},
}
# Outputs whose shape follows a flexible input: coremltools declares no shape for them in the model description,
# and the program's own type leaves these axes unknown (mel: [?, 128, ?]: the frame axis follows the 1..240000
# samples; the batch axis is lost to type inference through the STFT's runtime-shaped reshape). The contract's size
# of such an axis is checked on the run over the full window instead.
FLEXIBLE_OUTPUTS: dict[str, dict[str, tuple[int, ...]]] = {"preprocessor": {"mel": (0, 2)}}
FULL_SCALE: dict = {}  # config_for({}) = the v3 configuration unchanged
WINDOW_SAMPLES = 240_000
DEFAULT_GUARD_MB = 1024
POLL_SECONDS = 0.25
MB = 1024 * 1024


# ---- memory ---------------------------------------------------------------------------------------------------
def _status_kb(field: str, pid: int | str = "self") -> int | None:
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
    return (_status_kb("VmRSS") or 0) / 1024


def peak_rss_mb() -> float:
    return (_status_kb("VmHWM") or 0) / 1024


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0); False where the kernel refuses, in which
    case phase peaks are cumulative (the figures say so)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---- the model and its inputs ---------------------------------------------------------------------------------
def build_model(seed: int = 0):
    """The full-size random-weight v3 model through NeMo (tokenizer trained first). The tokenizer files are
    already loaded by then, so their temporary directory is removed at once."""
    from conversions.models.parakeet_tdt import nemo_models

    model = nemo_models.build_tiny_parakeet_tdt(seed=seed, scale=FULL_SCALE)
    shutil.rmtree(model._tokenizer_tmpdir, ignore_errors=True)
    return model


def audio_15s() -> np.ndarray:
    """15 s of speech: the committed 10 s clip repeated to fill the window (no zero padding: every mel frame and
    every encoder frame sees audio)."""
    from conversions.audio import SPEECH_CLIP as CLIP_PATH, read_wav

    clip = np.asarray(read_wav(CLIP_PATH), np.float32).reshape(-1)
    return np.resize(clip, WINDOW_SAMPLES).astype(np.float32)


def _torch_run(module, feeds: dict) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        out = module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()))
    return dict(zip(_names(module), (o.numpy() for o in (out if isinstance(out, tuple) else (out,)))))


def _names(module) -> tuple[str, ...]:
    from conversions.models.parakeet_tdt import converters, inputs, modules  # noqa: F401

    return {modules.ParakeetPreprocessor: ("mel", "mel_length"), modules.ParakeetEncoder: ("encoder", "encoder_length"),
            modules.ParakeetMelEncoder: ("encoder", "encoder_length"), modules.ParakeetDecoder: converters.DECODER_OUTPUTS,
            modules.ParakeetJoint: ("logits",), modules.ParakeetJointDecision: converters.DECISION_OUTPUTS}[type(module)]


def torch_module(model, component: str):
    from conversions.models.parakeet_tdt import converters, inputs, modules  # noqa: F401

    factory = {"preprocessor": modules.preprocessor_module, "encoder": modules.encoder_module,
               "mel-encoder": modules.mel_encoder_module, "decoder": modules.decoder_module, "joint": modules.joint_module,
               "joint-decision": modules.joint_decision_module, "joint-decision-step": modules.joint_decision_module}
    return factory[_check_component(component)](model)


def converter(component: str):
    from conversions.models.parakeet_tdt import converters, inputs, modules  # noqa: F401

    return {"preprocessor": converters.convert_preprocessor, "encoder": converters.convert_encoder,
            "mel-encoder": converters.convert_mel_encoder, "decoder": converters.convert_decoder,
            "joint": converters.convert_joint,
            "joint-decision": converters.convert_joint_decision,
            "joint-decision-step": converters.convert_joint_decision_step}[_check_component(component)]


def _check_component(component: str) -> str:
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")
    return component


def sample_inputs(model, component: str) -> dict[str, np.ndarray]:
    """What the component is run on: the 15 s audio (or its torch mel) for the front end and encoders; for the
    decoder, a real token from the state after a few tokens of a sentence (from the zero state a blank's embedding
    is the zero pad vector, which would exercise the LSTM biases only); for the joints, the decoder output after
    those tokens and seeded N(0, 1) encoder frames (every conformer block ends in a LayerNorm, unit gain at
    initialisation, so this model's real encoder output has that scale: measured peak 3.7 over 192k values; running
    the 0.6B encoder in torch only to feed a joint would double the child's cost)."""
    from conversions.models.parakeet_tdt import converters, inputs, modules  # noqa: F401

    d = modules.dims(model)
    call = inputs.audio_call(d, audio_15s(), d.window_samples)
    if component in ("preprocessor", "mel-encoder"):
        return call
    if component == "encoder":
        return _torch_run(modules.preprocessor_module(model), call)
    tokens = inputs.decoder_tokens(model)[:6]
    decoder = modules.decoder_module(model)
    state = inputs.initial_state(d)
    for token in tokens[:-1]:
        out = _torch_run(decoder, {**inputs.token_call(token), **state})
        state = {"h_in": out["h_out"], "c_in": out["c_out"]}
    if component == "decoder":
        return {**inputs.token_call(tokens[-1]), **state}
    g = _torch_run(decoder, {**inputs.token_call(tokens[-1]), **state})["decoder"]
    frames = 1 if component == "joint-decision-step" else d.encoder_frames
    enc = np.random.default_rng(0).standard_normal((1, d.d_model, frames)).astype(np.float32)
    return {"encoder": enc, "decoder": g}


# ---- contract and errors --------------------------------------------------------------------------------------
def contract_problems(component: str, shapes: dict[str, tuple[int | None, ...]]) -> list[str]:
    """Every way ``shapes`` (output name -> shape; ``None`` = an axis the program leaves unknown) departs from
    :data:`CONTRACT`; empty when it holds. An unknown axis passes only where :data:`FLEXIBLE_OUTPUTS` allows it."""
    problems = []
    flexible = FLEXIBLE_OUTPUTS.get(_check_component(component), {})
    for name, want in CONTRACT[component].items():
        got = shapes.get(name)
        if got is None:
            problems.append(f"{component}: no output {name!r} (outputs: {sorted(shapes)})")
            continue
        allowed = flexible.get(name, ())
        if len(got) != len(want) or any(g != w and not (g is None and axis in allowed)
                                         for axis, (g, w) in enumerate(zip(got, want))):
            shown = ["?" if g is None else g for g in got]
            problems.append(f"{component}: {name} has shape {shown}, the contract says {list(want)}")
    extra = sorted(set(shapes) - set(CONTRACT[component]))
    if extra:
        problems.append(f"{component}: outputs {extra} are not in the contract")
    return problems


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
def package_size(path) -> int:
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


def convert_component(model, component: str, precision: str, out_dir) -> dict:
    """Convert one component, save it as ``out_dir/<component>.mlpackage``; its conversion and save times, size,
    declared output shapes and contract problems. Peak RSS of this phase when the kernel lets us reset it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    convert = converter(component)
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
    shapes = declared_output_shapes(package)
    return {"component": component, "precision": precision, "package": str(package), "convert_s": convert_s,
            "save_s": save_s, "package_bytes": package_size(package), "rss_before_mb": baseline,
            "convert_peak_mb": peak_rss_mb(), "peak_reset": reset,
            "declared_shapes": {k: list(v) for k, v in shapes.items()},
            "contract_problems": contract_problems(component, shapes)}


def run_component(model, component: str, package, precision: str) -> dict:
    """The package run once on the portable runtime on :func:`sample_inputs`: output shapes (checked against the
    contract), wall time and error against torch on the same inputs."""
    from conversions.runtime import load_model

    feeds = sample_inputs(model, component)
    reference = _torch_run(torch_module(model, component), feeds)
    start = time.perf_counter()
    program = load_model(str(package), backend="mil", precision=precision)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    outputs = program.predict(feeds)
    run_s = time.perf_counter() - start
    shapes = {k: tuple(v.shape) for k, v in outputs.items()}
    return {"runtime_load_s": load_s, "runtime_run_s": run_s, "runtime_shapes": {k: list(v) for k, v in shapes.items()},
            "runtime_contract_problems": contract_problems(component, shapes),
            "errors": errors_against(reference, outputs)}


def encoder_latency(model, package, runs: int = 5, precision: str = "fp16") -> dict:
    """Wall time of the encoder on the mel of 15 s of audio: the converted program on the portable runtime vs the
    torch module (CPU eager, no_grad), each after one untimed warm-up run. The two are timed in alternation (the
    order flipping every run) so that load from other processes on the machine falls on both alike; the medians
    are the figures, the minimums are kept too."""
    import torch

    from conversions.runtime import load_model

    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    feeds = sample_inputs(model, "encoder")
    module = torch_module(model, "encoder")
    program = load_model(str(package), backend="mil", precision=precision)
    tensors = [torch.from_numpy(v) for v in feeds.values()]

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


def torch_fp16_errors(model, component: str = "encoder") -> dict[str, dict]:
    """The yardstick for an fp16 program's error: torch's own module run in float16 (a half-precision copy of its
    weights, float inputs cast to half) against the float32 module, on :func:`sample_inputs`. A converted fp16
    program whose error is of this size adds nothing to what fp16 arithmetic costs the network itself."""
    import copy

    import torch

    feeds = sample_inputs(model, component)
    module = torch_module(model, component)
    reference = _torch_run(module, feeds)
    half = copy.deepcopy(module).half()
    with torch.no_grad():
        out = half(*(torch.from_numpy(v).half() if v.dtype.kind == "f" else torch.from_numpy(v)
                     for v in feeds.values()))
    del half
    gc.collect()
    names = _names(module)
    outputs = {n: (o.float() if o.is_floating_point() else o).numpy()
               for n, o in zip(names, out if isinstance(out, tuple) else (out,))}
    return errors_against(reference, outputs)


def measure_component(component: str, precision: str, out_dir, runs: int = 5, run: bool = True) -> dict:
    """Everything for one component in this process: build the model, convert, save, run on the portable runtime
    (and the encoder's latency). Meant to run in a fresh child process (:func:`measure_in_child`)."""
    _check_component(component)
    figures: dict = {"component": component, "precision": precision}
    start = time.perf_counter()
    model = build_model()
    figures["build_s"] = time.perf_counter() - start
    figures["build_peak_mb"] = peak_rss_mb()
    figures.update(convert_component(model, component, precision, out_dir))
    if run:
        reset_peak_rss()
        figures.update(run_component(model, component, figures["package"], precision))
        if component == "encoder":
            figures["latency"] = encoder_latency(model, figures["package"], runs, precision)
        figures["runtime_peak_mb"] = peak_rss_mb()
        if component == "encoder":  # after the runtime's peak: its half-precision copy of the weights is not ours
            figures["torch_fp16_errors"] = torch_fp16_errors(model, "encoder")
    return figures


# ---- one component, in a fresh child process --------------------------------------------------------------------
def _write_json(path, data) -> None:
    from conversions.files import atomic_write

    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def measure_in_child(component: str, precision: str, out_dir, runs: int = 5, run: bool = True,
                     guard_mb: float = DEFAULT_GUARD_MB, log_dir=None) -> dict:
    """:func:`measure_component` in a fresh ``python`` process, watched: the parent polls the child's RSS and the
    system's available memory, kills the child when available memory falls below ``guard_mb``, and reaps it with
    ``wait4`` (that child's own peak RSS, not the maximum over all children). Never raises for a child that failed
    or did not fit: the returned figures say ``status`` (``ok``, ``failed``, ``out-of-memory``) and why."""
    _check_component(component)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir or out_dir)
    result = log_dir / f".{component}-{uuid.uuid4().hex[:8]}.json"
    log = log_dir / f"{component}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", component, "--precision", precision,
               "--out", str(out_dir), "--result", str(result), "--runs", str(runs)] + ([] if run else ["--no-run"])
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    available_at_start = available_mb()
    min_available, polled_peak, guard_killed = available_at_start, 0.0, False
    start = time.perf_counter()
    with open(log, "w") as log_file:
        child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            polled_peak = max(polled_peak, (_status_kb("VmHWM", child.pid) or 0) / 1024)
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


def _child_main(args) -> int:
    """``--child``: measure one component and write the figures (or the error) to ``--result``."""
    try:
        figures = measure_component(args.child, args.precision, args.out, args.runs, run=not args.no_run)
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
    _write_json(args.result, figures)
    return code


# ---- report ---------------------------------------------------------------------------------------------------
def _gib(mb: float | None) -> str:
    return "-" if mb is None else f"{mb / 1024:.2f} GiB"


def _error_text(e: dict) -> str:
    if "agreement" in e:
        return f"agreement {e['agreement']:.4f}"
    return (f"max_abs {e['max_abs']:.3g} (peak {e['peak']:.3g}), PSNR {e['psnr_db']:.1f} dB, relative L2 error "
            f"{1 - e['quality']:.2e}")


def format_component(f: dict) -> str:
    lines = [f"== {f['component']} ({f['precision']}): {f.get('status')}"]
    if f.get("status") != "ok":
        lines.append(f"   {f.get('why')}")
        lines += [f"   | {line}" for line in f.get("log_tail", [])]
        return "\n".join(lines)
    lines.append(f"   model build {f['build_s']:.1f} s (peak RSS {_gib(f['build_peak_mb'])}) | conversion "
                 f"{f['convert_s']:.1f} s + save {f['save_s']:.1f} s | child process {f['child_wall_s']:.1f} s")
    reset = "" if f.get("peak_reset") else " (VmHWM could not be reset: cumulative)"
    lines.append(f"   peak RSS of the conversion {_gib(f['convert_peak_mb'])} (model resident before: "
                 f"{_gib(f['rss_before_mb'])}, so +{_gib(f['convert_peak_mb'] - f['rss_before_mb'])}){reset}; "
                 f"child's whole-life peak {_gib(f['child_peak_mb'])}")
    lines.append(f"   package {f['package_bytes'] / MB:.1f} MiB | declared outputs: "
                 + ", ".join(f"{k} {v}" for k, v in f["declared_shapes"].items()))
    if "runtime_shapes" in f:
        shapes = ", ".join(f"{k} {v}" for k, v in f["runtime_shapes"].items())
        lines.append(f"   portable runtime (load {f['runtime_load_s']:.1f} s, first run {f['runtime_run_s']:.2f} s, peak "
                     f"RSS {_gib(f.get('runtime_peak_mb'))}): {shapes}")
        for name, e in f["errors"].items():
            lines.append(f"   runtime vs torch, {name}: {_error_text(e)}")
    for name, e in f.get("torch_fp16_errors", {}).items():
        lines.append(f"   yardstick, torch's own fp16 run vs fp32, {name}: {_error_text(e)}")
    problems = f["contract_problems"] + f.get("runtime_contract_problems", [])
    lines.append("   contract: " + ("ok" if not problems else "; ".join(problems)))
    if "latency" in f:
        lat = f["latency"]
        lines.append(f"   encoder latency, 15 s of audio's mel, median of {lat['runs']} (min): portable runtime "
                     f"{lat['runtime_ms']:.0f} ms ({lat['runtime_min_ms']:.0f}) vs torch CPU eager {lat['torch_ms']:.0f} ms"
                     f" ({lat['torch_min_ms']:.0f}), {lat['torch_threads']} threads: runtime/torch = "
                     f"{lat['runtime_over_torch']:.2f} (load average {lat['loadavg_1min'][0]:.1f} -> "
                     f"{lat['loadavg_1min'][1]:.1f})")
    return "\n".join(lines)


def format_summary(results: list[dict]) -> str:
    rows = [f"{'component':<20} {'status':<14} {'convert s':>9} {'peak RSS GiB':>12} {'package MiB':>11}  outputs"]
    for f in results:
        if f.get("status") != "ok":
            rows.append(f"{f['component']:<20} {f.get('status', '?'):<14} "
                        f"{'-':>9} {f.get('child_peak_mb', 0) / 1024:>12.2f} {'-':>11}  {f.get('why', '')}")
            continue
        shapes = ", ".join(f"{k} {v}" for k, v in f["declared_shapes"].items())
        rows.append(f"{f['component']:<20} {'ok' if not f['contract_problems'] else 'contract!':<14} "
                    f"{f['convert_s']:>9.1f} {f['convert_peak_mb'] / 1024:>12.2f} {f['package_bytes'] / MB:>11.1f}  "
                    f"{shapes}")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--components", default=",".join(COMPONENTS),
                        help=f"comma-separated, from {', '.join(COMPONENTS)} (default: all)")
    parser.add_argument("--precision", default="fp16", choices=PRECISIONS)
    parser.add_argument("--out", help="directory to keep the .mlpackage files in (default: a temporary one, removed)")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per engine for the encoder latency (median)")
    parser.add_argument("--no-run", action="store_true", help="convert only: no portable-runtime run, no latency")
    parser.add_argument("--memory-guard-mb", type=float, default=DEFAULT_GUARD_MB,
                        help="kill a child when the system's available memory falls below this (default 1024)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    if args.child:
        if not (args.out and args.result):
            parser.error("--child needs --out and --result")
        return _child_main(args)
    components = [c.strip() for c in args.components.split(",") if c.strip()]
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown or not components:
        parser.error(f"--components: unknown {unknown or 'none given'}; expected some of {', '.join(COMPONENTS)}")

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="parakeet-full-size-"))
    out_dir = Path(args.out) if args.out else work / "packages"
    print(f"full-size Parakeet TDT v3, {args.precision}, components {', '.join(components)}; "
          f"{available_mb() / 1024:.1f} GiB available, {os.cpu_count()} CPUs", flush=True)
    results = []
    try:
        for component in components:  # one at a time: a child's peak is never shared with another's
            figures = measure_in_child(component, args.precision, out_dir, args.runs, run=not args.no_run,
                                       guard_mb=args.memory_guard_mb, log_dir=work)
            if not args.out:
                figures.pop("package", None)
            results.append(figures)
            print(format_component(figures), flush=True)
    finally:
        total_s = time.perf_counter() - start
        if args.json:
            _write_json(args.json, {"precision": args.precision, "total_s": total_s, "components": results})
        failed = [f["component"] for f in results if f.get("status") != "ok"]
        if failed:
            shutil.rmtree(work / "packages", ignore_errors=True)
            print(f"logs of the failed children kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    broken = [f["component"] for f in results
              if f.get("status") != "ok" or f.get("contract_problems") or f.get("runtime_contract_problems")]
    print(format_summary(results))
    print(f"total {total_s:.0f} s; " + (f"not ok: {', '.join(broken)}" if broken else "every component ok"))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
