"""The portable runtime's executor: a MIL function compiled once into a flat list of steps.

At load time every constant is turned into a runtime value, ``constexpr_*`` ops (weight decompression) are
evaluated, kernels are resolved, and the last use of every variable is found so that intermediates are freed
as soon as they are dead. A prediction is then one loop over the steps.

Precision. ``precision="fp16"`` (the default) honours the program's types: a value typed fp16 is rounded to
fp16 after the op that produces it (each op computes in fp32), which is how Core ML's typed execution stores
activations. ``precision="fp32"`` skips every rounding, so the same program runs with fp32 storage; the gap
between the two isolates fp16 loss from conversion errors. Accumulation inside an op is always fp32: the
reduced-precision accumulation of the GPU/ANE is not emulated.
"""

from __future__ import annotations

import copy
import math
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..errors import ModelPackageError
from .blocks import BLOCK_OPS, compile_block_op
from .fastpath import compile_plan, run_plan
from .ops import REGISTRY
from .ops._util import TORCH_DTYPES
from .program import NUMPY_DTYPE_BY_NAME, Function, Operation, TensorType

PRECISIONS = ("fp16", "fp32")


def to_runtime(value: Any) -> Any:
    """A constant read from the program as the kernels receive it (see the kernel contract in ``ops``)."""
    if value is None or isinstance(value, str):
        return value
    arr = np.asarray(value)
    if arr.dtype == object:
        return arr.tolist()
    if arr.ndim == 0:
        return arr.item()
    if arr.dtype.kind == "f":
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if arr.dtype == np.uint16:
        arr = arr.astype(np.int32)
    elif arr.dtype in (np.uint32, np.uint64):
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(arr))


def to_numpy(value: Any, type_: TensorType | None, precision: str) -> np.ndarray:
    """A runtime value as a host array of its declared dtype (fp16 outputs stay fp32 in fp32 precision)."""
    if isinstance(value, torch.Tensor):
        arr = value.detach().numpy()
    else:
        arr = np.asarray(value)
    if isinstance(type_, TensorType) and type_.dtype in NUMPY_DTYPE_BY_NAME:
        dtype = NUMPY_DTYPE_BY_NAME[type_.dtype]
        if type_.dtype == "fp16" and precision == "fp32":
            dtype = np.float32
        if dtype is not object:
            arr = arr.astype(dtype, copy=False)
    return arr


@dataclass
class OutputRule:
    """What the executor does to one output after its kernel: dtype, fp16 rounding, shape check."""

    dtype: torch.dtype | None
    round_fp16: bool
    shape: tuple[int, ...] | None


@dataclass
class Step:
    op: Operation
    fn: Any
    const_kwargs: dict[str, Any]
    var_kwargs: list[tuple[str, int]]
    list_kwargs: list[tuple[str, list[tuple[bool, Any]]]]  # (is_slot, slot-or-value)
    out_slots: list[int]
    out_rules: list[OutputRule]
    free_after: list[int] = field(default_factory=list)


def round_to_fp16(value: torch.Tensor) -> torch.Tensor:
    """fp32 values rounded to the nearest fp16 (ties to even; overflow to inf), kept in fp32."""
    return value.to(torch.float16).to(torch.float32)


class _Running(threading.local):
    depth = 0  # executor runs in progress on this thread (a block op's child executors run inside their parent's)


_RUNNING = _Running()


class RuntimeOpError(RuntimeError):
    """An op failed while the portable runtime executed it."""


def op_failure(op: Operation, exc: Exception) -> Exception:
    """What a kernel's exception is re-raised as: the op named (``NotImplementedError`` stays one)."""
    if isinstance(exc, NotImplementedError):
        return NotImplementedError(f"op {op.name!r} ({op.op_type}): {exc}")
    return RuntimeOpError(f"op {op.name!r} ({op.op_type}) failed: {type(exc).__name__}: {exc}")


def output_count_error(op: Operation, result: Any, declared: int) -> RuntimeOpError:
    returned = len(result) if isinstance(result, (tuple, list)) else 1
    return RuntimeOpError(f"op {op.name!r} ({op.op_type}): kernel returned {returned} outputs, "
                          f"the program declares {declared}")


class Executor:
    def __init__(self, function: Function, precision: str = "fp16", check_shapes: bool = True,
                 source: str = "<MIL program>", outer_constants: Mapping[str, Any] | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.function = function
        self.source = source  # the package, for messages
        self.precision = precision
        self.check_shapes = check_shapes
        self.types: dict[str, Any] = {v.name: v.type for v in function.inputs}
        # outer_constants: constants of enclosing scopes that a nested block reads (see .blocks)
        self.constants: dict[str, Any] = dict(outer_constants or {})
        self.folded: "OrderedDict[str, Operation]" = OrderedDict()  # constexpr ops evaluated at load time
        self.slot_of: dict[str, int] = {}
        self.steps: list[Step] = []
        for v in function.inputs:
            self._slot(v.name)
        for op in function.operations:
            for out in op.outputs:
                self.types[out.name] = out.type
            self._compile(op)
        missing = [name for name in function.outputs if name not in self.slot_of and name not in self.constants]
        if missing:  # normally caught earlier by program.check_function
            raise ModelPackageError(f"{source}: function {function.name!r} returns {missing}, which no op produces")
        self._plan_frees()

    # ---- load time -------------------------------------------------------------------------------------
    def _slot(self, name: str) -> int:
        if name not in self.slot_of:
            self.slot_of[name] = len(self.slot_of)
        return self.slot_of[name]

    def _rule(self, type_) -> OutputRule:
        if not isinstance(type_, TensorType):
            return OutputRule(None, False, None)
        dtype = TORCH_DTYPES.get(type_.dtype)
        round_fp16 = type_.dtype == "fp16" and self.precision == "fp16"
        shape = type_.shape if (type_.shape is not None and None not in type_.shape) else None
        return OutputRule(dtype, round_fp16, shape)

    def _kernel(self, op: Operation):
        kernel = REGISTRY.get(op.op_type)
        if kernel is None:
            raise NotImplementedError(
                f"MIL op type {op.op_type!r} (op {op.name!r}, opset {self.function.opset}) is not supported by "
                "the portable runtime; see conversions.runtime.mil.supported_ops()"
            )
        return kernel

    def _compile(self, op: Operation) -> None:
        if op.op_type == "const":
            (binding,) = op.inputs["val"]
            # Stored values are already exactly representable in their declared type: no rounding needed.
            self.constants[op.outputs[0].name] = to_runtime(binding.value)
            return
        if op.has_blocks or op.op_type in BLOCK_OPS:
            # cond / while_loop: a closure over child executors; their free variables come as input `_free`
            kernel, inputs = compile_block_op(self, op)
        else:
            kernel, inputs = self._kernel(op), op.inputs
        const_kwargs: dict[str, Any] = {}
        var_kwargs: list[tuple[str, int]] = []
        list_kwargs: list[tuple[str, list[tuple[bool, Any]]]] = []
        all_const = True
        for param, bindings in inputs.items():
            items = []
            for b in bindings:
                if b.var is None:
                    items.append((False, to_runtime(b.value)))
                elif b.var in self.constants:
                    items.append((False, self.constants[b.var]))
                elif b.var in self.slot_of:
                    items.append((True, self.slot_of[b.var]))
                    all_const = False
                else:  # normally caught earlier by program.check_function
                    raise ModelPackageError(f"{self.source}: op {op.name!r} ({op.op_type}) reads {b.var!r} (its input "
                                            f"{param!r}), which is not defined before it")
            if param in kernel.variadic or len(items) > 1:
                if all(not is_slot for is_slot, _ in items):
                    const_kwargs[param] = [v for _, v in items]
                else:
                    list_kwargs.append((param, items))
            elif items[0][0]:
                var_kwargs.append((param, items[0][1]))
            else:
                const_kwargs[param] = items[0][1]
        rules = [self._rule(o.type) for o in op.outputs]
        if all_const and op.op_type.startswith("constexpr_"):
            result = self._call(kernel.fn, op, const_kwargs)
            results = result if isinstance(result, (tuple, list)) else (result,)
            for i, (out, value) in enumerate(zip(op.outputs, results)):
                # Decompressed weights are stored data: fp16-typed ones stay fp16 in every precision mode,
                # like the `const` weights of an uncompressed fp16 program.
                rule = rules[i]
                if isinstance(out.type, TensorType) and out.type.dtype == "fp16":
                    rule = OutputRule(rule.dtype, True, rule.shape)
                self.constants[out.name] = self._finish(value, rule, op, i)
            self.folded[op.name] = op
            return
        out_slots = [self._slot(o.name) for o in op.outputs]
        self.steps.append(Step(op, kernel.fn, const_kwargs, var_kwargs, list_kwargs, out_slots, rules))

    def _plan_frees(self) -> None:
        last_use: dict[int, int] = {}
        for i, step in enumerate(self.steps):
            for _, slot in step.var_kwargs:
                last_use[slot] = i
            for _, items in step.list_kwargs:
                for is_slot, v in items:
                    if is_slot:
                        last_use[v] = i
            for slot in step.out_slots:
                last_use.setdefault(slot, i)
        keep = {self.slot_of[name] for name in self.function.outputs if name in self.slot_of}
        for slot, i in last_use.items():
            if slot not in keep:
                self.steps[i].free_after.append(slot)

    # ---- run time --------------------------------------------------------------------------------------
    @staticmethod
    def _call(fn, op: Operation, kwargs: dict[str, Any]):
        try:
            return fn(**kwargs)
        except Exception as exc:
            raise op_failure(op, exc) from exc

    def _finish(self, value: Any, rule: OutputRule, op: Operation, index: int) -> Any:
        if not isinstance(value, torch.Tensor):
            if rule.dtype is None or isinstance(value, (str, list, tuple)) or value is None:
                return value
            value = torch.as_tensor(value)
        if rule.dtype is not None and value.dtype != rule.dtype:
            value = value.to(rule.dtype)
        if rule.round_fp16:
            value = round_to_fp16(value)
        if self.check_shapes and rule.shape is not None and tuple(value.shape) != rule.shape:
            raise RuntimeOpError(
                f"op {op.name!r} ({op.op_type}) output {op.outputs[index].name!r}: kernel produced shape "
                f"{list(value.shape)}, the program declares {list(rule.shape)}"
            )
        return value

    def run(self, feeds: dict[str, torch.Tensor], trace: bool = False,
            overrides: Mapping[str, torch.Tensor] | None = None):
        """Execute the function. Returns ``(outputs, records)``; ``records`` is None unless ``trace``.

        ``overrides`` (variable name -> value) replaces those op outputs by the given values, stored as given (cast
        to the declared dtype, not rounded to fp16): "what would the outputs be if this value were exact?"."""
        if _RUNNING.depth:  # a nested block's executor (cond / while_loop): the contexts are already entered
            return self._run_any(feeds, trace, overrides)
        _RUNNING.depth += 1
        try:
            # fp16 overflow to inf is part of what is emulated: no warnings for it.
            with torch.inference_mode(), np.errstate(over="ignore", invalid="ignore"):
                return self._run_any(feeds, trace, overrides)
        finally:
            _RUNNING.depth -= 1

    def _run_any(self, feeds, trace: bool, overrides):
        if trace or overrides:  # the plain loop, which records
            return self._run(feeds, trace, self._overridden_steps(overrides) if overrides else self.steps)
        # The fast path (see .fastpath), compiled on first use for the current step list (with_fp16_ops variants
        # have their own list, hence their own plan).
        plan = self.__dict__.get("_plan")
        if plan is None or plan.steps is not self.steps:
            plan = self._plan = compile_plan(self, self.steps)
        return run_plan(self, plan, feeds), None

    def _run(self, feeds: dict[str, torch.Tensor], trace: bool, steps: list[Step]):
        values: list[Any] = [None] * len(self.slot_of)
        for v in self.function.inputs:
            values[self.slot_of[v.name]] = self._finish(feeds[v.name], self._rule(v.type), _INPUT_OP, 0)
        records = [] if trace else None
        for step in steps:
            self._run_step(step, step.out_rules, values)
            if records is not None:
                records.append((step.op, [values[s] for s in step.out_slots]))
            for slot in step.free_after:
                values[slot] = None
        outputs = {}
        for name in self.function.outputs:
            outputs[name] = self.constants[name] if name in self.constants else values[self.slot_of[name]]
        return outputs, records

    def _run_step(self, step: Step, rules: list[OutputRule], values: list[Any]) -> None:
        """One step of the plain loop: its kernel called on ``values``, its outputs finished by ``rules`` and stored."""
        kwargs = dict(step.const_kwargs)
        for param, slot in step.var_kwargs:
            kwargs[param] = values[slot]
        for param, items in step.list_kwargs:
            kwargs[param] = [values[v] if is_slot else v for is_slot, v in items]
        result = self._call(step.fn, step.op, kwargs)
        if len(step.out_slots) == 1:
            values[step.out_slots[0]] = self._finish(result, rules[0], step.op, 0)
            return
        if not isinstance(result, (tuple, list)) or len(result) != len(step.out_slots):
            raise output_count_error(step.op, result, len(step.out_slots))
        for i, (slot, value) in enumerate(zip(step.out_slots, result)):
            values[slot] = self._finish(value, rules[i], step.op, i)

    # ---- what-if variants (``coreml-parity audit``): built once, no cost to the steps they leave alone ------------
    def _overridden_steps(self, overrides: Mapping[str, Any]) -> list[Step]:
        by_slot = {self.slot_of[name]: value for name, value in overrides.items() if name in self.slot_of}
        unknown = sorted(set(overrides) - set(self.slot_of))
        if unknown:
            raise ValueError(f"{self.source}: overrides name {unknown[:5]}, which no op of function "
                             f"{self.function.name!r} produces")
        steps = []
        for step in self.steps:
            hits = [i for i, slot in enumerate(step.out_slots) if slot in by_slot]
            if not hits:
                steps.append(step)
                continue
            given = {i: torch.as_tensor(np.asarray(by_slot[step.out_slots[i]])) for i in hits}
            single = len(step.out_slots) == 1
            rules = [replace(rule, round_fp16=False) if i in given else rule for i, rule in enumerate(step.out_rules)]
            steps.append(replace(step, fn=_replacing(step.fn, given, single), out_rules=rules))
        return steps

    def with_fp16_ops(self, fp16_inputs: Mapping[str, Collection[str]]) -> Executor:
        """A copy computing what a mixed-precision export of this program would: the ops named in ``fp16_inputs``
        compute in fp16 -- their inputs named there (param names) are rounded to fp16 on the way in, like the casts
        coremltools inserts before an fp16 op, and their float outputs are stored fp16 -- and every other op stores
        fp32. Meant for an fp32 program (its weights stay fp32 where ops stay fp32) or an fp16 one run with fp32
        storage. Constant inputs are rounded once, here, the way coremltools' ``add_fp16_cast`` does (a small
        constant whose non-zero entries would flush to zero gets fp16's smallest subnormal instead); variable
        inputs by a wrapper around the listed ops' kernels only."""
        variant = copy.copy(self)
        steps = []
        for step in self.steps:
            params = fp16_inputs.get(step.op.name)
            if params is None:
                steps.append(replace(step, out_rules=[replace(r, round_fp16=False) for r in step.out_rules]))
                continue
            params = set(params)
            const_kwargs = {k: (_fp16_constant(v) if k in params else v) for k, v in step.const_kwargs.items()}
            list_kwargs = [(param, [(is_slot, v if is_slot or param not in params else _fp16_constant(v))
                                    for is_slot, v in items]) for param, items in step.list_kwargs]
            rounded = tuple(p for p in params if any(p == q for q, _ in step.var_kwargs)
                            or any(p == q for q, _ in step.list_kwargs))
            rules = [replace(r, round_fp16=r.dtype == torch.float32) for r in step.out_rules]
            fn = _rounding_inputs(step.fn, rounded) if rounded else step.fn
            steps.append(replace(step, fn=fn, const_kwargs=const_kwargs, list_kwargs=list_kwargs, out_rules=rules))
        variant.steps = steps
        return variant


_FP16_TINY = float(np.finfo(np.float16).smallest_subnormal)


def _fp16_constant(value: Any) -> Any:
    """A constant as coremltools casts it to fp16 for an fp16 op (float values only; see ``with_fp16_ops``)."""
    if isinstance(value, float):
        rounded = float(np.float16(value))
        return math.copysign(_FP16_TINY, value) if rounded == 0.0 and value != 0.0 else rounded
    if isinstance(value, list):
        return [_fp16_constant(v) for v in value]
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
        rounded = round_to_fp16(value)
        if value.numel() < 400:  # coremltools' rule (``_check_underflow_to_zero``) for small constants
            flushed = (rounded == 0) & (value != 0)
            if bool(flushed.any()):
                rounded = torch.where(flushed, torch.sign(value) * _FP16_TINY, rounded)
        return rounded
    return value


def _rounding_inputs(fn, params: tuple[str, ...]):
    def run(**kwargs):
        for p in params:
            v = kwargs.get(p)
            if isinstance(v, torch.Tensor):
                if v.dtype == torch.float32:
                    kwargs[p] = round_to_fp16(v)
            elif isinstance(v, list):
                kwargs[p] = [round_to_fp16(x) if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else x
                             for x in v]
        return fn(**kwargs)

    return run


def _replacing(fn, given: dict[int, torch.Tensor], single: bool):
    def run(**kwargs):
        if single:
            return given[0]
        result = list(fn(**kwargs))
        for i, value in given.items():
            result[i] = value
        return tuple(result)

    return run


class _InputOp:
    name = "<function input>"
    op_type = "input"
    outputs = [type("V", (), {"name": "<input>"})()]


_INPUT_OP = _InputOp()
