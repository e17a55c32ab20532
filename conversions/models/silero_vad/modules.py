"""Silero VAD v6, 16 kHz path — the torch modules: a clean ``nn.Module`` rebuilt from the upstream jit's weights.

The reference is the TorchScript model shipped in the ``silero-vad`` package (:func:`load_reference`); its
``state_dict()`` holds the weights (the package's safetensors file holds different ones, see upstream issue
#768). The jit cannot be converted as is (scripted control flow, ``LSTMCell``, internal state), so
:func:`build_clean_model` rebuilds the same computation from plain layers:

    audio [1, 576] (64 samples of context + 512 new)
      -> right-only reflect pad of 64 -> STFT as a fixed-basis conv1d (258 filters, kernel 256, stride 128)
      -> magnitude sqrt(re^2 + im^2) [1, 129, 4]
      -> 4 x (conv1d k=3 pad=1, ReLU), strides 1, 2, 2, 1, channels 129 -> 128 -> 64 -> 64 -> 128   [1, 128, 1]
      -> LSTM 128 (the jit's LSTMCell tensors in an ``nn.LSTM``, which converts) with h, c carried between calls
      -> ReLU -> conv1d(128, 1, 1) -> sigmoid                                                       [1, 1, 1]

Streaming: each call sees the previous call's last 64 samples followed by 512 new ones, and the LSTM state of
the previous call (:func:`stream`). One 512-sample chunk is 32 ms of audio; with its context, 36 ms.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from conversions.audio import SAMPLE_RATE

CHUNK = 512  # new samples per call
CONTEXT = 64  # samples of the previous chunk prepended to each call
WINDOW = CONTEXT + CHUNK  # 576 samples seen per call
STATE = 128  # LSTM hidden and cell size
N_FFT = 256  # STFT filter length (the conv kernel)
HOP = 128  # STFT hop (the conv stride)
N_BINS = N_FFT // 2 + 1  # 129 frequency bins; the basis holds 129 real then 129 imaginary filters
REFLECT_PAD = 64  # right-only reflect padding before the STFT
CHUNKS_256MS = 8  # chunks per call of the unified 256 ms model
WINDOW_256MS = CONTEXT + CHUNKS_256MS * CHUNK  # 4160 samples

ENCODER_CHANNELS = (N_BINS, 128, 64, 64, 128)
ENCODER_STRIDES = (1, 2, 2, 1)

# The unified 36 ms model's I/O names (the Core ML contract in use).
INPUT_NAMES = ("audio_input", "hidden_state", "cell_state")
OUTPUT_NAMES = ("probability", "new_hidden_state", "new_cell_state")
STATE_FEEDBACK = {"new_hidden_state": "hidden_state", "new_cell_state": "cell_state"}

State = tuple[np.ndarray, np.ndarray]
StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


# ---- the modules ------------------------------------------------------------------------------------------
class SileroSTFT(nn.Module):
    """Magnitude spectrogram: audio ``[B, samples]`` -> ``[B, 129, frames]`` (``[1, 576]`` -> ``[1, 129, 4]``)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("basis", torch.zeros(2 * N_BINS, 1, N_FFT))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = F.pad(audio.unsqueeze(1), (0, REFLECT_PAD), mode="reflect")
        spectrum = F.conv1d(x, self.basis, stride=HOP)
        real, imag = spectrum[:, :N_BINS], spectrum[:, N_BINS:]
        return torch.sqrt(real.pow(2) + imag.pow(2))  # no epsilon: the jit has none


class SileroEncoder(nn.Module):
    """Four conv1d + ReLU blocks: ``[B, 129, T]`` -> ``[B, 128, T']`` (``T = 4`` gives ``T' = 1``)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Conv1d(c_in, c_out, kernel_size=3, stride=stride, padding=1)
            for c_in, c_out, stride in zip(ENCODER_CHANNELS[:-1], ENCODER_CHANNELS[1:], ENCODER_STRIDES)
        )

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        x = spectrum
        for conv in self.blocks:
            x = torch.relu(conv(x))
        return x


class SileroDecoder(nn.Module):
    """LSTM over the encoder frames, then ReLU -> conv1d(128, 1, 1) -> sigmoid.

    ``features [B, 128, T']``, ``hidden``/``cell`` ``[B, 128]`` -> per-frame probabilities ``[B, 1, T']`` and
    the new ``hidden``, ``cell``. With ``T' = 1`` (one 576-sample window) this is the jit's ``LSTMCell`` step.
    """

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(STATE, STATE)
        self.head = nn.Conv1d(STATE, 1, kernel_size=1)

    def forward(self, features: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor):
        sequence = features.permute(2, 0, 1)  # [T', B, 128], time first
        out, (h, c) = self.lstm(sequence, (hidden.unsqueeze(0), cell.unsqueeze(0)))
        probability = torch.sigmoid(self.head(torch.relu(out.permute(1, 2, 0))))
        return probability, h.squeeze(0), c.squeeze(0)


class SileroVAD(nn.Module):
    """The unified 36 ms model: ``audio_input [1, 576]``, ``hidden_state``, ``cell_state [1, 128]`` ->
    ``probability [1, 1, 1]``, new hidden and cell state."""

    def __init__(self):
        super().__init__()
        self.stft = SileroSTFT()
        self.encoder = SileroEncoder()
        self.decoder = SileroDecoder()

    def forward(self, audio_input: torch.Tensor, hidden_state: torch.Tensor, cell_state: torch.Tensor):
        return self.decoder(self.encoder(self.stft(audio_input)), hidden_state, cell_state)


class SileroVAD256(nn.Module):
    """The unified 256 ms model: ``audio_input [1, 4160]`` (64 samples of context + 8 chunks of 512),
    ``hidden_state``, ``cell_state [1, 128]`` -> ``probability [1, 1, 1]``, the state after the 8th chunk.

    The 8 windows of 576 samples (each chunk with the 64 samples before it) go through the STFT and encoder as
    one batch, and the LSTM runs over them as a sequence of 8 steps: the same computation as 8 calls of
    :class:`SileroVAD` with the state threaded. The chunk probabilities are combined by noisy-OR,
    ``1 - prod(1 - p_i)``: the probability that at least one chunk holds speech.
    """

    def __init__(self, vad: SileroVAD):
        super().__init__()
        self.vad = vad

    def forward(self, audio_input: torch.Tensor, hidden_state: torch.Tensor, cell_state: torch.Tensor):
        windows = torch.cat([audio_input[:, i * CHUNK:i * CHUNK + WINDOW] for i in range(CHUNKS_256MS)])  # [8, 576]
        features = self.vad.encoder(self.vad.stft(windows))  # [8, 128, 1]: one frame per window
        chunk_probabilities, h, c = self.vad.decoder(features.permute(2, 1, 0), hidden_state, cell_state)  # [1, 1, 8]
        # The product is unrolled: coremltools has no conversion for torch.prod.
        not_speech = 1 - chunk_probabilities[..., :1]
        for i in range(1, CHUNKS_256MS):
            not_speech = not_speech * (1 - chunk_probabilities[..., i:i + 1])
        return 1 - not_speech, h, c


# ---- weights ----------------------------------------------------------------------------------------------
def load_reference() -> torch.jit.ScriptModule:
    """The upstream TorchScript model (``silero_vad.jit`` from the ``silero-vad`` package; offline)."""
    from silero_vad import load_silero_vad

    return load_silero_vad()


def clean_state_dict(reference: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """The jit's 16 kHz weights under :class:`SileroVAD`'s names."""
    src = {k.removeprefix("_model."): v for k, v in reference.state_dict().items() if k.startswith("_model.")}
    dst = {"stft.basis": src["stft.forward_basis_buffer"]}
    for i in range(len(ENCODER_STRIDES)):
        for kind in ("weight", "bias"):
            dst[f"encoder.blocks.{i}.{kind}"] = src[f"encoder.{i}.reparam_conv.{kind}"]
    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        dst[f"decoder.lstm.{kind}_l0"] = src[f"decoder.rnn.{kind}"]  # same gate order (i, f, g, o) as LSTMCell
    dst["decoder.head.weight"] = src["decoder.decoder.2.weight"]
    dst["decoder.head.bias"] = src["decoder.decoder.2.bias"]
    return {k: v.detach().clone() for k, v in dst.items()}


def build_clean_model(reference: torch.jit.ScriptModule | None = None) -> SileroVAD:
    """:class:`SileroVAD` in eval mode with the jit's weights (loads the jit unless one is given)."""
    model = SileroVAD()
    model.load_state_dict(clean_state_dict(reference if reference is not None else load_reference()), strict=True)
    return model.eval()


# ---- streaming --------------------------------------------------------------------------------------------
def initial_state() -> State:
    """Zero LSTM state ``(h, c)``, each ``[1, 128]`` float32."""
    return np.zeros((1, STATE), np.float32), np.zeros((1, STATE), np.float32)


def num_chunks(waveform: np.ndarray) -> int:
    """Chunks in a waveform; a partial last chunk counts (it is zero-padded, as upstream does)."""
    return -(-len(waveform) // CHUNK)


def chunk_at(waveform: np.ndarray, index: int) -> np.ndarray:
    """The ``index``-th 512-sample chunk of a mono float waveform, zero-padded at the end."""
    chunk = np.asarray(waveform[index * CHUNK:(index + 1) * CHUNK], dtype=np.float32)
    return np.pad(chunk, (0, CHUNK - len(chunk)))


def stream(step: StepFn, waveform: np.ndarray, chunks: int | None = None) -> np.ndarray:
    """Run a VAD step over ``waveform`` chunk by chunk and return one speech probability per chunk.

    ``step(audio_input [1, 576], h [1, 128], c [1, 128]) -> (probability, h, c)`` is one call of the unified
    model (e.g. :func:`torch_step`). The first call's context is 64 zeros; each later call's is
    the last 64 samples of the previous window. The state returned by one call is fed to the next one as is.
    """
    total = num_chunks(waveform) if chunks is None else chunks
    context = np.zeros(CONTEXT, np.float32)
    h, c = initial_state()
    probabilities = np.empty(total, np.float64)
    for i in range(total):
        window = np.concatenate([context, chunk_at(waveform, i)])[None]
        probability, h, c = step(window, h, c)
        probabilities[i] = float(np.asarray(probability).reshape(-1)[0])
        context = window[0, -CONTEXT:]
    return probabilities


def torch_step(model: nn.Module) -> StepFn:
    """A :func:`stream` step running a torch module with the unified signature."""

    def step(window, h, c):
        with torch.no_grad():
            p, h, c = model(torch.from_numpy(window), torch.from_numpy(h), torch.from_numpy(c))
        return p.numpy(), h.numpy(), c.numpy()

    return step



def stream_reference(reference: torch.jit.ScriptModule, waveform: np.ndarray, chunks: int | None = None) -> np.ndarray:
    """The upstream jit streamed over ``waveform``: states reset, then one 512-sample chunk per call (the jit
    keeps its own context and LSTM state)."""
    total = num_chunks(waveform) if chunks is None else chunks
    reference.reset_states()
    probabilities = np.empty(total, np.float64)
    with torch.no_grad():
        for i in range(total):
            probabilities[i] = reference(torch.from_numpy(chunk_at(waveform, i))[None], SAMPLE_RATE).item()
    reference.reset_states()
    return probabilities


def windows(waveform: np.ndarray, chunks_per_call: int = 1) -> list[np.ndarray]:
    """The ``[1, 64 + n * 512]`` inputs of streaming ``waveform`` through a model that takes ``n`` chunks per
    call: 64 zeros of context first, then each window's context is the previous window's last 64 samples. The
    last partial call is zero-padded."""
    total = -(-num_chunks(waveform) // chunks_per_call)
    context = np.zeros(CONTEXT, np.float32)
    out = []
    for call in range(total):
        new = [chunk_at(waveform, call * chunks_per_call + i) for i in range(chunks_per_call)]
        window = np.concatenate([context, *new])[None]
        out.append(window)
        context = window[0, -CONTEXT:]
    return out


def reachable_state(model: SileroVAD, audio: np.ndarray) -> dict[str, np.ndarray]:
    """The LSTM state after streaming ``audio [1, n * 512]`` through ``model`` from the zero state (in torch)."""
    h, c = (torch.from_numpy(a) for a in initial_state())
    with torch.no_grad():
        for window in windows(audio[0]):
            _, h, c = model(torch.from_numpy(window), h, c)
    return {"hidden_state": h.numpy(), "cell_state": c.numpy()}




# ---- the torch reference vs upstream (the jit) ---------------------------------------------------------------
def upstream_36ms(model, waveform):
    """Our 36 ms model streamed over the clip vs the upstream jit's own stream."""
    return stream(torch_step(model), waveform), stream_reference(load_reference(), waveform)


def upstream_256ms(model, waveform):
    """Our 256 ms model streamed over the clip vs the noisy-OR of the jit's per-chunk stream, on the calls made
    of whole chunks of the clip (the last call's zero padding differs from the jit's own)."""
    module, calls = SileroVAD256(model).eval(), len(waveform) // (CHUNK * CHUNKS_256MS)
    h, c = (torch.from_numpy(a) for a in initial_state())
    ours = np.empty(calls)
    with torch.no_grad():
        for i, window in enumerate(windows(waveform, CHUNKS_256MS)[:calls]):
            p, h, c = module(torch.from_numpy(window), h, c)
            ours[i] = p.item()
    per_chunk = stream_reference(load_reference(), waveform)[:calls * CHUNKS_256MS]
    return ours, 1 - np.prod(1 - per_chunk.reshape(calls, CHUNKS_256MS), axis=1)
