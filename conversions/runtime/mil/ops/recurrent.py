"""Recurrent ops: ``lstm``, ``gru``, ``rnn`` (MIL ``recurrent``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.recurrent

Shared conventions (all opsets; iOS17 only adds fp16, iOS18 adds ``reset_after``/``input_bias`` to ``gru``):

- ``x`` is ``[seq, batch, input]``; states are ``[batch, H]`` (``[batch, 2H]`` for a bidirectional lstm, forward
  half first). The outputs are ``(sequence, final_h[, final_c])`` with ``sequence`` ``[seq, batch, H]`` when
  ``output_sequence`` else ``[1, batch, H]`` (the last step).
- ``direction="reverse"`` walks the sequence from its end and returns the steps *in the order they were
  computed*: ``sequence[k]`` is the state after consuming ``x[seq-1-k]``, so the last step is the final state.
  This is what coremltools' own op tests check against Core ML (they feed torch the flipped input and do not
  flip the output back). A bidirectional lstm instead aligns its backward half with the input's time steps
  (``sequence[t, :, H:]`` is the backward state after consuming ``x[seq-1..t]``, like torch); without
  ``output_sequence`` it returns ``[forward final, backward final]``.
- Activations are MIL's with their default parameters: ``scaled_tanh`` is ``tanh`` (alpha = beta = 1),
  ``hard_sigmoid``/``sigmoid_hard`` is ``clip(0.2 x + 0.5, 0, 1)``.
- Every step computes in fp32; nothing is rounded between steps (the executor rounds the op's outputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import register, specializer
from ._util import floating, scalar


def _hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "scaled_tanh": torch.tanh,
    "relu": torch.relu,
    "linear": lambda x: x,
    "hard_sigmoid": _hard_sigmoid,
    "sigmoid_hard": _hard_sigmoid,
}


def resolve_activation(name) -> Callable[[torch.Tensor], torch.Tensor]:
    name = str(scalar(name))
    fn = ACTIVATIONS.get(name.lower())
    if fn is None:
        raise NotImplementedError(f"recurrent activation {name!r} is not supported (known: {sorted(ACTIVATIONS)})")
    return fn


def _direction(direction, allowed: tuple[str, ...]) -> str:
    direction = str(scalar(direction))
    if direction not in allowed:
        raise NotImplementedError(f"direction {direction!r} is not supported (expected one of {allowed})")
    return direction


def _input_projection(x: torch.Tensor, weight_ih, bias) -> torch.Tensor:
    """``x @ W_ih^T (+ bias)`` for every step at once: ``[seq, batch, gates*H]``."""
    proj = x @ floating(weight_ih).T
    return proj if bias is None else proj + floating(bias)


def _steps(seq_len: int, reverse: bool):
    return range(seq_len - 1, -1, -1) if reverse else range(seq_len)


def _check_state(op: str, name: str, state: torch.Tensor, x: torch.Tensor, width: int) -> None:
    """An initial state must be ``[B, width]`` with ``B`` the batch of ``x`` (``[T, B, I]``).

    The spec (coremltools' iOS15 ``lstm``/``gru``/``rnn`` defs: ``x: <s, b, I>``, ``initial_h: <b, H>``,
    ``<b, DIRECTIONS*H>`` for lstm) gives both the same ``b`` and says nothing of broadcasting; its type inference
    does not look at the states at all, so a converted program can carry a mismatch (coremltools' torch
    ``pack_padded_sequence`` conversion can). Torch would broadcast such a state silently (over the batch, or
    into outputs of the wrong shape), so say what is wrong instead.
    """
    batch = x.shape[1]
    if state.dim() != 2 or state.shape[0] != batch or state.shape[1] != width:
        got = list(state.shape)
        cause = (f"its batch {got[0]} does not match the batch {batch} of input 'x' {list(x.shape)} ([T, B, I])"
                 if state.dim() == 2 and got[0] != batch else f"input 'x' is {list(x.shape)} ([T, B, I])")
        raise ValueError(f"{op}: initial state '{name}' must have shape [B, {'DIRECTIONS*' if op == 'lstm' else ''}H] "
                         f"= {[batch, width]}, got {got}: {cause}")


def _sequence_output(states: list[torch.Tensor], output_sequence) -> torch.Tensor:
    """Stack per-step states (in computation order) as ``[seq, b, H]``, or keep the last one as ``[1, b, H]``."""
    return torch.stack(states) if bool(scalar(output_sequence)) else states[-1].unsqueeze(0)


# ---- lstm ------------------------------------------------------------------------------------------------
def _lstm_direction(x, h, c, weight_ih, weight_hh, bias, peephole, reverse, acts, clip):
    """One direction of an lstm; gate rows are ordered ``[input, forget, output, cell]`` (MIL's ifoz).

    Returns the per-step hidden states in computation order and the final ``(h, c)``.
    """
    recurrent_act, cell_act, out_act = acts
    gates_x = _input_projection(x, weight_ih, bias)
    w_hh_t = floating(weight_hh).T
    hidden = w_hh_t.shape[0]
    p_i, p_f, p_o = (floating(peephole).reshape(3, hidden) if peephole is not None else torch.zeros(3, hidden))
    states = []
    for t in _steps(x.shape[0], reverse):
        g_i, g_f, g_o, g_z = (gates_x[t] + h @ w_hh_t).chunk(4, dim=-1)
        i = recurrent_act(g_i + c * p_i)
        f = recurrent_act(g_f + c * p_f)
        c = f * c + i * cell_act(g_z)
        if clip is not None:
            c = torch.clamp(c, -clip, clip)  # the cell state, as coremltools' tests check on device
        o = recurrent_act(g_o + c * p_o)
        h = o * out_act(c)
        states.append(h)
    return states, h, c


@register("lstm")
def lstm(x, initial_h, initial_c, weight_ih, weight_hh, bias=None, peephole=None, weight_ih_back=None,
         weight_hh_back=None, bias_back=None, peephole_back=None, direction="forward", output_sequence=False,
         recurrent_activation="sigmoid", cell_activation="tanh", activation="tanh", clip=None):
    """MIL lstm. ``clip`` bounds the cell state to ``[-clip, clip]`` after each update; peepholes (``[3H]``,
    order ``[input, forget, output]``) see the previous cell state for the input/forget gates and the new one
    for the output gate.
    """
    direction = _direction(direction, ("forward", "reverse", "bidirectional"))
    acts = (resolve_activation(recurrent_activation), resolve_activation(cell_activation),
            resolve_activation(activation))
    clip = None if clip is None else float(scalar(clip))
    x, h0, c0 = floating(x), floating(initial_h), floating(initial_c)
    width = floating(weight_hh).shape[1] * (2 if direction == "bidirectional" else 1)
    _check_state("lstm", "initial_h", h0, x, width)
    _check_state("lstm", "initial_c", c0, x, width)
    if direction != "bidirectional":
        states, h, c = _lstm_direction(x, h0, c0, weight_ih, weight_hh, bias, peephole, direction == "reverse",
                                       acts, clip)
        return _sequence_output(states, output_sequence), h, c
    if weight_ih_back is None or weight_hh_back is None:
        raise ValueError("a bidirectional lstm needs weight_ih_back and weight_hh_back")
    hidden = h0.shape[-1] // 2
    fwd, h_f, c_f = _lstm_direction(x, h0[:, :hidden], c0[:, :hidden], weight_ih, weight_hh, bias, peephole,
                                    False, acts, clip)
    bwd, h_b, c_b = _lstm_direction(x, h0[:, hidden:], c0[:, hidden:], weight_ih_back, weight_hh_back, bias_back,
                                    peephole_back, True, acts, clip)
    if bool(scalar(output_sequence)):
        sequence = torch.cat([torch.stack(fwd), torch.stack(bwd[::-1])], dim=-1)  # backward half time-aligned
    else:
        sequence = torch.cat([h_f, h_b], dim=-1).unsqueeze(0)
    return sequence, torch.cat([h_f, h_b], dim=-1), torch.cat([c_f, c_b], dim=-1)


# ---- gru -------------------------------------------------------------------------------------------------
@register("gru")
def gru(x, initial_h, weight_ih, weight_hh, bias=None, direction="forward", output_sequence=False,
        recurrent_activation="sigmoid", activation="tanh", reset_after=False, input_bias=None):
    """MIL gru; gate rows are ordered ``[reset, output (candidate), update]``.

    ``reset_after=False`` (the only mode before iOS18) resets the state *before* the recurrent product:
    ``o = act(W_o x + R_o (r * h) + b_o)`` (the classic GRU, which is what coremltools' op tests check on
    device; torch's ``nn.GRU`` is not this op). ``reset_after=True`` (iOS18) is torch's form,
    ``o = act(W_o x + input_bias_o + r * (R_o h + bias_o))``: ``input_bias`` is added to the input
    projection and ``bias`` to the recurrent one. Without ``reset_after`` both biases are simply added.
    Then ``h = (1 - z) * o + z * h``.
    """
    out_act = resolve_activation(activation)
    reverse = _direction(direction, ("forward", "reverse")) == "reverse"
    gate_act = resolve_activation(recurrent_activation)
    reset_after = bool(scalar(reset_after))
    x, h = floating(x), floating(initial_h)
    w_hh_t = floating(weight_hh).T
    _check_state("gru", "initial_h", h, x, w_hh_t.shape[0])
    if reset_after:
        gates_x = _input_projection(x, weight_ih, input_bias)
        recurrent_bias = torch.zeros(w_hh_t.shape[1]) if bias is None else floating(bias)
    else:
        gates_x = _input_projection(x, weight_ih, bias)
        if input_bias is not None:
            gates_x = gates_x + floating(input_bias)
        recurrent_bias = None
    w_r, w_o, w_z = w_hh_t.chunk(3, dim=-1)
    states = []
    for t in _steps(x.shape[0], reverse):
        x_r, x_o, x_z = gates_x[t].chunk(3, dim=-1)
        if reset_after:
            h_r, h_o, h_z = (h @ w_hh_t + recurrent_bias).chunk(3, dim=-1)
            r = gate_act(x_r + h_r)
            o = out_act(x_o + r * h_o)
        else:
            h_z = h @ w_z
            r = gate_act(x_r + h @ w_r)
            o = out_act(x_o + (r * h) @ w_o)
        z = gate_act(x_z + h_z)
        h = (1 - z) * o + z * h
        states.append(h)
    return _sequence_output(states, output_sequence), h


# ---- rnn -------------------------------------------------------------------------------------------------
@register("rnn")
def rnn(x, initial_h, weight_ih, weight_hh, bias=None, direction="forward", output_sequence=False,
        activation="tanh"):
    """MIL rnn: ``h = act(W_ih x + W_hh h + bias)`` (``bias`` is the sum of torch's two biases)."""
    act = resolve_activation(activation)
    reverse = _direction(direction, ("forward", "reverse")) == "reverse"
    x, h = floating(x), floating(initial_h)
    gates_x = _input_projection(x, weight_ih, bias)
    w_hh_t = floating(weight_hh).T
    _check_state("rnn", "initial_h", h, x, w_hh_t.shape[0])
    states = []
    for t in _steps(x.shape[0], reverse):
        h = act(gates_x[t] + h @ w_hh_t)
        states.append(h)
    return _sequence_output(states, output_sequence), h


# ---- specializer: an lstm with constant weights and attributes (see ``ops.specializer``) ----------------------
@specializer("lstm")
def _lstm_special(consts, var_params):
    """The common lstm (one direction, default activations, no peephole, no clip, constant weights): the weights'
    fp32 views and the attributes prepared once, and one step with fewer ops than :func:`_lstm_direction` for the
    same values -- without a peephole the gate pre-activations are used as they are (the general step adds
    ``c * 0``), and the three sigmoid gates ``[i, f, o]``, adjacent in MIL's row order, go through one sigmoid.
    Only for ``H`` a multiple of 32 and small batches: then no elementwise op has a partial vector or a thread
    split, so each element is computed exactly as gate by gate (bit for bit the kernel's values).
    Anything else: the kernel."""
    if not set(var_params) <= {"x", "initial_h", "initial_c"}:
        return None
    defaults = {"direction": "forward", "output_sequence": False, "recurrent_activation": "sigmoid",
                "cell_activation": "tanh", "activation": "tanh"}
    attrs = {k: scalar(consts.get(k, v)) for k, v in defaults.items()}
    if (attrs["direction"] not in ("forward", "reverse") or attrs["recurrent_activation"] != "sigmoid"
            or attrs["cell_activation"] != "tanh" or attrs["activation"] != "tanh"
            or any(consts.get(k) is not None for k in ("peephole", "clip"))
            or not all(isinstance(consts.get(k), torch.Tensor) for k in ("weight_ih", "weight_hh"))):
        return None
    consts = dict(consts)
    w_ih_t, w_hh_t = floating(consts["weight_ih"]).T, floating(consts["weight_hh"]).T
    bias = None if consts.get("bias") is None else floating(consts["bias"])
    hidden = w_hh_t.shape[0]
    if w_hh_t.shape[1] != 4 * hidden:
        return None
    if hidden % 32:
        return None
    reverse, sequence = attrs["direction"] == "reverse", bool(attrs["output_sequence"])
    sigmoid, tanh = torch.sigmoid, torch.tanh
    h3 = 3 * hidden

    def run(**inputs):
        args = {**consts, **inputs}
        x, h, c = (args.get(k) for k in ("x", "initial_h", "initial_c"))
        if (not all(v.__class__ is torch.Tensor and v.dtype is torch.float32 for v in (x, h, c)) or x.dim() != 3
                or x.shape[0] == 0 or x.shape[1] * 4 * hidden >= 32768):  # large: ops may split across threads
            return lstm(**args)
        _check_state("lstm", "initial_h", h, x, hidden)
        _check_state("lstm", "initial_c", c, x, hidden)
        proj = x @ w_ih_t
        gates_x = (proj if bias is None else proj + bias).unbind(0)
        states = []
        for t in _steps(len(gates_x), reverse):
            gates = gates_x[t] + h @ w_hh_t
            i, f, o = sigmoid(gates[:, :h3]).chunk(3, dim=-1)
            c = f * c + i * tanh(gates[:, h3:])
            h = o * tanh(c)
            states.append(h)
        return _sequence_output(states, sequence), h, c

    return run
