"""Random sampling kernels (``random_uniform``, ``random_normal``, ``random_bernoulli``, ``random_categorical``).

The runtime does not reproduce Apple's generator (see ``conversions/runtime/mil/ops/random.py``), so nothing here
compares values with Core ML: the tests check the distributions (sample moments, ranges, frequencies) and the
seed contract (a fixed seed repeats its values from one prediction to the next, ``-1`` does not).

Statistical bounds. With N independent samples, a sample mean lies within 6 standard errors of its expectation
except with probability ~2e-9 (normal approximation, fine at N = 100_000); the tests make a few dozen such checks,
so a correct kernel fails a run with probability < 1e-7, while a parameter off by a few percent (or a swapped
probability) lands well beyond 6 standard errors. Every bound is written as ``6 * standard error``.
"""

from __future__ import annotations

import math

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import get_new_symbol

from conversions.runtime import load_model
from conversions.runtime.mil.executor import RuntimeOpError
from conversions.testing import convert_program

N = 100_000
N_BERNOULLI = 1_000_000  # a Bernoulli frequency has a large variance: more samples resolve p to 0.3 %
SIGMAS = 6.0
K = 5
PROBS = np.array([[0.1, 0.2, 0.3, 0.15, 0.25], [0.7, 0.0, 0.1, 0.1, 0.1]], np.float32)  # rows sum to 1; 0 included
UNNORMALISED = PROBS * np.float32(4.0)  # mode="probs" normalises each row
LOGITS = np.array([1.0, -0.5, 2.0, 0.0, -3.0], np.float32)
LOW, HIGH = -1.0, 3.0
MEAN, STDDEV = 2.0, 0.5
PROB = 0.25  # exact in fp16, so the fp16 program samples the same Bernoulli distribution
SEEDED = 64  # size of the seeded outputs


def _shape(*dims):
    return np.array(dims, dtype=np.int32)


def _program():
    @mb.program(input_specs=[mb.TensorSpec(shape=PROBS.shape), mb.TensorSpec(shape=LOGITS.shape)],
                opset_version=ct.target.iOS17)
    def prog(probs, logits):
        return (
            mb.random_uniform(shape=_shape(N), low=LOW, high=HIGH, name="uniform"),  # seed -1 (default)
            mb.random_normal(shape=_shape(N), mean=MEAN, stddev=STDDEV, seed=-1, name="normal"),
            mb.random_bernoulli(shape=_shape(N_BERNOULLI), prob=PROB, name="bernoulli"),
            mb.random_categorical(x=probs, mode="probs", size=N, name="categorical_probs"),
            mb.random_categorical(x=logits, size=N, name="categorical_logits"),  # mode "logits" (default)
            mb.random_uniform(shape=_shape(2, 4, 8), seed=7, name="uniform_seed7"),
            mb.random_uniform(shape=_shape(2, 4, 8), seed=8, name="uniform_seed8"),
            mb.random_normal(shape=_shape(SEEDED), seed=7, name="normal_seed7"),
            mb.random_bernoulli(shape=_shape(SEEDED), seed=7, name="bernoulli_seed7"),
            mb.random_categorical(x=probs, mode="probs", size=SEEDED, seed=7, name="categorical_seed7"),
        )

    return prog


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def sampled(request):
    """(precision, model, two predictions) of the sampling program."""
    precision = request.param
    model = load_model(convert_program(_program(), precision=precision), backend="mil", precision=precision)
    feeds = {"probs": UNNORMALISED, "logits": LOGITS}
    return precision, model, model.predict(feeds), model.predict(feeds)


def test_output_names_shapes_and_dtypes(sampled):
    precision, model, out, _ = sampled
    expected = {"uniform": (N,), "normal": (N,), "bernoulli": (N_BERNOULLI,), "categorical_probs": (2, N),
                "categorical_logits": (N,), "uniform_seed7": (2, 4, 8), "uniform_seed8": (2, 4, 8),
                "normal_seed7": (SEEDED,), "bernoulli_seed7": (SEEDED,), "categorical_seed7": (2, SEEDED)}
    assert {name: value.shape for name, value in out.items()} == expected
    assert all(value.dtype == np.float32 for value in out.values()), {k: v.dtype for k, v in out.items()}
    ops = {op.op_type for op in model.function.operations}
    assert {"random_uniform", "random_normal", "random_bernoulli", "random_categorical"} <= ops
    if precision == "fp16":  # the ops are typed fp16 in this program: their values are fp16 numbers
        typed = {o.name: o.type.dtype for op in model.function.operations for o in op.outputs
                 if op.op_type.startswith("random_")}
        assert set(typed.values()) == {"fp16"}, typed
        for name, value in out.items():
            assert np.array_equal(value.astype(np.float16).astype(np.float32), value), name


def test_uniform(sampled):
    precision, _, out, _ = sampled
    u = out["uniform"].astype(np.float64)
    width = HIGH - LOW
    # [low, high) in fp32; an fp16 program rounds to fp16, which can round a value just below high up to high.
    assert u.min() >= LOW and (u.max() < HIGH if precision == "fp32" else u.max() <= HIGH)
    # Both ends are reached: P(no sample within 1e-3 * width of an end) = (1 - 1e-3)^N ~ e^-100.
    assert u.min() < LOW + 1e-3 * width and u.max() > HIGH - 1e-3 * width
    mean_se = width / math.sqrt(12 * N)
    assert abs(u.mean() - (LOW + HIGH) / 2) < SIGMAS * mean_se
    # Sample variance: standard error sqrt((mu4 - sigma^4) / N), mu4 = width^4 / 80 for a uniform distribution.
    var_se = math.sqrt((width**4 / 80 - (width**2 / 12) ** 2) / N)
    assert abs(u.var() - width**2 / 12) < SIGMAS * var_se
    # Flat: each of 10 equal bins holds a tenth of the samples (binomial standard error).
    counts, _ = np.histogram(u, bins=10, range=(LOW, HIGH))
    assert np.all(np.abs(counts / N - 0.1) < SIGMAS * math.sqrt(0.1 * 0.9 / N)), counts


def test_normal(sampled):
    _, _, out, _ = sampled
    z = out["normal"].astype(np.float64)
    assert abs(z.mean() - MEAN) < SIGMAS * STDDEV / math.sqrt(N)
    # Sample variance of a normal: standard error sigma^2 * sqrt(2 / N). (fp16 rounding of values near 2, step
    # 2^-9, adds a variance of ~3e-7: far inside the bound of ~7e-3.)
    assert abs(z.var() - STDDEV**2) < SIGMAS * STDDEV**2 * math.sqrt(2 / N)
    # Shape, not just moments: the fraction within one and two stddevs of the mean.
    for k, p in [(1, 0.682689492), (2, 0.954499736)]:
        frac = np.mean(np.abs(z - MEAN) < k * STDDEV)
        assert abs(frac - p) < SIGMAS * math.sqrt(p * (1 - p) / N), (k, frac)


def test_bernoulli(sampled):
    _, _, out, _ = sampled
    b = out["bernoulli"]
    assert set(np.unique(b).tolist()) == {0.0, 1.0}
    assert abs(b.mean() - PROB) < SIGMAS * math.sqrt(PROB * (1 - PROB) / N_BERNOULLI)


def _assert_frequencies(draws: np.ndarray, probs: np.ndarray, what: str):
    """Class indices are whole numbers in [0, K); each class's frequency is within 6 binomial standard errors of
    its probability (a class of probability 0 is never drawn)."""
    assert np.array_equal(draws, np.round(draws)) and draws.min() >= 0 and draws.max() < len(probs), what
    freq = np.bincount(draws.astype(np.int64), minlength=len(probs)) / draws.size
    bound = SIGMAS * np.sqrt(probs * (1 - probs) / draws.size)
    assert np.all(np.abs(freq - probs) <= bound), f"{what}: frequencies {freq} vs probabilities {probs}"


def test_categorical(sampled):
    _, _, out, _ = sampled
    for row in range(PROBS.shape[0]):
        _assert_frequencies(out["categorical_probs"][row], PROBS[row].astype(np.float64), f"probs row {row}")
    softmax = np.exp(LOGITS.astype(np.float64)) / np.exp(LOGITS.astype(np.float64)).sum()
    _assert_frequencies(out["categorical_logits"], softmax, "logits")


def test_seeds(sampled):
    _, _, first, second = sampled
    for name in ("uniform_seed7", "normal_seed7", "bernoulli_seed7", "categorical_seed7"):
        assert np.array_equal(first[name], second[name]), f"{name}: a fixed seed must repeat its values"
    assert not np.array_equal(first["uniform_seed7"], first["uniform_seed8"]), "seeds 7 and 8 gave the same values"
    for name in ("uniform", "normal", "bernoulli", "categorical_probs", "categorical_logits"):
        assert not np.array_equal(first[name], second[name]), f"{name}: seed -1 must draw new values on every call"
    # Seeded draws still follow their distribution (the seed picks values, not parameters).
    assert 0.0 <= first["uniform_seed7"].min() and first["uniform_seed7"].max() < 1.0
    assert set(np.unique(first["bernoulli_seed7"]).tolist()) <= {0.0, 1.0}


def test_shape_from_a_variable():
    """``shape`` computed at run time (from a flexible-shape input), not folded into a constant."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(get_new_symbol(), 3))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.random_normal(shape=mb.shape(x=x), mean=5.0, name="normal")

    mlmodel = convert_program(prog, inputs=[ct.TensorType(name="x", shape=ct.Shape((ct.RangeDim(1, 64), 3)))])
    model = load_model(mlmodel, backend="mil")
    (op,) = [op for op in model.function.operations if op.op_type == "random_normal"]
    assert op.inputs["shape"][0].var is not None, "the shape was folded into a constant"
    for rows in (2, 50):
        out = model.predict({"x": np.zeros((rows, 3), np.float32)})["normal"]
        assert out.shape == (rows, 3) and out.dtype == np.float32
        # 3 * rows standard normal draws + 5: the sample mean is within 6 standard errors of 5.
        assert abs(out.mean() - 5.0) < SIGMAS / math.sqrt(out.size)


def _predict_one(op_builder):
    @mb.program(input_specs=[mb.TensorSpec(shape=(2,))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.add(x=x, y=op_builder())

    return load_model(convert_program(prog), backend="mil").predict({"x": np.zeros(2, np.float32)})


@pytest.mark.parametrize("op_builder, expected", [
    (lambda: mb.random_bernoulli(shape=_shape(2), prob=1.5, name="bad"), "input 'prob' must lie in [0, 1], got 1.5"),
    (lambda: mb.random_uniform(shape=_shape(2), low=2.0, high=1.0, name="bad"),
     "input 'high' must be >= 'low' (low=2.0), got high=1.0"),
    (lambda: mb.random_normal(shape=_shape(2), stddev=-1.0, name="bad"), "input 'stddev' must be >= 0, got -1.0"),
], ids=["bernoulli-prob", "uniform-high-below-low", "normal-negative-stddev"])
def test_bad_parameters_name_the_op_and_input(op_builder, expected):
    with pytest.raises(RuntimeOpError) as info:
        _predict_one(op_builder)
    assert "op 'bad'" in str(info.value) and expected in str(info.value), str(info.value)
