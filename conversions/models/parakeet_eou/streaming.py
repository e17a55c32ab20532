"""Streaming Parakeet EOU as an app runs it, and as NeMo runs it.

- :func:`chunk_calls`: the clip's mel frames cut into chunks exactly as NeMo's
  ``CacheAwareStreamingAudioBuffer(pad_and_drop_preencoded=True)`` does (chunk = shift = the variant's mel frames;
  the first chunk's pre-encode cache is zeros; a short last chunk is zero-padded here to the fixed shape, its valid
  length given in ``audio_length``);
- :func:`stream_decode`: the host streaming RNN-T greedy decoder: for each chunk, the encoder (caches carried by
  the caller's ``encode``), then only the chunk's valid frames decoded, up to ``max_symbols`` per frame, the
  decoder state advancing only on non-blank; after a chunk that emitted ``<EOU>`` the decoder restarts (zero
  state, blank context) for the next utterance, as NeMo's voice-agent ASR service does (it resets on ``<EOU>``
  found in a chunk's text);
- :func:`nemo_stream`: NeMo's own streaming inference on the same chunks (``conformer_stream_step`` with its
  caches and ``previous_hypotheses``; the same reset: ``previous_hypotheses=None`` after an ``<EOU>`` chunk);
- :func:`nemo_offline`: NeMo's offline (full-utterance) greedy transcript, reported next to the streamed one as
  NeMo's cache-aware streaming example does (not gated: the offline pass neither resets nor sees chunk edges).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from conversions.models.parakeet_tdt.inputs import initial_state, run_module, token_call
from conversions.models.parakeet_tdt.pipeline import max_symbols_of, package_decoder_step

from .modules import (ENCODER_INPUTS, ENCODER_OUTPUTS, ENCODER_STATE, ChunkVariant, chunk_variants,
                      decision_with_margins_module, decoder_module, dims, encoder_module, preprocessor_module,
                      streaming_encoder)


# ---- inputs -------------------------------------------------------------------------------------------------
def clip_mel(model, clip: np.ndarray, preprocessor=None) -> np.ndarray:
    """The clip's mel frames [1, n_mels, F] through ``preprocessor`` (``.predict``-like callable or None: torch)."""
    audio = np.asarray(clip, np.float32).reshape(1, -1)
    call = {"audio_signal": audio, "audio_length": np.array([audio.shape[1]], np.int32)}
    if preprocessor is None:
        mel, _ = run_module(preprocessor_module(model), *call.values())
    else:
        mel = preprocessor.predict(call)["mel"]
    return np.asarray(mel, np.float32)


def initial_caches(model, variant: ChunkVariant) -> dict[str, np.ndarray]:
    """Zero caches in the contract's layout (NeMo's ``get_initial_cache_state``, layer axis first, as exported)."""
    d = dims(model)
    return {"pre_cache": np.zeros((1, d.n_mels, variant.pre_cache_frames), np.float32),
            "cache_last_channel": np.zeros((d.n_layers, 1, variant.last_channel_cache, d.d_model), np.float32),
            "cache_last_time": np.zeros((d.n_layers, 1, d.d_model, d.conv_cache), np.float32),
            "cache_last_channel_len": np.zeros((1,), np.int32)}


def chunk_calls(model, variant: ChunkVariant, mel: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The chunks of ``mel`` as encoder feeds (``audio_signal``, ``audio_length``), NeMo's buffer's cut."""
    calls, start = [], 0
    while start < mel.shape[-1]:
        chunk = mel[:, :, start:start + variant.mel_frames]
        if chunk.shape[-1] < variant.sampling_frames:  # NeMo's buffer stops: too short for one encoder frame
            break
        padded = np.zeros((1, mel.shape[1], variant.mel_frames), np.float32)
        padded[:, :, :chunk.shape[-1]] = chunk
        calls.append({"audio_signal": padded, "audio_length": np.array([chunk.shape[-1]], np.int32)})
        start += variant.shift_frames
    return calls


# ---- the host streaming greedy decoder -------------------------------------------------------------------------
@dataclass
class StreamResult:
    tokens: list[int] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)  # chunk index of each token
    margins: list[float] = field(default_factory=list)  # top-2 margin of every decision (when the joint gives it)
    token_margins: list[float] = field(default_factory=list)  # of each emitted token's decision
    chunk_count: int = 0  # chunks streamed

    def eou_chunks(self, eou_id: int | None) -> list[int]:
        return [c for t, c in zip(self.tokens, self.chunks) if t == eou_id]

    @property
    def min_margin(self) -> float:
        return float(min(self.margins)) if self.margins else float("inf")


@dataclass
class Decision:
    token: int
    margin: float | None = None


def stream_decode(calls, encode, decoder_step, joint_step, initial_state, *, blank_id: int, eou_id: int | None,
                  max_symbols: int) -> StreamResult:
    """Greedy RNN-T over a stream of encoder chunk calls.

    ``encode(call) -> outputs`` (``encoded_output`` [1, D, T], ``encoded_length``; the caller carries the caches),
    ``decoder_step(token, state) -> (g, state)``, ``joint_step(frame [1, D, 1], g) -> Decision``."""
    if max_symbols < 1:
        raise ValueError(f"max_symbols must be at least 1, got {max_symbols}")
    result = StreamResult()
    state = initial_state
    g, state = decoder_step(blank_id, state)  # blank as the start-of-sequence context (blank_as_pad)
    for index, call in enumerate(calls):
        out = encode(call)
        enc = np.asarray(out["encoded_output"], np.float32)
        valid = int(np.asarray(out["encoded_length"]).reshape(-1)[0])
        saw_eou = False
        for t in range(min(valid, enc.shape[-1])):
            frame = np.ascontiguousarray(enc[:, :, t:t + 1])
            for _ in range(max_symbols):
                decision = joint_step(frame, g)
                if decision.margin is not None:
                    result.margins.append(float(decision.margin))
                if decision.token == blank_id:
                    break
                result.tokens.append(decision.token)
                result.chunks.append(index)
                result.token_margins.append(float(decision.margin) if decision.margin is not None else np.inf)
                saw_eou |= decision.token == eou_id
                g, state = decoder_step(decision.token, state)
        result.chunk_count = index + 1
        if saw_eou:  # the utterance ended: the next chunk starts a new one from a fresh decoder
            g, state = decoder_step(blank_id, initial_state)
    return result


@dataclass
class Pipeline:
    """An app's calls per chunk: encode (caches carried inside), step the decoder, decide at one frame."""

    encode: object
    decoder_step: object
    joint_step: object
    initial_state: tuple
    preprocessor: object = None  # .predict-like, or None for torch


def next_caches(outputs: dict, previous: dict) -> dict[str, np.ndarray]:
    """The caches the next chunk is fed: each ``new_*`` output, in the dtype of the input it replaces."""
    return {inp: np.asarray(outputs[out], dtype=np.asarray(previous[inp]).dtype) for out, inp in ENCODER_STATE.items()}


def torch_encoder(model, variant: str):
    """The torch streaming encoder of ``variant`` as ``feeds -> outputs`` (by name), like a package's ``predict``."""
    module = encoder_module(model, variant)
    return lambda feeds: dict(zip(ENCODER_OUTPUTS, run_module(module, *(feeds[name] for name in ENCODER_INPUTS))))


def _carry(encode_raw, initial: dict):
    """``encode_raw(feeds) -> outputs`` wrapped so the caches of each call are the previous call's outputs."""
    carried = dict(initial)

    def encode(call):
        out = encode_raw({**call, **carried})
        carried.update(next_caches(out, carried))
        return out

    return encode


def _zero_state(model):
    state = initial_state(dims(model))
    return state["h_in"], state["c_in"]


def torch_pipeline(model, variant: str) -> Pipeline:
    decoder, joint = decoder_module(model), decision_with_margins_module(model)

    def decoder_step(token, state):
        g, h, c = run_module(decoder, *token_call(token).values(), *state)
        return g, (h, c)

    def joint_step(frame, g):
        token_id, _, _, _, margin = run_module(joint, frame, g)
        return Decision(int(token_id.reshape(-1)[0]), float(margin.reshape(-1)[0]))

    caches = initial_caches(model, chunk_variants(model)[variant])
    return Pipeline(_carry(torch_encoder(model, variant), caches), decoder_step, joint_step, _zero_state(model))


def package_pipeline(model, variant: str, preprocessor, encoder, decoder, joint_decision_step) -> Pipeline:
    """Converted packages (``.predict(feeds) -> dict``) behind the same calls."""
    def joint_step(frame, g):
        out = joint_decision_step.predict({"encoder": frame, "decoder": g})
        return Decision(int(np.asarray(out["token_id"]).reshape(-1)[0]))

    caches = initial_caches(model, chunk_variants(model)[variant])
    return Pipeline(_carry(encoder.predict, caches), package_decoder_step(decoder), joint_step, _zero_state(model),
                    preprocessor)


def run_pipeline(model, variant: str, pipeline: Pipeline, clip: np.ndarray) -> StreamResult:
    d = dims(model)
    mel = clip_mel(model, clip, pipeline.preprocessor)
    calls = chunk_calls(model, chunk_variants(model)[variant], mel)
    return stream_decode(calls, pipeline.encode, pipeline.decoder_step, pipeline.joint_step, pipeline.initial_state,
                         blank_id=d.blank_id, eou_id=d.eou_id, max_symbols=max_symbols_of(model))


# ---- NeMo's own streaming ----------------------------------------------------------------------------------
def _as_ints(x) -> list[int]:
    return [int(v) for v in (x.tolist() if hasattr(x, "tolist") else list(x))]


@contextlib.contextmanager
def _nemo_streaming(model, variant: str, clip: np.ndarray):
    """NeMo's streaming set-up for ``variant``: the model's encoder swapped for a copy with the variant's streaming
    parameters (restored on exit), and NeMo's buffer (``pad_and_drop_preencoded=True``) holding the clip's mel.
    Yields (encoder, buffer)."""
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    original = model.encoder
    model.encoder = streaming_encoder(original, chunk_variants(model)[variant].encoder_frames)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            buffer = CacheAwareStreamingAudioBuffer(model=model, pad_and_drop_preencoded=True)
        buffer.append_processed_signal(torch.from_numpy(clip_mel(model, clip)))
        yield model.encoder, buffer
    finally:
        model.encoder = original


def nemo_stream(model, variant: str, clip: np.ndarray) -> StreamResult:
    """NeMo's cache-aware streaming greedy decoding of the clip in ``variant``'s chunks: its buffer,
    ``conformer_stream_step`` with caches and partial hypotheses carried, and the app's reset after an ``<EOU>``
    chunk. Tokens, with the chunk each was emitted in."""
    d = dims(model)
    result = StreamResult()
    with _nemo_streaming(model, variant, clip) as (encoder, buffer):
        channel, time_, channel_len = encoder.get_initial_cache_state(batch_size=1)
        previous, seen = None, 0  # NeMo extends the partial hypothesis in place: count what was seen
        for index, (chunk, lengths) in enumerate(buffer):
            with torch.no_grad():
                out = model.conformer_stream_step(
                    processed_signal=chunk, processed_signal_length=lengths, cache_last_channel=channel,
                    cache_last_time=time_, cache_last_channel_len=channel_len,
                    keep_all_outputs=buffer.is_buffer_empty(), previous_hypotheses=previous,
                    drop_extra_pre_encoded=encoder.streaming_cfg.drop_extra_pre_encoded, return_transcription=True)
            _, hyps, channel, time_, channel_len = out[:5]
            sequence = _as_ints(hyps[0].y_sequence)
            new = sequence[seen:]
            result.tokens += new
            result.chunks += [index] * len(new)
            result.chunk_count = index + 1
            if d.eou_id is not None and d.eou_id in new:
                previous, seen = None, 0
            else:
                previous, seen = hyps, len(sequence)
    return result


def nemo_encoder_stream(model, variant: str, clip: np.ndarray) -> np.ndarray:
    """NeMo's own ``cache_aware_stream_step`` over the clip in ``variant``'s chunks (its buffer, its caches
    carried): the valid encoder frames of every chunk, [1, D, T]."""
    pieces = []
    with _nemo_streaming(model, variant, clip) as (encoder, buffer):
        channel, time_, channel_len = encoder.get_initial_cache_state(batch_size=1)
        for chunk, lengths in buffer:
            with torch.no_grad():
                encoded, length, channel, time_, channel_len = encoder.cache_aware_stream_step(
                    processed_signal=chunk, processed_signal_length=lengths, cache_last_channel=channel,
                    cache_last_time=time_, cache_last_channel_len=channel_len,
                    keep_all_outputs=buffer.is_buffer_empty(),
                    drop_extra_pre_encoded=encoder.streaming_cfg.drop_extra_pre_encoded)
            pieces.append(encoded[:, :, :int(length[0])].numpy())
    return np.concatenate(pieces, axis=-1)


def nemo_offline(model, clip: np.ndarray) -> list[int]:
    """NeMo's offline greedy transcript of the whole clip (its forward and configured decoding; no reset)."""
    audio = torch.from_numpy(np.asarray(clip, np.float32).reshape(1, -1))
    with torch.no_grad():
        enc, length = model.forward(input_signal=audio, input_signal_length=torch.tensor([audio.shape[1]]))
        (hyp,) = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=length,
                                                                return_hypotheses=True)
    return _as_ints(hyp.y_sequence)
