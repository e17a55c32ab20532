"""Bad input gets a clear error: broken packages, wrong feeds, unsupported ops."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from conversions.runtime import BackendUnavailableError, ModelPackageError, coreml_available, load_model
from conversions.testing import convert_module


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
    a = model.predict(_feeds())
    feeds = _feeds()
    feeds["audio"] = feeds["audio"].astype(np.float64)
    b = model.predict(feeds)
    np.testing.assert_array_equal(a[model.outputs[0].name], b[model.outputs[0].name])


def _program_with(op_builder, target="iOS17"):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=getattr(ct.target, target))
    def prog(x):
        return op_builder(mb, x)

    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
                      compute_precision=ct.precision.FLOAT32)


def test_control_flow_fails_clearly():
    def build(mb, x):
        pred = mb.greater(x=mb.reduce_sum(x=x), y=0.0)
        return mb.cond(pred=pred, _true_fn=lambda: mb.add(x=x, y=1.0), _false_fn=lambda: mb.sub(x=x, y=1.0))

    with pytest.raises(NotImplementedError, match=r"'cond' \(op '.+', opset CoreML7\) is control flow"):
        load_model(_program_with(build), backend="mil")


def test_random_op_fails_clearly():
    def build(mb, x):
        return mb.add(x=x, y=mb.random_uniform(shape=np.array([2, 3], np.int32), low=0.0, high=1.0))

    with pytest.raises(NotImplementedError, match=r"'random_uniform' \(op '.+', opset CoreML7\) is not supported"):
        load_model(_program_with(build), backend="mil")


@pytest.mark.skipif(coreml_available(), reason="checks the error raised where Core ML is absent (non-macOS)")
def test_coreml_backend_off_macos_says_why(package):
    with pytest.raises(BackendUnavailableError, match="needs macOS"):
        load_model(package, backend="coreml")


def test_unknown_backend(package):
    with pytest.raises(ValueError, match="backend must be one of"):
        load_model(package, backend="tflite")
