"""Control flow (``cond``, ``while_loop``) and tensor lists (``make_list``, ``list_*``) on the portable runtime.

MIL builder programs are checked against numpy references written here (fp32 programs, and fp16 programs against
the same reference rounded to fp16 wherever the program stores fp16); torch modules that coremltools 9 converts
to these ops are checked against torch:

- ``torch.nn.GRU`` converts (traced, torch 2.13) to an unrolled-in-MIL ``while_loop`` over time steps -- not to
  the MIL ``gru`` op -- for 1 and 2 layers, bidirectional and batch_first; the tests assert which op types appear.
- ``torch.jit.script`` modules with data-dependent control flow convert (coremltools marks TorchScript
  conversion experimental): ``while x.sum() < thr`` and ``for i in range(int(n[0]))`` become ``while_loop``,
  ``if x.sum() > 0`` becomes ``cond``. A rank-0 input (``n`` of shape ``()``) is refused by coremltools
  ("Rank-0 (input None) is unsupported"), so the trip count comes in a shape-``(1,)`` tensor.

coremltools 9 serializes ``while_loop`` with two blocks (condition, body), each taking the loop variables as
block inputs, and ``cond`` with two input-less blocks (true, false branch); the tests look at the parsed
program to check that layout.
"""

from __future__ import annotations

import warnings

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from conversions.runtime import ModelPackageError, load_model
from conversions.runtime.mil import blocks
from conversions.runtime.mil.executor import RuntimeOpError
from conversions.runtime.mil.ops import lists
from conversions.testing import convert_module, edit_package_spec, torch_outputs

PRECISIONS = ["fp32", "fp16"]
# The numpy references compute every op in float32, like the runtime, and the fp16 ones round to fp16 wherever the
# program stores fp16, like the runtime: the results agree to the last bit but for summation order in reductions
# (an fp32 ulp). Any missed or extra fp16 rounding is >= 2^-11 relative, far above this tolerance.
REFERENCE_TOLERANCE = {"fp32": dict(rtol=1e-6, atol=1e-7), "fp16": dict(rtol=1e-6, atol=1e-7)}


def f16(a):
    """``a`` rounded to fp16, carried in float32 (how the program stores an fp16 value)."""
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def rounding(precision):
    return f16 if precision == "fp16" else (lambda a: np.asarray(a, np.float32))


def program(*input_specs):
    """A factory of fresh builder programs with these inputs: ``ct.convert`` rewrites the program it is given in
    place (its fp16 pass inserts casts), so every conversion starts from a new one."""
    def wrap(body):
        def build():
            return mb.program(input_specs=list(input_specs), opset_version=ct.target.iOS17)(body)

        build.__name__ = body.__name__
        return build

    return wrap


def load(prog, precision, target=ct.target.iOS17):
    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target,
                         compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    return load_model(mlmodel, backend="mil", precision=precision)


def all_ops(operations):
    """Every op of a parsed program, nested blocks included, in program order."""
    for op in operations:
        yield op
        for block in op.blocks:
            yield from all_ops(block.operations)


def op_types(model) -> set[str]:
    return {op.op_type for op in all_ops(model.function.operations)}


def outputs(model, feeds):
    out = model.predict(feeds)
    return [out[spec.name] for spec in model.outputs]


def assert_reference(got, expected, precision, what=""):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(expected, np.float64), err_msg=what,
                               **REFERENCE_TOLERANCE[precision])


# ---- cond ----------------------------------------------------------------------------------------------------------

@program(mb.TensorSpec(shape=(2, 3)))
def cond_program(x):
    pred = mb.greater(x=mb.reduce_sum(x=x), y=0.0)
    return mb.cond(pred=pred,
                   _true_fn=lambda: (mb.add(x=mb.mul(x=x, y=1.1), y=0.25), mb.reduce_max(x=x)),
                   _false_fn=lambda: (mb.sub(x=x, y=3.0), mb.reduce_min(x=x)))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_cond_takes_the_branch_its_input_selects(precision):
    model = load(cond_program(), precision)
    (op,) = [op for op in model.function.operations if op.op_type == "cond"]
    assert len(op.blocks) == 2 and not op.blocks[0].inputs and not op.blocks[1].inputs
    r = rounding(precision)
    rng = np.random.default_rng(0)
    for sign in (1.0, -1.0):  # the sum is far from 0, so fp16 rounding cannot flip the predicate
        x = (sign * (np.abs(rng.standard_normal((2, 3))) + 0.5)).astype(np.float32)
        xr = r(x)
        if sign > 0:
            expected = [r(r(xr * r(1.1)) + 0.25), xr.max()]
        else:
            expected = [r(xr - 3.0), xr.min()]
        got = outputs(model, {"x": x})
        for g, e, name in zip(got, expected, ["branch output", "branch reduction"]):
            assert_reference(g, e, precision, f"{name}, predicate {sign > 0}")


# ---- while_loop ----------------------------------------------------------------------------------------------------

@program(mb.TensorSpec(shape=(2, 3)), mb.TensorSpec(shape=(1,), dtype=types.int32))
def counted_loop(x, n):
    end = mb.squeeze(x=n)

    def body(i, y):
        return mb.add(x=i, y=1), mb.sub(x=mb.mul(x=y, y=1.5), y=0.25)

    return mb.while_loop(_cond=lambda i, y: mb.less(x=i, y=end), _body=body, loop_vars=(np.int32(0), x))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_while_loop_trip_count_comes_from_an_input(precision):
    model = load(counted_loop(), precision)
    (op,) = [op for op in model.function.operations if op.op_type == "while_loop"]
    assert [len(b.inputs) for b in op.blocks] == [2, 2] and [len(b.outputs) for b in op.blocks] == [1, 2]
    r = rounding(precision)
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    for n in (0, 1, 5):
        y = x  # the fp16 program carries the loop variable fp32 and casts it to fp16 inside the body
        for _ in range(n):
            y = r(r(r(y) * 1.5) - 0.25)
        count, got = outputs(model, {"x": x, "n": np.array([n], np.int32)})
        assert int(count) == n
        assert_reference(got, y, precision, f"n={n}")


@program(mb.TensorSpec(shape=(2, 3)), mb.TensorSpec(shape=(1, 3)), mb.TensorSpec(shape=(1,), dtype=types.int32))
def loop_with_outer_reads(x, w, n):
    bias = mb.reduce_mean(x=x)  # an op output of the enclosing scope, read inside the body
    end = mb.squeeze(x=n)

    def body(i, y):
        # A cond nested in the body: its false branch reads `x`, two scopes up, and the loop variable `y`.
        y = mb.cond(pred=mb.greater(x=mb.reduce_sum(x=y), y=0.0),
                    _true_fn=lambda: mb.mul(x=y, y=0.5),
                    _false_fn=lambda: mb.add(x=y, y=x))
        return mb.add(x=i, y=1), mb.add(x=mb.mul(x=y, y=w), y=bias)

    _, y = mb.while_loop(_cond=lambda i, y: mb.less(x=i, y=end), _body=body, loop_vars=(np.int32(0), x))
    return mb.add(x=y, y=w)  # `w` is read again after the loop: it must not have been freed


@pytest.mark.parametrize("precision", PRECISIONS)
def test_loop_body_with_nested_cond_reads_enclosing_scopes(precision):
    model = load(loop_with_outer_reads(), precision)
    assert {"while_loop", "cond"} <= op_types(model)
    (loop,) = [op for op in model.function.operations if op.op_type == "while_loop"]
    assert any(op.op_type == "cond" for op in loop.blocks[1].operations), "the cond is nested in the loop body"
    r = rounding(precision)
    rng = np.random.default_rng(2)
    branches = set()
    for trial in range(6):
        x = rng.standard_normal((2, 3)).astype(np.float32)
        w = rng.uniform(0.5, 1.5, (1, 3)).astype(np.float32)
        xr, wr = r(x), r(w)
        bias = r(xr.mean(dtype=np.float32))
        y = xr
        for _ in range(4):
            positive = y.sum(dtype=np.float32) > 0
            branches.add(bool(positive))
            y = r(y * 0.5) if positive else r(y + xr)
            y = r(r(y * wr) + bias)
        (got,) = outputs(model, {"x": x, "w": w, "n": np.array([4], np.int32)})
        # fp16: the predicate is computed on fp16 values in both; a sum within rounding of 0 could still flip it.
        assert_reference(got, r(y + wr), precision, f"trial {trial}")
    assert branches == {True, False}, "both branches of the nested cond were taken"
    # A trace records the block op and its outputs, not the ops run inside its blocks.
    trace = model.trace({"x": x, "w": w, "n": np.array([4], np.int32)})
    inner = {op.name for block in loop.blocks for op in all_ops(block.operations)}
    assert loop.name in trace and not inner & set(trace)
    np.testing.assert_array_equal(trace[loop.name].outputs[loop.outputs[0].name], 4)


def test_while_loop_iteration_guard_names_the_op(monkeypatch):
    model = load(counted_loop(), "fp32")
    (loop,) = [op for op in model.function.operations if op.op_type == "while_loop"]
    monkeypatch.setattr(blocks, "MAX_LOOP_ITERATIONS", 50)
    x = np.ones((2, 3), np.float32)
    count, _ = outputs(model, {"x": x, "n": np.array([50], np.int32)})  # at the bound: runs
    assert int(count) == 50
    with pytest.raises(RuntimeOpError, match=rf"while_loop '{loop.name}' ran 50 iterations and its condition is "
                                             r"still true.*MAX_LOOP_ITERATIONS=50"):
        model.predict({"x": x, "n": np.array([51], np.int32)})


# ---- tensor lists --------------------------------------------------------------------------------------------------

@program(mb.TensorSpec(shape=(4, 3)))
def list_program(x):
    empty = mb.make_list(init_length=4, dynamic_length=False, elem_shape=[3], dtype="fp32")

    def body(i, ls):
        row = mb.gather(x=x, indices=i, axis=0)
        scaled = mb.mul(x=row, y=mb.cast(x=mb.add(x=i, y=1), dtype="fp32"))
        return mb.add(x=i, y=1), mb.list_write(ls=ls, index=i, value=scaled)

    _, ls = mb.while_loop(_cond=lambda i, ls: mb.less(x=i, y=4), _body=body, loop_vars=(np.int32(0), empty))
    gathered = mb.list_gather(ls=ls, indices=np.array([3, 0, 2], np.int32))
    read = mb.list_read(ls=ls, index=1)
    negated = mb.mul(x=mb.slice_by_size(x=x, begin=[0, 0], size=[2, 3]), y=-1.0)
    scattered = mb.list_scatter(ls=ls, indices=np.array([2, 0], np.int32), value=negated)
    after = mb.list_gather(ls=scattered, indices=np.array([0, 1, 2, 3], np.int32))
    before = mb.list_gather(ls=ls, indices=np.array([0, 1, 2, 3], np.int32))  # after the scatter: unchanged
    return gathered, read, after, before


@pytest.mark.parametrize("precision", PRECISIONS)
def test_list_written_in_a_loop_then_gathered_read_and_scattered(precision):
    model = load(list_program(), precision)
    assert {"make_list", "list_write", "list_gather", "list_read", "list_scatter"} <= op_types(model)
    r = rounding(precision)
    x = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    xr = r(x)
    rows = [r(xr[i] * np.float32(i + 1)) for i in range(4)]
    scattered = list(rows)
    scattered[2], scattered[0] = r(-xr[0]), r(-xr[1])
    gathered, read, after, before = outputs(model, {"x": x})
    assert_reference(gathered, np.stack([rows[3], rows[0], rows[2]]), precision, "list_gather")
    assert_reference(read, rows[1], precision, "list_read")
    assert_reference(after, np.stack(scattered), precision, "list_scatter then gather")
    assert_reference(before, np.stack(rows), precision, "the list the scatter was given, gathered afterwards")


@program(mb.TensorSpec(shape=(3,)), mb.TensorSpec(shape=(1,), dtype=types.int32))
def dynamic_list_program(x, n):
    empty = mb.make_list(init_length=0, dynamic_length=True, elem_shape=["elem"], dtype="fp32")
    end = mb.squeeze(x=n)

    def body(i, ls):
        value = mb.add(x=mb.mul(x=x, y=mb.cast(x=i, dtype="fp32")), y=0.5)
        return mb.add(x=i, y=1), mb.list_write(ls=ls, index=i, value=value)

    _, ls = mb.while_loop(_cond=lambda i, ls: mb.less(x=i, y=end), _body=body, loop_vars=(np.int32(0), empty))
    return mb.list_length(ls=ls), mb.list_gather(ls=ls, indices=mb.range_1d(start=0, end=end, step=1))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_dynamic_length_list_grows_with_the_loop(precision):
    model = load(dynamic_list_program(), precision)
    # (the length of a fixed-length list is folded to a constant by coremltools; a dynamic one's is not)
    assert {"make_list", "list_write", "list_length", "list_gather"} <= op_types(model)
    r = rounding(precision)
    x = np.array([1.25, -2.0, 3.1], np.float32)
    for n in (1, 6):
        length, gathered = outputs(model, {"x": x, "n": np.array([n], np.int32)})
        assert int(length) == n
        assert_reference(gathered, np.stack([r(r(r(x) * np.float32(i)) + 0.5) for i in range(n)]), precision,
                         f"n={n}")


@program(mb.TensorSpec(shape=(4, 3)))
def fp16_list_program(x):
    x16 = mb.cast(x=x, dtype="fp16")
    empty = mb.make_list(init_length=4, dynamic_length=False, elem_shape=[3], dtype="fp16")

    def body(i, ls):
        value = mb.mul(x=mb.gather(x=x16, indices=i, axis=0), y=np.float16(0.3))
        return mb.add(x=i, y=1), mb.list_write(ls=ls, index=i, value=value)

    _, ls = mb.while_loop(_cond=lambda i, ls: mb.less(x=i, y=4), _body=body, loop_vars=(np.int32(0), empty))
    return mb.cast(x=mb.list_gather(ls=ls, indices=np.array([3, 1], np.int32)), dtype="fp32")


def test_fp16_list_holds_fp16_values_only_with_fp16_storage():
    # An fp32 program (no converter casts) whose list is explicitly fp16: with fp16 storage the list holds the
    # fp16-rounded products; with fp32 storage the products stay exact (the constant 0.3 is stored fp16 in both).
    x = np.random.default_rng(4).standard_normal((4, 3)).astype(np.float32)
    scale = np.float32(np.float16(0.3))
    for precision, expected in [("fp16", f16(f16(x) * scale)), ("fp32", x * scale)]:
        mlmodel = ct.convert(fp16_list_program(), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                             compute_precision=ct.precision.FLOAT32)
        (got,) = outputs(load_model(mlmodel, backend="mil", precision=precision), {"x": x})
        assert_reference(got, expected[[3, 1]], precision, f"{precision} storage")
    assert not np.allclose(f16(x * scale), x * scale, rtol=1e-6, atol=0), "the two references must differ"


@program(mb.TensorSpec(shape=(3,)), mb.TensorSpec(shape=(1,), dtype=types.int32),
         mb.TensorSpec(shape=(1,), dtype=types.int32))
def indexed_list_program(x, write_at, read_at):
    ls = mb.make_list(init_length=3, dynamic_length=False, elem_shape=[3], dtype="fp32")
    ls = mb.list_write(ls=ls, index=mb.squeeze(x=write_at), value=x, name="writer")
    return mb.list_read(ls=ls, index=mb.squeeze(x=read_at), name="reader")


@pytest.mark.parametrize("write_at, read_at, message", [
    (0, 5, r"op 'reader' \(list_read\) failed: IndexError: index 5 is out of range for a list of length 3"),
    (0, -1, r"op 'reader' \(list_read\) failed: IndexError: index -1 is out of range for a list of length 3"),
    (0, 1, r"op 'reader' \(list_read\) failed: IndexError: index 1: element 1 of the list \(length 3\) was never "
           r"written"),
    (3, 0, r"op 'writer' \(list_write\) failed: IndexError: index 3 is out of range for a fixed-length list of "
           r"length 3"),
])
def test_list_index_errors_name_op_index_and_length(write_at, read_at, message):
    model = load(indexed_list_program(), "fp32")
    x = np.array([1.0, 2.0, 3.0], np.float32)
    (got,) = outputs(model, {"x": x, "write_at": np.array([2], np.int32), "read_at": np.array([2], np.int32)})
    np.testing.assert_array_equal(got, x)
    with pytest.raises(RuntimeOpError, match=message):
        model.predict({"x": x, "write_at": np.array([write_at], np.int32), "read_at": np.array([read_at], np.int32)})


def test_list_values_are_persistent():
    # Kernel level: every write returns a new list; no list ever sees a write made from another one.
    a, b, c = (torch.full((2,), v) for v in (1.0, 2.0, 3.0))
    l0 = lists.make_list(elem_shape=[2], init_length=3, dynamic_length=False)
    l1 = lists.list_write(l0, 0, a)  # l0 is the newest of its storage: written in place
    l2 = lists.list_write(l0, 0, b)  # l0 no longer is: copied
    l3 = lists.list_write(l1, 1, c)  # l1 is the newest of its storage: in place again
    l4 = lists.list_write(l3, 0, b)  # slot 0 is written already: copied
    assert torch.equal(lists.list_read(l1, 0), a) and torch.equal(lists.list_read(l2, 0), b)
    assert torch.equal(lists.list_read(l3, 0), a) and torch.equal(lists.list_read(l3, 1), c)
    assert torch.equal(lists.list_read(l4, 0), b) and torch.equal(lists.list_read(l4, 1), c)
    for ls, index in [(l0, 0), (l1, 1), (l2, 1)]:
        with pytest.raises(IndexError, match=f"element {index} of the list .* was never written"):
            lists.list_read(ls, index)
    assert [int(lists.list_length(ls)) for ls in (l0, l1, l2, l3, l4)] == [3] * 5
    np.testing.assert_array_equal(lists.list_gather(l4, torch.tensor([1, 0], dtype=torch.int32)).numpy(),
                                  [[3.0, 3.0], [2.0, 2.0]])
    # dynamic length: writing past the end grows the list (the gap stays unwritten); the older list keeps its length
    d0 = lists.make_list(elem_shape=["n"], init_length=0, dynamic_length=True)
    d1 = lists.list_write(d0, 0, a)
    d2 = lists.list_write(d1, 2, torch.zeros(2))
    assert [int(lists.list_length(d)) for d in (d0, d1, d2)] == [0, 1, 3]
    with pytest.raises(IndexError, match="index 1: element 1 of the list .* was never written"):
        lists.list_read(d2, 1)
    with pytest.raises(IndexError, match="index 1 is out of range for a list of length 1"):
        lists.list_read(d1, 1)


def test_list_shape_and_gather_scatter_errors():
    ls = lists.make_list(elem_shape=["n"], init_length=2, dynamic_length=False)
    ls = lists.list_write(ls, 0, torch.zeros(4))  # the first write fixes the symbolic element shape
    with pytest.raises(ValueError, match=r"value of shape \[5\] does not match the list's element shape \[4\]"):
        lists.list_write(ls, 1, torch.zeros(5))
    with pytest.raises(IndexError, match="indices\\[1\\] = 2 is out of range for a list of length 2"):
        lists.list_gather(ls, torch.tensor([0, 2], dtype=torch.int32))
    with pytest.raises(IndexError, match="indices\\[0\\] = 2 is out of range for a fixed-length list of length 2"):
        lists.list_scatter(ls, torch.tensor([2], dtype=torch.int32), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"input 'value' of shape \[3, 4\] must have one row per index \(2 indices\)"):
        lists.list_scatter(ls, torch.tensor([0, 1], dtype=torch.int32), torch.zeros(3, 4))


# ---- scoping checks at load time ------------------------------------------------------------------------------------

def _saved(prog, tmp_path):
    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                         compute_precision=ct.precision.FLOAT32)
    path = tmp_path / "model.mlpackage"
    mlmodel.save(str(path))
    return path


def _main_block(spec):
    fn = spec.mlProgram.functions["main"]
    return fn.block_specializations[fn.opset]


def test_nested_scoping_problems_are_reported_at_load_time(tmp_path):
    package = _saved(cond_program(), tmp_path)

    def edit(spec):
        (cond,) = [op for op in _main_block(spec).operations if op.type == "cond"]
        true_block, false_block = cond.blocks
        (true_mul,) = [op for op in true_block.operations if op.type == "mul"]
        (false_sub,) = [op for op in false_block.operations if op.type == "sub"]
        true_mul.inputs["x"].arguments[0].name = false_sub.outputs[0].name  # a variable of the sibling branch
        false_sub.inputs["x"].arguments[0].name = "ghost"  # a variable nobody defines
        _main_block(spec).outputs[0] = false_sub.outputs[0].name  # the function returns a branch's variable

    edit_package_spec(package, edit)
    with pytest.raises(ModelPackageError) as info:
        load_model(package, backend="mil")
    message = str(info.value)
    assert "of block 0 of op 'cond_0' (cond) in function 'main' reads 'sub_0' (its input 'x'), which op 'sub_0' " \
           "(sub) defines only after it" in message
    assert "op 'sub_0' (sub) of block 1 of op 'cond_0' (cond) in function 'main' reads 'ghost' (its input 'x'), " \
           "which no earlier op, block input or function input defines" in message
    assert "function 'main' returns 'sub_0' (a block output), which op 'sub_0' (sub) defines inside a block that " \
           "does not enclose it (not visible here)" in message


def test_while_loop_with_the_wrong_block_layout_fails_clearly(tmp_path):
    package = _saved(counted_loop(), tmp_path)

    def edit(spec):
        (loop,) = [op for op in _main_block(spec).operations if op.type == "while_loop"]
        del loop.blocks[0].outputs[:]  # the condition returns nothing

    edit_package_spec(package, edit)
    with pytest.raises(ModelPackageError, match=r"op 'while_loop_0' \(while_loop\): the condition block takes 2 "
                                                r"inputs and returns 0 values; it must take the 2 loop_vars"):
        load_model(package, backend="mil")


# ---- torch modules ---------------------------------------------------------------------------------------------------

GRU_CASES = {
    "1-layer": dict(num_layers=1),
    "2-layers": dict(num_layers=2),
    "bidirectional": dict(num_layers=1, bidirectional=True),
    "2-layers-bidirectional-batch_first": dict(num_layers=2, bidirectional=True, batch_first=True),
}
# fp32 program vs torch: measured max abs error 1.2e-7 (GRU cases, seeds 0-2). fp16 program vs torch fp32: weights,
# inputs and every activation stored fp16 (2^-11 relative each) over 5 time steps of a recurrence with |h| < 1:
# measured max abs error 6.4e-4 over the same cases and seeds; 3e-3 leaves a 4x margin.
TORCH_TOLERANCE = {"fp32": dict(rtol=1e-5, atol=1e-6), "fp16": dict(rtol=0.0, atol=3e-3)}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", list(GRU_CASES))
def test_torch_gru_converts_to_a_while_loop(case, precision):
    torch.manual_seed(5)
    config = GRU_CASES[case]
    module = torch.nn.GRU(4, 6, **config).eval()
    x = torch.randn((2, 5, 4) if config.get("batch_first") else (5, 2, 4))
    mlmodel = convert_module(module, [x], names=["x"], precision=precision)
    model = load_model(mlmodel, backend="mil", precision=precision)
    kinds = op_types(model)
    assert "while_loop" in kinds and "gru" not in kinds, sorted(kinds)
    got = outputs(model, {"x": x.numpy()})
    expected = torch_outputs(module, [x])
    assert [g.shape for g in got] == [e.shape for e in expected]
    for name, g, e in zip(["output", "h_n"], got, expected):
        np.testing.assert_allclose(g, e, err_msg=f"{case} {name}", **TORCH_TOLERANCE[precision])


class DoubleUntil(torch.nn.Module):
    def forward(self, x):
        while bool(x.sum() < 100.0):
            x = x * 2.0
        return x


class RepeatN(torch.nn.Module):
    def forward(self, x, n):
        y = x
        for _ in range(int(n[0])):
            y = y * 0.5 + x
        return y


class SignBranch(torch.nn.Module):
    def forward(self, x):
        if bool(x.sum() > 0):
            return x * 2.0 + 1.0
        return x - 1.0


def _convert_scripted(module, inputs, precision):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(torch.jit.script(module.eval()), inputs=inputs, convert_to="mlprogram",
                             minimum_deployment_target=ct.target.iOS17,
                             compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    return load_model(mlmodel, backend="mil", precision=precision)


# fp16 programs of the scripted modules vs torch fp32: the input cast to fp16 (2^-11 relative) and, in RepeatN, two
# fp16 roundings per iteration of values below 4 (4 iterations: < 8 * 2^-11 * 4 ~ 1.6e-2 worst case); doubling is
# exact. Measured over 5 inputs: 1.8e-3 absolute, 7.3e-4 relative. So 1e-3 relative plus 1e-2 absolute.
SCRIPT_TOLERANCE = {"fp32": dict(rtol=1e-6, atol=1e-6), "fp16": dict(rtol=1e-3, atol=1e-2)}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_scripted_data_dependent_loops_and_branch(precision):
    tol = SCRIPT_TOLERANCE[precision]
    rng = np.random.default_rng(6)

    model = _convert_scripted(DoubleUntil(), [ct.TensorType(name="x", shape=(2, 3))], precision)
    assert "while_loop" in op_types(model)
    for scale in (30.0, 1.0, 0.01):  # 0, 2 and 9 doublings (sums of 6 values in [1, 2) times the scale)
        x = (rng.uniform(1.0, 2.0, (2, 3)) * scale).astype(np.float32)
        (got,) = outputs(model, {"x": x})
        np.testing.assert_allclose(got, DoubleUntil()(torch.from_numpy(x)).numpy(), err_msg=f"scale {scale}", **tol)

    model = _convert_scripted(RepeatN(), [ct.TensorType(name="x", shape=(2, 3)),
                                          ct.TensorType(name="n", shape=(1,), dtype=np.int32)], precision)
    assert "while_loop" in op_types(model)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    for n in (0, 1, 4):
        (got,) = outputs(model, {"x": x, "n": np.array([n], np.int32)})
        expected = RepeatN()(torch.from_numpy(x), torch.tensor([n])).numpy()
        np.testing.assert_allclose(got, expected, err_msg=f"n={n}", **tol)

    model = _convert_scripted(SignBranch(), [ct.TensorType(name="x", shape=(2, 3))], precision)
    assert "cond" in op_types(model)
    for sign in (1.0, -1.0):
        x = (sign * rng.uniform(0.5, 1.5, (2, 3))).astype(np.float32)
        (got,) = outputs(model, {"x": x})
        np.testing.assert_allclose(got, SignBranch()(torch.from_numpy(x)).numpy(), err_msg=f"sign {sign}", **tol)
