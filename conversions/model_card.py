"""The model card of a release directory: ``README.md`` with Hugging Face metadata and the measured evidence.

``coreml-parity export FAMILY ... --out DIR`` writes a *release directory*: one Core ML package per component,
each with a ``metadata.json`` holding the checks it passed, and ``release.json`` (the manifest). This module turns
those files into the card that goes to the Hub with them:

- :func:`render_card` builds a :class:`huggingface_hub.ModelCard` from the manifest and the components' metadata:
  the YAML header (license, ``library_name: coreml``, tags, base model, pipeline tag) and a Markdown body with each
  component's I/O contract, the parity table (every figure next to its bound), the task metrics, the quantization
  table when a compression strategy or recipe was applied, how to run the packages and how the figures were
  obtained. Every figure is copied from the metadata, never typed by hand, and the text is deterministic (no clock,
  no dict order of this process): the same release renders the same card.
- :func:`write_card` reads a release directory and writes ``README.md`` atomically. Export calls it *before* it
  writes ``release.json`` (whose presence means "export completed"), so the manifest may be passed in.

Why parse before rendering: the card is read by people deciding whether to ship a model, and the files it comes
from may be hand-edited or written by an older export. A missing or mistyped key must not turn into a ``KeyError``
traceback or, worse, a card with a blank where a bound was: :func:`parse_release` and :func:`parse_metadata` read
every field the card and ``coreml-parity publish`` use and raise :class:`ReleaseFormatError` naming the file and
the key path (``unified-36ms/metadata.json: key 'checks[0].outputs.probability.bound.atol' is missing``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .files import atomic_write

RELEASE_FORMAT = 1
RELEASE_FILE = "release.json"
CARD_FILE = "README.md"
METADATA_FILE = "metadata.json"
QUANTIZATION_KIND = "quantization"
SUITE_TAGS = ("coreml", "core-ml", "coreml-parity")
_REQUIRED = object()


class ReleaseFormatError(ValueError):
    """``release.json`` or a component's ``metadata.json`` lacks a key, or holds a value of the wrong type. The
    message names the file and the key path."""


# ---- reading the files, with the file and key in every error -----------------------------------------------------
def _describe(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Doc:
    """One JSON object of a release file. Every accessor checks the type and, on a problem, raises
    :class:`ReleaseFormatError` with the file name and the full key path."""

    def __init__(self, data: Any, file: str, path: str = ""):
        if not isinstance(data, dict):
            where = f"key {path!r}" if path else "the top level"
            raise ReleaseFormatError(f"{file}: {where} must be a JSON object, got {_describe(data)}")
        self.data, self.file, self.path = data, file, path

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, problem: str) -> ReleaseFormatError:
        return ReleaseFormatError(f"{self.file}: key {self.key(key)!r} {problem}")

    def _raw(self, key: str, default: Any, nullable: bool) -> Any:
        """The value of ``key``; ``default`` when absent (unless required); ``None`` when null and ``nullable``."""
        if key not in self.data:
            if default is _REQUIRED:
                raise self.error(key, "is missing")
            return default
        value = self.data[key]
        if value is None and not nullable:
            raise self.error(key, "is null")
        return value

    def text(self, key: str, default: Any = _REQUIRED, nullable: bool = False) -> str | None:
        value = self._raw(key, default, nullable)
        if value is not None and not isinstance(value, str):
            raise self.error(key, f"must be a string, got {_describe(value)}")
        return value

    def flag(self, key: str, default: Any = _REQUIRED, nullable: bool = False) -> bool | None:
        value = self._raw(key, default, nullable)
        if value is not None and not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_describe(value)}")
        return value

    def number(self, key: str, default: Any = _REQUIRED, nullable: bool = False) -> float | None:
        """A number; JSON's ``Infinity``/``-Infinity``/``NaN`` tokens and the strings ``"inf"``, ``"-inf"``,
        ``"nan"`` (how a strict-JSON writer spells them) are accepted."""
        value = self._raw(key, default, nullable)
        return None if value is None else _as_number(value, lambda problem: self.error(key, problem))

    def integer(self, key: str, default: Any = _REQUIRED, nullable: bool = False) -> int | None:
        value = self._raw(key, default, nullable)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self.error(key, f"must be an integer, got {_describe(value)}")
        return value

    def strs(self, key: str, default: Any = _REQUIRED) -> tuple[str, ...]:
        value = self._raw(key, default, False)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"must be a list of strings, got {_describe(value)}")
        return tuple(value)

    def obj(self, key: str, default: Any = _REQUIRED, nullable: bool = False) -> _Doc | None:
        value = self._raw(key, default, nullable)
        return None if value is None else _Doc(value, self.file, self.key(key))

    def objs(self, key: str) -> list[_Doc]:
        value = self._raw(key, _REQUIRED, False)
        if not isinstance(value, list):
            raise self.error(key, f"must be a list of objects, got {_describe(value)}")
        return [_Doc(item, self.file, f"{self.key(key)}[{i}]") for i, item in enumerate(value)]

    # Maps: an optional map (a default given) may also be null, which reads as empty.
    def obj_map(self, key: str, default: Any = _REQUIRED) -> dict[str, _Doc]:
        doc = self.obj(key, default, nullable=default is not _REQUIRED)
        return {} if doc is None else {name: doc.obj(name) for name in doc.data}

    def str_map(self, key: str, default: Any = _REQUIRED, nullable_values: bool = False) -> dict[str, str | None]:
        doc = self.obj(key, default, nullable=default is not _REQUIRED)
        return {} if doc is None else {name: doc.text(name, nullable=nullable_values) for name in doc.data}

    def number_map(self, key: str, default: Any = _REQUIRED) -> dict[str, float]:
        doc = self.obj(key, default, nullable=default is not _REQUIRED)
        return {} if doc is None else {name: doc.number(name) for name in doc.data}


def _as_number(value: Any, error) -> float:
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity", "-inf", "-infinity", "nan"):
        return float(value.strip().lower().replace("infinity", "inf"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"must be a number, got {_describe(value)}")
    return float(value)


# ---- the parsed release --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    name: str
    license: str
    license_name: str | None
    license_link: str | None
    base_model: str | tuple[str, ...] | None
    url: str | None
    weights: str | None
    tags: tuple[str, ...]
    pipeline_tag: str | None


@dataclass(frozen=True)
class Clip:
    path: str
    sha256: str | None  # null when export could not read the clip
    seconds: float | None
    sample_rate: int | None


@dataclass(frozen=True)
class Release:
    """``release.json``. ``files`` is ``None`` when the manifest has no digest list (a manifest passed to
    :func:`write_card` by export before it hashed the files); publish refuses such a release."""

    family: str
    source: Source
    precision: str
    strategy: str | None
    strategy_description: str | None
    recipe: str | None
    deployment_target: str
    tool_versions: dict[str, str | None]
    clip: Clip
    platform: dict[str, str | None]
    git_commit: str | None
    git_dirty: bool | None
    created_at: str
    backends: tuple[str, ...]
    components: tuple[str, ...]
    failed_components: dict[str, str | None]  # left out of the release by export, with why
    passed: bool
    files: dict[str, str] | None

    @property
    def compressed(self) -> bool:
        return self.strategy is not None or self.recipe is not None


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class OutputParity:
    """One output of a parity check: the measured figures and their bound (``atol`` ``None``: no elementwise gate;
    ``psnr_min_db`` ``-inf``: no PSNR floor)."""

    name: str
    max_abs: float
    psnr_db: float
    atol: float | None
    rtol: float
    psnr_min_db: float


@dataclass(frozen=True)
class OutputQuality:
    """One output of a quantization check: the compressed package against the fp16 package and against torch."""

    name: str
    quality_vs_baseline: float
    quality_vs_torch: float
    psnr_vs_torch_db: float | None
    psnr_vs_baseline_db: float | None


@dataclass(frozen=True)
class Check:
    variant: str
    backend: str
    compute_units: str | None
    kind: str
    calls: int | None
    passed: bool
    failure: str | None
    parity: tuple[OutputParity, ...] = ()
    quality: tuple[OutputQuality, ...] = ()
    task: dict[str, float] = field(default_factory=dict)
    task_bounds: dict[str, float] = field(default_factory=dict)
    baseline_entry: str | None = None

    @property
    def where(self) -> str:
        units = f", {self.compute_units}" if self.compute_units else ""
        return f"{self.backend} / {self.variant}{units}"


@dataclass(frozen=True)
class Compression:
    strategy: str
    description: str | None
    weight_bytes: int
    baseline_weight_bytes: int
    compression_ratio: float


@dataclass(frozen=True)
class Component:
    """A component's ``metadata.json``."""

    file: str
    family: str
    component: str
    package: str
    compiled: str | None
    compiled_note: str | None
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    state: dict[str, str]
    audio_ms_per_call: float | None
    precision: str
    compute_precision: str | None
    deployment_target: str | None
    compression: Compression | None
    checks: tuple[Check, ...]
    passed: bool


def parse_release(data: Any, file: str = RELEASE_FILE) -> Release:
    """Read ``release.json``'s content; :class:`ReleaseFormatError` names the key of any missing or mistyped
    field."""
    doc = _Doc(data, file)
    fmt = doc.integer("format")
    if fmt != RELEASE_FORMAT:
        raise doc.error("format", f"is {fmt}; this coreml-parity reads format {RELEASE_FORMAT} (re-run export)")
    src = doc.obj("source")
    base_model = src.data.get("base_model")
    if isinstance(base_model, list):
        base_model = tuple(src.strs("base_model"))
    else:
        base_model = src.text("base_model", default=None, nullable=True)
    source = Source(name=src.text("name"), license=src.text("license"),
                    license_name=src.text("license_name", default=None, nullable=True),
                    license_link=src.text("license_link", default=None, nullable=True),
                    base_model=base_model or None, url=src.text("url", default=None, nullable=True),
                    weights=src.text("weights", default=None, nullable=True), tags=src.strs("tags", default=()),
                    pipeline_tag=src.text("pipeline_tag", default=None, nullable=True))
    if source.license == "other" and not (source.license_name and source.license_link):
        raise src.error("license_name", "and 'source.license_link' are required when source.license is \"other\" "
                                        "(the Hub shows them instead of a known license)")
    clip = doc.obj("clip")
    files = doc.obj("files", default=None)
    components = doc.strs("components")
    if len(set(components)) != len(components):
        raise doc.error("components", f"lists a component twice: {list(components)}")
    for name in components:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise doc.error("components", f"holds {name!r}, which is not a directory name")
    return Release(
        family=doc.text("family"), source=source, precision=doc.text("precision"),
        strategy=doc.text("strategy", default=None, nullable=True),
        strategy_description=doc.text("strategy_description", default=None, nullable=True),
        recipe=doc.text("recipe", default=None, nullable=True), deployment_target=doc.text("deployment_target"),
        tool_versions=doc.str_map("tool_versions", nullable_values=True),
        clip=Clip(path=clip.text("path"), sha256=clip.text("sha256", nullable=True),
                  seconds=clip.number("seconds", nullable=True),
                  sample_rate=clip.integer("sample_rate", default=None, nullable=True)),
        platform=doc.str_map("platform", nullable_values=True),
        git_commit=doc.text("git_commit", default=None, nullable=True),
        git_dirty=doc.flag("git_dirty", default=None, nullable=True), created_at=doc.text("created_at"),
        backends=doc.strs("backends"), components=components,
        failed_components=doc.str_map("failed_components", default=None, nullable_values=True),
        passed=doc.flag("passed"),
        files=None if files is None else {path: files.text(path) for path in files.data})


def _tensors(doc: _Doc, key: str) -> tuple[Tensor, ...]:
    tensors = []
    for item in doc.objs(key):
        shape = item._raw("shape", _REQUIRED, False)
        if not isinstance(shape, list) or not all(isinstance(d, (int, str)) and not isinstance(d, bool)
                                                  for d in shape):
            raise item.error("shape", f"must be a list of dimensions, got {_describe(shape)}")
        tensors.append(Tensor(item.text("name"), tuple(shape), item.text("dtype")))
    return tuple(tensors)


def _check(doc: _Doc) -> Check:
    kind = doc.text("kind")
    parity, quality = [], []
    for name, out in doc.obj_map("outputs").items():
        if kind == QUANTIZATION_KIND:
            quality.append(OutputQuality(
                name, quality_vs_baseline=out.number("quality_vs_baseline"),
                quality_vs_torch=out.number("quality_vs_torch"),
                psnr_vs_torch_db=out.number("psnr_vs_torch_db", default=None, nullable=True),
                psnr_vs_baseline_db=out.number("psnr_vs_baseline_db", default=None, nullable=True)))
        else:
            metrics, bound = out.obj("metrics"), out.obj("bound")
            parity.append(OutputParity(
                name, max_abs=metrics.number("max_abs"), psnr_db=metrics.number("psnr_db"),
                atol=bound.number("atol", nullable=True), rtol=bound.number("rtol", default=0.0),
                psnr_min_db=bound.number("psnr_min_db")))
    baseline = doc.obj("baseline", default=None, nullable=True)
    return Check(variant=doc.text("variant"), backend=doc.text("backend"),
                 compute_units=doc.text("compute_units", default=None, nullable=True), kind=kind,
                 calls=doc.integer("calls", default=None, nullable=True), passed=doc.flag("passed"),
                 failure=doc.text("failure", default=None, nullable=True), parity=tuple(parity),
                 quality=tuple(quality), task=doc.number_map("task", default=None),
                 task_bounds=doc.number_map("task_bounds", default=None),
                 baseline_entry=None if baseline is None else baseline.text("entry", default=None, nullable=True))


def parse_metadata(data: Any, file: str) -> Component:
    """Read a component's ``metadata.json`` content (``file`` names it in errors)."""
    doc = _Doc(data, file)
    comp = doc.obj("compression", default=None, nullable=True)
    compression = None
    if comp is not None:
        weight_bytes, baseline_bytes = comp.integer("weight_bytes"), comp.integer("baseline_weight_bytes")
        ratio = comp.number("compression_ratio", default=None, nullable=True)
        if ratio is None:
            ratio = baseline_bytes / weight_bytes if weight_bytes else math.inf
        compression = Compression(strategy=comp.text("strategy"),
                                  description=comp.text("description", default=None, nullable=True),
                                  weight_bytes=weight_bytes, baseline_weight_bytes=baseline_bytes,
                                  compression_ratio=ratio)
    return Component(
        file=file, family=doc.text("family"), component=doc.text("component"), package=doc.text("package"),
        compiled=doc.text("compiled", default=None, nullable=True),
        compiled_note=doc.text("compiled_note", default=None, nullable=True),
        inputs=_tensors(doc, "inputs"), outputs=_tensors(doc, "outputs"),
        state=doc.str_map("state", default=None),
        audio_ms_per_call=doc.number("audio_ms_per_call", default=None, nullable=True),
        precision=doc.text("precision"), compute_precision=doc.text("compute_precision", default=None, nullable=True),
        deployment_target=doc.text("deployment_target", nullable=True), compression=compression,
        checks=tuple(_check(c) for c in doc.objs("checks")), passed=doc.flag("passed"))


def read_json(path: Path, name: str) -> Any:
    """The JSON content of ``path``; :class:`ReleaseFormatError` naming ``name`` when it is missing or not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReleaseFormatError(f"{name}: file is missing ({path})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseFormatError(f"{name}: cannot be read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReleaseFormatError(f"{name}: not valid JSON ({exc})") from None


def read_release(release_dir: str | os.PathLike) -> Release:
    """Parse ``release_dir/release.json``."""
    return parse_release(read_json(Path(release_dir) / RELEASE_FILE, RELEASE_FILE), RELEASE_FILE)


def read_components(release_dir: str | os.PathLike, release: Release) -> dict[str, Component]:
    """Parse every component's ``metadata.json``, in the manifest's order, and check that each one describes the
    component and family it is filed under."""
    root = Path(release_dir)
    components = {}
    for name in release.components:
        rel = f"{name}/{METADATA_FILE}"
        component = parse_metadata(read_json(root / rel, rel), rel)
        if component.component != name:
            raise ReleaseFormatError(f"{rel}: key 'component' is {component.component!r}, but the file is under "
                                     f"{name}/")
        if component.family != release.family:
            raise ReleaseFormatError(f"{rel}: key 'family' is {component.family!r}, but {RELEASE_FILE} is for "
                                     f"{release.family!r}")
        components[name] = component
    return components


# ---- formatting ------------------------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _row(*cells: Any) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(header: list[str], rows: list[tuple]) -> list[str]:
    return [_row(*header), "|" + "|".join("---" for _ in header) + "|", *(_row(*r) for r in rows)]


def _g(x: float, digits: int = 2) -> str:
    """A figure with ``digits`` significant digits (2 for errors, as in the suite's bound notes)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.{digits}g}"


def _error_pair(value: float, bound: float | None) -> tuple[str, str]:
    """An error and its bound, with as many significant digits as it takes for their order to show (0.00396 and
    0.004 are not both "0.004")."""
    if bound is None:
        return _g(value), "—"
    for digits in range(2, 7):
        a, b = _g(value, digits), _g(bound, digits)
        if a != b or value == bound:
            return a, b
    return _g(value, 7), _g(bound, 7)


def _db(x: float | None) -> str:
    if x is None:
        return "—"
    if math.isinf(x):
        return "∞ dB" if x > 0 else "—"
    return f"{x:.1f} dB"


def _fig(x: float | None) -> str:
    """A quality, an agreement, a task figure: four significant digits."""
    return "—" if x is None else _g(x, 4)


def _bytes(n: int) -> str:
    return f"{n:,} B"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}, {n:,} B"
    return f"{n} B"


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _verdict(passed: bool) -> str:
    return "passed" if passed else "**FAILED**"


def _tool(versions: Mapping[str, str | None], name: str) -> str:
    return versions.get(name) or "not recorded"


# ---- the card ------------------------------------------------------------------------------------------------------
def card_data(release: Release) -> ModelCardData:
    """The card's YAML header. ``license_name``/``license_link`` only for ``license: other`` (the Hub reads them
    only then); ``base_model`` only when the release derives from a Hub model."""
    src = release.source
    extra = [*SUITE_TAGS, release.family, release.precision]
    if release.strategy:
        extra.append(release.strategy)
    if release.recipe:
        extra.append("mixed-precision")
    tags = list(dict.fromkeys([*src.tags, *extra]))
    other = src.license == "other"
    base_model = list(src.base_model) if isinstance(src.base_model, tuple) else src.base_model
    return ModelCardData(license=src.license, license_name=src.license_name if other else None,
                         license_link=src.license_link if other else None, library_name="coreml", tags=tags,
                         base_model=base_model, pipeline_tag=src.pipeline_tag)


def _intro(release: Release, components: Mapping[str, Component]) -> list[str]:
    src = release.source
    what = f"**{release.precision}**"
    if release.strategy:
        what += f", compressed with **{release.strategy}**"
        if release.strategy_description:
            what += f" ({release.strategy_description})"
    if release.recipe:
        what += f", mixed-precision recipe `{release.recipe}`"
    origin = src.weights or "the original weights"
    if src.url:
        origin += f" ({src.url})"
    names = ", ".join(f"`{c}`" for c in components)
    n = len(components)
    lines = [f"# {src.name} — Core ML ({release.precision}{', ' + release.strategy if release.strategy else ''})", "",
             f"Core ML ML Program packages of {src.name} ({release.family}), converted from PyTorch with "
             f"coremltools {_tool(release.tool_versions, 'coremltools')} from {origin}: {n} component"
             f"{'s' if n != 1 else ''} ({names}), {what}, minimum deployment target {release.deployment_target}."]
    all_passed = release.passed and all(c.passed and all(k.passed for k in c.checks) for c in components.values())
    if all_passed:
        lines.append(f"Each package passed its parity checks against the original PyTorch module before this release "
                     f"was written (on {', '.join(release.backends) or 'no backend'}): the figures below, every one "
                     "next to its bound, are copied from the `metadata.json` beside each package.")
    else:
        lines.append("**Not every check passed**: see the verdicts below. `coreml-parity publish` refuses to upload "
                     "such a release.")
    if release.failed_components:
        lines += ["", "Left out of this release because they did not pass: "
                  + "; ".join(f"`{name}` ({why or 'no reason recorded'})"
                              for name, why in sorted(release.failed_components.items())) + "."]
    return lines


def _components(release: Release, components: Mapping[str, Component],
                package_bytes: Mapping[str, int] | None) -> list[str]:
    lines = ["## Components and I/O contracts", ""]
    for name, c in components.items():
        size = (package_bytes or {}).get(name)
        precision = c.precision if c.compute_precision in (None, c.precision) else \
            f"{c.precision} (compute {c.compute_precision})"
        state = ", ".join(f"`{out}` → `{inp}`" for out, inp in sorted(c.state.items())) or "none (stateless)"
        lines += [f"### `{name}`", "",
                  f"- package: `{name}/{c.package}`" + (f" ({_size(size)})" if size is not None else ""),
                  f"- compiled model: `{name}/{c.compiled}`" if c.compiled else
                  f"- compiled model: none in this release{f' ({c.compiled_note})' if c.compiled_note else ''}",
                  f"- deployment target: {c.deployment_target or 'not recorded'}; precision: {precision}"
                  + (f"; weights {_bytes(c.compression.weight_bytes)} ({c.compression.strategy})"
                     if c.compression else ""),
                  "- audio per call: " + (f"{_g(c.audio_ms_per_call, 6)} ms" if c.audio_ms_per_call is not None
                                          else "—"),
                  f"- state carried (output → input of the next call): {state}", ""]
        rows = [("input", t.name, _shape(t.shape), t.dtype) for t in c.inputs]
        rows += [("output", t.name, _shape(t.shape), t.dtype) for t in c.outputs]
        lines += [*_table(["", "name", "shape", "dtype"], rows), ""]
    return lines


def _parity(components: Mapping[str, Component]) -> list[str]:
    rows = []
    for name, c in components.items():
        for check in c.checks:
            if check.kind == QUANTIZATION_KIND:
                continue
            kind = check.kind + (f" ({check.calls} calls)" if check.calls is not None else "")
            for out in check.parity:
                err, atol = _error_pair(out.max_abs, out.atol)
                bound = "—" if out.atol is None else f"≤ {atol}"
                if out.atol is not None and out.rtol:
                    bound += f" + {_g(out.rtol)}·|ref|"
                floor = "—" if math.isinf(out.psnr_min_db) and out.psnr_min_db < 0 else f"≥ {_db(out.psnr_min_db)}"
                rows.append((name, out.name, kind, check.where, err, bound, _db(out.psnr_db), floor,
                             _verdict(check.passed)))
    lines = ["## Parity with PyTorch", "",
             "Each output against the torch module's on the same inputs: the largest absolute error and the PSNR "
             "(20·log10(max |reference| / RMS error)), next to the bound the check held them to (—: no such "
             "gate).", ""]
    if rows:
        lines += [*_table(["component", "output", "check", "backend / variant", "max abs error", "bound", "PSNR",
                           "PSNR floor", "verdict"], rows), ""]
    else:  # compressed packages: no elementwise bound applies; their figures are in the quantization table
        lines[2:] = ["The compressed packages are held to the figures of the suite's quantization sweep (quality and "
                     "PSNR against torch and against the uncompressed fp16 package, pinned baselines) and to the task "
                     "minimums below, not to elementwise bounds: see **Quantization**.", ""]
    task_rows = []
    for name, c in components.items():
        for check in c.checks:
            for figure in sorted(set(check.task) | set(check.task_bounds)):
                value, floor = check.task.get(figure), check.task_bounds.get(figure)
                # per figure (the check's verdict also covers its outputs); higher is better everywhere
                ok = floor is None or (value is not None and value >= floor)
                task_rows.append((name, check.kind, check.where, figure, _fig(value),
                                  "—" if floor is None else f"≥ {_fig(floor)}", _verdict(ok)))
    if task_rows:
        lines += ["### Task metrics", "",
                  "What an application acts on (decisions, segments, tokens), computed from the package's outputs "
                  "against torch's; every figure is higher-is-better and held to its minimum.", "",
                  *_table(["component", "check", "backend / variant", "figure", "value", "minimum", "verdict"],
                          task_rows), ""]
    failures = [(name, check) for name, c in components.items() for check in c.checks if not check.passed]
    if failures:
        lines += ["### Failures", ""]
        lines += [f"- `{name}` {check.kind} on {check.where}: {check.failure or 'failed (no message recorded)'}"
                  for name, check in failures]
        lines.append("")
    return lines


def _quantization(release: Release, components: Mapping[str, Component]) -> list[str]:
    rows = []
    for name, c in components.items():
        comp = c.compression
        strategy = comp.strategy if comp else "not compressed"
        weights = f"{_bytes(comp.baseline_weight_bytes)} → {_bytes(comp.weight_bytes)}" if comp else "—"
        ratio = f"{comp.compression_ratio:.2f}×" if comp else "—"
        checks = [k for k in c.checks if k.kind == QUANTIZATION_KIND]
        if not checks:
            rows.append((name, strategy, weights, ratio, "—", "—", "—", "—", "—", "—"))
        for check in checks:
            for out in check.quality:
                rows.append((name, strategy, weights, ratio, out.name, _fig(out.quality_vs_baseline),
                             _fig(out.quality_vs_torch), _db(out.psnr_vs_torch_db), check.where,
                             _verdict(check.passed)))
    how = f"strategy **{release.strategy}**" if release.strategy else "no single strategy"
    if release.strategy_description:
        how += f" ({release.strategy_description})"
    if release.recipe:
        how += f", mixed-precision recipe `{release.recipe}`"
    return ["## Quantization", "",
            f"Weights compressed with {how}. Quality is 1 − ‖error‖₂ / ‖reference‖₂ (1 for identical outputs); "
            "\"vs fp16 package\" compares with the uncompressed package, \"vs torch\" with the original module (task "
            "metrics of these checks are in the task-metrics table above).", "",
            *_table(["component", "strategy", "weight bytes before → after", "ratio", "output",
                     "quality vs fp16 package", "quality vs torch", "PSNR vs torch", "backend / variant", "verdict"],
                    rows), ""]


_KIND_TEXT = {
    "clip": "clip: streamed over a real speech clip, state carried from call to call",
    "random": "random: hypothesis-generated inputs",
    "pipeline": "pipeline: components chained as an application runs them",
    QUANTIZATION_KIND: "quantization: the compressed package against the fp16 package and torch",
}
_SWIFT_TYPES = {"float32": ".float32", "float16": ".float16", "float64": ".double", "int32": ".int32"}


def _example_dims(shape: tuple) -> list[str]:
    return [str(d) if isinstance(d, int) else "1" for d in shape]


def _how_to_run(components: Mapping[str, Component]) -> list[str]:
    # the example shows the first component that carries state (the part people get wrong), else the first one
    name, c = next(((n, c) for n, c in components.items() if c.state), next(iter(components.items())))
    stem = Path(c.package).stem
    package = f"{name}/{c.package}"
    compiled = f"{name}/{c.compiled}" if c.compiled else f"build/{stem}.mlmodelc"
    swift_feeds = [f'    "{t.name}": try MLMultiArray(shape: [{", ".join(_example_dims(t.shape))}], '
                   f'dataType: {_SWIFT_TYPES.get(t.dtype, t.dtype)}),' for t in c.inputs]
    py_feeds = [f'    "{t.name}": np.zeros(({", ".join(_example_dims(t.shape))}{"," if len(t.shape) == 1 else ""}), '
                f'dtype=np.{t.dtype}),' for t in c.inputs]
    carry_swift = [f'// state: on the next call, feed out.featureValue(for: "{o}") as "{i}"'
                   for o, i in sorted(c.state.items())]
    carry_py = [f'feeds["{i}"] = out["{o}"]  # state carried to the next call' for o, i in sorted(c.state.items())]
    flexible = any(not isinstance(d, int) for t in c.inputs for d in t.shape)
    lines = ["## How to run", "",
             f"Shown for `{name}`; every component works the same way with the names of its I/O table."
             + (" Flexible dimensions are shown as 1: pick a size in the declared range." if flexible else ""), "",
             "**Swift** (iOS / macOS). Xcode compiles an `.mlpackage` added to a target; outside Xcode, compile it "
             f"once with `xcrun coremlcompiler compile {package} build/`"
             + (f" (or use the compiled `{compiled}` shipped here)" if c.compiled else "") + ":", "",
             "```swift", "import CoreML", "",
             "let config = MLModelConfiguration()",
             "config.computeUnits = .all  // or .cpuOnly, .cpuAndNeuralEngine",
             f'let model = try MLModel(contentsOf: URL(fileURLWithPath: "{compiled}"), configuration: config)',
             "let inputs = try MLDictionaryFeatureProvider(dictionary: [", *swift_feeds, "])",
             "let out = try model.prediction(from: inputs)", *carry_swift, "```", "",
             "**Python on macOS** (coremltools runs the package through Core ML):", "",
             "```python", "import coremltools as ct", "import numpy as np", "",
             f'model = ct.models.MLModel("{package}", compute_units=ct.ComputeUnit.ALL)',
             "feeds = {", *py_feeds, "}", "out = model.predict(feeds)", *carry_py, "```", "",
             "**Any OS** through coreml-parity's portable MIL runtime (a checker that emulates Core ML's fp16 "
             "storage, not a deployment runtime), one `.npy` file per input:", "",
             "```bash",
             f"python -m conversions predict {package} "
             + " ".join(f"--input {t.name}={t.name}.npy" for t in c.inputs) + " --output out.npz",
             "```", ""]
    return lines


def _provenance(release: Release, components: Mapping[str, Component]) -> list[str]:
    clip = release.clip
    rate = f", {clip.sample_rate} Hz" if clip.sample_rate else ""
    seconds = f"{_g(clip.seconds, 6)} s" if clip.seconds is not None else "length not recorded"
    digest = f"`{clip.sha256}`" if clip.sha256 else "not recorded"
    order = {key: i for i, key in enumerate(("system", "machine", "python"))}
    keys = sorted(release.platform, key=lambda k: (order.get(k, len(order)), k))
    platform = ", ".join(f"{k} {release.platform[k]}" for k in keys if release.platform[k])
    kinds = sorted({k.kind for c in components.values() for k in c.checks})
    ran = "; ".join(_KIND_TEXT.get(kind, kind) for kind in kinds) or "no checks recorded"
    pinned = sum(1 for c in components.values() for k in c.checks if k.baseline_entry)
    total = sum(len(c.checks) for c in components.values())
    lines = ["## How the figures were obtained", "",
             f"By the coreml-parity suite (the checks `pytest -k {release.family}` runs), at export: each component "
             f"was converted once, then run next to its PyTorch module on each backend below ({ran}), every output "
             f"held to a bound and every task figure to its minimum. {pinned} of the {total} checks were also held to "
             "pinned baselines (no figure worse than its recorded value beyond its slack). Each "
             "`<component>/metadata.json` holds every figure with its bound and why that bound was chosen; "
             "`release.json` lists the sha256 of every file of this release.", "",
             f"- clip: `{clip.path}` ({seconds}{rate}), sha256 {digest}",
             f"- backends that ran: {', '.join(release.backends) or 'none'}",
             f"- platform: {platform or 'not recorded'}",
             f"- source commit: {f'`{release.git_commit}`' if release.git_commit else 'not recorded'}"
             + (" (with uncommitted changes)" if release.git_dirty else ""),
             f"- created: {release.created_at}", "",
             *_table(["tool", "version"], [(k, v or "not installed") for k, v in sorted(release.tool_versions.items())]),
             ""]
    return lines


def render_card(release: Mapping[str, Any], metadata: Mapping[str, Mapping[str, Any]], *,
                package_bytes: Mapping[str, int] | None = None) -> ModelCard:
    """The model card of a release: ``release`` is ``release.json``'s content, ``metadata`` maps each component to
    its ``metadata.json`` content (every component the manifest lists; order follows the manifest), and
    ``package_bytes`` optionally each component's package size on disk (:func:`write_card` measures it).

    Raises :class:`ReleaseFormatError` (a ``ValueError``) naming the file and key of any missing or malformed
    field."""
    rel = parse_release(release)
    missing = [name for name in rel.components if name not in metadata]
    if missing:
        raise ReleaseFormatError(f"{RELEASE_FILE}: key 'components' lists {missing}, which have no metadata")
    if not rel.components:
        raise ReleaseFormatError(f"{RELEASE_FILE}: key 'components' is empty")
    components = {name: parse_metadata(metadata[name], f"{name}/{METADATA_FILE}") for name in rel.components}
    body = [*_intro(rel, components), "", *_components(rel, components, package_bytes), *_parity(components)]
    if rel.compressed:
        body += _quantization(rel, components)
    body += [*_how_to_run(components), *_provenance(rel, components)]
    text = "\n".join(body).rstrip("\n") + "\n"
    return ModelCard(f"---\n{card_data(rel).to_yaml()}\n---\n\n{text}")


def package_size(path: Path) -> int:
    """Bytes of every file under a package directory (or of the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_card(release_dir: str | os.PathLike, release: Mapping[str, Any] | None = None) -> Path:
    """Write ``release_dir/README.md`` (atomically) from the manifest and each component's ``metadata.json``.

    ``release`` is the manifest's content; without it ``release.json`` is read. Export passes it because it writes
    ``release.json`` last (its presence means the export completed), after the card. Returns the card's path."""
    root = Path(release_dir)
    if release is None:
        if not (root / RELEASE_FILE).is_file():
            raise ReleaseFormatError(f"{root}: no {RELEASE_FILE}; pass the manifest as write_card(dir, release=...)")
        release = read_json(root / RELEASE_FILE, RELEASE_FILE)
    rel = parse_release(release)
    components = read_components(root, rel)
    sizes = {}
    for name, c in components.items():
        package = root / name / c.package
        if not package.exists():
            raise ReleaseFormatError(f"{c.file}: key 'package' names {c.package!r}, which does not exist in "
                                     f"{root / name}")
        sizes[name] = package_size(package)
    metadata = {name: read_json(root / c.file, c.file) for name, c in components.items()}
    card = render_card(release, metadata, package_bytes=sizes)
    return atomic_write(root / CARD_FILE, str(card))
