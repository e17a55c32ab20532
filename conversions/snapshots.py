"""Snapshot baselines of the parity suite's numeric figures: a syrupy extension comparing them with declared slack.

A parity test pins the figures it measured (quality, PSNR, task metrics, weight bytes, ...) against the values a
previous, reviewed run recorded, so that a change that makes a converted component worse fails even while it is
still inside the parity tolerance::

    metrics = {"quality_vs_torch": Metric(0.9987, "higher", slack=0.002),
               "size_bytes": Metric(171234, "lower", slack=0)}
    assert metrics_snapshot(snapshot, family="silero-vad", backend_family="mil") == metrics

Why not syrupy's own extensions: they compare serialized text exactly, and float figures move in the last digits
with every numeric library update. Here a figure may get worse by at most its ``slack`` (the slack the test
declares *now*; the one stored in the file is informative), and any improvement passes; one larger than the slack is
listed (see :data:`IMPROVEMENTS` and :func:`read_improvements`) so that someone can pin it.

Layout: one JSON file per model family per backend family, ``<test dir>/__snapshots__/<backend family>/<family>.json``
(numerics differ between the portable MIL runtime, Apple's CPU path and the Neural Engine, so each has its own
baselines), holding the entries of every test module of that test directory that pins figures of that family,
keyed by syrupy's default snapshot name (test name and parametrization id, without the module: two modules
sharing a family file need different test names)::

    {
      "test_quantization[silero-vad/unified-36ms/palettize-6bit/mil-fp16]": {
        "quality_vs_torch": {"direction": "higher", "slack": 0.002, "value": 0.9987},
        ...
      }
    }

(keys sorted, indent 2, floats rounded to 6 significant digits, integers exact, NaN and infinities as the strings
``"NaN"``, ``"Infinity"``, ``"-Infinity"`` so that the file stays strict JSON).

``pytest --snapshot-update`` writes missing entries and rewrites changed ones, as syrupy does; it only *ratchets*:
a figure that improved, or got worse by more than its slack (an accepted regression), is rewritten, while one that
got worse within its slack keeps its old, better value (otherwise repeated updates would let a figure drift down
by one slack each time).

How it hooks into syrupy (public extension API only): :class:`MetricsSnapshotExtension` subclasses
``AbstractSyrupyExtension`` and overrides its storage methods (``dirname``, ``get_file_basename``,
``read_snapshot_data_from_location``, ``write_snapshot_collection``, ``read_snapshot_collection``,
``delete_snapshots``, ``discover_snapshots``, ``matches_test_location``), ``serialize``, ``matches`` (the slack
comparison) and ``diff_lines`` (the failure report). :func:`metrics_snapshot` derives one subclass per (family,
backend family) and returns ``snapshot.use_extension(subclass)``.

Unused snapshots: syrupy decides which snapshots are unused (reported, and deleted by ``--snapshot-update``) by
matching snapshot files to test modules by file name. A family file is shared by several test modules and holds
the entries of tests that may be deselected (``-k``) or skipped on this machine (the Core ML baselines on Linux),
which syrupy cannot tell apart from obsolete entries. So this extension reports no discovered snapshots at all:
its entries are never reported unused nor deleted; an entry whose test was removed stays in the file (harmless,
never compared) until someone deletes it. For the same reason the project's pytest options must include
``--snapshot-ignore-file-extensions=json``: syrupy's default extension (the ``snapshot`` fixture itself uses it)
otherwise scans ``__snapshots__`` recursively and reports, or deletes on update, every family file that no test
of the session asserted on.

pytest-xdist: each worker writes its baselines when it finishes; writes merge into the file under a lock and
replace it atomically, so workers writing the same family file keep each other's entries. :data:`IMPROVEMENTS`
only holds what the current process saw; with ``COREML_PARITY_RECORDS_DIR`` set, every improvement is also written
as a small JSON file into ``<records dir>/improvements/`` for the controller to read with :func:`read_improvements`.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from syrupy.assertion import SnapshotAssertion
from syrupy.data import Snapshot, SnapshotCollection, SnapshotCollections
from syrupy.extensions.base import AbstractSyrupyExtension

from .files import atomic_write

BACKEND_FAMILIES = ("mil", "coreml-cpu", "coreml-ne")
DIRECTIONS = ("higher", "lower")
RECORDS_ENV = "COREML_PARITY_RECORDS_DIR"
IMPROVEMENTS_SUBDIR = "improvements"
SIGNIFICANT_DIGITS = 6
# Differences this small relative to the values are float noise in ``old - new`` (0.9987 - 0.9967 is
# 0.0020000000000000018), not a worsening beyond the slack.
_RELATIVE_NOISE = 1e-9
_LOCK_TIMEOUT_S = 120.0
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

IMPROVEMENTS: list[str] = []
"""Improvements over the baselines seen by this process, one line each (``<family> <snapshot>: <metric> rose a -> b``).
Under pytest-xdist each worker has its own list: use :func:`read_improvements` on the records directory."""


# ---- the figures ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One pinned figure: its ``value`` now, whether ``"higher"`` or ``"lower"`` is better, and by how much it may
    get worse than the baseline (``slack``, in the figure's unit) before the test fails."""

    value: float | int
    direction: str
    slack: float | int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _number(self.value, "value"))
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Metric direction must be one of {DIRECTIONS}, got {self.direction!r}")
        slack = _number(self.slack, "slack")
        if not math.isfinite(slack) or slack < 0:
            raise ValueError(f"Metric slack must be a finite number >= 0, got {self.slack!r}")
        object.__setattr__(self, "slack", slack)


def _number(x: Any, what: str) -> float | int:
    """A plain Python int or float from ``x`` (numpy scalars included); ints stay ints so byte counts stay exact."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise ValueError(f"Metric {what} must be a real number, got {type(x).__name__} {x!r}")
    return int(x) if isinstance(x, numbers.Integral) else float(x)


def _rounded(x: float | int) -> float | int:
    """What the baseline file stores: ints exact, finite floats to 6 significant digits (stable diffs)."""
    if isinstance(x, int) or not math.isfinite(x):
        return x
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def _to_json(x: float | int) -> float | int | str:
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    return x


def _from_json(x: Any, where: str) -> float | int:
    if isinstance(x, str) and x in _NON_FINITE:
        return _NON_FINITE[x]
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{where}: expected a number or one of {sorted(_NON_FINITE)}, got {x!r}")
    return x


def _fmt(x: float | int) -> str:
    return str(x) if isinstance(x, int) else repr(x)


def _canonical(entry: Mapping[str, Any]) -> str:
    """The one text form of an entry, for both sides of the comparison and for syrupy's queue."""
    return json.dumps(entry, sort_keys=True, indent=2, ensure_ascii=False)


def _encode(metrics: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError(f"metrics must be a non-empty dict of metric name -> Metric, got {type(metrics).__name__} "
                         f"{metrics!r}")
    entry = {}
    for name, metric in metrics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric names must be non-empty strings, got {name!r}")
        if not isinstance(metric, Metric):
            raise ValueError(f"metrics[{name!r}] must be a Metric(value, direction, slack), got "
                             f"{type(metric).__name__} {metric!r}")
        entry[name] = {"value": _to_json(_rounded(metric.value)), "direction": metric.direction,
                       "slack": _to_json(_rounded(metric.slack))}
    return entry


def _decode_entry(entry: Any, where: str) -> dict[str, dict[str, Any]]:
    """A stored (or serialized) entry with its numbers decoded; ``ValueError`` naming ``where`` if malformed."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object of metric name -> figure, got {entry!r}")
    decoded = {}
    for name, figure in entry.items():
        at = f"{where} metric {name!r}"
        if not isinstance(figure, dict) or set(figure) != {"value", "direction", "slack"}:
            raise ValueError(f"{at}: expected an object with keys direction, slack, value, got {figure!r}")
        if figure["direction"] not in DIRECTIONS:
            raise ValueError(f"{at}: direction must be one of {DIRECTIONS}, got {figure['direction']!r}")
        decoded[name] = {"value": _from_json(figure["value"], f"{at} value"), "direction": figure["direction"],
                         "slack": _from_json(figure["slack"], f"{at} slack")}
    return decoded


# ---- the comparison -------------------------------------------------------------------------------------------
@dataclass
class _Comparison:
    failures: list[str]  # regressions beyond slack, NaNs, metrics added or removed
    improvements: list[str]
    changed: bool  # whether --snapshot-update would rewrite the entry


def _worsening(old: float | int, new: float | int, direction: str) -> float:
    return (old - new) if direction == "higher" else (new - old)


def _beyond_slack(old: float | int, new: float | int, direction: str, slack: float | int) -> bool:
    worse = _worsening(old, new, direction)
    noise = _RELATIVE_NOISE * max(abs(old), abs(new)) if math.isfinite(old) and math.isfinite(new) else 0.0
    return worse > slack + noise


def _compare(current: dict, stored: dict, label: str) -> _Comparison:
    """``current`` (as declared now) against ``stored``, both decoded entries; ``label`` prefixes every line."""
    failures, improvements, changed = [], [], False
    for name in sorted(set(current) | set(stored)):
        if name not in stored:
            failures.append(f"{label}: {name} has no baseline (new figure {_fmt(current[name]['value'])}; "
                            "pin it with --snapshot-update)")
            changed = True
            continue
        old = stored[name]["value"]
        if name not in current:
            failures.append(f"{label}: {name} is in the baseline ({_fmt(old)}) but no longer produced")
            changed = True
            continue
        new, direction, slack = current[name]["value"], current[name]["direction"], current[name]["slack"]
        changed |= direction != stored[name]["direction"] or slack != stored[name]["slack"]
        if math.isnan(new) or math.isnan(old):
            failures.append(f"{label}: {name} is NaN (baseline {_fmt(old)}, now {_fmt(new)}, slack {_fmt(slack)})")
            changed = True
        elif new == old:
            continue
        elif _worsening(old, new, direction) < 0:
            # Listed only when the gain exceeds the slack: smaller moves are run-to-run noise (e.g. grouped k-means
            # varies in the 4th digit between machines) that nobody should be asked to pin. --snapshot-update
            # still pins any gain.
            if -_worsening(old, new, direction) > slack:
                verb = "rose" if direction == "higher" else "fell"
                improvements.append(f"{label}: {name} {verb} {_fmt(old)} -> {_fmt(new)}")
            changed = True
        elif _beyond_slack(old, new, direction, slack):
            verb = "fell" if direction == "higher" else "grew"
            failures.append(f"{label}: {name} {verb} {_fmt(old)} -> {_fmt(new)} (slack {_fmt(slack)})")
            changed = True
        # else: worse within the slack; the baseline keeps its better value
    return _Comparison(failures, improvements, changed)


def _ratchet(new_entry: dict, old_entry: dict | None) -> dict:
    """The entry ``--snapshot-update`` writes: ``new_entry``, except that a figure worse than its old value by no
    more than its slack keeps the old value (baselines only move down on purpose, by more than the slack)."""
    if not old_entry:
        return new_entry
    merged = {}
    for name, figure in new_entry.items():
        old = old_entry.get(name)
        new_value, old_value = figure["value"], old["value"] if old else None
        if (old is not None and not math.isnan(new_value) and not math.isnan(old_value)
                and _worsening(old_value, new_value, figure["direction"]) > 0
                and not _beyond_slack(old_value, new_value, figure["direction"], figure["slack"])):
            figure = {**figure, "value": old_value}
        merged[name] = figure
    return merged


def _record_improvements(lines: list[str], family: str, backend_family: str, snapshot_name: str) -> None:
    IMPROVEMENTS.extend(lines)
    records_dir = os.environ.get(RECORDS_ENV)
    if not records_dir:
        return
    directory = Path(records_dir) / IMPROVEMENTS_SUBDIR
    directory.mkdir(parents=True, exist_ok=True)
    for line in lines:
        # Named by content: the same improvement seen twice (a rerun into the same records dir) is one file.
        name = hashlib.sha1(f"{backend_family}\0{line}".encode()).hexdigest()[:20]
        record = {"line": line, "family": family, "backend_family": backend_family, "snapshot": snapshot_name}
        atomic_write(directory / f"{name}.json", json.dumps(record, sort_keys=True, indent=2) + "\n")


def read_improvements(records_dir: str | Path) -> list[str]:
    """The improvement lines written by every process into ``<records_dir>/improvements/``, sorted and distinct
    (an empty list if there are none). A file there that is not an improvement record raises ``ValueError``."""
    directory = Path(records_dir) / IMPROVEMENTS_SUBDIR
    if not directory.is_dir():
        return []
    lines = set()
    for path in directory.iterdir():
        if path.name.startswith(".") or path.suffix != ".json" or not path.is_file():
            continue  # temp files of a write in progress
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"corrupt improvement file {path}: {e}") from e
        if not isinstance(record, dict) or not isinstance(record.get("line"), str):
            raise ValueError(f"corrupt improvement file {path}: expected an object with a 'line' string, "
                             f"got {record!r}")
        lines.add(record["line"])
    return sorted(lines)


# ---- files ----------------------------------------------------------------------------------------------------
def _file_lock():
    """The lock around read-merge-write of family files across processes (pytest-xdist workers). One file per user
    in the temp directory: none shows up among the baselines, none piles up per baseline file, and writes are few
    (at the end of a session), so sharing one lock costs nothing."""
    from filelock import FileLock

    user = os.getuid() if hasattr(os, "getuid") else "user"
    return FileLock(Path(tempfile.gettempdir()) / f"coreml-parity-baselines-{user}.lock", timeout=_LOCK_TIMEOUT_S)


def _read_file(path: Path) -> dict[str, dict]:
    """All entries of a family file (raw JSON, numbers still encoded); ``{}`` if the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt snapshot baseline file {path}: {e}") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"corrupt snapshot baseline file {path}: expected an object of snapshot name -> "
                         "{metric name -> {direction, slack, value}}")
    return data


def _write_file(path: Path, entries: dict[str, dict]) -> None:
    if not entries:
        path.unlink(missing_ok=True)
        return
    atomic_write(path, json.dumps(entries, sort_keys=True, indent=2, ensure_ascii=False) + "\n")


def _encoded(entry: dict) -> dict:
    return {name: {k: _to_json(v) if k != "direction" else v for k, v in figure.items()}
            for name, figure in entry.items()}


# ---- the syrupy extension -------------------------------------------------------------------------------------
class MetricsSnapshotExtension(AbstractSyrupyExtension):
    """Compares a dict of :class:`Metric` with its entry in the family file, with slack (see the module doc).

    Abstract over the file: :func:`baseline_extension` derives the subclass of one (family, backend family).
    Instance attributes set by :func:`metrics_snapshot`: ``snapshot_name`` (for messages) and ``ratchet`` (under
    ``--snapshot-update``: any change but a worsening within slack counts as a mismatch, so that it is written).
    """

    family: ClassVar[str] = ""
    backend_family: ClassVar[str] = ""
    file_extension = "json"

    def __init__(self) -> None:
        super().__init__()
        self.snapshot_name = "?"
        self.ratchet = False

    @property
    def _label(self) -> str:
        return f"{self.family} {self.snapshot_name}"

    # -- where: <test dir>/__snapshots__/<backend family>/<family>.json
    @classmethod
    def dirname(cls, *, test_location) -> str:
        return str(Path(super().dirname(test_location=test_location)) / cls.backend_family)

    @classmethod
    def get_file_basename(cls, *, test_location, index) -> str:
        return cls.family

    @classmethod
    def matches_test_location(cls, *, test_location, snapshot_location: str) -> bool:
        # The family file is named after the model, not the test module: syrupy's file-name rule does not apply.
        return Path(snapshot_location) == Path(cls.get_location(test_location=test_location, index=0))

    def discover_snapshots(self, *, test_location, ignore_extensions=None) -> SnapshotCollections:
        # None, deliberately: see "Unused snapshots" in the module doc.
        return SnapshotCollections()

    # -- reading and writing
    def read_snapshot_collection(self, *, snapshot_location: str) -> SnapshotCollection:
        collection = SnapshotCollection(location=snapshot_location)
        for name, entry in _read_file(Path(snapshot_location)).items():
            collection.add(Snapshot(name=name, data=_canonical(entry)))
        return collection

    def read_snapshot_data_from_location(self, *, snapshot_location: str, snapshot_name: str,
                                         session_id: str) -> str | None:
        entry = _read_file(Path(snapshot_location)).get(snapshot_name)
        return None if entry is None else _canonical(entry)

    @classmethod
    def write_snapshot_collection(cls, *, snapshot_collection: SnapshotCollection,
                                  name_order: dict[str, int] | None = None) -> None:
        path = Path(snapshot_collection.location)
        with _file_lock():
            entries = _read_file(path)
            for snapshot in snapshot_collection:
                where = f"{path} entry {snapshot.name!r}"
                old = entries.get(snapshot.name)
                try:
                    old = _decode_entry(old, where) if old is not None else None
                except ValueError:
                    old = None  # a malformed old entry is simply replaced
                new = _decode_entry(json.loads(snapshot.data), f"new {where}")
                entries[snapshot.name] = _encoded(_ratchet(new, old))
            _write_file(path, entries)

    def delete_snapshots(self, *, snapshot_location: str, snapshot_names: set[str]) -> None:
        path = Path(snapshot_location)
        with _file_lock():
            entries = _read_file(path)
            for name in snapshot_names:
                entries.pop(name, None)
            _write_file(path, entries)

    # -- comparing
    def serialize(self, data: Any, *, exclude=None, include=None, matcher=None) -> str:
        return _canonical(_encode(data))

    def _comparison(self, serialized_data: Any, snapshot_data: Any) -> _Comparison:
        current = _decode_entry(json.loads(serialized_data), f"{self._label} (now)")
        stored = _decode_entry(json.loads(snapshot_data), f"{self._label} (baseline)")
        return _compare(current, stored, self._label)

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        comparison = self._comparison(serialized_data, snapshot_data)
        if self.ratchet:
            return not comparison.changed  # improvements are pinned by this very run: nothing to list
        if comparison.improvements:
            _record_improvements(comparison.improvements, self.family, self.backend_family, self.snapshot_name)
        return not comparison.failures

    def diff_lines(self, serialized_data: Any, snapshot_data: Any) -> Iterator[str]:
        if not snapshot_data:
            yield (f"{self._label}: no baseline in {self.backend_family}/{self.family}.json "
                   "(pin it with --snapshot-update)")
            return
        failures = self._comparison(serialized_data, snapshot_data).failures
        yield from failures or [f"{self._label}: differs from its baseline"]


_EXTENSIONS: dict[tuple[str, str], type[MetricsSnapshotExtension]] = {}


def baseline_extension(family: str, backend_family: str) -> type[MetricsSnapshotExtension]:
    """The extension class storing ``family``'s baselines for ``backend_family`` (one class per pair, so that
    syrupy batches each family file's writes into one)."""
    if backend_family not in BACKEND_FAMILIES:
        raise ValueError(f"backend_family must be one of {BACKEND_FAMILIES}, got {backend_family!r}")
    if (not isinstance(family, str) or not family or family.startswith(".")
            or any(c in family for c in "/\\\0")):
        raise ValueError(f"family must be a model family name usable as a file name (no '/', not starting with "
                         f"'.'), got {family!r}")
    key = (family, backend_family)
    if key not in _EXTENSIONS:
        safe = "".join(c if c.isalnum() else "_" for c in f"{backend_family}_{family}")
        _EXTENSIONS[key] = type(f"MetricsSnapshotExtension_{safe}", (MetricsSnapshotExtension,),
                                {"family": family, "backend_family": backend_family, "__module__": __name__})
    return _EXTENSIONS[key]


def metrics_snapshot(snapshot: SnapshotAssertion, *, family: str, backend_family: str) -> SnapshotAssertion:
    """syrupy's ``snapshot`` fixture switched to ``family``'s baselines for ``backend_family``: compare it with a
    dict of metric name -> :class:`Metric` (``assert metrics_snapshot(snapshot, ...) == metrics``).

    One such assertion per test and family file: the entry is named after the test (syrupy's default name)."""
    cls = baseline_extension(family, backend_family)
    if not isinstance(snapshot, SnapshotAssertion):
        raise ValueError(f"snapshot must be syrupy's snapshot fixture, got {type(snapshot).__name__}")
    assertion = snapshot.use_extension(cls)
    extension = assertion.extension
    extension.snapshot_name = cls.get_snapshot_name(test_location=assertion.test_location, index=assertion.index)
    extension.ratchet = bool(assertion.update_snapshots)
    return assertion


# ---- outside pytest: the same comparison for `coreml-parity export` ---------------------------------------------
@dataclass
class BaselineComparison:
    """Figures compared with one stored entry: ``found`` is False when the file has no such entry."""

    path: Path
    entry: str
    found: bool
    failures: list[str]
    improvements: list[str]


def compare_with_baseline(baselines_dir: str | Path, *, family: str, backend_family: str, entry: str,
                          metrics: Mapping[str, Metric]) -> BaselineComparison:
    """``metrics`` against the entry ``entry`` (e.g. ``test_parity[silero-vad/unified-36ms/mil-fp16]``) of
    ``<baselines_dir>/<backend_family>/<family>.json``, with the slack the metrics declare now: what the suite's
    snapshot assertion decides, without pytest (nothing is written)."""
    baseline_extension(family, backend_family)  # validates both names
    path = Path(baselines_dir) / backend_family / f"{family}.json"
    stored = _read_file(path).get(entry)
    if stored is None:
        return BaselineComparison(path, entry, False, [], [])
    comparison = _compare(_decode_entry(_encode(metrics), f"{entry} (now)"),
                          _decode_entry(stored, f"{path} {entry}"), entry)
    return BaselineComparison(path, entry, True, comparison.failures, comparison.improvements)
