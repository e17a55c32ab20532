"""iOS 18 stateful models: ``read_state`` / ``write_state`` and the ``make_state()`` / ``predict(state=)`` API.

Torch modules that mutate registered buffers in place are converted with ``ct.StateType`` states (coremltools'
"Stateful Models" guide) and run for many calls against torch, which mutates its own buffers the same way.

Precision. Core ML states are fp16 only (coremltools refuses any other dtype), also with fp32 compute precision:
such a program reads the state through ``cast`` to fp32 and writes it through ``cast`` to fp16. So the runtime's
``precision="fp32"`` (every fp16 value kept in fp32 storage, states included) gives the exact-arithmetic result and
is compared tightly with torch, while ``precision="fp16"`` (what Core ML does: the state holds fp16) is compared with
an independent numpy emulation of fp16 storage where one is exact (the accumulator), and with torch at a tolerance
derived from fp16's resolution.
"""

from __future__ import annotations

import copy
import sys
import warnings

import coremltools as ct
import numpy as np
import pytest
import torch

from conversions.runtime import ModelPackageError, load_model
from conversions.runtime.mil import MILState
from conversions.runtime.mil.program import StateType, TensorType, parse_program
from conversions.runtime.package import open_mlmodel
from conversions.testing import edit_package_spec

CALLS = 20
ACC_SHAPE = (3, 4)
D, L = 8, CALLS  # KV cache: head size, cache length (one token per call)
FP32_TOL = dict(atol=1e-5, rtol=1e-4)  # only summation-order differences


# ---- modules ---------------------------------------------------------------------------------------------
class Accumulator(torch.nn.Module):
    """Running sum of its inputs in a buffer (the guide's example); returns ``2 * acc``."""

    def __init__(self):
        super().__init__()
        self.register_buffer("acc", torch.zeros(ACC_SHAPE))

    def forward(self, x):
        self.acc.add_(x)
        return self.acc * 2.0


class KVCacheAttention(torch.nn.Module):
    """One decoding step of single-head attention: writes this token's k/v at ``pos`` into cache buffers and
    attends over the cache, the positions after ``pos`` masked out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = (torch.nn.Linear(D, D) for _ in range(3))
        self.register_buffer("k_cache", torch.zeros(1, L, D))
        self.register_buffer("v_cache", torch.zeros(1, L, D))

    def forward(self, x, pos):
        q, k, v = self.q(x), self.k(x), self.v(x)
        self.k_cache[:, pos:pos + 1, :] = k
        self.v_cache[:, pos:pos + 1, :] = v
        visible = (torch.arange(L) <= pos).float()
        scores = q @ self.k_cache.transpose(1, 2) / np.sqrt(D) + (visible - 1.0) * 1e4
        return torch.softmax(scores, dim=-1) @ self.v_cache


def fresh(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with its buffers zeroed (the reference; Core ML states also start at zero)."""
    ref = copy.deepcopy(module)
    for b in ref.buffers():
        b.zero_()
    return ref


def convert(module, example, inputs, states, precision="fp32"):
    module = fresh(module).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example)
        return ct.convert(
            traced, inputs=inputs, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
            states=[ct.StateType(wrapped_type=ct.TensorType(shape=shape, dtype=np.float16), name=name)
                    for name, shape in states],
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
            compute_units=ct.ComputeUnit.CPU_ONLY,
        )


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def accumulator(request):
    """(precision of the program, converted accumulator)."""
    return request.param, convert(Accumulator(), (torch.zeros(ACC_SHAPE),), [ct.TensorType(name="x", shape=ACC_SHAPE)],
                                  [("acc", ACC_SHAPE)], request.param)


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def kv_cache(request):
    module = KVCacheAttention().eval()
    mlmodel = convert(module, (torch.zeros(1, 1, D), torch.tensor([0], dtype=torch.int32)),
                      [ct.TensorType(name="x", shape=(1, 1, D)), ct.TensorType(name="pos", shape=(1,), dtype=np.int32)],
                      [("k_cache", (1, L, D)), ("v_cache", (1, L, D))], request.param)
    return request.param, module, mlmodel


def xs(seed: int, n: int = CALLS, shape=ACC_SHAPE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(n)]


def torch_steps(module, feeds: list[tuple]) -> list[np.ndarray]:
    with torch.no_grad():
        return [module(*(torch.from_numpy(np.asarray(a)) for a in args)).numpy() for args in feeds]


def as_fed(x: np.ndarray, program: str) -> np.ndarray:
    """``x`` as the program receives it: an fp16 program declares its float inputs fp16 (rounded on the way in)."""
    return x.astype(np.float16).astype(np.float32) if program == "fp16" else x


def only_output(result: dict) -> np.ndarray:
    (value,) = result.values()
    return value


# ---- program parsing ---------------------------------------------------------------------------------------
def test_state_inputs_parse_with_their_wrapped_tensor_type(kv_cache):
    _, _, mlmodel = kv_cache
    opened = open_mlmodel(mlmodel)
    function = parse_program(opened.spec.mlProgram, opened.weights_dir).functions["main"]
    types = {v.name: v.type for v in function.inputs}
    assert types["k_cache"] == StateType(TensorType("fp16", (1, L, D)))
    assert types["v_cache"] == StateType(TensorType("fp16", (1, L, D)))
    assert isinstance(types["x"], TensorType)
    ops = {op.op_type for op in function.operations}
    assert {"read_state", "write_state"} <= ops, "coremltools writes coreml_update_state as write_state + read_state"
    model = load_model(mlmodel, backend="mil")
    assert [(s.name, s.shape, s.dtype) for s in model.states] == [
        ("k_cache", (1, L, D), np.dtype(np.float16)), ("v_cache", (1, L, D), np.dtype(np.float16))]


# ---- accumulator ---------------------------------------------------------------------------------------------
def test_accumulator_fp32_storage_matches_torch(accumulator):
    program, mlmodel = accumulator
    model = load_model(mlmodel, backend="mil", precision="fp32")
    state = model.make_state()
    inputs = xs(1)
    ref = fresh(Accumulator())
    expected = torch_steps(ref, [(as_fed(x, program),) for x in inputs])
    for i, x in enumerate(inputs):
        got = only_output(model.predict({"x": x}, state=state))
        assert got.dtype == np.float32  # fp16 values come back in fp32 storage
        np.testing.assert_allclose(got, expected[i], err_msg=f"call {i}", **FP32_TOL)
    np.testing.assert_allclose(state.read_state("acc"), ref.acc.numpy(), **FP32_TOL)


def test_accumulator_fp16_state_rounds_like_core_ml(accumulator):
    """``precision="fp16"``: the state holds fp16. Against an exact numpy emulation: the fp32 program adds in fp32
    and rounds the sum to fp16 on the way into the state; the fp16 program also rounds its input and output."""
    program, mlmodel = accumulator
    model = load_model(mlmodel, backend="mil", precision="fp16")
    state = model.make_state()
    acc = np.zeros(ACC_SHAPE, np.float16)
    for i, x in enumerate(xs(2)):
        acc = (acc.astype(np.float32) + as_fed(x, program)).astype(np.float16)
        want = acc.astype(np.float32) * 2.0
        if program == "fp16":
            want = want.astype(np.float16)
        got = only_output(model.predict({"x": x}, state=state))
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, err_msg=f"call {i}")
    np.testing.assert_array_equal(state.read_state("acc"), acc)
    # and against torch (fed what the program receives): each call rounds the running sum once, by at most half an
    # fp16 ulp of |acc| <= max|acc| (2^-11 relative), so the last output is within (CALLS + 1) such roundings
    # (one more for the fp16 program's output) of torch's.
    expected = torch_steps(fresh(Accumulator()), [(as_fed(x, program),) for x in xs(2)])[-1]
    bound = (CALLS + 1) * 2.0 ** -11 * float(np.abs(expected).max())
    np.testing.assert_allclose(got.astype(np.float32), expected, atol=bound, rtol=0)


def test_states_are_independent_and_persist_across_calls(accumulator):
    _, mlmodel = accumulator
    model = load_model(mlmodel, backend="mil", precision="fp32")
    s1, s2 = model.make_state(), model.make_state()
    program = accumulator[0]
    r1, r2 = fresh(Accumulator()), fresh(Accumulator())
    tol = FP32_TOL
    for i, (a, b) in enumerate(zip(xs(3, 10), xs(4, 10))):
        got_a = only_output(model.predict({"x": a}, state=s1))
        got_b = only_output(model.predict({"x": b}, state=s2))
        (want_a,), (want_b,) = torch_steps(r1, [(as_fed(a, program),)]), torch_steps(r2, [(as_fed(b, program),)])
        np.testing.assert_allclose(got_a, want_a, err_msg=f"state 1, call {i}", **tol)
        np.testing.assert_allclose(got_b, want_b, err_msg=f"state 2, call {i}", **tol)
    assert not np.allclose(s1.read_state("acc"), s2.read_state("acc"))
    # a new state starts from zeros, whatever the others hold, and leaves them alone
    before = s1.read_state("acc")
    s3 = model.make_state()
    assert isinstance(s3, MILState) and s3.names == ["acc"]
    np.testing.assert_array_equal(s3.read_state("acc"), np.zeros(ACC_SHAPE, np.float32))
    x = xs(5, 1)[0]
    np.testing.assert_allclose(only_output(model.predict({"x": x}, state=s3)),
                               torch_steps(fresh(Accumulator()), [(as_fed(x, program),)])[0], **tol)
    np.testing.assert_array_equal(s1.read_state("acc"), before)


def test_write_state_sets_the_buffer(accumulator):
    _, mlmodel = accumulator
    model = load_model(mlmodel, backend="mil", precision="fp16")
    state = model.make_state()
    start = np.full(ACC_SHAPE, 0.1, np.float32)
    state.write_state("acc", start)
    np.testing.assert_array_equal(state.read_state("acc"), start.astype(np.float16))  # rounded: an fp16 buffer
    x = np.ones(ACC_SHAPE, np.float32)
    want = (np.float16(0.1).astype(np.float32) + 1.0).astype(np.float16).astype(np.float32) * 2.0
    np.testing.assert_allclose(only_output(model.predict({"x": x}, state=state)).astype(np.float32),
                               np.full(ACC_SHAPE, want), rtol=1e-3)
    with pytest.raises(ValueError, match=r"state 'acc' expected shape \[3, 4\], got \[4, 3\]"):
        state.write_state("acc", np.zeros((4, 3), np.float32))
    with pytest.raises(KeyError, match=r"no state 'nope'.*\['acc'\]"):
        state.read_state("nope")


def test_trace_of_a_stateful_prediction(accumulator):
    _, mlmodel = accumulator
    model = load_model(mlmodel, backend="mil", precision="fp32")
    state = model.make_state()
    x = np.ones(ACC_SHAPE, np.float32)
    model.predict({"x": x}, state=state)
    trace = model.trace({"x": x}, state=state)
    reads = [t for t in trace.values() if t.op_type == "read_state"]
    assert reads and all(np.allclose(next(iter(t.outputs.values())), [1.0, 2.0][i]) for i, t in enumerate(reads))
    np.testing.assert_allclose(state.read_state("acc"), 2 * x)  # the traced call updated the state too


# ---- KV cache --------------------------------------------------------------------------------------------------
# fp16 storage: the cache (and, in the fp16 program, the input, weights, q/k/v, softmax weights and output) is rounded
# to fp16: 2^-11 relative on values of O(1), a few roundings deep. Measured worst |runtime - torch| over the 20 steps
# (the test prints it): 1.0e-4 (fp32 program, fp16 state), 2.4e-4 (fp16 program). The tolerance leaves a factor ~8
# and stays far below what a cache that is not written, a wrong position or mask gives (O(0.1); checked by breaking
# write_state). Apple's runtime has its own kernels (fp16 CPU kernels may accumulate in fp16), hence a looser bound.
KV_FP16_TOL = dict(atol=2e-3, rtol=2e-3)
CORE_ML_TOL = dict(atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_kv_cache_attention_matches_torch(kv_cache, precision):
    program, module, mlmodel = kv_cache
    model = load_model(mlmodel, backend="mil", precision=precision)
    state = model.make_state()
    ref = fresh(module)
    rng = np.random.default_rng(7)
    tokens = [rng.uniform(-1, 1, (1, 1, D)).astype(np.float32) for _ in range(CALLS)]
    feeds = [(t, np.array([i], np.int32)) for i, t in enumerate(tokens)]
    expected = torch_steps(ref, feeds)
    exact = program == "fp32" and precision == "fp32"
    tol = FP32_TOL if exact else KV_FP16_TOL
    worst = 0.0
    for i, (t, pos) in enumerate(feeds):
        got = only_output(model.predict({"x": t, "pos": pos}, state=state)).astype(np.float32)
        worst = max(worst, float(np.abs(got - expected[i]).max()))
        np.testing.assert_allclose(got, expected[i], err_msg=f"step {i}", **tol)
    for name in ("k_cache", "v_cache"):
        np.testing.assert_allclose(state.read_state(name).astype(np.float32), getattr(ref, name).numpy(),
                                   err_msg=name, **tol)
    print(f"\nkv cache, {program} program, precision={precision}: worst |runtime - torch| over {CALLS} steps {worst:.2e}")


def test_kv_cache_states_are_independent(kv_cache):
    program, module, mlmodel = kv_cache
    model = load_model(mlmodel, backend="mil", precision="fp32")
    tol = FP32_TOL if program == "fp32" else KV_FP16_TOL
    s1, s2 = model.make_state(), model.make_state()
    r1, r2 = fresh(module), fresh(module)
    rng = np.random.default_rng(8)
    for i in range(6):
        for state, ref in ((s1, r1), (s2, r2)):
            t = rng.uniform(-1, 1, (1, 1, D)).astype(np.float32)
            pos = np.array([i], np.int32)
            got = only_output(model.predict({"x": t, "pos": pos}, state=state))
            np.testing.assert_allclose(got, torch_steps(ref, [(t, pos)])[0], err_msg=f"step {i}", **tol)
    assert np.all(s1.read_state("k_cache")[0, 6:] == 0) and np.any(s1.read_state("k_cache")[0, :6] != 0)


# ---- errors ------------------------------------------------------------------------------------------------------
def test_state_errors(accumulator):
    _, mlmodel = accumulator
    model = load_model(mlmodel, backend="mil")
    x = {"x": np.zeros(ACC_SHAPE, np.float32)}
    with pytest.raises(ValueError, match=r"stateful \(states: acc: float16 \[3, 4\]\).*make_state"):
        model.predict(x)
    other = load_model(mlmodel, backend="mil")
    with pytest.raises(ValueError, match="made by another model"):
        model.predict(x, state=other.make_state())
    with pytest.raises(TypeError, match="state must come from this model's make_state.*got dict"):
        model.predict(x, state={"acc": np.zeros(ACC_SHAPE)})
    model.predict(x, state=model.make_state())  # its own state is fine


def test_stateless_model_refuses_state():
    mlmodel = convert(torch.nn.ReLU(), (torch.zeros(2, 2),), [ct.TensorType(name="x", shape=(2, 2))], [])
    model = load_model(mlmodel, backend="mil")
    assert model.states == []
    stateful = load_model(convert(Accumulator(), (torch.zeros(ACC_SHAPE),), [ct.TensorType(name="x", shape=ACC_SHAPE)],
                                  [("acc", ACC_SHAPE)]), backend="mil")
    with pytest.raises(ValueError, match="has no states, but predict"):
        model.predict({"x": np.zeros((2, 2), np.float32)}, state=stateful.make_state())
    with pytest.raises(ValueError, match="has no states"):
        model.make_state()


def test_package_whose_states_disagree_with_its_description(tmp_path, accumulator):
    _, mlmodel = accumulator
    path = tmp_path / "acc.mlpackage"
    mlmodel.save(str(path))

    def reshape_state(spec):
        del spec.description.state[0].type.stateType.arrayType.shape[:]
        spec.description.state[0].type.stateType.arrayType.shape.extend([4, 3])

    edit_package_spec(path, reshape_state)
    with pytest.raises(ModelPackageError, match=r"state 'acc' is declared float16 \[4, 3\] but the function takes it "
                                                r"as state<fp16\[3, 4\]>"):
        load_model(path, backend="mil")

    def drop_state(spec):
        del spec.description.state[:]

    edit_package_spec(path, drop_state)
    with pytest.raises(ModelPackageError, match="'acc'.*does not declare"):
        load_model(path, backend="mil")


# ---- Apple's runtime -------------------------------------------------------------------------------------------
@pytest.mark.skipif(sys.platform != "darwin", reason="Apple's Core ML runtime runs on macOS only")
def test_core_ml_backend_runs_the_same_states(kv_cache):
    program, module, mlmodel = kv_cache
    model = load_model(mlmodel, backend="coreml")
    assert [(s.name, s.shape) for s in model.states] == [("k_cache", (1, L, D)), ("v_cache", (1, L, D))]
    with pytest.raises(ValueError, match="stateful"):
        model.predict({"x": np.zeros((1, 1, D), np.float32), "pos": np.array([0], np.int32)})
    with pytest.raises(ValueError, match="not made by this model"):
        model.predict({"x": np.zeros((1, 1, D), np.float32), "pos": np.array([0], np.int32)},
                      state=load_model(mlmodel, backend="coreml").make_state())
    portable = load_model(mlmodel, backend="mil")
    s_coreml, s_mil, ref = model.make_state(), portable.make_state(), fresh(module)
    rng = np.random.default_rng(9)
    for i in range(CALLS):
        feeds = {"x": rng.uniform(-1, 1, (1, 1, D)).astype(np.float32), "pos": np.array([i], np.int32)}
        got = only_output(model.predict(feeds, state=s_coreml)).astype(np.float32)
        mil = only_output(portable.predict(feeds, state=s_mil)).astype(np.float32)
        (want,) = torch_steps(ref, [(feeds["x"], feeds["pos"])])
        np.testing.assert_allclose(got, want, err_msg=f"Core ML vs torch, step {i}", **CORE_ML_TOL)
        np.testing.assert_allclose(got, mil, err_msg=f"Core ML vs portable runtime, step {i}", **CORE_ML_TOL)
