"""The harness knows no family: a third, toy family declared outside the repository gets every generated test (parity
on the clip and on generated inputs, its pipeline check, quantization, latency benchmark, export metadata, coverage)
without any harness edit; and the plugin's options hold up (registered whatever the rootdir, bad values refused at
startup with one line, not a traceback per test).

The toy family lives in a module written by a fixture into a temporary directory, named by
``COREML_PARITY_FAMILY_MODULES``; the generated test modules are copied beside it, so its snapshot baselines are
written there, not into this repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conversions import registry

REPO = Path(__file__).resolve().parents[1]

TOY_FAMILY = '''
"""A toy streaming model: y, h' = tanh(W x + U h + b) -> (head(y), h'). Declared like any family."""

import os

import numpy as np
import torch
from torch import nn

from conversions.export import convert_traced
from conversions.registry import (Bound, Component, ModelFamily, PipelineCheck, PipelineResult, PlotSeries,
                                  TaskMetric)

WIDTH, STATE = 120, 64  # 120 input channels: int4 per block of 32 cannot apply (declared below)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Linear(WIDTH, STATE)
        self.u = nn.Linear(STATE, STATE, bias=False)
        self.head = nn.Linear(STATE, 1)

    def forward(self, x, h):
        h = torch.tanh(self.w(x) + self.u(h))
        return torch.sigmoid(self.head(h)), h


def build(source):
    return Toy().eval()


def clip():
    t = np.arange(WIDTH * 40) / 16000
    return (0.5 * np.sin(2 * np.pi * 220 * t) * (np.arange(t.size) // 1280 % 2)).astype(np.float32)


def convert(model, precision="fp16", target="iOS17"):
    return convert_traced(model, {"x": torch.zeros(1, WIDTH), "h": torch.zeros(1, STATE)}, ("p", "h_out"),
                          precision=precision, target=target)


def clip_feeds(model, waveform):
    return [{"x": waveform[i * WIDTH:(i + 1) * WIDTH][None]} for i in range(len(waveform) // WIDTH)]


def random_inputs(model):
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    floats = st.floats(-1, 1, width=32)
    return st.builds(lambda x, h: {"x": x, "h": h}, arrays(np.float32, (1, WIDTH), elements=floats),
                     arrays(np.float32, (1, STATE), elements=floats))


def decisions(reference, candidate):
    ref, got = np.asarray(reference["p"]).reshape(-1) > 0.5, np.asarray(candidate["p"]).reshape(-1) > 0.5
    return {"decision_agreement": float((ref == got).mean()), "calls": float(ref.size)}


def plot(reference, candidate):
    return PlotSeries({"p": reference["p"]}, {"p": candidate["p"]}, step_ms=8.0, ylabel="toy probability",
                      threshold=0.5)


def echo(model, waveform, components):
    """Stream the clip through the component (converted, or torch when None) and count decisions above 0.5."""
    h = np.zeros((1, STATE), np.float32)
    count = 0
    for feeds in clip_feeds(model, waveform):
        if components is None:
            with torch.no_grad():
                p, h = (t.numpy() for t in model(torch.from_numpy(feeds["x"]), torch.from_numpy(h)))
        else:
            out = components["toy"].predict({**feeds, "h": h})
            p, h = out["p"], np.asarray(out["h_out"], np.float32)
        count += int(float(np.asarray(p).reshape(-1)[0]) > 0.5)
    return PipelineResult(True, f"{count} decisions above 0.5", {"count": count})


FP16 = {"p": Bound(float(os.environ.get("TOY_P_ATOL", "0.01")), 0.0, 40.0, "toy: fp16 weights and activations"),
        "h_out": Bound(0.02, 0.0, 40.0, "toy: fp16 weights and activations")}
FP32 = {"p": Bound(1e-5, 1e-5, 90.0, "toy: summation order"), "h_out": Bound(1e-5, 1e-5, 90.0, "toy: summation order")}
TASK = TaskMetric("toy-decisions", decisions, minimums={"fp16": {"decision_agreement": 0.9},
                                                        "fp32": {"decision_agreement": 1.0}},
                  slack={"decision_agreement": 0.05}, informational=("calls",))

FAMILY = ModelFamily(
    name="toy", build_reference=build, load_clip=clip, clip_path=__import__("pathlib").Path(__file__),
    tools=("numpy",),
    components=(Component("toy", convert, lambda m: m, ("x", "h"), ("p", "h_out"), clip_feeds=clip_feeds,
                          random_inputs=random_inputs, bounds={"fp16": FP16, "fp32": FP32},
                          random_bounds={"fp16": FP16, "fp32": FP32}, audio_ms_per_call=8.0,
                          state={"h_out": "h"}, initial_state=lambda m: {"h": np.zeros((1, STATE), np.float32)},
                          task=TASK, plot=plot),),
    pipelines=(PipelineCheck("echo", ("toy",), echo),),
    mixed_target_quality=0.9,
    inapplicable={("toy", "int4-per-block"): "the first layer has 120 input channels, not divisible by 32"},
)
'''

GENERATED_MODULES = ("test_parity.py", "test_quantization.py", "test_benchmarks.py")


def _env(extra_modules: str | None = None) -> dict:
    from conversions.testing import clean_subprocess_env

    # Only the toy family's module (if any) is added: an inherited COREML_PARITY_FAMILY_MODULES is dropped (None).
    return clean_subprocess_env({
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        "TQDM_DISABLE": "1", "COREML_PARITY_FAMILY_MODULES": extra_modules or None})


def _pytest(cwd: Path, *args: str, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conversions.pytest_plugin", "-p", "no:cacheprovider",
                           "-p", "no:xdist", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def toy_project(tmp_path_factory):
    """A project outside the repository: the toy family's module and a copy of the generated test modules."""
    root = tmp_path_factory.mktemp("toy-project")
    (root / "toy_family.py").write_text(textwrap.dedent(TOY_FAMILY))
    (root / "tests").mkdir()
    for name in GENERATED_MODULES:
        shutil.copy(REPO / "tests" / name, root / "tests" / name)
    (root / "pytest.ini").write_text("[pytest]\naddopts = --snapshot-ignore-file-extensions=json\n")
    return root


def _outcomes(junit: Path) -> dict[str, str]:
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = kinds[0] if kinds else "passed"
    return outcomes


def test_a_family_declared_outside_the_harness_gets_every_generated_test(toy_project):
    env = {**_env("toy_family"), "PYTHONPATH": os.pathsep.join((str(toy_project), _env()["PYTHONPATH"]))}
    common = ("-k", "toy", "--backend", "mil", "--export-dir", str(toy_project / "exports"),
              "--report-dir", str(toy_project / "report"), "-q", "tests")
    first = _pytest(toy_project, *common, "--snapshot-update", "--junitxml", str(toy_project / "first.xml"), env=env)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    second = _pytest(toy_project, *common, "--junitxml", str(toy_project / "second.xml"), env=env)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]

    outcomes = _outcomes(toy_project / "second.xml")
    expected = ["test_parity[toy/toy/mil-fp16]", "test_parity[toy/toy/mil-fp32]",
                "test_parity_random[toy/toy/mil-fp16]", "test_parity_random[toy/toy/mil-fp32]",
                "test_pipeline[toy/echo/torch]", "test_pipeline[toy/echo/mil-fp16]", "test_pipeline[toy/echo/mil-fp32]",
                "test_export_metadata[toy/toy/fp16]", "test_every_declared_component_is_covered[toy]",
                "test_benchmark_latency[toy/toy/torch-cpu]", "test_benchmark_latency[toy/toy/mil-fp16]",
                "test_quantization[toy/toy/int8-per-channel/mil-fp16]", "test_quantization[toy/toy/mixed/mil-fp16]",
                "test_quantized_package_is_compressed_and_keeps_exact_ops[toy/toy/palettize-4bit]"]
    assert {name: outcomes.get(name, "not run") for name in expected} == {name: "passed" for name in expected}
    assert not any(o in ("failure", "error") for o in outcomes.values()), outcomes

    baselines = (toy_project / "tests" / "__snapshots__" / "mil" / "toy.json").read_text()
    assert "test_parity[toy/toy/mil-fp16]" in baselines and "task.decision_agreement" in baselines
    assert "task.calls" not in baselines  # informational figures are reported, not pinned
    report = toy_project / "report" / "toy"
    assert (report / "metadata.json").is_file() and (report / "p_toy_mil-fp16.png").is_file()
    assert '"numpy"' in (report / "metadata.json").read_text()  # the family's own tools are recorded


def test_a_wrong_signature_in_a_declaration_fails_at_import_naming_the_field():
    from conversions.models.silero_vad import FAMILY

    stft = FAMILY.component("stft")
    fields = {f: getattr(stft, f) for f in ("name", "convert", "reference", "inputs", "outputs", "clip_feeds",
                                             "random_inputs", "bounds", "random_bounds", "audio_ms_per_call")}
    with pytest.raises(TypeError, match="component 'stft': clip_feeds must take 2 positional"):
        registry.Component(**{**fields, "clip_feeds": lambda model: []})
    with pytest.raises(TypeError, match="convert must take 3 positional"):
        registry.Component(**{**fields, "convert": lambda model, precision: None})
    with pytest.raises(TypeError, match="initial_state must take 1 positional"):
        registry.Component(**{**fields, "initial_state": lambda: {}})
    with pytest.raises(ValueError, match="audio_ms_per_call"):
        registry.Component(**{**fields, "audio_ms_per_call": 0})
    with pytest.raises(TypeError, match="build_reference must take 1 positional"):
        registry.ModelFamily("x", lambda: None, lambda: None, Path("."), (stft,))


def test_a_task_figure_without_slack_is_an_error_not_silently_unpinned():
    task = registry.TaskMetric("t", lambda ref, got: {"agreement": 1.0, "new_figure": 0.5},
                               minimums={"fp16": {"agreement": 0.9}}, slack={"agreement": 0.01})
    with pytest.raises(ValueError, match="new_figure.*no snapshot slack"):
        task.measure({}, {})
    with pytest.raises(ValueError, match="minimums"):
        registry.TaskMetric("t", lambda ref, got: {}, minimums={"fp16": {"unknown": 1.0}}, slack={})


# ---- the plugin's options ------------------------------------------------------------------------------------
def test_options_take_absolute_paths_outside_the_repository_in_the_space_form(tmp_path):
    """``--export-dir /abs/dir`` (space form) with an existing directory outside the repository: the plugin is a
    registered pytest11 plugin, so the path is the option's value, not a test path that moves the rootdir."""
    exports, report = tmp_path / "exports", tmp_path / "report"
    exports.mkdir()
    report.mkdir()
    done = _pytest(REPO, "--collect-only", "-q", "--export-dir", str(exports), "--report-dir", str(report),
                   "--torch-threads", "2", "tests/test_parity.py", "-k", "silero and stft", env=_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "test_parity[silero-vad/stft/mil-fp16]" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--backend", ","], "--backend ',' names no backend"),
    (["--backend", "gpu"], "--backend: unknown"),
    (["--torch-threads", "100000"], "--torch-threads must be between 0"),
    (["--torch-threads", "-1"], "--torch-threads must be between 0"),
    (["--export-dir", "{file}/sub"], "--export-dir .*: cannot create or write"),
    (["--report-dir", "{file}/sub"], "--report-dir .*: cannot create or write"),
], ids=["empty-backend", "unknown-backend", "too-many-threads", "negative-threads", "export-dir", "report-dir"])
def test_bad_option_values_are_usage_errors_at_startup(tmp_path, args, message):
    import re

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = [a.format(file=blocker) for a in args]
    done = _pytest(REPO, "--collect-only", "-q", "tests/test_parity.py", *args, env=_env())
    assert done.returncode == 4, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert re.search(message, done.stderr), done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_every_artifact_agrees_with_pytest_after_a_red_run(toy_project):
    """A run with a failing bound, a failing snapshot, a declared xfail and a skip: pytest exits 1, and the report's
    metadata.json, quantization summary and the CI job summary say exactly that (no "all matched")."""
    import json

    env = {**_env("toy_family"), "PYTHONPATH": os.pathsep.join((str(toy_project), _env()["PYTHONPATH"]))}
    report = toy_project / "red-report"
    baselines = toy_project / "tests" / "__snapshots__" / "mil" / "toy.json"
    if not baselines.is_file():  # pinned by the test above; pin them here when run alone
        pinned = _pytest(toy_project, "-k", "toy", "--backend", "mil", "--export-dir", str(toy_project / "exports"),
                         "--report-dir", str(report), "-q", "tests", "--snapshot-update", env=env)
        assert pinned.returncode == 0, pinned.stdout[-3000:]
    entries = json.loads(baselines.read_text())
    entries["test_parity[toy/toy/mil-fp32]"]["p.psnr_db"]["value"] = 1000.0  # a baseline no run can reach
    baselines.write_text(json.dumps(entries, indent=2))
    red = _pytest(toy_project, "--backend", "mil-fp16,mil-fp32,coreml-cpu_only-fp16", "-k",
                  "toy and (test_parity[ or int4-per-block/mil)", "--export-dir", str(toy_project / "exports"),
                  "--report-dir", str(report), "-q", "tests/test_parity.py", "tests/test_quantization.py",
                  env={**env, "TOY_P_ATOL": "1e-9"})
    assert red.returncode == 1, red.stdout[-3000:] + red.stderr[-2000:]

    meta = json.loads((report / "toy" / "metadata.json").read_text())
    assert meta["summary"]["this_run"]["verdict"] == "failed"
    by_variant = {r["variant"]: r for r in meta["results"] if r["test"] == "clip"}
    assert {v: (r["outcome"], r["match"]) for v, r in by_variant.items()} == {
        "mil-fp16": ("failed", False), "mil-fp32": ("failed", False), "coreml-cpu_only-fp16": ("skipped", False)}
    assert "EXCEEDED" in by_variant["mil-fp16"]["failure"]  # the bound
    assert "p.psnr_db fell" in by_variant["mil-fp32"]["failure"]  # the snapshot gate, recorded from pytest's report
    assert "macOS only" in by_variant["coreml-cpu_only-fp16"]["reason"]
    quantization = json.loads((report / "toy" / "quantization_summary.json").read_text())
    (int4,) = [v for v in quantization["variants"] if v["strategy"] == "int4-per-block"]
    assert int4["outcome"] == "xfailed" and quantization["summary"]["failed"] == 0

    summary = subprocess.run([sys.executable, str(REPO / "scripts" / "job_summary.py"), str(report)],
                             capture_output=True, text=True, timeout=60)
    assert "(2 FAILED)" in summary.stdout and "all passed" not in summary.stdout, summary.stdout
    assert "1 x Apple's Core ML runtime runs on macOS only" in summary.stdout
    assert "1 xfailed" in summary.stdout
    assert (report / "toy" / "error_summary.png").is_file()


def test_a_selection_that_checks_nothing_fails_with_one_line(tmp_path):
    """--backend coreml off macOS selects only Core ML checks, which all skip: the run says so and exits non-zero,
    unless --allow-empty-selection."""
    if sys.platform == "darwin":
        pytest.skip("on macOS the Core ML checks run")
    common = ("-q", "--backend", "coreml", "-k", "silero and stft and test_parity[", "--report-dir", str(tmp_path),
              "tests/test_parity.py")
    done = _pytest(REPO, *common, env=_env())
    assert done.returncode == 5, done.stdout[-3000:]
    assert "no parity check ran: --backend coreml selected 4 checks" in done.stdout
    assert "4 x Apple's Core ML runtime runs on macOS only" in done.stdout
    allowed = _pytest(REPO, *common, "--allow-empty-selection", env=_env())
    assert allowed.returncode == 0, allowed.stdout[-3000:]


def test_a_family_whose_extra_is_missing_says_so_and_does_not_look_green(toy_project):
    """A family whose optional extra is not installed: its checks skip naming what to install, the reason is one
    grouped line in the summary, and a selection of only that family exits non-zero."""
    source = textwrap.dedent(TOY_FAMILY).replace('name="toy"', 'name="toy-missing", requires=("no_such_extra_module",), '
                                                               'install_hint="pip install toy-extra"')
    (toy_project / "toy_missing.py").write_text(source)
    env = {**_env("toy_missing"), "PYTHONPATH": os.pathsep.join((str(toy_project), _env()["PYTHONPATH"]))}
    done = _pytest(toy_project, "-q", "--backend", "mil", "-k", "toy-missing and test_parity[",
                   "--export-dir", str(toy_project / "exports"), "--report-dir", str(toy_project / "missing-report"),
                   "tests/test_parity.py", env=env)
    assert done.returncode == 5, done.stdout[-3000:]
    assert "2 x toy-missing: no_such_extra_module not installed (pip install toy-extra)" in done.stdout
    assert "no parity check ran" in done.stdout
