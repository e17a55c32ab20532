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

The measurement machinery (child processes, memory figures, packages, report lines, the command line) is
``conversions/full_size.py``'s, shared with ``scripts/parakeet_eou_full_size.py``; what is the TDT model's is here.
``tests/test_parakeet_full_size.py`` (``pytest -m slow``) reuses these functions.
"""

from __future__ import annotations

import copy
import gc
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from conversions import full_size

COMPONENTS = ("preprocessor", "encoder", "mel-encoder", "decoder", "joint", "joint-decision", "joint-decision-step")
PRECISIONS = full_size.PRECISIONS

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


# ---- the model and its inputs ---------------------------------------------------------------------------------
def build_model(seed: int = 0):
    """The full-size random-weight v3 model through NeMo (tokenizer trained first). The tokenizer files are
    already loaded by then, so their temporary directory is removed at once."""
    from conversions.models.parakeet_tdt import nemo_models

    model = nemo_models.build_tiny_parakeet_tdt(seed=seed, scale=FULL_SCALE)
    shutil.rmtree(model._tokenizer_tmpdir, ignore_errors=True)
    return model


def _names(module) -> tuple[str, ...]:
    from conversions.models.parakeet_tdt import converters, modules

    return {modules.ParakeetPreprocessor: ("mel", "mel_length"), modules.ParakeetEncoder: ("encoder", "encoder_length"),
            modules.ParakeetMelEncoder: ("encoder", "encoder_length"), modules.ParakeetDecoder: converters.DECODER_OUTPUTS,
            modules.ParakeetJoint: ("logits",), modules.ParakeetJointDecision: converters.DECISION_OUTPUTS}[type(module)]


def _torch_run(module, feeds: dict) -> dict[str, np.ndarray]:
    return full_size.torch_run(module, feeds, _names(module))


def torch_module(model, component: str):
    from conversions.models.parakeet_tdt import modules

    factory = {"preprocessor": modules.preprocessor_module, "encoder": modules.encoder_module,
               "mel-encoder": modules.mel_encoder_module, "decoder": modules.decoder_module, "joint": modules.joint_module,
               "joint-decision": modules.joint_decision_module, "joint-decision-step": modules.joint_decision_module}
    return factory[_check_component(component)](model)


def converter(component: str):
    from conversions.models.parakeet_tdt import converters

    return {"preprocessor": converters.convert_preprocessor, "encoder": converters.convert_encoder,
            "mel-encoder": converters.convert_mel_encoder, "decoder": converters.convert_decoder,
            "joint": converters.convert_joint,
            "joint-decision": converters.convert_joint_decision,
            "joint-decision-step": converters.convert_joint_decision_step}[_check_component(component)]


def _check_component(component: str) -> str:
    return full_size.check_component(component, COMPONENTS)


def sample_inputs(model, component: str) -> dict[str, np.ndarray]:
    """What the component is run on: 15 s of speech (the committed clip repeated to fill the window) or its torch
    mel for the front end and encoders; for the decoder, a real token from the state after a few tokens of a
    sentence (from the zero state a blank's embedding is the zero pad vector, which would exercise the LSTM biases
    only); for the joints, the decoder output after those tokens and seeded N(0, 1) encoder frames (every conformer
    block ends in a LayerNorm, unit gain at initialisation, so this model's real encoder output has that scale:
    measured peak 3.7 over 192k values; running the 0.6B encoder in torch only to feed a joint would double the
    child's cost)."""
    from conversions.models.parakeet_tdt import inputs, modules

    d = modules.dims(model)
    call = inputs.audio_call(d, full_size.speech_window(WINDOW_SAMPLES), d.window_samples)
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


def contract_problems(component: str, shapes: dict[str, tuple[int | None, ...]]) -> list[str]:
    """Every way the output ``shapes`` (name -> shape; ``None`` = an axis the program leaves unknown) depart from
    :data:`CONTRACT`; empty when they hold. An unknown axis passes only where :data:`FLEXIBLE_OUTPUTS` allows it."""
    return full_size.contract_problems(component, CONTRACT[_check_component(component)], shapes,
                                       FLEXIBLE_OUTPUTS.get(component))


# ---- one component, in this process --------------------------------------------------------------------------
def convert_component(model, component: str, precision: str, out_dir) -> dict:
    """Convert one component, save it as ``out_dir/<component>.mlpackage``; its conversion and save times, size,
    declared output shapes and contract problems. Peak RSS of this phase when the kernel lets us reset it
    (:func:`conversions.full_size.convert_component`)."""

    def describe(package) -> dict:
        shapes = full_size.declared_output_shapes(package)
        return {"declared_shapes": {k: list(v) for k, v in shapes.items()},
                "contract_problems": contract_problems(component, shapes)}

    return full_size.convert_component(model, component, precision, out_dir, converter(component), describe)


def run_component(model, component: str, package, precision: str) -> dict:
    """The package run once on the portable runtime on :func:`sample_inputs`: output shapes (checked against the
    contract), wall time and error against torch on the same inputs."""
    feeds = sample_inputs(model, component)
    reference = _torch_run(torch_module(model, component), feeds)
    return full_size.run_component(package, precision, feeds, reference,
                                   lambda shapes: contract_problems(component, shapes))


def encoder_latency(model, package, runs: int = 5, precision: str = "fp16") -> dict:
    """Wall time of the encoder on the mel of 15 s of audio: the converted program on the portable runtime vs the
    torch module (CPU eager, no_grad), timed in alternation (:func:`conversions.full_size.latency_against_torch`);
    the medians are the figures, the minimums are kept too."""
    feeds = sample_inputs(model, "encoder")
    return full_size.latency_against_torch(package, precision, torch_module(model, "encoder"), feeds, runs)


def torch_fp16_errors(model, component: str = "encoder") -> dict[str, dict]:
    """The yardstick for an fp16 program's error: torch's own module run in float16 (a half-precision copy of its
    weights, float inputs cast to half) against the float32 module, on :func:`sample_inputs`. A converted fp16
    program whose error is of this size adds nothing to what fp16 arithmetic costs the network itself."""
    feeds = sample_inputs(model, component)
    module = torch_module(model, component)
    names = _names(module)
    reference = full_size.torch_run(module, feeds, names)
    half = copy.deepcopy(module).half()
    outputs = full_size.torch_run(half, feeds, names, half=True)
    del half
    gc.collect()
    return full_size.errors_against(reference, outputs)


def measure_component(component: str, precision: str, out_dir, runs: int = 5, run: bool = True) -> dict:
    """Everything for one component in this process (:func:`conversions.full_size.measure_component`): build the
    model, convert, save, run on the portable runtime (and the encoder's latency, then torch's own fp16 run of it).
    Meant to run in a fresh child process (:func:`measure_in_child`)."""
    encoder = _check_component(component) == "encoder"
    return full_size.measure_component(
        {"component": component, "precision": precision}, build_model,
        lambda model: convert_component(model, component, precision, out_dir),
        run=(lambda model, package: run_component(model, component, package, precision)) if run else None,
        latency=(lambda model, package: encoder_latency(model, package, runs, precision)) if encoder else None,
        after_runtime=(lambda model, _: {"torch_fp16_errors": torch_fp16_errors(model, "encoder")}) if encoder else None)


def measure_in_child(component: str, precision: str, out_dir, runs: int = 5, run: bool = True,
                     guard_mb: float = full_size.DEFAULT_GUARD_MB, log_dir=None) -> dict:
    """:func:`measure_component` in a fresh ``python`` process, watched for its peak RSS and the system's available
    memory (:func:`conversions.full_size.measure_in_child`). Never raises for a child that failed or did not fit:
    the returned figures say ``status`` (``ok``, ``failed``, ``out-of-memory``) and why."""
    return full_size.measure_in_child(__file__, _check_component(component), precision, out_dir, runs, run, guard_mb,
                                      log_dir)


# ---- report ---------------------------------------------------------------------------------------------------
def _yardstick_lines(f: dict) -> list[str]:
    return [f"   yardstick, torch's own fp16 run vs fp32, {name}: {full_size.error_text(e)}"
            for name, e in f.get("torch_fp16_errors", {}).items()]


def _latency_line(lat: dict) -> str:
    return (f"   encoder latency, 15 s of audio's mel, median of {lat['runs']} (min): {full_size.latency_text(lat)} "
            + full_size.load_text(lat))


def format_component(f: dict) -> str:
    return full_size.format_component(f, _yardstick_lines, _latency_line)


def format_summary(results: list[dict]) -> str:
    return full_size.summary_table(results, "  outputs", lambda f: "  " + full_size.shapes_text(f["declared_shapes"]))


def main(argv=None) -> int:
    parser = full_size.argument_parser(__doc__, COMPONENTS, "timed runs per engine for the encoder latency (median)")
    args = full_size.parse_arguments(parser, argv, COMPONENTS)
    if args.child:
        return full_size.child_main(args, lambda a: measure_component(a.child, a.precision, a.out, a.runs,
                                                                      run=not a.no_run))
    print(f"full-size Parakeet TDT v3, {args.precision}, components {', '.join(args.components)}; "
          f"{full_size.available_mb() / 1024:.1f} GiB available, {os.cpu_count()} CPUs", flush=True)

    def measure(component: str, out_dir: Path, work: Path) -> dict:
        return measure_in_child(component, args.precision, out_dir, args.runs, run=not args.no_run,
                                guard_mb=args.memory_guard_mb, log_dir=work)

    return full_size.measure_components(args.components, measure, out=args.out, json_path=args.json,
                                        precision=args.precision, prefix="parakeet-full-size-",
                                        format_component=format_component, format_summary=format_summary)


if __name__ == "__main__":
    sys.exit(main())
