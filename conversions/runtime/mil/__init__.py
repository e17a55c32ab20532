"""The portable MIL runtime: executes the MIL program inside a Core ML model package on any OS.

>>> from conversions.runtime import load_model
>>> m = load_model("model.mlpackage", backend="mil")            # doctest: +SKIP
>>> m.predict({"audio_input": x, "hidden_state": h, "cell_state": c})  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from ..errors import ModelPackageError
from ..io import TensorSpec, check_feeds, specs_from_description
from ..package import OpenedModel
from .executor import PRECISIONS, Executor, to_numpy
from .ops import REGISTRY
from .program import Program, check_function, parse_program
from .trace import Trace, TracedOp, compare_traces

__all__ = ["MILModel", "supported_ops", "compare_traces", "Trace", "TracedOp", "PRECISIONS"]


def supported_ops() -> frozenset[str]:
    """The MIL op types this runtime executes (``const`` included)."""
    return frozenset(REGISTRY) | {"const"}


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
        self.precision = precision
        self.compute_units = None
        self.executor = Executor(self.function, precision=precision, check_shapes=check_shapes, source=opened.source)
        self._output_types = {v: self.executor.types.get(v) for v in self.function.outputs}

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
            arr = to_numpy(values[spec.name], self._output_types.get(spec.name), self.precision)
            if self.precision == "fp16" or spec.dtype.kind != "f":
                arr = arr.astype(spec.dtype, copy=False)
            result[spec.name] = arr
        return result

    def predict(self, inputs: dict[str, Any], trace: bool = False, overrides: dict[str, Any] | None = None):
        """Run one prediction. ``trace=True`` returns ``(outputs, trace)`` with every op's output.

        ``overrides`` (variable name -> array) replaces those op outputs by the given values (stored as given, not
        rounded to fp16): the outputs the program would give if those values were exact."""
        values, records = self.executor.run(self._feeds(inputs), trace=trace, overrides=overrides)
        outputs = self._outputs(values)
        if not trace:
            return outputs
        return outputs, self._trace(records)

    def trace(self, inputs: dict[str, Any], overrides: dict[str, Any] | None = None) -> Trace:
        """Every op's output for one prediction, by MIL op name (weight-decompression ops included)."""
        return self.predict(inputs, trace=True, overrides=overrides)[1]

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
