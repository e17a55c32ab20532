"""The portable MIL runtime: executes the MIL program inside a Core ML model package on any OS.

>>> from conversions.runtime import load_model
>>> m = load_model("model.mlpackage", backend="mil")            # doctest: +SKIP
>>> m.predict({"audio_input": x, "hidden_state": h, "cell_state": c})  # doctest: +SKIP

A stateful model (iOS 18 states) is run like with coremltools' ``MLModel``: ``state = m.make_state()`` (buffers
initialised to zeros), then ``m.predict(inputs, state=state)`` for each step; the state keeps what each call writes.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from ..errors import ModelPackageError
from ..io import (TensorSpec, check_feeds, check_state_argument, feature_value, specs_from_description,
                  state_specs_from_description)
from ..package import OpenedModel
from .executor import PRECISIONS, Executor, to_numpy
from .ops import REGISTRY
from .ops.state import StateValue
from .program import NUMPY_DTYPE_BY_NAME, Program, StateType, check_function, parse_program
from .trace import Trace, TracedOp, compare_traces

__all__ = ["MILModel", "MILState", "supported_ops", "compare_traces", "Trace", "TracedOp", "PRECISIONS"]


def supported_ops() -> frozenset[str]:
    """The MIL op types this runtime executes (``const`` included)."""
    return frozenset(REGISTRY) | {"const"}


class MILState:
    """The state buffers of one stateful :class:`MILModel` (what ``MILModel.make_state()`` returns), like
    coremltools' ``MLState``: pass it to ``predict(..., state=...)``; each prediction reads and writes it in place.
    ``read_state(name)`` / ``write_state(name, value)`` get and set one buffer as a host array."""

    def __init__(self, model: MILModel):
        self._key = model._state_key  # which program's states these are
        self._source = model.source
        self._precision = model.precision
        self._specs = {spec.name: spec for spec in model.states}
        self._buffers = {name: StateValue(name, t.wrapped) for name, t in model._state_types.items()}

    @property
    def names(self) -> list[str]:
        return list(self._buffers)

    def _buffer(self, name: str) -> StateValue:
        if name not in self._buffers:
            raise KeyError(f"{self._source}: no state {name!r}; the model's states are {self.names}")
        return self._buffers[name]

    def read_state(self, name: str) -> np.ndarray:
        """A copy of state ``name`` (its declared dtype; fp16 states read as float32 under ``precision="fp32"``)."""
        buf = self._buffer(name)
        arr = buf.value.detach().numpy().copy()
        dtype = NUMPY_DTYPE_BY_NAME[buf.type.dtype]
        if not (buf.type.dtype == "fp16" and self._precision == "fp32"):
            arr = arr.astype(dtype, copy=False)
        return arr

    def write_state(self, name: str, value) -> None:
        """Set state ``name`` to ``value`` (its declared shape; fp16 states round it to fp16 under ``precision="fp16"``)."""
        buf = self._buffer(name)
        arr = np.asarray(value)
        if tuple(arr.shape) != tuple(buf.type.shape):
            raise ValueError(f"{self._source}: state {name!r} expected shape {list(buf.type.shape)}, "
                             f"got {list(arr.shape)}")
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"{self._source}: state {name!r} expected {buf.type.dtype}, got an array of {arr.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(arr)).to(buf.carry_dtype)
        if buf.type.dtype == "fp16" and self._precision == "fp16":
            tensor = tensor.to(torch.float16).to(buf.carry_dtype)
        buf.write(tensor, f"{self._source}: write_state({name!r})")

    def __repr__(self) -> str:
        return f"MILState({self._source!r}, " + ", ".join(str(s) for s in self._specs.values()) + ")"


class MILModel:
    """A Core ML ML Program executed by the portable runtime. Same interface as the Core ML backend."""

    backend = "mil"

    def __init__(self, opened: OpenedModel, precision: str = "fp16", function_name: str | None = None,
                 check_shapes: bool = True):
        spec = opened.spec
        self.source = opened.source
        if spec.WhichOneof("Type") != "mlProgram":
            raise ModelPackageError(
                f"{opened.source}: the portable runtime runs ML Programs only; this model is a "
                f"{spec.WhichOneof('Type')!r} (neural network models predate iOS 15 and are not supported)"
            )
        self.spec = spec
        try:
            self.program: Program = parse_program(spec.mlProgram, opened.weights_dir)
        except ModelPackageError as exc:
            if opened.source in str(exc):
                raise
            raise ModelPackageError(f"{opened.source}: {exc}") from None
        name = function_name or spec.description.defaultFunctionName or "main"
        if name not in self.program.functions:
            raise ModelPackageError(f"{opened.source}: no function {name!r}; it has {sorted(self.program.functions)}")
        self.function = self.program.functions[name]
        description = spec.description
        if description.functions:  # a multi-function model describes each function's I/O (the top level is empty)
            description = next((f for f in description.functions if f.name == name), None)
            if description is None:
                raise ModelPackageError(f"{opened.source}: the model description has no entry for function {name!r}")
        # A package that parses but does not hold together fails here, naming what is wrong, not at predict time.
        check_function(self.function, opened.source, [f.name for f in description.input],
                       [f.name for f in description.output], [f.name for f in getattr(description, "state", ())])
        self.inputs: list[TensorSpec] = specs_from_description(description.input)
        self.outputs: list[TensorSpec] = specs_from_description(description.output)
        self.states: list[TensorSpec] = state_specs_from_description(getattr(description, "state", ()))
        self._state_types = self._check_states(opened.source)
        self._state_key = object()  # identifies this program's states (shared by with_fp16_ops variants)
        self.precision = precision
        self.compute_units = None
        self.executor = Executor(self.function, precision=precision, check_shapes=check_shapes, source=opened.source)
        self._output_types = {v: self.executor.types.get(v) for v in self.function.outputs}

    def _check_states(self, source: str) -> dict[str, StateType]:
        """The function's state inputs by name, checked against the states the description declares."""
        types = {v.name: v.type for v in self.function.inputs if isinstance(v.type, StateType)}
        declared = {spec.name: spec for spec in self.states}
        problems = [f"the model description declares state {name!r}, which function {self.function.name!r} does "
                    f"not take as a state input" for name in declared if name not in types]
        problems += [f"function {self.function.name!r} takes state input {name!r}, which the model description does "
                     f"not declare as a state" for name in types if name not in declared]
        for name, spec in declared.items():
            t = types.get(name)
            if t is not None and (t.wrapped.shape != spec.shape
                                  or NUMPY_DTYPE_BY_NAME[t.wrapped.dtype] != spec.dtype.type):
                problems.append(f"state {name!r} is declared {spec.dtype.name} {list(spec.shape)} but the function "
                                f"takes it as {t}")
        if problems:
            raise ModelPackageError(f"{source}: inconsistent states: " + "; ".join(problems))
        return types

    def make_state(self) -> MILState:
        """New state buffers for this stateful model, initialised to zeros as Core ML's ``makeState()`` does."""
        check_state_argument(self.source, self.states, None, making=True)
        return MILState(self)

    def _state_feeds(self, state) -> dict[str, StateValue]:
        check_state_argument(self.source, self.states, state)
        if state is None:
            return {}
        if not isinstance(state, MILState):
            raise TypeError(f"{self.source}: state must come from this model's make_state(), "
                            f"got {type(state).__name__}")
        if state._key is not self._state_key:
            raise ValueError(f"{self.source}: the state was made by another model ({state._source}); "
                             "use this model's make_state()")
        return dict(state._buffers)

    @property
    def opset(self) -> str:
        return self.function.opset

    def __repr__(self) -> str:
        return f"MILModel({self.source!r}, opset={self.opset}, precision={self.precision})"

    def _feeds(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        checked = check_feeds(self.inputs, inputs, self.source)
        return {name: torch.from_numpy(arr.astype(np.float32) if arr.dtype.kind == "f" else arr)
                for name, arr in checked.items()}

    def _outputs(self, values: dict[str, Any]) -> dict[str, np.ndarray]:
        result = {}
        for spec in self.outputs:
            if not spec.is_array:  # a classifier's label / probability dictionary: Python values, as Core ML gives
                result[spec.name] = feature_value(spec, values[spec.name])
                continue
            arr = to_numpy(values[spec.name], self._output_types.get(spec.name), self.precision)
            if self.precision == "fp16" or spec.dtype.kind != "f":
                arr = arr.astype(spec.dtype, copy=False)
            result[spec.name] = arr
        return result

    def predict(self, inputs: dict[str, Any], state: MILState | None = None, *, trace: bool = False,
                overrides: dict[str, Any] | None = None):
        """Run one prediction. ``trace=True`` returns ``(outputs, trace)`` with every op's output.

        ``state`` (from :meth:`make_state`) is required for a stateful model and refused otherwise; the prediction
        reads and updates it in place. ``overrides`` (variable name -> array) replaces those op outputs by the given
        values (stored as given, not rounded to fp16): the outputs the program would give if those values were
        exact."""
        feeds = self._feeds(inputs)
        feeds.update(self._state_feeds(state))
        values, records = self.executor.run(feeds, trace=trace, overrides=overrides)
        outputs = self._outputs(values)
        if not trace:
            return outputs
        return outputs, self._trace(records)

    def trace(self, inputs: dict[str, Any], overrides: dict[str, Any] | None = None,
              state: MILState | None = None) -> Trace:
        """Every op's output for one prediction, by MIL op name (weight-decompression ops included). A stateful
        model needs ``state``, which the traced prediction updates like any other."""
        return self.predict(inputs, state, trace=True, overrides=overrides)[1]

    def with_fp16_ops(self, fp16_inputs: dict[str, Any]) -> MILModel:
        """The same program computed as a mixed-precision export of it would be: the ops named in ``fp16_inputs``
        (op name -> the names of their inputs cast to fp16) compute in fp16, every other op stores fp32 (see
        :meth:`Executor.with_fp16_ops`). Outputs come back as float32 (as with ``precision="fp32"``)."""
        variant = copy.copy(self)
        variant.executor = self.executor.with_fp16_ops(fp16_inputs)
        variant.precision = "fp32"
        return variant

    def _trace(self, records) -> Trace:
        types = self.executor.types
        result = Trace()
        for name, op in self.executor.folded.items():
            outs = OrderedDict((o.name, to_numpy(self.executor.constants[o.name], o.type, self.precision))
                               for o in op.outputs)
            result[name] = TracedOp(name, op.op_type, [], outs)
        for op, values in records:
            inputs = [b.var for bindings in op.inputs.values() for b in bindings if b.var is not None]
            outs = OrderedDict((o.name, to_numpy(v, types.get(o.name), self.precision)) for o, v in zip(op.outputs, values))
            result[op.name] = TracedOp(op.name, op.op_type, inputs, outs)
        return result

    def op_histogram(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.function.operations:
            counts[op.op_type] = counts.get(op.op_type, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
