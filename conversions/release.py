"""``coreml-parity export``: validated Core ML packages out of the suite, with their evidence.

    coreml-parity export silero-vad --strategy palettize-8bit --out dist/silero-vad
    coreml-parity export kokoro --components bucket-5s --precision fp16 --out dist/kokoro

Each selected component is exported through the suite's cache (the same key, so a package the suite already checked
is reused), then checked exactly as the suite checks it (:mod:`conversions.engine`: one copy of each check) on every
variant of the requested precision that runs here (the portable runtime everywhere, Apple's Core ML on macOS):

- an fp16 / fp32 package: the clip check of ``test_parity`` (each output within its declared bound, the task metric
  above its minimums) and, where the suite pinned one, its baseline (``tests/__snapshots__``, ``--baselines``);
- a compressed package (``--strategy``): the figures of ``test_quantization`` against their pinned baseline, and the
  task metric above the fp16 minimums the family declares (a component with neither cannot be validated, and is
  not written); ``--recipe`` (a mixed recipe of :func:`conversions.quantize.sensitivity_recipe`): the task metric
  and the quality vs the fp16 package the recipe was made for.

Only what passes is written into the release directory (``--out``)::

    DIR/release.json              the manifest (written last): source, versions, clip, checks ran, sha256 of files
    DIR/README.md                 the model card (conversions.model_card)
    DIR/<component>/<family>-<component>-<precision|strategy>.mlpackage
    DIR/<component>/<...>.mlmodelc (macOS: coremltools.utils.compile_model)
    DIR/<component>/metadata.json inputs/outputs, precision, target, compression, figures vs bounds per backend

A failing component is left out and named with its worst figure; the command then exits 1 and ``release.json`` says
``"passed": false`` (``coreml-parity publish`` refuses it). The directory is built beside ``--out`` and renamed into
place at the end: an interrupted export leaves no half-written release.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import registry
from .files import sha256_file

RELEASE_FORMAT = 1
MANIFEST = "release.json"
CARD = "README.md"
DEFAULT_BASELINES = Path("tests") / "__snapshots__"


class ReleaseError(ValueError):
    """A usage error of ``export`` (unknown family or component, impossible option combination, ...)."""


@dataclass
class ComponentResult:
    component: str
    passed: bool
    checks: list[dict] = field(default_factory=list)
    failure: str | None = None  # one line: why it was not written (worst figure, or why it could not be checked)
    metadata: dict | None = None


# ---- progress -----------------------------------------------------------------------------------------------------
def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Progress:
    """A loaded model whose ``predict`` advances a progress bar (tqdm on stderr, as coremltools' own bars)."""

    def __init__(self, model, total: int, label: str):
        from tqdm.auto import tqdm

        self._model = model
        self._bar = tqdm(total=total, desc=label, unit="call", file=sys.stderr, leave=True, dynamic_ncols=True)

    def predict(self, feeds):
        out = self._model.predict(feeds)
        self._bar.update(1)
        return out

    def close(self) -> None:
        self._bar.close()


# ---- what is checked --------------------------------------------------------------------------------------------
def _variants(precision: str, backend: str | None) -> list[registry.Variant]:
    from .runtime import coreml_available

    variants = [v for v in registry.select_variants(backend) if v.program_precision == precision]
    runnable = [v for v in variants if v.backend == "mil" or coreml_available()]
    if not runnable:
        raise ReleaseError(f"no variant of precision {precision} can run here (--backend {backend!r}; Apple's Core ML "
                           f"runs on macOS only): nothing would be checked")
    return runnable


def _outputs_table(checks) -> dict:
    return {c.name: {"metrics": {k: _jsonable(v) for k, v in c.metrics.items()}, "bound": _jsonable(c.bound.as_dict())}
            for c in checks}


def _jsonable(value):
    """Plain JSON values: numpy scalars to Python, non-finite floats as the strings "inf", "-inf", "nan"."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if np.isnan(value):
            return "nan"
        if np.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    return value


def _baseline(baselines: Path | None, family, variant, entry: str, metrics) -> dict | None:
    from .snapshots import compare_with_baseline

    if baselines is None:
        return None
    found = compare_with_baseline(baselines, family=family.name, backend_family=variant.baseline_family, entry=entry,
                                  metrics=metrics)
    if not found.found:
        return None
    return {"file": str(found.path), "entry": entry, "failures": found.failures}


def _check_plain(session, family, component, package, variant, baselines) -> dict:
    """The clip check of ``test_parity`` on one variant, and its pinned baseline."""
    from .engine import clip_parity
    from .parity import pinned_parity_metrics

    label = f"{family.name}/{component.name}/{variant.id}"
    model = _Progress(variant.load(package.path), len(session.clip_feeds(family, component)), f"parity {label}")
    try:
        result = clip_parity(session, family, component, variant, model, label)
    finally:
        model.close()
    baseline = _baseline(baselines, family, variant, f"test_parity[{label}]",
                         pinned_parity_metrics(result.checks, result.task, component.task))
    failure = None
    if not result.passed:
        worst = result.worst()
        failure = (f"{worst.describe()}" if not worst.passed else
                   f"task metric below its minimum: {'; '.join(result.task_failures)}")
    elif baseline and baseline["failures"]:
        failure = f"worse than its pinned baseline: {baseline['failures'][0]}"
    return {"variant": variant.id, "backend": variant.backend, "compute_units": variant.compute_units,
            "kind": "clip", "calls": result.calls, "passed": failure is None,
            "outputs": _outputs_table(result.checks), "task": _jsonable(result.task),
            "task_bounds": _jsonable(result.task_bounds), "baseline": baseline, "failure": failure,
            "message": result.failure}


def _check_compressed(session, family, component, package, base, variant, baselines, *, strategy: str | None,
                      recipe: dict | None) -> dict:
    """The figures of ``test_quantization`` on one variant, against the pinned baseline and the task minimums (for
    a recipe: against the quality it was made for)."""
    from .engine import ParityCase, quantization_figures
    from .parity import check_task, pinned_quantization_metrics

    case = ParityCase(family, component, variant)
    label = f"{family.name}/{component.name}/{strategy or 'recipe'}/{variant.id}"
    _say(f"scoring {label} against torch and the fp16 package (clip streams)")
    figures = quantization_figures(session, case, package.path, base.path)
    problems = []
    task_bounds = dict(component.task.minimums["fp16"]) if component.task is not None else {}
    problems += [f"task metric {line}" for line in check_task(figures.task, task_bounds)] if task_bounds else []
    baseline = None
    if strategy is not None:
        baseline = _baseline(baselines, family, variant, f"test_quantization[{label}]",
                             pinned_quantization_metrics(figures.outputs, figures.weight_bytes, figures.task,
                                                         component.task))
        if baseline:
            problems += [f"worse than its pinned baseline: {line}" for line in baseline["failures"]]
        elif not task_bounds:
            where = baselines if baselines is not None else "(no --baselines)"
            problems.append(f"cannot be validated: no task metric, and no baseline pinned for test_quantization[{label}] "
                            f"in {where} (run the suite's sweep and pin it first)")
    else:
        quality = figures.outputs[figures.primary]["quality_vs_baseline"]
        if quality < recipe["target_quality"]:
            problems.append(f"{figures.primary} quality vs the fp16 package {quality:.6g} < the recipe's target "
                            f"{recipe['target_quality']}")
    return {"variant": variant.id, "backend": variant.backend, "compute_units": variant.compute_units,
            "kind": "quantization", "passed": not problems, "outputs": _jsonable(figures.outputs),
            "task": _jsonable(figures.task), "task_bounds": _jsonable(task_bounds),
            "baseline_task": _jsonable(figures.baseline_task), "baseline": baseline,
            "weight_bytes": figures.weight_bytes, "baseline_weight_bytes": figures.baseline_weight_bytes,
            "failure": problems[0] if problems else None, "problems": problems}


# ---- one component ------------------------------------------------------------------------------------------------
def _recipe_package(session, family, component, recipe: dict, recipe_path: Path):
    """The component's fp16 conversion compressed as ``recipe`` says, cached like the sweep's packages."""
    from . import quantize
    from .engine import _stamped
    from .export import export_key, file_digest

    model, weights = session.reference(family)
    options = {"family": family.name, "component": component.name, "precision": "fp16",
               "target": recipe["min_target"], "recipe": sha256_file(recipe_path),
               "quantize_source": file_digest(quantize.__file__)}
    key = export_key(component.convert, weights, options)
    base = session.package(family, component, "fp16", recipe["min_target"])

    def build():
        mlmodel = _stamped(component.convert(model, "fp16", recipe["min_target"]), family, component)
        return quantize.apply_recipe(mlmodel, recipe)

    return session.cache.get_or_export(f"{family.name}-{component.name}-recipe", key, build), base


def _spec(spec) -> dict:
    return {"name": spec.name, "shape": [int(d) if isinstance(d, (int, np.integer)) else str(d) for d in spec.shape],
            "dtype": np.dtype(spec.dtype).name}


def _package_metadata(family, component, package, precision: str, compression: dict | None,
                      checks: list[dict], versions: dict) -> dict:
    from .export import package_metadata
    from .runtime import load_model

    loaded = load_model(package.path, backend="mil")
    recorded = package_metadata(package.path)
    return {
        "family": family.name, "component": component.name, "package": None, "compiled": None, "compiled_note": None,
        "inputs": [_spec(s) for s in loaded.inputs], "outputs": [_spec(s) for s in loaded.outputs],
        "state": dict(component.state or {}), "audio_ms_per_call": component.audio_ms_per_call,
        "precision": precision, "compute_precision": recorded.get("compute_precision"),
        "deployment_target": recorded.get("deployment_target"), "compression": compression,
        "size_bytes": package.size_bytes,
        "tool_versions": versions, "checks": checks, "passed": all(c["passed"] for c in checks),
    }


def _compile(package: Path) -> tuple[str | None, str]:
    """``coremltools.utils.compile_model`` on macOS into ``<package stem>.mlmodelc`` beside the package (the
    destination must carry that suffix); on other systems say why there is no compiled model."""
    if sys.platform != "darwin":
        return None, f"not compiled: coremltools.utils.compile_model needs macOS (this is {sys.platform})"
    import coremltools as ct

    destination = package.with_suffix(".mlmodelc")
    compiled = ct.utils.compile_model(str(package), str(destination))
    return Path(compiled).name, f"compiled with coremltools.utils.compile_model (coremltools {ct.__version__})"


def _export_component(session, family, component, args, baselines, recipe, staging: Path, versions: dict,
                      variants) -> ComponentResult:
    from . import quantize

    name = component.name
    strategy = args.strategy
    if strategy and (name, strategy) in family.inapplicable:
        return ComponentResult(name, False, failure=f"{strategy} cannot apply: {family.inapplicable[(name, strategy)]}")
    precision = args.precision
    _say(f"[{name}] exporting ({strategy or ('recipe ' + args.recipe if recipe else precision)}; cached packages are "
         f"reused, each verified against its digest)")
    try:
        if strategy:
            package, _, base, spec, exclude = session.quantized(family, component, strategy)
            compression = {"strategy": strategy, "description": spec.description, "config": spec.config(exclude),
                           "exclude_ops": list(exclude)}
        elif recipe is not None:
            package, base = _recipe_package(session, family, component, recipe, Path(args.recipe))
            compression = {"strategy": "recipe", "description": f"mixed recipe {Path(args.recipe).name} "
                                                               f"({recipe['candidate']}, {len(recipe['kept_fp16'])} "
                                                               "ops kept fp16)",
                           "config": recipe["config"], "exclude_ops": recipe["exclude_ops"]}
        else:
            package, base, compression = session.package(family, component, precision), None, None
    except quantize.StrategyNotApplicable as e:
        return ComponentResult(name, False, failure=str(e))
    _say(f"[{name}] torch reference over the clip ({len(session.clip_feeds(family, component))} calls)")
    session.torch_clip_stream(family, component)
    checks = []
    for variant in variants:
        if compression is None:
            checks.append(_check_plain(session, family, component, package, variant, baselines))
        else:
            checks.append(_check_compressed(session, family, component, package, base, variant, baselines,
                                            strategy=strategy, recipe=recipe))
    if compression is not None:
        first = checks[0]
        compression.update(weight_bytes=first["weight_bytes"], baseline_weight_bytes=first["baseline_weight_bytes"],
                           compression_ratio=(first["baseline_weight_bytes"] / first["weight_bytes"]
                                              if first["weight_bytes"] else None))
    failed = [c for c in checks if not c["passed"]]
    if failed:
        worst = failed[0]
        return ComponentResult(name, False, checks, failure=f"{worst['variant']}: {worst['failure']}")
    metadata = _package_metadata(family, component, package, "fp16" if compression else precision,
                                 _jsonable(compression), checks, versions)
    suffix = strategy or ("recipe" if recipe is not None else precision)
    target_dir = staging / name
    target_dir.mkdir(parents=True)
    package_name = f"{family.name}-{name}-{suffix}.mlpackage"
    shutil.copytree(package.path, target_dir / package_name)
    metadata["package"] = package_name
    metadata["compiled"], metadata["compiled_note"] = _compile(target_dir / package_name)
    (target_dir / "metadata.json").write_text(json.dumps(metadata, indent=2, allow_nan=False) + "\n")
    return ComponentResult(name, True, checks, metadata=metadata)


# ---- the release ---------------------------------------------------------------------------------------------------
def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (POSIX relative paths) except the manifest and the card."""
    digests = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative in (MANIFEST, CARD):
            continue
        digests[relative] = sha256_file(path)
    return digests


def _card_info(family) -> dict:
    """The family's card info; a family configured with a user's checkpoint says so (and names a hub base model)."""
    card = family.card or registry.ModelCardInfo(name=family.name, license="other", license_name="unknown",
                                                 license_link="see the model's source", url="",
                                                 weights="the family declares no model card information")
    if family.source:
        given = ", ".join(f"{k}={v}" for k, v in sorted(family.source.items()))
        hub = next((str(v) for k, v in family.source.items() if k.endswith("model_id")), None)
        card = replace(card, weights=f"a user-given checkpoint ({given})", base_model=hub)
    return card.as_dict()


def _clip_info(family) -> dict:
    path = Path(family.clip_path)
    info = {"path": str(path), "sha256": None, "seconds": None, "sample_rate": None}
    try:
        info["sha256"] = sha256_file(path)
        clip = np.asarray(family.load_clip())
        from .audio import SAMPLE_RATE

        if path.suffix == ".wav":
            info.update(seconds=round(clip.size / SAMPLE_RATE, 3), sample_rate=SAMPLE_RATE)
    except OSError:
        pass
    try:
        info["path"] = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        pass
    return info


def find_family(name: str, option_values: dict) -> registry.ModelFamily:
    try:
        family = registry.find_family(name)
    except KeyError as e:
        raise ReleaseError(e.args[0]) from None
    values = {o.dest: option_values.get(o.dest) for o in family.options}
    try:
        return family.with_options(values)
    except ValueError as e:
        raise ReleaseError(str(e)) from None


def _check_args(family, args) -> tuple[list, dict | None]:
    from . import quantize

    names = [c.name for c in family.components]
    wanted = list(dict.fromkeys(args.components or names))
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ReleaseError(f"{family.name} has no component {', '.join(unknown)}; components: {', '.join(names)}")
    if args.strategy and args.recipe:
        raise ReleaseError("--strategy and --recipe exclude each other")
    if (args.strategy or args.recipe) and args.precision != "fp16":
        raise ReleaseError(f"compression applies to the fp16 package: --precision {args.precision} cannot go with "
                           f"--strategy/--recipe")
    if args.strategy:
        if args.strategy not in quantize.STRATEGIES:
            raise ReleaseError(f"unknown strategy {args.strategy!r}; strategies: {', '.join(quantize.STRATEGIES)}")
        if args.strategy == quantize.MIXED:
            raise ReleaseError(f"{quantize.MIXED!r} searches a recipe per component: export one with --recipe FILE "
                               f"(conversions.quantize.save_recipe), or name a single strategy")
    recipe = None
    if args.recipe:
        if len(wanted) != 1:
            raise ReleaseError("a recipe names the ops of one component: give exactly one --components")
        try:
            recipe = quantize.load_recipe(args.recipe)
        except (OSError, ValueError) as e:
            raise ReleaseError(f"--recipe {args.recipe}: {e}") from None
    return [family.component(n) for n in wanted], recipe


def export_release(args) -> tuple[int, list[ComponentResult]]:
    """Run ``export`` for parsed ``args``; returns (exit code, per-component results)."""
    from .engine import FamilyUnavailable, ParitySession
    from .export import DEFAULT_TARGET
    from .report import run_info

    family = find_family(args.family, vars(args))
    components, recipe = _check_args(family, args)
    out = Path(args.out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not args.force:
        raise ReleaseError(f"--out {out} exists and is not empty (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    baselines = Path(args.baselines) if args.baselines else (DEFAULT_BASELINES if DEFAULT_BASELINES.is_dir() else None)
    if args.baselines and not baselines.is_dir():
        raise ReleaseError(f"--baselines {baselines}: no such directory")
    variants = _variants("fp16" if (args.strategy or recipe) else args.precision, args.backend)
    session = ParitySession(args.export_dir)
    try:
        session.reference(family)
    except FamilyUnavailable as e:
        raise ReleaseError(str(e)) from None
    info = run_info(tools=family.tools)
    versions = {k: v for k, v in info["tool_versions"].items() if v is not None}
    versions["coreml-parity"] = _own_version()

    staging = out.parent / f".tmp-{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        results = [_export_component(session, family, c, args, baselines, recipe, staging, versions, variants)
                   for c in components]
        written = [r.component for r in results if r.passed]
        failed = {r.component: r.failure for r in results if not r.passed}
        release = {
            "format": RELEASE_FORMAT, "family": family.name, "source": _card_info(family),
            "precision": "fp16" if (args.strategy or recipe) else args.precision,
            "strategy": args.strategy, "strategy_description": _strategy_description(args.strategy),
            "recipe": Path(args.recipe).name if recipe is not None else None,
            "deployment_target": DEFAULT_TARGET if not (args.strategy or recipe) else
            (recipe["min_target"] if recipe else _strategy_target(args.strategy)),
            "tool_versions": versions, "clip": _clip_info(family),
            "platform": {k: info["platform"][k] for k in ("system", "machine", "python")},
            "git_commit": info["git_commit"], "git_dirty": info["git_dirty"],
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "backends": [v.id for v in variants], "components": written, "failed_components": failed,
            "passed": not failed and bool(written),
        }
        release["files"] = file_digests(staging)
        if written:
            from .model_card import write_card

            write_card(staging, release=release)
        (staging / MANIFEST).write_text(json.dumps(release, indent=2, allow_nan=False) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.rename(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return (0 if release["passed"] else 1), results


def _strategy_description(name: str | None) -> str | None:
    from . import quantize

    return quantize.get_strategy(name).description if name else None


def _strategy_target(name: str) -> str:
    from . import quantize

    return quantize.get_strategy(name).min_target


def _own_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("coreml-parity")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---- the command line ---------------------------------------------------------------------------------------------
def add_parser(subparsers) -> argparse.ArgumentParser:
    from .export import PRECISIONS

    p = subparsers.add_parser(
        "export", help="export a family's components, check them as the suite does, write only what passes "
                       "(packages, metadata.json, model card)",
        description="Export (through the suite's cache), run the suite's parity checks on the packages, and write "
                    "the ones that pass, with metadata.json per package, a model card (README.md) and release.json "
                    "(digests for publish). Exit 1 names each component left out with its worst figure.")
    p.add_argument("family", help="model family (e.g. silero-vad, parakeet-tdt-v3, parakeet-eou, kokoro)")
    p.add_argument("--components", nargs="+", metavar="NAME", help="components to export (default: all)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16", help="program precision (default fp16)")
    p.add_argument("--strategy", metavar="NAME", help="a compression strategy of the suite's sweep "
                                                      "(e.g. palettize-8bit, int8-per-channel)")
    p.add_argument("--recipe", metavar="FILE", help="a mixed-precision recipe (conversions.quantize.save_recipe)")
    p.add_argument("--out", required=True, metavar="DIR", help="the release directory to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--backend", metavar="LIST", help="narrow the variants checked, as pytest --backend "
                                                    "(default: every variant of the precision that runs here)")
    p.add_argument("--baselines", metavar="DIR", help=f"pinned baselines to hold the figures to (default: "
                                                      f"{DEFAULT_BASELINES} if it exists)")
    p.add_argument("--export-dir", default=".cache/exports", metavar="DIR",
                   help="the export cache (default .cache/exports, shared with pytest)")
    for family in registry.families():
        for option in family.options:
            p.add_argument(option.flag, dest=option.dest, metavar=option.metavar, help=option.help)
    return p


def run(args) -> int:
    try:
        code, results = export_release(args)
    except ReleaseError as e:
        print(f"coreml-parity export: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    for r in results:
        if r.passed:
            meta = r.metadata
            print(f"PASS {r.component}: {out / r.component / meta['package']} "
                  f"({meta['size_bytes'] / 1e6:.1f} MB; {', '.join(c['variant'] for c in r.checks)})")
        else:
            print(f"FAIL {r.component}: not written — {r.failure}")
    written = sum(r.passed for r in results)
    print(f"{written} of {len(results)} components written to {out} (model card {out / CARD}, manifest "
          f"{out / MANIFEST})" if written else f"no component passed; {out / MANIFEST} records the failures")
    return code
