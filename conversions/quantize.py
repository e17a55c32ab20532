"""Named weight-compression strategies for converted Core ML packages, and the per-layer ``mixed`` recipe.

Each strategy is a thin, documented mapping onto ``coremltools.optimize.coreml`` (coremltools 9.0): one or two
calls of ``linear_quantize_weights`` / ``palettize_weights`` / ``prune_weights`` with an ``OptimizationConfig``.
The configuration lives here as a plain dict in the layout of ``OptimizationConfig.from_dict`` and that dict *is*
what gets applied (``from_dict`` builds the coremltools object from it), so :meth:`Strategy.config`, written into
reports and cache keys, cannot drift from what runs.

Why a wrapper at all: coremltools skips what it cannot compress with a log warning (an iOS16 opset, a weight
whose channels a group or block size does not divide, an axis it cannot infer) and hands back a model that may
be partly or entirely the uncompressed baseline. A quality sweep would then report fp16 figures under a
compression label. Here every application is checked on the result: each weight the strategy should compress
is fed by a ``constexpr_*`` op, each excluded one is still a plain ``const``; otherwise
:class:`StrategyNotApplicable` names the strategy, the op, the weight and coremltools' reason.

Strategies (``STRATEGIES``, in this order):

=========================  ======  ==========================================================================
name                       target  coremltools call (``weight_threshold`` 2048 everywhere, coremltools' default)
=========================  ======  ==========================================================================
``int8-per-channel``       iOS17   linear_quantize_weights: mode ``linear`` (affine, zero point), int8, per
                                   output channel
``int8-per-tensor``        iOS17   linear_quantize_weights: ``linear_symmetric``, int8, one scale per tensor
``palettize-{4,6,8}bit``   iOS17   palettize_weights: k-means, one LUT of 2^n entries per tensor
``palettize-{4,6,8}bit-    iOS18   palettize_weights: k-means, one LUT per group of 16 output channels
grouped``
``int4-per-block``         iOS18   linear_quantize_weights: ``linear_symmetric``, int4, one scale per block of
                                   32 input channels (per output channel)
``prune50-int8``           iOS18   prune_weights: magnitude, 50 % sparsity; then linear_quantize_weights
                                   (``linear_symmetric`` int8 per channel) with ``joint_compression=True``
``mixed``                  iOS17   per-layer: a recipe from :func:`sensitivity_recipe` (default candidate
                                   ``palettize-4bit``, hence iOS17; a candidate needing iOS18 needs an iOS18 model)
=========================  ======  ==========================================================================

``weight_threshold``: coremltools' default (a const is compressed only above 2048 elements) is kept: every weight
that matters in the targeted models is far above it (Silero: 49 536 / 65 536 elements), and biases and norms,
which gain nothing and lose precision first, stay below it. The target column is the deployment target the base
package must have; iOS17 is also the project's minimum, and an iOS17 strategy applied to an iOS18 model emits
the iOS18 form of the same compression (``constexpr_blockwise_shift_scale`` instead of
``constexpr_affine_dequantize``).

Determinism: k-means in coremltools 9.0 runs scikit-learn ``KMeans(init="k-means++", n_init=1,
random_state=0)`` (``kmeans1d``, used instead when installed, is an exact dynamic program), so palettizing the
same weights twice gives the same LUT and indices; pruning and linear quantization are closed-form. A recipe
therefore reproduces its model.

``mixed``: :func:`sensitivity_recipe` measures, for each compressible op, the quality with only that op
compressed by the candidate strategy, then compresses them all and, while the quality is below the target,
keeps the most sensitive remaining op in fp16. The JSON recipe records every figure and the final coremltools
config; :func:`apply_recipe` rebuilds the model from the recipe alone; ``STRATEGIES["mixed"].apply(model,
recipe=...)`` does the same.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import numbers
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import atomic_write

MIXED = "mixed"
DEFAULT_WEIGHT_THRESHOLD = 2048  # coremltools 9.0's default in every Op*Config; tests pin the equality
GROUP_SIZE = 16
BLOCK_SIZE = 32
RECIPE_FORMAT = 1
METADATA_PREFIX = "coreml_parity."  # the export module's prefix for the package metadata this module adds
_FLOAT_DTYPES = ("fp16", "fp32")


class StrategyNotApplicable(ValueError):
    """A strategy that coremltools cannot apply to this model, or that would leave a weight uncompressed.

    ``strategy``, ``op`` (the consuming op, ``None`` when not known) and ``reason`` are kept as attributes so
    a caller can report or skip precisely."""

    def __init__(self, strategy: str, reason: str, op: str | None = None):
        self.strategy, self.reason, self.op = strategy, reason, op
        where = f" to op {op!r}" if op else ""
        super().__init__(f"compression strategy {strategy!r} cannot be applied{where}: {reason}")


# ---- strategies ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One coremltools call: ``coremltools.optimize.coreml.<function>(model, config, joint_compression)``
    with ``config`` built from ``config_type`` and ``params`` (the global op config)."""

    function: str  # linear_quantize_weights | palettize_weights | prune_weights
    config_type: str  # OpLinearQuantizerConfig | OpPalettizerConfig | OpMagnitudePrunerConfig
    params: tuple[tuple[str, Any], ...]
    joint_compression: bool = False

    def as_dict(self, exclude_ops: Collection[str] = (), only_ops: Collection[str] | None = None) -> dict:
        """The step in the ``OptimizationConfig.from_dict`` layout. ``only_ops``: compress just these ops (by
        name, no global config); otherwise every op above the threshold except ``exclude_ops`` (name -> None)."""
        params = dict(self.params)
        if only_ops is None:
            config = {"config_type": self.config_type, "global_config": params,
                      "op_name_configs": {name: None for name in exclude_ops}}
        else:
            config = {"config_type": self.config_type, "global_config": None,
                      "op_name_configs": {**{name: dict(params) for name in only_ops},
                                          **{name: None for name in exclude_ops}}}
        return {"function": self.function, "joint_compression": self.joint_compression, "config": config}


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str  # one line for reports and the README
    min_target: str  # the deployment target the base package must have: "iOS17" or "iOS18"
    steps: tuple[Step, ...] = ()  # empty for ``mixed``: its steps come from a recipe

    def config(self, exclude_ops: Collection[str] = ()) -> dict:
        """JSON-able description: the coremltools calls and their ``OptimizationConfig`` dicts (from_dict layout).
        For ``mixed`` the per-op config is decided by a recipe; this describes the method."""
        exclude = sorted(_names("exclude_ops", exclude_ops))
        if self.name == MIXED:
            return {"strategy": self.name, "min_target": self.min_target, "exclude_ops": exclude,
                    "method": "per-op sensitivity (conversions.quantize.sensitivity_recipe); the recipe holds the "
                              "coremltools config", "steps": None}
        return {"strategy": self.name, "min_target": self.min_target,
                "steps": [step.as_dict(exclude) for step in self.steps]}

    def apply(self, mlmodel, exclude_ops: Collection[str] = (), *, recipe: Mapping | None = None,
              skip_unsupported: bool = False):
        """Compress ``mlmodel`` (a ``ct.models.MLModel`` ML Program or a ``.mlpackage`` path); returns a new MLModel.

        ``exclude_ops``: names of ops or of their const weights that stay uncompressed. ``recipe``: required by
        ``mixed`` (from :func:`sensitivity_recipe` / :func:`load_recipe`), refused by the others.
        ``skip_unsupported``: leave the weights coremltools cannot compress in fp16 instead of raising (they are
        listed in the result's ``coreml_parity.compression_uncompressed`` metadata); a result without any
        compressed weight still raises.
        """
        exclude = _names("exclude_ops", exclude_ops)
        if self.name == MIXED:
            if recipe is None:
                raise ValueError("strategy 'mixed' needs recipe=... (build one with sensitivity_recipe(), or "
                                 "load_recipe(path))")
            _check_recipe(recipe)
            overlap = sorted(exclude & set(recipe["compressed"]))
            if overlap:
                raise ValueError(f"exclude_ops {overlap} are compressed by the recipe; rebuild the recipe with "
                                 f"exclude_ops={sorted(exclude)}")
            return apply_recipe(mlmodel, recipe)
        if recipe is not None:
            raise ValueError(f"recipe applies to strategy 'mixed' only, not {self.name!r}")
        return _compress(mlmodel, self.name, self.min_target, [s.as_dict(exclude) for s in self.steps],
                         exclude=exclude, only=None, skip_unsupported=skip_unsupported)


def _linear(mode: str, dtype: str, granularity: str, **extra) -> Step:
    return Step("linear_quantize_weights", "OpLinearQuantizerConfig",
                tuple({"mode": mode, "dtype": dtype, "granularity": granularity, **extra,
                       "weight_threshold": DEFAULT_WEIGHT_THRESHOLD}.items()))


GROUPED_PALETTIZATION = ("palettize-4bit-grouped", "palettize-6bit-grouped", "palettize-8bit-grouped")


def not_applicable(component: str, strategies, why: str) -> dict[tuple[str, str], str]:
    """``ModelFamily.inapplicable`` entries: each of ``strategies`` cannot apply to ``component``, because ``why``
    (e.g. ``not_applicable("decoder", GROUPED_PALETTIZATION, "rows not divisible by the group size 16")``)."""
    return {(component, strategy): why for strategy in strategies}


def _palettize(nbits: int, grouped: bool) -> Step:
    granularity = {"granularity": "per_grouped_channel", "group_size": GROUP_SIZE} if grouped else \
        {"granularity": "per_tensor"}
    return Step("palettize_weights", "OpPalettizerConfig",
                tuple({"mode": "kmeans", "nbits": nbits, **granularity,
                       "weight_threshold": DEFAULT_WEIGHT_THRESHOLD}.items()))


def _strategies() -> dict[str, Strategy]:
    table = [
        Strategy("int8-per-channel", "int8 affine (scale + zero point) per output channel", "iOS17",
                 (_linear("linear", "int8", "per_channel"),)),
        Strategy("int8-per-tensor", "int8 symmetric, one scale per weight tensor", "iOS17",
                 (_linear("linear_symmetric", "int8", "per_tensor"),)),
    ]
    table += [Strategy(f"palettize-{n}bit", f"k-means palettization, {2 ** n}-entry LUT per tensor", "iOS17",
                       (_palettize(n, grouped=False),)) for n in (4, 6, 8)]
    table += [Strategy(f"palettize-{n}bit-grouped",
                       f"k-means palettization, {2 ** n}-entry LUT per {GROUP_SIZE} output channels", "iOS18",
                       (_palettize(n, grouped=True),)) for n in (4, 6, 8)]
    table += [
        Strategy("int4-per-block", f"int4 symmetric, one scale per block of {BLOCK_SIZE} input channels", "iOS18",
                 (_linear("linear_symmetric", "int4", "per_block", block_size=BLOCK_SIZE),)),
        Strategy("prune50-int8", "50% magnitude pruning, nonzeros int8 symmetric per channel (joint)", "iOS18",
                 (Step("prune_weights", "OpMagnitudePrunerConfig",
                       (("target_sparsity", 0.5), ("weight_threshold", DEFAULT_WEIGHT_THRESHOLD))),
                  _with_joint(_linear("linear_symmetric", "int8", "per_channel")))),
        Strategy(MIXED, "per-layer: the candidate strategy where the quality allows, fp16 elsewhere (recipe)",
                 "iOS17"),
    ]
    return {s.name: s for s in table}


def _with_joint(step: Step) -> Step:
    return Step(step.function, step.config_type, step.params, joint_compression=True)


STRATEGIES: dict[str, Strategy] = _strategies()


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown compression strategy {name!r}; known: {list(STRATEGIES)}") from None


# ---- what can be compressed ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _WeightUse:
    """A const weight bound to an input of a (non-const) op: what coremltools compresses."""

    op: str
    op_type: str
    input: str
    index: int
    const: str
    shape: tuple[int, ...]


def _weight_uses(function, weight_threshold: int) -> list[_WeightUse]:
    """In program order, the float const inputs of rank >= 2 and more than ``weight_threshold`` elements — the
    same rule as coremltools' compression passes (they skip rank <= 1 consts and those at or below the
    threshold). Consts already feeding ``constexpr_*`` ops are parts of a compressed weight, not weights."""
    consts = {op.outputs[0].name: op for op in function.operations if op.op_type == "const"}
    uses = []
    for op in function.operations:
        if op.op_type == "const" or op.op_type.startswith("constexpr_"):
            continue
        for key, bindings in op.inputs.items():
            for i, binding in enumerate(bindings):
                const = consts.get(binding.var) if binding.var else None
                vtype = const.outputs[0].type if const else None
                shape = getattr(vtype, "shape", None)
                if (const is None or getattr(vtype, "dtype", None) not in _FLOAT_DTYPES or shape is None
                        or None in shape or len(shape) < 2 or math.prod(shape) <= weight_threshold):
                    continue
                uses.append(_WeightUse(op.name, op.op_type, key, i, const.name, tuple(shape)))
    return uses


def compressible_ops(mlmodel, weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD) -> list[str]:
    """Names of the ops (conv, linear, matmul, lstm, ...) with a const weight that a strategy would compress,
    in program order. ``mlmodel``: an MLModel or a package path. Ops inside nested blocks are not listed."""
    if isinstance(weight_threshold, bool) or not isinstance(weight_threshold, int) or weight_threshold < 0:
        raise ValueError(f"weight_threshold must be a non-negative int, got {weight_threshold!r}")
    names: list[str] = []
    for use in _weight_uses(_function(mlmodel), weight_threshold):
        if use.op not in names:
            names.append(use.op)
    return names


def _function(mlmodel):
    from .runtime import load_model

    return load_model(mlmodel, backend="mil").function


# ---- applying and checking -------------------------------------------------------------------------------
def _names(argument: str, names: Collection[str]) -> set[str]:
    if isinstance(names, str):
        raise ValueError(f"{argument} must be a collection of op names, got the string {names!r}")
    out = set(names)
    bad = [n for n in out if not isinstance(n, str) or not n]
    if bad:
        raise ValueError(f"{argument} must hold non-empty op names (str), got {bad!r}")
    return out


def _as_mlmodel(mlmodel):
    import coremltools as ct

    if isinstance(mlmodel, (str, os.PathLike)):
        return ct.models.MLModel(str(mlmodel), skip_model_load=True)
    if not hasattr(mlmodel, "get_spec"):
        raise ValueError(f"mlmodel must be a ct.models.MLModel or a .mlpackage path, got {type(mlmodel).__name__}")
    return mlmodel


def model_target(mlmodel) -> str:
    """The deployment target of an MLModel, from its specification version (8 -> iOS17, 9 -> iOS18)."""
    import coremltools as ct

    version = _as_mlmodel(mlmodel).get_spec().specificationVersion
    try:
        return ct.target(version).name
    except ValueError:
        return f"specification version {version}"


def _check_target(label: str, min_target: str, mlmodel) -> None:
    import coremltools as ct

    if min_target not in ct.target.__members__:
        raise ValueError(f"min_target must name a coremltools target ({list(ct.target.__members__)}), got {min_target!r}")
    have = mlmodel.get_spec().specificationVersion
    if have < ct.target[min_target].value:
        raise StrategyNotApplicable(
            label, f"it needs deployment target {min_target} or later, the model targets {model_target(mlmodel)} "
                   f"(specification version {have}); re-convert it with target={min_target!r}")


class _Warnings(logging.Handler):
    """Collects coremltools' log warnings during a call: that is where it says why it skipped a weight."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _run_step(mlmodel, step: dict, label: str):
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig.from_dict(copy.deepcopy(step["config"]))
    function = getattr(cto, step["function"])
    # coremltools logs on its own logger and, in optimize/_utils.py, on the root logger; the first propagates to
    # the second, so the root sees both.
    logger = logging.getLogger()
    handler = _Warnings()
    logger.addHandler(handler)
    try:
        result = function(mlmodel, config, joint_compression=step["joint_compression"])
    except Exception as e:  # coremltools raises ValueError / NotImplementedError / AssertionError alike
        raise StrategyNotApplicable(label, f"coremltools {step['function']} failed: {e}") from e
    finally:
        logger.removeHandler(handler)
    return result, handler.messages


def _compress(mlmodel, label: str, min_target: str, steps: list[dict], *, exclude: set[str],
              only: set[str] | None, skip_unsupported: bool = False):
    """Apply ``steps`` (from_dict layouts) and check the result: the weights of ``only`` (or of every op but
    ``exclude``) are fed by constexpr ops, all others are still plain consts."""
    mlmodel = _as_mlmodel(mlmodel)
    _check_target(label, min_target, mlmodel)
    before = _function(mlmodel)
    known = {op.name for op in before.operations}
    unknown = sorted((exclude | (only or set())) - known)
    if unknown:
        raise ValueError(f"op names {unknown} are not in the model (strategy {label!r}); "
                         f"compressible ops: {compressible_ops(mlmodel)}")
    uses = _weight_uses(before, DEFAULT_WEIGHT_THRESHOLD)
    if only is None:
        wanted = [u for u in uses if u.op not in exclude and u.const not in exclude]
    else:
        wanted = [u for u in uses if u.op in only and u.const not in exclude]
    if not wanted:
        raise StrategyNotApplicable(label, f"no weight above {DEFAULT_WEIGHT_THRESHOLD} elements is left to compress "
                                           f"(exclude_ops={sorted(exclude)}, ops={compressible_ops(mlmodel)})")

    applied = _exact_percentiles(steps, before, wanted)
    messages: list[str] = []
    result = mlmodel
    for step in applied:
        result, said = _run_step(result, step, label)
        messages += said

    after = _function(result)
    producers = {var.name: op for op in after.operations for var in op.outputs}
    ops_after = {op.name: op for op in after.operations}
    skipped, leaked = [], []
    for use in uses:
        op = ops_after.get(use.op)
        if op is None or len(op.inputs.get(use.input, ())) <= use.index:
            raise StrategyNotApplicable(label, f"op {use.op!r} (input {use.input!r}) is missing from the compressed "
                                               f"program", op=use.op)
        producer = producers.get(op.inputs[use.input][use.index].var)
        compressed = producer is not None and producer.op_type.startswith("constexpr_")
        if use in wanted and not compressed:
            skipped.append(use)
        elif use not in wanted and compressed:
            leaked.append(use)
    if leaked:
        u = leaked[0]
        raise RuntimeError(f"strategy {label!r} compressed weight {u.const!r} of op {u.op!r}, which it must leave "
                           f"uncompressed (coremltools ignored op_name_configs={{{u.op!r}: None}}?)")
    if skipped and (not skip_unsupported or len(skipped) == len(wanted)):
        u = skipped[0]
        more = "".join(f"; also left uncompressed: {o.const!r} of op {o.op!r}" for o in skipped[1:])
        raise StrategyNotApplicable(
            label, f"coremltools left its weight {u.const!r} {list(u.shape)} ({u.input}) uncompressed: "
                   f"{_reason(u, uses, messages)}{more}", op=u.op)
    _check_sparsity(label, steps, after, producers, [u for u in wanted if u not in skipped])
    if not any(op.op_type.startswith("constexpr_") for op in after.operations):
        raise StrategyNotApplicable(label, "the result holds no constexpr op: nothing was compressed")
    _record(result, label, applied, sorted({u.op for u in skipped}))
    return result


# numpy 2 computes np.percentile's interpolation index in the array's dtype: on an fp16 array of more than 65504
# elements it overflows and the percentile is NaN. coremltools' magnitude pruner takes the percentile of |w| in
# the weight's dtype, so such a weight (Silero's LSTM: 512 x 128 = 65536) is "pruned" with a NaN threshold:
# nothing is zeroed, yet it is stored sparse. For those weights the step gets the same rule (|w| <= the
# percentile -> 0), with the percentile computed in float64, as a threshold pruner keyed by the const's name.
_FP16_PERCENTILE_LIMIT = 65504


def _magnitude_config(config: dict, use: _WeightUse) -> dict | None:
    """The magnitude-pruner params a from_dict config applies to ``use`` (None: not pruned that way)."""
    names = config["op_name_configs"] or {}
    for key in (use.const, use.op):
        if key in names:
            entry = names[key]
            break
    else:
        entry = config["global_config"]
    if entry is None or entry.get("config_type", config["config_type"]) != "OpMagnitudePrunerConfig":
        return None
    if entry.get("target_sparsity") is None or entry.get("block_size") or entry.get("n_m_ratio"):
        return None
    return entry


def _exact_percentiles(steps: list[dict], function, wanted: list[_WeightUse]) -> list[dict]:
    import numpy as np

    consts = {op.name: op for op in function.operations if op.op_type == "const"}
    steps = copy.deepcopy(steps)
    for step in steps:
        if step["function"] != "prune_weights":
            continue
        config = step["config"]
        for use in wanted:
            params = _magnitude_config(config, use)
            value = np.asarray(consts[use.const].inputs["val"][0].value)
            if params is None or value.dtype != np.float16 or value.size <= _FP16_PERCENTILE_LIMIT:
                continue
            threshold = float(np.percentile(np.abs(value.astype(np.float64)), 100 * params["target_sparsity"]))
            config["op_name_configs"] = {**(config["op_name_configs"] or {}), use.const: {
                "config_type": "OpThresholdPrunerConfig", "threshold": threshold, "minimum_sparsity_percentile": 0.0,
                "weight_threshold": params.get("weight_threshold", DEFAULT_WEIGHT_THRESHOLD)}}
    return steps


def _check_sparsity(label: str, steps: list[dict], after, producers: dict, compressed: list[_WeightUse]) -> None:
    """Each weight a magnitude-pruning step covers (``steps`` as declared, before :func:`_exact_percentiles`)
    holds at most (1 - target_sparsity) nonzeros, 1 % slack for ties at the threshold."""
    ops = {op.name: op for op in after.operations}
    for step in steps:
        if step["function"] != "prune_weights":
            continue
        for use in compressed:
            params = _magnitude_config(step["config"], use)
            if params is None:
                continue
            target = params["target_sparsity"]
            nonzeros = _nonzero_count(ops[use.op], use, producers)
            sparsity = 1 - nonzeros / math.prod(use.shape) if nonzeros is not None else None
            if sparsity is None or sparsity < target - 0.01:
                raise StrategyNotApplicable(
                    label, f"weight {use.const!r} {list(use.shape)} came out with sparsity "
                           f"{'unknown' if sparsity is None else f'{sparsity:.4f}'}, target {target}", op=use.op)


def _nonzero_count(op, use: _WeightUse, producers: dict) -> int | None:
    """Length of the nonzero data of the ``constexpr_sparse_to_dense`` feeding ``use`` (None if there is none)."""
    producer = producers.get(op.inputs[use.input][use.index].var)
    if producer is None or producer.op_type != "constexpr_sparse_to_dense":
        return None
    binding = producer.inputs["nonzero_data"][0]
    source = producers.get(binding.var) if binding.var else None
    vtype = next((v.type for v in source.outputs if v.name == binding.var), None) if source else binding.type
    shape = getattr(vtype, "shape", None)
    return shape[0] if shape and shape[0] is not None else None


def _reason(use: _WeightUse, uses: list[_WeightUse], messages: list[str]) -> str:
    """coremltools' warnings about this weight. Its generic warnings (e.g. "dim size 40 is not divisible by block
    size 32") name no weight but come right before the one naming the weight it skips, so they go with it."""
    reasons: dict[str, list[str]] = {}
    pending: list[str] = []
    for message in messages:
        named = [u.const for u in uses if u.const in message]
        if not named:
            pending.append(message)
            continue
        for const in named:
            reasons.setdefault(const, []).extend(pending + [message])
        pending = []
    said = list(dict.fromkeys(reasons.get(use.const) or pending))
    return " | ".join(said) if said else "coremltools skipped it without a warning"


def _record(mlmodel, label: str, steps: list[dict], uncompressed: list[str]) -> None:
    meta = mlmodel.user_defined_metadata
    meta[METADATA_PREFIX + "compression_strategy"] = label
    meta[METADATA_PREFIX + "compression_config"] = json.dumps(steps, sort_keys=True)
    meta[METADATA_PREFIX + "compression_uncompressed"] = json.dumps(uncompressed)


# ---- mixed: per-layer sensitivity -----------------------------------------------------------------------
def _quality(evaluate: Callable[[object], float], model, what: str) -> float:
    value = evaluate(model)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"evaluate() must return a finite float quality, got {value!r} for {what}")
    return float(value)


def sensitivity_recipe(mlmodel, evaluate: Callable[[object], float], *, candidate: str = "palettize-4bit",
                       target_quality: float, exclude_ops: Collection[str] = ()) -> dict:
    """Decide per op whether ``candidate`` compresses it, keeping ``evaluate(model) >= target_quality``.

    ``evaluate(compressed MLModel) -> quality``: higher is better, 1.0 = identical to ``mlmodel``. Evaluations:
    one per compressible op (that op alone compressed), one with all compressed, one more per op kept in fp16
    (most sensitive first: lowest quality alone, program order on ties). Raises :class:`StrategyNotApplicable`
    if even one op compressed misses the target. Returns the JSON-able recipe for :func:`apply_recipe`.
    """
    import coremltools as ct

    strategy = get_strategy(candidate)
    if strategy.name == MIXED:
        raise ValueError("candidate must be a single strategy, not 'mixed'")
    if isinstance(target_quality, bool) or not isinstance(target_quality, numbers.Real) \
            or not math.isfinite(target_quality) or target_quality > 1:
        raise ValueError(f"target_quality must be a finite number <= 1, got {target_quality!r}")
    if not callable(evaluate):
        raise ValueError(f"evaluate must be callable, got {type(evaluate).__name__}")
    mlmodel = _as_mlmodel(mlmodel)
    exclude = _names("exclude_ops", exclude_ops)
    label = f"{MIXED}({candidate})"
    _check_target(label, strategy.min_target, mlmodel)
    ops: list[str] = []
    for use in _weight_uses(_function(mlmodel), DEFAULT_WEIGHT_THRESHOLD):
        if use.op not in exclude and use.const not in exclude and use.op not in ops:
            ops.append(use.op)
    if not ops:
        raise StrategyNotApplicable(label, f"no compressible op is left (exclude_ops={sorted(exclude)})")

    def compressed(only: list[str]):
        steps = [step.as_dict(sorted(exclude), only_ops=only) for step in strategy.steps]
        return _compress(mlmodel, label, strategy.min_target, steps, exclude=exclude, only=set(only)), steps

    alone = {name: _quality(evaluate, compressed([name])[0], f"op {name!r} alone") for name in ops}
    # Most sensitive first; ties keep program order (sorted is stable).
    by_sensitivity = sorted(ops, key=lambda name: alone[name])
    kept: list[str] = []
    history = []
    while True:
        remaining = [name for name in ops if name not in kept]
        model, steps = compressed(remaining)
        quality = _quality(evaluate, model, f"ops {remaining}")
        history.append({"kept_fp16": list(kept), "quality": quality})
        if quality >= target_quality:
            break
        if len(remaining) == 1:
            raise StrategyNotApplicable(
                label, f"no op can be compressed while keeping quality >= {target_quality}: quality with one op "
                       f"compressed is {quality:.6g}; per-op quality alone {alone}")
        kept.append(next(name for name in by_sensitivity if name not in kept))

    return {
        "format": RECIPE_FORMAT,
        "strategy": MIXED,
        "candidate": candidate,
        "min_target": strategy.min_target,
        "target_quality": float(target_quality),
        "weight_threshold": DEFAULT_WEIGHT_THRESHOLD,
        "exclude_ops": sorted(exclude),
        "quality_alone": alone,
        "kept_fp16": kept,
        "compressed": remaining,
        "quality": quality,
        "history": history,
        "config": {"strategy": MIXED, "candidate": candidate, "min_target": strategy.min_target, "steps": steps},
        "coremltools_version": ct.__version__,
    }


_RECIPE_KEYS = {"format": int, "strategy": str, "candidate": str, "min_target": str, "target_quality": (int, float),
                "exclude_ops": list, "quality_alone": dict, "kept_fp16": list, "compressed": list,
                "quality": (int, float), "config": dict}


def _check_recipe(recipe) -> None:
    if not isinstance(recipe, Mapping):
        raise ValueError(f"recipe must be a dict (from sensitivity_recipe or load_recipe), got {type(recipe).__name__}")
    for key, kind in _RECIPE_KEYS.items():
        if key not in recipe:
            raise ValueError(f"recipe has no {key!r} entry; keys: {sorted(recipe)}")
        if not isinstance(recipe[key], kind) or isinstance(recipe[key], bool):
            raise ValueError(f"recipe[{key!r}] must be {kind}, got {type(recipe[key]).__name__}")
    if recipe["format"] != RECIPE_FORMAT or recipe["strategy"] != MIXED:
        raise ValueError(f"recipe format {recipe['format']!r} / strategy {recipe['strategy']!r} is not a format-"
                         f"{RECIPE_FORMAT} {MIXED!r} recipe")
    steps = recipe["config"].get("steps")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) and {"function", "joint_compression",
                                                                                     "config"} <= set(s) for s in steps):
        raise ValueError("recipe['config']['steps'] must be a non-empty list of {function, joint_compression, config}")


def apply_recipe(mlmodel, recipe: Mapping):
    """The model compressed as ``recipe`` says, from the recipe alone (its coremltools config), checked like
    every strategy: the recipe's ``compressed`` ops are fed by constexpr ops, every other weight is not."""
    _check_recipe(recipe)
    label = f"{MIXED}({recipe['candidate']})"
    return _compress(mlmodel, label, recipe["min_target"], copy.deepcopy(recipe["config"]["steps"]),
                     exclude=set(recipe["exclude_ops"]), only=set(recipe["compressed"]))


def save_recipe(recipe: Mapping, path: str | os.PathLike) -> Path:
    """Write ``recipe`` as JSON atomically (:func:`conversions.files.atomic_write`)."""
    _check_recipe(recipe)
    path = Path(path)
    text = json.dumps(recipe, indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    return path


def load_recipe(path: str | os.PathLike) -> dict:
    recipe = json.loads(Path(path).read_text(encoding="utf-8"))
    _check_recipe(recipe)
    return recipe
