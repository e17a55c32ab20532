"""The parity engine: what the pytest suite and the ``coreml-parity`` command line share (one copy of each check).

:class:`ParitySession` exports each (family, component, precision) once through the on-disk cache, loads each package
once per backend, streams the torch reference over the family's clip once; :func:`clip_parity` is the clip check of
``test_parity`` (declared bounds, task metric minimums, trace diagnosis of a failing fp16 program) and
:func:`quantization_figures` the figures of ``test_quantization``. The pytest plugin subclasses the session to turn
a missing extra into a skip and to hand results to the report; ``coreml-parity export`` uses it as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import registry


@dataclass(frozen=True)
class ParityCase:
    family: registry.ModelFamily
    component: registry.Component
    variant: registry.Variant

    @property
    def id(self) -> str:
        return f"{self.family.name}/{self.component.name}/{self.variant.id}"


class FamilyUnavailable(RuntimeError):
    """The family's optional dependencies are not installed (the message says which extra to install)."""


class ParitySession:
    """Everything parity tests share within a session, each built on first use."""

    def __init__(self, export_dir: str | os.PathLike, records_dir: str | os.PathLike | None = None):
        from .export import ExportCache

        self.cache = ExportCache(Path(export_dir))
        self.records_dir = Path(records_dir) if records_dir is not None else None
        self._memo: dict = {}

    def _once(self, key, build):
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def reference(self, family: registry.ModelFamily):
        """The family's torch model and the digest of its weights."""
        from .export import weights_digest

        missing = family.missing_requirements()
        if missing:
            raise FamilyUnavailable(f"{family.name}: {', '.join(missing)} not installed "
                                    f"({family.install_hint or 'see README'})")

        def build():
            model = family.build()
            return model, weights_digest(model)

        return self._once(("reference", family.name), build)

    def clip(self, family: registry.ModelFamily) -> np.ndarray:
        return self._once(("clip", family.name), family.load_clip)

    def package(self, family, component, precision: str, target: str | None = None):
        """The exported ``.mlpackage`` (:class:`conversions.export.ExportedPackage`), from the cache if unchanged."""
        from .export import DEFAULT_TARGET, export_key

        target = target or DEFAULT_TARGET

        def build():
            model, weights = self.reference(family)
            key = export_key(component.convert, weights, {"family": family.name, "component": component.name,
                                                          "precision": precision, "target": target})
            suffix = "" if target == DEFAULT_TARGET else f"-{target}"
            return self.cache.get_or_export(f"{family.name}-{component.name}-{precision}{suffix}", key,
                                            lambda: _stamped(component.convert(model, precision, target), family,
                                                             component))

        return self._once(("package", family.name, component.name, precision, target), build)

    def quantized(self, family, component, strategy_name: str):
        """The component's fp16 package compressed with a strategy of :mod:`conversions.quantize` (cached like
        exports; the key adds the strategy's config and quantize.py's source), and the mixed strategy's recipe."""
        from .export import export_key, file_digest
        from . import quantize

        def build():
            strategy = quantize.get_strategy(strategy_name)
            model, weights = self.reference(family)
            base = self.package(family, component, "fp16", strategy.min_target)
            exclude = tuple(family.keep_exact(str(base.path))) if component.keep_exact else ()
            options = {"family": family.name, "component": component.name, "precision": "fp16",
                       "target": strategy.min_target, "strategy": strategy_name, "exclude": exclude,
                       "config": strategy.config(exclude), "quantize_source": file_digest(quantize.__file__)}
            mixed = strategy_name == quantize.MIXED
            candidate = component.mixed_candidate or family.mixed_candidate
            target_quality = component.mixed_target_quality or family.mixed_target_quality
            if mixed:
                options.update(candidate=candidate, target_quality=target_quality)
            key = export_key(component.convert, weights, options)
            name = f"{family.name}-{component.name}-{strategy_name}"
            recipe_path = self.cache.path_for(name, key).with_suffix(".recipe.json")

            def compress():
                mlmodel = _stamped(component.convert(model, "fp16", strategy.min_target), family, component)
                if not mixed:
                    return strategy.apply(mlmodel, exclude)
                baseline = self.stream_primary(family, component, base.path)
                recipe = quantize.sensitivity_recipe(
                    mlmodel, lambda m: _quality(baseline, self.stream_primary(family, component, m)),
                    candidate=candidate, target_quality=target_quality, exclude_ops=exclude)
                quantize.save_recipe(recipe, recipe_path)
                return quantize.apply_recipe(mlmodel, recipe)

            package = self.cache.get_or_export(name, key, compress)
            return package, (quantize.load_recipe(recipe_path) if mixed else None), base, strategy, exclude

        return self._once(("quantized", family.name, component.name, strategy_name), build)

    def stream_clip(self, family, component, run):
        """``run`` (feeds -> outputs) streamed over the family's clip with the component's state carried
        (:class:`conversions.parity.StreamResult`)."""
        from .parity import run_stream

        return run_stream(run, self.clip_feeds(family, component), component.state,
                          self.initial_state(family, component))

    def initial_state(self, family, component) -> dict:
        """The component's state inputs before the first call (their shapes may depend on the model)."""
        return self._once(("initial-state", family.name, component.name),
                          lambda: component.initial_state(self.reference(family)[0]))

    def stream_primary(self, family, component, model_or_path) -> np.ndarray:
        """The component's first output streamed over the clip on the portable runtime (fp16 storage)."""
        from .parity import model_runner
        from .runtime import load_model

        out = self.stream_clip(family, component, model_runner(load_model(model_or_path, backend="mil")))
        return out.outputs[component.outputs[0]]

    def variant_clip_stream(self, case, package_path) -> dict[str, np.ndarray]:
        """The outputs of ``package_path`` streamed over the clip on the case's variant, once per session."""
        from .parity import model_runner

        return self._once(("variant-stream", case.id, str(package_path)),
                          lambda: self.stream_clip(case.family, case.component,
                                                   model_runner(case.variant.load(package_path))).outputs)

    def model(self, case):
        """The component's package loaded on the case's backend."""
        path = self.package(case.family, case.component, case.variant.program_precision).path
        return self._once(("model", case.id), lambda: case.variant.load(path))

    def clip_feeds(self, family, component) -> list[dict]:
        return self._once(("feeds", family.name, component.name),
                          lambda: component.clip_feeds(self.reference(family)[0], self.clip(family)))

    def torch_clip_stream(self, family, component):
        """The torch reference streamed over the clip (:class:`conversions.parity.StreamResult`)."""
        from .parity import torch_runner

        def build():
            module = component.reference(self.reference(family)[0])
            return self.stream_clip(family, component,
                                    torch_runner(module, component.inputs, component.reference_outputs))

        return self._once(("torch-stream", family.name, component.name), build)

def _stamped(mlmodel, family, component):
    """The converted model with the family and component it was exported as in its metadata (the converters do not
    know the family's configured name)."""
    from .export import METADATA_PREFIX

    mlmodel.user_defined_metadata[METADATA_PREFIX + "model"] = family.name
    mlmodel.user_defined_metadata[METADATA_PREFIX + "component"] = component.name
    return mlmodel


def _quality(reference: np.ndarray, candidate: np.ndarray) -> float:
    from .metrics import quality

    return quality(reference, candidate)


def _spec(spec) -> dict:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": np.dtype(spec.dtype).name}




# ---- the checks, shared by the suite and the command line -------------------------------------------------------
def diagnose(session: ParitySession, family, component, variant, feeds) -> str | None:
    """Trace diagnosis of a failing fp16 program on one call's inputs (the package is the same whichever runtime
    ran it); ``None`` for fp32 programs."""
    from .parity import diagnose_fp16

    if variant.program_precision != "fp16":
        return None
    package = session.package(family, component, "fp16").path
    try:
        return diagnose_fp16(package, feeds)
    except Exception as e:  # the failure itself must still be reported
        return f"(trace diagnosis failed: {type(e).__name__}: {e})"


@dataclass
class ClipParity:
    """One component's clip check on one variant: every output against its declared bound, the task metric
    against its minimums; ``failure`` is the message a failing check reports (``None`` when it passed)."""

    checks: list
    task: dict
    task_bounds: dict
    task_failures: list
    failure: str | None
    calls: int
    reference: dict = field(repr=False)
    outputs: dict = field(repr=False)

    @property
    def passed(self) -> bool:
        return self.failure is None

    def worst(self):
        from .parity import worst_check

        return worst_check(self.checks)


def clip_parity(session: ParitySession, family, component, variant, model, label: str,
                diagnose_failure: bool = True) -> ClipParity:
    """``model`` (a loaded package, see :meth:`registry.Variant.load`) streamed over the family's clip with the
    component's state carried, against the torch reference: the check of ``test_parity`` and of
    ``coreml-parity export``."""
    from .parity import check_outputs, check_task, failure_message, model_runner, worst_check

    reference = session.torch_clip_stream(family, component)
    got = session.stream_clip(family, component, model_runner(model))
    checks = check_outputs(reference.outputs, got.outputs, component.bounds[variant.program_precision])
    task, task_bounds, task_failures = {}, {}, []
    if component.task is not None:
        task = component.task.measure(reference.outputs, got.outputs)
        task_bounds = dict(component.task.minimums[variant.program_precision])
        task_failures = check_task(task, task_bounds)
    failure = None
    if task_failures or not all(c.passed for c in checks):
        worst = worst_check(checks)
        diagnosis = (diagnose(session, family, component, variant, got.feeds[worst.worst_call or 0])
                     if diagnose_failure else None)
        failure = failure_message(f"{label} (clip, {len(got.feeds)} calls)", checks, task_failures, diagnosis)
    return ClipParity(checks, task, task_bounds, task_failures, failure, len(got.feeds), reference.outputs,
                      got.outputs)


def weight_bytes(package: str | os.PathLike) -> int:
    """Bytes of the package's weight files (what compression shrinks; metadata and the program text excluded)."""
    return sum(f.stat().st_size for f in Path(package).rglob("*.bin") if f.is_file())


@dataclass
class QuantizationFigures:
    """A compressed package streamed over the clip on one variant, scored against the torch module and against the
    uncompressed fp16 package on the same variant (the figures of ``test_quantization``)."""

    outputs: dict  # output -> quality_vs_baseline, quality_vs_torch, psnr_vs_torch_db, psnr_vs_baseline_db
    task: dict
    baseline_task: dict
    weight_bytes: int
    baseline_weight_bytes: int
    primary: str
    baseline_quality_vs_torch: float

    @property
    def compression_ratio(self) -> float | None:
        return self.baseline_weight_bytes / self.weight_bytes if self.weight_bytes else None


def quantization_figures(session: ParitySession, case: ParityCase, package_path, base_path) -> QuantizationFigures:
    from . import metrics

    family, component = case.family, case.component
    torch_out = session.torch_clip_stream(family, component).outputs
    base_out = session.variant_clip_stream(case, base_path)
    got = session.variant_clip_stream(case, package_path)
    outputs = {}
    for name in component.outputs:
        outputs[name] = {
            "quality_vs_baseline": metrics.quality(base_out[name], got[name]),
            "quality_vs_torch": metrics.quality(torch_out[name], got[name]),
            "psnr_vs_torch_db": metrics.psnr(torch_out[name], got[name]),
            "psnr_vs_baseline_db": metrics.psnr(base_out[name], got[name]),
        }
    task = component.task.measure(torch_out, got) if component.task else {}
    base_task = component.task.measure(torch_out, base_out) if component.task else {}
    primary = component.outputs[0]
    return QuantizationFigures(outputs, task, base_task, weight_bytes(package_path), weight_bytes(base_path), primary,
                               metrics.quality(torch_out[primary], base_out[primary]))
