"""``load_model`` backends: the portable runtime everywhere, Apple's Core ML on macOS, same interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conversions.runtime import COMPUTE_UNITS, coreml_available, load_model
from conversions.testing import convert_module

needs_coreml = pytest.mark.skipif(not coreml_available(), reason="Apple's Core ML runtime runs on macOS only")


class StateStep(torch.nn.Module):
    """A streaming-shaped model: a chunk and a recurrent state in, a probability and the new state out."""

    def __init__(self):
        super().__init__()
        self.cell = torch.nn.LSTM(16, 8, batch_first=True)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, chunk, hidden, cell):
        out, (h, c) = self.cell(chunk, (hidden, cell))
        return torch.sigmoid(self.head(out[:, -1])), h, c


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    example = [torch.randn(1, 4, 16), torch.zeros(1, 1, 8), torch.zeros(1, 1, 8)]
    mlmodel = convert_module(StateStep(), example, names=["chunk", "hidden", "cell"], precision="fp16")
    path = tmp_path_factory.mktemp("backends") / "step.mlpackage"
    mlmodel.save(str(path))
    return path


def _feeds():
    rng = np.random.default_rng(1)
    return {"chunk": rng.standard_normal((1, 4, 16)).astype(np.float32),
            "hidden": np.zeros((1, 1, 8), np.float32), "cell": np.zeros((1, 1, 8), np.float32)}


def test_auto_picks_the_platform_runtime(model_path):
    model = load_model(model_path, backend="auto")
    assert model.backend == ("coreml" if coreml_available() else "mil")


@needs_coreml
@pytest.mark.parametrize("compute_units", COMPUTE_UNITS)
def test_coreml_and_portable_runtime_agree(model_path, compute_units):
    coreml = load_model(model_path, backend="coreml", compute_units=compute_units)
    mil = load_model(model_path, backend="mil")
    assert [(s.name, s.shape, s.dtype) for s in coreml.inputs] == [(s.name, s.shape, s.dtype) for s in mil.inputs]
    assert [(s.name, s.shape, s.dtype) for s in coreml.outputs] == [(s.name, s.shape, s.dtype) for s in mil.outputs]
    a, b = coreml.predict(_feeds()), mil.predict(_feeds())
    assert list(a) == list(b)
    for name in a:
        assert a[name].shape == b[name].shape and a[name].dtype == b[name].dtype, name
        # Both run the fp16 program; the ANE and GPU also accumulate in fp16, which the runtime does not emulate.
        np.testing.assert_allclose(a[name].astype(np.float32), b[name].astype(np.float32), atol=2e-2, rtol=2e-2,
                                   err_msg=f"{name} on {compute_units}")


@needs_coreml
def test_coreml_backend_takes_in_memory_models(model_path):
    import coremltools as ct

    mlmodel = ct.models.MLModel(str(model_path))
    out = load_model(mlmodel, backend="coreml", compute_units="CPU_ONLY").predict(_feeds())
    ref = load_model(model_path, backend="coreml", compute_units="CPU_ONLY").predict(_feeds())
    for name in ref:
        np.testing.assert_array_equal(out[name], ref[name])


@pytest.mark.parametrize("backend", ["coreml", "mil", "auto"])
def test_unknown_compute_units_are_rejected(model_path, backend):
    with pytest.raises(ValueError, match="compute_units must be one of"):
        load_model(model_path, backend=backend, compute_units="GPU_ONLY")


def test_precision_is_a_portable_runtime_option(model_path):
    with pytest.raises(ValueError, match="precision applies to the portable runtime only"):
        load_model(model_path, backend="coreml", precision="fp32")
