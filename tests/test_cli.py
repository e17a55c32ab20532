"""`python -m conversions inspect|predict`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conversions.__main__ import main
from conversions.runtime import load_model
from conversions.testing import convert_module


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(32, 32)

    def forward(self, x):
        return torch.relu(self.proj(x))


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    import coremltools.optimize.coreml as cto

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("cli")
    mlmodel = convert_module(Small(), [torch.randn(1, 3, 32)], names=["x"], precision="fp16")
    plain = root / "small.mlpackage"
    mlmodel.save(str(plain))
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                              weight_threshold=16))
    quantized = root / "small_int8.mlpackage"
    cto.linear_quantize_weights(mlmodel, config).save(str(quantized))
    return plain, quantized


def test_inspect_prints_io_target_precision_and_ops(packages, capsys):
    assert main(["inspect", str(packages[0])]) == 0
    out = capsys.readouterr().out
    assert "deployment target: iOS17" in out
    assert "precision: fp16" in out
    assert "x: float32 [1, 3, 32]" in out
    assert "linear" in out and "relu" in out
    assert "compression ops: none" in out


def test_inspect_reports_compression(packages, capsys):
    assert main(["inspect", "--json", str(packages[1])]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["compression_ops"] == {"constexpr_affine_dequantize": 1}
    # int8 weights (32x32) plus constexpr_affine_dequantize's per-output-channel int8 zero point (32)
    assert summary["constant_bytes_by_dtype"]["int8"] == 32 * 32 + 32
    assert summary["weight_file_bytes"] > 0


def test_predict_writes_the_runtime_outputs(packages, tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((1, 3, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_path = tmp_path / "out.npz"
    assert main(["predict", str(packages[0]), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out_path),
                 "--backend", "mil"]) == 0
    expected = load_model(str(packages[0]), backend="mil").predict({"x": x})
    with np.load(out_path) as saved:
        assert sorted(saved.files) == sorted(expected)
        for name in expected:
            np.testing.assert_array_equal(saved[name], expected[name])


def test_predict_fp32_precision_returns_fp32(packages, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 3, 32), np.float32))
    out_path = tmp_path / "out.npz"
    assert main(["predict", str(packages[0]), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out_path),
                 "--backend", "mil", "--precision", "fp32"]) == 0
    with np.load(out_path) as saved:
        assert all(saved[n].dtype == np.float32 for n in saved.files)


def test_predict_bad_input_fails_with_a_message_and_writes_nothing(packages, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((1, 4, 32), np.float32))
    out_path = tmp_path / "out.npz"
    code = main(["predict", str(packages[0]), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out_path),
                 "--backend", "mil"])
    assert code == 2
    assert "input 'x' expected shape [1, 3, 32], got [1, 4, 32]" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "x.npy"]


def test_predict_unreadable_input_file(packages, tmp_path, capsys):
    (tmp_path / "x.npy").write_text("not numpy")
    code = main(["predict", str(packages[0]), "--input", f"x={tmp_path / 'x.npy'}", "--output",
                 str(tmp_path / "o.npz")])
    assert code == 2
    assert "--input x: cannot read" in capsys.readouterr().err


def test_inspect_broken_package(tmp_path, capsys):
    (tmp_path / "bad.mlpackage").mkdir()
    assert main(["inspect", str(tmp_path / "bad.mlpackage")]) == 2
    assert "no Manifest.json" in capsys.readouterr().err
