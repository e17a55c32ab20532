"""NVIDIA Parakeet TDT v3 (NeMo ``EncDecRNNTBPEModel``): the torch components apps ship, wrapping NeMo's own submodules.

Components and their Core ML contract (``../shared/MODELS.md``; sizes shown for the real 0.6B model, every size is
read from the loaded model's configuration, so the tiny offline model goes through the same code):

=======================  ==========================================================  =====================================
component                inputs                                                      outputs
=======================  ==========================================================  =====================================
``preprocessor``         ``audio_signal`` [1, 1..240000], ``audio_length`` [1] int32  ``mel`` [1,128,F], ``mel_length``
``encoder``              ``mel`` [1,128,1501], ``mel_length`` [1] int32               ``encoder`` [1,1024,188], ``*_length``
``mel-encoder``          ``audio_signal`` [1,240000], ``audio_length`` [1] int32      ``encoder``, ``encoder_length``
``decoder``              ``targets`` [1,1] int32, ``target_length`` [1] int32,        ``decoder`` [1,640,1], ``h_out``,
                         ``h_in``, ``c_in`` [2,1,640]                                 ``c_out``
``joint``                ``encoder`` [1,1024,188], ``decoder`` [1,640,1]              ``logits`` [1,188,1,8198]
``joint-decision``       same                                                         ``token_id``, ``token_prob``,
                                                                                      ``duration`` [1,188,1]
``joint-decision-step``  ``encoder`` [1,1024,1], ``decoder`` [1,640,1]                the same, [1,1,1]
=======================  ==========================================================  =====================================

The window is fixed at 15 s (240,000 samples -> 1501 mel frames -> 188 encoder frames); the preprocessor alone
takes any length up to the window. ``duration`` is the *index* into the model's durations ([0, 1, 2, 3, 4]).

Each wrapper calls NeMo's own submodules with their weights; where NeMo's forward does not convert, the wrapper
re-expresses only that glue (the ``ParakeetEncoder`` docstring says what and why). NeMo is not patched.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

WINDOW_SECONDS = 15  # the fixed window of the encoder, fused mel+encoder and joint components

# ---- dimensions, from the loaded model ---------------------------------------------------------------------
@dataclass(frozen=True)
class Dims:
    sample_rate: int
    hop: int  # samples per mel frame
    n_mels: int
    d_model: int  # encoder output channels
    pred_hidden: int  # decoder (LSTM) size
    pred_layers: int
    vocab_size: int  # tokens without blank
    durations: tuple[int, ...]
    window_samples: int
    mel_frames: int  # of the window
    encoder_frames: int  # of the window

    @property
    def blank_id(self) -> int:
        return self.vocab_size

    @property
    def num_logits(self) -> int:
        return self.vocab_size + 1 + len(self.durations)


def durations_of(model) -> tuple[int, ...]:
    cfg = model.cfg
    durations = cfg.get("decoding", {}).get("durations") or cfg.get("model_defaults", {}).get("tdt_durations")
    if not durations:
        raise ValueError("the model's configuration names no TDT durations (decoding.durations / "
                         "model_defaults.tdt_durations): is it a TDT model?")
    return tuple(int(d) for d in durations)


@functools.lru_cache(maxsize=8)
def dims(model) -> Dims:
    """The sizes of ``model`` (a NeMo ``EncDecRNNTBPEModel``) the components are built with (cached per model)."""
    pre = model.preprocessor
    feat = pre.featurizer
    sample_rate = int(model.cfg.preprocessor.sample_rate)
    hop = int(feat.hop_length)
    window = WINDOW_SECONDS * sample_rate
    with torch.no_grad():
        # the tensor's frame count (centred STFT: window // hop + 1); NeMo's valid length (get_seq_len) is one less
        mel_frames = int(pre(input_signal=torch.zeros(1, window), length=torch.tensor([window]))[0].shape[-1])
        sub, _ = model.encoder.pre_encode(x=torch.zeros(1, mel_frames, model.encoder._feat_in),
                                          lengths=torch.tensor([mel_frames]))
    durations = durations_of(model)
    return Dims(sample_rate=sample_rate, hop=hop, n_mels=int(feat.nfilt), d_model=int(model.encoder.d_model),
                pred_hidden=int(model.decoder.pred_hidden), pred_layers=int(model.decoder.pred_rnn_layers),
                vocab_size=int(model.joint.num_classes_with_blank - 1 - len(durations)), durations=durations,
                window_samples=window, mel_frames=mel_frames, encoder_frames=int(sub.shape[1]))


# ---- the torch components ----------------------------------------------------------------------------------
class ParakeetPreprocessor(nn.Module):
    """``AudioToMelSpectrogramPreprocessor``: (audio_signal, audio_length) -> (mel, mel_length). Converts as is:
    coremltools lowers ``torch.stft`` to a conv1d with a fixed DFT basis."""

    def __init__(self, preprocessor):
        super().__init__()
        self.preprocessor = preprocessor

    def forward(self, audio_signal, audio_length):
        mel, mel_length = self.preprocessor(input_signal=audio_signal, length=audio_length)
        return mel, mel_length.to(torch.int32)


class ParakeetEncoder(nn.Module):
    """``ConformerEncoder.forward_internal`` for a fixed mel frame count, full attention context.

    Same submodules and order as NeMo: ``pre_encode`` (dw_striding 8x) -> x * xscale -> layers -> transpose.
    Two pieces of glue are re-expressed because they do not convert: ``RelPositionalEncoding.forward`` slices its
    table at positions computed from ``x.size(1)``, and ``_create_masks`` expands by ``length.size(0)``; both go
    through ``aten::Int`` on a length-1 tensor, which coremltools 9.0 folds with ``int(ndarray)`` (a TypeError since
    NumPy 2.4, a warning before). Here the positional table slice is precomputed for the fixed frame count (exactly
    ``pos_enc``'s slice) and the masks for ``att_context_size=[-1, -1]`` are built from ``arange < length``
    (pad mask = frame >= length; attention mask = not (valid_i and valid_j)).
    """

    def __init__(self, encoder, mel_frames: int):
        super().__init__()
        if encoder.att_context_style != "regular" or list(encoder.att_context_size) != [-1, -1]:
            raise ValueError("ParakeetEncoder wraps the full-context (offline) encoder only; this encoder has "
                             f"att_context_style={encoder.att_context_style!r}, "
                             f"att_context_size={list(encoder.att_context_size)}")
        self.encoder = encoder
        with torch.no_grad():
            x, _ = encoder.pre_encode(x=torch.zeros(1, mel_frames, encoder._feat_in),
                                      lengths=torch.tensor([mel_frames]))
        self.frames = x.shape[1]
        encoder.pos_enc.extend_pe(self.frames, torch.device("cpu"), torch.float32)
        pe = encoder.pos_enc.pe
        center = pe.size(1) // 2 + 1  # as RelPositionalEncoding.forward
        self.register_buffer("pos_emb", pe[:, center - self.frames:center + self.frames - 1].clone(), persistent=False)

    def forward(self, mel, mel_length):
        enc = self.encoder
        x, length = enc.pre_encode(x=mel.transpose(1, 2), lengths=mel_length)
        if enc.xscale:
            x = x * enc.xscale
        valid = torch.arange(self.frames).unsqueeze(0) < length.unsqueeze(-1)
        pad_mask = ~valid
        att_mask = ~(valid.unsqueeze(1) & valid.unsqueeze(2))
        for layer in enc.layers:
            x = layer(x=x, att_mask=att_mask, pos_emb=self.pos_emb, pad_mask=pad_mask)
        if enc.out_proj is not None:
            x = enc.out_proj(x)
        return x.transpose(1, 2), length.to(torch.int32)


class ParakeetMelEncoder(nn.Module):
    """Fused mel + encoder: (audio_signal, audio_length) -> (encoder, encoder_length)."""

    def __init__(self, preprocessor, encoder, mel_frames: int):
        super().__init__()
        self.preprocessor = ParakeetPreprocessor(preprocessor)
        self.encoder = ParakeetEncoder(encoder, mel_frames)

    def forward(self, audio_signal, audio_length):
        mel, mel_length = self.preprocessor(audio_signal, audio_length)
        return self.encoder(mel, mel_length)


class ParakeetDecoder(nn.Module):
    """``RNNTDecoder.predict`` for one token with explicit LSTM state: the streaming decoder step users ship.
    ``target_length`` is part of the contract users ship (always 1 for one token); the step does not read it."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, targets, target_length, h_in, c_in):
        g, (h_out, c_out) = self.decoder.predict(y=targets, state=[h_in, c_in], add_sos=False)
        return g.transpose(1, 2), h_out, c_out


def joint_logits(joint, encoder: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
    """``RNNTJoint.joint`` on channel-first inputs (encoder [B,D,T], decoder [B,H,U]) -> raw logits [B,T,U,V+1+5].

    The same modules as NeMo's ``joint_after_projection`` (project encoder and prediction, sum, ``joint_net``) but
    without its CPU-only ``log_softmax`` over the whole row: NeMo normalises tokens and durations together on CPU
    (not on GPU), which changes no decision in exact arithmetic, but in an fp16 program everything but the winner
    underflows — measured on the fitted tiny model: logits off by 85.9 (the log of the smallest float) and duration
    decisions flipped. Apps take the argmax of each part, so the raw logits are what the component returns."""
    f = joint.project_encoder(encoder.transpose(1, 2)).unsqueeze(2)  # [B, T, 1, H]
    g = joint.project_prednet(decoder.transpose(1, 2)).unsqueeze(1)  # [B, 1, U, H]
    return joint.joint_net(f + g)


class ParakeetJoint(nn.Module):
    """The joint on channel-first inputs: (encoder [B,D,T], decoder [B,H,U]) -> raw logits [B,T,U,V+1+5]."""

    def __init__(self, joint):
        super().__init__()
        self.joint = joint

    def forward(self, encoder, decoder):
        return joint_logits(self.joint, encoder, decoder)


class ParakeetJointDecision(nn.Module):
    """Joint + TDT greedy decision: argmax token (incl. blank), its softmax probability, argmax duration index.

    ``with_margins``: also return the top-1 minus top-2 logit of the token and duration parts (the torch reference
    of the parity suite uses them to tell which decisions numerical error may legitimately flip)."""

    def __init__(self, joint, num_durations: int, with_margins: bool = False):
        super().__init__()
        self.joint = joint
        self.num_tokens = joint.num_classes_with_blank - num_durations  # python ints: no traced shape arithmetic
        self.with_margins = with_margins

    def forward(self, encoder, decoder):
        logits = joint_logits(self.joint, encoder, decoder)
        token_logits = logits[..., : self.num_tokens]
        duration_logits = logits[..., self.num_tokens:]
        probs = torch.softmax(token_logits, dim=-1)
        token_prob, token_id = probs.max(dim=-1)
        duration = duration_logits.argmax(dim=-1)
        if not self.with_margins:
            return token_id.to(torch.int32), token_prob, duration.to(torch.int32)
        return (token_id.to(torch.int32), token_prob, duration.to(torch.int32), top2_margin(token_logits),
                top2_margin(duration_logits))


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 over the last axis: how far a decision is from flipping."""
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def preprocessor_module(model) -> nn.Module:
    return ParakeetPreprocessor(model.preprocessor).eval()


def encoder_module(model) -> nn.Module:
    return ParakeetEncoder(model.encoder, dims(model).mel_frames).eval()


def mel_encoder_module(model) -> nn.Module:
    return ParakeetMelEncoder(model.preprocessor, model.encoder, dims(model).mel_frames).eval()


def decoder_module(model) -> nn.Module:
    return ParakeetDecoder(model.decoder).eval()


def joint_module(model) -> nn.Module:
    return ParakeetJoint(model.joint).eval()


def joint_decision_module(model, with_margins: bool = False) -> nn.Module:
    return ParakeetJointDecision(model.joint, len(dims(model).durations), with_margins).eval()


class ParakeetJointWithMargins(nn.Module):
    """The joint's torch reference for the parity suite: its logits, plus what the task metric needs (top-2
    margins of the token and duration parts, and where the logits split)."""

    def __init__(self, joint, num_durations: int):
        super().__init__()
        self.joint = joint
        self.num_tokens = joint.num_classes_with_blank - num_durations

    def forward(self, encoder, decoder):
        logits = joint_logits(self.joint, encoder, decoder)
        return (logits, top2_margin(logits[..., : self.num_tokens]), top2_margin(logits[..., self.num_tokens:]),
                torch.tensor([self.num_tokens]))


def joint_with_margins_module(model) -> nn.Module:
    return ParakeetJointWithMargins(model.joint, len(dims(model).durations)).eval()


def decision_with_margins_module(model) -> nn.Module:
    return joint_decision_module(model, with_margins=True)
