"""Model family declarations: what the parity suite exports, runs and compares.

A model family (``silero-vad``, ...) declares its components; ``tests/test_parity.py`` generates every test
from these declarations, so adding a model never means writing a test file. A component says:

- ``convert(reference_model, precision) -> ct.models.MLModel``: its converter (a plain function);
- ``reference(reference_model) -> nn.Module``: the torch module it must match, called with the inputs in
  ``inputs`` order and returning the outputs in ``outputs`` order;
- ``clip_feeds(reference_model, waveform) -> list[dict]``: the inputs of each call when the family's real clip
  is streamed through it (state inputs excluded: they are carried, see ``state``);
- ``state``: output name -> input name fed back on the next call (LSTM state), with ``initial_state()``;
- ``random_inputs(reference_model) -> hypothesis strategy`` of complete feeds (state included);
- ``bounds[precision][output]``: a :class:`Bound` per output and program precision for the streamed clip, with
  where it comes from; ``random_bounds`` the same for the hypothesis-generated inputs (which reach far louder
  and stranger signals and states than the clip, so their fp16 bounds are wider);
- ``task_metric(reference, candidate) -> dict`` over the streamed outputs, with ``task_bounds[precision]``
  (minimums), or ``None``;
- ``upstream(reference_model, waveform) -> (ours, upstream)``: optional check of the torch reference itself
  against the upstream implementation, within ``upstream_atol``.

A family may also name the ops of its packages that compression must leave exact (``keep_exact``).

Families are listed in :data:`FAMILY_MODULES`; each module exposes ``FAMILY``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One entry per model family module; each defines ``FAMILY: ModelFamily``.
FAMILY_MODULES = ("conversions.vad.silero", "conversions.stt.parakeet_tdt")
PRECISIONS = ("fp16", "fp32")  # program compute precisions every component is exported and checked in


@dataclass(frozen=True)
class Bound:
    """Parity bound of one output: every element within ``atol + rtol * |reference|`` and PSNR at least
    ``psnr_min_db`` over the whole streamed output. ``why`` says where the numbers come from.

    ``atol=None`` declares no elementwise bound (PSNR only), for outputs whose worst element is not a stable
    figure (recurrent state under fp16 weights on arbitrary inputs: one unit near its tipping point flips);
    ``why`` must then say so."""

    atol: float | None
    rtol: float
    psnr_min_db: float
    why: str

    def as_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "psnr_min_db": self.psnr_min_db, "why": self.why}


@dataclass(frozen=True)
class Component:
    name: str
    convert: Callable[[Any, str], Any]
    reference: Callable[[Any], Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    clip_feeds: Callable[[Any, Any], list[dict]]
    random_inputs: Callable[[Any], Any]
    bounds: Mapping[str, Mapping[str, Bound]]
    random_bounds: Mapping[str, Mapping[str, Bound]]
    state: Mapping[str, str] = field(default_factory=dict)
    initial_state: Callable[[], dict] = dict
    task_metric: Callable[[Mapping, Mapping], dict] | None = None
    task_bounds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    step_ms: float | None = None  # audio time per call, for plots
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

    @property
    def reference_outputs(self) -> tuple[str, ...]:
        """What the torch reference returns, in order: the outputs, then :attr:`reference_extras`."""
        return tuple(self.outputs) + tuple(self.reference_extras)


@dataclass(frozen=True)
class ModelFamily:
    name: str
    build_reference: Callable[[], Any]  # the torch model with its real (or offline random) weights
    load_clip: Callable[[], Any]  # the real input streamed through every component
    clip_path: Path
    components: tuple[Component, ...]
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

    @property
    def swept_components(self) -> tuple[Component, ...]:
        return tuple(c for c in self.components if c.sweep)

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"model family {self.name!r} has no component {name!r}; it has "
                       f"{[c.name for c in self.components]}")


def families() -> tuple[ModelFamily, ...]:
    return tuple(importlib.import_module(name).FAMILY for name in FAMILY_MODULES)


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
    if not spec:
        return VARIANTS
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    known = {v.backend for v in VARIANTS} | {v.id for v in VARIANTS}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ValueError(f"--backend: unknown {unknown}; choose from {sorted(known)}")
    return tuple(v for v in VARIANTS if v.backend in wanted or v.id in wanted)


def missing_coverage(family: ModelFamily, generated_ids: set[str], variants=PORTABLE_VARIANTS,
                     strategies: tuple[str, ...] = ()) -> list[str]:
    """What a family declares but the parity suite does not check: components without clip and random parity
    tests (``generated_ids``: the collected test ids) on each of ``variants``, without a quantization test per
    strategy on the fp16 ones among them, outputs without a bound for a precision, task metrics without bounds."""
    problems = []
    for c in family.components:
        for v in (v for v in variants if v.program_precision == "fp16"):
            for s in strategies if c.sweep else ():
                if f"test_quantization[{family.name}/{c.name}/{s}/{v.id}]" not in generated_ids:
                    problems.append(f"{family.name}/{c.name}: no test_quantization of {s} on {v.id}")
        for v in variants:
            for test in ("test_parity", "test_parity_random"):
                if f"{test}[{family.name}/{c.name}/{v.id}]" not in generated_ids:
                    problems.append(f"{family.name}/{c.name}: no {test} on {v.id}")
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
            if c.task_metric is not None and not c.task_bounds.get(precision):
                problems.append(f"{family.name}/{c.name}: task metric without {precision} bounds")
        if set(c.state) - set(c.outputs) or set(c.state.values()) - set(c.inputs):
            problems.append(f"{family.name}/{c.name}: state {dict(c.state)} names unknown inputs/outputs")
    return problems
