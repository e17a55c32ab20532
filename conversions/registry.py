"""Model family declarations: what the parity suite exports, runs and compares. The harness knows no family.

A model family lives in its own package (``conversions/models/<family>/``: torch modules, converters, inputs,
bounds and the declaration in separate files) and exposes ``FAMILY: ModelFamily``; :data:`FAMILY_MODULES` lists
the built-in ones (one line per family), and ``COREML_PARITY_FAMILY_MODULES`` (comma-separated module names) adds
others without touching this repository. Every test of ``tests/test_parity.py``, ``tests/test_quantization.py``
and ``tests/test_benchmarks.py`` is generated from these declarations.

A :class:`Component` says:

- ``convert(model, precision, target) -> ct.models.MLModel``: its converter (a plain function);
- ``reference(model) -> nn.Module``: the torch module it must match, called with the inputs in ``inputs`` order
  and returning ``outputs`` (then ``reference_extras``) in order;
- ``clip_feeds(model, clip) -> list[dict]``: the inputs of each call when the family's clip is streamed through it
  (state inputs are carried, see ``state``);
- ``state``: output name -> input name fed back on the next call, starting from ``initial_state(model)`` (cache
  shapes may depend on the model);
- ``random_inputs(model) -> hypothesis strategy`` of complete feeds (state included);
- ``bounds[precision][output]`` / ``random_bounds``: a :class:`Bound` per output and program precision, for the
  streamed clip and for generated inputs;
- ``task``: a :class:`TaskMetric` (what an app acts on: decisions, segments, tokens) with its minimums and the
  slack of each figure in the snapshot baselines;
- ``audio_ms_per_call``: the audio one call advances through (real-time factors of the benchmarks);
- ``plot(reference, candidate) -> PlotSeries | None``: what the report draws per call of the clip;
- ``upstream(model, clip) -> (ours, upstream)``: optional check of the torch reference against the upstream code.

A :class:`ModelFamily` adds how the model is obtained (``build_reference(source)``, with ``options`` a user can
pass to pytest to choose another checkpoint, and ``configure`` to name the family after it), the clip, the tools
whose versions the report records, end-to-end :class:`PipelineCheck` s (a transcript, a streamed transcript, a
synthesized waveform) and what compression must leave exact.

Every callable's signature is checked when the declaration is built: a converter taking two arguments, or a
``clip_feeds`` taking one, fails at import with a :class:`TypeError` naming the family, component and field.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# One line per built-in model family: a module (or package) exposing ``FAMILY: ModelFamily``.
FAMILY_MODULES = ("conversions.models.silero_vad", "conversions.models.parakeet_tdt", "conversions.models.parakeet_eou",
                  "conversions.models.kokoro")
EXTRA_FAMILIES_ENV = "COREML_PARITY_FAMILY_MODULES"  # more family modules, comma-separated
PRECISIONS = ("fp16", "fp32")  # program compute precisions every component is exported and checked in

Feeds = dict[str, np.ndarray]
Outputs = Mapping[str, np.ndarray]


# ---- the typed callables of a declaration ----------------------------------------------------------------------
class Converter(Protocol):
    def __call__(self, model: Any, precision: str = "fp16", target: str = "iOS17") -> Any: ...


class ClipFeeds(Protocol):
    def __call__(self, model: Any, clip: np.ndarray) -> list[Feeds]: ...


def _check_signature(owner: str, name: str, fn: Any, arity: int, optional: bool = False) -> None:
    """``fn`` must be callable with ``arity`` positional arguments (``None`` allowed when ``optional``)."""
    if fn is None and optional:
        return
    if not callable(fn):
        raise TypeError(f"{owner}: {name} must be callable, got {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return
    try:
        signature.bind(*([None] * arity))
    except TypeError as e:
        raise TypeError(f"{owner}: {name} must take {arity} positional argument(s), but {fn!r} has signature "
                        f"{signature} ({e})") from None


# ---- bounds, task metrics, plots, pipelines ----------------------------------------------------------------------
@dataclass(frozen=True)
class Bound:
    """Parity bound of one output: every element within ``atol + rtol * |reference|`` and PSNR at least
    ``psnr_min_db`` over the whole streamed output. ``why`` says where the numbers come from.

    ``atol=None`` declares no elementwise bound (PSNR only), for outputs whose worst element is not a stable
    figure (recurrent state under fp16 weights on arbitrary inputs: one unit near its tipping point flips), or
    for integer decisions judged by the component's task metric; ``why`` must then say so."""

    atol: float | None
    rtol: float
    psnr_min_db: float
    why: str

    def __post_init__(self):
        if not self.why:
            raise ValueError("a Bound must say where its numbers come from (why)")

    def as_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "psnr_min_db": self.psnr_min_db, "why": self.why}


@dataclass(frozen=True)
class TaskMetric:
    """What an app acts on, measured over a component's outputs: ``compute(reference, candidate) -> {figure: value}``
    (the reference carries the component's ``reference_extras`` too).

    - ``minimums[precision][figure]``: the floor of a figure over the streamed clip (the parity test fails below);
    - ``per_case_minimums[precision][figure]``: the floor on *each* hypothesis-generated case (e.g. decisions the
      reference is confident about must agree on every case; empty: generated cases are judged by bounds only);
    - ``slack[figure]``: how far a figure may fall below its snapshot baseline; every figure ``compute`` returns must
      have a slack or be listed in ``informational`` (reported, never pinned), else the test fails: no figure is
      silently left unpinned.

    Every figure is "higher is better" (agreements, F1, correlations)."""

    name: str
    compute: Callable[[Outputs, Outputs], Mapping[str, float]]
    minimums: Mapping[str, Mapping[str, float]]
    slack: Mapping[str, float]
    per_case_minimums: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    informational: tuple[str, ...] = ()

    def __post_init__(self):
        _check_signature(f"task metric {self.name!r}", "compute", self.compute, 2)
        for kind, table in (("minimums", self.minimums), ("per_case_minimums", self.per_case_minimums)):
            for precision, floors in table.items():
                unknown = set(floors) - set(self.slack) - set(self.informational)
                if precision not in PRECISIONS or unknown:
                    raise ValueError(f"task metric {self.name!r}: {kind}[{precision!r}] names "
                                     f"{sorted(unknown) or precision} (precisions {PRECISIONS}, figures "
                                     f"{sorted(self.slack)})")

    def measure(self, reference: Outputs, candidate: Outputs) -> dict[str, float]:
        """The figures, checked to be declared (a figure without slack nor ``informational`` is an error)."""
        figures = {k: float(v) for k, v in self.compute(reference, candidate).items()}
        undeclared = set(figures) - set(self.slack) - set(self.informational)
        if undeclared:
            raise ValueError(f"task metric {self.name!r} returned {sorted(undeclared)}, which declare no snapshot "
                             "slack (TaskMetric.slack) and are not informational: they would go unpinned")
        return figures

    def pinned(self, figures: Mapping[str, float]) -> dict[str, tuple[float, float]]:
        """figure -> (value, slack) of the figures pinned in the snapshot baselines."""
        return {k: (v, self.slack[k]) for k, v in figures.items() if k in self.slack}


@dataclass(frozen=True)
class PlotSeries:
    """What the report draws for one streamed clip: one value per call of each named trace, torch vs converted,
    against time (call index x ``step_ms``), with an optional decision ``threshold`` line. ``reference_label``
    names the reference in the legend (a pipeline's reference is the upstream library, not torch)."""

    reference: Mapping[str, Sequence[float]]
    candidate: Mapping[str, Sequence[float]]
    step_ms: float
    ylabel: str = ""
    threshold: float | None = None
    reference_label: str = "torch (reference)"

    def as_dict(self) -> dict:
        return {"step_ms": self.step_ms, "ylabel": self.ylabel, "threshold": self.threshold,
                "reference_label": self.reference_label,
                "reference": {k: np.asarray(v, np.float64).reshape(-1).tolist() for k, v in self.reference.items()},
                "candidate": {k: np.asarray(v, np.float64).reshape(-1).tolist() for k, v in self.candidate.items()}}


@dataclass(frozen=True)
class PipelineResult:
    """The outcome of an end-to-end check: ``passed``; ``summary`` (one line: what was compared and found);
    ``figures`` for the report; ``failure`` (what differs first, with the figures that explain it) when not passed;
    ``series``: per-call traces, upstream (reference) vs ours (candidate), plotted by the report."""

    passed: bool
    summary: str
    figures: Mapping[str, Any] = field(default_factory=dict)
    failure: str | None = None
    series: PlotSeries | None = None  # drawn by the report like a component's plot (e.g. tokens and <EOU> per chunk)


@dataclass(frozen=True)
class PipelineCheck:
    """An end-to-end check driving several converted components the way an app does (a transcript, a streamed
    transcript with end-of-utterance, a synthesized waveform), compared with the upstream library's own result.

    ``run(model, clip, components) -> PipelineResult``: ``components`` maps each name of ``components`` to the
    converted package loaded on the variant under test (``.predict(feeds) -> dict``), or is ``None`` for the torch
    run (the same host code driving the torch components: tells a host-code bug from a conversion bug). The plugin
    generates ``test_pipeline[<family>/<name>/<variant>]`` and ``[<family>/<name>/torch]``."""

    name: str
    components: tuple[str, ...]
    run: Callable[[Any, np.ndarray, Mapping[str, Any] | None], PipelineResult]
    description: str = ""

    def __post_init__(self):
        _check_signature(f"pipeline {self.name!r}", "run", self.run, 3)


# ---- components and families ---------------------------------------------------------------------------------
def _no_state(model) -> Feeds:
    return {}


@dataclass(frozen=True)
class Component:
    name: str
    convert: Converter
    reference: Callable[[Any], Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    clip_feeds: ClipFeeds
    random_inputs: Callable[[Any], Any]
    bounds: Mapping[str, Mapping[str, Bound]]
    random_bounds: Mapping[str, Mapping[str, Bound]]
    audio_ms_per_call: float  # audio one call advances through: real-time factors, plot time axes
    state: Mapping[str, str] = field(default_factory=dict)
    initial_state: Callable[[Any], Feeds] = _no_state
    task: TaskMetric | None = None
    plot: Callable[[Outputs, Outputs], PlotSeries | None] | None = None
    # Apply the family's keep_exact exclusions when compressing this component. False where the excluded weight
    # is the component's only one (Silero's stft): its sweep then shows what compressing that weight costs.
    keep_exact: bool = True
    # Override the family's mixed-strategy candidate / quality target for this component.
    mixed_candidate: str | None = None
    mixed_target_quality: float | None = None
    upstream: Callable[[Any, Any], tuple] | None = None
    upstream_atol: float | None = None
    upstream_why: str = ""
    # Extra outputs the torch reference returns after ``outputs`` for the task metric only (e.g. the top-2 logit
    # margins that say which decisions numerical error may flip); the converted component does not have them.
    reference_extras: tuple[str, ...] = ()
    # Part of the quantization sweep (tests/test_quantization.py). Off for components whose weights are fixed
    # transforms (a mel filterbank) or that repeat another component's weights (a fused or decision variant).
    sweep: bool = True
    # What the exported program computes in, per requested precision, where it is not the request itself (a fp16
    # export keeping some ops fp32 is "mixed"; one keeping all of them, "fp32").
    program_precision: Mapping[str, str] = field(default_factory=dict)
    # At most this many hypothesis-generated cases per test_parity_random (None: the profile's max_examples), for
    # components whose one call costs seconds (a whole TTS model); the clip stream is unaffected.
    random_examples: int | None = None
    # Outputs that are audio (name -> sample rate): the report writes the streamed clip's reference and converted
    # waveforms of each call as WAV files a person can listen to, with waveform and log-mel spectrogram plots.
    audio_outputs: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self):
        owner = f"component {self.name!r}"
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "reference_extras", tuple(self.reference_extras))
        for name, arity, optional in (("convert", 3, False), ("reference", 1, False), ("clip_feeds", 2, False),
                                      ("random_inputs", 1, False), ("initial_state", 1, False), ("plot", 2, True),
                                      ("upstream", 2, True)):
            _check_signature(owner, name, getattr(self, name), arity, optional)
        if self.task is not None and not isinstance(self.task, TaskMetric):
            raise TypeError(f"{owner}: task must be a TaskMetric, got {type(self.task).__name__}")
        if not (isinstance(self.audio_ms_per_call, (int, float)) and self.audio_ms_per_call > 0):
            raise ValueError(f"{owner}: audio_ms_per_call must be a positive number of milliseconds, "
                             f"got {self.audio_ms_per_call!r}")
        if self.upstream is not None and self.upstream_atol is None:
            raise ValueError(f"{owner}: an upstream check needs upstream_atol")
        unknown_audio = set(self.audio_outputs) - set(self.outputs)
        if unknown_audio:
            raise ValueError(f"{owner}: audio_outputs names unknown outputs {sorted(unknown_audio)}")
        if self.random_examples is not None and not (isinstance(self.random_examples, int) and self.random_examples > 0):
            raise ValueError(f"{owner}: random_examples must be a positive int or None, got {self.random_examples!r}")

    @property
    def reference_outputs(self) -> tuple[str, ...]:
        """What the torch reference returns, in order: the outputs, then :attr:`reference_extras`."""
        return tuple(self.outputs) + tuple(self.reference_extras)


@dataclass(frozen=True)
class FamilyOption:
    """A pytest option of one family choosing where its model comes from (``--parakeet-tdt-v3-nemo-path FILE``).
    ``flag`` must start with ``--<family name>-``; the value reaches ``configure`` under ``dest``."""

    flag: str
    help: str
    metavar: str = "VALUE"

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class ModelCardInfo:
    """What a published release says about the model it was converted from (``coreml-parity export`` writes it into
    the model card): the source's license (a Hugging Face license id; ``"other"`` with ``license_name`` and
    ``license_link`` for a custom one), the hub id of the base model (only when the weights are that model's), where
    the source lives, which weights the default family uses, and the card's tags."""

    name: str
    license: str
    url: str
    weights: str
    base_model: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    tags: tuple[str, ...] = ()
    pipeline_tag: str | None = None

    def __post_init__(self):
        if self.license == "other" and not (self.license_name and self.license_link):
            raise ValueError(f"model card of {self.name!r}: license 'other' needs license_name and license_link")

    def as_dict(self) -> dict:
        return {"name": self.name, "license": self.license, "license_name": self.license_name,
                "license_link": self.license_link, "base_model": self.base_model, "url": self.url,
                "weights": self.weights, "tags": list(self.tags), "pipeline_tag": self.pipeline_tag}


@dataclass(frozen=True)
class ModelFamily:
    name: str
    # The torch model the components are built from, with its real (or offline) weights: ``source`` holds the values
    # of ``options`` the user gave (an empty mapping by default).
    build_reference: Callable[[Mapping[str, Any]], Any]
    load_clip: Callable[[], np.ndarray]  # the real input streamed through every component
    clip_path: Path
    components: tuple[Component, ...]
    # Distributions whose versions the report records next to coremltools/torch/numpy (e.g. the model's library).
    tools: tuple[str, ...] = ()
    options: tuple[FamilyOption, ...] = ()
    # ``configure(family, values) -> family`` when the user gave any option: validates them (ValueError: a usage
    # error naming the option) and returns the family to check, usually renamed after the checkpoint so its report
    # and baselines never mix with the default model's.
    configure: Callable[[ModelFamily, Mapping[str, Any]], ModelFamily] | None = None
    source: Mapping[str, Any] = field(default_factory=dict)
    pipelines: tuple[PipelineCheck, ...] = ()
    # Op names in a converted package that compression must leave exact (for Silero: the fixed STFT basis).
    keep_exact: Callable[[Any], tuple[str, ...]] = lambda mlmodel: ()
    # The ``mixed`` compression strategy: which strategy it applies layer by layer, and the quality (vs the fp16
    # package, first output, streamed clip) it must keep.
    mixed_candidate: str = "palettize-6bit"
    mixed_target_quality: float = 0.985
    # (component, strategy) -> why coremltools cannot apply that strategy there: their tests are expected to
    # fail with StrategyNotApplicable (strict: they fail if the strategy starts to apply).
    inapplicable: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # Python modules the family's reference needs (an optional extra): without them its tests skip, saying which
    # extra installs them.
    requires: tuple[str, ...] = ()
    install_hint: str = ""
    # The compression strategies its components are swept with (names in conversions.quantize.STRATEGIES; None:
    # every strategy). For a model whose every compression costs minutes, the ones it ships.
    strategies: tuple[str, ...] | None = None
    # What ``coreml-parity export`` writes into the model card (license, base model, ...); None: the card says the
    # source declared none.
    card: ModelCardInfo | None = None

    def __post_init__(self):
        owner = f"model family {self.name!r}"
        object.__setattr__(self, "components", tuple(self.components))
        _check_signature(owner, "build_reference", self.build_reference, 1)
        _check_signature(owner, "load_clip", self.load_clip, 0)
        _check_signature(owner, "keep_exact", self.keep_exact, 1)
        _check_signature(owner, "configure", self.configure, 2, optional=True)
        names = [c.name for c in self.components]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"{owner}: component names must be unique and non-empty, got {names}")
        if self.options and self.configure is None:
            raise ValueError(f"{owner}: options need a configure(family, values)")
        for pipeline in self.pipelines:
            unknown = set(pipeline.components) - set(names)
            if unknown:
                raise ValueError(f"{owner}: pipeline {pipeline.name!r} drives unknown components {sorted(unknown)}")

    def missing_requirements(self) -> list[str]:
        import importlib.util

        missing = []
        for name in self.requires:
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(name)
        return missing

    def with_options(self, values: Mapping[str, Any]) -> ModelFamily:
        """The family to check given the option values (dest -> value): itself when none was given, else what
        ``configure`` returns (its ``source`` as configure set it, else the given values)."""
        given = {k: v for k, v in values.items() if v not in (None, "")}
        if not given:
            return self
        configured = self.configure(self, given)
        if not isinstance(configured, ModelFamily):
            raise TypeError(f"model family {self.name!r}: configure returned {type(configured).__name__}, "
                            "expected a ModelFamily")
        # configure may normalise the values (an absolute checkpoint path): keep its source when it set one
        return configured if configured.source else replace(configured, source=given)

    def build(self) -> Any:
        """The reference model of this family's source."""
        return self.build_reference(dict(self.source))

    @property
    def swept_components(self) -> tuple[Component, ...]:
        return tuple(c for c in self.components if c.sweep)

    def sweep_strategies(self, available: Sequence[str]) -> tuple[str, ...]:
        """The strategies of ``available`` this family is swept with (its ``strategies``, in their order)."""
        if self.strategies is None:
            return tuple(available)
        unknown = [s for s in self.strategies if s not in available]
        if unknown:
            raise ValueError(f"model family {self.name!r}: strategies {unknown} are not known (known: "
                             f"{list(available)})")
        return tuple(self.strategies)

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"model family {self.name!r} has no component {name!r}; it has "
                       f"{[c.name for c in self.components]}")


def family_modules() -> tuple[str, ...]:
    """The built-in family modules, then those named by ``COREML_PARITY_FAMILY_MODULES``."""
    extra = [m.strip() for m in os.environ.get(EXTRA_FAMILIES_ENV, "").split(",") if m.strip()]
    return tuple(dict.fromkeys((*FAMILY_MODULES, *extra)))


def families() -> tuple[ModelFamily, ...]:
    """Every declared family (default model sources)."""
    found = []
    for name in family_modules():
        module = importlib.import_module(name)
        family = getattr(module, "FAMILY", None)
        if not isinstance(family, ModelFamily):
            raise TypeError(f"{name}: a family module must define FAMILY = ModelFamily(...), "
                            f"got {type(family).__name__}")
        for option in family.options:  # per family: two families never share an option (or a checkpoint path)
            if not option.flag.startswith(f"--{family.name}-"):
                raise ValueError(f"{name}: option {option.flag} of family {family.name!r} must start with "
                                 f"--{family.name}-")
        found.append(family)
    names = [f.name for f in found]
    if len(set(names)) != len(names):
        raise ValueError(f"two family modules declare the same family name: {names}")
    return tuple(found)


def find_family(name: str) -> ModelFamily:
    """The declared family called ``name``; ``KeyError`` naming the known ones if there is none."""
    known = {f.name: f for f in families()}
    if name not in known:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


@dataclass(frozen=True)
class Variant:
    """Where and how a converted component runs: ``mil-fp16`` is the fp16 program on the portable runtime with
    fp16 storage emulated; ``coreml-cpu_and_ne-fp16`` the fp16 program on Apple's runtime with those compute units."""

    id: str
    backend: str
    program_precision: str
    runtime_precision: str = "fp16"
    compute_units: str | None = None

    def load(self, model):
        """``model`` (a package path or an in-memory MLModel) loaded on this variant's backend, compute units and
        runtime precision (:func:`conversions.runtime.load_model`)."""
        from .runtime import load_model

        if self.backend == "coreml":
            return load_model(model, backend="coreml", compute_units=self.compute_units)
        return load_model(model, backend="mil", precision=self.runtime_precision)

    @property
    def baseline_family(self) -> str:
        """Which snapshot baselines this variant is held to: numerics differ between the portable runtime,
        Apple's CPU path and the Neural Engine (``ALL`` may place ops on the ANE, so it goes with it)."""
        if self.backend == "mil":
            return "mil"
        return "coreml-cpu" if self.compute_units == "CPU_ONLY" else "coreml-ne"


VARIANTS = (
    Variant("mil-fp16", "mil", "fp16", "fp16"),
    Variant("mil-fp32", "mil", "fp32", "fp32"),
    Variant("coreml-cpu_only-fp16", "coreml", "fp16", compute_units="CPU_ONLY"),
    Variant("coreml-cpu_and_ne-fp16", "coreml", "fp16", compute_units="CPU_AND_NE"),
    Variant("coreml-all-fp16", "coreml", "fp16", compute_units="ALL"),
    Variant("coreml-cpu_only-fp32", "coreml", "fp32", compute_units="CPU_ONLY"),
)
PORTABLE_VARIANTS = tuple(v for v in VARIANTS if v.backend == "mil")


def select_variants(spec: str | None) -> tuple[Variant, ...]:
    """Variants named by ``--backend``: comma-separated backends (``mil``, ``coreml``) or variant ids."""
    if spec is None:
        return VARIANTS
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    known = {v.backend for v in VARIANTS} | {v.id for v in VARIANTS}
    if not wanted:
        raise ValueError(f"--backend {spec!r} names no backend; choose from {sorted(known)}")
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ValueError(f"--backend: unknown {unknown}; choose from {sorted(known)}")
    return tuple(v for v in VARIANTS if v.backend in wanted or v.id in wanted)


def missing_coverage(family: ModelFamily, generated_ids: set[str], variants=PORTABLE_VARIANTS,
                     strategies: tuple[str, ...] = (), benchmarks: bool = False) -> list[str]:
    """What a family declares but the suite does not check: components without clip and random parity tests
    (``generated_ids``: the collected test ids) on each of ``variants``, without a quantization test per strategy
    on the fp16 ones among them, without a latency benchmark (when ``benchmarks``), pipelines without a test,
    outputs without a bound for a precision, task metrics without minimums."""
    problems = []
    for c in family.components:
        for v in (v for v in variants if v.program_precision == "fp16"):
            for s in family.sweep_strategies(strategies) if c.sweep and strategies else ():
                if f"test_quantization[{family.name}/{c.name}/{s}/{v.id}]" not in generated_ids:
                    problems.append(f"{family.name}/{c.name}: no test_quantization of {s} on {v.id}")
        for v in variants:
            for test in ("test_parity", "test_parity_random"):
                if f"{test}[{family.name}/{c.name}/{v.id}]" not in generated_ids:
                    problems.append(f"{family.name}/{c.name}: no {test} on {v.id}")
            if benchmarks and f"test_benchmark_latency[{family.name}/{c.name}/{v.id}]" not in generated_ids:
                problems.append(f"{family.name}/{c.name}: no test_benchmark_latency on {v.id}")
        for precision in PRECISIONS:
            for kind, declared in (("clip", c.bounds), ("random", c.random_bounds)):
                bounds = declared.get(precision, {})
                for out in c.outputs:
                    if out not in bounds:
                        problems.append(f"{family.name}/{c.name}: output {out!r} has no {precision} {kind} bound")
                extra = set(bounds) - set(c.outputs)
                if extra:
                    problems.append(f"{family.name}/{c.name}: {precision} {kind} bounds for unknown outputs "
                                    f"{sorted(extra)}")
            if c.task is not None and not c.task.minimums.get(precision):
                problems.append(f"{family.name}/{c.name}: task metric {c.task.name!r} without {precision} minimums")
        if set(c.state) - set(c.outputs) or set(c.state.values()) - set(c.inputs):
            problems.append(f"{family.name}/{c.name}: state {dict(c.state)} names unknown inputs/outputs")
    for p in family.pipelines:
        for v in variants:
            if f"test_pipeline[{family.name}/{p.name}/{v.id}]" not in generated_ids:
                problems.append(f"{family.name}: pipeline {p.name!r} has no test_pipeline on {v.id}")
    return problems
