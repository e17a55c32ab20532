"""A MIL program read straight from its protobuf: functions, operations, typed variables and constants.

This is the portable runtime's own reading of ``Model.mlProgram`` (see coremltools' ``MIL.proto``): it does
not go through coremltools' Python builder, so it neither re-runs type inference nor depends on which ops
that builder knows. Weights stored in ``weight.bin`` are read through :mod:`.blob` with bounds checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coremltools.proto import MIL_pb2

from ..errors import ModelPackageError
from .blob import WeightFile, unpack_subbyte

# MIL data type -> (short name used in messages and metadata, numpy dtype of host arrays)
_DT = MIL_pb2.DataType
DTYPES: dict[int, tuple[str, Any]] = {
    _DT.BOOL: ("bool", np.bool_),
    _DT.STRING: ("string", object),
    _DT.FLOAT16: ("fp16", np.float16),
    _DT.FLOAT32: ("fp32", np.float32),
    _DT.FLOAT64: ("fp64", np.float64),
    _DT.BFLOAT16: ("bf16", np.float32),
    _DT.INT8: ("int8", np.int8),
    _DT.INT16: ("int16", np.int16),
    _DT.INT32: ("int32", np.int32),
    _DT.INT64: ("int64", np.int64),
    _DT.INT4: ("int4", np.int8),
    _DT.UINT8: ("uint8", np.uint8),
    _DT.UINT16: ("uint16", np.uint16),
    _DT.UINT32: ("uint32", np.uint32),
    _DT.UINT64: ("uint64", np.uint64),
    _DT.UINT4: ("uint4", np.uint8),
    _DT.UINT2: ("uint2", np.uint8),
    _DT.UINT1: ("uint1", np.uint8),
    _DT.UINT6: ("uint6", np.uint8),
    _DT.UINT3: ("uint3", np.uint8),
}
SUBBYTE_BITS = {"int4": 4, "uint4": 4, "uint2": 2, "uint1": 1, "uint6": 6, "uint3": 3}
NUMPY_DTYPE_BY_NAME = {name: np_dtype for name, np_dtype in DTYPES.values()}


@dataclass(frozen=True)
class TensorType:
    """Type of a MIL tensor: element type name (``fp16``, ``int32`` ...) and shape (``None`` = unknown dim)."""

    dtype: str
    shape: tuple[int | None, ...] | None  # None: unknown rank

    def __str__(self) -> str:
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


@dataclass(frozen=True)
class OtherType:
    """A non-tensor MIL type (list, tuple, dictionary) that the runtime carries but does not check."""

    kind: str

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class StateType:
    """An iOS 18 state (``state<tensor>``): a buffer that persists across predictions; ``wrapped`` is its tensor type.

    Only function inputs have this type; ``read_state`` / ``write_state`` read and write the buffer (see
    ``ops/state.py``)."""

    wrapped: TensorType

    def __str__(self) -> str:
        return f"state<{self.wrapped}>"


@dataclass
class Var:
    name: str
    type: TensorType | OtherType


@dataclass
class Binding:
    """One argument of an operation: a reference to a variable, or an inline constant."""

    var: str | None = None
    value: Any = None
    type: TensorType | OtherType | None = None  # declared type of an inline constant


@dataclass
class Block:
    """A nested block of a control-flow op (``cond`` branch, ``while_loop`` condition or body).

    ``inputs`` are the block's own variables (for ``while_loop``: the loop variables as the block sees them; a
    ``cond`` branch takes none); its ops may also read any variable visible where the op owning the block sits
    (enclosing scopes). ``outputs`` name the variables the block returns, in order."""

    inputs: list[Var]
    operations: list[Operation]
    outputs: list[str]


@dataclass
class Operation:
    op_type: str
    name: str
    inputs: dict[str, list[Binding]]
    outputs: list[Var]
    blocks: list[Block] = field(default_factory=list)

    @property
    def has_blocks(self) -> bool:
        return bool(self.blocks)


@dataclass
class Function:
    name: str
    opset: str
    inputs: list[Var]
    operations: list[Operation]
    outputs: list[str]


@dataclass
class Program:
    functions: dict[str, Function]
    version: int
    attributes: dict[str, Any] = field(default_factory=dict)


def parse_type(vt: MIL_pb2.ValueType) -> TensorType | StateType | OtherType:
    kind = vt.WhichOneof("type")
    if kind == "stateType":
        wrapped = parse_type(vt.stateType.wrappedType)
        if not isinstance(wrapped, TensorType):
            raise ModelPackageError(f"a state wraps a {wrapped}; Core ML states wrap tensors only")
        return StateType(wrapped)
    if kind != "tensorType":
        return OtherType(kind or "unknown")
    tt = vt.tensorType
    if tt.dataType not in DTYPES:
        raise ModelPackageError(f"unsupported MIL data type code {tt.dataType}")
    dims: list[int | None] = []
    for d in tt.dimensions:
        dims.append(d.constant.size if d.WhichOneof("dimension") == "constant" else None)
    shape = tuple(dims) if (tt.rank >= 0 and len(dims) == tt.rank) else None
    if tt.rank == 0:
        shape = ()
    return TensorType(DTYPES[tt.dataType][0], shape)


class ValueReader:
    """Turns protobuf ``Value`` messages into numpy arrays (or Python strings), reading blobs on demand."""

    def __init__(self, weights_dir: str | None):
        self.weights_dir = weights_dir
        self._files: dict[str, WeightFile] = {}

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def _weight_file(self, file_name: str) -> WeightFile:
        if file_name not in self._files:
            prefix = "@model_path/weights/"
            if not file_name.startswith(prefix):
                raise ModelPackageError(f"weight reference {file_name!r} does not start with {prefix!r}")
            if self.weights_dir is None:
                raise ModelPackageError(f"the program refers to {file_name!r} but the model has no weights directory")
            rel = file_name[len(prefix):]
            root = os.path.realpath(self.weights_dir)
            path = os.path.realpath(os.path.join(root, rel))
            if os.path.commonpath([root, path]) != root:
                raise ModelPackageError(f"weight reference {file_name!r} escapes the weights directory {root!r}")
            self._files[file_name] = WeightFile(path)
        return self._files[file_name]

    def read(self, value: MIL_pb2.Value, what: str) -> Any:
        vtype = parse_type(value.type)
        if (value.type.WhichOneof("type") == "listType" and value.WhichOneof("value") == "immediateValue"
                and value.immediateValue.WhichOneof("value") == "list"):
            return self._list(value.immediateValue.list, what)  # e.g. classify's `classes` (labels)
        if not isinstance(vtype, TensorType):
            return None  # tuple/dictionary values only appear in attributes the runtime does not use
        np_dtype = NUMPY_DTYPE_BY_NAME[vtype.dtype]
        shape = vtype.shape if vtype.shape is not None else None
        count = int(np.prod(shape)) if shape is not None else None
        kind = value.WhichOneof("value")
        if kind == "blobFileValue":
            blob = value.blobFileValue
            try:
                flat = self._weight_file(blob.fileName).read(blob.offset, count if vtype.dtype in SUBBYTE_BITS else None)
            except ModelPackageError as exc:
                raise ModelPackageError(f"{what}: {exc}") from None
            if vtype.dtype == "bf16":
                raise ModelPackageError(f"{what}: bfloat16 weights are not supported")
            flat = flat.astype(np_dtype, copy=False)
        elif kind == "immediateValue":
            flat = self._immediate(value.immediateValue.tensor, vtype, count, what)
            if isinstance(flat, str):
                return flat
        else:
            raise ModelPackageError(f"{what}: value has neither an immediate value nor a blob reference")
        if shape is None:
            return flat
        if flat.size != count:
            raise ModelPackageError(f"{what}: stored {flat.size} elements but its type {vtype} needs {count}")
        return flat.reshape(shape)

    def _list(self, items: MIL_pb2.ListValue, what: str) -> np.ndarray:
        """An inline list value as a 1-D object array of its items (scalars as Python str/int/float/bool)."""
        out = np.empty(len(items.values), dtype=object)
        for i, item in enumerate(items.values):
            v = self.read(item, f"{what} item {i}")
            out[i] = v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v
        return out

    @staticmethod
    def _immediate(tensor: MIL_pb2.TensorValue, vtype: TensorType, count: int | None, what: str):
        np_dtype = NUMPY_DTYPE_BY_NAME[vtype.dtype]
        field_name = tensor.WhichOneof("value")
        if field_name == "strings":
            values = list(tensor.strings.values)
            return values[0] if vtype.shape == () and len(values) == 1 else np.array(values, dtype=object)
        if field_name == "bytes":
            raw = np.frombuffer(tensor.bytes.values, dtype=np.uint8)
            if vtype.dtype in SUBBYTE_BITS:
                nbits = SUBBYTE_BITS[vtype.dtype]
                return unpack_subbyte(raw, nbits, count if count is not None else raw.size * 8 // nbits,
                                      signed=vtype.dtype == "int4")
            return np.frombuffer(tensor.bytes.values, dtype=np.dtype(np_dtype).newbyteorder("<")).astype(np_dtype)
        if field_name in ("floats", "ints", "bools", "longInts", "doubles"):
            return np.asarray(list(getattr(tensor, field_name).values)).astype(np_dtype)
        if field_name is None:
            return np.zeros((0,), dtype=np_dtype)
        raise ModelPackageError(f"{what}: unsupported immediate tensor field {field_name!r}")


MAX_REPORTED_PROBLEMS = 10


def check_function(function: Function, source: str, input_names: list[str] | None = None,
                   output_names: list[str] | None = None, state_names: list[str] = ()) -> None:
    """Raise :class:`ModelPackageError` if ``function`` is inconsistent in itself or with the model description.

    In itself: every variable an op reads is defined before it (by a function input or an earlier op), and every
    variable the function returns is defined. Ops inside nested blocks (``cond``, ``while_loop``) may read the
    block's inputs, variables defined earlier in the block, and every variable visible where the op owning the
    block sits (enclosing scopes); a variable defined inside a block is not visible outside it. With the
    description (when ``input_names`` / ``output_names`` are given): the function takes exactly the declared
    inputs (plus the declared ``state_names``) and returns exactly the declared outputs. The message names
    ``source`` (the package), the op and the variable of every problem (the first :data:`MAX_REPORTED_PROBLEMS`
    of them).
    """
    where = f"function {function.name!r}"
    problems: list[str] = []
    takes = [v.name for v in function.inputs]
    if input_names is not None:
        allowed = set(input_names) | set(state_names)
        problems += [f"the model description declares input {name!r}, which {where} does not take "
                     f"(it takes {takes})" for name in input_names if name not in takes]
        problems += [f"{where} takes input {name!r}, which the model description does not declare "
                     f"(it declares {list(input_names)})" for name in takes if name not in allowed]
    problems += _scope_problems(function, takes, where)
    if output_names is not None:
        problems += [f"the model description declares output {name!r}, which {where} never produces "
                     f"(it returns {function.outputs})" for name in output_names if name not in function.outputs]
        problems += [f"{where} returns {name!r}, which the model description does not declare as an output "
                     f"(it declares {list(output_names)})" for name in function.outputs if name not in output_names]
    if problems:
        shown = problems[:MAX_REPORTED_PROBLEMS]
        more = len(problems) - len(shown)
        raise ModelPackageError(f"{source}: inconsistent model program ({len(problems)} problem"
                                f"{'s' if len(problems) > 1 else ''}): " + "; ".join(shown)
                                + (f"; and {more} more" if more else ""))


def _scope_problems(function: Function, takes: list[str], where: str) -> list[str]:
    """Reads of undefined or out-of-scope variables, in the function and (recursively) in its nested blocks."""
    definer: dict[str, str] = {}  # every variable defined anywhere (op output or block input) -> what defines it

    def collect(operations: list[Operation]) -> None:
        for op in operations:
            for out in op.outputs:
                definer.setdefault(out.name, f"op {op.name!r} ({op.op_type})")
            for i, block in enumerate(op.blocks):
                for v in block.inputs:
                    definer.setdefault(v.name, f"block {i} of op {op.name!r} ({op.op_type}) (as a block input)")
                collect(block.operations)

    collect(function.operations)
    problems: list[str] = []
    seen: set[str] = set(takes)  # defined so far, in program order, in any scope

    def reason(name: str, nested: bool, earlier: str = "earlier ") -> str:
        if name in seen:
            return f"which {definer[name]} defines inside a block that does not enclose it (not visible here)"
        if name in definer:
            return f"which {definer[name]} defines only after it"
        return f"which no {earlier}op{', block input' if nested else ''} or function input defines"

    def check(operations: list[Operation], outputs: list[str], visible: set[str], scope: str, nested: bool) -> None:
        visible = set(visible)
        for op in operations:
            for param, bindings in op.inputs.items():
                for b in bindings:
                    if b.var is not None and b.var not in visible:
                        problems.append(f"op {op.name!r} ({op.op_type}) of {scope} reads {b.var!r} (its input "
                                        f"{param!r}), {reason(b.var, nested)}")
            for i, block in enumerate(op.blocks):
                block_inputs = {v.name for v in block.inputs}
                seen.update(block_inputs)
                check(block.operations, block.outputs, visible | block_inputs,
                      f"block {i} of op {op.name!r} ({op.op_type}) in {scope}", True)
            visible.update(out.name for out in op.outputs)
            seen.update(out.name for out in op.outputs)
        problems.extend(f"{scope} returns {name!r} (a block output), {reason(name, nested, '')}"
                        for name in outputs if name not in visible)

    check(function.operations, function.outputs, set(takes), where, False)
    return problems


def parse_program(ml_program: MIL_pb2.Program, weights_dir: str | None) -> Program:
    reader = ValueReader(weights_dir)
    try:
        functions = {}
        for fname, fn in ml_program.functions.items():
            opset = fn.opset
            if opset not in fn.block_specializations:
                raise ModelPackageError(f"function {fname!r} has no block for its opset {opset!r}")
            block = fn.block_specializations[opset]
            inputs = [Var(v.name, parse_type(v.type)) for v in fn.inputs]
            ops = [_parse_operation(op, reader, fname) for op in block.operations]
            functions[fname] = Function(fname, opset, inputs, ops, list(block.outputs))
        return Program(functions, ml_program.version)
    finally:
        reader.close()


def _parse_operation(op: MIL_pb2.Operation, reader: ValueReader, fname: str) -> Operation:
    name = op.outputs[0].name if op.outputs else op.type
    if "name" in op.attributes:
        name = reader.read(op.attributes["name"], f"op name of a {op.type!r} op")
    inputs: dict[str, list[Binding]] = {}
    for key, arg in op.inputs.items():
        bindings = []
        for b in arg.arguments:
            if b.WhichOneof("binding") == "name":
                bindings.append(Binding(var=b.name))
            else:
                bindings.append(Binding(value=reader.read(b.value, f"input {key!r} of op {name!r} ({op.type})"),
                                        type=parse_type(b.value.type)))
        inputs[key] = bindings
    # iOS16-style constexpr ops and `const` keep their operands as attributes: treat them as constant inputs.
    for key, value in op.attributes.items():
        if key == "name" or key in inputs:
            continue
        inputs[key] = [Binding(value=reader.read(value, f"attribute {key!r} of op {name!r} ({op.type})"),
                               type=parse_type(value.type))]
    outputs = [Var(o.name, parse_type(o.type)) for o in op.outputs]
    blocks = [Block([Var(v.name, parse_type(v.type)) for v in block.inputs],
                    [_parse_operation(inner, reader, fname) for inner in block.operations], list(block.outputs))
              for block in op.blocks]
    return Operation(op.type, name, inputs, outputs, blocks)
