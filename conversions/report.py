"""The parity suite's report: per-test records during the run, then per model ``metadata.json`` and plots.

Why two stages: parity tests may run in several pytest-xdist worker processes, and only the controller process
sees the whole session. So each test writes one small JSON **record** into a shared directory
(:func:`write_record`, atomic, uniquely named, safe from any number of processes), and at the end of the session
the controller reads them all (:func:`read_records`) and writes the report (:func:`build_reports`).

Records and ``metadata.json`` are JSON with one extension: float infinities and NaNs are written as the bare
tokens ``Infinity``, ``-Infinity`` and ``NaN`` (Python's ``json`` module writes and reads them by default).
They are kept, not nulled or stringified, because "the error was infinite" is a real result (e.g. an fp16
overflow) that a reader must see as a number. Strict parsers (JavaScript's ``JSON.parse``, ``jq``) reject these
tokens; read the files with Python's ``json`` or a lenient parser. numpy (and torch) scalars and arrays in a
record are stored as plain numbers and lists (through their ``tolist()``), paths as strings.

``metadata.json`` schema (``schema_version`` 1), one file per model at ``<report_dir>/<model>/metadata.json``::

    {
      "schema_version": 1,
      "model": "silero-vad",
      "generated_at": "2025-01-31T12:00:00+00:00",   # UTC, ISO 8601, when the report was built
      "git_commit": "46d0c57...",                     # HEAD of the source checkout; null outside git
      "git_dirty": false,                             # uncommitted or untracked changes; null outside git
      "platform": {"platform": "Linux-6.8-x86_64-with-glibc2.39", "system": "Linux",
                   "machine": "x86_64", "python": "3.11.9"},
      "tool_versions": {"coremltools": "9.0", "torch": "2.13.0", "numpy": "2.2.6",
                        "silero-vad": "6.2.3", "nemo_toolkit": "3.0.0", "pytest": "9.2.0"},  # null when not installed
      "summary": {
        "results": 8,                 # number of records of this model
        "matched": 7,                 # records with "match": true
        "failed": 1,                  # all others (results - matched)
        "components": ["unified-36ms", ...],   # sorted, distinct
        "variants": ["coreml-fp16", "mil-fp16", ...]   # sorted, distinct
      },
      "results": [ <record>, ... ]    # sorted by (model, component, test, variant, test_id)
    }

Each result is the record as the parity test wrote it, minus its optional ``series`` (per-call output traces,
which go into the plots only, to keep the metadata small)::

    {
      "test_id": "tests/test_parity.py::test_parity[silero-vad/unified-36ms/mil-fp16]",
      "model": "silero-vad", "component": "unified-36ms",
      "test": "clip" | "random",      # a streamed real clip, or one hypothesis-generated case set
      "variant": "mil-fp16",          # backend-precision id used in the test ids
      "backend": "mil" | "coreml", "compute_units": "CPU_ONLY" | "CPU_AND_NE" | "ALL" | null (mil),
      "precision": "fp16" | "fp32",   # the program's compute precision (what the package holds)
      "runtime_precision": "fp16" | "fp32",
      "target": "iOS17",
      "inputs":  [{"name": "audio_input", "shape": [1, 576], "dtype": "float32"}, ...],
      "outputs": [{"name": "probability", "shape": [1, 1, 1], "dtype": "float16"}, ...],
      "calls": 326,                   # predictions compared
      "metrics": {"<output>": {"max_abs": ..., "max_rel": ..., "psnr_db": ..., "quality": ..., "allclose": ...}},
      "bounds":  {"<output>": {"atol": ..., "rtol": ..., "psnr_min_db": ..., "why": "..."}},
      "task_metrics": {"decision_agreement": 1.0, "segment_f1": 1.0} | {},
      "task_bounds": {"decision_agreement": 0.99, "segment_f1": 0.9} | {},
      "match": true,
      "failure": "text" | null,
      "package": "/abs/path/x.mlpackage", "package_size_bytes": 1234567, "cache_key": "ab12...",
      "package_source": "exported" | "cache",   # exported by this session, or reused from the export cache
      "duration_s": 1.23
    }

Plots, next to ``metadata.json`` (PNG, ~100 dpi):

- ``probability_<component>_<variant>.png`` for each record whose ``series`` has a ``probability`` trace in both
  ``reference`` and ``candidate``: top, torch's and the converted model's speech probability per chunk against
  time (chunk index x ``series["step_ms"]``) with the 0.5 decision threshold; bottom, their difference.
- ``error_summary.png``: one horizontal bar per (component, variant) of the clip records (all records when there
  are none): the max absolute error of that record's worst output (failing first, then the largest
  ``max_abs / atol``) on a log axis, the output's ``atol`` bound as a black tick, green when the record matched and
  red when it did not. The tick label names the output and its value; an infinite or NaN error is a hatched bar
  to the axis edge, an exact 0 (no bar on a log axis) or a record without metrics a dot at the axis start.

A plot is replaced only when this run produces it; plots from earlier runs stay. ``metadata.json`` is always
replaced whole.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .files import atomic_path, atomic_write
from .report_schema import OUTCOMES, as_float, outcome_of, worst_output

METADATA_SCHEMA_VERSION = 1

# Distribution names, as importlib.metadata knows them: the tools of every run; each model family adds its own
# (``ModelFamily.tools``, e.g. the library its model comes from).
TOOLS = ("coremltools", "torch", "numpy", "pytest")

SORT_KEYS = ("model", "component", "test", "variant", "test_id")
PLOT_DPI = 100
_MATCH_COLOR, _MISMATCH_COLOR = "#2ca02c", "#d62728"

# A model name becomes a directory: one plain path component, nothing that could climb out of report_dir.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SLUG = 120  # keeps uuid + slug + temp-file decorations under the usual 255-byte file-name limit


# ---------------------------------------------------------------------------------------------------------------
# JSON and atomic files


def _json_default(obj: Any) -> Any:
    # numpy and torch scalars/arrays both have tolist(); numpy's float64 needs nothing (it subclasses float).
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__module__}.{type(obj).__qualname__} is not JSON-serializable")


def _find_unserializable(obj: Any, where: str, _open: frozenset = frozenset()) -> str | None:
    """Where in ``obj`` the first value that :func:`_dumps` cannot encode sits, e.g. ``record['metrics']['x']``."""
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in _open:
            return f"{where} (circular reference)"
        _open = _open | {id(obj)}
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for key, value in items:
            if isinstance(obj, dict) and not isinstance(key, (str, int, float, bool)) and key is not None:
                return f"{where} (key {key!r} of type {type(key).__name__})"
            found = _find_unserializable(value, f"{where}[{key!r}]", _open)
            if found:
                return found
        return None
    try:
        json.dumps(obj, default=_json_default)
    except (TypeError, ValueError):
        return f"{where} ({type(obj).__name__})"
    return None


def _dumps(obj: Any, what: str, **kwargs) -> str:
    try:
        return json.dumps(obj, default=_json_default, allow_nan=True, **kwargs)
    except (TypeError, ValueError) as e:
        where = _find_unserializable(obj, what) or what
        raise ValueError(f"{where} is not JSON-serializable: {e}") from e


def _slug(text: str) -> str:
    return _UNSAFE_FILENAME_CHARS.sub("_", text).strip("_")[:_MAX_SLUG]


# ---------------------------------------------------------------------------------------------------------------
# Records


def write_record(records_dir: Path, record: dict) -> Path:
    """Store one parity-test ``record`` as a new JSON file in ``records_dir`` (created if missing); return its path.

    Safe to call concurrently from any number of processes: every call writes a differently named file (a uuid4,
    plus the sanitized ``record["test_id"]`` when present, for people browsing the directory), through a temp
    file renamed into place, so :func:`read_records` never sees a partial record.
    """
    if not isinstance(record, dict):
        raise ValueError(f"record must be a dict, got {type(record).__name__}")
    test_id = record.get("test_id")
    text = _dumps(record, f"record {test_id!r}" if test_id else "record")
    records_dir = Path(records_dir)
    records_dir.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    if test_id:
        name += "-" + _slug(str(test_id))
    path = records_dir / f"{name}.json"
    atomic_write(path, text.encode("utf-8"))
    return path


def _sort_key(record: dict) -> tuple[str, ...]:
    return tuple("" if record.get(k) is None else str(record.get(k)) for k in SORT_KEYS)


def read_records(records_dir: Path) -> list[dict]:
    """All records in ``records_dir``, sorted by (model, component, test, variant, test_id).

    A missing directory means no parity test wrote a record: the result is empty. Hidden files (which include
    :func:`write_record`'s temp files) and files not ending in ``.json`` are ignored. A file that is not a JSON
    object raises ``ValueError`` naming it.
    """
    records_dir = Path(records_dir)
    if not records_dir.is_dir():
        return []
    records = []
    for path in sorted(records_dir.iterdir()):
        if path.name.startswith(".") or path.suffix != ".json" or not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"corrupt record file {path}: {e}") from e
        if not isinstance(record, dict):
            raise ValueError(f"corrupt record file {path}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    records.sort(key=_sort_key)
    return records


# ---------------------------------------------------------------------------------------------------------------
# Run information


def _git(repo_dir: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):  # no git, no such directory, hung
        return None
    return done.stdout if done.returncode == 0 else None


def _tool_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_info(repo_dir: Path | None = None, tools: tuple[str, ...] = ()) -> dict:
    """Where and with what this run happened: time, git state, platform, tool versions (:data:`TOOLS` and
    ``tools``, the families' own). Never raises.

    ``repo_dir`` defaults to the checkout holding this module; ``git_commit`` and ``git_dirty`` are None when git
    is missing or ``repo_dir`` is not in a git work tree (e.g. an installed wheel). ``git_dirty`` counts untracked
    files as changes, as ``git status --porcelain`` does.
    """
    if repo_dir is None:
        repo_dir = Path(__file__).resolve().parent.parent
    head = _git(Path(repo_dir), "rev-parse", "HEAD")
    commit = head.strip() if head is not None and head.strip() else None
    dirty = None
    if commit is not None:
        status = _git(Path(repo_dir), "status", "--porcelain")
        dirty = None if status is None else bool(status.strip())
    return {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_dirty": dirty,
        "platform": {
            "platform": platform.platform(),
            "system": platform.system(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "tool_versions": {name: _tool_version(name) for name in dict.fromkeys((*TOOLS, *tools))},
    }


# ---------------------------------------------------------------------------------------------------------------
# Reports


def _check_model(record: Any, index: int) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"records[{index}] must be a dict, got {type(record).__name__}")
    model = record.get("model")
    if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
        raise ValueError(f"records[{index}] (test_id {record.get('test_id')!r}): 'model' must be a plain name "
                         f"matching {_MODEL_NAME.pattern} (it names the report directory), got {model!r}")
    return model


def with_outcomes(records: list[dict], outcomes: dict) -> list[dict]:
    """Records with pytest's final verdict of their test merged in (``outcomes``: node id -> {"meta", "outcome",
    "reason"?, "failure"?}, from the plugin's report hooks): ``outcome`` set, ``match`` true only for a passed test
    (a test that wrote a matching record and then failed its snapshot gate is a failure, with the gate's message),
    and a record made from the test's parametrization for every check that wrote none (skipped, xfailed, failed
    before recording)."""
    merged, seen = [], set()
    for record in records:
        entry = outcomes.get(record.get("test_id"))
        seen.add(record.get("test_id"))
        if entry is None:
            merged.append({**record, "outcome": outcome_of(record)})
            continue
        outcome = entry["outcome"] or outcome_of(record)
        updated = {**record, "outcome": outcome, "match": outcome == "passed"}
        if outcome == "failed" and not record.get("failure"):
            updated["failure"] = entry.get("failure") or "failed (no message)"
        if entry.get("reason"):
            updated["reason"] = entry["reason"]
        merged.append(updated)
    for node_id, entry in outcomes.items():
        if node_id in seen or entry.get("outcome") is None:
            continue
        merged.append({"test_id": node_id, **entry["meta"], "outcome": entry["outcome"],
                       "match": entry["outcome"] == "passed", "failure": entry.get("failure"),
                       "reason": entry.get("reason")})
    merged.sort(key=_sort_key)
    return merged


def _summary(records: list[dict]) -> dict:
    counts = {outcome: 0 for outcome in OUTCOMES}
    for r in records:
        counts[outcome_of(r)] += 1
    verdict = "failed" if counts["failed"] else ("passed" if counts["passed"] or counts["xpassed"] else "nothing ran")
    return {
        "results": len(records),
        "matched": counts["passed"],
        **counts,
        "verdict": verdict,
        "components": sorted({str(r.get("component")) for r in records}),
        "variants": sorted({str(r.get("variant")) for r in records}),
    }


def _previous_results(path: Path, info: dict, key: str) -> list[dict]:
    """The results of an earlier report file of the same commit (a ``-k`` run merges into it); [] when the file
    is missing, unreadable, of another commit, or written outside git (nothing says it describes this code)."""
    commit = info.get("git_commit")
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not commit or not isinstance(previous, dict) or previous.get("git_commit") != commit:
        return []
    run = {k: previous.get(k) for k in ("generated_at", "git_commit", "git_dirty")}
    return [{**r, "run": r.get("run") or run} for r in previous.get(key) or [] if isinstance(r, dict)]


def _merge(current: list[dict], previous: list[dict], info: dict) -> tuple[list[dict], int]:
    """This run's records (marked with this run) plus the earlier ones of other tests; and how many were kept."""
    run = {k: info.get(k) for k in ("generated_at", "git_commit", "git_dirty")}
    ids = {r.get("test_id") for r in current}
    kept = [r for r in previous if r.get("test_id") not in ids]
    return [{**r, "run": run} for r in current] + kept, len(kept)


def build_reports(records: list[dict], report_dir: Path, info: dict | None = None,
                  tools: tuple[str, ...] = ()) -> list[Path]:
    """Write ``<report_dir>/<model>/metadata.json`` and the plots for every model in ``records``.

    ``info`` is :func:`run_info`'s dict (computed here when None). Returns the paths written, metadata first for
    each model. See the module docstring for the files and their schema.
    """
    by_model: dict[str, list[dict]] = {}
    quantized: dict[str, list[dict]] = {}
    for i, record in enumerate(records):
        target = quantized if record.get("test") == QUANTIZATION_TEST else by_model
        target.setdefault(_check_model(record, i), []).append({**record, "outcome": outcome_of(record)})
    if info is None:
        info = run_info(tools=tools)
    report_dir = Path(report_dir)
    written: list[Path] = []
    for model in sorted(quantized):
        written.extend(_write_quantization_summary(model, quantized[model], report_dir / model, info))
    for model in sorted(by_model):
        model_dir = report_dir / model
        model_dir.mkdir(parents=True, exist_ok=True)
        path = model_dir / "metadata.json"
        current = sorted(by_model[model], key=_sort_key)
        plots = _plot_series(model, current, model_dir)  # sets each plotted record's "plots"
        plots.extend(_write_audio(model, current, model_dir))  # sets each record's "plots" and "audio_files"
        merged, kept = _merge(current, _previous_results(path, info, "results"), info)
        merged.sort(key=_sort_key)
        plots.append(_plot_error_summary(model, merged, model_dir))
        metadata = {
            **_header(METADATA_SCHEMA_VERSION, model, info),
            "summary": {**_summary(merged), "this_run": _summary(current), "partial": kept > 0,
                        "from_earlier_runs": kept},
            "results": [{k: v for k, v in r.items() if k not in ("series", "waveforms")} for r in merged],
        }
        atomic_write(path, (_dumps(metadata, f"metadata of {model!r}", indent=2) + "\n").encode("utf-8"))
        written.append(path)
        written.extend(plots)
        _remove_stale_plots(model_dir, merged)
    return written


# ---------------------------------------------------------------------------------------------------------------
# Quantization summary

QUANTIZATION_TEST = "quantization"
QUANTIZATION_SCHEMA_VERSION = 1


def _header(schema_version: int, model: str, info: dict) -> dict:
    """The fields every per-model report file starts with: schema, model, when, which commit, where, with what."""
    return {"schema_version": schema_version, "model": model,
            **{k: info.get(k) for k in ("generated_at", "git_commit", "git_dirty", "platform", "tool_versions")}}


def _write_quantization_summary(model: str, records: list[dict], model_dir: Path, info: dict) -> list[Path]:
    """``quantization_summary.json`` (one entry per strategy x component x backend variant, sorted) and the
    quality-vs-size plot; a partial run merges into the same commit's earlier summary. docs/report.md documents the
    schema."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "quantization_summary.json"
    records, kept = _merge(records, _previous_results(path, info, "variants"), info)
    records = sorted(records, key=lambda r: (str(r.get("component")), str(r.get("variant")), str(r.get("strategy"))))
    summary = {**_header(QUANTIZATION_SCHEMA_VERSION, model, info), "summary": {**_summary(records),
               "partial": kept > 0, "from_earlier_runs": kept}, "variants": records}
    atomic_write(path, (_dumps(summary, f"quantization summary of {model!r}", indent=2) + "\n").encode("utf-8"))
    return [path, _plot_quality_vs_size(model, records, model_dir)]


def _plot_quality_vs_size(model: str, records: list[dict], model_dir: Path) -> Path:
    """One panel per component, all on one shared log y-scale: what each strategy costs in quality — 1 − quality of
    the primary output against the uncompressed fp16 package (lower is better; an output worse than zero quality
    sits above 1) — against its weight KiB (the fp16 package's size as a dotted line). One marker and color per
    strategy, named in one legend (no text over the points); a strategy that failed its gate is circled red;
    strategies declared inapplicable or skipped are listed under the panel; the mixed strategy's quality target is
    a dashed line."""
    from matplotlib.lines import Line2D

    components = sorted({str(r.get("component")) for r in records})
    strategies = sorted({str(r.get("strategy")) for r in records})
    palette = [f"C{i}" for i in range(10)] + ["#7f7f7f", "#bcbd22", "#17becf", "#8c564b"]
    markers = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p"]
    style = {name: (palette[i % len(palette)], markers[i % len(markers)]) for i, name in enumerate(strategies)}
    cols = min(3, len(components))
    rows = -(-len(components) // cols)
    fig = _new_figure(4.4 * cols + 2.4, 3.6 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax in axes.flat[len(components):]:
        ax.set_visible(False)
    errors, any_failed, target = [], False, None
    for ax, component in zip(axes.flat, components):
        mine = [r for r in records if str(r.get("component")) == component]
        not_plotted = []
        for r in mine:
            primary = r.get("primary_output")
            q = as_float(((r.get("outputs") or {}).get(primary) or {}).get("quality_vs_baseline"))
            size = as_float(r.get("weight_bytes"))
            if q is None or size is None or not math.isfinite(q) or outcome_of(r) in ("skipped", "xfailed"):
                not_plotted.append(f"{r.get('strategy')} ({outcome_of(r)})")
                continue
            error = max(1.0 - q, 1e-6)  # an exact copy would have no place on a log axis
            errors.append(error)
            color, marker = style[str(r.get("strategy"))]
            ax.scatter([size / 1024], [error], color=color, marker=marker, s=36, zorder=3)
            if outcome_of(r) == "failed":
                any_failed = True
                ax.scatter([size / 1024], [error], facecolors="none", edgecolors="#d62728", s=140, linewidths=1.8,
                           zorder=4)
            recipe = r.get("recipe") or {}
            if as_float(recipe.get("target_quality")) is not None:
                target = 1.0 - float(recipe["target_quality"])
            base = as_float(r.get("baseline_weight_bytes"))
            if base is not None:
                ax.axvline(base / 1024, color="#1f77b4", linestyle=":", linewidth=1.0)
        primary = next((r["primary_output"] for r in mine if r.get("primary_output")), "")
        ax.set_title(f"{component} ({primary})" if primary else component, fontsize=9)
        ax.set_xlabel("weights (KiB); dotted: fp16 package", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
        if not_plotted:
            import textwrap

            note = textwrap.fill("not plotted: " + ", ".join(sorted(not_plotted)), width=70)
            ax.text(0.0, -0.22, note, transform=ax.transAxes, fontsize=6, va="top")
    for ax in axes[:, 0]:
        ax.set_ylabel("1 − quality vs fp16 package (log)", fontsize=8)
    axes.flat[0].set_yscale("log")
    if errors:
        axes.flat[0].set_ylim(min(errors) / 3, max(max(errors) * 3, 1.5))
    if target is not None:
        for ax in axes.flat[:len(components)]:
            ax.axhline(target, color="black", linestyle="--", linewidth=0.9)
    handles = [Line2D([], [], color=style[n][0], marker=style[n][1], linestyle="none", label=n) for n in strategies]
    if target is not None:
        handles.append(Line2D([], [], color="black", linestyle="--", label=f"mixed target (quality {1 - target:g})"))
    if any_failed:
        handles.append(Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor="#d62728",
                              linestyle="none", markersize=10, label="failed its gate"))
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.suptitle(f"{model}: what each compression strategy costs (lower is better)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.2 / (4.4 * cols + 2.4), 1))
    path = model_dir / "quantization_quality_vs_size.png"
    _save_figure(fig, path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Plots


FIXED_PLOTS = ("error_summary.png", "quantization_quality_vs_size.png")


def _remove_stale_plots(model_dir: Path, results: list[dict]) -> None:
    """Delete the per-result plots and audio files of a model directory that no result of the report refers to
    (left by an earlier run of another commit, or of a component that no longer exists), so the folder never mixes
    runs."""
    keep = set(FIXED_PLOTS) | {name for r in results for name in r.get("plots") or []}
    for png in model_dir.glob("*.png"):
        if png.name not in keep:
            png.unlink(missing_ok=True)
    keep_audio = {name for r in results for name in r.get("audio_files") or []}
    for wav in (model_dir / AUDIO_DIR).glob("*.wav"):
        if f"{AUDIO_DIR}/{wav.name}" not in keep_audio:
            wav.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# Audio: WAV files to listen to, waveform and log-mel plots

AUDIO_DIR = "audio"


def _write_audio(model: str, records: list[dict], model_dir: Path) -> list[Path]:
    """For each clip record carrying ``waveforms`` (an ``.npz`` the parity test saved: ``<output>/reference/<call>``
    and ``<output>/candidate/<call>`` arrays, and the sample rate), the WAV files of every call under ``audio/``
    (``<output>_<component>_<variant>_call<i>_{reference,converted}.wav``) and one plot per output: the
    waveforms and log-mel spectrograms of the first call, reference vs converted, titled with the test's
    outcome."""
    import numpy as np

    from .audio import write_wav
    from .metrics import log_mel_spectrogram

    paths = []
    for record in records:
        waveforms = record.get("waveforms")
        if not isinstance(waveforms, dict) or not Path(str(waveforms.get("file"))).is_file():
            continue
        rate = int(waveforms["sample_rate"])
        component, variant = str(record.get("component")), str(record.get("variant"))
        with np.load(waveforms["file"]) as npz:
            arrays = {k: np.asarray(npz[k], np.float64) for k in npz.files}
        outputs = sorted({k.split("/")[0] for k in arrays})
        for output in outputs:
            calls = sorted({int(k.split("/")[2]) for k in arrays if k.startswith(f"{output}/")})
            for call in calls:
                for side, label in (("reference", "reference"), ("candidate", "converted")):
                    name = f"{_slug(output)}_{_slug(component)}_{_slug(variant)}_call{call}_{label}.wav"
                    paths.append(write_wav(model_dir / AUDIO_DIR / name, arrays[f"{output}/{side}/{call}"], rate))
                    record["audio_files"] = sorted({*record.get("audio_files", []), f"{AUDIO_DIR}/{name}"})
            ref, cand = arrays[f"{output}/reference/{calls[0]}"], arrays[f"{output}/candidate/{calls[0]}"]
            fig = _new_figure(10.0, 7.0)
            axes = fig.subplots(3, 1, gridspec_kw={"height_ratios": [1.2, 1, 1]})
            t = np.arange(ref.size) / rate
            axes[0].plot(t, ref, color="#1f77b4", linewidth=0.5, label="torch (reference)")
            axes[0].plot(t, cand, color="#ff7f0e", linewidth=0.5, alpha=0.7, label=f"converted ({variant})")
            axes[0].plot(t, cand - ref, color="#d62728", linewidth=0.5, label="converted − torch")
            axes[0].set_xlim(0, max(t[-1], 1e-3) if t.size else 1.0)
            axes[0].set_xlabel("time (s)")
            axes[0].legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
            for ax, audio, label in ((axes[1], ref, "torch (reference)"), (axes[2], cand, f"converted ({variant})")):
                if audio.size >= 1024 and np.all(np.isfinite(audio)):
                    mel = log_mel_spectrogram(audio, sample_rate=rate)
                    ax.imshow(mel, origin="lower", aspect="auto", cmap="magma",
                              extent=(0, audio.size / rate, 0, mel.shape[0]))
                ax.set_ylabel(f"log-mel\n{label}", fontsize=8)
            axes[2].set_xlabel("time (s)")
            verdict = outcome_of(record).upper() if outcome_of(record) != "passed" else "passed"
            task = record.get("task_metrics") or {}
            figures = ", ".join(f"{k} {task[k]:.4f}" for k in ("waveform_correlation", "mel_correlation")
                                if isinstance(task.get(k), (int, float)))
            fig.suptitle(f"{model} · {component} · {variant}: {output}, call 0 of {len(calls)} "
                         f"({figures or 'no task figures'}; {verdict})", fontsize=10)
            paths.append(_save_record_plot(fig, record, model_dir / f"waveform_{_slug(output)}_{_slug(component)}_"
                                                                    f"{_slug(variant)}.png"))
    return paths


def _save_record_plot(fig, record: dict, path: Path) -> Path:
    """Lay out, save and list the plot in its record's ``plots``."""
    fig.tight_layout()
    _save_figure(fig, path)
    record["plots"] = sorted({*record.get("plots", []), path.name})
    return path


def _new_figure(width: float, height: float):
    # A bare Figure with the Agg canvas: no pyplot, so no GUI backend is ever touched and no global figure state
    # (and no matplotlib.use() that would switch the backend of a process that already imported pyplot).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=PLOT_DPI, format="png")
    return path


def _per_chunk(values: Any, what: str):
    """``values`` as a 1-D float array with one value per call: accepts shape (n,) or (n, 1, ..., 1)."""
    import numpy as np

    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be numbers, one per chunk: {e}") from e
    if arr.ndim == 0 or arr.reshape(arr.shape[0], -1).shape[1] != 1:
        raise ValueError(f"{what} must hold one value per chunk, shape (n,) or (n, 1, ...), got {arr.shape}")
    return arr.reshape(-1)


def _series_traces(record: dict) -> list[tuple[str, Any, Any, float, str, float | None]]:
    """(output, reference, candidate, step_ms, ylabel, threshold) of each trace of a record's series (the
    component's plot hook, :class:`conversions.registry.PlotSeries`); [] if it has none."""
    series = record.get("series")
    if not isinstance(series, dict):
        return []
    reference, candidate = series.get("reference") or {}, series.get("candidate") or {}
    name = f"series of {record.get('test_id') or record.get('component')!r}"
    step_ms = series.get("step_ms")
    traces = []
    for output in sorted(set(reference) & set(candidate)):
        ref = _per_chunk(reference[output], f"{name}: reference[{output!r}]")
        cand = _per_chunk(candidate[output], f"{name}: candidate[{output!r}]")
        if ref.shape != cand.shape:
            raise ValueError(f"{name}: reference and candidate {output} differ in length: {ref.size} vs {cand.size}")
        if (isinstance(step_ms, bool) or not isinstance(step_ms, (int, float))
                or not (math.isfinite(step_ms) and step_ms > 0)):
            raise ValueError(f"{name}: step_ms must be a positive number of milliseconds, got {step_ms!r}")
        ylabel = series.get("ylabel") or output
        threshold = series.get("threshold")
        traces.append((output, ref, cand, float(step_ms), ylabel, threshold))
    return traces


def _plot_series(model: str, records: list[dict], model_dir: Path) -> list[Path]:
    """One plot per (traced output, component, variant): torch vs converted per call, and their difference."""
    import numpy as np

    chosen: dict[tuple[str, str, str], tuple[dict, tuple]] = {}
    for record in records:
        for trace in _series_traces(record):
            key = (trace[0], str(record.get("component")), str(record.get("variant")))
            if key in chosen:
                # The plugin gives series to one record per (component, variant); if not, keep the first clip one.
                previous = chosen[key][0]
                replace = previous.get("test") != "clip" and record.get("test") == "clip"
                plotted, dropped = (record, previous) if replace else (previous, record)
                warnings.warn(f"{model}: several records of {key[1]}/{key[2]} carry a {key[0]} series; plotting "
                              f"{plotted.get('test_id')!r}, not {dropped.get('test_id')!r}", stacklevel=3)
                if not replace:
                    continue
            chosen[key] = (record, trace)

    paths = []
    for (output, component, variant), (record, (_, ref, cand, step_ms, ylabel, threshold)) in sorted(chosen.items()):
        t = np.arange(ref.size) * step_ms / 1000.0
        fig = _new_figure(8.0, 5.2)
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
        reference_label = (record.get("series") or {}).get("reference_label") or "torch (reference)"
        top.plot(t, ref, color="#1f77b4", linewidth=1.0, label=str(reference_label))
        top.plot(t, cand, color="#ff7f0e", linewidth=1.0, linestyle=(0, (4, 2)), label=f"converted ({variant})")
        if threshold is not None:
            top.axhline(threshold, color="gray", linestyle="--", linewidth=0.8, label=f"threshold {threshold:g}")
        finite = np.concatenate([ref, cand])
        finite = finite[np.isfinite(finite)]
        if threshold is not None and 0.0 <= threshold <= 1.0:
            # A probability: never clip a converted output that left [0, 1], that would hide the bug the plot is for.
            lo = min(-0.02, float(finite.min())) if finite.size else -0.02
            hi = max(1.02, float(finite.max())) if finite.size else 1.02
            top.set_ylim(lo, hi)
        top.set_ylabel(ylabel)
        # above the axes, never over the data
        top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
        bottom.plot(t, cand - ref, color="#d62728", linewidth=0.8, label="converted − torch")
        bottom.axhline(0.0, color="gray", linewidth=0.6)
        atol = as_float(((record.get("bounds") or {}).get(output) or {}).get("atol"))
        if atol is not None:
            for sign in (1, -1):
                bottom.axhline(sign * atol, color="black", linestyle="--", linewidth=0.8,
                               label=f"bound ±{atol:g}" if sign > 0 else None)
            worst = float(np.nanmax(np.abs(cand - ref))) if ref.size else 0.0
            bottom.set_ylim(-1.15 * max(atol, worst), 1.15 * max(atol, worst))
            bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
        bottom.set_ylabel("converted − torch")
        bottom.set_xlabel("time (s)")
        verdict = outcome_of(record).upper() if outcome_of(record) != "passed" else "passed"
        fig.suptitle(f"{model} · {component} · {variant}: {ylabel} per call "
                     f"({record.get('test')}, {ref.size} calls, {verdict})", fontsize=10)
        paths.append(_save_record_plot(fig, record, model_dir / f"{_slug(output)}_{_slug(component)}_{_slug(variant)}.png"))
    return paths


def _plot_error_summary(model: str, records: list[dict], model_dir: Path) -> Path:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ran = [r for r in records if outcome_of(r) in ("passed", "failed", "xpassed")]  # skipped checks have no figures
    chosen = [r for r in ran if r.get("test") == "clip"] or ran
    rows = []  # (tick label, matched, max_abs, atol); values go into the tick label so no text overlaps a bar
    for r in chosen:
        label = f"{r.get('component')} / {r.get('variant')}"
        if r.get("test") != "clip":
            label += f" [{r.get('test')}]"
        worst = worst_output(r)
        if worst is None:
            rows.append((f"{label}\nno metrics", outcome_of(r) == "passed", None, None))
            continue
        output, max_abs, atol = worst
        value = "missing" if max_abs is None else "0 (exact)" if max_abs == 0 else f"{max_abs:.2g}"
        rows.append((f"{label}\n{output}: {value}", outcome_of(r) == "passed", max_abs, atol))

    positive = [v for row in rows for v in row[2:] if v is not None and math.isfinite(v) and v > 0]
    lo = 10 ** math.floor(math.log10(min(positive))) / 10 if positive else 1e-8
    hi = 10 ** math.ceil(math.log10(max(positive))) * 10 if positive else 1.0

    fig = _new_figure(8.0, 1.4 + 0.5 * len(rows))
    ax = fig.subplots()
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    for y, (_label, matched, max_abs, atol) in enumerate(rows):
        color = _MATCH_COLOR if matched else _MISMATCH_COLOR
        if max_abs is not None and not math.isfinite(max_abs):
            # inf / nan: a hatched bar to the edge of the axis, since there is no honest length for it
            ax.barh(y, hi - lo, left=lo, height=0.6, color=color, hatch="//", edgecolor="black", linewidth=0.5)
        elif max_abs is not None and max_abs > 0:
            ax.barh(y, max_abs - lo, left=lo, height=0.6, color=color)
        else:
            # no bar exists on a log axis (exactly 0) or no value at all: a colored dot at the axis start still
            # shows whether the record matched
            ax.plot([lo], [y], marker="o", markersize=6, color=color, clip_on=False)
        if atol is not None and atol > 0:
            ax.plot([atol], [y], marker="|", markersize=16, markeredgewidth=2.5, color="black")
    if not rows:
        ax.text(0.5, 0.5, "no check ran in this report (all skipped)", transform=ax.transAxes, ha="center",
                fontsize=10, color=_MISMATCH_COLOR)
    ax.set_yticks(range(len(rows)), [row[0] for row in rows], fontsize=8)
    ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)  # first record on top
    ax.set_xlabel("max |converted − torch| of the worst output (log scale)")
    ax.grid(axis="x", which="major", alpha=0.3)
    which = "clip tests" if any(r.get("test") == "clip" for r in chosen) else "all tests (no clip test)"
    counts = _summary(records)
    tally = ", ".join(f"{counts[k]} {k}" for k in OUTCOMES if counts[k])
    ax.set_title(f"{model}: largest error per component / variant, {which}\n({tally})", fontsize=10)
    ax.legend(handles=[Patch(color=_MATCH_COLOR, label="passed"), Patch(color=_MISMATCH_COLOR, label="failed"),
                       Patch(facecolor="white", edgecolor="black", hatch="//", label="inf / nan"),
                       Line2D([], [], color="black", marker="|", linestyle="none", markersize=12,
                              markeredgewidth=2.5, label="atol bound")],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)
    fig.tight_layout()
    return _save_figure(fig, model_dir / "error_summary.png")
