"""Parakeet Realtime EOU (NeMo ``EncDecRNNTBPEModel`` with a cache-aware streaming FastConformer): the torch
components apps ship, wrapping NeMo's own submodules, and the chunk variants derived from NeMo's
``setup_streaming_params``.

Components and their Core ML contract (``../shared/MODELS.md``; sizes of the real 120M model shown, every size is
read from the loaded model, so the tiny offline model goes through the same code):

============================  ===============================================================  ===========================
component                     inputs                                                           outputs
============================  ===============================================================  ===========================
``preprocessor``              ``audio_signal`` [1, 1..window], ``audio_length`` [1] int32       ``mel`` [1,128,F],
                                                                                               ``mel_length``
``encoder-<chunk>``           ``audio_signal`` [1,128,chunk mel frames], ``audio_length`` [1],  ``encoded_output``
(160ms, 320ms, 1280ms)        ``pre_cache`` [1,128,9], ``cache_last_channel`` [17,1,70,512],    [1,512,valid frames],
                              ``cache_last_time`` [17,1,512,8], ``cache_last_channel_len`` [1]  ``encoded_length``,
                                                                                               ``new_pre_cache``,
                                                                                               ``new_cache_last_*``
``decoder``                   ``targets`` [1,1] int32, ``target_length`` [1], ``h_in``/``c_in``  ``decoder`` [1,640,1],
                              [1,1,640]                                                        ``h_out``, ``c_out``
``joint``                     ``encoder`` [1,512,valid frames of 320 ms], ``decoder`` [1,640,1]  ``logits`` [1,T,1,1027]
``joint-decision``            ``encoder`` [1,512,valid frames of 320 ms], ``decoder``            the four below, [1,T,1,..]
``joint-decision-step``       ``encoder`` [1,512,1], ``decoder`` [1,640,1]                      ``token_id``, ``token_prob``,
                                                                                               ``top_k_ids``,
                                                                                               ``top_k_logits``
============================  ===============================================================  ===========================

The streaming encoder is NeMo's ``ConformerEncoder.forward_for_export`` (``cache_aware_stream_step`` without the
Python-side bookkeeping) on ``pre_cache ++ chunk``, with ``drop_extra_pre_encoded`` applied on every chunk, the first
included: NeMo's ``CacheAwareStreamingAudioBuffer(pad_and_drop_preencoded=True)``, the mode that gives every chunk
the same shape (the first chunk's pre-encode cache is zeros). ``encoded_length`` is one more output than the
shipped contract: the last chunk of a stream is shorter, and only its valid frames may be decoded.
"""

from __future__ import annotations

import copy
import functools
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from conversions.models.parakeet_tdt.modules import ParakeetDecoder, ParakeetPreprocessor, joint_logits, top2_margin

# The chunk variants apps ship: name -> encoder frames per chunk (one encoder frame = 8 mel frames = 80 ms).
CHUNK_FRAMES = {"160ms": 2, "320ms": 4, "1280ms": 16}
WINDOW_SECONDS = 15  # the preprocessor's largest input (it takes any length up to it)
TOP_K = 5  # the single-step joint+decision's top-k ids and logits (for debouncing / n-best in apps)


@dataclass(frozen=True)
class ChunkVariant:
    """One streaming chunk size, every figure read from NeMo's ``streaming_cfg`` after
    ``setup_streaming_params(chunk_size=frames, shift_size=frames)``."""

    name: str
    encoder_frames: int  # requested chunk (encoder frames)
    mel_frames: int  # mel frames per chunk (streaming_cfg.chunk_size[1])
    shift_frames: int  # mel frames the stream advances per chunk (streaming_cfg.shift_size[1])
    pre_cache_frames: int  # streaming_cfg.pre_encode_cache_size[1]
    valid_out_frames: int  # streaming_cfg.valid_out_len
    drop_extra_pre_encoded: int
    last_channel_cache: int  # streaming_cfg.last_channel_cache_size
    sampling_frames: int  # mel frames one encoder frame needs (NeMo's buffer stops at a shorter last chunk)
    hop: int  # samples per mel frame
    sample_rate: int

    @property
    def samples(self) -> int:
        """Audio samples a chunk covers (its mel frames' hop)."""
        return self.mel_frames * self.hop

    @property
    def shift_samples(self) -> int:
        return self.shift_frames * self.hop

    @property
    def audio_ms(self) -> float:
        return 1000.0 * self.shift_samples / self.sample_rate


def per_model(fn):
    """Cache ``fn(model)`` for as long as the model lives (a weak reference: an lru_cache would keep a dropped
    full-size model resident). ``.cache_clear()`` empties it."""
    cache = weakref.WeakKeyDictionary()

    @functools.wraps(fn)
    def cached(model):
        try:
            return cache[model]
        except KeyError:
            value = cache[model] = fn(model)
            return value

    cached.cache_clear = cache.clear
    return cached


def _steady(value) -> int:
    """NeMo's streaming sizes are [first chunk, every later chunk] pairs (or one number): the later chunks' one."""
    return int(value[1] if isinstance(value, (list, tuple)) else value)


def _setup_streaming(encoder, frames: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder.setup_streaming_params(chunk_size=frames, shift_size=frames)


def streaming_encoder(encoder, frames: int):
    """A copy of ``encoder`` set up for chunks of ``frames`` encoder frames (NeMo's ``setup_streaming_params``
    mutates the encoder, so each variant gets its own copy; the model's encoder is left alone)."""
    copied = copy.deepcopy(encoder).eval()
    _setup_streaming(copied, frames)
    return copied


@per_model
def chunk_variants(model) -> dict[str, ChunkVariant]:
    """The three chunk variants of ``model``, derived from NeMo's own streaming parameters (set up in turn on one
    copy of the encoder: only its streaming configuration is read)."""
    hop = int(model.preprocessor.featurizer.hop_length)
    sample_rate = int(model.cfg.preprocessor.sample_rate)
    encoder = copy.deepcopy(model.encoder)
    sampling = encoder.pre_encode.get_sampling_frames() if hasattr(encoder.pre_encode, "get_sampling_frames") else \
        encoder.subsampling_factor
    variants = {}
    for name, frames in CHUNK_FRAMES.items():
        _setup_streaming(encoder, frames)
        cfg = encoder.streaming_cfg
        variants[name] = ChunkVariant(
            name=name, encoder_frames=frames, mel_frames=_steady(cfg.chunk_size), shift_frames=_steady(cfg.shift_size),
            pre_cache_frames=_steady(cfg.pre_encode_cache_size), valid_out_frames=int(cfg.valid_out_len),
            drop_extra_pre_encoded=int(cfg.drop_extra_pre_encoded), last_channel_cache=int(cfg.last_channel_cache_size),
            sampling_frames=_steady(sampling), hop=hop, sample_rate=sample_rate)
    return variants


@dataclass(frozen=True)
class Dims:
    sample_rate: int
    hop: int
    n_mels: int
    d_model: int
    n_layers: int
    conv_cache: int  # cache_last_time's last axis (the causal conv's left context)
    pred_hidden: int
    pred_layers: int
    num_logits: int  # tokens + blank
    blank_id: int
    eou_id: int | None
    eob_id: int | None
    window_samples: int


@per_model
def dims(model) -> Dims:
    from .nemo_models import EOB, EOU

    enc = model.encoder
    sample_rate = int(model.cfg.preprocessor.sample_rate)

    def token(piece):
        try:
            found = model.tokenizer.token_to_id(piece)
        except Exception:  # noqa: BLE001 - tokenizers without the piece raise or return unk
            return None
        return None if found is None or model.tokenizer.ids_to_tokens([found]) != [piece] else int(found)

    return Dims(sample_rate=sample_rate, hop=int(model.preprocessor.featurizer.hop_length),
                n_mels=int(model.preprocessor.featurizer.nfilt), d_model=int(enc.d_model),
                n_layers=len(enc.layers), conv_cache=int(enc.conv_context_size[0]),
                pred_hidden=int(model.decoder.pred_hidden), pred_layers=int(model.decoder.pred_rnn_layers),
                num_logits=int(model.joint.num_classes_with_blank), blank_id=int(model.decoder.blank_idx),
                eou_id=token(EOU), eob_id=token(EOB), window_samples=WINDOW_SECONDS * sample_rate)


# ---- the torch components ----------------------------------------------------------------------------------
class StreamingEncoder(nn.Module):
    """One chunk through the cache-aware encoder: ``forward_for_export`` on ``pre_cache ++ audio_signal`` with the
    caches in the contract's layer-first layout; ``audio_length`` counts the chunk's valid mel frames (the last
    chunk of a stream is zero-padded to the chunk size)."""

    def __init__(self, encoder, variant: ChunkVariant):
        super().__init__()
        self.encoder = streaming_encoder(encoder, variant.encoder_frames)
        self.pre_cache_frames = variant.pre_cache_frames

    def forward(self, audio_signal, audio_length, pre_cache, cache_last_channel, cache_last_time,
                cache_last_channel_len):
        x = torch.cat([pre_cache, audio_signal], dim=-1)
        length = audio_length.to(torch.int64) + self.pre_cache_frames
        encoded, encoded_len, channel, time_, channel_len = self.encoder.forward_for_export(
            x, length, cache_last_channel.transpose(0, 1), cache_last_time.transpose(0, 1),
            cache_last_channel_len.to(torch.int64))
        return (encoded, encoded_len.to(torch.int32), x[:, :, x.shape[-1] - self.pre_cache_frames:],
                channel.transpose(0, 1), time_.transpose(0, 1), channel_len.to(torch.int32))


ENCODER_INPUTS = ("audio_signal", "audio_length", "pre_cache", "cache_last_channel", "cache_last_time",
                  "cache_last_channel_len")
ENCODER_OUTPUTS = ("encoded_output", "encoded_length", "new_pre_cache", "new_cache_last_channel",
                   "new_cache_last_time", "new_cache_last_channel_len")
ENCODER_STATE = {"new_pre_cache": "pre_cache", "new_cache_last_channel": "cache_last_channel",
                 "new_cache_last_time": "cache_last_time", "new_cache_last_channel_len": "cache_last_channel_len"}


class JointDecisionStep(nn.Module):
    """Joint + greedy RNN-T decision at one frame: argmax token (blank included), its softmax probability, and
    the top-k ids and raw logits. ``with_margins`` adds the top-1 minus top-2 logit (for the task metric)."""

    def __init__(self, joint, top_k: int = TOP_K, with_margins: bool = False):
        super().__init__()
        self.joint = joint
        self.top_k = top_k
        self.with_margins = with_margins

    def forward(self, encoder, decoder):
        logits = joint_logits(self.joint, encoder, decoder)
        probs = torch.softmax(logits, dim=-1)
        token_prob, token_id = probs.max(dim=-1)
        top_logits, top_ids = logits.topk(self.top_k, dim=-1)
        outputs = (token_id.to(torch.int32), token_prob, top_ids.to(torch.int32), top_logits)
        if self.with_margins:
            outputs += (top_logits[..., 0] - top_logits[..., 1],)
        return outputs


class Joint(nn.Module):
    def __init__(self, joint):
        super().__init__()
        self.joint = joint

    def forward(self, encoder, decoder):
        return joint_logits(self.joint, encoder, decoder)


class JointWithMargins(Joint):
    """The joint's torch reference for the parity suite: logits plus the top-2 margin of each decision."""

    def forward(self, encoder, decoder):
        logits = joint_logits(self.joint, encoder, decoder)
        return logits, top2_margin(logits)


def preprocessor_module(model) -> nn.Module:
    return ParakeetPreprocessor(model.preprocessor).eval()


def encoder_module(model, variant: str) -> nn.Module:
    return StreamingEncoder(model.encoder, chunk_variants(model)[variant]).eval()


def decoder_module(model) -> nn.Module:
    return ParakeetDecoder(model.decoder).eval()


def joint_module(model) -> nn.Module:
    return Joint(model.joint).eval()


def joint_with_margins_module(model) -> nn.Module:
    return JointWithMargins(model.joint).eval()


def joint_decision_step_module(model, with_margins: bool = False) -> nn.Module:
    return JointDecisionStep(model.joint, min(TOP_K, dims(model).num_logits), with_margins).eval()


def decision_with_margins_module(model) -> nn.Module:
    return joint_decision_step_module(model, with_margins=True)
