"""Inputs declared with ``ct.RangeDim`` or ``ct.EnumeratedShapes``: described in ``inputs`` and enforced."""

from __future__ import annotations

import warnings

import coremltools as ct
import numpy as np
import pytest
import torch

from conversions.runtime import load_model


class Gain(torch.nn.Module):
    def forward(self, audio_signal):
        return torch.tanh(2.0 * audio_signal)


def _convert(shape):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Gain().eval(), torch.zeros(1, 8))
        return ct.convert(traced, inputs=[ct.TensorType(name="audio_signal", shape=shape, dtype=np.float32)],
                          convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                          compute_precision=ct.precision.FLOAT32)


@pytest.fixture(scope="module")
def ranged():
    return load_model(_convert((1, ct.RangeDim(4, 16, default=8))), backend="mil", precision="fp32")


@pytest.fixture(scope="module")
def enumerated():
    return load_model(_convert(ct.EnumeratedShapes(shapes=[(1, 4), (1, 8), (1, 12)], default=(1, 8))),
                      backend="mil", precision="fp32")


def test_range_dim_is_described(ranged):
    (spec,) = ranged.inputs
    assert spec.name == "audio_signal"
    assert spec.shape_range == ((1, 1), (4, 16)) and spec.enumerated_shapes is None
    assert str(spec) == "audio_signal: float32 [1, 4..16]"


@pytest.mark.parametrize("length", [4, 7, 16])
def test_range_dim_accepts_lengths_inside(ranged, length):
    x = np.linspace(-1, 1, length, dtype=np.float32)[None]
    out = ranged.predict({"audio_signal": x})
    np.testing.assert_allclose(next(iter(out.values())), np.tanh(2 * x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("length", [3, 17])
def test_range_dim_rejects_lengths_outside(ranged, length):
    with pytest.raises(ValueError, match=rf"input 'audio_signal' expected shape \[1, 4..16\], got \[1, {length}\]"):
        ranged.predict({"audio_signal": np.zeros((1, length), np.float32)})


def test_enumerated_shapes_are_described_and_enforced(enumerated):
    (spec,) = enumerated.inputs
    assert set(spec.enumerated_shapes) == {(1, 4), (1, 8), (1, 12)}  # coremltools lists the default first
    assert spec.shape == (1, 8)
    out = enumerated.predict({"audio_signal": np.full((1, 12), 0.25, np.float32)})
    np.testing.assert_allclose(next(iter(out.values())), np.tanh(np.full((1, 12), 0.5)), rtol=1e-6)
    with pytest.raises(ValueError, match=r"expected shape one of (\[1, (4|8|12)\](, )?){3}, got \[1, 10\]"):
        enumerated.predict({"audio_signal": np.zeros((1, 10), np.float32)})
