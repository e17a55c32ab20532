"""Bad input gets a clear error: broken packages, wrong feeds, unsupported ops."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from conversions.runtime import BackendUnavailableError, ModelPackageError, coreml_available, load_model
from conversions.testing import convert_module, edit_package_spec


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)  # large enough to be stored in weight.bin, not inline

    def forward(self, audio, steps):
        return self.proj(audio) * steps.float().unsqueeze(-1)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    torch.manual_seed(0)
    mlmodel = convert_module(TwoInputs(), [torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.int32)],
                             names=["audio", "steps"], precision="fp16")
    path = tmp_path_factory.mktemp("pkg") / "model.mlpackage"
    mlmodel.save(str(path))
    return path


@pytest.fixture
def broken(package, tmp_path):
    copy = tmp_path / "broken.mlpackage"
    shutil.copytree(package, copy)
    return copy


def _weight_file(pkg) -> str:
    return os.path.join(pkg, "Data", "com.apple.CoreML", "weights", "weight.bin")


def _spec_file(pkg) -> str:
    return os.path.join(pkg, "Data", "com.apple.CoreML", "model.mlmodel")


def test_missing_package():
    with pytest.raises(ModelPackageError, match="does not exist"):
        load_model("/nonexistent/model.mlpackage", backend="mil")


def test_missing_manifest(broken):
    os.remove(broken / "Manifest.json")
    with pytest.raises(ModelPackageError, match="no Manifest.json"):
        load_model(broken, backend="mil")


def test_corrupt_manifest(broken):
    (broken / "Manifest.json").write_text("{not json")
    with pytest.raises(ModelPackageError, match="not valid JSON"):
        load_model(broken, backend="mil")


def test_manifest_path_escaping_the_package(broken):
    manifest = json.loads((broken / "Manifest.json").read_text())
    root = manifest["rootModelIdentifier"]
    manifest["itemInfoEntries"][root]["path"] = "../../../../etc/passwd"
    (broken / "Manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match="escapes the package directory"):
        load_model(broken, backend="mil")


def test_missing_weight_file(broken):
    os.remove(_weight_file(broken))
    with pytest.raises(ModelPackageError, match="weight.bin"):
        load_model(broken, backend="mil")


def test_truncated_weight_file(broken):
    path = _weight_file(broken)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ModelPackageError, match="truncated"):
        load_model(broken, backend="mil")


def test_corrupt_protobuf(broken):
    with open(_spec_file(broken), "wb") as f:
        f.write(b"\xff\xfe this is not a protobuf \x00\x01")
    with pytest.raises(ModelPackageError, match="model.mlmodel"):
        load_model(broken, backend="mil")


def test_empty_protobuf(broken):
    open(_spec_file(broken), "wb").close()
    with pytest.raises(ModelPackageError, match="holds no model"):
        load_model(broken, backend="mil")


# ---- packages that parse but do not hold together: ModelPackageError at load, naming what is wrong ---------
def _block(spec):
    function = spec.mlProgram.functions["main"]
    return function.block_specializations[function.opset]


def _op(spec, op_type):
    return next(op for op in _block(spec).operations if op.type == op_type)


def _op_name(op) -> str:
    return op.attributes["name"].immediateValue.tensor.strings.values[0]


def _load_broken(broken, edit):
    edit_package_spec(broken, edit)
    with pytest.raises(ModelPackageError) as info:
        load_model(broken, backend="mil")
    message = str(info.value)
    assert str(broken) in message, message  # names the package
    return message


def test_op_reading_an_undefined_variable(broken):
    names = {}

    def edit(spec):
        linear = _op(spec, "linear")
        names["linear"] = _op_name(linear)
        linear.inputs["x"].arguments[0].name = "does_not_exist"

    message = _load_broken(broken, edit)
    assert (f"op '{names['linear']}' (linear) of function 'main' reads 'does_not_exist' (its input 'x'), "
            "which no earlier op or function input defines") in message
    assert "1 problem)" in message


def test_op_reading_a_variable_defined_after_it(broken):
    names = {}

    def edit(spec):  # the last op (mul) moved to the front: it reads the linear op's output before it exists
        ops = list(_block(spec).operations)
        mul, linear = ops[-1], _op(spec, "linear")
        assert mul.type == "mul"
        names.update(mul=_op_name(mul), linear=_op_name(linear), var=linear.outputs[0].name)
        del _block(spec).operations[:]
        _block(spec).operations.extend([mul] + ops[:-1])

    message = _load_broken(broken, edit)
    assert (f"op '{names['mul']}' (mul) of function 'main' reads '{names['var']}' (its input 'x'), "
            f"which op '{names['linear']}' (linear) defines only after it") in message


def test_declared_output_the_program_never_produces(broken):
    returned = []

    def edit(spec):
        returned.extend(_block(spec).outputs)
        spec.description.output[0].name = "renamed_output"

    message = _load_broken(broken, edit)
    assert (f"the model description declares output 'renamed_output', which function 'main' never produces "
            f"(it returns {returned})") in message
    assert (f"function 'main' returns {returned[0]!r}, which the model description does not declare as an output "
            "(it declares ['renamed_output'])") in message
    assert "2 problems)" in message


def test_block_output_that_nothing_defines(broken):
    def edit(spec):  # block and description agree on the name, but no op defines it
        _block(spec).outputs[0] = "ghost"
        spec.description.output[0].name = "ghost"

    message = _load_broken(broken, edit)
    assert "function 'main' returns 'ghost' (a block output), which no op or function input defines" in message
    assert "1 problem)" in message


def test_declared_input_the_function_does_not_take(broken):
    message = _load_broken(broken, lambda spec: setattr(spec.description.input[1], "name", "stepz"))
    assert "the model description declares input 'stepz', which function 'main' does not take " \
           "(it takes ['audio', 'steps'])" in message
    assert "function 'main' takes input 'steps', which the model description does not declare " \
           "(it declares ['audio', 'stepz'])" in message


def test_function_input_the_description_does_not_declare(broken):
    message = _load_broken(broken, lambda spec: spec.description.input.pop())
    assert "function 'main' takes input 'steps', which the model description does not declare " \
           "(it declares ['audio'])" in message
    assert "1 problem)" in message


def test_many_problems_are_summarized(broken):
    def edit(spec):
        for op in _block(spec).operations:
            for argument in op.inputs.values():
                for binding in argument.arguments:
                    if binding.WhichOneof("binding") == "name":
                        binding.name = "does_not_exist"

    message = _load_broken(broken, edit)
    count = int(message.split("inconsistent model program (")[1].split(" ")[0])
    assert count > 10 and message.count("reads 'does_not_exist'") == 10 and f"and {count - 10} more" in message


@pytest.fixture(scope="module")
def model(package):
    return load_model(package, backend="mil")


def _feeds():
    return {"audio": np.zeros((1, 4, 16), np.float32), "steps": np.ones((1, 4), np.int32)}


def test_unknown_input_name(model):
    feeds = _feeds()
    feeds["audo"] = feeds.pop("audio")
    with pytest.raises(ValueError, match=r"unknown input\(s\) \['audo'\]"):
        model.predict(feeds)


def test_missing_input(model):
    feeds = _feeds()
    del feeds["steps"]
    with pytest.raises(ValueError, match=r"missing input\(s\) \['steps'\].*int32 \[1, 4\]"):
        model.predict(feeds)


def test_wrong_shape(model):
    feeds = _feeds()
    feeds["audio"] = np.zeros((1, 5, 16), np.float32)
    with pytest.raises(ValueError, match=r"input 'audio' expected shape \[1, 4, 16\], got \[1, 5, 16\]"):
        model.predict(feeds)


def test_float_given_to_integer_input(model):
    feeds = _feeds()
    feeds["steps"] = np.ones((1, 4), np.float32)
    with pytest.raises(ValueError, match=r"input 'steps' expected int32 \(integer\), got float32"):
        model.predict(feeds)


def test_integer_out_of_range(model):
    feeds = _feeds()
    feeds["steps"] = np.full((1, 4), 2**40, np.int64)
    with pytest.raises(ValueError, match="outside the range of int32"):
        model.predict(feeds)


def test_accepts_other_float_widths(model):
    feeds = _feeds()
    # Not zeros: any reading of the float64 buffer gives zeros for zeros. float32 values, so the cast is exact.
    feeds["audio"] = np.random.default_rng(0).standard_normal((1, 4, 16)).astype(np.float32)
    feeds["steps"] = np.arange(1, 5, dtype=np.int32)[None]
    a = model.predict(feeds)
    feeds["audio"] = feeds["audio"].astype(np.float64)
    b = model.predict(feeds)
    (name,) = [spec.name for spec in model.outputs]
    assert np.abs(a[name]).max() > 0.1
    np.testing.assert_array_equal(a[name], b[name])


def _program_with(op_builder, target="iOS17"):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=getattr(ct.target, target))
    def prog(x):
        return op_builder(mb, x)

    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
                      compute_precision=ct.precision.FLOAT32)


def test_unknown_op_with_blocks_and_cond_without_blocks_fail_clearly(tmp_path):
    # cond and while_loop run (tests/runtime/test_control_flow.py); an op with nested blocks of any other type is
    # refused at load time, and so is a cond whose blocks are missing.
    def build(mb, x):
        pred = mb.greater(x=mb.reduce_sum(x=x), y=0.0)
        return mb.cond(pred=pred, _true_fn=lambda: mb.add(x=x, y=1.0), _false_fn=lambda: mb.sub(x=x, y=1.0))

    def cond_op(spec):
        fn = spec.mlProgram.functions["main"]
        (op,) = [op for op in fn.block_specializations[fn.opset].operations if op.type == "cond"]
        return op

    for name, edit, error, message in [
        ("renamed", lambda spec: setattr(cond_op(spec), "type", "switch_case"), NotImplementedError,
         r"'switch_case' \(op '.+', opset CoreML7\) has nested blocks; the portable runtime executes blocks of "
         r"cond and while_loop only"),
        ("blockless", lambda spec: cond_op(spec).ClearField("blocks"), ModelPackageError,
         r"op '.+' \(cond\) has 0 blocks; cond needs 2 \(true and false branch\)"),
    ]:
        path = tmp_path / f"{name}.mlpackage"
        _program_with(build).save(str(path))
        edit_package_spec(path, edit)
        with pytest.raises(error, match=message):
            load_model(path, backend="mil")


def test_op_without_kernel_fails_clearly(tmp_path):
    # Every core op but _const_symbolic has a kernel (tests/runtime/test_op_coverage.py, which also checks that one's
    # error): an op type the runtime does not know stands in for an unsupported op.
    def build(mb, x):
        return mb.add(x=x, y=1.0, name="unknown")

    def rename(spec):
        fn = spec.mlProgram.functions["main"]
        (op,) = [op for op in fn.block_specializations[fn.opset].operations if op.type == "add"]
        op.type = "frobnicate"

    path = tmp_path / "unknown_op.mlpackage"
    _program_with(build).save(str(path))
    edit_package_spec(path, rename)
    with pytest.raises(NotImplementedError, match=r"'frobnicate' \(op 'unknown', opset CoreML7\) is not supported"):
        load_model(path, backend="mil")


@pytest.mark.skipif(coreml_available(), reason="checks the error raised where Core ML is absent (non-macOS)")
def test_coreml_backend_off_macos_says_why(package):
    with pytest.raises(BackendUnavailableError, match="needs macOS"):
        load_model(package, backend="coreml")


def test_unknown_backend(package):
    with pytest.raises(ValueError, match="backend must be one of"):
        load_model(package, backend="tflite")
