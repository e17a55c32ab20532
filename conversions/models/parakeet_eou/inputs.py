"""What Parakeet EOU's components are fed: the clip (its mel cut into each variant's chunks, caches carried), the
decoder fed the fitted sentences token by token with state carried, the joint at streamed encoder frames, and
hypothesis strategies of audio, chunk contents with cache states the model reaches, and token histories."""

from __future__ import annotations

import hashlib

import numpy as np

from conversions.audio import AUDIO_KINDS, synthetic_audio
from conversions.models.parakeet_tdt.inputs import audio_call, initial_state, step_decoder, text_tokens, token_call

from .converters import JOINT_CHUNK
from .modules import chunk_variants, decoder_module, dims, per_model
from .streaming import chunk_calls, clip_mel, initial_caches, next_caches, torch_encoder

# A real sentence pair through the model's tokenizer, <EOU> after each (blank first, as during decoding).
DECODER_TEXT = ("the quick brown fox jumps over the lazy dog <EOU> voice activity detection finds the speech in a "
                "noisy recording <EOU> good morning everyone thank you for coming today")


def decoder_tokens(model, limit: int = 96) -> list[int]:
    return text_tokens(model, DECODER_TEXT, dims(model).blank_id, limit)


def initial_decoder_state(model) -> dict[str, np.ndarray]:
    return initial_state(dims(model))


def decoder_stream(model, tokens) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    return step_decoder(decoder_module(model), tokens, initial_decoder_state(model))


# ---- the clip ---------------------------------------------------------------------------------------------------
def clip_audio(model, waveform):
    """The clip zero-padded to the 15 s window with its true length, and its first 2 s padded the same way (the
    preprocessor takes any length; one shape lets the suite stack the calls)."""
    d = dims(model)
    return [audio_call(d, waveform, waveform.shape[-1]), audio_call(d, waveform, 2 * d.sample_rate)]


def clip_chunks(model, waveform, variant: str):
    """The clip's chunks for ``variant``; each carries the zero caches, which the stream replaces with the caches
    carried from the previous chunk (a benchmark of one call starts from them)."""
    v = chunk_variants(model)[variant]
    caches = initial_caches(model, v)
    return [{**call, **caches} for call in chunk_calls(model, v, clip_mel(model, waveform))]


def clip_chunk_feeds(variant: str):
    return lambda model, waveform: clip_chunks(model, waveform, variant)


def clip_tokens(model, waveform):
    state = initial_decoder_state(model)
    return [{**token_call(t), **state} for t in decoder_tokens(model)]


@per_model
def _clip_streams(model) -> dict:
    return {}


def _streamed_clip(model, waveform: np.ndarray, variant: str) -> list[np.ndarray]:
    """The torch encoder's valid output of each chunk of the clip (caches carried), computed once per model, clip
    and variant."""
    waveform = np.asarray(waveform, np.float32)
    key = (hashlib.sha256(waveform.tobytes()).hexdigest(), variant)
    store = _clip_streams(model)
    if key not in store:
        store[key] = streamed_chunks(model, variant, clip_mel(model, waveform))
    return store[key]


def streamed_chunks(model, variant: str, mel: np.ndarray) -> list[np.ndarray]:
    """The torch encoder's valid output of each chunk of ``mel`` (caches carried)."""
    v = chunk_variants(model)[variant]
    encode, carried, outputs = torch_encoder(model, variant), initial_caches(model, v), []
    for call in chunk_calls(model, v, mel):
        out = encode({**call, **carried})
        carried = next_caches(out, carried)
        outputs.append(out["encoded_output"][:, :, : int(out["encoded_length"][0])])
    return outputs


def clip_joint(model, waveform):
    """Each full chunk of the clip (320 ms variant) with the decoder output of a different step of the sentence."""
    frames = chunk_variants(model)[JOINT_CHUNK].valid_out_frames
    chunks = [c for c in _streamed_clip(model, waveform, JOINT_CHUNK)
              if c.shape[-1] == frames]
    g, _ = decoder_stream(model, decoder_tokens(model))
    return [{"encoder": np.ascontiguousarray(c), "decoder": g[(3 * k) % len(g)]} for k, c in enumerate(chunks)]


def clip_joint_step(model, waveform):
    """Every streamed frame of the clip, each with the decoder output of a different step of the sentence."""
    enc = np.concatenate(_streamed_clip(model, waveform, JOINT_CHUNK), axis=-1)
    g, _ = decoder_stream(model, decoder_tokens(model))
    return [{"encoder": np.ascontiguousarray(enc[:, :, t:t + 1]), "decoder": g[t % len(g)]} for t in
            range(enc.shape[-1])]


# ---- generated inputs (hypothesis) ---------------------------------------------------------------------------
def _audio(model, max_seconds: float):
    from hypothesis import strategies as st

    d = dims(model)
    longest = int(max_seconds * d.sample_rate)
    return st.builds(lambda kind, n, amplitude, seed: synthetic_audio(kind, n, amplitude, seed),
                     st.sampled_from(AUDIO_KINDS), st.one_of(st.integers(1, 4 * d.hop), st.integers(4 * d.hop, longest)),
                     st.floats(1e-3, 1.0).map(float), st.integers(0, 2 ** 32 - 1))


def random_preprocessor(model):
    return _audio(model, 15.0).map(lambda a: {"audio_signal": np.asarray(a, np.float32).reshape(1, -1),
                                              "audio_length": np.array([a.size], np.int32)})


def random_chunk(variant: str):
    """A chunk the stream reaches: generated audio (any kind and level), streamed through the torch encoder for
    0..7 chunks (its caches and pre-cache are what the model carries there), then the next chunk (a short last
    chunk included)."""

    def strategy(model):
        from hypothesis import strategies as st

        v = chunk_variants(model)[variant]
        encode = torch_encoder(model, variant)

        def build(audio, position):
            mel = clip_mel(model, audio)
            calls = chunk_calls(model, v, mel) or [{"audio_signal": np.zeros((1, mel.shape[1], v.mel_frames),
                                                                             np.float32),
                                                    "audio_length": np.array([v.mel_frames], np.int32)}]
            carried = initial_caches(model, v)
            for call in calls[: position % len(calls)]:
                carried = next_caches(encode({**call, **carried}), carried)
            return {**calls[position % len(calls)], **carried}

        seconds = min(8 * v.shift_samples / dims(model).sample_rate, 15.0)
        return st.builds(build, _audio(model, seconds), st.integers(0, 7))

    return strategy


def _random_history(model):
    from hypothesis import strategies as st

    d = dims(model)
    return st.lists(st.integers(0, d.blank_id - 1), max_size=16).map(lambda ids: [d.blank_id] + ids)


def random_decoder(model):
    from hypothesis import strategies as st

    d = dims(model)
    return st.builds(lambda history, token: {**token_call(token), **decoder_stream(model, history)[1]},
                     _random_history(model), st.integers(0, d.blank_id))


def random_joint(single_frame: bool):
    def strategy(model):
        from hypothesis import strategies as st

        frames = chunk_variants(model)[JOINT_CHUNK].valid_out_frames

        def build(audio, history, pick):
            chunks = streamed_chunks(model, JOINT_CHUNK, clip_mel(model, audio)) or [
                np.zeros((1, dims(model).d_model, frames), np.float32)]
            enc = np.concatenate(chunks, axis=-1)
            if single_frame:
                t = pick % enc.shape[-1]
                enc = enc[:, :, t:t + 1]
            else:
                start = (pick % max(1, enc.shape[-1] - frames + 1)) if enc.shape[-1] >= frames else 0
                enc = enc[:, :, start:start + frames]
                if enc.shape[-1] < frames:
                    enc = np.pad(enc, ((0, 0), (0, 0), (0, frames - enc.shape[-1])))
            return {"encoder": np.ascontiguousarray(enc, np.float32), "decoder": decoder_stream(model, history)[0][-1]}

        return st.builds(build, _audio(model, 3.0), _random_history(model), st.integers(0, 10 ** 6))

    return strategy
