"""Host-side greedy decoding of a Token-and-Duration Transducer (TDT), independent of the backend.

Apps ship Parakeet TDT as separate components (encoder, a one-step decoder with explicit LSTM state, a joint) and
run the greedy TDT loop themselves. :func:`greedy_tdt_decode` is that loop, written once against two callables, so
the same code drives the torch modules, the converted programs on the portable MIL runtime, or Core ML, and its
result can be compared with NeMo's own greedy decoding and between backends. Arrays in and out are numpy (or
whatever the callables accept and return: the loop only slices the encoder output and reads the logits).

The semantics are NeMo's ``GreedyBatchedTDTInfer`` (strategy ``greedy_batch``, the Parakeet configs' default),
whose work is done by ``GreedyBatchedTDTLabelLoopingComputer.torch_impl`` in
``nemo/collections/asr/parts/submodules/transducer_decoding/tdt_label_looping.py``. Where NeMo decided a detail:

- Start: the decoder is run once on the blank id (blank is the start symbol; ``blank_id`` = vocabulary size) from
  ``initial_state`` (NeMo: ``decoder.predict(blank, initialize_state(...))``, zeros for the LSTM). The
  non-batched ``GreedyTDTInfer`` passes ``y=None`` instead, a zero embedding, which is the same input because the
  blank is the embedding's padding index (``blank_as_pad``).
- Each joint evaluation's logits split into the first ``blank_id + 1`` (tokens then blank) and the last
  ``len(durations)``; the token is the argmax of the first part, the duration ``durations[argmax of the second]``
  (the value, not the index). Ties go to the lowest index, as ``torch.max`` on CPU and ``numpy.argmax`` do.
  ``RNNTJoint.joint`` on CPU returns ``log_softmax`` over the whole row (tokens, blank and durations together);
  that subtracts one constant per row, so neither the decisions nor the margins depend on whether it is applied.
- Blank: nothing is emitted, the decoder output and state stay as they were, time advances by the duration, a
  duration of 0 counting as 1 (``durations.masked_fill_(durations == 0 & blank_mask, 1)``).
- Non-blank token: emitted with the frame it was found at and its duration as predicted (0 included, NeMo's
  ``token_duration``); the decoder is advanced on it at once (NeMo calls ``decoder.predict`` on every label found,
  even when the duration then ends decoding); time advances by the duration, so 0 means "stay on this frame".
- Symbols per frame: only non-blank tokens count (NeMo's ``BatchedHyps.last_nb_timestamp_lasts``: tokens emitted
  at the frame of the last token). When a token with duration 0 is the ``max_symbols_per_frame``-th on its frame,
  time advances by one frame (NeMo's "force blank" step). A token whose duration moves time on is never forced.
- End: the loop runs while the time index is below ``encoder_length`` (NeMo's ``active_mask``); frames at or past
  it are never evaluated, so padding frames of a fixed window play no part. A token found before the end is kept
  even if its duration jumps past the end; a jump past the end simply ends decoding.

NeMo's non-batched ``GreedyTDTInfer`` (strategy ``greedy``, ``rnnt_greedy_decoding.py``) emits the same tokens
except in one corner, which this module does not follow: it counts every joint evaluation on a frame (blanks
included) and, once it has made ``max_symbols`` of them, adds one frame *on top of* the last step's duration, so
when that last step has a duration ``d > 0`` it moves ``d + 1`` frames where the batched decoder moves ``d``
(with ``max_symbols=1`` this happens after every step). The batched behaviour is followed because it is the
strategy Parakeet models are configured and shipped with, and the extra frame is an artefact of where the counter
is checked, not a decision of the model. (``GreedyTDTInfer`` also re-evaluates the joint on a blank of duration 0
until its counter runs out before advancing one frame; the tokens are the same, the joint count is not.)
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

State = TypeVar("State")


@dataclass
class TDTResult(Generic[State]):
    """What one greedy TDT decode produced.

    Per emitted token: ``tokens`` (non-blank ids), ``frames`` (the encoder frame it was emitted at),
    ``durations`` (its predicted duration in frames, the value) and ``token_steps`` (the joint step that emitted
    it). Per joint evaluation ("step"): ``step_frames``, ``step_tokens`` (argmax over tokens+blank, blank
    included), ``step_durations`` (the predicted duration, before a blank's 0 is read as 1), ``margins`` (top-1
    minus top-2 logit over tokens+blank) and ``duration_margins`` (the same over the duration logits). Where two
    backends' decodes part, a small margin at the step where they part says the flip is within numerical noise.
    ``steps`` counts joint evaluations, ``decoder_calls`` decoder evaluations (the start symbol included)."""

    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)
    token_steps: list[int] = field(default_factory=list)
    steps: int = 0
    margins: list[float] = field(default_factory=list)
    duration_margins: list[float] = field(default_factory=list)
    step_frames: list[int] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    step_durations: list[int] = field(default_factory=list)
    decoder_calls: int = 0
    state: State | None = None  # the decoder state after the last emitted token (after the start symbol if none)
    decoder_output: Any = None  # the decoder output that goes with ``state``

    @property
    def min_margin(self) -> float:
        """The smallest token margin along the path (``inf`` when the joint was never evaluated)."""
        return min(self.margins, default=float("inf"))


def _top2_gap(values: np.ndarray) -> float:
    if values.size < 2:
        return float("inf")
    top = np.partition(values.astype(np.float64), values.size - 2)[-2:]
    return float(top[1] - top[0])


def _as_length(encoder_length: Any) -> int:
    """``encoder_length`` as a python int: an int, a numpy integer, or the ``[1]`` integer array the encoder
    component returns."""
    if isinstance(encoder_length, (bool, np.bool_)):
        raise ValueError(f"encoder_length: expected an integer, got {encoder_length!r}")
    if isinstance(encoder_length, np.ndarray) or hasattr(encoder_length, "__array__"):
        arr = np.asarray(encoder_length)
        if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"encoder_length: expected an integer or a one-element integer array, "
                             f"got shape {list(arr.shape)} dtype {arr.dtype}")
        return int(arr.reshape(()))
    try:
        return operator.index(encoder_length)
    except TypeError:
        raise ValueError(f"encoder_length: expected an integer, got {type(encoder_length).__name__} "
                         f"{encoder_length!r}") from None


def _check_durations(durations: Sequence[int]) -> list[int]:
    try:
        values = list(durations)
    except TypeError:
        raise ValueError(f"durations: expected a sequence of non-negative integers, got {durations!r}") from None
    if not values:
        raise ValueError("durations: expected at least one duration, got an empty sequence")
    return [_integer(f"durations[{i}]", d, 0, "a non-negative integer") for i, d in enumerate(values)]


def _integer(name: str, value: Any, minimum: int, expected: str) -> int:
    """``value`` as a python int ``>= minimum`` (bools and floats refused), else a ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected {expected}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return number


@dataclass(frozen=True)
class Decision:
    """What a joint+decision component returns instead of logits: the argmax token (blank included) and the argmax
    duration's *index* into the model's durations. ``joint_step`` may return one; its margins are then unknown (NaN)."""

    token: int
    duration_index: int


def greedy_tdt_decode(encoder_out: np.ndarray,
                      encoder_length: int,
                      decoder_step: Callable[[int, State], tuple[Any, State]],
                      joint_step: Callable[[np.ndarray, Any], np.ndarray],
                      initial_state: State, *, blank_id: int, durations: Sequence[int],
                      max_symbols_per_frame: int = 10) -> TDTResult[State]:
    """Greedy TDT decoding of one utterance, with NeMo ``greedy_batch`` semantics (module docstring).

    Args:
        encoder_out: ``[1, D, T]``, channel-first as the encoder component returns it (floating point).
        encoder_length: valid frames, ``0 <= encoder_length <= T``; frames from it on are never looked at. An int
            or the encoder component's ``[1]`` integer array.
        decoder_step: ``(token id, state) -> (decoder output, new state)``; the output (``[1, H, 1]`` for the
            Parakeet components) is handed to ``joint_step`` unchanged, the state back to ``decoder_step``.
            Called once on ``blank_id`` first, then once per emitted token.
        joint_step: ``(encoder frame [1, D, 1], decoder output) -> logits`` of any shape whose last axis holds
            ``blank_id + 1 + len(durations)`` values and which holds nothing else (``[1, 1, 1, V+1+N]``).
        initial_state: the decoder state before the start symbol (zeros for NeMo's LSTM).
        blank_id: the blank's id, which is the vocabulary size ``V`` (tokens are ``0..V-1``); ``>= 1``.
        durations: the model's durations in frames (Parakeet: ``[0, 1, 2, 3, 4]``), non-negative integers.
        max_symbols_per_frame: at most this many tokens are emitted on one frame (NeMo ``greedy.max_symbols``);
            ``>= 1``. NeMo reads 0 or ``None`` as "no limit", which can loop forever; here a limit is required.

    Returns:
        A :class:`TDTResult`.

    Raises:
        ValueError: on malformed arguments, or when ``joint_step`` returns logits of the wrong size or with NaN.
    """
    arr = np.asarray(encoder_out)
    if arr.ndim != 3 or arr.shape[0] != 1:
        raise ValueError(f"encoder_out: expected shape [1, D, T] (channel-first, batch 1), got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"encoder_out: expected a floating-point array, got dtype {arr.dtype}")
    total_frames = arr.shape[2]
    length = _as_length(encoder_length)
    if not 0 <= length <= total_frames:
        raise ValueError(f"encoder_length: expected 0 <= encoder_length <= T = {total_frames} "
                         f"(encoder_out {list(arr.shape)}), got {length}")
    blank_id = _integer("blank_id", blank_id, 1, "an integer >= 1 (the vocabulary size)")
    duration_values = _check_durations(durations)
    max_symbols = _integer("max_symbols_per_frame", max_symbols_per_frame, 1, "an integer >= 1")
    num_tokens = blank_id + 1
    num_logits = num_tokens + len(duration_values)

    result: TDTResult[State] = TDTResult()
    decoder_output, state = decoder_step(blank_id, initial_state)
    result.decoder_calls = 1
    last_token_frame = -1  # frame of the last emitted token
    tokens_on_frame = 0  # tokens emitted at last_token_frame
    t = 0
    while t < length:
        out = joint_step(np.ascontiguousarray(arr[:, :, t:t + 1]), decoder_output)
        if isinstance(out, Decision):
            if not 0 <= out.token <= blank_id or not 0 <= out.duration_index < len(duration_values):
                raise ValueError(f"joint_step: decision {out} out of range (tokens 0..{blank_id}, "
                                 f"{len(duration_values)} durations) at frame {t}")
            token, duration = int(out.token), duration_values[int(out.duration_index)]
            token_margin = duration_margin = float("nan")
        else:
            token, duration, token_margin, duration_margin = _decide(out, num_tokens, num_logits, duration_values, t,
                                                                     result.steps, blank_id)
        result.steps += 1
        result.step_frames.append(t)
        result.step_tokens.append(token)
        result.step_durations.append(duration)
        result.margins.append(token_margin)
        result.duration_margins.append(duration_margin)

        if token == blank_id:
            t += max(duration, 1)
            continue

        result.tokens.append(token)
        result.frames.append(t)
        result.durations.append(duration)
        result.token_steps.append(result.steps - 1)
        decoder_output, state = decoder_step(token, state)
        result.decoder_calls += 1
        tokens_on_frame = tokens_on_frame + 1 if t == last_token_frame else 1
        last_token_frame = t
        t += duration
        if duration == 0 and tokens_on_frame >= max_symbols:
            t += 1

    result.state = state
    result.decoder_output = decoder_output
    return result


def _decide(out, num_tokens: int, num_logits: int, duration_values: list[int], t: int, step: int, blank_id: int):
    """(token, duration, token margin, duration margin) from one step's logits."""
    logits = np.asarray(out)
    if logits.ndim == 0 or logits.shape[-1] != num_logits or logits.size != num_logits:
        raise ValueError(f"joint_step: expected logits whose last axis is blank_id + 1 + len(durations) = "
                         f"{blank_id} + 1 + {len(duration_values)} = {num_logits} and nothing else, got shape "
                         f"{list(logits.shape)} (at frame {t})")
    row = logits.reshape(num_logits)
    if np.isnan(row).any():
        raise ValueError(f"joint_step: logits contain NaN at frame {t} (step {step})")
    token_logits, duration_logits = row[:num_tokens], row[num_tokens:]
    return (int(np.argmax(token_logits)), duration_values[int(np.argmax(duration_logits))],
            _top2_gap(token_logits), _top2_gap(duration_logits))
