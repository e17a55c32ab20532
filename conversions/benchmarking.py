"""Latency benchmarks of converted components (``tests/test_benchmarks.py``): engines, realistic calls, figures.

The benchmark suite times one realistic call of every declared component (:mod:`conversions.registry`) on each
engine: ``torch-cpu`` (the torch reference, eager) and every selected variant (``mil-fp16``, ``coreml-...``).
A realistic call is what an app makes while streaming: one call of the family's clip from its middle (speech)
with the component's initial state, never a batch. This module holds what those tests need:

- :func:`engines`, :func:`bench_cases`: what is timed, torch first within each ``family/component`` group so its
  median is known when the converted engines report their speed-up;
- :func:`realistic_feeds`, :func:`load_engine`, :func:`rounds_for`: one call's inputs, an engine loaded into a
  ``feeds -> outputs`` callable (load time measured apart), how many rounds fit the time budget;
- :func:`real_time_factor`, :func:`speedup`, the session's torch medians (:func:`note_torch_median`) and
  :func:`quick_median` when torch was not timed in this session (``-k mil-fp16``);
- :func:`disable_unless_requested`: the policy that a plain ``pytest`` run spends no time on benchmark rounds.
"""

from __future__ import annotations

import statistics
import time
import timeit
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .registry import Component, ModelFamily, Variant

Feeds = dict[str, np.ndarray]

# pytest-benchmark options (their ``dest`` names in pytest_benchmark/plugin.py) that ask for timings: with none of
# them a test session runs each benchmarked function once, as a smoke test. Histograms and cProfile need timed
# rounds too, so they count as asking.
REQUEST_OPTIONS = ("benchmark_only", "benchmark_enable", "benchmark_autosave", "benchmark_save",
                   "benchmark_compare", "benchmark_json", "benchmark_histogram", "benchmark_cprofile")


@dataclass(frozen=True)
class Engine:
    """What runs a component: ``backend`` is ``torch``, ``mil`` or ``coreml``; ``precision`` the program's
    compute precision (torch runs the fp32 reference); ``variant`` is None for torch."""

    id: str
    backend: str
    precision: str
    compute_units: str | None = None
    variant: Variant | None = None


TORCH_ENGINE = Engine("torch-cpu", "torch", "fp32", compute_units="CPU")


def engines(variants: Iterable[Variant]) -> tuple[Engine, ...]:
    """The torch reference first, then one engine per variant in the given order."""
    return (TORCH_ENGINE,) + tuple(Engine(v.id, v.backend, v.program_precision, v.compute_units, v) for v in variants)


@dataclass(frozen=True)
class BenchCase:
    family: ModelFamily
    component: Component
    engine: Engine

    @property
    def group(self) -> str:
        return f"{self.family.name}/{self.component.name}"

    @property
    def id(self) -> str:
        return f"{self.group}/{self.engine.id}"


def bench_cases(families: Iterable[ModelFamily], variants: Sequence[Variant]) -> list[BenchCase]:
    """Every (family, component, engine), grouped by component with torch first in each group: pytest runs
    parametrizations in this order, so a group's torch median is known before its converted engines finish."""
    return [BenchCase(f, c, e) for f in families for c in f.components for e in engines(variants)]


def realistic_feeds(call_feeds: Sequence[Mapping[str, np.ndarray]], initial_state: Mapping[str, np.ndarray],
                    call: int | None = None) -> Feeds:
    """The complete inputs of one call: call ``call`` of the streamed clip (default: the middle one, where the
    clip has speech) with the component's initial state (empty for stateless components)."""
    if len(call_feeds) == 0:
        raise ValueError("call_feeds: expected the per-call inputs of at least one call, got none")
    if call is None:
        call = len(call_feeds) // 2
    if not 0 <= call < len(call_feeds):
        raise ValueError(f"call: expected an index in [0, {len(call_feeds)}), got {call}")
    return {**call_feeds[call], **initial_state}


def audio_ms_per_call(component: Component) -> float:
    """Milliseconds of audio one call of ``component`` advances through, as its declaration says."""
    value = getattr(component, "audio_ms_per_call", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"component {getattr(component, 'name', component)!r}: audio_ms_per_call must be a positive "
                         f"number of milliseconds, got {value!r}")
    return float(value)


@dataclass
class LoadedEngine:
    run: Callable[[Feeds], Feeds]
    load_s: float  # loading (Core ML: compiling) the package; torch: wrapping the in-memory reference module
    package_size_bytes: int | None  # None for torch


def load_engine(parity, family: ModelFamily, component: Component, engine: Engine) -> LoadedEngine:
    """``engine`` loaded for ``component``, timing the load alone. ``parity`` is the suite's session fixture
    (:class:`conversions.pytest_plugin.ParitySession`): it provides the reference model and the exported packages
    (exporting them is not part of the load). The model is loaded afresh, not taken from the parity session's
    memo, so that ``load_s`` measures a real load."""
    from .parity import model_runner, torch_runner

    if engine.backend == "torch":
        model = parity.reference(family)[0]
        started = time.perf_counter()
        run = torch_runner(component.reference(model), component.inputs, component.reference_outputs)
        return LoadedEngine(run, time.perf_counter() - started, None)
    if engine.backend not in ("mil", "coreml"):
        raise ValueError(f"engine.backend: expected 'torch', 'mil' or 'coreml', got {engine.backend!r}")
    package = parity.package(family, component, engine.precision)
    started = time.perf_counter()
    model = engine.variant.load(package.path)
    return LoadedEngine(model_runner(model), time.perf_counter() - started, package.size_bytes)


def rounds_for(call_s: float, budget_s: float = 0.4, min_rounds: int = 10, max_rounds: int = 200) -> int:
    """Timed rounds of one call each that fit ``budget_s`` given one warm call's time, within
    [``min_rounds``, ``max_rounds``]: enough for a stable median, few enough that a slow engine stays quick."""
    if not call_s > 0:
        raise ValueError(f"call_s: expected a positive duration in seconds, got {call_s}")
    if not 1 <= min_rounds <= max_rounds:
        raise ValueError(f"rounds: expected 1 <= min_rounds <= max_rounds, got {min_rounds} and {max_rounds}")
    return int(min(max_rounds, max(min_rounds, budget_s // call_s)))


def real_time_factor(audio_ms: float, median_s: float) -> float:
    """Seconds of audio processed per second of compute (above 1: faster than real time)."""
    if not audio_ms > 0:
        raise ValueError(f"audio_ms: expected a positive duration, got {audio_ms}")
    if not median_s > 0:
        raise ValueError(f"median_s: expected a positive duration, got {median_s}")
    return (audio_ms / 1000.0) / median_s


def speedup(reference_median_s: float, median_s: float) -> float:
    """How many times faster than the reference (torch) an engine's median call is (below 1: slower)."""
    if not reference_median_s > 0:
        raise ValueError(f"reference_median_s: expected a positive duration, got {reference_median_s}")
    if not median_s > 0:
        raise ValueError(f"median_s: expected a positive duration, got {median_s}")
    return reference_median_s / median_s


def quick_median(run: Callable[[Feeds], object], feeds: Feeds, repeat: int = 20, warmup: int = 2) -> float:
    """Median seconds of ``repeat`` single calls (after ``warmup`` untimed ones), outside pytest-benchmark."""
    if repeat < 1:
        raise ValueError(f"repeat: expected at least 1, got {repeat}")
    for _ in range(warmup):
        run(feeds)
    return statistics.median(timeit.repeat(lambda: run(feeds), number=1, repeat=repeat))


# The torch-cpu median of each benchmark group (``family/component``) timed in this process.
_TORCH_MEDIANS: dict[str, float] = {}


def note_torch_median(group: str, median_s: float) -> None:
    if not median_s > 0:
        raise ValueError(f"median_s: expected a positive duration, got {median_s}")
    _TORCH_MEDIANS[group] = median_s


def torch_median(group: str) -> float | None:
    return _TORCH_MEDIANS.get(group)


def disable_unless_requested(config) -> bool:
    """Set pytest-benchmark's ``--benchmark-disable`` unless an option asking for timings was given (see
    :data:`REQUEST_OPTIONS`), so a plain test run executes each benchmark body once and times nothing.

    Call it from a ``pytest_configure`` that runs before pytest-benchmark's (which is ``trylast`` and reads the
    option once). Returns True when it disabled the benchmarks. Without pytest-benchmark it does nothing."""
    if config.getoption("benchmark_disable", default=None) is None:
        return False  # pytest-benchmark not loaded (-p no:benchmark)
    if any(config.getoption(name, default=None) for name in REQUEST_OPTIONS):
        return False
    config.option.benchmark_disable = True
    return True
