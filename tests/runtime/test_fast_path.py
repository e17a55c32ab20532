"""The executor's fast path (``conversions.runtime.mil.fastpath``) computes what the plain loop computes.

``predict`` without trace/overrides takes the fast path; ``trace=True`` takes the plain loop of
``Executor._run``. The fast path leaves out fp16 rounding after value-preserving ops whose inputs are already
fp16 and rounds some outputs in place: these tests pin the cases where that would go wrong against numpy
references that round after every fp16-typed op.
"""

from __future__ import annotations

import numpy as np
import pytest

from conversions.runtime import load_model
from conversions.testing import convert_program

F16, F32 = np.float16, np.float32


def _r16(a) -> np.ndarray:
    with np.errstate(over="ignore"):  # beyond fp16's range: inf, as the runtime stores it
        return np.asarray(a, dtype=F32).astype(F16).astype(F32)


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=F32).view(np.int32)


def _program(mb, ct):
    """fp32 inputs; the fp16 export casts them to fp16 and computes: add, relu, reshape, concat with a constant,
    slice, maximum with a constant, mul. The constants are not fp16 values: their fp16 casts are."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 6)), mb.TensorSpec(shape=(2, 6))], opset_version=ct.target.iOS17)
    def prog(x, y):
        s = mb.add(x=x, y=y)
        r = mb.relu(x=s)
        t = mb.reshape(x=r, shape=[3, 4])
        c = mb.concat(values=[t, np.full((1, 4), 0.1, dtype=F32)], axis=0)
        sl = mb.slice_by_index(x=c, begin=[1, 0], end=[4, 4])
        m = mb.maximum(x=sl, y=np.full((3, 4), 0.3, dtype=F32))
        return mb.mul(x=m, y=3.3)

    return prog


def _reference(x, y, storage):
    """numpy: every op in fp32, each output stored by ``storage`` (fp16 rounding, or none); the fp16 export
    casts the inputs first."""
    s = storage(storage(x) + storage(y))
    r = storage(np.maximum(s, 0))
    c = np.concatenate([r.reshape(3, 4), storage(np.full((1, 4), 0.1, F32))], axis=0)
    m = storage(np.maximum(c[1:4], storage(np.full((3, 4), 0.3, F32))))
    return storage(m * storage(F32(3.3)))


@pytest.fixture(scope="module")
def mlmodels():
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    return {p: convert_program(_program(mb, ct), precision=p) for p in ("fp16", "fp32")}


@pytest.fixture(scope="module")
def feeds():
    rng = np.random.default_rng(3)
    # not fp16 values, some negative (relu), some tiny (fp16 subnormals) and some beyond fp16's range
    x = rng.standard_normal((2, 6)).astype(F32) * np.array([1, 1e-6, 1, 7e4, 1, 1], dtype=F32)
    y = rng.standard_normal((2, 6)).astype(F32)
    return {"x": x, "y": y}


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_fast_path_matches_numpy_and_the_plain_loop(mlmodels, feeds, precision):
    model = load_model(mlmodels[precision], backend="mil", precision=precision)
    (name,) = [o.name for o in model.outputs]
    storage = _r16 if precision == "fp16" else (lambda a: np.asarray(a, dtype=F32))
    expected = _reference(feeds["x"], feeds["y"], storage)
    fast = model.predict(feeds)[name]
    plain = model.predict(feeds, trace=True)[0][name]
    np.testing.assert_array_equal(_bits(fast), _bits(expected))
    np.testing.assert_array_equal(_bits(fast), _bits(plain))


def test_repeated_calls_leave_feeds_and_constants_alone(mlmodels, feeds):
    """Rounding in place must only touch tensors a kernel allocated: feeds, constants and earlier results stay."""
    model = load_model(mlmodels["fp16"], backend="mil", precision="fp16")
    (name,) = [o.name for o in model.outputs]
    kept = {k: v.copy() for k, v in feeds.items()}
    first = model.predict(feeds)[name].copy()
    second = model.predict(feeds)[name]
    np.testing.assert_array_equal(_bits(first), _bits(second))
    for k in feeds:
        np.testing.assert_array_equal(feeds[k], kept[k])


def test_fp16_op_variant_rounds_value_preserving_ops_reading_fp32(mlmodels, feeds):
    """``with_fp16_ops`` on the fp32 program: only ``relu`` stores fp16, its input (the add) stays fp32, so the
    relu output must be rounded although relu only passes values on; the other ops keep fp32."""
    model = load_model(mlmodels["fp32"], backend="mil", precision="fp32")
    (relu,) = [op.name for op in model.function.operations if op.op_type == "relu"]
    variant = model.with_fp16_ops({relu: []})
    (name,) = [o.name for o in model.outputs]
    x, y = feeds["x"], feeds["y"]
    r = _r16(np.maximum(x + y, 0)).reshape(3, 4)
    c = np.concatenate([r, np.full((1, 4), 0.1, F32)], axis=0)
    expected = np.maximum(c[1:4], F32(0.3)) * F32(3.3)
    fast = variant.predict(feeds)[name]
    np.testing.assert_array_equal(_bits(fast), _bits(expected))
    np.testing.assert_array_equal(_bits(fast), _bits(variant.predict(feeds, trace=True)[0][name]))
    # and the fp32 model itself still stores the add unrounded
    np.testing.assert_array_equal(_bits(model.predict(feeds)[name]),
                                  _bits(_reference(x, y, lambda a: np.asarray(a, dtype=F32))))
