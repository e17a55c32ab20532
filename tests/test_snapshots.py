"""Tests of conversions.snapshots: metric baselines in per-family JSON files, compared with declared slack.

The lifecycle tests run pytest in a generated project (two test modules writing into one family file, a second
family, a Core ML backend family that is skipped on some runs) through a sequence of runs: no baseline, update,
rerun, changed figures, ``-k`` update of one module, rerun. Every expected file content and message is written
out by hand here; nothing expected is produced by the module under test.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conversions import snapshots
from conversions.snapshots import Metric, baseline_extension, metrics_snapshot, read_improvements

REPO = Path(__file__).resolve().parents[1]

# Generated test module: figures come from values.json (changed between runs), one Metric per figure.
TEST_MODULE = '''
import json
import os
from pathlib import Path

import pytest

from conversions.snapshots import Metric, metrics_snapshot

CASES = json.loads((Path(__file__).parent.parent / "values.json").read_text())["{module}"]


@pytest.mark.parametrize("case", sorted(CASES))
def {module}(case, snapshot):
    family, variant = case.split("/")[0], case.split("/")[-1]
    backend_family = "coreml-ne" if variant.startswith("coreml-ne") else "mil"
    if any(part and part in case for part in os.environ.get("SKIP_CASES", "").split(",")):
        pytest.skip("not runnable here (e.g. Apple's Core ML runtime on Linux)")
    metrics = {{name: Metric(value, direction, slack) for name, (value, direction, slack) in CASES[case].items()}}
    assert metrics_snapshot(snapshot, family=family, backend_family=backend_family) == metrics
'''

H, L = "higher", "lower"
REG, WITHIN, BOUNDARY, IMPROVED, SIZE, REMOVED, ADDED, NAN = (
    f"silero-vad/unified-36ms/{s}/mil-fp16" for s in
    ("palettize-2bit", "palettize-4bit", "palettize-6bit", "palettize-8bit", "linear-8bit", "prune-50", "prune-75",
     "prune-90"))
P_MIL, P_NE, P_OTHER = "silero-vad/unified-36ms/mil-fp16", "silero-vad/unified-36ms/coreml-ne-fp16", "other-vad/enc/mil-fp16"
P_FP32 = "silero-vad/unified-36ms/mil-fp32"  # skipped in one run while the rest of its family file is used

V1 = {
    "test_quantization": {
        REG: {"quality_vs_torch": [0.9987, H, 0.002]},
        WITHIN: {"psnr_db": [61.3, H, 1.0], "max_abs": [0.001, L, 0.0005]},
        BOUNDARY: {"quality_vs_torch": [0.9987, H, 0.002]},
        IMPROVED: {"psnr_db": [61.3, H, 1.0], "size_bytes": [171234, L, 0]},
        SIZE: {"size_bytes": [171234, L, 0], "weight_bytes": [12345678, L, 0],
               "quality_vs_torch": [0.99871234567, H, 0.002]},
        REMOVED: {"quality_vs_torch": [0.99, H, 0.002], "psnr_db": [40.0, H, 1.0]},
        ADDED: {"quality_vs_torch": [0.98, H, 0.002]},
        NAN: {"quality_vs_torch": [0.97, H, 0.002]},
    },
    "test_parity": {
        P_MIL: {"probability.psnr_db": [80.5, H, 1.0]},
        P_FP32: {"probability.psnr_db": [120.0, H, 1.0]},
        P_NE: {"probability.psnr_db": [70.25, H, 1.0]},
        P_OTHER: {"logits.quality": [0.5, H, 0.01]},
    },
}
V2 = {
    "test_quantization": {
        REG: {"quality_vs_torch": [0.8123, H, 0.002]},  # fell by more than the slack
        WITHIN: {"psnr_db": [60.4, H, 1.0], "max_abs": [0.0014, L, 0.0005]},  # worse, within the slack
        BOUNDARY: {"quality_vs_torch": [0.9967, H, 0.002]},  # worse by exactly the slack
        IMPROVED: {"psnr_db": [63.0, H, 1.0], "size_bytes": [170000, L, 0]},
        SIZE: {"size_bytes": [171235, L, 0], "weight_bytes": [12345678, L, 0],
               "quality_vs_torch": [0.99871234567, H, 0.002]},  # one byte more
        REMOVED: {"quality_vs_torch": [0.99, H, 0.002]},
        ADDED: {"quality_vs_torch": [0.98, H, 0.002], "psnr_db": [35.5, H, 1.0]},
        NAN: {"quality_vs_torch": [math.nan, H, 0.002]},
    },
    "test_parity": V1["test_parity"],
}


def fig(value, direction, slack):
    return {"direction": direction, "slack": slack, "value": value}


# What the files must hold after the first --snapshot-update (written out by hand: rounding to 6 significant
# digits for floats, integers exact).
QUANT_V1_ENTRIES = {
    f"test_quantization[{REG}]": {"quality_vs_torch": fig(0.9987, H, 0.002)},
    f"test_quantization[{WITHIN}]": {"max_abs": fig(0.001, L, 0.0005), "psnr_db": fig(61.3, H, 1.0)},
    f"test_quantization[{BOUNDARY}]": {"quality_vs_torch": fig(0.9987, H, 0.002)},
    f"test_quantization[{IMPROVED}]": {"psnr_db": fig(61.3, H, 1.0), "size_bytes": fig(171234, L, 0)},
    f"test_quantization[{SIZE}]": {"quality_vs_torch": fig(0.998712, H, 0.002), "size_bytes": fig(171234, L, 0),
                                   "weight_bytes": fig(12345678, L, 0)},
    f"test_quantization[{REMOVED}]": {"psnr_db": fig(40.0, H, 1.0), "quality_vs_torch": fig(0.99, H, 0.002)},
    f"test_quantization[{ADDED}]": {"quality_vs_torch": fig(0.98, H, 0.002)},
    f"test_quantization[{NAN}]": {"quality_vs_torch": fig(0.97, H, 0.002)},
}
PARITY_MIL_ENTRY = {f"test_parity[{P_MIL}]": {"probability.psnr_db": fig(80.5, H, 1.0)},
                    f"test_parity[{P_FP32}]": {"probability.psnr_db": fig(120.0, H, 1.0)}}
MIL_V1 = {**QUANT_V1_ENTRIES, **PARITY_MIL_ENTRY}
NE_V1 = {f"test_parity[{P_NE}]": {"probability.psnr_db": fig(70.25, H, 1.0)}}
OTHER_V1 = {f"test_parity[{P_OTHER}]": {"logits.quality": fig(0.5, H, 0.01)}}
# After `-k test_quantization --snapshot-update` with V2: improvements and regressions beyond the slack are
# written, worsening within the slack keeps the old value, removed figures go, added ones come, NaN is stored.
MIL_V2_UPDATED = {
    **PARITY_MIL_ENTRY,
    f"test_quantization[{REG}]": {"quality_vs_torch": fig(0.8123, H, 0.002)},
    f"test_quantization[{WITHIN}]": {"max_abs": fig(0.001, L, 0.0005), "psnr_db": fig(61.3, H, 1.0)},
    f"test_quantization[{BOUNDARY}]": {"quality_vs_torch": fig(0.9987, H, 0.002)},
    f"test_quantization[{IMPROVED}]": {"psnr_db": fig(63.0, H, 1.0), "size_bytes": fig(170000, L, 0)},
    f"test_quantization[{SIZE}]": {"quality_vs_torch": fig(0.998712, H, 0.002), "size_bytes": fig(171235, L, 0),
                                   "weight_bytes": fig(12345678, L, 0)},
    f"test_quantization[{REMOVED}]": {"quality_vs_torch": fig(0.99, H, 0.002)},
    f"test_quantization[{ADDED}]": {"psnr_db": fig(35.5, H, 1.0), "quality_vs_torch": fig(0.98, H, 0.002)},
    f"test_quantization[{NAN}]": {"quality_vs_torch": fig("NaN", H, 0.002)},
}


def layout(entries: dict) -> str:
    """The documented file format: sorted keys, indent 2, trailing newline."""
    return json.dumps(entries, sort_keys=True, indent=2) + "\n"


def q(case: str) -> str:
    return f"test_quantization[{case}]"


def p(case: str) -> str:
    return f"test_parity[{case}]"


class Project:
    """A generated pytest project importing conversions; each run's outcomes are read from its junit XML."""

    def __init__(self, root: Path):
        self.root = root
        self.tests = root / "tests"
        self.tests.mkdir(parents=True)
        for module in ("test_quantization", "test_parity"):
            (self.tests / f"{module}.py").write_text(TEST_MODULE.format(module=module))
        # As the project's pytest options must have it (see the conversions.snapshots module doc).
        (root / "pytest.ini").write_text("[pytest]\naddopts = --snapshot-ignore-file-extensions=json\n")
        self.runs = 0

    def file(self, backend_family: str, family: str) -> Path:
        return self.tests / "__snapshots__" / backend_family / f"{family}.json"

    def text(self, backend_family: str, family: str) -> str | None:
        path = self.file(backend_family, family)
        return path.read_text() if path.exists() else None

    def run(self, values: dict, *args: str, skip: str = "") -> dict:
        self.runs += 1
        (self.root / "values.json").write_text(json.dumps(values))
        junit = self.root / f"junit{self.runs}.xml"
        records = self.root / f"records{self.runs}"
        from conversions.testing import clean_subprocess_env

        # The child's own records directory (not the parent session's) and only the plugins it names.
        env = clean_subprocess_env({"PYTHONPATH": str(REPO), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
                                    "PYTEST_PLUGINS": None, "COREML_PARITY_FAMILY_MODULES": None,
                                    "COREML_PARITY_RECORDS_DIR": str(records), "SKIP_CASES": skip})
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "syrupy", "-p", "xdist", "-p", "no:cacheprovider",
                               f"--junitxml={junit}", "-rA", *args],
                              cwd=self.root, env=env, capture_output=True, text=True, timeout=120)
        outcomes = {}
        if junit.exists():
            for case in ET.parse(junit).getroot().iter("testcase"):
                child = next(iter(case), None)
                kind = "passed" if child is None or child.tag in ("system-out", "system-err") else child.tag
                outcomes[case.get("name")] = (kind, "" if child is None else (child.text or ""))
        return {"code": proc.returncode, "out": proc.stdout + proc.stderr, "outcomes": outcomes,
                "improvements": read_improvements(records),
                "files": {key: self.text(*key) for key in (("mil", "silero-vad"), ("coreml-ne", "silero-vad"),
                                                           ("mil", "other-vad"))}}


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    project = Project(tmp_path_factory.mktemp("snapshot-project"))
    runs = {"missing": project.run(V1)}
    # Two xdist workers: both write into the shared family file at the end of their session.
    runs["update"] = project.run(V1, "--snapshot-update", "-n", "2")
    runs["rerun"] = project.run(V1, skip="coreml-ne,mil-fp32")
    runs["changed"] = project.run(V2, "-n", "2")
    runs["subset_update"] = project.run(V2, "-k", "test_quantization", "--snapshot-update")
    runs["after_update"] = project.run(V2)
    return runs


def test_first_run_without_baseline_fails_as_missing(lifecycle):
    run = lifecycle["missing"]
    assert run["code"] == 1, run["out"]
    assert len(run["outcomes"]) == 12
    for name, (kind, text) in run["outcomes"].items():
        assert kind == "failure", (name, kind)
        assert f"Snapshot '{name}' does not exist!" in text
    assert all(text is None for text in run["files"].values())


def test_update_writes_one_file_per_family_and_backend_family_in_the_documented_layout(lifecycle):
    run = lifecycle["update"]
    assert run["code"] == 0, run["out"]
    assert all(kind == "passed" for kind, _ in run["outcomes"].values()), run["out"]
    assert "12 snapshots generated" in run["out"]
    # Both modules' entries in the one silero-vad/mil file; Core ML and the other family in their own files.
    assert run["files"][("mil", "silero-vad")] == layout(MIL_V1)
    assert run["files"][("coreml-ne", "silero-vad")] == layout(NE_V1)
    assert run["files"][("mil", "other-vad")] == layout(OTHER_V1)


def test_rerun_passes_and_keeps_the_entries_of_skipped_tests(lifecycle):
    run = lifecycle["rerun"]
    # No "unused snapshot" failure for the skipped tests' entries: the Core ML file no test used, and the fp32
    # entry of the mil file the other tests used.
    assert run["code"] == 0, run["out"]
    kinds = {name: kind for name, (kind, _) in run["outcomes"].items()}
    assert kinds.pop(p(P_NE)) == "skipped" and kinds.pop(p(P_FP32)) == "skipped"
    assert set(kinds.values()) == {"passed"}
    assert "unused" not in run["out"]
    assert run["files"] == lifecycle["update"]["files"]
    assert run["improvements"] == []


def test_changed_figures_are_compared_with_slack_and_direction(lifecycle):
    run = lifecycle["changed"]
    assert run["code"] == 1, run["out"]
    kinds = {name: kind for name, (kind, _) in run["outcomes"].items()}
    assert kinds == {q(REG): "failure", q(SIZE): "failure", q(REMOVED): "failure", q(ADDED): "failure",
                     q(NAN): "failure", q(WITHIN): "passed", q(BOUNDARY): "passed", q(IMPROVED): "passed",
                     p(P_MIL): "passed", p(P_FP32): "passed", p(P_NE): "passed", p(P_OTHER): "passed"}
    # A failing comparison rewrites nothing.
    assert run["files"] == lifecycle["update"]["files"]


@pytest.mark.parametrize("case, line", [
    (REG, f"silero-vad {q(REG)}: quality_vs_torch fell 0.9987 -> 0.8123 (slack 0.002)"),
    (SIZE, f"silero-vad {q(SIZE)}: size_bytes grew 171234 -> 171235 (slack 0)"),
    (REMOVED, f"silero-vad {q(REMOVED)}: psnr_db is in the baseline (40.0) but no longer produced"),
    (ADDED, f"silero-vad {q(ADDED)}: psnr_db has no baseline"),
    (NAN, f"silero-vad {q(NAN)}: quality_vs_torch is NaN (baseline 0.97, now nan"),
])
def test_failure_names_family_snapshot_metric_and_values(lifecycle, case, line):
    run = lifecycle["changed"]
    kind, text = run["outcomes"][q(case)]
    assert kind == "failure"
    assert line in text
    assert line in run["out"]  # what the terminal shows too
    # Only the failing figure is reported: the unchanged ones of the same entry are not.
    if case == SIZE:
        reported = "\n".join(line for line in text.splitlines() if line.startswith("E "))
        assert line in reported and "weight_bytes" not in reported and "quality_vs_torch" not in reported


def test_improvements_pass_and_are_recorded_from_xdist_workers(lifecycle):
    assert lifecycle["changed"]["improvements"] == [
        f"silero-vad {q(IMPROVED)}: psnr_db rose 61.3 -> 63.0",
        f"silero-vad {q(IMPROVED)}: size_bytes fell 171234 -> 170000",
    ]


def test_subset_update_ratchets_its_entries_and_keeps_the_other_modules(lifecycle):
    run = lifecycle["subset_update"]
    assert run["code"] == 0, run["out"]
    assert {name for name, (kind, _) in run["outcomes"].items() if kind == "passed"} == {
        q(c) for c in (REG, WITHIN, BOUNDARY, IMPROVED, SIZE, REMOVED, ADDED, NAN)}
    assert "deleted" not in run["out"]
    # The deselected test_parity entry stays in the shared file; the other files are untouched.
    assert run["files"][("mil", "silero-vad")] == layout(MIL_V2_UPDATED)
    assert run["files"][("coreml-ne", "silero-vad")] == layout(NE_V1)
    assert run["files"][("mil", "other-vad")] == layout(OTHER_V1)


def test_updated_baselines_pass_except_nan_which_never_matches(lifecycle):
    run = lifecycle["after_update"]
    assert run["code"] == 1, run["out"]
    failed = {name for name, (kind, _) in run["outcomes"].items() if kind != "passed"}
    assert failed == {q(NAN)}
    assert f"silero-vad {q(NAN)}: quality_vs_torch is NaN (baseline nan, now nan" in run["out"]
    assert run["improvements"] == []


# ---- in-process: the API's validation and the comparison's edges ---------------------------------------------
def test_metric_validates_and_normalizes():
    assert Metric(np.float32(0.5), "higher", slack=np.float64(0.25)) == Metric(0.5, "higher", slack=0.25)
    assert type(Metric(np.float32(0.5), "higher").value) is float
    size = Metric(np.int64(171234), "lower")
    assert size.value == 171234 and type(size.value) is int and size.slack == 0
    with pytest.raises(ValueError, match=r"direction must be one of \('higher', 'lower'\), got 'up'"):
        Metric(1.0, "up")
    with pytest.raises(ValueError, match="slack must be a finite number >= 0, got -0.1"):
        Metric(1.0, "higher", slack=-0.1)
    with pytest.raises(ValueError, match="slack must be a finite number"):
        Metric(1.0, "higher", slack=math.inf)
    with pytest.raises(ValueError, match="value must be a real number, got str '1'"):
        Metric("1", "higher")
    with pytest.raises(ValueError, match="value must be a real number, got bool"):
        Metric(True, "higher")


def test_metrics_snapshot_validates_its_arguments():
    with pytest.raises(ValueError, match=r"backend_family must be one of \('mil', 'coreml-cpu', 'coreml-ne'\), "
                                         "got 'coreml'"):
        metrics_snapshot(object(), family="silero-vad", backend_family="coreml")
    with pytest.raises(ValueError, match="family must be a model family name usable as a file name.*'../x'"):
        metrics_snapshot(object(), family="../x", backend_family="mil")
    with pytest.raises(ValueError, match="snapshot must be syrupy's snapshot fixture, got object"):
        metrics_snapshot(object(), family="silero-vad", backend_family="mil")
    extension = baseline_extension("silero-vad", "mil")()
    with pytest.raises(ValueError, match=r"metrics\['q'\] must be a Metric"):
        extension.serialize({"q": 0.5})
    with pytest.raises(ValueError, match="non-empty dict"):
        extension.serialize({})


def stored(**figures) -> str:
    """A baseline entry as it sits in the file (hand-written JSON)."""
    return json.dumps({name: fig(*f) for name, f in figures.items()})


@pytest.fixture
def isolated_improvements(monkeypatch, tmp_path):
    """Improvements go to a list and a records dir of this test only (not the session's summary)."""
    seen: list[str] = []
    monkeypatch.setattr(snapshots, "IMPROVEMENTS", seen)
    monkeypatch.setenv("COREML_PARITY_RECORDS_DIR", str(tmp_path))
    return seen, tmp_path


@pytest.mark.parametrize("baseline, now, ok", [
    (stored(q=(0.9987, H, 0.002)), {"q": Metric(0.9967, H, 0.002)}, True),  # worse by exactly the slack
    (stored(q=(0.9987, H, 0.002)), {"q": Metric(0.99669, H, 0.002)}, False),
    (stored(q=(0.9987, H, 0.002)), {"q": Metric(0.9967, H, 0.001)}, False),  # the slack declared now counts
    (stored(q=(0.9987, H, 0.0)), {"q": Metric(0.9967, H, 0.002)}, True),
    (stored(e=(1e-6, L, 0)), {"e": Metric(1.0000001e-6, L, 0)}, True),  # equal at 6 significant digits
    (stored(e=(1e-6, L, 0)), {"e": Metric(1.00001e-6, L, 0)}, False),
    (stored(n=(171234, L, 0)), {"n": Metric(171233, L, 0)}, True),
    (stored(n=(171234, L, 0)), {"n": Metric(171235, L, 0)}, False),
    (stored(n=(12345678, L, 0)), {"n": Metric(12345679, L, 0)}, False),  # integers are never rounded
    (stored(q=("NaN", H, 0.002)), {"q": Metric(0.5, H, 0.002)}, False),
    (stored(q=(0.5, H, 0.002)), {"q": Metric(math.nan, H, 0.002)}, False),
    (stored(psnr=("Infinity", H, 1.0)), {"psnr": Metric(math.inf, H, 1.0)}, True),
    (stored(psnr=("Infinity", H, 1.0)), {"psnr": Metric(200.0, H, 1.0)}, False),
    (stored(psnr=(60.0, H, 1.0)), {"psnr": Metric(math.inf, H, 1.0)}, True),
])
def test_comparison(isolated_improvements, baseline, now, ok):
    extension = baseline_extension("silero-vad", "mil")()
    assert extension.matches(serialized_data=extension.serialize(now), snapshot_data=baseline) is ok


@pytest.mark.parametrize("baseline, now, unchanged", [
    (stored(q=(0.9987, H, 0.002)), {"q": Metric(0.9987, H, 0.002)}, True),
    (stored(q=(0.9987, H, 0.002)), {"q": Metric(0.9977, H, 0.002)}, True),  # within slack: keeps the better value
    (stored(q=(0.9987, H, 0.002)), {"q": Metric(0.9988, H, 0.002)}, False),  # improvement: pinned
    (stored(q=(0.9987, H, 0.002)), {"q": Metric(0.9987, H, 0.001)}, False),  # new declared slack: rewritten
])
def test_update_mode_rewrites_only_real_changes(isolated_improvements, baseline, now, unchanged):
    extension = baseline_extension("silero-vad", "mil")()
    extension.ratchet = True
    assert extension.matches(serialized_data=extension.serialize(now), snapshot_data=baseline) is unchanged
    seen, records = isolated_improvements
    assert seen == [] and read_improvements(records) == []  # what an update pins is not listed as to be pinned


def test_improvements_are_listed_in_process_and_in_the_records_dir(isolated_improvements):
    seen, records = isolated_improvements
    extension = baseline_extension("silero-vad", "coreml-ne")()
    extension.snapshot_name = "test_parity[x]"
    now = {"psnr_db": Metric(63.0, H, 1.0), "size": Metric(9, L, 0), "same": Metric(1.5, H, 0.1)}
    baseline = stored(psnr_db=(61.3, H, 1.0), size=(10, L, 0), same=(1.5, H, 0.1))
    assert extension.matches(serialized_data=extension.serialize(now), snapshot_data=baseline)
    expected = ["silero-vad test_parity[x]: psnr_db rose 61.3 -> 63.0", "silero-vad test_parity[x]: size fell 10 -> 9"]
    assert seen == expected
    assert read_improvements(records) == expected
    assert not [f for f in (records / "improvements").iterdir() if f.name.startswith(".")]  # no temp file left


def test_read_improvements_of_missing_and_corrupt_dirs(tmp_path):
    assert read_improvements(tmp_path / "nowhere") == []
    (tmp_path / "improvements").mkdir()
    (tmp_path / "improvements" / "a.json").write_text('{"line": "fam t[x]: q rose 1 -> 2"}')
    (tmp_path / "improvements" / ".a.json.123.tmp").write_text("partial")
    assert read_improvements(tmp_path) == ["fam t[x]: q rose 1 -> 2"]
    (tmp_path / "improvements" / "b.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt improvement file .*b.json"):
        read_improvements(tmp_path)


def test_a_corrupt_baseline_file_is_named(tmp_path):
    path = tmp_path / "silero-vad.json"
    path.write_text('["not", "an", "object"]')
    extension = baseline_extension("silero-vad", "mil")()
    with pytest.raises(ValueError, match=f"corrupt snapshot baseline file {path}"):
        extension.read_snapshot_data_from_location(snapshot_location=str(path), snapshot_name="t", session_id="1")
