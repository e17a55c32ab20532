"""The executor's fast path: a step list compiled into one small Python function per step.

``Executor.run`` without ``trace`` or ``overrides`` goes through here; tracing and what-if overrides keep the
plain loop of ``Executor._run``. Both compute the same values bit for bit and raise the same errors: the fast
path only removes interpretive overhead, which dominates programs of many tiny ops (a [1, 16] add costs torch
under 1 us; the plain loop spent 2-4 us per op around it).

Per step, at compile time:

- the kernel call is generated as Python source with the op's input names as keywords and the slots baked in,
  so a call builds no kwargs dict and goes through no wrapper (one generated factory per call signature,
  shared by every step of that signature);
- the output handling keeps only what the declared type asks for: the dtype cast check when the type has a
  dtype, the fp16 rounding when it is typed fp16 (fp16 precision), the shape check when the shape is static;
- fp16 rounding is left out where it is a no-op: a value-preserving op (``VALUE_PRESERVING``: data movement,
  relu, max ...) whose float inputs all hold fp16 values (each produced by a step that rounds it, or a
  constant exactly representable in fp16) outputs only fp16 values -- proved on the step list being compiled,
  so the variants of ``with_fp16_ops`` (which store some values fp32) get their own proof;
- where the kernel is known to return a tensor of its own (``FRESH_OUTPUT``: arithmetic, activations,
  linear algebra, normalisation), the fp16 rounding is done in place (one fp16 temporary instead of an fp16
  and a new fp32 tensor).

- a kernel with a specializer (``ops.specializer``) gets it applied to the step's constants: the step then
  calls a function of its variable inputs only, with the constant attributes parsed once (the registered kernel
  only: a ``with_fp16_ops`` rounding wrapper keeps the kernel);
- ``add``/``sub``/``mul``/``relu`` of float-typed variables (``_INLINE``) are generated as the torch expression the
  kernel computes; their output is an fp32 tensor for sure (no class or dtype check), and its shape check is left
  out when the inputs' static shapes, each checked when produced, broadcast to the declared shape.

Kernel errors are reported as ``Executor._call`` reports them (the op named), shape errors as
``Executor._finish`` does: the generated code hands the failing case over to those.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .ops import REGISTRY, SPECIALIZERS
from .program import Operation, TensorType

FLOAT_DTYPES = frozenset({"fp16", "fp32", "fp64", "bf16"})

# Ops whose float outputs hold only values of their float inputs (or zeros, or signs): given inputs exactly
# representable in fp16, so is every output value, and rounding it to fp16 changes nothing.
VALUE_PRESERVING = frozenset({
    "identity", "reshape", "reshape_like", "transpose", "squeeze", "expand_dims", "flatten2d", "slice_by_index",
    "slice_by_size", "concat", "split", "stack", "tile", "reverse", "pad", "gather", "gather_along_axis",
    "gather_nd", "depth_to_space", "space_to_depth", "pixel_shuffle", "pixel_unshuffle", "sliding_windows",
    "relu", "relu6", "abs", "sign", "maximum", "minimum", "clip", "threshold", "reduce_max", "reduce_min",
    "max_pool", "select", "band_part",
})

# Ops whose registered kernel always returns a tensor it allocated (or a view of one), referenced nowhere else:
# its fp16 rounding may be done in place.
FRESH_OUTPUT = frozenset({
    "add", "sub", "mul", "real_div", "floor_div", "mod", "pow", "square", "acos", "asin", "atan", "atanh",
    "ceil", "floor", "cos", "cosh", "sin", "sinh", "tan", "tanh", "erf", "exp", "sqrt", "round", "exp2",
    "inverse", "log", "rsqrt", "sigmoid", "silu", "softsign", "softplus", "softmax", "elu", "leaky_relu", "gelu",
    "linear", "matmul", "batch_norm", "layer_norm", "l2_norm", "conv",
})

_NO_ROUND, _ROUND_COPY, _ROUND_IN_PLACE = 0, 1, 2


@dataclass
class FastPlan:
    steps: list  # the step list this plan was compiled from (the cache key, by identity)
    n_slots: int
    input_op: Any  # what input errors name
    inputs: list  # (name, slot, rule)
    runners: list  # one function(values) per step
    outputs: list  # (name, is_constant, slot-or-value)


def fp16_exact(value: Any) -> bool:
    """Whether a constant holds only values exactly representable in fp16 (non-float constants: True)."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return bool(np.isnan(value)) or float(np.float16(value)) == value
    if isinstance(value, (list, tuple)):
        return all(fp16_exact(v) for v in value)
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            return True
        rounded = value.to(torch.float16).to(torch.float32)
        return bool(((rounded == value) | torch.isnan(value)).all())
    return False


def compile_plan(executor, steps: list) -> FastPlan:
    name_of = executor.__dict__["_name_of_slot"] = {slot: name for name, slot in executor.slot_of.items()}

    def non_float(slot: int) -> bool:
        type_ = executor.types.get(name_of.get(slot))
        return isinstance(type_, TensorType) and type_.dtype not in FLOAT_DTYPES

    inputs, exact = [], set()
    for v in executor.function.inputs:
        slot, rule = executor.slot_of[v.name], executor._rule(v.type)
        inputs.append((v.name, slot, rule))
        if rule.round_fp16 or non_float(slot):
            exact.add(slot)
    runners = []
    for step in steps:
        rounds = any(rule.round_fp16 for rule in step.out_rules)
        skip = rounds and step.op.op_type in VALUE_PRESERVING and _inputs_exact(step, exact, non_float)
        runners.append(_runner(executor, step, skip))
        for slot, rule in zip(step.out_slots, step.out_rules):
            if rule.round_fp16 or non_float(slot):
                exact.add(slot)
    outputs = []
    for name in executor.function.outputs:
        if name in executor.constants:
            outputs.append((name, True, executor.constants[name]))
        else:
            outputs.append((name, False, executor.slot_of[name]))
    from .executor import _INPUT_OP

    return FastPlan(steps, len(executor.slot_of), _INPUT_OP, inputs, runners, outputs)


def _inputs_exact(step, exact: set, non_float: Callable[[int], bool]) -> bool:
    for _, slot in step.var_kwargs:
        if slot not in exact and not non_float(slot):
            return False
    for _, items in step.list_kwargs:
        for is_slot, v in items:
            if (is_slot and v not in exact and not non_float(v)) or (not is_slot and not fp16_exact(v)):
                return False
    return all(fp16_exact(v) for v in step.const_kwargs.values())


def run_plan(executor, plan: FastPlan, feeds) -> dict:
    values: list[Any] = [None] * plan.n_slots
    finish, input_op = executor._finish, plan.input_op
    for name, slot, rule in plan.inputs:
        values[slot] = finish(feeds[name], rule, input_op, 0)
    for run in plan.runners:
        run(values)
    return {name: (value if is_constant else values[value]) for name, is_constant, value in plan.outputs}


# ---- one generated function per step ------------------------------------------------------------------------
_FACTORIES: dict[tuple, Callable] = {}


def _runner(executor, step, skip_round: bool):
    op: Operation = step.op
    kernel = REGISTRY.get(op.op_type)
    fresh = kernel is not None and step.fn is kernel.fn and op.op_type in FRESH_OUTPUT and len(step.out_slots) == 1
    var_params = tuple(p for p, _ in step.var_kwargs)
    list_params = tuple(p for p, _ in step.list_kwargs)
    inline = _inline(executor, step, kernel, var_params)
    specs = []
    for rule in step.out_rules:
        if not rule.round_fp16 or skip_round:
            mode = _NO_ROUND
        else:
            mode = _ROUND_IN_PLACE if fresh else _ROUND_COPY
        shape = rule.shape if executor.check_shapes else None
        known = inline is not None  # an fp32 tensor for sure
        if known and shape is not None and _static_broadcast(executor, step) == tuple(shape):
            shape = None  # inputs of checked static shapes: the output's is known too
        specs.append((rule.dtype is not None, mode, shape is not None, known))
    if not all(p.isidentifier() and not keyword.iskeyword(p) for p in var_params + list_params):
        return _generic_runner(executor, step, skip_round)
    fn, consts = step.fn, dict(step.const_kwargs)
    special = _specialize(kernel, step, var_params) if not list_params else None
    if special is not None:
        fn, consts = special, {}
    signature = (var_params, list_params, bool(consts), tuple(specs), len(step.free_after), inline)
    factory = _FACTORIES.get(signature)
    if factory is None:
        factory = _FACTORIES[signature] = _make_factory(*signature)

    from .executor import op_failure, output_count_error

    def fail(exc: Exception) -> Exception:
        return op_failure(op, exc)

    def slow(value, index):  # non-tensor outputs and shape errors: the executor's own handling and messages
        return executor._finish(value, rule_of(index), op, index)

    def count_error(result):
        raise output_count_error(op, result, len(step.out_slots))

    def rule_of(index):
        rule = step.out_rules[index]
        return rule if not skip_round else _replace_round(rule)

    return factory(fn, consts, [s for _, s in step.var_kwargs],
                   [items for _, items in step.list_kwargs], list(step.out_slots),
                   [r.dtype for r in step.out_rules], [r.shape for r in step.out_rules], list(step.free_after),
                   fail, slow, count_error, torch.Tensor)


# Kernels whose common case (every input a variable typed float, so carried as an fp32 tensor) is one torch
# expression: generated inline, as the kernel itself would compute it, and the output is an fp32 tensor.
_INLINE = {
    "add": ("x", "y", "{x} + {y}"), "sub": ("x", "y", "{x} - {y}"), "mul": ("x", "y", "{x} * {y}"),
    "relu": ("x", "{x}.relu()"),
}


def _inline(executor, step, kernel, var_params):
    entry = _INLINE.get(step.op.op_type)
    if (entry is None or kernel is None or step.fn is not kernel.fn or step.const_kwargs or step.list_kwargs
            or set(var_params) != set(entry[:-1]) or len(step.out_rules) != 1
            or step.out_rules[0].dtype is not torch.float32):
        return None
    name_of = executor._name_of_slot
    for _, slot in step.var_kwargs:
        type_ = executor.types.get(name_of.get(slot))
        if not isinstance(type_, TensorType) or type_.dtype not in FLOAT_DTYPES:
            return None
    return entry[-1]


def _static_broadcast(executor, step):
    """The broadcast of the step's variable inputs' declared static shapes (each checked when produced), or None."""
    name_of = executor._name_of_slot
    shapes = []
    for _, slot in step.var_kwargs:
        type_ = executor.types.get(name_of.get(slot))
        if not isinstance(type_, TensorType) or type_.shape is None or None in type_.shape:
            return None
        shapes.append(tuple(type_.shape))
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        return None


def _specialize(kernel, step, var_params):
    """The kernel's specializer applied to this step's constants (see ``ops``), or None. Only for the registered
    kernel itself: a wrapped one (``with_fp16_ops`` rounding its inputs) keeps its wrapper."""
    make = SPECIALIZERS.get(step.op.op_type)
    if make is None or kernel is None or step.fn is not kernel.fn:
        return None
    try:
        return make(dict(step.const_kwargs), var_params)
    except Exception:  # a bad constant: the kernel reports it at run time, as the plain loop does
        return None


def _replace_round(rule):
    from dataclasses import replace

    return replace(rule, round_fp16=False)


def _make_factory(var_params, list_params, has_consts, specs, n_free, inline) -> Callable:
    n_out = len(specs)
    lines = ["def factory(fn, consts, slots, lists, outs, dtypes, shapes, frees, fail, slow, count_error, Tensor):"]
    for name, count in (("a", len(var_params)), ("l", len(list_params)), ("o", n_out), ("d", n_out),
                        ("z", n_out), ("f", n_free)):
        seq = {"a": "slots", "l": "lists", "o": "outs", "d": "dtypes", "z": "shapes", "f": "frees"}[name]
        if count:
            lines.append(f"    {', '.join(f'{name}{i}' for i in range(count))}, = {seq}")
    args = [f"{p}=values[a{i}]" for i, p in enumerate(var_params)]
    args += [f"{p}=[values[v] if s else v for s, v in l{i}]" for i, p in enumerate(list_params)]
    if has_consts:
        args.append("**consts")
    body = ["    def run(values):",
            "        try:",
            f"            r = {inline.format(**{p: f'values[a{i}]' for i, p in enumerate(var_params)})}" if inline
            else f"            r = fn({', '.join(args)})",
            "        except Exception as exc:",
            "            raise fail(exc) from exc"]
    if n_out == 1:
        body += _finish_lines("r", 0, specs[0], "        ")
        body.append("        values[o0] = r")
    else:
        body.append(f"        if not isinstance(r, (tuple, list)) or len(r) != {n_out}:")
        body.append("            count_error(r)")
        for i, spec in enumerate(specs):
            body.append(f"        r{i} = r[{i}]")
            body += _finish_lines(f"r{i}", i, spec, "        ")
            body.append(f"        values[o{i}] = r{i}")
    body += [f"        values[f{i}] = None" for i in range(n_free)]
    lines += body + ["    return run"]
    namespace: dict[str, Any] = {"torch_float16": torch.float16, "torch_float32": torch.float32}
    exec(compile("\n".join(lines), f"<runtime fast path {var_params} {list_params}>", "exec"), namespace)
    return namespace["factory"]


def _finish_lines(v: str, i: int, spec, indent: str) -> list[str]:
    has_dtype, mode, has_shape, known = spec
    if not has_dtype:  # not a tensor type: nothing to cast, round or check (as Executor._finish)
        return []
    if known:  # an fp32 tensor of the declared dtype for sure (see _inline)
        lines = ["if True:", "    pass"]
    else:
        lines = [f"if {v}.__class__ is not Tensor:", f"    {v} = slow({v}, {i})", "else:"]
        lines.append(f"    if {v}.dtype is not d{i}:")
        lines.append(f"        {v} = {v}.to(d{i})")
    if mode == _ROUND_COPY:
        lines.append(f"    {v} = {v}.to(torch_float16).to(torch_float32)")
    elif mode == _ROUND_IN_PLACE:
        lines.append(f"    {v}.copy_({v}.to(torch_float16))")
    if has_shape:
        lines.append(f"    if {v}.shape != z{i}:")
        lines.append(f"        slow({v}, {i})")
    return [indent + line for line in lines]


def _generic_runner(executor, step, skip_round: bool):
    """Input names that are not Python identifiers: the plain loop's step (``Executor._run_step``)."""
    rules = [_replace_round(r) if skip_round else r for r in step.out_rules]

    def run(values):
        executor._run_step(step, rules, values)
        for slot in step.free_after:
            values[slot] = None

    return run
