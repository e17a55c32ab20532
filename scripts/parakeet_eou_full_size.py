"""Full-size Parakeet Realtime EOU 120M through the same converters as the tiny model: what it costs and whether it
keeps the contract.

The parity suite runs on a tiny random-weight instance of the EOU architecture; users ship the real 120M model.
This script builds the real architecture at full size (17 cache-aware FastConformer layers, d_model 512, 8 heads,
attention context [70, 1] chunked-limited, causal depthwise conv of kernel 9 with a time cache of 8, causal 8x
dw_striding; 1-layer LSTM 640, joint 640, 1026 pieces incl. ``<EOU>``/``<EOB>`` -> 1027 logits; random weights,
through NeMo's ``EncDecRNNTBPEModel`` with ``build_tiny_parakeet_eou(seed=0, scale=FULL_SCALE)``) and sends every
component through the converters of ``conversions/models/parakeet_eou/``: the preprocessor, the streaming encoder in
its three chunk variants (160, 320, 1280 ms, caches in and out), the decoder step, the joint over one 320 ms chunk and
the single-step joint+decision. Per component it prints:

- conversion wall time (trace + ``ct.convert``) and the time to save the package;
- peak RSS: each component is converted in a fresh child process, the child reading its own ``VmHWM`` per phase
  (reset in between through ``/proc/self/clear_refs``), the parent recording the child's whole-life peak
  (``wait4``) -- the machinery of ``conversions/full_size.py``, shared with ``scripts/parakeet_full_size.py`` (the
  TDT equivalent);
- package size, and the input and output shapes the converted program declares, checked against the contract
  (:data:`CONTRACT`, written out by hand from ``shared/MODELS.md`` and NeMo's ``setup_streaming_params``);
- the package run once on the portable runtime (``load_model(pkg, backend="mil")``): output shapes, and the error
  against torch on the same inputs (for an encoder: a chunk of speech with the caches torch carries there);
- for each encoder variant: :data:`STREAM_CHUNKS` chunks of speech streamed with caches carried, on the portable
  runtime and in torch fp32 and fp16 (each stream carrying its own caches): the program's error against torch fp32
  next to torch's own fp16 error (the yardstick); and the latency of one chunk, portable runtime vs Torch CPU eager
  (medians, alternated), against the audio the chunk advances (real-time factor).

The contract's chunk figures are NeMo's (``setup_streaming_params(chunk_size=frames, shift_size=frames)``, the
converters' source): 16 / 32 / 128 mel frames in, a pre-encode cache of 9 mel frames, 2 / 4 / 16 valid encoder
frames out. ``shared/MODELS.md``'s table of the variants *as shipped* by existing ports differs on the inputs
(17 / 64 / 129 mel frames in, pre-cache 16 / 9 / 16 mel frames); the valid frames out and the cache shapes agree.

A component that does not fit this machine's memory is reported, not fatal (the parent kills the child when the
system's available memory falls below ``--memory-guard-mb``). Nothing here is a timed assertion: figures are
printed.

Usage (``.tox/tests/bin/python`` has NeMo)::

    python scripts/parakeet_eou_full_size.py                        # every component, fp16
    python scripts/parakeet_eou_full_size.py --components encoder-320ms,joint --precision fp32 --out /tmp/pkgs --json f.json

``tests/test_parakeet_eou_full_size.py`` (``pytest -m slow``) reuses these functions.
"""

from __future__ import annotations

import copy
import functools
import gc
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from conversions import full_size

VARIANTS = ("160ms", "320ms", "1280ms")
ENCODERS = tuple(f"encoder-{v}" for v in VARIANTS)
COMPONENTS = ("preprocessor", *ENCODERS, "decoder", "joint", "joint-decision", "joint-decision-step")
PRECISIONS = full_size.PRECISIONS

# ---- the contract, by hand ---------------------------------------------------------------------------------------
# Real model (shared/MODELS.md): 128 mels, 17 layers, d_model 512, attention cache 70 frames, conv time cache 8,
# LSTM 1 x 640, 1024 pieces + <EOU> + <EOB> + blank = 1027 logits, top-5 of the single-step decision. Chunks (NeMo's
# setup_streaming_params, one encoder frame = 8 mel frames = 80 ms, causal 8x dw_striding): variant -> (mel frames
# in, valid encoder frames out); the pre-encode cache is 9 mel frames for all three.
N_MELS, D_MODEL, LAYERS, ATT_CACHE, CONV_CACHE, PRED_HIDDEN, LOGITS, TOP_K = 128, 512, 17, 70, 8, 640, 1027, 5
CHUNKS = {"160ms": (16, 2), "320ms": (32, 4), "1280ms": (128, 16)}
PRE_CACHE = 9
JOINT_FRAMES = CHUNKS["320ms"][1]  # the joint takes one 320 ms chunk's valid frames
WINDOW_SAMPLES = 240_000  # the preprocessor's largest input: 15 s
WINDOW_MEL = WINDOW_SAMPLES // 160 + 1  # centred STFT, hop 160


def _encoder_contract(mel_frames: int, valid: int) -> dict[str, dict[str, tuple]]:
    caches = {"pre_cache": (1, N_MELS, PRE_CACHE), "cache_last_channel": (LAYERS, 1, ATT_CACHE, D_MODEL),
              "cache_last_time": (LAYERS, 1, D_MODEL, CONV_CACHE), "cache_last_channel_len": (1,)}
    return {"inputs": {"audio_signal": (1, N_MELS, mel_frames), "audio_length": (1,), **caches},
            "outputs": {"encoded_output": (1, D_MODEL, valid), "encoded_length": (1,),
                        **{f"new_{name}": shape for name, shape in caches.items()}}}


# component -> inputs / outputs -> name -> shape. An input axis given as (low, high) is a range (a flexible input).
CONTRACT: dict[str, dict[str, dict[str, tuple]]] = {
    "preprocessor": {"inputs": {"audio_signal": (1, (1, WINDOW_SAMPLES)), "audio_length": (1,)},
                     "outputs": {"mel": (1, N_MELS, WINDOW_MEL), "mel_length": (1,)}},
    **{f"encoder-{v}": _encoder_contract(*CHUNKS[v]) for v in VARIANTS},
    "decoder": {"inputs": {"targets": (1, 1), "target_length": (1,), "h_in": (1, 1, PRED_HIDDEN),
                           "c_in": (1, 1, PRED_HIDDEN)},
                "outputs": {"decoder": (1, PRED_HIDDEN, 1), "h_out": (1, 1, PRED_HIDDEN), "c_out": (1, 1, PRED_HIDDEN)}},
    "joint": {"inputs": {"encoder": (1, D_MODEL, JOINT_FRAMES), "decoder": (1, PRED_HIDDEN, 1)},
              "outputs": {"logits": (1, JOINT_FRAMES, 1, LOGITS)}},
    "joint-decision": {"inputs": {"encoder": (1, D_MODEL, JOINT_FRAMES), "decoder": (1, PRED_HIDDEN, 1)},
                       "outputs": {"token_id": (1, JOINT_FRAMES, 1), "token_prob": (1, JOINT_FRAMES, 1),
                                   "top_k_ids": (1, JOINT_FRAMES, 1, TOP_K),
                                   "top_k_logits": (1, JOINT_FRAMES, 1, TOP_K)}},
    "joint-decision-step": {"inputs": {"encoder": (1, D_MODEL, 1), "decoder": (1, PRED_HIDDEN, 1)},
                            "outputs": {"token_id": (1, 1, 1), "token_prob": (1, 1, 1), "top_k_ids": (1, 1, 1, TOP_K),
                                        "top_k_logits": (1, 1, 1, TOP_K)}},
}
# Outputs whose shape follows a flexible input: the program leaves these axes unknown (mel: [1, 128, ?], the frame
# axis following the 1..240000 samples); the contract's size of such an axis is checked on the run over the full
# window instead.
FLEXIBLE_OUTPUTS: dict[str, dict[str, tuple[int, ...]]] = {"preprocessor": {"mel": (2,)}}

# config_for(scale) keeps every size the scale does not name: this one names the real vocabulary only (scale=None
# means TINY_SCALE in build_tiny_parakeet_eou; the test checks the built model's sizes).
FULL_SCALE = {"vocab_size": 1026}
SPEECH_START_S = 1.0  # the streams start inside the clip's first sentence (speech from 0.85 s), not in its silence
STREAM_CHUNKS = 3


def _check_component(component: str) -> str:
    return full_size.check_component(component, COMPONENTS)


def _variant(component: str) -> str | None:
    return component.removeprefix("encoder-") if component in ENCODERS else None


# ---- the model and its inputs ---------------------------------------------------------------------------------
def build_model(seed: int = 0):
    """The full-size random-weight EOU model through NeMo (its <EOU>/<EOB> tokenizer trained first, ~6 s, ~1.2 GiB
    resident). The tokenizer files are loaded by then, so their temporary directory is removed at once."""
    from conversions.models.parakeet_eou import nemo_models

    model = nemo_models.build_tiny_parakeet_eou(seed=seed, scale=FULL_SCALE)
    shutil.rmtree(model._tokenizer_tmpdir, ignore_errors=True)
    return model


def output_names(component: str) -> tuple[str, ...]:
    from conversions.models.parakeet_eou import converters, modules

    return {"preprocessor": ("mel", "mel_length"), "decoder": converters.DECODER_OUTPUTS, "joint": ("logits",),
            "joint-decision": converters.DECISION_OUTPUTS,
            "joint-decision-step": converters.DECISION_OUTPUTS}.get(_check_component(component),
                                                                    modules.ENCODER_OUTPUTS)


def torch_module(model, component: str):
    from conversions.models.parakeet_eou import modules

    variant = _variant(_check_component(component))
    if variant:
        return modules.encoder_module(model, variant)  # a deep copy of the encoder, set up for the variant
    return {"preprocessor": modules.preprocessor_module, "decoder": modules.decoder_module,
            "joint": modules.joint_module, "joint-decision": modules.joint_decision_step_module,
            "joint-decision-step": modules.joint_decision_step_module}[component](model)


def converter(component: str):
    from conversions.models.parakeet_eou import converters

    variant = _variant(_check_component(component))
    if variant:
        return converters.encoder_converter(variant)
    return {"preprocessor": converters.convert_preprocessor, "decoder": converters.convert_decoder,
            "joint": converters.convert_joint, "joint-decision": converters.convert_joint_decision,
            "joint-decision-step": converters.convert_joint_decision_step}[component]


def stream_calls(model, variant: str, chunks: int = STREAM_CHUNKS) -> list[dict[str, np.ndarray]]:
    """The first ``chunks`` chunks (``audio_signal``, ``audio_length``) of the clip's torch mel from
    :data:`SPEECH_START_S` on, cut as NeMo's streaming buffer cuts them."""
    from conversions.audio import load_speech_clip
    from conversions.models.parakeet_eou import modules, streaming

    v = modules.chunk_variants(model)[variant]
    mel = streaming.clip_mel(model, load_speech_clip())
    start = int(SPEECH_START_S * v.sample_rate / v.hop)
    calls = streaming.chunk_calls(model, v, np.ascontiguousarray(mel[:, :, start:]))
    if len(calls) < chunks:
        raise ValueError(f"{variant}: the clip from {SPEECH_START_S} s has {len(calls)} chunks, {chunks} asked")
    return calls[:chunks]


def stream(encode, calls, initial: dict) -> tuple[list[dict], list[dict]]:
    """``encode(feeds) -> outputs`` over ``calls``, each call fed the previous call's new caches (cast to the
    inputs' dtypes, as a host does with an fp16 program's outputs); the feeds and outputs of every call."""
    from conversions.models.parakeet_eou import modules, streaming

    carried, fed, outputs = dict(initial), [], []
    for call in calls:
        feeds = {name: {**call, **carried}[name] for name in modules.ENCODER_INPUTS}
        out = encode(feeds)
        fed.append(feeds)
        outputs.append(out)
        carried = streaming.next_caches(out, carried)
    return fed, outputs


def _initial_caches(model, variant: str) -> dict[str, np.ndarray]:
    from conversions.models.parakeet_eou import modules, streaming

    return streaming.initial_caches(model, modules.chunk_variants(model)[variant])


def _decoder_history(model, steps: int = 6):
    """The decoder after a few tokens of a real sentence (blank first): the next token, the state before it and
    the output after the history (from the zero state a blank's embedding is the zero pad vector)."""
    from conversions.models.parakeet_eou import inputs

    tokens = inputs.decoder_tokens(model)[: steps + 1]
    outputs, state = inputs.decoder_stream(model, tokens[:-1])
    return tokens[-1], state, outputs[-1]


def sample_inputs(model, component: str) -> dict[str, np.ndarray]:
    """What the component is run on once: 15 s of speech for the preprocessor; for an encoder, the last of
    :data:`STREAM_CHUNKS` chunks of speech with the caches torch carries there (not the zero caches of a stream's
    first chunk); for the decoder, a real token from the state after a few tokens of a sentence; for the joints,
    the torch encoder's streamed 320 ms frames of speech with the decoder output after those tokens."""
    from conversions.models.parakeet_tdt.inputs import token_call

    _check_component(component)
    if component == "preprocessor":
        audio = full_size.speech_window(WINDOW_SAMPLES)[None, :]
        return {"audio_signal": audio, "audio_length": np.array([audio.shape[1]], np.int32)}
    variant = _variant(component)
    if variant or component.startswith("joint"):
        variant = variant or "320ms"
        module, names = torch_module(model, f"encoder-{variant}"), output_names(f"encoder-{variant}")
        fed, out = stream(lambda f: full_size.torch_run(module, f, names), stream_calls(model, variant),
                          _initial_caches(model, variant))
        if component in ENCODERS:
            return fed[-1]
        _, _, g = _decoder_history(model)
        enc = out[-1]["encoded_output"]
        enc = enc[:, :, :1] if component == "joint-decision-step" else enc
        return {"encoder": np.ascontiguousarray(enc, np.float32), "decoder": g}
    token, state, _ = _decoder_history(model)
    return {**token_call(token), **state}


def contract_problems(component: str, shapes: dict[str, tuple], side: str = "outputs") -> list[str]:
    """Every way ``shapes`` (name -> shape of ``side``, ``inputs`` or ``outputs``; ``None`` = an axis the program
    leaves unknown) departs from :data:`CONTRACT`; empty when it holds. An unknown output axis passes only where
    :data:`FLEXIBLE_OUTPUTS` allows it."""
    contract = CONTRACT[_check_component(component)]
    if side not in contract:
        raise ValueError(f"side must be 'inputs' or 'outputs', got {side!r}")
    flexible = FLEXIBLE_OUTPUTS.get(component) if side == "outputs" else None
    return full_size.contract_problems(component, contract[side], shapes, flexible, side)


# ---- one component, in this process --------------------------------------------------------------------------
def convert_component(model, component: str, precision: str, out_dir) -> dict:
    """Convert one component, save it as ``out_dir/<component>.mlpackage``; its conversion and save times, size,
    declared input and output shapes and contract problems. Peak RSS of this phase when the kernel lets us reset
    it (:func:`conversions.full_size.convert_component`)."""

    def describe(package) -> dict:
        inputs, outputs = full_size.declared_input_shapes(package), full_size.declared_output_shapes(package)
        return {"declared_inputs": {k: list(v) for k, v in inputs.items()},
                "declared_shapes": {k: list(v) for k, v in outputs.items()},
                "contract_problems": contract_problems(component, inputs, "inputs")
                + contract_problems(component, outputs)}

    return full_size.convert_component(model, component, precision, out_dir, converter(component), describe)


def run_component(model, component: str, package, precision: str) -> dict:
    """The package run once on the portable runtime on :func:`sample_inputs`: output shapes (checked against the
    contract), wall time and error against torch on the same inputs."""
    feeds = sample_inputs(model, component)
    reference = full_size.torch_run(torch_module(model, component), feeds, output_names(component))
    return full_size.run_component(package, precision, feeds, reference,
                                   lambda shapes: contract_problems(component, shapes))


def _stream_summary(outputs: list[dict]) -> dict[str, np.ndarray]:
    """A stream's outputs as one: every chunk's valid encoded frames and lengths concatenated, the last caches."""
    valid = [int(np.asarray(o["encoded_length"]).reshape(-1)[0]) for o in outputs]
    summary = {"encoded_output": np.concatenate([np.asarray(o["encoded_output"], np.float32)[:, :, :n]
                                                 for o, n in zip(outputs, valid)], axis=-1),
               "encoded_length": np.array(valid, np.int32)}
    for name in ("new_pre_cache", "new_cache_last_channel", "new_cache_last_time", "new_cache_last_channel_len"):
        value = np.asarray(outputs[-1][name])
        summary[name] = value.astype(np.float32) if value.dtype.kind == "f" else value
    return summary


def stream_errors(model, variant: str, package, precision: str = "fp16", chunks: int = STREAM_CHUNKS) -> dict:
    """``variant``'s encoder streamed over ``chunks`` chunks of speech three ways, each carrying its own caches from
    zero: the program on the portable runtime, torch fp32 (the reference) and torch's own fp16 run (a half copy of
    the module: the yardstick of what fp16 arithmetic costs this network). Errors against the reference over every
    chunk's valid frames and the last caches (:func:`_stream_summary`), the encoded output's error per chunk, and
    the reference's attention-cache fill after each chunk (``cache_last_channel_len``: it saturates at the cache
    size, 70 frames, once the stream is longer)."""
    from conversions.runtime import load_model

    component = f"encoder-{variant}"
    calls, initial, names = stream_calls(model, variant, chunks), _initial_caches(model, variant), output_names(component)
    module = torch_module(model, component)
    _, reference = stream(functools.partial(full_size.torch_run, module, names=names), calls, initial)
    program = load_model(str(package), backend="mil", precision=precision)
    _, runtime = stream(program.predict, calls, initial)
    del program
    half = copy.deepcopy(module).half()
    _, fp16 = stream(functools.partial(full_size.torch_run, half, names=names, half=True), calls, initial)
    del half, module
    gc.collect()
    ref = _stream_summary(reference)
    per_chunk = [float(np.abs(np.asarray(r["encoded_output"], np.float32) - np.asarray(o["encoded_output"], np.float32))
                       .max()) for r, o in zip(reference, runtime)]
    fill = [int(np.asarray(r["new_cache_last_channel_len"]).reshape(-1)[0]) for r in reference]
    return {"variant": variant, "chunks": chunks, "runtime": full_size.errors_against(ref, _stream_summary(runtime)),
            "torch_fp16": full_size.errors_against(ref, _stream_summary(fp16)), "runtime_max_abs_per_chunk": per_chunk,
            "cache_fill": fill}


def encoder_latency(model, variant: str, package, runs: int = 5, precision: str = "fp16") -> dict:
    """Wall time of one chunk of ``variant`` (:func:`sample_inputs`: speech, caches carried): the converted program
    on the portable runtime vs the torch module (CPU eager, no_grad), timed in alternation
    (:func:`conversions.full_size.latency_against_torch`). Medians are the figures (minimums kept), with the
    real-time factor: latency over the audio one chunk advances."""
    from conversions.models.parakeet_eou import modules

    component = f"encoder-{variant}"
    feeds = sample_inputs(model, component)
    timed = full_size.latency_against_torch(package, precision, torch_module(model, component), feeds, runs)
    audio_ms = modules.chunk_variants(model)[variant].audio_ms
    return {"variant": variant, "audio_ms": audio_ms, **timed, "runtime_rtf": timed["runtime_ms"] / audio_ms,
            "torch_rtf": timed["torch_ms"] / audio_ms}


def measure_component(component: str, precision: str, out_dir, runs: int = 5, run: bool = True,
                      chunks: int = STREAM_CHUNKS, threads: int = 0) -> dict:
    """Everything for one component in this process: build the model, convert, save, run on the portable runtime;
    for an encoder, its stream against torch and the fp16 yardstick, and its latency. ``threads``: torch's
    intra-op threads (the portable runtime computes through torch too), 0 = torch's default. Meant to run in a
    fresh child process (:func:`measure_in_child`)."""
    import torch

    variant = _variant(_check_component(component))
    if threads:
        torch.set_num_threads(threads)
    return full_size.measure_component(
        {"component": component, "precision": precision, "torch_threads": torch.get_num_threads()}, build_model,
        lambda model: convert_component(model, component, precision, out_dir),
        run=(lambda model, package: run_component(model, component, package, precision)) if run else None,
        latency=(lambda model, package: encoder_latency(model, variant, package, runs, precision)) if variant else None,
        # after the runtime's peak: torch's half-precision copy of the encoder is not the runtime's
        after_runtime=(lambda model, package: {"stream": stream_errors(model, variant, package, precision, chunks)})
        if variant else None)


def measure_in_child(component: str, precision: str, out_dir, runs: int = 5, run: bool = True,
                     guard_mb: float = full_size.DEFAULT_GUARD_MB, log_dir=None, chunks: int = STREAM_CHUNKS,
                     threads: int = 0) -> dict:
    """:func:`measure_component` in a fresh ``python`` process, watched for its peak RSS and the system's available
    memory (:func:`conversions.full_size.measure_in_child`). Never raises for a child that failed or did not fit:
    the figures say ``status`` (``ok``, ``failed``, ``out-of-memory``) and why."""
    return full_size.measure_in_child(__file__, _check_component(component), precision, out_dir, runs, run, guard_mb,
                                      log_dir, options={"chunks": chunks, "threads": threads})


# ---- report ---------------------------------------------------------------------------------------------------
def _stream_lines(f: dict) -> list[str]:
    if "stream" not in f:
        return []
    s, lines = f["stream"], []
    for name, e in s["runtime"].items():
        lines.append(f"   {s['chunks']} chunks streamed, runtime vs torch fp32, {name}: {full_size.error_text(e)}")
        if "max_abs" in e:
            lines.append("      yardstick, torch's own fp16 stream: " + full_size.error_text(s["torch_fp16"][name]))
    lines.append("   encoded_output max_abs per chunk: " + ", ".join(f"{x:.3g}" for x in s["runtime_max_abs_per_chunk"])
                 + f"; attention cache fill after each chunk: {s['cache_fill']} (of {ATT_CACHE})")
    return lines


def _latency_line(lat: dict) -> str:
    return (f"   latency of one {lat['variant']} chunk ({lat['audio_ms']:.0f} ms of audio), median of {lat['runs']} "
            f"(min): {full_size.latency_text(lat, 1)}; real-time factor runtime {lat['runtime_rtf']:.3f}, torch "
            f"{lat['torch_rtf']:.3f} " + full_size.load_text(lat))


def format_component(f: dict) -> str:
    return full_size.format_component(f, _stream_lines, _latency_line, "runtime vs torch, one call")


def _timing_cells(f: dict) -> str:
    lat = f.get("latency")
    if not lat:
        return f" {'-':>10} {'-':>8} {'-':>8}"
    return f" {lat['runtime_ms']:>10.1f} {lat['torch_ms']:>8.1f} {lat['runtime_over_torch']:>8.2f}"


def format_summary(results: list[dict]) -> str:
    return full_size.summary_table(results, f" {'runtime ms':>10} {'torch ms':>8} {'rt/torch':>8}", _timing_cells)


def _options(parser) -> None:
    parser.add_argument("--chunks", type=int, default=STREAM_CHUNKS,
                        help=f"chunks each encoder is streamed over against torch (default {STREAM_CHUNKS})")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads in each child, for torch and the portable runtime alike "
                             "(default 0: torch's default, one per core; on a shared machine 1 keeps the latency "
                             "figures from collapsing under another process's load)")


def main(argv=None) -> int:
    parser = full_size.argument_parser(__doc__, COMPONENTS, "timed runs per engine for an encoder's latency (median)",
                                       _options)
    args = full_size.parse_arguments(parser, argv, COMPONENTS, minimums={"chunks": 1, "threads": 0})
    if args.child:
        return full_size.child_main(args, lambda a: measure_component(a.child, a.precision, a.out, a.runs,
                                                                      run=not a.no_run, chunks=a.chunks,
                                                                      threads=a.threads))
    print(f"full-size Parakeet Realtime EOU 120M, {args.precision}, components {', '.join(args.components)}; "
          f"{full_size.available_mb() / 1024:.1f} GiB available, {os.cpu_count()} CPUs, torch threads "
          f"{args.threads or 'default'}, load average {os.getloadavg()[0]:.1f}", flush=True)

    def measure(component: str, out_dir: Path, work: Path) -> dict:
        return measure_in_child(component, args.precision, out_dir, args.runs, run=not args.no_run,
                                guard_mb=args.memory_guard_mb, log_dir=work, chunks=args.chunks, threads=args.threads)

    return full_size.measure_components(args.components, measure, out=args.out, json_path=args.json,
                                        precision=args.precision, prefix="parakeet-eou-full-size-",
                                        format_component=format_component, format_summary=format_summary)


if __name__ == "__main__":
    sys.exit(main())
