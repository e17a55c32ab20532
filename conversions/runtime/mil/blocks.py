"""Control flow of the portable runtime: ``cond`` and ``while_loop`` compiled into ordinary executor steps.

Semantics follow coremltools' iOS15 ``control_flow`` definitions, as coremltools 9 serializes them:

- ``cond(pred)`` has two blocks without inputs: ``blocks[0]`` runs when ``pred`` is true, ``blocks[1]`` when it
  is false; the op's outputs are the outputs of the block that ran.
- ``while_loop(loop_vars=...)`` has two blocks, each taking the loop variables as block inputs: ``blocks[0]``
  (the condition) returns one bool, ``blocks[1]`` (the body) returns the new loop variables. The condition runs
  first (a loop may run zero times); the op's outputs are the loop variables when the condition turns false.

Each block is compiled, once at load time, into a child :class:`~.executor.Executor` with the parent's precision
and shape checking, so fp16 storage is emulated inside blocks exactly as at the top level. The op itself becomes
an ordinary step whose kernel is a closure over those child executors. A block may read variables of enclosing
scopes (also through blocks nested in it): those that are constants are handed to the child as constants, the
others -- its *free variables* -- are passed to the step as one extra variadic input, ``_free``, so the parent's
free planning sees them as reads like any other input.

Limits. ``predict(trace=True)`` records only the top-level op of a block op (its outputs), not the ops run
inside its blocks; ``overrides`` and ``with_fp16_ops`` apply to top-level ops only. A ``while_loop`` that has
run :data:`MAX_LOOP_ITERATIONS` iterations and whose condition is still true raises, naming the op.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ModelPackageError
from .ops import Kernel, register
from .program import Binding, Block, Function, Operation, Var

MAX_LOOP_ITERATIONS = 10_000_000
BLOCK_OPS = ("cond", "while_loop")
FREE_PARAM = "_free"  # the extra variadic input carrying a block op's free variables


@register(*BLOCK_OPS)
def _block_op_placeholder(**_: Any):
    # Registered so that supported_ops() lists them; the executor compiles these ops through compile_block_op.
    raise AssertionError("cond / while_loop are compiled by the executor from their blocks, never called directly")


def free_variables(block: Block) -> list[str]:
    """Variables ``block`` reads (its ops, blocks nested in them, its outputs) that it does not define itself, in
    order of first use."""
    defined = {v.name for v in block.inputs}
    free: dict[str, None] = {}

    def need(name: str) -> None:
        if name not in defined:
            free.setdefault(name)

    for op in block.operations:
        for bindings in op.inputs.values():
            for b in bindings:
                if b.var is not None:
                    need(b.var)
        for inner in op.blocks:
            for name in free_variables(inner):
                need(name)
        defined.update(out.name for out in op.outputs)
    for name in block.outputs:
        need(name)
    return list(free)


def compile_block_op(parent, op: Operation) -> tuple[Kernel, dict[str, list[Binding]]]:
    """The kernel of a ``cond`` / ``while_loop`` op and its inputs as the parent executor should bind them (the
    op's own inputs plus ``_free``, the free variables of its blocks that are not constants).

    The kernel is a closure over one child executor per block, compiled here with ``parent``'s precision and
    shape checking. Tracing records the block op only (see the module docstring)."""
    where = f"{parent.source}: op {op.name!r} ({op.op_type})"
    if op.op_type not in BLOCK_OPS:
        raise NotImplementedError(
            f"MIL op type {op.op_type!r} (op {op.name!r}, opset {parent.function.opset}) has nested blocks; the "
            f"portable runtime executes blocks of {' and '.join(BLOCK_OPS)} only")
    if len(op.blocks) != 2:
        raise ModelPackageError(f"{where} has {len(op.blocks)} blocks; {op.op_type} needs 2 "
                                f"({'true and false branch' if op.op_type == 'cond' else 'condition and body'})")
    free: dict[str, None] = {}
    for block in op.blocks:
        for name in free_variables(block):
            free.setdefault(name)
    constants, runtime_free = {}, []
    for name in free:
        if name in parent.constants:
            constants[name] = parent.constants[name]
        elif name in parent.slot_of:
            runtime_free.append(name)
        else:  # normally caught earlier by program.check_function
            raise ModelPackageError(f"{where}: a block reads {name!r}, which is not defined before the op")
    children = [_child(parent, op, i, block, constants, runtime_free) for i, block in enumerate(op.blocks)]
    if op.op_type == "cond":
        fn = _cond_kernel(op, where, children, runtime_free)
        variadic = frozenset({FREE_PARAM})
    else:
        fn = _while_kernel(op, where, children, runtime_free)
        variadic = frozenset({FREE_PARAM, "loop_vars"})
    inputs = dict(op.inputs)
    if runtime_free:
        inputs[FREE_PARAM] = [Binding(var=name) for name in runtime_free]
    return Kernel(op.op_type, fn, variadic), inputs


def _child(parent, op: Operation, index: int, block: Block, constants: dict[str, Any], runtime_free: list[str]):
    own_free = set(free_variables(block))
    inputs = list(block.inputs) + [Var(name, parent.types[name]) for name in runtime_free if name in own_free]
    function = Function(f"{parent.function.name}/{op.name}/block{index}", parent.function.opset, inputs,
                        block.operations, list(block.outputs))
    child = type(parent)(function, precision=parent.precision, check_shapes=parent.check_shapes, source=parent.source,
                         outer_constants={k: v for k, v in constants.items() if k in own_free})
    return child, [v.name for v in block.inputs], list(block.outputs)


def _truth(value: Any, what: str) -> bool:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{what} must be a single bool, got a tensor of shape {list(value.shape)}")
        return bool(value.reshape(-1)[0])
    return bool(value)


def _cond_kernel(op: Operation, where: str, children, runtime_free: list[str]):
    n_out = len(op.outputs)
    for i, (_, block_inputs, block_outputs) in enumerate(children):
        if block_inputs or len(block_outputs) != n_out:
            raise ModelPackageError(f"{where}: branch {i} takes {len(block_inputs)} inputs and returns "
                                    f"{len(block_outputs)} values; a cond branch takes none and returns {n_out}")
    (true_ex, _, true_out), (false_ex, _, false_out) = children

    def cond(pred, _free=()):
        executor, names = (true_ex, true_out) if _truth(pred, "input 'pred'") else (false_ex, false_out)
        outputs = executor.run(dict(zip(runtime_free, _free)))[0]
        return outputs[names[0]] if n_out == 1 else tuple(outputs[n] for n in names)

    return cond


def _while_kernel(op: Operation, where: str, children, runtime_free: list[str]):
    n_vars = len(op.inputs.get("loop_vars", ()))
    (cond_ex, cond_in, cond_out), (body_ex, body_in, body_out) = children
    if len(op.outputs) != n_vars:
        raise ModelPackageError(f"{where} has {n_vars} loop_vars but {len(op.outputs)} outputs")
    if len(cond_in) != n_vars or len(cond_out) != 1:
        raise ModelPackageError(f"{where}: the condition block takes {len(cond_in)} inputs and returns "
                                f"{len(cond_out)} values; it must take the {n_vars} loop_vars and return one bool")
    if len(body_in) != n_vars or len(body_out) != n_vars:
        raise ModelPackageError(f"{where}: the body block takes {len(body_in)} inputs and returns {len(body_out)} "
                                f"values; it must take and return the {n_vars} loop_vars")
    (cond_name,) = cond_out

    def while_loop(loop_vars, _free=()):
        shared = dict(zip(runtime_free, _free))
        values = list(loop_vars)
        iterations = 0
        while True:
            feeds = dict(shared)
            feeds.update(zip(cond_in, values))
            if not _truth(cond_ex.run(feeds)[0][cond_name], "the condition block's output"):
                break
            if iterations >= MAX_LOOP_ITERATIONS:
                raise RuntimeError(f"while_loop {op.name!r} ran {iterations} iterations and its condition is still "
                                   f"true; stopped at the runtime's bound MAX_LOOP_ITERATIONS={MAX_LOOP_ITERATIONS}")
            feeds = dict(shared)
            feeds.update(zip(body_in, values))
            outputs = body_ex.run(feeds)[0]
            values = [outputs[name] for name in body_out]
            iterations += 1
        return values[0] if n_vars == 1 else tuple(values)

    return while_loop
