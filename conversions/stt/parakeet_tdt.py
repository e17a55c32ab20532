"""NVIDIA Parakeet TDT v3 (NeMo ``EncDecRNNTBPEModel``): the components apps ship, their converters, and the
declaration the parity suite generates its tests from.

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
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from conversions.export import DEFAULT_TARGET, convert_traced
from conversions.registry import Bound, Component, ModelFamily

WINDOW_SECONDS = 15  # the fixed window of the encoder, fused mel+encoder and joint components

# Where the model comes from (set by the pytest options --nemo-path / --model-id / --model-revision through these
# environment variables, so pytest-xdist workers see the same choice); default: the offline tiny model.
NEMO_PATH_ENV = "COREML_PARITY_NEMO_PATH"
MODEL_ID_ENV = "COREML_PARITY_MODEL_ID"
MODEL_REVISION_ENV = "COREML_PARITY_MODEL_REVISION"


def _family_name() -> str:
    """``parakeet-tdt-v3`` for the offline tiny model; a user's checkpoint gets its own name, so its report and its
    snapshot baselines never mix with the tiny model's."""
    if os.environ.get(NEMO_PATH_ENV):
        source = Path(os.environ[NEMO_PATH_ENV]).name.removesuffix(".nemo")
    elif os.environ.get(MODEL_ID_ENV):
        source = os.environ[MODEL_ID_ENV].split("/")[-1]
    else:
        return "parakeet-tdt-v3"
    slug = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in source).strip("-")
    return f"parakeet-tdt-v3-{slug.lower()}"


FAMILY_NAME = _family_name()
MODEL_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "models"


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


# ---- converters --------------------------------------------------------------------------------------------
def _i32(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def _convert(module, example, outputs, precision, target, component, ranges=None, keep_fp32=None):
    return convert_traced(module, example, outputs, precision=precision, target=target, ranges=ranges,
                          keep_fp32=keep_fp32, metadata={"model": FAMILY_NAME, "component": component})


def front_end_ops(block) -> set:
    """The ops of the mel front end in a converted block: everything the encoder's first 2-D convolution (the
    dw-striding subsampling) depends on; the whole block when there is no such convolution (the preprocessor alone).

    They stay fp32 in fp16 exports. Measured on the fp16 preprocessor: the power spectrum of quiet audio underflows
    fp16 (values below 6e-8 flush, below 6e-5 lose precision) before the log, and the per-feature normalisation
    then divides by a tiny standard deviation: normalised mel errors of 28.9 on generated inputs (0.26 on the
    clip), and 0.95 on the fused mel+encoder's output. Everything after the front end is fp16."""
    operations = list(block.operations)
    boundary = next((op for op in operations if op.op_type == "conv" and op.inputs["weight"].rank == 4), None)
    if boundary is None:
        return set(operations)
    ancestors, pending = set(), [boundary]
    while pending:
        op = pending.pop()
        for value in op.inputs.values():
            for var in value if isinstance(value, (list, tuple)) else (value,):
                producer = getattr(var, "op", None)
                if producer is not None and producer not in ancestors:
                    ancestors.add(producer)
                    pending.append(producer)
    return ancestors


def convert_preprocessor(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    """Mel front end; ``audio_signal`` takes 1 to ``window_samples`` samples (a flexible input dimension)."""
    d = dims(model)
    example = {"audio_signal": torch.zeros(1, d.window_samples), "audio_length": _i32(d.window_samples)}
    return _convert(preprocessor_module(model), example, ("mel", "mel_length"), precision, target, "preprocessor",
                    ranges={"audio_signal": {1: (1, d.window_samples)}}, keep_fp32=front_end_ops)


def convert_encoder(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    d = dims(model)
    example = {"mel": torch.zeros(1, d.n_mels, d.mel_frames), "mel_length": _i32(d.mel_frames)}
    return _convert(encoder_module(model), example, ("encoder", "encoder_length"), precision, target, "encoder")


def convert_mel_encoder(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    d = dims(model)
    example = {"audio_signal": torch.zeros(1, d.window_samples), "audio_length": _i32(d.window_samples)}
    return _convert(mel_encoder_module(model), example, ("encoder", "encoder_length"), precision, target,
                    "mel-encoder", keep_fp32=front_end_ops)


def convert_decoder(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    d = dims(model)
    state = torch.zeros(d.pred_layers, 1, d.pred_hidden)
    example = {"targets": torch.tensor([[d.blank_id]], dtype=torch.int32), "target_length": _i32(1),
               "h_in": state, "c_in": state.clone()}
    return _convert(decoder_module(model), example, DECODER_OUTPUTS, precision, target, "decoder")


def _joint_example(d: Dims, frames: int) -> dict:
    return {"encoder": torch.zeros(1, d.d_model, frames), "decoder": torch.zeros(1, d.pred_hidden, 1)}


def convert_joint(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    d = dims(model)
    return _convert(joint_module(model), _joint_example(d, d.encoder_frames), ("logits",), precision, target, "joint")


def convert_joint_decision(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    d = dims(model)
    return _convert(joint_decision_module(model), _joint_example(d, d.encoder_frames), DECISION_OUTPUTS, precision,
                    target, "joint-decision")


def convert_joint_decision_step(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
    return _convert(joint_decision_module(model), _joint_example(dims(model), 1), DECISION_OUTPUTS, precision,
                    target, "joint-decision-step")


DECODER_INPUTS = ("targets", "target_length", "h_in", "c_in")
DECODER_OUTPUTS = ("decoder", "h_out", "c_out")
DECISION_OUTPUTS = ("token_id", "token_prob", "duration")
MARGIN_OUTPUTS = ("token_margin", "duration_margin")


# ---- the host pipeline: TDT greedy decoding driving the components ----------------------------------------
@dataclass
class Pipeline:
    """The three calls an app makes: encode one window, step the decoder, decide at one frame."""

    encode: object  # audio call {"audio_signal", "audio_length"} -> (encoder [1, D, T], encoder_length [1])
    decoder_step: object  # (token, (h, c)) -> (decoder [1, H, 1], (h, c))
    joint_step: object  # (encoder frame [1, D, 1], decoder [1, H, 1]) -> logits or tdt.Decision
    initial_state: tuple


def torch_pipeline(model) -> Pipeline:
    """The torch components (the same wrappers the converters trace) behind the pipeline."""
    d = dims(model)
    mel_encoder, decoder, joint = mel_encoder_module(model), decoder_module(model), joint_module(model)

    def decoder_step(token, state):
        g, h, c = _run(decoder, *token_call(token).values(), *state)
        return g, (h, c)

    state = initial_state(d)
    return Pipeline(lambda call: _run(mel_encoder, *call.values()), decoder_step,
                    lambda enc, g: _run(joint, enc, g)[0], (state["h_in"], state["c_in"]))


def package_pipeline(model, mel_encoder, decoder, joint_decision_step) -> Pipeline:
    """Converted components loaded on any backend (``.predict(feeds) -> dict``): the fused mel+encoder, the decoder
    step and the single-step joint+decision, as an app ships them."""
    from conversions.stt.tdt import Decision

    d = dims(model)

    def encode(call):
        out = mel_encoder.predict(call)
        return np.asarray(out["encoder"], np.float32), np.asarray(out["encoder_length"])

    def decoder_step(token, state):
        out = decoder.predict({**token_call(token), "h_in": state[0], "c_in": state[1]})
        return (np.asarray(out["decoder"], np.float32),
                (np.asarray(out["h_out"], np.float32), np.asarray(out["c_out"], np.float32)))

    def joint_step(enc, g):
        out = joint_decision_step.predict({"encoder": enc, "decoder": g})
        return Decision(int(np.asarray(out["token_id"]).reshape(-1)[0]), int(np.asarray(out["duration"]).reshape(-1)[0]))

    state = initial_state(d)
    return Pipeline(encode, decoder_step, joint_step, (state["h_in"], state["c_in"]))


def max_symbols_of(model) -> int:
    return int(model.cfg.decoding.get("greedy", {}).get("max_symbols") or 10)


def transcribe(model, pipeline: Pipeline, call: dict):
    """Greedy TDT decoding (:func:`conversions.stt.tdt.greedy_tdt_decode`) of one window through ``pipeline``."""
    from conversions.stt.tdt import greedy_tdt_decode

    d = dims(model)
    enc, length = pipeline.encode(call)
    return greedy_tdt_decode(enc, length, pipeline.decoder_step, pipeline.joint_step, pipeline.initial_state,
                             blank_id=d.blank_id, durations=d.durations, max_symbols_per_frame=max_symbols_of(model))


def nemo_transcribe(model, call: dict) -> tuple[list[int], list[int], list[int]]:
    """NeMo's own greedy TDT decoding of one window (its forward, then its configured decoding): the hypothesis'
    tokens, frames and durations."""
    with torch.no_grad():
        enc, length = model.forward(input_signal=torch.from_numpy(call["audio_signal"]),
                                    input_signal_length=torch.from_numpy(call["audio_length"]).long())
        (hyp,) = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=length,
                                                                return_hypotheses=True)

    def as_list(x):
        return [int(v) for v in (x.tolist() if hasattr(x, "tolist") else list(x))]

    return as_list(hyp.y_sequence), as_list(hyp.timestamp), as_list(hyp.token_duration)


# ---- the reference model -------------------------------------------------------------------------------------
def build_reference():
    """The model the parity suite checks: ``--nemo-path`` / ``--model-id`` when given (see the environment variables
    above), else the offline tiny model (built once into ``.cache/models/``)."""
    from conversions.stt import nemo_models

    if os.environ.get(NEMO_PATH_ENV):
        return nemo_models.load_nemo(os.environ[NEMO_PATH_ENV])
    if os.environ.get(MODEL_ID_ENV):
        path = nemo_models.download_nemo(os.environ[MODEL_ID_ENV], os.environ.get(MODEL_REVISION_ENV) or None)
        return nemo_models.load_nemo(path)
    return nemo_models.tiny_parakeet_tdt(MODEL_CACHE)


# ---- torch helpers (numpy in, numpy out) ---------------------------------------------------------------------
def _run(module: nn.Module, *arrays) -> tuple[np.ndarray, ...]:
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


def decoder_stream(model, tokens) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The torch decoder's output ``[1, H, 1]`` after each token of ``tokens`` (state carried from zero), and the
    state after the last one."""
    d, module = dims(model), decoder_module(model)
    state, outputs = initial_state(d), []
    for token in tokens:
        g, h, c = _run(module, *token_call(token).values(), state["h_in"], state["c_in"])
        state = {"h_in": h, "c_in": c}
        outputs.append(g)
    return outputs, state


# Text the decoder is fed token by token (a real sentence through the model's own tokenizer, as during decoding:
# blank first, then each emitted token). Any tokenizer handles it, the tiny one or the real 8192-piece one.
DECODER_TEXT = ("good morning everyone thank you for coming today we will talk about speech on devices "
                "the encoder turns mel frames into features and the decoder predicts the next token")


def decoder_tokens(model, limit: int = 96) -> list[int]:
    d = dims(model)
    ids = [int(i) for i in model.tokenizer.text_to_ids(DECODER_TEXT)][: limit - 1]
    if not ids or max(ids) >= d.vocab_size:
        raise ValueError(f"the tokenizer gave ids {ids[:8]}... outside the joint's {d.vocab_size} tokens")
    return [d.blank_id] + ids


# Decoder states at which the joint is evaluated over every encoder frame: the start (after blank), early, and
# deep into the sentence.
JOINT_DECODER_STEPS = (0, 1, 2, 5, 10, 20, 40, 80)


def _clip_audio(model, waveform):
    """The clip padded to the window (its true length given), and its first 5 s padded the same way."""
    d = dims(model)
    return [audio_call(d, waveform, waveform.shape[-1]), audio_call(d, waveform, 5 * d.sample_rate)]


def _clip_mels(model, waveform):
    pre = preprocessor_module(model)
    return [dict(zip(("mel", "mel_length"), _run(pre, *call.values()))) for call in _clip_audio(model, waveform)]


def _clip_tokens(model, waveform):
    """Blank, then the tokens of :data:`DECODER_TEXT`. Every call carries the initial (zero) state, which the
    stream replaces with the state carried from the previous call (a benchmark of one call starts from it)."""
    state = initial_state(dims(model))
    return [{**token_call(t), **state} for t in decoder_tokens(model)]


def clip_encoder_output(model, waveform) -> tuple[np.ndarray, int]:
    """The torch encoder output of the whole clip (padded to the window) and its valid frame count."""
    enc, length = _run(mel_encoder_module(model), *_clip_audio(model, waveform)[0].values())
    return enc, int(length[0])


def _clip_joint(model, waveform):
    enc, _ = clip_encoder_output(model, waveform)
    g, _ = decoder_stream(model, decoder_tokens(model))
    return [{"encoder": enc, "decoder": g[k]} for k in JOINT_DECODER_STEPS if k < len(g)]


def _clip_joint_step(model, waveform):
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

    from conversions.vad.silero import AUDIO_KINDS, synthetic_audio

    return st.builds(lambda kind, n, amplitude, seed: (synthetic_audio(kind, n, amplitude, seed), n),
                     st.sampled_from(AUDIO_KINDS), _lengths(d), st.floats(1e-3, 1.0).map(float),
                     st.integers(0, 2 ** 32 - 1))


def _random_preprocessor(model):
    d = dims(model)
    return _audio(d).map(lambda a: {"audio_signal": a[0], "audio_length": np.array([a[1]], np.int32)})


def _random_window_audio(model):
    d = dims(model)
    return _audio(d).map(lambda a: audio_call(d, a[0], a[1]))


def _random_mel(model):
    pre = preprocessor_module(model)
    return _random_window_audio(model).map(lambda call: dict(zip(("mel", "mel_length"), _run(pre, *call.values()))))


def _random_token_history(d: Dims):
    from hypothesis import strategies as st

    return st.lists(st.integers(0, d.vocab_size - 1), max_size=16).map(lambda ids: [d.blank_id] + ids)


def _random_decoder(model):
    """Any token (blank included) from a state the decoder reaches: after a random history of 0-16 tokens."""
    from hypothesis import strategies as st

    d = dims(model)
    return st.builds(lambda history, token: {**token_call(token), **decoder_stream(model, history)[1]},
                     _random_token_history(d), st.integers(0, d.blank_id))


def _random_joint_inputs(model, single_frame: bool):
    from hypothesis import strategies as st

    d = dims(model)
    mel_encoder = mel_encoder_module(model)

    def build(call, history, frame):
        enc, length = _run(mel_encoder, *call.values())
        g = decoder_stream(model, history)[0][-1]
        if single_frame:
            t = frame % max(int(length[0]), 1)
            enc = np.ascontiguousarray(enc[:, :, t:t + 1])
        return {"encoder": enc, "decoder": g}

    return st.builds(build, _random_window_audio(model), _random_token_history(d), st.integers(0, 10 ** 6))


# ---- task metric: the decisions -----------------------------------------------------------------------------
# A decision may legitimately flip only where the reference's top-2 logit margin is within the numerical error of
# the logits: both logits can move by the joint's fp16 bound, in opposite directions. Above this margin the
# converted token and duration must equal the reference's exactly, on every backend.
DECISION_MARGIN = 2 * 0.02  # twice the joint's fp16 logits bound (JOINT_LOGITS_FP16_ATOL)


def _decisions(outputs: dict) -> tuple[np.ndarray, np.ndarray]:
    if "logits" in outputs:
        logits = np.asarray(outputs["logits"], np.float64)
        split = int(np.asarray(outputs["num_tokens"]).reshape(-1)[0]) if "num_tokens" in outputs else None
        if split is None:
            raise ValueError("joint logits without the reference's num_tokens split")
        return logits[..., :split].argmax(-1), logits[..., split:].argmax(-1)
    return np.asarray(outputs["token_id"]), np.asarray(outputs["duration"])


def decision_task_metric(reference: dict, candidate: dict) -> dict:
    """Token and duration agreement with the torch reference, overall and where the reference's top-2 margin
    exceeds :data:`DECISION_MARGIN` (``confident_*``: must be exact)."""
    candidate = {**candidate, "num_tokens": reference.get("num_tokens")}
    ref_token, ref_duration = _decisions(reference)
    got_token, got_duration = _decisions(candidate)
    figures = {}
    for name, ref, got, margin in (("token", ref_token, got_token, reference["token_margin"]),
                                   ("duration", ref_duration, got_duration, reference["duration_margin"])):
        margin = np.asarray(margin).reshape(ref.shape)
        confident = margin > DECISION_MARGIN
        figures[f"{name}_agreement"] = float((ref == got).mean())
        figures[f"confident_{name}_agreement"] = float((ref == got)[confident].mean()) if confident.any() else 1.0
        figures[f"confident_{name}_fraction"] = float(confident.mean())
    return figures


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


def _with_margins_reference(model) -> nn.Module:
    return ParakeetJointWithMargins(model.joint, len(dims(model).durations)).eval()


def _decision_reference(model) -> nn.Module:
    return joint_decision_module(model, with_margins=True)


# ---- upstream: our wrappers vs NeMo's own forward -----------------------------------------------------------
def _upstream_encoder(model, waveform):
    """The encoder wrapper (precomputed positional table, re-expressed masks) vs ``ConformerEncoder.forward``."""
    call = _clip_mels(model, waveform)[0]
    ours, _ = _run(encoder_module(model), call["mel"], call["mel_length"])
    with torch.no_grad():
        theirs, _ = model.encoder(audio_signal=torch.from_numpy(call["mel"]),
                                  length=torch.from_numpy(call["mel_length"]).long())
    return ours.reshape(-1), theirs.numpy().reshape(-1)


def _upstream_mel_encoder(model, waveform):
    """The fused wrapper vs NeMo's ``EncDecRNNTBPEModel.forward`` (preprocessor + encoder) on the clip."""
    call = _clip_audio(model, waveform)[0]
    ours, _ = _run(mel_encoder_module(model), *call.values())
    with torch.no_grad():
        theirs, _ = model.forward(input_signal=torch.from_numpy(call["audio_signal"]),
                                  input_signal_length=torch.from_numpy(call["audio_length"]).long())
    return ours.reshape(-1), theirs.numpy().reshape(-1)


# ---- the declaration ---------------------------------------------------------------------------------------
from conversions.vad.silero import CLIP_PATH, read_wav  # noqa: E402  (the same committed speech clip)



def _fp32(atol: float, measured: str) -> Bound:
    return Bound(atol, 1e-5, 90.0, f"fp32 program: summation order only ({measured})")


_EXACT = Bound(0.0, 0.0, 0.0, "integer length arithmetic: exact")
_DECISION = Bound(None, 0.0, float("-inf"), "an integer decision (an index): judged by the task metric, exact "
                                            "wherever the reference's top-2 margin exceeds DECISION_MARGIN")
JOINT_LOGITS_FP16_ATOL = 0.02

# Parity bounds per output and program precision. How they were set (tiny model, portable runtime, torch 2.13 CPU
# with one thread as the suite runs it, coremltools 9.0): each component streamed over the clip (2 window calls;
# 75 decoder steps with state carried; the joint at 7 decoder states over all 188 frames; the single-step joint at
# each of the clip's 131 valid frames) and over 120 hypothesis-generated cases per component (any audio kind and
# level, lengths 1 to 240,000 samples, tokens from reachable decoder states); the measured worst is quoted, the
# bound is about twice it, the PSNR floor about 8 dB below the measured one. The public port's bounds, for
# comparison: mel atol 1.0, LSTM cell atol 1.5.
#
# fp32 programs: summation order only, except the mel front end, where coremltools' DFT-as-conv and torch's FFT
# round differently; in the log of a quiet frame's power that difference grows, and the per-feature normalisation
# divides it by the frame's small spread (generated quiet inputs: 0.06 on normalised mel).
# fp16 programs: the front end stays fp32 (front_end_ops: fp16 gave 28.9 on normalised mel for quiet inputs); the
# encoder's error is fp16 weights and activations through 2 conformer blocks; the decoder's LSTM error stays flat
# over 75 steps (its output and hidden state are bounded by tanh; the cell state reaches 31.8, where fp16's spacing
# is 0.016); the joint's logits error (mostly the fp16 spacing of logits up to 20) sets DECISION_MARGIN.
BOUNDS = {
    "preprocessor": {
        "fp16": {"mel": Bound(5e-3, 0.0, 80.0, "front end fp32 (see front_end_ops); clip: measured 2.0e-3, 89.2 dB "
                                               "(fp16 front end: 0.26, 52.5 dB)"),
                 "mel_length": _EXACT},
        "fp32": {"mel": _fp32(3e-3, "clip 1.2e-3 on normalised mel, 107.8 dB: DFT-as-conv vs FFT rounding"),
                 "mel_length": _EXACT}},
    "encoder": {
        "fp16": {"encoder": Bound(0.015, 0.0, 65.0, "clip: measured 7.7e-3 (peak 4.2), 73.1 dB"),
                 "encoder_length": _EXACT},
        "fp32": {"encoder": _fp32(1e-5, "clip 1.7e-6"), "encoder_length": _EXACT}},
    "mel-encoder": {
        "fp16": {"encoder": Bound(0.015, 0.0, 65.0, "front end fp32; clip: measured 7.4e-3, 73.3 dB (fp16 front end "
                                                    "on the random model: 1.7e-2)"),
                 "encoder_length": _EXACT},
        "fp32": {"encoder": _fp32(2e-4, "clip 7.3e-5, 117.4 dB: the front end's rounding through the encoder"),
                 "encoder_length": _EXACT}},
    "decoder": {
        "fp16": {"decoder": Bound(3e-3, 0.0, 67.0, "75 steps: measured 1.4e-3 (peak 1.0), 75.1 dB"),
                 "h_out": Bound(3e-3, 0.0, 67.0, "measured 1.4e-3, 75.3 dB"),
                 "c_out": Bound(0.08, 0.0, 69.0, "measured 4.1e-2 at values up to 31.8 (fp16 spacing there: 0.016), "
                                                 "77.1 dB")},
        "fp32": {"decoder": _fp32(1e-5, "5.4e-7"), "h_out": _fp32(1e-5, "1.8e-6"),
                 "c_out": _fp32(5e-5, "1.1e-5 at values up to 31.8")}},
    "joint": {
        "fp16": {"logits": Bound(JOINT_LOGITS_FP16_ATOL, 0.0, 72.0, "7 x 188 frames: measured 9.9e-3 at logits up to "
                                                                    "20.6 (fp16 spacing there: 0.016), 80.2 dB")},
        "fp32": {"logits": _fp32(1e-5, "measured 0")}},
    "joint-decision": {
        "fp16": {"token_id": _DECISION, "duration": _DECISION,
                 "token_prob": Bound(5e-3, 0.0, 62.0, "measured 2.2e-3 (probabilities up to 1), 70.9 dB")},
        "fp32": {"token_id": _DECISION, "duration": _DECISION, "token_prob": _fp32(1e-6, "measured 0")}},
    "joint-decision-step": {
        "fp16": {"token_id": _DECISION, "duration": _DECISION,
                 "token_prob": Bound(5e-3, 0.0, 62.0, "131 frames: measured 1.1e-3, 71.0 dB")},
        "fp32": {"token_id": _DECISION, "duration": _DECISION, "token_prob": _fp32(1e-6, "measured 0")}},
}

# Generated inputs (120 cases per component and precision); where not listed, the clip bounds hold (measured within
# them). Wider: the front end on quiet audio (see above). PSNR floors here are over a run's few cases (8 by default)
# stacked, which sit lower than over 120.
RANDOM_BOUNDS = {name: {p: dict(outputs) for p, outputs in per_precision.items()} for name, per_precision in BOUNDS.items()}
# Pure tones have mel bins holding only spectral leakage (power ~1e-10 of the peak), where coremltools'
# DFT-as-conv and torch's FFT round differently; the log and the per-feature normalisation (a stationary tone's bins
# barely vary over time) blow that up: 300 sampled cases on the fp32 program, per-case worst median 3e-4, 90th
# percentile 0.022, 99th 0.17, worst 0.55, all on tones. No stable elementwise figure: PSNR only, as Silero's states.
_TONE_LEAKAGE = ("PSNR only: pure tones' leakage-only mel bins differ by up to 0.55 even in fp32 (DFT-as-conv vs "
                 "FFT, then log and normalisation); 99th percentile of the per-case worst 0.17; speech: see the clip")
RANDOM_BOUNDS["preprocessor"]["fp16"]["mel"] = Bound(None, 0.0, 45.0, _TONE_LEAKAGE)
RANDOM_BOUNDS["preprocessor"]["fp32"]["mel"] = Bound(None, 0.0, 45.0, _TONE_LEAKAGE)
RANDOM_BOUNDS["encoder"]["fp16"]["encoder"] = Bound(0.015, 0.0, 60.0, "measured 6.4e-3, 76.6 dB")
RANDOM_BOUNDS["mel-encoder"]["fp16"]["encoder"] = Bound(0.025, 0.0, 58.0, "measured 1.05e-2, 75.5 dB")
RANDOM_BOUNDS["mel-encoder"]["fp32"]["encoder"] = Bound(0.05, 0.0, 65.0, "measured 2.7e-2 on quiet inputs (the "
                                                                         "fp32 front end's rounding, see above), "
                                                                         "80.9 dB")
# What an app acts on: the decisions. Above DECISION_MARGIN they must be exact on every backend; below it fp16 may
# flip near-ties (measured on the clip: fp16 agreement 1.0; 99.9% of the reference's decisions are confident). One
# flip in a hundred is tolerated overall.
TASK_BOUNDS = {"fp16": {"confident_token_agreement": 1.0, "confident_duration_agreement": 1.0,
                        "token_agreement": 0.99, "duration_agreement": 0.99},
               "fp32": {"confident_token_agreement": 1.0, "confident_duration_agreement": 1.0,
                        "token_agreement": 1.0, "duration_agreement": 1.0}}
def relative_position_ops(mlmodel) -> tuple[str, ...]:
    """The ops of a converted encoder that read the relative positional projection, and the consts holding it.

    The wrapper's positional table is a fixed buffer for the fixed window, so coremltools folds each layer's
    ``linear_pos(pos_emb)`` into a constant ``[1, heads, d_k, 2T - 1]`` read by a matmul. It is the encoder's sense
    of position, not a learned weight matrix: compression leaves it exact (as Silero's STFT basis), and it could not
    be grouped or block-quantized anyway (2T - 1 = 375 is odd, d_k = 8 < 32 in the tiny model)."""
    from conversions.runtime import load_model

    operations = load_model(mlmodel, backend="mil").function.operations
    consts = {op.outputs[0].name: (op.name, op.outputs[0].type) for op in operations if op.op_type == "const"}
    names = []
    for op in operations:
        if op.op_type != "matmul":
            continue
        for bindings in op.inputs.values():
            for binding in bindings:
                const_name, vtype = consts.get(binding.var, (None, None))
                shape = tuple(getattr(vtype, "shape", ()))
                if const_name and len(shape) == 4 and shape[0] == 1 and shape[-1] % 2 == 1:
                    names += [op.name, const_name]
    return tuple(names)


_GROUPED = ("palettize-4bit-grouped", "palettize-6bit-grouped", "palettize-8bit-grouped")
# Measured with coremltools 9.0 (it leaves such weights uncompressed; quantize.py turns that into
# StrategyNotApplicable). The same holds for the real model: 8193 embedding rows, 8198 joint outputs.
INAPPLICABLE = {
    **{("decoder", s): "the embedding has vocabulary + 1 (blank) rows, not divisible by the group size 16"
       for s in _GROUPED},
    **{("joint", s): "the output layer has vocabulary + 1 + 5 durations rows, not divisible by the group size 16"
       for s in _GROUPED},
}


_FRAME_MS = 80.0  # one encoder frame: what a decoder or single-step joint call advances through, at most
_WINDOW_MS = 1000.0 * WINDOW_SECONDS
_DECISIONS = dict(task_metric=decision_task_metric, task_bounds=TASK_BOUNDS)


def _component(name, convert, reference, inputs, outputs, clip_feeds, random_inputs, **more) -> Component:
    return Component(name, convert, reference, tuple(inputs), tuple(outputs), clip_feeds=clip_feeds,
                     random_inputs=random_inputs, bounds=BOUNDS[name], random_bounds=RANDOM_BOUNDS[name], **more)


FAMILY = ModelFamily(
    name=FAMILY_NAME,
    build_reference=build_reference,
    load_clip=lambda: read_wav(CLIP_PATH),
    clip_path=CLIP_PATH,
    requires=("nemo.collections.asr",),
    install_hint="pip install -e '.[parakeet]'",
    keep_exact=relative_position_ops,
    inapplicable=INAPPLICABLE,
    # mixed: 6-bit palettization layer by layer where quality 0.985 vs the fp16 package holds (all layers at 6
    # bits: encoder 0.985, decoder 0.987); the joint's logits are more sensitive (6 bits on one layer alone:
    # <= 0.976), so it mixes 8-bit layers with fp16.
    mixed_candidate="palettize-6bit",
    mixed_target_quality=0.985,
    components=(
        _component("preprocessor", convert_preprocessor, preprocessor_module, ("audio_signal", "audio_length"),
                   ("mel", "mel_length"), _clip_audio, _random_preprocessor, step_ms=_WINDOW_MS, sweep=False,
                   # every op computes in fp32 (front_end_ops); only the mel output is fp16, as in any fp16 package
                   program_precision={"fp16": "mixed"}),
        _component("encoder", convert_encoder, encoder_module, ("mel", "mel_length"), ("encoder", "encoder_length"),
                   _clip_mels, _random_mel, step_ms=_WINDOW_MS, upstream=_upstream_encoder, upstream_atol=1e-5,
                   upstream_why="same modules and weights; only the positional slice and masks are built differently "
                                "(measured: identical)"),
        _component("mel-encoder", convert_mel_encoder, mel_encoder_module, ("audio_signal", "audio_length"),
                   ("encoder", "encoder_length"), _clip_audio, _random_window_audio, step_ms=_WINDOW_MS, sweep=False,
                   program_precision={"fp16": "mixed"},
                   upstream=_upstream_mel_encoder, upstream_atol=1e-5,
                   upstream_why="EncDecRNNTBPEModel.forward runs the same preprocessor and encoder modules"),
        _component("decoder", convert_decoder, decoder_module, DECODER_INPUTS, DECODER_OUTPUTS, _clip_tokens,
                   _random_decoder, state={"h_out": "h_in", "c_out": "c_in"}, step_ms=_FRAME_MS),
        _component("joint", convert_joint, _with_margins_reference, ("encoder", "decoder"), ("logits",), _clip_joint,
                   lambda m: _random_joint_inputs(m, single_frame=False), step_ms=_WINDOW_MS,
                   reference_extras=("token_margin", "duration_margin", "num_tokens"),
                   mixed_candidate="palettize-8bit", **_DECISIONS),
        _component("joint-decision", convert_joint_decision, _decision_reference, ("encoder", "decoder"),
                   DECISION_OUTPUTS, _clip_joint, lambda m: _random_joint_inputs(m, single_frame=False),
                   step_ms=_WINDOW_MS, reference_extras=MARGIN_OUTPUTS, sweep=False, **_DECISIONS),
        _component("joint-decision-step", convert_joint_decision_step, _decision_reference, ("encoder", "decoder"),
                   DECISION_OUTPUTS, _clip_joint_step, lambda m: _random_joint_inputs(m, single_frame=True),
                   step_ms=_FRAME_MS, reference_extras=MARGIN_OUTPUTS, sweep=False, **_DECISIONS),
    ),
)
