"""Tests of conversions.report: record files (round trip, concurrency, corruption), metadata.json, plots, run_info.

Records are synthetic and built here; expected values (summary counts, file names, sort order) are written out
by hand or computed from the records with plain Python, never by the report module.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
import subprocess
import sys
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from conversions.report import METADATA_SCHEMA_VERSION, build_reports, read_records, run_info, write_record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INFO = {
    "generated_at": "2025-01-31T12:00:00+00:00",
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
    "git_dirty": False,
    "platform": {"platform": "Test-1.0", "system": "Test", "machine": "x86_64", "python": "3.11.0"},
    "tool_versions": {"coremltools": "9.0", "torch": None, "numpy": "2.2.6", "silero-vad": "6.2.3", "pytest": "9"},
}


def make_record(component: str, variant: str, *, test: str = "clip", model: str = "silero-vad", match: bool = True,
                max_abs: float = 1e-3, series: dict | None = None) -> dict:
    record = {
        "test_id": f"tests/test_parity.py::test_parity[{model}/{component}/{variant}/{test}]",
        "model": model, "component": component, "test": test, "variant": variant,
        "backend": variant.split("-")[0], "compute_units": None,
        "precision": variant.split("-")[1], "runtime_precision": variant.split("-")[1], "target": "iOS17",
        "inputs": [{"name": "audio_input", "shape": [1, 576], "dtype": "float32"}],
        "outputs": [{"name": "probability", "shape": [1, 1, 1], "dtype": "float16"},
                    {"name": "state", "shape": [2, 1, 128], "dtype": "float16"}],
        "calls": 326,
        "metrics": {
            "probability": {"max_abs": max_abs, "max_rel": 0.01, "psnr_db": 61.2, "quality": 0.998,
                            "allclose": match},
            "state": {"max_abs": 0.0, "max_rel": 0.0, "psnr_db": math.inf, "quality": 1.0, "allclose": True},
        },
        "bounds": {"probability": {"atol": 5e-3, "rtol": 0.0, "psnr_min_db": 45.0, "why": "fp16 storage"},
                   "state": {"atol": 2e-2, "rtol": 0.0, "psnr_min_db": 40.0, "why": "fp16 storage"}},
        "task_metrics": {"decision_agreement": 1.0 if match else 0.5, "segment_f1": 1.0},
        "task_bounds": {"decision_agreement": 0.99, "segment_f1": 0.9},
        "match": match,
        "failure": None if match else "probability: max_abs inf > atol 0.005",
        "package": f"/cache/{component}-{variant}.mlpackage", "package_size_bytes": 1234567, "cache_key": "ab12cd",
        "duration_s": 1.23,
    }
    if series is not None:
        record["series"] = series
    return record


def synthetic_records() -> list[dict]:
    """2 components x 2 variants of clip records (one failing with an infinite error, one with a series), one
    random record, and one record of a second model."""
    t = np.arange(40)
    reference = (0.5 + 0.45 * np.sin(t / 5.0)).tolist()
    candidate = (np.asarray(reference) + 1e-3 * np.cos(t)).tolist()
    series = {"step_ms": 32.0, "ylabel": "speech probability", "threshold": 0.5,  # as PlotSeries.as_dict writes it
              "reference": {"probability": reference}, "candidate": {"probability": candidate}}
    return [
        make_record("unified-36ms", "mil-fp16", series=series, max_abs=2.9e-3),
        make_record("unified-36ms", "mil-fp32", max_abs=4e-7),
        make_record("encoder", "mil-fp16", match=False, max_abs=math.inf),
        make_record("encoder", "mil-fp32", max_abs=0.0),
        make_record("encoder", "mil-fp32", test="random", max_abs=1e-6),
        make_record("unified-36ms", "mil-fp16", model="other-model", max_abs=1e-4),
    ]


def canonical(obj):
    """obj with NaN replaced by a marker, so that == compares NaNs as equal."""
    if isinstance(obj, dict):
        return {k: canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return "<nan>"
    return obj


def files_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# ---------------------------------------------------------------------------------------------------------------
# records


def test_write_read_round_trip_with_numpy_and_non_finite(tmp_path):
    records_dir = tmp_path / "records" / "nested"  # write_record creates missing directories
    record = {
        "test_id": "tests/test_parity.py::test_parity[silero-vad/unified-36ms/mil-fp16]",
        "model": "silero-vad", "component": "unified-36ms", "test": "clip", "variant": "mil-fp16",
        "calls": np.int64(326),
        "match": np.bool_(True),
        "package": tmp_path / "x.mlpackage",
        "metrics": {"probability": {"max_abs": np.float32(0.1), "max_rel": np.float64(np.inf),
                                    "psnr_db": -math.inf, "quality": np.float64(np.nan)}},
        "series": {"reference": {"probability": np.array([0.25, 0.5], dtype=np.float32)},
                   "candidate": {"probability": np.array([[1.0], [np.nan]])}},
    }
    path = write_record(records_dir, record)

    assert path.parent == records_dir and path.suffix == ".json"
    assert "test_parity" in path.name and "/" not in path.name and "[" not in path.name
    text = path.read_text()
    assert "Infinity" in text and "-Infinity" in text and "NaN" in text  # the documented non-strict JSON tokens

    expected = {
        "test_id": record["test_id"],
        "model": "silero-vad", "component": "unified-36ms", "test": "clip", "variant": "mil-fp16",
        "calls": 326,
        "match": True,
        "package": str(tmp_path / "x.mlpackage"),
        # the float32 nearest 0.1, as a double: 13421773 * 2**-27
        "metrics": {"probability": {"max_abs": 13421773 * 2.0**-27, "max_rel": math.inf,
                                    "psnr_db": -math.inf, "quality": math.nan}},
        "series": {"reference": {"probability": [0.25, 0.5]}, "candidate": {"probability": [[1.0], [math.nan]]}},
    }
    (got,) = read_records(records_dir)
    assert canonical(got) == canonical(expected)
    assert type(got["calls"]) is int and type(got["match"]) is bool


def test_write_record_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="record must be a dict, got list"):
        write_record(tmp_path, [1, 2])
    with pytest.raises(ValueError, match=r"\['metrics'\]\['probability'\].*object"):
        write_record(tmp_path, {"test_id": "t", "model": "m", "metrics": {"probability": object()}})
    assert files_in(tmp_path) == set()  # nothing half-written


def test_read_records_sorted_and_unique_names(tmp_path):
    records = [make_record(c, v, test=t, model=m) for m, c, t, v in [
        ("silero-vad", "unified-36ms", "random", "mil-fp16"),
        ("other-model", "x", "clip", "mil-fp16"),
        ("silero-vad", "encoder", "random", "mil-fp32"),
        ("silero-vad", "unified-36ms", "clip", "mil-fp32"),
        ("silero-vad", "encoder", "clip", "mil-fp32"),
        ("silero-vad", "unified-36ms", "clip", "mil-fp16"),
    ]]
    paths = [write_record(tmp_path, r) for r in records]
    paths.append(write_record(tmp_path, records[0]))  # the same test id again still gets its own file
    assert len(set(paths)) == 7

    got = [(r["model"], r["component"], r["test"], r["variant"]) for r in read_records(tmp_path)]
    assert got == [
        ("other-model", "x", "clip", "mil-fp16"),
        ("silero-vad", "encoder", "clip", "mil-fp32"),
        ("silero-vad", "encoder", "random", "mil-fp32"),
        ("silero-vad", "unified-36ms", "clip", "mil-fp16"),
        ("silero-vad", "unified-36ms", "clip", "mil-fp32"),
        ("silero-vad", "unified-36ms", "random", "mil-fp16"),
        ("silero-vad", "unified-36ms", "random", "mil-fp16"),
    ]


def test_concurrent_writes_from_processes(tmp_path):
    n = 24
    args = [(tmp_path, {"test_id": f"t{i}", "model": "m", "component": "c", "test": "clip", "variant": f"v{i:02d}",
                        "payload": [float(i)] * 200})
            for i in range(n)]
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        paths = pool.starmap(write_record, args, chunksize=1)
    assert len(set(paths)) == n
    got = read_records(tmp_path)
    assert [r["test_id"] for r in got] == [f"t{i}" for i in range(n)]  # sorted by variant v00..v23
    assert all(r["payload"] == [float(int(r["test_id"][1:]))] * 200 for r in got)
    assert all(not name.startswith(".") for name in files_in(tmp_path))  # no temp files left behind


def test_corrupt_record_raises_naming_the_file(tmp_path):
    write_record(tmp_path, make_record("encoder", "mil-fp16"))
    (tmp_path / "truncated-record.json").write_text('{"model": "silero-vad", "metrics": {')
    with pytest.raises(ValueError, match="truncated-record.json"):
        read_records(tmp_path)
    (tmp_path / "truncated-record.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="truncated-record.json.*JSON object"):
        read_records(tmp_path)


def test_temp_and_foreign_files_ignored(tmp_path):
    write_record(tmp_path, make_record("encoder", "mil-fp16"))
    (tmp_path / ".abc-test.json.k3j2.tmp").write_text('{"model": ')  # a write in progress
    (tmp_path / ".hidden.json").write_text("garbage")
    (tmp_path / "notes.txt").write_text("garbage")
    (tmp_path / "subdir.json").mkdir()
    got = read_records(tmp_path)
    assert [(r["component"], r["variant"]) for r in got] == [("encoder", "mil-fp16")]


def test_read_records_missing_directory_is_empty(tmp_path):
    assert read_records(tmp_path / "never-created") == []


# ---------------------------------------------------------------------------------------------------------------
# reports


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_build_reports_metadata_and_plots(tmp_path):
    records = synthetic_records()
    report_dir = tmp_path / "report"
    paths = build_reports(records, report_dir, info=INFO)

    vad, other = report_dir / "silero-vad", report_dir / "other-model"
    assert set(paths) == {vad / "metadata.json", vad / "probability_unified-36ms_mil-fp16.png",
                          vad / "error_summary.png", other / "metadata.json", other / "error_summary.png"}
    assert files_in(report_dir) == {"silero-vad", "other-model"}
    assert files_in(vad) == {"metadata.json", "probability_unified-36ms_mil-fp16.png", "error_summary.png"}
    assert files_in(other) == {"metadata.json", "error_summary.png"}  # no temp files either

    meta = json.loads((vad / "metadata.json").read_text())
    assert meta["schema_version"] == METADATA_SCHEMA_VERSION == 1
    assert meta["model"] == "silero-vad"
    for key in ("generated_at", "git_commit", "git_dirty", "platform", "tool_versions"):
        assert meta[key] == INFO[key]

    mine = [r for r in records if r["model"] == "silero-vad"]
    summary = meta["summary"]
    assert {k: summary[k] for k in ("results", "matched", "passed", "failed", "skipped", "xfailed", "components",
                                    "variants", "partial", "verdict")} == {
        "results": len(mine),
        "matched": len([r for r in mine if r["match"]]),
        "passed": len([r for r in mine if r["match"]]),
        "failed": len([r for r in mine if not r["match"]]),
        "skipped": 0, "xfailed": 0,
        "components": sorted(set(r["component"] for r in mine)),
        "variants": sorted(set(r["variant"] for r in mine)),
        "partial": False, "verdict": "failed",
    }
    assert summary["this_run"]["results"] == 5 and summary["results"] == 5 and summary["failed"] == 1

    assert all("series" not in r for r in meta["results"])
    assert [r["test_id"] for r in meta["results"]] == [
        "tests/test_parity.py::test_parity[silero-vad/encoder/mil-fp16/clip]",
        "tests/test_parity.py::test_parity[silero-vad/encoder/mil-fp32/clip]",
        "tests/test_parity.py::test_parity[silero-vad/encoder/mil-fp32/random]",
        "tests/test_parity.py::test_parity[silero-vad/unified-36ms/mil-fp16/clip]",
        "tests/test_parity.py::test_parity[silero-vad/unified-36ms/mil-fp32/clip]",
    ]
    by_id = {r["test_id"]: r for r in mine}
    run = {k: INFO[k] for k in ("generated_at", "git_commit", "git_dirty")}
    for result in meta["results"]:  # everything else kept as given, full precision, inf included
        expected = {k: v for k, v in by_id[result["test_id"]].items() if k != "series"}
        extra = {"run": run, "outcome": "passed" if expected["match"] else "failed"}
        if "series" in by_id[result["test_id"]]:
            extra["plots"] = ["probability_unified-36ms_mil-fp16.png"]
        assert result == {**expected, **extra}
    assert meta["results"][0]["metrics"]["probability"]["max_abs"] == math.inf
    assert "series" in records[0]  # the caller's records are not modified

    other_meta = json.loads((other / "metadata.json").read_text())
    assert other_meta["summary"]["results"] == 1 and other_meta["summary"]["variants"] == ["mil-fp16"]

    for png in (vad / "probability_unified-36ms_mil-fp16.png", vad / "error_summary.png"):
        width, height = png_size(png)
        assert width == 800 and 200 < height < 1000  # 8 in at 100 dpi
        # not a blank canvas: more than a handful of distinct colors (lines, bars, text)
        from matplotlib.image import imread
        pixels = imread(png)[..., :3].reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 20


def test_build_reports_removes_stale_plots_and_replaces_metadata(tmp_path):
    """A report of another commit is replaced whole, and plots no result refers to are removed: the folder never
    mixes runs."""
    vad = tmp_path / "silero-vad"
    vad.mkdir()
    (vad / "probability_gone_mil-fp16.png").write_bytes(PNG_SIGNATURE + b"old")
    (vad / "metadata.json").write_text(json.dumps({"schema_version": 1, "stale": True, "results": [1, 2, 3]}))

    records = [r for r in synthetic_records() if r["model"] == "silero-vad" and "series" not in r]
    paths = build_reports(records, tmp_path, info=INFO)

    assert not (vad / "probability_gone_mil-fp16.png").exists()
    assert not any(p.name.startswith("probability_") for p in paths)  # no series, no probability plot
    meta = json.loads((vad / "metadata.json").read_text())
    assert "stale" not in meta and len(meta["results"]) == len(records) == 4


def test_error_summary_falls_back_to_random_records(tmp_path):
    records = [make_record("encoder", "mil-fp16", test="random", max_abs=math.nan),
               make_record("encoder", "mil-fp32", test="random", match=False)]
    records[1]["metrics"] = {}  # failed before comparing anything
    (path,) = [p for p in build_reports(records, tmp_path, info=INFO) if p.name == "error_summary.png"]
    assert png_size(path)[0] == 800


def test_build_reports_rejects_bad_records(tmp_path):
    with pytest.raises(ValueError, match=r"records\[1\].*'model'.*'\.\./escape'"):
        build_reports([make_record("a", "mil-fp16"), make_record("a", "mil-fp16", model="../escape")], tmp_path,
                      info=INFO)
    no_model = make_record("a", "mil-fp16")
    del no_model["model"]
    with pytest.raises(ValueError, match=r"records\[0\].*'model'.*None"):
        build_reports([no_model], tmp_path, info=INFO)
    series = {"step_ms": 32.0, "reference": {"probability": [0.1, 0.2]}, "candidate": {"probability": [0.1]}}
    with pytest.raises(ValueError, match="differ in length: 2 vs 1"):
        build_reports([make_record("a", "mil-fp16", series=series)], tmp_path, info=INFO)
    series = {"step_ms": 0, "reference": {"probability": [0.1]}, "candidate": {"probability": [0.1]}}
    with pytest.raises(ValueError, match="step_ms must be a positive"):
        build_reports([make_record("a", "mil-fp16", series=series)], tmp_path, info=INFO)
    assert not (tmp_path / "escape").exists()


def test_duplicate_series_plots_the_clip_one(tmp_path):
    clip = {"step_ms": 32.0, "reference": {"probability": [0.1, 0.9]}, "candidate": {"probability": [0.1, 0.9]}}
    rand = {"step_ms": 32.0, "reference": {"probability": [0.1]}, "candidate": {"probability": [0.2]}}
    # given in the "wrong" order: the random record first
    records = [make_record("a", "mil-fp16", test="random", series=rand), make_record("a", "mil-fp16", series=clip)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_reports(records, tmp_path, info=INFO)
    (warning,) = [w for w in caught if "probability series" in str(w.message)]
    assert "plotting 'tests/test_parity.py::test_parity[silero-vad/a/mil-fp16/clip]'" in str(warning.message)


# ---------------------------------------------------------------------------------------------------------------
# run_info


def test_run_info_outside_git(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no git repo above tmp_path either
    before = datetime.now(timezone.utc).replace(microsecond=0)
    info = run_info(tmp_path)
    assert info["git_commit"] is None and info["git_dirty"] is None
    assert run_info(tmp_path / "does-not-exist")["git_commit"] is None

    generated = datetime.fromisoformat(info["generated_at"])
    assert generated.utcoffset() == timedelta(0)
    assert before <= generated <= datetime.now(timezone.utc)
    assert info["platform"]["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    assert set(info["tool_versions"]) == {"coremltools", "torch", "numpy", "pytest"}
    # each family adds the library its model comes from
    assert set(run_info(tmp_path, tools=("silero-vad",))["tool_versions"]) == {"coremltools", "torch", "numpy",
                                                                            "pytest", "silero-vad"}
    assert info["tool_versions"]["numpy"] == np.__version__
    assert info["tool_versions"]["pytest"] == pytest.__version__
    json.dumps(info, allow_nan=False)  # plain JSON


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_run_info_in_git_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run([*git, "-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-q", "-m", "first"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "log", "-1", "--format=%H"], check=True,
                          capture_output=True, text=True).stdout.strip()

    info = run_info(tmp_path)
    assert info["git_commit"] == head and len(head) == 40
    assert info["git_dirty"] is False
    (tmp_path / "b.txt").write_text("untracked")
    assert run_info(tmp_path)["git_dirty"] is True


def test_quantization_records_go_to_their_own_summary(tmp_path):
    """Quantization records make quantization_summary.json and the quality-vs-size plot, not metadata.json."""
    from conversions.report import QUANTIZATION_TEST

    parity = make_record("unified-36ms", "mil-fp16")
    quantized = [{"test_id": f"t{i}", "model": "silero-vad", "component": "unified-36ms", "test": QUANTIZATION_TEST,
                  "strategy": s, "variant": "mil-fp16", "weight_bytes": w, "baseline_weight_bytes": 600,
                  "primary_output": "probability", "primary_quality_vs_torch": q, "baseline_quality_vs_torch": 0.99,
                  "match": True}
                 for i, (s, w, q) in enumerate([("palettize-8bit", 300, 0.98), ("int8-per-tensor", 290, 0.1)])]
    quantized.append({"test_id": "t9", "model": "silero-vad", "component": "encoder", "test": QUANTIZATION_TEST,
                      "strategy": "int4-per-block", "variant": "mil-fp16", "match": False, "failure": "not applicable"})
    written = build_reports([parity, *quantized], tmp_path, info={})
    model_dir = tmp_path / "silero-vad"
    summary = json.loads((model_dir / "quantization_summary.json").read_text())
    assert [(v["component"], v["strategy"]) for v in summary["variants"]] == [
        ("encoder", "int4-per-block"), ("unified-36ms", "int8-per-tensor"), ("unified-36ms", "palettize-8bit")]
    assert summary["schema_version"] == 1 and summary["model"] == "silero-vad"
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert [r["test_id"] for r in metadata["results"]] == [parity["test_id"]]
    plot = model_dir / "quantization_quality_vs_size.png"
    assert plot in written and plot.read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------------------------------------------------------
# pytest's verdict in the report; partial runs


def test_pytest_outcomes_override_what_the_test_recorded(tmp_path):
    """A test that recorded a match and then failed its snapshot gate is a failure with the gate's message; a skipped
    or xfailed check that wrote no record still appears, with its reason; the summary counts outcomes."""
    from conversions.report import with_outcomes

    gate = make_record("encoder", "mil-fp16")
    recorded_only = make_record("encoder", "mil-fp32")
    meta = {"model": "silero-vad", "component": "stft", "test": "clip", "variant": "coreml-all-fp16",
            "backend": "coreml", "compute_units": "ALL", "precision": "fp16"}
    outcomes = {
        gate["test_id"]: {"meta": {}, "outcome": "failed", "failure": "probability.psnr_db fell 74.0 -> 60.1"},
        "tests/test_parity.py::test_parity[silero-vad/stft/coreml-all-fp16]":
            {"meta": meta, "outcome": "skipped", "reason": "Apple's Core ML runtime runs on macOS only"},
        "tests/test_quantization.py::test_quantization[silero-vad/stft/int4-per-block/mil-fp16]":
            {"meta": {**meta, "test": "quantization", "strategy": "int4-per-block", "variant": "mil-fp16"},
             "outcome": "xfailed", "reason": "int4-per-block cannot apply"},
    }
    merged = with_outcomes([gate, recorded_only], outcomes)
    by_id = {r["test_id"]: r for r in merged}
    assert by_id[gate["test_id"]]["outcome"] == "failed" and by_id[gate["test_id"]]["match"] is False
    assert "psnr_db fell" in by_id[gate["test_id"]]["failure"]
    assert by_id[recorded_only["test_id"]]["outcome"] == "passed"  # not run through pytest: its own verdict
    skipped = by_id["tests/test_parity.py::test_parity[silero-vad/stft/coreml-all-fp16]"]
    assert (skipped["outcome"], skipped["match"], skipped["component"]) == ("skipped", False, "stft")

    paths = build_reports(merged, tmp_path, info=INFO)
    summary = json.loads((tmp_path / "silero-vad" / "metadata.json").read_text())["summary"]
    assert (summary["passed"], summary["failed"], summary["skipped"], summary["verdict"]) == (1, 1, 1, "failed")
    quantization = json.loads((tmp_path / "silero-vad" / "quantization_summary.json").read_text())
    assert quantization["summary"]["xfailed"] == 1 and quantization["summary"]["failed"] == 0
    assert tmp_path / "silero-vad" / "error_summary.png" in paths


def test_a_partial_run_merges_into_the_same_commits_report_and_says_so(tmp_path):
    first = [make_record("encoder", "mil-fp16"), make_record("unified-36ms", "mil-fp16", match=False)]
    build_reports(first, tmp_path, info=INFO)
    later = {**INFO, "generated_at": "2025-01-31T13:00:00+00:00"}
    build_reports([make_record("unified-36ms", "mil-fp16")], tmp_path, info=later)  # a -k rerun, now passing
    meta = json.loads((tmp_path / "silero-vad" / "metadata.json").read_text())
    assert meta["summary"]["partial"] is True and meta["summary"]["from_earlier_runs"] == 1
    assert meta["summary"]["this_run"]["results"] == 1 and meta["summary"]["results"] == 2
    assert meta["summary"]["failed"] == 0 and meta["summary"]["verdict"] == "passed"
    runs = {r["component"]: r["run"]["generated_at"] for r in meta["results"]}
    assert runs == {"encoder": INFO["generated_at"], "unified-36ms": later["generated_at"]}

    other_commit = {**INFO, "git_commit": "f" * 40}
    build_reports([make_record("unified-36ms", "mil-fp16")], tmp_path, info=other_commit)
    meta = json.loads((tmp_path / "silero-vad" / "metadata.json").read_text())
    assert meta["summary"]["partial"] is False and [r["component"] for r in meta["results"]] == ["unified-36ms"]


def test_error_summary_of_a_run_where_nothing_ran(tmp_path):
    from conversions.report import with_outcomes

    meta = {"model": "silero-vad", "component": "stft", "test": "clip", "variant": "coreml-all-fp16"}
    merged = with_outcomes([], {"t::a": {"meta": meta, "outcome": "skipped", "reason": "macOS only"}})
    build_reports(merged, tmp_path, info=INFO)
    summary = json.loads((tmp_path / "silero-vad" / "metadata.json").read_text())["summary"]
    assert summary["verdict"] == "nothing ran" and summary["skipped"] == 1
    assert png_size(tmp_path / "silero-vad" / "error_summary.png")[0] == 800


def test_audio_outputs_become_wav_files_and_a_waveform_plot(tmp_path):
    """A record with ``waveforms`` (a component's audio outputs): one WAV per call and side a person can listen to,
    the waveform + log-mel plot titled with the outcome, both listed in the record; stale WAVs of earlier runs are
    removed and the temporary ``waveforms`` path is not part of the metadata."""
    from conversions.audio import read_wav

    rate = 24_000
    t = np.arange(rate // 2) / rate
    reference = [0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)]
    candidate = [r + 1e-3 for r in reference]
    npz = tmp_path / "waves.npz"
    np.savez(npz, **{f"audio/reference/{i}": r for i, r in enumerate(reference)},
             **{f"audio/candidate/{i}": c for i, c in enumerate(candidate)})
    record = make_record("bucket-5s", "mil-fp16", model="kokoro", match=False)
    record["waveforms"] = {"file": str(npz), "sample_rate": rate}
    report = tmp_path / "report"
    (report / "kokoro" / "audio").mkdir(parents=True)
    (report / "kokoro" / "audio" / "audio_gone_mil-fp16_call0_reference.wav").write_bytes(b"RIFF")
    build_reports([record], report, info=INFO)

    model_dir = report / "kokoro"
    wavs = sorted(p.name for p in (model_dir / "audio").iterdir())
    assert wavs == [f"audio_bucket-5s_mil-fp16_call{i}_{side}.wav" for i in (0, 1) for side in ("converted", "reference")]
    heard = read_wav(model_dir / "audio" / "audio_bucket-5s_mil-fp16_call1_reference.wav", sample_rate=rate)
    assert np.abs(heard - reference[1]).max() < 1 / 32767
    meta = json.loads((model_dir / "metadata.json").read_text())
    result = meta["results"][0]
    assert "waveforms" not in result
    assert result["audio_files"] == [f"audio/{w}" for w in wavs]
    assert result["plots"] == ["waveform_audio_bucket-5s_mil-fp16.png"]
    assert (model_dir / "waveform_audio_bucket-5s_mil-fp16.png").read_bytes().startswith(PNG_SIGNATURE)
