"""What Silero VAD's components are fed: the clip streamed call by call (64 samples of context + 512 new per
36 ms call; 8 chunks per 256 ms call), the initial LSTM state, and hypothesis strategies of generated audio and of
LSTM states the model really reaches."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from conversions.audio import audio_strategy

from .modules import CHUNK, CHUNKS_256MS, WINDOW, initial_state, reachable_state, windows


def _torch(module: nn.Module, *arrays: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(np.asarray(a, np.float32)) for a in arrays)).numpy()


def clip_windows(model, waveform):
    return [{"audio_input": w} for w in windows(waveform)]


def clip_magnitudes(model, waveform):
    return [{"magnitude": _torch(model.stft, w)} for w in windows(waveform)]


def clip_features(model, waveform):
    return [{"features": _torch(model.encoder, _torch(model.stft, w))} for w in windows(waveform)]


def clip_windows_256ms(model, waveform):
    return [{"audio_input": w} for w in windows(waveform, CHUNKS_256MS)]


def initial_feeds(model) -> dict[str, np.ndarray]:
    h, c = initial_state()
    return {"hidden_state": h, "cell_state": c}



def _state_strategy(model):
    """LSTM states the model can reach: those left by streaming 0 to 16 chunks of generated audio. (Independent
    uniform draws per unit reach gate regimes no input leads to, where fp16 weight rounding is amplified far
    beyond anything a stream shows.)"""
    from hypothesis import strategies as st

    return st.integers(0, 16).flatmap(lambda n: audio_strategy(n * CHUNK)).map(lambda a: reachable_state(model, a))


def random_windows(model):
    return audio_strategy(WINDOW).map(lambda a: {"audio_input": a})


def random_magnitudes(model):
    return audio_strategy(WINDOW).map(lambda a: {"magnitude": _torch(model.stft, a)})


def random_decoder_inputs(model):
    from hypothesis import strategies as st

    return st.builds(lambda a, s: {"features": _torch(model.encoder, _torch(model.stft, a)), **s},
                     audio_strategy(WINDOW), _state_strategy(model))


def random_unified(samples):
    def strategy(model):
        from hypothesis import strategies as st

        return st.builds(lambda a, s: {"audio_input": a, **s}, audio_strategy(samples), _state_strategy(model))

    return strategy


