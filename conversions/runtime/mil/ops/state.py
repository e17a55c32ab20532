"""State ops of iOS 18 stateful models (MIL ``states``): ``read_state`` and ``write_state``.

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS18.states

A stateful function takes its states as inputs of type ``state<tensor>`` (:class:`..program.StateType`). At run
time each one is a :class:`StateValue`, a small mutable holder of the buffer's current value, passed to the
kernels like any other non-tensor value (the executor hands function inputs that are not tensor-typed through
untouched). The holders belong to the caller's state object (``MILModel.make_state()``), so what a prediction
writes is there for the next one.

- ``read_state(input)`` returns a copy of the state's current value (its type is the wrapped tensor type).
- ``write_state(input, data)`` copies ``data`` into the state; it has no outputs. coremltools' builder has no
  such op: its ``coreml_update_state(state, value)`` (a ``coreml`` dialect op that returns ``value``) is
  serialized as ``write_state(input=state, data=value)`` followed, when the result is used, by ``read_state``
  under the dialect op's output name -- so a package only ever holds ``read_state`` and ``write_state``.

Reads and writes both copy, as the ops' definitions say, so no variable of a prediction (an output returned to
the caller included) aliases the buffer. Values are carried like every other value (fp16 in fp32 storage): a
written fp16 value is already rounded by the op that produced it under ``precision="fp16"``, and under
``precision="fp32"`` an fp16 state keeps fp32 values like every other fp16 value.
"""

from __future__ import annotations

import numpy as np
import torch

from ..program import TensorType
from . import register
from ._util import TORCH_DTYPES


class StateValue:
    """One state buffer of a stateful model: its ``name``, declared tensor ``type`` and current ``value``."""

    __slots__ = ("name", "type", "value")

    def __init__(self, name: str, type_: TensorType):
        if type_.shape is None or None in type_.shape:
            raise ValueError(f"state {name!r} has type {type_}; states need a fixed shape")
        self.name = name
        self.type = type_
        # Core ML allocates state buffers initialised to zeros (MLModel.makeState()).
        self.value = torch.zeros(type_.shape, dtype=self.carry_dtype)

    @property
    def carry_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.type.dtype]

    def write(self, data, what: str) -> None:
        """Store a copy of ``data``; it must have the state's shape and (carried) dtype, else ``ValueError``."""
        if not isinstance(data, torch.Tensor):
            data = torch.as_tensor(np.asarray(data))
        if tuple(data.shape) != tuple(self.type.shape):
            raise ValueError(f"{what}: state {self.name!r} holds {self.type}, got a value of shape {list(data.shape)}")
        if data.dtype != self.carry_dtype:
            if data.dtype.is_floating_point != self.carry_dtype.is_floating_point or data.dtype == torch.bool:
                raise ValueError(f"{what}: state {self.name!r} holds {self.type}, got a value of dtype {data.dtype}")
            data = data.to(self.carry_dtype)
        self.value = data.clone()

    def __repr__(self) -> str:
        return f"StateValue({self.name!r}, {self.type})"


def _holder(value, op: str, param: str) -> StateValue:
    if not isinstance(value, StateValue):
        raise TypeError(f"{op} input {param!r} must be a state (a function input of type state<tensor>), "
                        f"got {type(value).__name__}")
    return value


@register("read_state")
def read_state(input):
    return _holder(input, "read_state", "input").value.clone()


@register("write_state")
def write_state(input, data):
    _holder(input, "write_state", "input").write(data, "write_state input 'data'")
    return ()
