"""What Parakeet TDT's components are fed: the clip padded to the 15 s window, the decoder fed a real sentence
through the model's tokenizer with its state carried, the joint at several decoder states, and hypothesis
strategies of generated audio, lengths and token histories."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from conversions.audio import AUDIO_KINDS, synthetic_audio

from .modules import Dims, decoder_module, dims, mel_encoder_module, preprocessor_module

def run_module(module: nn.Module, *arrays) -> tuple[np.ndarray, ...]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(np.asarray(a)) for a in arrays))
    return tuple(o.numpy() for o in (out if isinstance(out, tuple) else (out,)))


def audio_call(d: Dims, waveform: np.ndarray, samples: int) -> dict[str, np.ndarray]:
    """The first ``samples`` samples of ``waveform`` zero-padded to the window, with their length: what an app
    feeds the fixed-window components."""
    samples = min(samples, d.window_samples, waveform.shape[-1])
    padded = np.zeros((1, d.window_samples), np.float32)
    padded[0, :samples] = np.asarray(waveform, np.float32).reshape(-1)[:samples]
    return {"audio_signal": padded, "audio_length": np.array([samples], np.int32)}


def initial_state(d: Dims) -> dict[str, np.ndarray]:
    zeros = np.zeros((d.pred_layers, 1, d.pred_hidden), np.float32)
    return {"h_in": zeros, "c_in": zeros.copy()}


def token_call(token: int) -> dict[str, np.ndarray]:
    return {"targets": np.array([[token]], np.int32), "target_length": np.array([1], np.int32)}


def step_decoder(module: nn.Module, tokens, state: dict[str, np.ndarray]) -> tuple[list[np.ndarray], dict]:
    """A decoder-step module's output ``[1, H, 1]`` after each token of ``tokens`` (``state`` carried), and the state
    after the last one. Shared by the Parakeet families."""
    outputs = []
    for token in tokens:
        g, h, c = run_module(module, *token_call(token).values(), state["h_in"], state["c_in"])
        state = {"h_in": h, "c_in": c}
        outputs.append(g)
    return outputs, state


def decoder_stream(model, tokens) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The torch decoder's output ``[1, H, 1]`` after each token of ``tokens`` (state carried from zero), and the
    state after the last one."""
    return step_decoder(decoder_module(model), tokens, initial_state(dims(model)))


# Text the decoder is fed token by token (a real sentence through the model's own tokenizer, as during decoding:
# blank first, then each emitted token). Any tokenizer handles it, the tiny one or the real 8192-piece one.
DECODER_TEXT = ("good morning everyone thank you for coming today we will talk about speech on devices "
                "the encoder turns mel frames into features and the decoder predicts the next token")


def text_tokens(model, text: str, blank_id: int, limit: int = 96) -> list[int]:
    """Blank, then ``text`` through the model's tokenizer (at most ``limit`` ids in all); every id must be a token
    of the joint (below ``blank_id``). Shared by the Parakeet families."""
    ids = [int(i) for i in model.tokenizer.text_to_ids(text)][: limit - 1]
    if not ids or max(ids) >= blank_id:
        raise ValueError(f"the tokenizer gave ids {ids[:8]}... outside the joint's {blank_id} tokens")
    return [blank_id] + ids


def decoder_tokens(model, limit: int = 96) -> list[int]:
    return text_tokens(model, DECODER_TEXT, dims(model).blank_id, limit)


# Decoder states at which the joint is evaluated over every encoder frame: the start (after blank), early, and
# deep into the sentence.
JOINT_DECODER_STEPS = (0, 1, 2, 5, 10, 20, 40, 80)


def clip_audio(model, waveform):
    """The clip padded to the window (its true length given), and its first 5 s padded the same way."""
    d = dims(model)
    return [audio_call(d, waveform, waveform.shape[-1]), audio_call(d, waveform, 5 * d.sample_rate)]


def clip_mels(model, waveform):
    pre = preprocessor_module(model)
    return [dict(zip(("mel", "mel_length"), run_module(pre, *call.values()))) for call in clip_audio(model, waveform)]


def clip_tokens(model, waveform):
    """Blank, then the tokens of :data:`DECODER_TEXT`. Every call carries the initial (zero) state, which the
    stream replaces with the state carried from the previous call (a benchmark of one call starts from it)."""
    state = initial_state(dims(model))
    return [{**token_call(t), **state} for t in decoder_tokens(model)]


def clip_encoder_output(model, waveform) -> tuple[np.ndarray, int]:
    """The torch encoder output of the whole clip (padded to the window) and its valid frame count."""
    enc, length = run_module(mel_encoder_module(model), *clip_audio(model, waveform)[0].values())
    return enc, int(length[0])


def clip_joint(model, waveform):
    enc, _ = clip_encoder_output(model, waveform)
    g, _ = decoder_stream(model, decoder_tokens(model))
    return [{"encoder": enc, "decoder": g[k]} for k in JOINT_DECODER_STEPS if k < len(g)]


def clip_joint_step(model, waveform):
    """Every valid encoder frame of the clip, each with the decoder output of a different step of the sentence."""
    enc, length = clip_encoder_output(model, waveform)
    g, _ = decoder_stream(model, decoder_tokens(model))
    return [{"encoder": np.ascontiguousarray(enc[:, :, t:t + 1]), "decoder": g[t % len(g)]} for t in range(length)]


# ---- generated inputs (hypothesis) ---------------------------------------------------------------------------
def _lengths(d: Dims):
    from hypothesis import strategies as st

    # very short inputs (a few frames, down to one sample) and anything up to the whole window
    return st.one_of(st.integers(1, 4 * d.hop), st.integers(4 * d.hop, d.window_samples))


def _audio(d: Dims):
    from hypothesis import strategies as st

    return st.builds(lambda kind, n, amplitude, seed: (synthetic_audio(kind, n, amplitude, seed), n),
                     st.sampled_from(AUDIO_KINDS), _lengths(d), st.floats(1e-3, 1.0).map(float),
                     st.integers(0, 2 ** 32 - 1))


def random_preprocessor(model):
    d = dims(model)
    return _audio(d).map(lambda a: {"audio_signal": a[0], "audio_length": np.array([a[1]], np.int32)})


def random_window_audio(model):
    d = dims(model)
    return _audio(d).map(lambda a: audio_call(d, a[0], a[1]))


def random_mel(model):
    pre = preprocessor_module(model)
    return random_window_audio(model).map(lambda call: dict(zip(("mel", "mel_length"), run_module(pre, *call.values()))))


def _random_token_history(d: Dims):
    from hypothesis import strategies as st

    return st.lists(st.integers(0, d.vocab_size - 1), max_size=16).map(lambda ids: [d.blank_id] + ids)


def random_decoder(model):
    """Any token (blank included) from a state the decoder reaches: after a random history of 0-16 tokens."""
    from hypothesis import strategies as st

    d = dims(model)
    return st.builds(lambda history, token: {**token_call(token), **decoder_stream(model, history)[1]},
                     _random_token_history(d), st.integers(0, d.blank_id))


def random_joint_inputs(model, single_frame: bool):
    from hypothesis import strategies as st

    d = dims(model)
    mel_encoder = mel_encoder_module(model)

    def build(call, history, frame):
        enc, length = run_module(mel_encoder, *call.values())
        g = decoder_stream(model, history)[0][-1]
        if single_frame:
            t = frame % max(int(length[0]), 1)
            enc = np.ascontiguousarray(enc[:, :, t:t + 1])
        return {"encoder": enc, "decoder": g}

    return st.builds(build, random_window_audio(model), _random_token_history(d), st.integers(0, 10 ** 6))
