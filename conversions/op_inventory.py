"""Which MIL ops do the real speech models emit? Convert small random-weight instances and list them.

Builds scaled-down instances of the modules users convert, through the real libraries (NeMo for Parakeet,
the ``kokoro`` package for Kokoro), wraps each component in a thin ``nn.Module`` that traces, converts it with
coremltools (ML Program, traced on CPU) for every target/precision in :data:`VARIANTS`, and writes the sorted
MIL op types of each converted program to ``tests/data/op_inventory.json``.

Run it with the ``models`` extra installed (``nemo_toolkit[asr]`` and ``kokoro``)::

    python scripts/op_inventory.py            # all components, writes the JSON (= python -m conversions.op_inventory)
    python scripts/op_inventory.py --only kokoro --out /tmp/inv.json

The wrappers are imported by ``tests/runtime/test_model_blocks.py`` (``conversions.op_inventory``), which
runs the same converted components on the portable runtime against torch. Every wrapper reuses the library's
own submodules and weights; where the library's forward does not convert, the wrapper re-expresses only the
offending glue and says why (each trap is named in the wrapper's docstring):

- NeMo ``ConformerEncoder``: ``pos_enc`` slices its table at a position computed from ``x.size(1)``, and the
  padding mask expands by ``length.size(0)``; both go through ``aten::Int`` on a length-1 tensor, which
  coremltools 9.0 folds with ``int(ndarray)``, a TypeError since NumPy 2.4 ("only 0-dimensional arrays can be
  converted to Python scalars"; NumPy <= 2.3 only warns). The offline-encoder wrapper precomputes the positional
  table slice for its fixed frame count and builds the (full-context) masks from ``arange < length``, so it
  converts with any NumPy. The cache-aware streaming encoder (EOU) has the same pattern deep inside its layers
  (attention and causal-conv cache updates): it is converted through NeMo's own ``forward_for_export``, which
  needs NumPy < 2.4. Run this script with NumPy < 2.4 (the inventory records the version).
- NeMo's mel front end converts as is: ``torch.stft`` is lowered by coremltools to a conv1d with a fixed DFT
  basis (no complex op survives), so no conv1d rewrite is needed.
- Kokoro, converter bugs: SineGen's ``(f0 / sr) % 1`` becomes ``floor_div(x, 1)``, which coremltools 9.0's
  ``noop_elimination`` pass deletes as if it were an identity, so the program computes ``x - x = 0`` (written
  ``x - floor(x)`` here); ``AdainResBlk1d`` multiplies by ``torch.rsqrt(torch.tensor(2))``, an int64 tensor that
  reaches MIL ``rsqrt`` as int32 and fails type checking (recombined here with a float 1/sqrt(2)); ALBERT's mask
  is built by transformers 5 with ``Tensor.new_ones``, which coremltools cannot convert (a prepared 4D mask is
  passed instead).
- Kokoro: ``pack_padded_sequence`` LSTMs become the same ``nn.LSTM`` run over the full fixed length (exact when
  no token is padding); SineGen's ``torch.rand``/``torch.randn_like`` become explicit inputs
  (``random_phases``, ``noise``); durations become an alignment built in-graph from ``cumsum`` and comparisons
  (no ``repeat_interleave``); the decoder uses ``disable_complex=True`` (``CustomSTFT``: conv1d + atan2).
- Left as the library has it (the converted program differs from torch; ``test_model_blocks`` bounds it):
  kokoro's Snake ``1 / alpha`` becomes MIL ``inverse`` with its default epsilon, 1 / (alpha + 1e-4); the
  SineGen phase (~10^3 rad) is meaningless in an fp16 program; CustomSTFT's atan2 flips between +pi and -pi
  where real < 0 and imag ~ 0 (the Nyquist bin's imag basis is a rounded sin(pi n), ~1e-16).
- ``KModel(config=dict, model=None)`` downloads the checkpoint from the hub: the model is built from an empty
  checkpoint file instead (random initialisation, nothing loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # before coremltools: its conversion progress bars flood the log

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "op_inventory.json"
VARIANTS = [("iOS17", "fp16"), ("iOS17", "fp32"), ("iOS18", "fp16"), ("iOS18", "fp32")]
SEED = 0


def variant_key(target: str, precision: str) -> str:
    return f"{target}-{precision}"


@dataclass
class Component:
    """One convertible piece: a traceable wrapper, named example inputs, and what it stands for."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    description: str
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.inputs)

    @property
    def tensors(self) -> list[torch.Tensor]:
        return list(self.inputs.values())


# ---- NVIDIA NeMo: Parakeet TDT v3 (scaled down) -----------------------------------------------------------------

PARAKEET = dict(
    # front end: exactly the v3 settings
    sample_rate=16000, features=128, n_fft=512, window_size=0.025, window_stride=0.01,
    # encoder: v3 is d_model 1024, 24 layers, 8 heads, subsampling channels 256; structure kept, sizes scaled down
    d_model=64, n_layers=2, n_heads=8, subsampling_conv_channels=32, conv_kernel_size=9,
    # prediction net: v3 is 2-layer LSTM 640, vocab 8192; joint hidden 640, 5 TDT durations
    pred_hidden=64, pred_rnn_layers=2, vocab_size=128, joint_hidden=64, durations=(0, 1, 2, 3, 4),
    # example sizes: 1 s of audio -> 101 mel frames -> 13 encoder frames
    audio_samples=16000, mel_frames=101,
)


def build_parakeet_modules(seed: int = SEED):
    """The four NeMo modules of a Parakeet TDT v3-like model (random weights, eval mode)."""
    from nemo.collections.asr.modules import (AudioToMelSpectrogramPreprocessor, ConformerEncoder, RNNTDecoder,
                                              RNNTJoint)

    p = PARAKEET
    torch.manual_seed(seed)
    preprocessor = AudioToMelSpectrogramPreprocessor(
        sample_rate=p["sample_rate"], normalize="per_feature", window_size=p["window_size"],
        window_stride=p["window_stride"], window="hann", features=p["features"], n_fft=p["n_fft"], log=True,
        frame_splicing=1, dither=1e-5, pad_to=0, pad_value=0.0)
    encoder = ConformerEncoder(
        feat_in=p["features"], n_layers=p["n_layers"], d_model=p["d_model"], subsampling="dw_striding",
        subsampling_factor=8, subsampling_conv_channels=p["subsampling_conv_channels"], ff_expansion_factor=4,
        self_attention_model="rel_pos", n_heads=p["n_heads"], att_context_size=[-1, -1], xscaling=True,
        untie_biases=True, pos_emb_max_len=5000, conv_kernel_size=p["conv_kernel_size"], conv_norm_type="batch_norm",
        dropout=0.0, dropout_pre_encoder=0.0, dropout_emb=0.0, dropout_att=0.0)
    decoder = RNNTDecoder(prednet={"pred_hidden": p["pred_hidden"], "pred_rnn_layers": p["pred_rnn_layers"],
                                   "dropout": 0.0}, vocab_size=p["vocab_size"], blank_as_pad=True)
    joint = RNNTJoint(jointnet={"encoder_hidden": p["d_model"], "pred_hidden": p["pred_hidden"],
                                "joint_hidden": p["joint_hidden"], "activation": "relu", "dropout": 0.0},
                      num_classes=p["vocab_size"], num_extra_outputs=len(p["durations"]), log_softmax=False)
    # Batch-norm statistics of a fresh model are (0, 1): randomise them so the folded conv is not an identity.
    for m in encoder.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return preprocessor.eval(), encoder.eval(), decoder.eval(), joint.eval()


# The wrappers users ship (and the parity suite converts) live with the converters; the inventory reuses them.
from conversions.models.parakeet_tdt.modules import (  # noqa: E402
    ParakeetDecoder,
    ParakeetEncoder,
    ParakeetJoint,
    ParakeetJointDecision,
    ParakeetMelEncoder,
    ParakeetPreprocessor,
)


def parakeet_components(seed: int = SEED, modules=None) -> list[Component]:
    """The Parakeet TDT components users convert; ``modules`` = :func:`build_parakeet_modules`' result, or built."""
    p = PARAKEET
    preprocessor, encoder, decoder, joint = modules or build_parakeet_modules(seed)
    g = torch.Generator().manual_seed(seed)
    audio = 0.1 * torch.randn(1, p["audio_samples"], generator=g)
    n = p["audio_samples"]
    mel = torch.randn(1, p["features"], p["mel_frames"], generator=g)
    enc_wrapper = ParakeetEncoder(encoder, p["mel_frames"])
    t = enc_wrapper.frames
    nd = len(p["durations"])
    enc_out = torch.randn(1, p["d_model"], t, generator=g)
    dec_out = torch.randn(1, p["pred_hidden"], 1, generator=g)
    state = lambda: torch.randn(p["pred_rnn_layers"], 1, p["pred_hidden"], generator=g)  # noqa: E731
    return [
        Component("parakeet_tdt.preprocessor", ParakeetPreprocessor(preprocessor),
                  {"audio_signal": audio, "audio_length": torch.tensor([n], dtype=torch.int32)},
                  "AudioToMelSpectrogramPreprocessor: 128 mels, n_fft 512, window 400, hop 160, per-feature norm",
                  ["converts as is: torch.stft is lowered to conv with a fixed DFT basis"]),
        Component("parakeet_tdt.encoder", enc_wrapper,
                  {"mel": mel, "mel_length": torch.tensor([p["mel_frames"]], dtype=torch.int32)},
                  "ConformerEncoder: rel_pos attention, dw_striding 8x, conv kernel 9, batch norm",
                  ["positional table slice and masks precomputed/re-expressed (aten::Int on a length-1 tensor)"]),
        Component("parakeet_tdt.mel_encoder", ParakeetMelEncoder(preprocessor, encoder, p["mel_frames"]),
                  {"audio_signal": audio, "audio_length": torch.tensor([n], dtype=torch.int32)},
                  "fused preprocessor + encoder"),
        Component("parakeet_tdt.decoder", ParakeetDecoder(decoder),
                  {"targets": torch.tensor([[7]], dtype=torch.int32),
                   "target_length": torch.tensor([1], dtype=torch.int32), "h_in": state(), "c_in": state()},
                  "RNNTDecoder prediction net: embedding (blank as pad) + 2-layer LSTM, one step with state"),
        Component("parakeet_tdt.joint", ParakeetJoint(joint), {"encoder": enc_out, "decoder": dec_out},
                  "RNNTJoint with 5 TDT duration outputs: logits [1,T,1,V+1+5]"),
        Component("parakeet_tdt.joint_decision", ParakeetJointDecision(joint, nd),
                  {"encoder": enc_out, "decoder": dec_out},
                  "joint + greedy TDT decision (token_id, token_prob, duration) over all encoder frames"),
        Component("parakeet_tdt.joint_decision_step", ParakeetJointDecision(joint, nd),
                  {"encoder": enc_out[:, :, :1].clone(), "decoder": dec_out},
                  "single-step joint + decision: [1,D,1] + [1,H,1]"),
    ]


# ---- NVIDIA NeMo: Parakeet realtime EOU 120M (cache-aware streaming, scaled down) -------------------------------

PARAKEET_EOU = dict(
    # EOU: 17 layers, d_model 512, attention context [70, 1], causal conv with a time cache of 8 (kernel 9),
    # causal 8x dw_striding; mel front end without normalisation. Sizes scaled down, structure kept.
    d_model=64, n_layers=2, n_heads=8, subsampling_conv_channels=32, att_context_size=[70, 1], conv_kernel_size=9,
    audio_samples=2560,
)


def build_parakeet_eou_modules(seed: int = SEED):
    """Preprocessor (no normalisation) and cache-aware streaming encoder (``setup_streaming_params`` done)."""
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor, ConformerEncoder

    p = PARAKEET_EOU
    torch.manual_seed(seed)
    preprocessor = AudioToMelSpectrogramPreprocessor(
        sample_rate=16000, normalize="NA", window_size=0.025, window_stride=0.01, window="hann", features=128,
        n_fft=512, log=True, frame_splicing=1, dither=1e-5, pad_to=0, pad_value=0.0)
    encoder = ConformerEncoder(
        feat_in=128, n_layers=p["n_layers"], d_model=p["d_model"], subsampling="dw_striding", subsampling_factor=8,
        subsampling_conv_channels=p["subsampling_conv_channels"], causal_downsampling=True, ff_expansion_factor=4,
        self_attention_model="rel_pos", n_heads=p["n_heads"], att_context_size=p["att_context_size"],
        att_context_style="chunked_limited", conv_kernel_size=p["conv_kernel_size"], conv_context_size="causal",
        conv_norm_type="layer_norm", xscaling=True, untie_biases=True, dropout=0.0, dropout_pre_encoder=0.0,
        dropout_emb=0.0, dropout_att=0.0)
    encoder.setup_streaming_params()
    return preprocessor.eval(), encoder.eval()


class ParakeetStreamingEncoder(nn.Module):
    """``ConformerEncoder.forward_for_export`` with caches, in the layout of the EOU Core ML contract.

    (mel chunk [1,128,F], pre_cache [1,128,N], cache_last_channel [L,1,C,D], cache_last_time [L,1,D,K],
    cache_last_channel_len [1]) -> (encoded [1,D,T'], encoded_len, new pre_cache, the three updated caches).
    NeMo's own forward, unchanged: it converts as is with NumPy < 2.4 (its traced sizes hit coremltools'
    ``int(ndarray)`` with NumPy >= 2.4, see the module docstring).
    """

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.pre_cache_frames = encoder.streaming_cfg.pre_encode_cache_size[1]

    def forward(self, mel, pre_cache, cache_last_channel, cache_last_time, cache_last_channel_len):
        x = torch.cat([pre_cache, mel], dim=-1)
        length = torch.full((1,), x.shape[-1], dtype=torch.int64)
        encoded, encoded_len, channel, time_, channel_len = self.encoder.forward_for_export(
            x, length, cache_last_channel.transpose(0, 1), cache_last_time.transpose(0, 1), cache_last_channel_len)
        return (encoded, encoded_len.to(torch.int32), x[:, :, -self.pre_cache_frames:], channel.transpose(0, 1),
                time_.transpose(0, 1), channel_len.to(torch.int32))


def parakeet_eou_components(seed: int = SEED, modules=None) -> list[Component]:
    p = PARAKEET_EOU
    preprocessor, encoder = modules or build_parakeet_eou_modules(seed)
    g = torch.Generator().manual_seed(seed)
    cfg = encoder.streaming_cfg
    frames, pre = cfg.chunk_size[1], cfg.pre_encode_cache_size[1]
    channel, time_, channel_len = encoder.get_initial_cache_state(batch_size=1)
    audio = 0.1 * torch.randn(1, p["audio_samples"], generator=g)
    return [
        Component("parakeet_eou.preprocessor", ParakeetPreprocessor(preprocessor),
                  {"audio_signal": audio, "audio_length": torch.tensor([p["audio_samples"]], dtype=torch.int32)},
                  "AudioToMelSpectrogramPreprocessor without normalisation (EOU front end)"),
        Component("parakeet_eou.encoder_streaming", ParakeetStreamingEncoder(encoder),
                  {"mel": torch.randn(1, 128, frames, generator=g), "pre_cache": torch.randn(1, 128, pre, generator=g),
                   "cache_last_channel": 0.1 * torch.randn(channel.shape, generator=g),
                   "cache_last_time": 0.1 * torch.randn(time_.shape, generator=g),
                   "cache_last_channel_len": torch.tensor([20], dtype=torch.int32)},
                  "cache-aware streaming FastConformer (causal dw_striding, chunked_limited attention [70,1], "
                  "causal conv with time cache, layer-norm conv norm): one chunk with caches in and out",
                  ["NeMo forward_for_export as is: needs NumPy < 2.4 with coremltools 9.0"]),
    ]


# ---- hexgrad kokoro: Kokoro-82M (scaled down where the code allows) ---------------------------------------------
# The glue shared with the Kokoro family's stages (conversions/models/kokoro/modules.py, where each trap is named).
from conversions.models.kokoro.modules import adain_res_blk, albert_mask, alignment_from_durations  # noqa: E402

KOKORO_CONFIG = {
    # Decoder hard-codes 1024 internal channels and a Conv1d(512, 64) on the text features, and the generator's
    # input is the decoder's 512 output channels: hidden_dim 512 and upsample_initial_channel 512 are forced.
    "hidden_dim": 512, "style_dim": 128, "n_layer": 3, "n_token": 178, "max_dur": 50, "n_mels": 80,
    "text_encoder_kernel_size": 5, "dim_in": 64, "dropout": 0.2, "max_conv_dim": 512, "multispeaker": True,
    "istftnet": {"upsample_rates": [10, 6], "upsample_kernel_sizes": [20, 12], "gen_istft_n_fft": 20,
                 "gen_istft_hop_size": 5, "resblock_kernel_sizes": [3, 7, 11],
                 "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "upsample_initial_channel": 512},
    # ALBERT: real is hidden 768, 12 heads, intermediate 2048, 12 (shared) layers, 512 positions
    "plbert": {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64,
               "num_hidden_layers": 2, "dropout": 0.1},
    "vocab": {},
}
KOKORO = dict(tokens=16, frames=8)  # decoder: 8 frames -> 16 F0 samples -> 4800 audio samples (600 per frame)


def build_kokoro_model(seed: int = SEED):
    """``KModel`` from a config dict with random weights.

    ``KModel(config=dict, model=None)`` downloads the checkpoint from the hub, so it cannot be built without
    one; an empty checkpoint (``torch.save({}, path)``) loads nothing and leaves the random initialisation.
    """
    from kokoro import KModel

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "empty.pth")
        torch.save({}, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = KModel(repo_id="hexgrad/Kokoro-82M", config=KOKORO_CONFIG, model=path, disable_complex=True)
    return model.eval()


def _lstm_full_length(lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """The pack_padded_sequence LSTM of kokoro, as the same ``nn.LSTM`` over the whole fixed-length sequence."""
    out, _ = lstm(x)
    return out




class KokoroAlbert(nn.Module):
    """``CustomAlbert`` (PL-BERT): (input_ids, attention_mask) -> last hidden state (mask passed prepared, 4D)."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids, attention_mask=albert_mask(attention_mask))


class KokoroTextEncoder(nn.Module):
    """``TextEncoder``: embedding -> 3x(weight-norm conv, LayerNorm, LeakyReLU) -> BiLSTM, padding masked."""

    def __init__(self, text_encoder):
        super().__init__()
        self.te = text_encoder

    def forward(self, input_ids, attention_mask):
        m = (attention_mask == 0).unsqueeze(1)
        x = self.te.embedding(input_ids).transpose(1, 2).masked_fill(m, 0.0)
        for block in self.te.cnn:
            x = block(x).masked_fill(m, 0.0)
        x = _lstm_full_length(self.te.lstm, x.transpose(1, 2)).transpose(1, 2)
        return x.masked_fill(m, 0.0)


def _duration_encoder(enc, x, style, text_mask):
    """``DurationEncoder.forward`` with its pack_padded LSTMs run over the full length."""
    from kokoro.modules import AdaLayerNorm

    x = x.permute(2, 0, 1)
    # int(): bake the (fixed) sizes into the trace; a traced size goes through aten::Int (see the module docstring)
    s = style.expand(int(x.shape[0]), int(x.shape[1]), -1)
    x = torch.cat([x, s], dim=-1).masked_fill(text_mask.unsqueeze(-1).transpose(0, 1), 0.0)
    x = x.transpose(0, 1).transpose(-1, -2)
    for block in enc.lstms:
        if isinstance(block, AdaLayerNorm):
            x = block(x.transpose(-1, -2), style).transpose(-1, -2)
            x = torch.cat([x, s.permute(1, 2, 0)], dim=1).masked_fill(text_mask.unsqueeze(-1).transpose(-1, -2), 0.0)
        else:
            x = _lstm_full_length(block, x.transpose(-1, -2)).transpose(-1, -2)
    return x.transpose(-1, -2)


class KokoroDuration(nn.Module):
    """ALBERT -> bert_encoder -> duration encoder -> LSTM -> duration_proj: the "duration model" users ship.

    (input_ids, attention_mask, ref_s [1,256]) -> (pred_dur [1,T] int32, d [1,T,hidden+style]); the prosody half
    of the voice (``ref_s[:, 128:]``) drives the predictor, as in ``KModel.forward_with_tokens`` at speed 1.
    """

    def __init__(self, model):
        super().__init__()
        self.bert, self.bert_encoder, self.predictor = model.bert, model.bert_encoder, model.predictor

    def forward(self, input_ids, attention_mask, ref_s):
        text_mask = attention_mask == 0
        bert_dur = self.bert(input_ids, attention_mask=albert_mask(attention_mask))
        d_en = self.bert_encoder(bert_dur).transpose(-1, -2)
        s = ref_s[:, 128:]
        d = _duration_encoder(self.predictor.text_encoder, d_en, s, text_mask)
        x = _lstm_full_length(self.predictor.lstm, d)
        duration = torch.sigmoid(self.predictor.duration_proj(x)).sum(dim=-1)
        pred_dur = torch.round(duration).clamp(min=1)
        return pred_dur.to(torch.int32), d




def f0n(predictor, x, s):
    """``ProsodyPredictor.F0Ntrain`` with :func:`adain_res_blk` for its res blocks."""
    x, _ = predictor.shared(x.transpose(-1, -2))
    f0 = x.transpose(-1, -2)
    for block in predictor.F0:
        f0 = adain_res_blk(block, f0, s)
    n = x.transpose(-1, -2)
    for block in predictor.N:
        n = adain_res_blk(block, n, s)
    return predictor.F0_proj(f0).squeeze(1), predictor.N_proj(n).squeeze(1)




class KokoroProsody(nn.Module):
    """Alignment from durations + ``ProsodyPredictor.F0Ntrain`` + text features expanded to frames.

    (d [1,T,hidden+style], t_en [1,hidden,T], pred_dur [1,T] int32, ref_s) -> (F0 [1,2F], N [1,2F], asr [1,hidden,F]).
    """

    def __init__(self, model, frames: int):
        super().__init__()
        self.predictor = model.predictor
        self.frames = frames

    def forward(self, d, t_en, pred_dur, ref_s):
        aln = alignment_from_durations(pred_dur, self.frames)
        en = d.transpose(-1, -2) @ aln
        f0, n = f0n(self.predictor, en, ref_s[:, 128:])
        asr = t_en @ aln
        return f0, n, asr


class KokoroDecoder(nn.Module):
    """``Decoder`` (AdaIN res blocks + iSTFTNet generator) with SineGen's randomness as explicit inputs.

    Inputs: asr [1,512,F], F0_curve [1,2F], N [1,2F], ref_s [1,256] (timbre half ``[:, :128]`` is used),
    random_phases [1,9] (SineGen's ``rand_ini``; harmonic 0 is forced to phase 0 as in kokoro), noise [1,600F,9]
    (SineGen's ``randn_like``). Output: audio [1,1,600F]. Everything else is the library's modules in the
    library's order; the source's ``noise`` branch (unused by the generator) is dropped.
    """

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder
        gen = decoder.generator
        sine = gen.m_source.l_sin_gen
        self.register_buffer("harmonics", torch.arange(1, sine.harmonic_num + 2, dtype=torch.float32).view(1, 1, -1),
                             persistent=False)
        phase_mask = torch.ones(1, sine.dim)
        phase_mask[0, 0] = 0.0
        self.register_buffer("phase_mask", phase_mask, persistent=False)

    def source(self, f0_curve, random_phases, noise):
        """SourceModuleHnNSF's harmonic branch: SineGen (explicit randomness) -> Linear -> tanh."""
        gen = self.decoder.generator
        sine = gen.m_source.l_sin_gen
        f0 = gen.f0_upsamp(f0_curve[:, None]).transpose(1, 2)
        fn = f0 * self.harmonics
        rad = fn / sine.sampling_rate
        rad = rad - torch.floor(rad)  # kokoro's `% 1`: coremltools 9.0 converts float `x % 1` to `x - x` (see top)
        rad = torch.cat([rad[:, :1, :] + (random_phases * self.phase_mask).unsqueeze(1), rad[:, 1:, :]], dim=1)
        rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / sine.upsample_scale, mode="linear").transpose(1, 2)
        phase = torch.cumsum(rad, dim=1) * 2 * torch.pi
        phase = F.interpolate(phase.transpose(1, 2) * sine.upsample_scale, scale_factor=sine.upsample_scale,
                              mode="linear").transpose(1, 2)
        sines = torch.sin(phase) * sine.sine_amp
        uv = (f0 > sine.voiced_threshold).to(torch.float32)
        noise_amp = uv * sine.noise_std + (1 - uv) * sine.sine_amp / 3
        sine_waves = sines * uv + noise_amp * noise
        return gen.m_source.l_tanh(gen.m_source.l_linear(sine_waves))

    def harmonic_features(self, f0_curve, random_phases, noise):
        """The generator's ``har``: STFT magnitude and phase (``CustomSTFT``: conv1d + atan2) of the source."""
        har_source = self.source(f0_curve, random_phases, noise).transpose(1, 2).squeeze(1)
        har_spec, har_phase = self.decoder.generator.stft.transform(har_source)
        return torch.cat([har_spec, har_phase], dim=1)

    def generator_from_har(self, x, s, har):
        """``Generator.forward`` after its (no-grad) source branch: upsampling, AdaIN res blocks, inverse STFT."""
        gen = self.decoder.generator
        for i in range(gen.num_upsamples):
            x = F.leaky_relu(x, negative_slope=0.1)
            x_source = gen.noise_res[i](gen.noise_convs[i](har), s)
            x = gen.ups[i](x)
            if i == gen.num_upsamples - 1:
                x = gen.reflection_pad(x)
            x = x + x_source
            xs = None
            for j in range(gen.num_kernels):
                y = gen.resblocks[i * gen.num_kernels + j](x, s)
                xs = y if xs is None else xs + y
            x = xs / gen.num_kernels
        x = gen.conv_post(F.leaky_relu(x))
        spec = torch.exp(x[:, : gen.post_n_fft // 2 + 1, :])
        phase = torch.sin(x[:, gen.post_n_fft // 2 + 1:, :])
        return gen.stft.inverse(spec, phase)

    def features(self, asr, f0_curve, n, ref_s):
        """``Decoder.forward`` up to the generator: F0/N convs, encode and decode AdaIN res blocks."""
        dec = self.decoder
        s = ref_s[:, :128]
        f0 = dec.F0_conv(f0_curve.unsqueeze(1))
        n = dec.N_conv(n.unsqueeze(1))
        x = adain_res_blk(dec.encode, torch.cat([asr, f0, n], dim=1), s)
        asr_res = dec.asr_res(asr)
        res = True
        for block in dec.decode:
            if res:
                x = torch.cat([x, asr_res, f0, n], dim=1)
            x = adain_res_blk(block, x, s)
            if block.upsample_type != "none":
                res = False
        return x

    def forward(self, asr, f0_curve, n, ref_s, random_phases, noise):
        x = self.features(asr, f0_curve, n, ref_s)
        har = self.harmonic_features(f0_curve, random_phases, noise)
        return self.generator_from_har(x, ref_s[:, :128], har)


class KokoroGeneratorFromHar(nn.Module):
    """Diagnostic split of :class:`KokoroDecoder` (tests only): the generator given the decoder features ``x``
    and the harmonic STFT features ``har`` as inputs, i.e. everything after SineGen and the atan2."""

    def __init__(self, decoder_wrapper: KokoroDecoder):
        super().__init__()
        self.wrapper = decoder_wrapper

    def forward(self, x, ref_s, har):
        return self.wrapper.generator_from_har(x, ref_s[:, :128], har)


def kokoro_components(seed: int = SEED, model=None) -> list[Component]:
    """The Kokoro components users convert; ``model`` = :func:`build_kokoro_model`'s result, or built."""
    model = model if model is not None else build_kokoro_model(seed)
    c = KOKORO_CONFIG
    t, frames = KOKORO["tokens"], KOKORO["frames"]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, c["n_token"], (1, t), generator=g, dtype=torch.int64).to(torch.int32)
    ids[0, 0] = ids[0, -1] = 0
    mask = torch.ones(1, t, dtype=torch.int32)
    ref_s = torch.randn(1, 256, generator=g)
    h, sd = c["hidden_dim"], c["style_dim"]
    dur = torch.full((1, t), frames // t if frames >= t else 1, dtype=torch.int32)
    samples = 600 * frames
    dims = model.decoder.generator.m_source.l_sin_gen.dim
    return [
        Component("kokoro.albert", KokoroAlbert(model.bert), {"input_ids": ids, "attention_mask": mask},
                  "CustomAlbert (transformers AlbertModel): input_ids + attention_mask -> last hidden state"),
        Component("kokoro.text_encoder", KokoroTextEncoder(model.text_encoder),
                  {"input_ids": ids, "attention_mask": mask},
                  "TextEncoder: embedding, weight-norm convs, LayerNorm, LeakyReLU, BiLSTM",
                  ["pack_padded_sequence BiLSTM -> the same LSTM over the full fixed length"]),
        Component("kokoro.duration", KokoroDuration(model),
                  {"input_ids": ids, "attention_mask": mask, "ref_s": ref_s},
                  "ALBERT + bert_encoder + DurationEncoder (LSTM, AdaLayerNorm) + LSTM + duration_proj -> pred_dur",
                  ["pack_padded_sequence LSTMs -> the same LSTMs over the full fixed length"]),
        Component("kokoro.prosody", KokoroProsody(model, frames),
                  {"d": torch.randn(1, t, h + sd, generator=g), "t_en": torch.randn(1, h, t, generator=g),
                   "pred_dur": dur, "ref_s": ref_s},
                  "alignment from durations (cumsum/compare) + F0Ntrain (LSTM, AdainResBlk1d with upsampling)",
                  ["repeat_interleave alignment -> cumsum + comparisons at a fixed frame count"]),
        Component("kokoro.decoder", KokoroDecoder(model.decoder),
                  {"asr": torch.randn(1, h, frames, generator=g),
                   "f0_curve": 100 + 50 * torch.rand(1, 2 * frames, generator=g),
                   "n": torch.randn(1, 2 * frames, generator=g), "ref_s": ref_s,
                   "random_phases": torch.rand(1, dims, generator=g),
                   "noise": torch.randn(1, samples, dims, generator=g)},
                  "Decoder: AdaIN res blocks, iSTFTNet generator (SineGen sin, conv_transpose, Snake, CustomSTFT "
                  "atan2 + inverse via conv_transpose)",
                  ["SineGen randomness -> explicit inputs random_phases and noise", "disable_complex=True"]),
    ]


BUILDERS: dict[str, Callable[[int], list[Component]]] = {
    "parakeet_tdt": parakeet_components, "parakeet_eou": parakeet_eou_components, "kokoro": kokoro_components}


# ---- conversion and inventory ------------------------------------------------------------------------------------

def trace(component: Component) -> torch.jit.ScriptModule:
    """TorchScript trace on CPU, once per component (``check_trace=False``: the check re-runs the module twice,
    which for the kokoro decoder costs more than a conversion)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(component.module.eval(), tuple(component.tensors), check_trace=False)


def convert(component: Component, target: str, precision: str, traced=None):
    """The component as an in-memory ML Program: the same settings as ``conversions.testing.convert_module``
    (int inputs as int32, float inputs as fp32, CPU_ONLY), from a trace made once."""
    import coremltools as ct

    traced = traced if traced is not None else trace(component)
    inputs = [ct.TensorType(name=name, shape=tuple(x.shape), dtype=np.float32 if x.is_floating_point() else np.int32)
              for name, x in component.inputs.items()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.convert(traced, inputs=inputs, convert_to="mlprogram",
                          minimum_deployment_target=getattr(ct.target, target),
                          compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                          compute_units=ct.ComputeUnit.CPU_ONLY)


def program_op_types(mlmodel) -> list[str]:
    """Sorted MIL op types of the converted program's main function (ops in nested blocks included)."""
    spec = mlmodel.get_spec()
    function = spec.mlProgram.functions["main"]
    types: set[str] = set()

    def walk(block):
        for op in block.operations:
            types.add(op.type)
            for inner in op.blocks:
                walk(inner)

    for block in function.block_specializations.values():
        walk(block)
    return sorted(types)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:400] if text else type(exc).__name__


def inventory(families: list[str], only: str | None = None, variants=None, log=print) -> dict:
    import coremltools as ct

    result: dict = {
        "generated_by": "scripts/op_inventory.py",
        "versions": {"torch": torch.__version__, "coremltools": ct.__version__, "numpy": np.__version__},
        "variants": [variant_key(t, p) for t, p in variants or VARIANTS],
        "components": {},
    }
    for family in families:
        try:
            result["versions"][family] = _library_version(family)
            components = BUILDERS[family](SEED)
        except Exception as exc:  # the library itself failed to build the model
            log(f"{family}: build failed: {_error_text(exc)}")
            result["components"][family] = {"error": f"build failed: {_error_text(exc)}"}
            continue
        for comp in components:
            if only and only not in comp.name:
                continue
            entry = {"description": comp.description,
                     "inputs": {n: f"{str(x.dtype).removeprefix('torch.')}{list(x.shape)}"
                                for n, x in comp.inputs.items()},
                     "notes": comp.notes, "ops": {}, "errors": {}}
            try:
                traced = trace(comp)
            except Exception as exc:
                entry["errors"]["trace"] = _error_text(exc)
                log(f"{comp.name}: trace failed: {entry['errors']['trace']}")
                result["components"][comp.name] = entry
                continue
            for target, precision in variants or VARIANTS:
                key = variant_key(target, precision)
                start = time.perf_counter()
                try:
                    entry["ops"][key] = program_op_types(convert(comp, target, precision, traced))
                    log(f"{comp.name} {key}: {len(entry['ops'][key])} op types ({time.perf_counter() - start:.1f} s)")
                except Exception as exc:
                    entry["errors"][key] = _error_text(exc)
                    log(f"{comp.name} {key}: conversion failed: {entry['errors'][key]}")
                    if os.environ.get("OP_INVENTORY_DEBUG"):
                        traceback.print_exc()
            if not entry["errors"]:
                del entry["errors"]
            result["components"][comp.name] = entry
    all_ops = sorted({op for e in result["components"].values() for ops in e.get("ops", {}).values() for op in ops})
    result["all_ops"] = all_ops
    return result


def to_json(result: dict) -> str:
    """Indented JSON with every list of scalars on one line (one line per op list: readable diffs)."""
    text = json.dumps(result, indent=1)
    flat = re.compile(r"\[\s*((?:(?:\"[^\"]*\"|-?[0-9.]+)\s*,\s*)*(?:\"[^\"]*\"|-?[0-9.]+))\s*\]")
    while True:
        new = flat.sub(lambda m: "[" + re.sub(r"\s*,\s*", ", ", m.group(1)) + "]", text)
        if new == text:
            return text + "\n"
        text = new


def _library_version(family: str) -> str:
    from importlib.metadata import version

    return version({"parakeet_tdt": "nemo_toolkit", "parakeet_eou": "nemo_toolkit", "kokoro": "kokoro"}[family])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON to write (default {DEFAULT_OUT})")
    parser.add_argument("--family", choices=sorted(BUILDERS), action="append", help="only these model families")
    parser.add_argument("--only", help="only components whose name contains this string")
    parser.add_argument("--variant", action="append", choices=[variant_key(*v) for v in VARIANTS],
                        help="only these target-precision variants (default: all)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    start = time.perf_counter()
    variants = [v for v in VARIANTS if args.variant is None or variant_key(*v) in args.variant]
    result = inventory(args.family or list(BUILDERS), args.only, variants)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(result))
    failed = [f"{name} {key}" for name, e in result["components"].items() for key in e.get("errors", {})]
    print(f"wrote {args.out}: {len(result['components'])} components, {len(result['all_ops'])} op types, "
          f"{len(failed)} failed conversions, {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
