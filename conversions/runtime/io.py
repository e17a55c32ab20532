"""Input/output descriptions shared by every backend, and the one place where feeds are checked."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coremltools.proto import FeatureTypes_pb2

_ARRAY = FeatureTypes_pb2.ArrayFeatureType
ARRAY_DTYPES = {
    _ARRAY.FLOAT16: np.dtype(np.float16),
    _ARRAY.FLOAT32: np.dtype(np.float32),
    _ARRAY.DOUBLE: np.dtype(np.float64),
    _ARRAY.INT32: np.dtype(np.int32),
    _ARRAY.INT8: np.dtype(np.int8),
}

# Non-array features (a classifier's outputs): feature type -> (kind, dtype of the value). A dictionary's dtype is
# that of its values (Core ML dictionaries map string or int64 keys to doubles).
SCALAR_FEATURES = {
    "stringType": ("string", np.dtype(object)),
    "int64Type": ("int64", np.dtype(np.int64)),
    "doubleType": ("double", np.dtype(np.float64)),
    "dictionaryType": ("dictionary", np.dtype(np.float64)),
}
_DICT_KEYS = {"stringKeyType": "string", "int64KeyType": "int64"}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the model's interface declares it.

    ``shape`` is the default shape. ``shape_range`` holds per-dimension ``(lower, upper)`` bounds for a
    RangeDim input (``upper`` is ``None`` when unbounded); ``enumerated_shapes`` the allowed shapes of an
    EnumeratedShapes input. Both are ``None`` for a fixed shape.

    ``kind`` is ``"array"`` for a multi-array; a classifier's outputs are ``"string"`` or ``"int64"`` (the
    predicted label) and ``"dictionary"`` (label -> probability, keys of ``key_kind`` ``"string"`` or
    ``"int64"``); ``"double"`` is a single float. Those have shape ``()`` and come back from ``predict`` as Core
    ML's Python binding returns them (``str``, ``int``, ``float``, ``dict``), see :func:`feature_value`.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    shape_range: tuple[tuple[int, int | None], ...] | None = None
    enumerated_shapes: tuple[tuple[int, ...], ...] | None = None
    kind: str = "array"
    key_kind: str | None = None

    @property
    def is_array(self) -> bool:
        return self.kind == "array"

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if self.enumerated_shapes is not None:
            return tuple(shape) in self.enumerated_shapes
        if self.shape_range is not None:
            return len(shape) == len(self.shape_range) and all(
                lo <= d and (hi is None or d <= hi) for d, (lo, hi) in zip(shape, self.shape_range)
            )
        return tuple(shape) == tuple(self.shape)

    def shape_text(self) -> str:
        if self.enumerated_shapes is not None:
            return "one of " + ", ".join(str(list(s)) for s in self.enumerated_shapes)
        if self.shape_range is not None:
            dims = [str(lo) if lo == hi else f"{lo}..{'inf' if hi is None else hi}" for lo, hi in self.shape_range]
            return "[" + ", ".join(dims) + "]"
        return str(list(self.shape))

    def __str__(self) -> str:
        if self.kind == "dictionary":
            return f"{self.name}: dictionary<{self.key_kind}, double>"
        if not self.is_array:
            return f"{self.name}: {self.kind}"
        return f"{self.name}: {self.dtype.name} {self.shape_text()}"


def specs_from_description(features) -> list[TensorSpec]:
    specs = []
    for feature in features:
        kind = feature.type.WhichOneof("Type")
        if kind in SCALAR_FEATURES:
            specs.append(_scalar_spec(feature, kind))
            continue
        if kind != "multiArrayType":
            raise NotImplementedError(
                f"feature {feature.name!r} is of type {kind!r}; only multi-array features and a classifier's "
                "string/int64/dictionary outputs are supported"
            )
        arr = feature.type.multiArrayType
        dtype = ARRAY_DTYPES.get(arr.dataType)
        if dtype is None:
            raise NotImplementedError(f"feature {feature.name!r} has unsupported array data type {arr.dataType}")
        shape = tuple(int(d) for d in arr.shape)
        shape_range = enumerated = None
        which = arr.WhichOneof("ShapeFlexibility")
        if which == "shapeRange":
            shape_range = tuple(
                (int(r.lowerBound), None if r.upperBound < 0 else int(r.upperBound)) for r in arr.shapeRange.sizeRanges
            )
            if not shape:
                shape = tuple(lo for lo, _ in shape_range)
        elif which == "enumeratedShapes":
            enumerated = tuple(tuple(int(d) for d in s.shape) for s in arr.enumeratedShapes.shapes)
            if not shape:
                shape = enumerated[0]
        specs.append(TensorSpec(feature.name, shape, dtype, shape_range, enumerated))
    return specs


def _scalar_spec(feature, kind: str) -> TensorSpec:
    name, dtype = SCALAR_FEATURES[kind]
    key_kind = None
    if name == "dictionary":
        key = feature.type.dictionaryType.WhichOneof("KeyType")
        key_kind = _DICT_KEYS.get(key)
        if key_kind is None:
            raise NotImplementedError(f"feature {feature.name!r} is a dictionary with key type {key!r}; "
                                      "string and int64 keys are supported")
    return TensorSpec(feature.name, (), dtype, kind=name, key_kind=key_kind)


def feature_value(spec: TensorSpec, value):
    """A non-array output (``spec.kind`` not ``"array"``) as Core ML's Python binding returns it: a label as
    ``str`` or ``int``, a double as ``float``, a dictionary as ``{label: float}``."""
    if spec.kind == "string":
        return value if isinstance(value, str) else str(np.asarray(value).item())
    if spec.kind == "int64":
        return int(np.asarray(value).item())
    if spec.kind == "double":
        return float(np.asarray(value).item())
    if spec.kind == "dictionary":
        if not isinstance(value, dict):
            raise TypeError(f"output {spec.name!r} is a dictionary, got {type(value).__name__}")
        to_key = str if spec.key_kind == "string" else int
        return {to_key(k): float(v) for k, v in value.items()}
    raise ValueError(f"output {spec.name!r} is a multi-array, not a {spec.kind} feature")


def state_specs_from_description(features) -> list[TensorSpec]:
    """The states (iOS 18) a model or function description declares (its ``state`` field), one spec each: name,
    shape and dtype of the buffer. Core ML states wrap fixed-shape multi-arrays (fp16 in every converted model)."""
    specs = []
    for feature in features:
        kind = feature.type.WhichOneof("Type")
        if kind != "stateType" or feature.type.stateType.WhichOneof("Type") != "arrayType":
            raise NotImplementedError(f"state {feature.name!r} is of type {kind!r}; only multi-array states are supported")
        arr = feature.type.stateType.arrayType
        dtype = ARRAY_DTYPES.get(arr.dataType)
        if dtype is None:
            raise NotImplementedError(f"state {feature.name!r} has unsupported array data type {arr.dataType}")
        specs.append(TensorSpec(feature.name, tuple(int(d) for d in arr.shape), dtype))
    return specs


def check_feeds(specs: list[TensorSpec], feeds: dict, model: str) -> dict[str, np.ndarray]:
    """Validate ``feeds`` against the declared inputs; return them as arrays of the declared dtypes.

    Float inputs accept any float array (cast to the declared precision); integer inputs accept integer
    arrays whose values fit. Anything else is a ``ValueError`` naming the input, expected vs got.
    """
    if not isinstance(feeds, dict):
        raise TypeError(f"{model}: predict() takes a dict of input name -> array, got {type(feeds).__name__}")
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(feeds) - set(by_name))
    if unknown:
        raise ValueError(f"{model}: unknown input(s) {unknown}; the model's inputs are {sorted(by_name)}")
    missing = [name for name in by_name if name not in feeds]
    if missing:
        raise ValueError(
            f"{model}: missing input(s) {missing}; expected " + "; ".join(str(by_name[n]) for n in missing)
        )
    checked = {}
    for name, spec in by_name.items():
        if not spec.is_array:
            raise NotImplementedError(f"{model}: input {name!r} is a {spec.kind} feature; only multi-array inputs "
                                      "are supported")
        value = feeds[name]
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind not in "fiub":
            raise ValueError(f"{model}: input {name!r} expected {spec.dtype.name}, got an array of {arr.dtype}")
        if spec.dtype.kind == "f":
            if arr.dtype.kind not in "fiu":
                raise ValueError(f"{model}: input {name!r} expected {spec.dtype.name}, got {arr.dtype.name}")
        elif spec.dtype.kind in "iu":
            if arr.dtype.kind not in "iu":
                raise ValueError(f"{model}: input {name!r} expected {spec.dtype.name} (integer), got {arr.dtype.name}")
            info = np.iinfo(spec.dtype)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise ValueError(f"{model}: input {name!r} has values outside the range of {spec.dtype.name}")
        if not spec.accepts_shape(arr.shape):
            raise ValueError(
                f"{model}: input {name!r} expected shape {spec.shape_text()}, got {list(arr.shape)}"
            )
        checked[name] = np.ascontiguousarray(arr.astype(spec.dtype, copy=False))
    return checked


def check_state_argument(source: str, states: list[TensorSpec], state, making: bool = False) -> None:
    """The ``state`` argument of ``predict`` (or ``make_state()`` when ``making``) against the model's declared
    ``states``, the same for both backends: a stateful model needs one, a stateless model takes none."""
    if not states and making:
        raise ValueError(f"{source}: this model has no states (it is not an iOS 18 stateful model)")
    if not states and state is not None:
        raise ValueError(f"{source}: this model has no states, but predict() was given state={state!r}")
    if states and state is None and not making:
        raise ValueError(f"{source}: this model is stateful (states: " + "; ".join(str(s) for s in states)
                         + "); pass state=model.make_state() to predict() and reuse it across calls")
