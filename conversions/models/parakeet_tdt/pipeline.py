"""The host pipeline of Parakeet TDT: an app's three calls (encode a window, step the decoder, decide at a frame)
driven by the host-side TDT greedy decoder (:mod:`.tdt`), on the torch components or on converted packages, and
NeMo's own decoding to compare with. :func:`transcript_check` is the family's end-to-end pipeline check."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .inputs import audio_call, initial_state, run_module, token_call
from .modules import decoder_module, dims, joint_module, mel_encoder_module

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
        g, h, c = run_module(decoder, *token_call(token).values(), *state)
        return g, (h, c)

    state = initial_state(d)
    return Pipeline(lambda call: run_module(mel_encoder, *call.values()), decoder_step,
                    lambda enc, g: run_module(joint, enc, g)[0], (state["h_in"], state["c_in"]))


def package_pipeline(model, mel_encoder, decoder, joint_decision_step) -> Pipeline:
    """Converted components loaded on any backend (``.predict(feeds) -> dict``): the fused mel+encoder, the decoder
    step and the single-step joint+decision, as an app ships them."""
    from conversions.models.parakeet_tdt.tdt import Decision

    d = dims(model)

    def encode(call):
        out = mel_encoder.predict(call)
        return np.asarray(out["encoder"], np.float32), np.asarray(out["encoder_length"])

    def joint_step(enc, g):
        out = joint_decision_step.predict({"encoder": enc, "decoder": g})
        return Decision(int(np.asarray(out["token_id"]).reshape(-1)[0]), int(np.asarray(out["duration"]).reshape(-1)[0]))

    state = initial_state(d)
    return Pipeline(encode, package_decoder_step(decoder), joint_step, (state["h_in"], state["c_in"]))


def package_decoder_step(decoder):
    """A converted decoder step (``.predict``) as ``(token, (h, c)) -> (decoder [1, H, 1], (h, c))``, the outputs as
    float32 the way a host carries them. Shared by the Parakeet families."""

    def decoder_step(token, state):
        out = decoder.predict({**token_call(token), "h_in": state[0], "c_in": state[1]})
        return (np.asarray(out["decoder"], np.float32),
                (np.asarray(out["h_out"], np.float32), np.asarray(out["c_out"], np.float32)))

    return decoder_step


def max_symbols_of(model) -> int:
    return int(model.cfg.decoding.get("greedy", {}).get("max_symbols") or 10)


def transcribe(model, pipeline: Pipeline, call: dict):
    """Greedy TDT decoding (:func:`.tdt.greedy_tdt_decode`) of one window through ``pipeline``."""
    from conversions.models.parakeet_tdt.tdt import greedy_tdt_decode

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


# ---- the end-to-end check: the transcript -------------------------------------------------------------------
PIPELINE_COMPONENTS = ("mel-encoder", "decoder", "joint-decision-step")


def first_difference(ours: list, theirs: list) -> int | None:
    """The first index where two sequences differ (the shorter one's length if one extends the other), or None."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return i
    return None if len(ours) == len(theirs) else min(len(ours), len(theirs))


def describe_difference(model, label, result, tokens, frames, reference=None) -> str:
    """Where a transcript parts from NeMo's, with the torch reference's top-2 margin at that step (a margin within
    the numerical error means a near-tie; above it, a conversion bug)."""
    from .bounds import DECISION_MARGIN

    i = first_difference(result.tokens, tokens)
    if i is None:
        i = first_difference(result.frames, frames)
    lines = [f"{label}: transcript differs from NeMo's greedy TDT decoding",
             f"  NeMo  ({len(tokens)} tokens): {tokens}  {model.tokenizer.ids_to_text(tokens)!r}",
             f"  ours  ({len(result.tokens)} tokens): {result.tokens}  {model.tokenizer.ids_to_text(result.tokens)!r}"]
    if i is not None:
        lines.append(f"  first difference at token {i}: frames NeMo {frames[i:i + 3]} vs ours {result.frames[i:i + 3]}")
    if reference is not None and i is not None and i < len(reference.token_steps):
        step = reference.token_steps[i]
        lines.append(f"  torch reference margin at that step: token {reference.margins[step]:.3g}, duration "
                     f"{reference.duration_margins[step]:.3g} (decisions above {DECISION_MARGIN:g} must not flip)")
    return "\n".join(lines)


def transcript_check(model, clip, components):
    """The clip (padded to the 15 s window, its true length given) transcribed by the host TDT greedy decoder
    driving ``components`` (the converted fused mel+encoder, decoder step and single-step joint+decision; ``None``:
    the torch wrappers) must equal NeMo's own greedy decoding token for token and frame for frame. The torch run
    must also decide with margins above DECISION_MARGIN (else exactness would test luck)."""
    from conversions.registry import PipelineResult

    from .bounds import DECISION_MARGIN

    call = audio_call(dims(model), clip, clip.shape[-1])
    tokens, frames, durations = nemo_transcribe(model, call)
    reference = transcribe(model, torch_pipeline(model), call)
    if components is None:
        result, label = reference, "torch components"
    else:
        result = transcribe(model, package_pipeline(model, *(components[n] for n in PIPELINE_COMPONENTS)), call)
        label = "converted components"
    text = model.tokenizer.ids_to_text(result.tokens)
    figures = {"nemo_tokens": len(tokens), "tokens": len(result.tokens), "text": text,
               "reference_min_margin": float(reference.min_margin)}
    problems = []
    if not tokens:
        problems.append("NeMo decoded nothing on the clip: the default model is fitted to speak on it")
    if (result.tokens, result.frames) != (tokens, frames):
        problems.append(describe_difference(model, label, result, tokens, frames,
                                            None if components is None else reference))
    elif components is None and durations and result.durations != list(durations):
        problems.append(f"{label}: token durations {result.durations} differ from NeMo's {list(durations)}")
    elif components is not None and result.durations != reference.durations:
        problems.append(f"{label}: token durations {result.durations} differ from the torch components' "
                        f"{reference.durations}")
    if components is None and not reference.min_margin > DECISION_MARGIN:
        problems.append(f"the torch decisions along the greedy path have a top-2 margin of only "
                        f"{reference.min_margin:.3g} (<= {DECISION_MARGIN:g}): an exact transcript would test luck")
    summary = f"{len(result.tokens)} tokens {text!r} vs NeMo's {len(tokens)}"
    return PipelineResult(not problems, summary, figures, "\n".join(problems) or None)
