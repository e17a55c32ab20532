"""``coreml-parity export``: only what passes the suite's checks is written, with metadata, card and digests.

A toy family with two components (declared outside the harness, like any family) exercises the failing path: one
component's bound is out of reach, so it is left out, named with its worst figure, and the release says it failed.
The real Silero VAD export (the README's example) runs one component through the compression path."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from conversions.__main__ import main

TOY = '''
import numpy as np
import torch
from torch import nn

from conversions.export import convert_traced
from conversions.registry import Bound, Component, ModelCardInfo, ModelFamily, TaskMetric

WIDTH = 64


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, x):
        return torch.sigmoid(self.head(torch.tanh(self.w(x))))


def build(source):
    return Toy().eval()


def clip():
    t = np.arange(WIDTH * 30) / 16000
    return (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def convert(model, precision="fp16", target="iOS17"):
    return convert_traced(model, {"x": torch.zeros(1, WIDTH)}, ("p",), precision=precision, target=target)


def clip_feeds(model, waveform):
    return [{"x": waveform[i * WIDTH:(i + 1) * WIDTH][None]} for i in range(len(waveform) // WIDTH)]


def random_inputs(model):
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    return st.builds(lambda x: {"x": x}, arrays(np.float32, (1, WIDTH), elements=st.floats(-1, 1, width=32)))


def decisions(reference, candidate):
    ref, got = np.asarray(reference["p"]).reshape(-1) > 0.5, np.asarray(candidate["p"]).reshape(-1) > 0.5
    return {"decision_agreement": float((ref == got).mean())}


OK = {"fp16": {"p": Bound(0.01, 0.0, 40.0, "toy: fp16 weights")}, "fp32": {"p": Bound(1e-5, 0.0, 90.0, "toy")}}
# fp16 moves p by ~1e-4: a bound no fp16 program can meet, so this component must not be exported
OUT_OF_REACH = {"fp16": {"p": Bound(1e-12, 0.0, 40.0, "toy: deliberately out of reach")}, "fp32": OK["fp32"]}
TASK = TaskMetric("toy-decisions", decisions, minimums={"fp16": {"decision_agreement": 0.9},
                                                        "fp32": {"decision_agreement": 1.0}},
                  slack={"decision_agreement": 0.05})


def component(name, bounds):
    return Component(name, convert, lambda m: m, ("x",), ("p",), clip_feeds=clip_feeds, random_inputs=random_inputs,
                     bounds=bounds, random_bounds=bounds, audio_ms_per_call=4.0, task=TASK)


FAMILY = ModelFamily(
    name="toyrelease", build_reference=build, load_clip=clip, clip_path=__import__("pathlib").Path(__file__),
    components=(component("good", OK), component("bad", OUT_OF_REACH)),
    card=ModelCardInfo(name="Toy release model", license="apache-2.0", url="https://example.org/toy",
                       weights="seeded random weights", tags=("audio",)),
)
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy family importable and registered; the export cache and outputs under ``tmp_path``."""
    (tmp_path / "toyrelease_family.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("COREML_PARITY_FAMILY_MODULES", "toyrelease_family")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return tmp_path


def _export(root: Path, *args: str) -> int:
    return main(["export", "toyrelease", "--export-dir", str(root / "exports"), "--baselines", str(root / "none"),
                 *args])


def test_a_failing_component_is_not_written_and_is_named_with_its_worst_figure(toy, capsys):
    (toy / "none").mkdir()
    out = toy / "dist" / "toy"
    assert _export(toy, "--out", str(out)) == 1
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if ln.startswith("FAIL bad"))
    assert "max_abs" in line and "atol 1e-12" in line and "EXCEEDED" in line, line
    assert any(ln.startswith("PASS good") for ln in printed.splitlines()), printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "good", "release.json"]
    release = json.loads((out / "release.json").read_text())
    assert release["passed"] is False and release["components"] == ["good"]
    assert "EXCEEDED" in release["failed_components"]["bad"]
    # nothing half-written beside the release
    assert [p.name for p in out.parent.iterdir()] == ["toy"]


def test_a_passing_export_writes_package_metadata_card_and_digests(toy):
    from huggingface_hub import ModelCard

    from conversions.release import file_digests
    from conversions.runtime import coreml_available, load_model

    (toy / "none").mkdir()
    out = toy / "dist"
    assert _export(toy, "--components", "good", "--precision", "fp32", "--out", str(out)) == 0
    release = json.loads((out / "release.json").read_text())
    # on macOS the Core ML variant of the precision is checked too (the macOS workflow runs this)
    variants = ["mil-fp32"] + (["coreml-cpu_only-fp32"] if coreml_available() else [])
    assert release["passed"] is True and release["precision"] == "fp32" and release["backends"] == variants
    assert release["files"] == file_digests(out) and "good/metadata.json" in release["files"]
    meta = json.loads((out / "good" / "metadata.json").read_text())
    assert meta["package"] == "toyrelease-good-fp32.mlpackage" and meta["compute_precision"] == "fp32"
    assert meta["inputs"] == [{"name": "x", "shape": [1, 64], "dtype": "float32"}]
    assert [c["variant"] for c in meta["checks"]] == variants
    check = meta["checks"][0]
    assert check["passed"] and check["baseline"] is None
    assert check["outputs"]["p"]["metrics"]["max_abs"] <= 1e-5 == check["outputs"]["p"]["bound"]["atol"]
    if sys.platform == "darwin":
        assert (out / "good" / meta["compiled"] / "coremldata.bin").is_file(), meta["compiled"]
    else:
        assert meta["compiled"] is None and "needs macOS" in meta["compiled_note"]
    loaded = load_model(out / "good" / meta["package"], backend="mil")
    assert [s.name for s in loaded.outputs] == ["p"]
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "coreml"
    # an existing, non-empty --out is not overwritten without --force
    assert _export(toy, "--components", "good", "--out", str(out)) == 2
    assert _export(toy, "--components", "good", "--out", str(out), "--force") == 0


@pytest.mark.parametrize("args, message", [
    (["--components", "nope"], "has no component nope"),
    (["--strategy", "palettize-8bit", "--precision", "fp32"], "cannot go with"),
    (["--strategy", "no-such-strategy"], "unknown strategy"),
    (["--strategy", "mixed"], "--recipe"),
])
def test_usage_errors_exit_2_naming_what_is_wrong(toy, capsys, args, message):
    assert _export(toy, *args, "--out", str(toy / "o")) == 2
    assert message in capsys.readouterr().err
    assert not (toy / "o").exists()


def test_an_unknown_family_names_the_known_ones(capsys, tmp_path):
    assert main(["export", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown family 'nope'" in capsys.readouterr().err


def test_silero_palettized_export_checks_the_sweep_figures_against_the_pinned_baseline(tmp_path, monkeypatch):
    """The README's example on one component: the compressed package is held to the suite's pinned quantization
    baseline and the VAD task minimums, and its metadata says so."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "silero"
    code = main(["export", "silero-vad", "--strategy", "palettize-8bit", "--components", "unified-36ms",
                 "--out", str(out), "--baselines", str(repo / "tests" / "__snapshots__"),
                 "--export-dir", str(repo / ".cache" / "exports")])
    assert code == 0
    meta = json.loads((out / "unified-36ms" / "metadata.json").read_text())
    check = meta["checks"][0]  # mil-fp16 (then the Core ML variants on macOS)
    assert check["variant"] == "mil-fp16" and check["kind"] == "quantization" and check["passed"]
    assert check["baseline"]["entry"] == "test_quantization[silero-vad/unified-36ms/palettize-8bit/mil-fp16]"
    assert check["baseline"]["failures"] == []
    assert check["task"]["decision_agreement"] >= check["task_bounds"]["decision_agreement"]
    assert meta["compression"]["strategy"] == "palettize-8bit" and meta["compression"]["compression_ratio"] > 1.5


def test_publish_takes_what_export_wrote_and_refuses_it_once_a_file_changed(toy, capsys):
    """export -> publish --dry-run lists the release; a byte changed in a package after export, or a release whose
    component failed, is refused (exit 2) naming what is wrong."""
    (toy / "none").mkdir()
    out = toy / "ok"
    assert _export(toy, "--components", "good", "--out", str(out)) == 0
    capsys.readouterr()
    assert main(["publish", str(out), "--repo", "org/toy-coreml", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "good/toyrelease-good-fp16.mlpackage/Manifest.json" in listed and "nothing was uploaded" in listed

    weights = next((out / "good").rglob("weight.bin"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert main(["publish", str(out), "--repo", "org/toy-coreml", "--dry-run"]) == 2
    assert weights.relative_to(out).as_posix() in capsys.readouterr().err

    failed = toy / "failed"
    assert _export(toy, "--out", str(failed)) == 1
    capsys.readouterr()
    assert main(["publish", str(failed), "--repo", "org/toy-coreml", "--dry-run"]) == 2
    assert "bad" in capsys.readouterr().err


def test_a_recipe_export_is_held_to_the_quality_the_recipe_was_made_for(toy, capsys):
    """--recipe: the component compressed as the recipe says, checked against the task minimums and the recipe's
    own target quality vs the fp16 package; a target the package misses leaves it out."""
    import importlib

    from conversions import quantize

    (toy / "none").mkdir()
    family = importlib.import_module("toyrelease_family")
    mlmodel = family.convert(family.build({}), "fp16")
    recipe = quantize.sensitivity_recipe(mlmodel, lambda m: 1.0, candidate="palettize-8bit", target_quality=0.9)
    path = quantize.save_recipe(recipe, toy / "recipe.json")
    out = toy / "mixed"
    assert _export(toy, "--components", "good", "--recipe", str(path), "--out", str(out)) == 0
    meta = json.loads((out / "good" / "metadata.json").read_text())
    assert meta["package"] == "toyrelease-good-recipe.mlpackage" and meta["compression"]["strategy"] == "recipe"
    quality = meta["checks"][0]["outputs"]["p"]["quality_vs_baseline"]
    assert 0.9 <= quality < 1.0

    strict = quantize.save_recipe({**recipe, "target_quality": 1.0}, toy / "strict.json")
    capsys.readouterr()
    assert _export(toy, "--components", "good", "--recipe", str(strict), "--out", str(toy / "strict")) == 1
    assert "< the recipe's target 1.0" in capsys.readouterr().out
    # a recipe names one component's ops
    assert _export(toy, "--recipe", str(path), "--out", str(toy / "two")) == 2
