"""Silero VAD v6 end to end: the clean module vs the upstream jit, and the clean module converted with
coremltools and streamed on the portable runtime, over a real speech/silence/noise clip.

Every stream carries the 64-sample context and the LSTM state from one call to the next (for the converted
models, the runtime's own outputs are fed back), so state errors accumulate as they would in an app.
Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import coremltools as ct

from conversions.runtime import load_model
from conversions.runtime.mil import compare_traces
from conversions.vad import silero

CLIP = Path(__file__).resolve().parents[1] / "data" / "speech_noise_16k.wav"
MIN_CHUNKS = 50


def convert_unified(model: torch.nn.Module, precision: str):
    """The unified 36 ms model as an ML Program (iOS17), traced on CPU, with the contract's I/O names."""
    example = (torch.zeros(1, silero.WINDOW), torch.zeros(1, silero.STATE), torch.zeros(1, silero.STATE))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval(), example)
        return ct.convert(
            traced,
            inputs=[ct.TensorType(name=n, shape=tuple(x.shape), dtype=np.float32)
                    for n, x in zip(silero.INPUT_NAMES, example)],
            outputs=[ct.TensorType(name=n) for n in silero.OUTPUT_NAMES],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS17,
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
            compute_units=ct.ComputeUnit.CPU_ONLY,
        )


def report(label: str, got: np.ndarray, expected: np.ndarray) -> float:
    diff = np.abs(got - expected)
    worst = int(diff.argmax())
    print(f"\n{label}: max |dp| = {diff.max():.3g} at chunk {worst} (p = {expected[worst]:.4f}), "
          f"mean {diff.mean():.3g}, over {len(diff)} chunks")
    return float(diff.max())


@pytest.fixture(scope="module")
def waveform() -> np.ndarray:
    return silero.read_wav(CLIP)


@pytest.fixture(scope="module")
def reference():
    return silero.load_reference()


@pytest.fixture(scope="module")
def jit_probabilities(reference, waveform) -> np.ndarray:
    probabilities = silero.stream_reference(reference, waveform)
    assert len(probabilities) >= MIN_CHUNKS
    return probabilities


@pytest.fixture(scope="module")
def clean_model(reference):
    return silero.build_clean_model(reference)


@pytest.fixture(scope="module")
def program_fp32(clean_model):
    return convert_unified(clean_model, "fp32")


@pytest.fixture(scope="module")
def program_fp16(clean_model):
    return convert_unified(clean_model, "fp16")


@pytest.fixture(scope="module")
def fp16_stream(program_fp16, waveform):
    """The fp16 program on the runtime (fp16 storage), streamed; also the inputs of every call."""
    model = load_model(program_fp16, backend="mil")
    step, calls = silero.model_step(model), []

    def recording_step(window, h, c):
        calls.append(dict(zip(silero.INPUT_NAMES, (window.copy(), np.array(h), np.array(c)))))
        return step(window, h, c)

    return silero.stream(recording_step, waveform), calls


def test_clip_holds_speech_and_non_speech(waveform, jit_probabilities):
    assert len(waveform) <= 15 * silero.SAMPLE_RATE
    # Otherwise the streams below would compare saturated outputs only.
    assert (jit_probabilities > 0.9).mean() > 0.3 and (jit_probabilities < 0.1).mean() > 0.2
    assert ((jit_probabilities > 0.1) & (jit_probabilities < 0.9)).sum() >= 10


def test_clean_module_matches_jit(clean_model, waveform, jit_probabilities):
    got = silero.stream(silero.torch_step(clean_model), waveform)
    # Same weights and ops; nn.LSTM and LSTMCell sum their gate products in a different order (measured 4.8e-7).
    assert report("clean torch module vs jit", got, jit_probabilities) <= 2e-6


def test_converted_program_runs_the_mil_lstm(program_fp16):
    ops = load_model(program_fp16, backend="mil").op_histogram()
    assert ops.get("lstm") == 1 and ops.get("conv") == 6, ops  # 1 STFT + 4 encoder + 1 head


def test_fp32_program_matches_jit(program_fp32, waveform, jit_probabilities):
    model = load_model(program_fp32, backend="mil", precision="fp32")
    got = silero.stream(silero.model_step(model), waveform)
    assert report("fp32 program (runtime fp32) vs jit", got, jit_probabilities) <= 1e-5


def test_fp16_program_error_budget(program_fp16, fp16_stream, jit_probabilities):
    """The fp16 program vs the jit, and where its error comes from.

    The issue asked for 1e-3. No fp16 program of this model reaches it, on any runtime: rounding the weights to
    fp16 alone costs 4.0e-3 in torch with fp32 activations (encoder convs 2.7e-3, STFT basis 7.3e-4, LSTM
    5.2e-4), and the same fp16 program run here with fp32 storage is 3.9e-3 off. So the bound on the max error
    is that weight-rounding floor plus margin (5e-3; measured 2.9e-3 at one chunk with p = 0.54), and the mean
    error shows the excursions are rare, confined to chunks in the sigmoid's steep middle (measured 9.6e-5).
    The runtime itself is checked by the fp32 program above (1e-5).
    """
    got, calls = fp16_stream
    worst_error = report("fp16 program (runtime fp16) vs jit", got, jit_probabilities)
    worst = int(np.abs(got - jit_probabilities).argmax())
    fp32_storage = load_model(program_fp16, backend="mil", precision="fp32").trace(calls[worst])
    comparison = compare_traces(fp32_storage, load_model(program_fp16, backend="mil").trace(calls[worst]))
    print(f"ops where fp16 storage error jumps at chunk {worst}:\n{comparison.summary()}")
    assert worst_error <= 5e-3
    assert np.abs(got - jit_probabilities).mean() <= 3e-4
    assert not comparison.first_nonfinite
    # The speech decision at the usual 0.5 threshold is what an app acts on: it must not flip.
    assert np.array_equal(got > 0.5, jit_probabilities > 0.5)
