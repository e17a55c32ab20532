"""`python -m conversions inspect|predict`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import conversions.runtime
from conversions.__main__ import main
from conversions.runtime import load_model
from conversions.testing import FP16_TOLERANCE, convert_module, edit_package_spec, torch_outputs

ROOT = Path(__file__).resolve().parents[1]


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
    module = Small()
    mlmodel = convert_module(module, [torch.randn(1, 3, 32)], names=["x"], precision="fp16")
    plain = root / "small.mlpackage"
    mlmodel.save(str(plain))
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                              weight_threshold=16))
    quantized = root / "small_int8.mlpackage"
    cto.linear_quantize_weights(mlmodel, config).save(str(quantized))
    return plain, quantized, module


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
    (reference,) = torch_outputs(packages[2], [torch.from_numpy(x)])  # independent of the runtime
    with np.load(out_path) as saved:
        assert sorted(saved.files) == sorted(expected) and len(saved.files) == 1
        for name in expected:
            np.testing.assert_array_equal(saved[name], expected[name])
            np.testing.assert_allclose(saved[name], reference, **FP16_TOLERANCE)


def test_predict_fp32_precision_returns_fp32(packages, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 3, 32), np.float32))
    out_path = tmp_path / "out.npz"
    assert main(["predict", str(packages[0]), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out_path),
                 "--backend", "mil", "--precision", "fp32"]) == 0
    with np.load(out_path) as saved:
        assert len(saved.files) == 1  # all() of nothing would pass
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


def test_predict_into_a_missing_directory_fails_before_predicting(packages, tmp_path, capsys, monkeypatch):
    def load_model_must_not_run(*args, **kwargs):
        raise AssertionError("the model was loaded although the output cannot be written")

    monkeypatch.setattr(conversions.runtime, "load_model", load_model_must_not_run)
    np.save(tmp_path / "x.npy", np.ones((1, 3, 32), np.float32))
    missing = tmp_path / "missing"
    code = main(["predict", str(packages[0]), "--input", f"x={tmp_path / 'x.npy'}", "--output",
                 str(missing / "out.npz"), "--backend", "mil"])
    assert code == 2
    assert f"directory '{missing}' does not exist" in capsys.readouterr().err
    assert not missing.exists()


def test_predict_into_a_directory_fails(packages, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((1, 3, 32), np.float32))
    (tmp_path / "out.npz").mkdir()
    code = main(["predict", str(packages[0]), "--input", f"x={tmp_path / 'x.npy'}", "--output",
                 str(tmp_path / "out.npz"), "--backend", "mil"])
    assert code == 2
    assert "is a directory" in capsys.readouterr().err


def test_predict_output_name_without_npz_suffix(packages, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 3, 32), np.float32))
    out_path = tmp_path / "outputs.bin"
    assert main(["predict", str(packages[0]), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out_path),
                 "--backend", "mil"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs.bin", "x.npy"]
    with np.load(out_path) as saved:
        assert len(saved.files) == 1


def test_predict_failed_write_keeps_the_previous_output(packages, tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.ones((1, 3, 32), np.float32))
    out_path = tmp_path / "out.npz"
    out_path.write_bytes(b"previous outputs")

    def savez_then_fail(file, **arrays):
        file.write(b"half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", savez_then_fail)
    with pytest.raises(OSError, match="No space left"):
        main(["predict", str(packages[0]), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out_path),
              "--backend", "mil"])
    assert out_path.read_bytes() == b"previous outputs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz", "x.npy"]  # no temporary file left


def _broken_copy(package, tmp_path) -> Path:
    """A copy of ``package`` whose model description declares an output the program never produces."""
    broken = tmp_path / "broken.mlpackage"
    shutil.copytree(package, broken)
    edit_package_spec(broken, lambda spec: setattr(spec.description.output[0], "name", "renamed_output"))
    return broken


def test_inspect_inconsistent_package_fails(packages, tmp_path, capsys):
    broken = _broken_copy(packages[0], tmp_path)
    assert main(["inspect", str(broken)]) == 2
    captured = capsys.readouterr()
    assert str(broken) in captured.err
    assert "declares output 'renamed_output', which function 'main' never produces" in captured.err
    assert captured.out == ""  # no summary of a model that cannot run


def test_inspect_inconsistent_package_exit_status(packages, tmp_path):
    """The real command line: a non-zero exit status and the error on stderr, no traceback."""
    from conversions.testing import clean_subprocess_env

    broken = _broken_copy(packages[0], tmp_path)
    env = clean_subprocess_env({"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    result = subprocess.run([sys.executable, "-m", "conversions", "inspect", str(broken)], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "error: " in result.stderr and "'renamed_output'" in result.stderr
    assert "Traceback" not in result.stderr and "deployment target" not in result.stdout
