"""Tests of conversions.quantize: the named compression strategies and the per-layer ``mixed`` recipe.

A toy model (conv1d 64->64 k3, an LSTM 64->64, a linear 64x64: four weights of 12 288, 16 384, 16 384 and 4 096
elements, all above coremltools' 2048 threshold) is converted at iOS17 and iOS18 and compressed with every
strategy. The expectations come from outside the code under test:

- the compressed layout each strategy must produce, read from the MIL constexpr op definitions (iOS16 / iOS18
  ``constexpr_*``): LUT sizes 2^n, one LUT per 16 output channels, one scale per output channel or per 32-input
  block, int8 / int4 storage, half the entries pruned;
- the output quality, computed here as 1 - ||ref - x|| / ||ref|| against the uncompressed program, both run on
  the portable runtime (fp16 storage);
- for the mixed recipe, the per-op sensitivity measured with coremltools' own palettizer called directly, and
  the greedy order derived from it here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conversions.export import convert_traced
from conversions.quantize import (
    DEFAULT_WEIGHT_THRESHOLD,
    MIXED,
    STRATEGIES,
    StrategyNotApplicable,
    apply_recipe,
    compressible_ops,
    get_strategy,
    load_recipe,
    save_recipe,
    sensitivity_recipe,
)
from conversions.runtime import load_model

STRATEGY_NAMES = ["int8-per-channel", "int8-per-tensor", "palettize-4bit", "palettize-6bit", "palettize-8bit",
                  "palettize-4bit-grouped", "palettize-6bit-grouped", "palettize-8bit-grouped", "int4-per-block",
                  "prune50-int8"]
IOS18_ONLY = ["palettize-4bit-grouped", "palettize-6bit-grouped", "palettize-8bit-grouped", "int4-per-block",
              "prune50-int8"]
WEIGHT_INPUTS = {"conv": ("weight",), "lstm": ("weight_ih", "weight_hh"), "linear": ("weight",)}

# Quality of the toy model's output vs its uncompressed program (1 = identical). Lower bounds: b-bit codes on
# the uniformly initialised weights leave a relative weight error of about 2^-b (measured: int8 0.996, 8-bit
# LUT 0.997, 6-bit 0.986, 4-bit 0.95, int4 0.94), with margin. Upper bounds prove the weights changed at all;
# pruning half the entries of uniform weights removes 1/8 of their energy (relative error ~0.35, measured
# quality 0.72), so a prune that zeroed nothing (~0.996) fails its upper bound.
QUALITY = {
    "int8-per-channel": (0.99, 0.9999), "int8-per-tensor": (0.99, 0.9999),
    "palettize-4bit": (0.92, 0.99), "palettize-6bit": (0.97, 0.999), "palettize-8bit": (0.99, 0.9999),
    "palettize-4bit-grouped": (0.92, 0.99), "palettize-6bit-grouped": (0.97, 0.999),
    "palettize-8bit-grouped": (0.99, 0.9999), "int4-per-block": (0.90, 0.99), "prune50-int8": (0.6, 0.85),
}


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(64, 64, 3, padding=1)
        self.lstm = torch.nn.LSTM(64, 64, batch_first=True)
        self.fc = torch.nn.Linear(64, 64)

    def forward(self, x):
        h = torch.relu(self.conv(x)).transpose(1, 2)
        h, _ = self.lstm(h)
        return self.fc(h)


class Unsplittable(torch.nn.Module):
    """Weights [40, 72] (40 output channels: no group of 16; 72 inputs: no block of 32) and [64, 40]."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(72, 40)
        self.b = torch.nn.Linear(40, 64)

    def forward(self, x):
        return self.b(self.a(x))


def quality(reference: np.ndarray, candidate: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    return 1.0 - float(np.linalg.norm(reference - np.asarray(candidate, np.float64)) / np.linalg.norm(reference))


def predict(model, x: np.ndarray) -> np.ndarray:
    return load_model(model, backend="mil").predict({"x": x})["y"]


def package_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def weight_producers(model) -> dict[tuple[str, str], object]:
    """(op type, weight input) of the toy's conv / lstm / linear -> the op producing that input."""
    function = load_model(model, backend="mil").function
    producers = {var.name: op for op in function.operations for var in op.outputs}
    found = {}
    for op in function.operations:
        for key in WEIGHT_INPUTS.get(op.op_type, ()):
            found[(op.op_type, key)] = producers[op.inputs[key][0].var]
    return found


def op_names(model) -> dict[str, str]:
    return {op.op_type: op.name for op in load_model(model, backend="mil").function.operations
            if op.op_type in WEIGHT_INPUTS}


def constexpr_args(op, function) -> dict[str, tuple[str, tuple, np.ndarray]]:
    """A constexpr op's arguments as (element type, shape, value), whether inline or from a const op."""
    consts = {o.outputs[0].name: o for o in function.operations if o.op_type == "const"}
    args = {}
    for key, (binding,) in op.inputs.items():
        if binding.var in consts:
            binding = consts[binding.var].inputs["val"][0]
        if binding.var is None:
            args[key] = (binding.type.dtype, tuple(binding.type.shape), np.asarray(binding.value))
    return args


@dataclass
class Base:
    model: object
    out: np.ndarray
    bytes: int


@dataclass
class Compressed:
    model: object
    out: np.ndarray
    quality: float
    size_ratio: float


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return torch.randn(1, 64, 20, generator=torch.Generator().manual_seed(1)).numpy()


@pytest.fixture(scope="module")
def bases(x, tmp_path_factory) -> dict[str, Base]:
    torch.manual_seed(0)
    module = Toy()
    out = {}
    for target in ("iOS17", "iOS18"):
        model = convert_traced(module, {"x": torch.from_numpy(x)}, ("y",), precision="fp16", target=target)
        path = tmp_path_factory.mktemp(f"base-{target}") / "toy.mlpackage"
        model.save(str(path))
        out[target] = Base(model, predict(model, x), package_bytes(path))
    return out


@pytest.fixture(scope="module")
def compressed(bases, x, tmp_path_factory):
    cache: dict[str, Compressed] = {}

    def get(name: str) -> Compressed:
        if name not in cache:
            strategy = get_strategy(name)
            base = bases[strategy.min_target]
            model = strategy.apply(base.model)
            path = tmp_path_factory.mktemp(name) / "toy.mlpackage"
            model.save(str(path))
            out = predict(model, x)
            cache[name] = Compressed(model, out, quality(base.out, out), package_bytes(path) / base.bytes)
        return cache[name]

    return get


# ---- the table ---------------------------------------------------------------------------------------------
def test_strategy_names_targets_and_configs():
    import coremltools.optimize.coreml as cto

    assert list(STRATEGIES) == STRATEGY_NAMES + [MIXED]
    assert {n for n, s in STRATEGIES.items() if s.min_target == "iOS18"} == set(IOS18_ONLY)
    assert STRATEGIES[MIXED].min_target == "iOS17"  # its default candidate, palettize-4bit, is per-tensor
    for name in STRATEGY_NAMES:
        strategy = STRATEGIES[name]
        assert strategy.description and "\n" not in strategy.description
        config = json.loads(json.dumps(strategy.config(["conv_x", "w_y"])))
        assert config["steps"], name
        for step in config["steps"]:
            assert step["config"]["op_name_configs"] == {"conv_x": None, "w_y": None}
            built = cto.OptimizationConfig.from_dict(step["config"])  # what apply() hands to coremltools
            assert built.op_name_configs == {"conv_x": None, "w_y": None}
            assert built.global_config.weight_threshold == DEFAULT_WEIGHT_THRESHOLD
    assert [s["function"] for s in STRATEGIES["prune50-int8"].config()["steps"]] == ["prune_weights",
                                                                                    "linear_quantize_weights"]
    assert [s["joint_compression"] for s in STRATEGIES["prune50-int8"].config()["steps"]] == [False, True]


def test_default_weight_threshold_is_coremltools_default():
    import attrs
    import coremltools.optimize.coreml as cto

    for cls in (cto.OpLinearQuantizerConfig, cto.OpPalettizerConfig, cto.OpMagnitudePrunerConfig):
        assert attrs.fields(cls).weight_threshold.default == DEFAULT_WEIGHT_THRESHOLD


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match="int3-magic") as info:
        get_strategy("int3-magic")
    for name in STRATEGY_NAMES + [MIXED]:
        assert name in str(info.value)


def test_compressible_ops_in_program_order(bases):
    model = bases["iOS17"].model
    names = op_names(model)
    assert compressible_ops(model) == [names["conv"], names["lstm"], names["linear"]]
    # 12 288 / 16 384 / 4 096 elements: a threshold of 5000 drops the linear weight only.
    assert compressible_ops(model, weight_threshold=5000) == [names["conv"], names["lstm"]]
    assert compressible_ops(model, weight_threshold=20000) == []
    with pytest.raises(ValueError, match="weight_threshold"):
        compressible_ops(model, weight_threshold=-1)


# ---- every strategy --------------------------------------------------------------------------------------
def _check_layout(name: str, op_type: str, args: dict, shape: tuple[int, ...]) -> None:
    """The compressed form the MIL spec prescribes for this strategy (shape = the dense weight's shape)."""
    c_out = shape[0]
    if name.startswith("int8-per-"):
        assert op_type == "constexpr_affine_dequantize"  # iOS16 op: the model targets iOS17
        dtype, _, _ = args["quantized_data"]
        _, scale_shape, _ = args["scale"]
        _, _, zero_point = args["zero_point"]
        assert dtype == "int8"
        if name == "int8-per-channel":
            assert scale_shape == (c_out,) and int(args["axis"][2]) == 0
            assert np.any(zero_point != 0)  # affine ("linear") mode: a zero point per channel
        else:
            assert math.prod(scale_shape) == 1 and np.all(zero_point == 0)  # one symmetric scale
    elif name.startswith("palettize-"):
        nbits = int(name.split("-")[1].removesuffix("bit"))
        assert op_type == "constexpr_lut_to_dense"
        _, lut_shape, _ = args["lut"]
        if name.endswith("-grouped"):  # iOS18: LUT [groups along axis 0, 1, ..., 2^n, 1]
            assert lut_shape[0] == c_out // 16 and lut_shape[-2:] == (2 ** nbits, 1)
            assert all(d == 1 for d in lut_shape[1:-2])
        else:  # iOS16: one flat LUT
            assert lut_shape == (2 ** nbits,)
    elif name == "int4-per-block":
        assert op_type == "constexpr_blockwise_shift_scale"
        assert args["data"][0] == "int4"
        assert args["scale"][1] == (c_out, shape[1] // 32) + (1,) * (len(shape) - 2)
    elif name == "prune50-int8":
        assert op_type == "constexpr_sparse_to_dense"
    else:
        raise AssertionError(f"no layout check for {name}")


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_strategy_compresses_every_weight(name, compressed):
    result = compressed(name)
    function = load_model(result.model, backend="mil").function
    producers = {var.name: op for op in function.operations for var in op.outputs}
    weights = weight_producers(result.model)
    assert len(weights) == 4
    for (op_type, key), producer in weights.items():
        assert producer.op_type.startswith("constexpr_"), (op_type, key, producer.op_type)
        shape = tuple(producer.outputs[0].type.shape)
        _check_layout(name, producer.op_type, constexpr_args(producer, function), shape)
        if name == "prune50-int8":  # nonzeros come dequantized from int8 by the sparse joint op
            source = producers[producer.inputs["nonzero_data"][0].var]
            assert source.op_type == "constexpr_sparse_blockwise_shift_scale"
            (nonzeros,) = [v for v in source.outputs if v.name == producer.inputs["nonzero_data"][0].var]
            assert constexpr_args(source, function)["nonzero_data"][0] == "int8"
            assert nonzeros.type.shape[0] / math.prod(shape) == pytest.approx(0.5, abs=0.005)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_strategy_quality_and_size(name, compressed):
    result = compressed(name)
    low, high = QUALITY[name]
    assert low <= result.quality < high, f"{name}: quality {result.quality:.5f} outside [{low}, {high})"
    assert result.size_ratio < 0.8, f"{name}: package {result.size_ratio:.3f} of the fp16 one"
    assert np.all(np.isfinite(result.out))


@pytest.mark.parametrize("family", [["palettize-4bit", "palettize-6bit", "palettize-8bit"],
                                    ["palettize-4bit-grouped", "palettize-6bit-grouped", "palettize-8bit-grouped"],
                                    ["int4-per-block", "int8-per-channel"]],
                         ids=["palettize", "palettize-grouped", "int4-vs-int8"])
def test_more_bits_better_and_bigger(family, compressed):
    results = [compressed(name) for name in family]
    qualities = [r.quality for r in results]
    sizes = [r.size_ratio for r in results]
    assert qualities == sorted(qualities) and len(set(qualities)) == len(qualities), dict(zip(family, qualities))
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), dict(zip(family, sizes))


def test_excluded_ops_keep_their_fp16_weight(bases, x):
    base = bases["iOS17"].model
    names = op_names(base)
    before = weight_producers(base)
    linear_const = before[("linear", "weight")].name
    # One op excluded by its own name, one by its weight const's name (Silero's keep_exact gives both).
    result = get_strategy("int8-per-channel").apply(base, [names["conv"], linear_const])
    after = weight_producers(result)
    for key in (("conv", "weight"), ("linear", "weight")):
        old, new = before[key], after[key]
        assert new.op_type == "const" and new.outputs[0].type.dtype == "fp16", key
        np.testing.assert_array_equal(new.inputs["val"][0].value, old.inputs["val"][0].value)
    assert after[("lstm", "weight_ih")].op_type.startswith("constexpr_")
    assert after[("lstm", "weight_hh")].op_type.startswith("constexpr_")
    assert quality(bases["iOS17"].out, predict(result, x)) > 0.99


@pytest.mark.parametrize("name", IOS18_ONLY)
def test_ios18_strategy_on_ios17_model_raises(name, bases):
    with pytest.raises(StrategyNotApplicable) as info:
        get_strategy(name).apply(bases["iOS17"].model)
    message = str(info.value)
    assert name in message and "iOS18" in message and "iOS17" in message


@pytest.fixture(scope="module")
def unsplittable(x):
    torch.manual_seed(0)
    return convert_traced(Unsplittable(), {"x": torch.randn(2, 72)}, ("y",), target="iOS18")


@pytest.mark.parametrize("name,reason", [("palettize-4bit-grouped", "not divisible by channel_group_size"),
                                         ("int4-per-block", "not divisible by block size")],
                         ids=["grouped-40-channels", "block-72-inputs"])
def test_unsplittable_weight_raises_naming_op_and_reason(name, reason, unsplittable):
    first = [op.name for op in load_model(unsplittable, backend="mil").function.operations
             if op.op_type == "linear"][0]  # weight [40, 72]
    with pytest.raises(StrategyNotApplicable, match=reason) as info:
        get_strategy(name).apply(unsplittable)
    assert info.value.op == first and name in str(info.value) and first in str(info.value)


def test_skip_unsupported_keeps_unsplittable_weight_fp16(unsplittable):
    function = load_model(unsplittable, backend="mil").function
    first, second = [op.name for op in function.operations if op.op_type == "linear"]
    result = get_strategy("palettize-4bit-grouped").apply(unsplittable, skip_unsupported=True)
    assert [p.op_type for p in _linear_weight_producers(result)] == ["const", "constexpr_lut_to_dense"]
    assert json.loads(result.user_defined_metadata["coreml_parity.compression_uncompressed"]) == [first]
    assert second not in result.user_defined_metadata["coreml_parity.compression_uncompressed"]
    # Nothing compressible at all (both weights unsplittable by 32-blocks) still raises.
    with pytest.raises(StrategyNotApplicable):
        get_strategy("int4-per-block").apply(unsplittable, skip_unsupported=True)


def _linear_weight_producers(model) -> list:
    function = load_model(model, backend="mil").function
    producers = {var.name: op for op in function.operations for var in op.outputs}
    return [producers[op.inputs["weight"][0].var] for op in function.operations if op.op_type == "linear"]


def test_nothing_compressed_raises(bases):
    small = convert_traced(torch.nn.Linear(8, 8), {"x": torch.zeros(1, 8)}, ("y",), target="iOS17")
    with pytest.raises(StrategyNotApplicable, match="no weight above 2048"):
        get_strategy("palettize-4bit").apply(small)
    base = bases["iOS17"].model
    with pytest.raises(StrategyNotApplicable, match="no weight above 2048"):
        get_strategy("int8-per-tensor").apply(base, compressible_ops(base))
    with pytest.raises(ValueError, match="not in the model"):
        get_strategy("int8-per-tensor").apply(base, ["no_such_op"])
    with pytest.raises(ValueError, match="collection of op names"):
        get_strategy("int8-per-tensor").apply(base, "conv")


# ---- mixed -----------------------------------------------------------------------------------------------
@dataclass
class Call:
    compressed: frozenset
    quality: float
    out: np.ndarray


def recording_evaluate(base: Base, x: np.ndarray, calls: list[Call]):
    """Quality of a candidate vs the uncompressed program, noting which ops it received compressed."""
    def evaluate(model) -> float:
        function = load_model(model, backend="mil").function
        producers = {var.name: op for op in function.operations for var in op.outputs}
        fed = frozenset(op.name for op in function.operations if op.op_type in WEIGHT_INPUTS and any(
            producers[op.inputs[k][0].var].op_type.startswith("constexpr_") for k in WEIGHT_INPUTS[op.op_type]))
        out = predict(model, x)
        calls.append(Call(fed, quality(base.out, out), out))
        return calls[-1].quality

    return evaluate


def palettize4_directly(model, only: list[str] | None, x: np.ndarray, reference: np.ndarray) -> float:
    """Quality with coremltools' palettizer called directly (k-means 4-bit, per tensor) on ``only`` (None: all)."""
    import coremltools.optimize.coreml as cto

    op_config = cto.OpPalettizerConfig(mode="kmeans", nbits=4)
    config = (cto.OptimizationConfig(global_config=op_config) if only is None
              else cto.OptimizationConfig(op_name_configs={name: op_config for name in only}))
    return quality(reference, predict(cto.palettize_weights(model, config), x))


def test_mixed_strict_target_keeps_most_sensitive_op_and_reproduces(bases, x, tmp_path):
    base = bases["iOS17"]
    names = op_names(base.model)
    ops = [names["conv"], names["lstm"], names["linear"]]
    alone = {op: palettize4_directly(base.model, [op], x, base.out) for op in ops}
    everything = palettize4_directly(base.model, None, x, base.out)
    order = sorted(ops, key=alone.get)  # most sensitive (lowest quality alone) first
    # Reachable (the least sensitive op alone reaches it) and strict (all compressed misses it).
    target = max(alone.values()) - 1e-9
    assert everything < target, (everything, alone)

    calls: list[Call] = []
    recipe = sensitivity_recipe(base.model, recording_evaluate(base, x, calls), candidate="palettize-4bit",
                                target_quality=target)

    assert [c.compressed for c in calls[:3]] == [frozenset([op]) for op in ops]
    assert [c.quality for c in calls[:3]] == pytest.approx([alone[op] for op in ops], abs=1e-12)
    greedy = calls[3:]
    for kept, call in enumerate(greedy):  # each step keeps the next most sensitive op in fp16
        assert call.compressed == frozenset(ops) - frozenset(order[:kept])
    assert all(c.quality < target for c in greedy[:-1]) and greedy[-1].quality >= target
    assert greedy[0].quality == pytest.approx(everything, abs=1e-12)
    assert recipe["kept_fp16"][0] == order[0]
    assert recipe["kept_fp16"] == order[:len(greedy) - 1]
    assert recipe["compressed"] == [op for op in ops if op not in recipe["kept_fp16"]]
    assert recipe["quality"] == greedy[-1].quality >= recipe["target_quality"] == target
    assert recipe["candidate"] == "palettize-4bit"
    assert recipe["quality_alone"] == pytest.approx(alone, abs=1e-12)

    path = save_recipe(recipe, tmp_path / "recipes" / "toy.recipe.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy.recipe.json"]  # no temporary file left
    loaded = load_recipe(path)
    assert loaded == json.loads(json.dumps(recipe))
    for model in (apply_recipe(base.model, loaded), STRATEGIES[MIXED].apply(base.model, recipe=loaded)):
        np.testing.assert_array_equal(predict(model, x), greedy[-1].out)  # k-means is seeded: same model
        assert {p.op_type for p in weight_producers(model).values()} >= {"const", "constexpr_lut_to_dense"}
    with pytest.raises(ValueError, match="compressed by the recipe"):
        STRATEGIES[MIXED].apply(base.model, recipe["compressed"][:1], recipe=loaded)


def test_mixed_lenient_target_compresses_all_but_excluded(bases, x):
    base = bases["iOS17"]
    names = op_names(base.model)
    calls: list[Call] = []
    recipe = sensitivity_recipe(base.model, recording_evaluate(base, x, calls), target_quality=0.5,
                                exclude_ops=[names["conv"]])
    assert list(recipe["quality_alone"]) == [names["lstm"], names["linear"]]
    assert recipe["kept_fp16"] == [] and recipe["compressed"] == [names["lstm"], names["linear"]]
    assert len(calls) == 3 and calls[-1].compressed == frozenset([names["lstm"], names["linear"]])
    assert recipe["quality"] == calls[-1].quality >= 0.5
    model = apply_recipe(base.model, recipe)
    assert weight_producers(model)[("conv", "weight")].op_type == "const"


def test_mixed_unreachable_target_and_bad_arguments(bases, x, tmp_path):
    base = bases["iOS17"]
    calls: list[Call] = []
    with pytest.raises(StrategyNotApplicable, match="no op can be compressed"):
        sensitivity_recipe(base.model, recording_evaluate(base, x, calls), target_quality=0.99999)
    with pytest.raises(ValueError, match="needs recipe"):
        STRATEGIES[MIXED].apply(base.model)
    with pytest.raises(ValueError, match="recipe applies to strategy 'mixed' only"):
        STRATEGIES["palettize-4bit"].apply(base.model, recipe={})
    with pytest.raises(ValueError, match="target_quality"):
        sensitivity_recipe(base.model, lambda m: 1.0, target_quality=float("nan"))
    with pytest.raises(ValueError, match="finite float quality"):
        sensitivity_recipe(base.model, lambda m: float("nan"), target_quality=0.5)
    with pytest.raises(StrategyNotApplicable, match="iOS18"):
        sensitivity_recipe(base.model, lambda m: 1.0, candidate="int4-per-block", target_quality=0.5)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": 1, "strategy": MIXED}))
    with pytest.raises(ValueError, match="'candidate'"):
        load_recipe(broken)


# ---- coremltools' magnitude pruner on large fp16 weights ---------------------------------------------------
@pytest.fixture(scope="module")
def wide():
    """One linear weight of 256 x 256 = 65 536 elements: more than fp16's largest finite value, 65 504."""
    torch.manual_seed(0)
    return convert_traced(torch.nn.Linear(256, 256), {"x": torch.zeros(1, 256)}, ("y",), target="iOS18")


def _sparsity(model) -> float:
    (producer,) = _linear_weight_producers(model)
    assert producer.op_type == "constexpr_sparse_to_dense"
    function = load_model(model, backend="mil").function
    source = {var.name: (op, var) for op in function.operations for var in op.outputs}
    binding = producer.inputs["nonzero_data"][0]
    nonzeros = source[binding.var][1].type.shape[0] if binding.var else binding.type.shape[0]
    return 1 - nonzeros / (256 * 256)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_prune_large_fp16_weight_reaches_target_sparsity(wide):
    import coremltools.optimize.coreml as cto

    direct = cto.prune_weights(wide, cto.OptimizationConfig(
        global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.5)))
    # The upstream defect the strategy works around (np.percentile of an fp16 array this large is NaN, so
    # nothing is pruned). If this starts failing, coremltools or numpy fixed it: _exact_percentiles can go.
    assert _sparsity(direct) == 0.0
    assert _sparsity(get_strategy("prune50-int8").apply(wide)) == pytest.approx(0.5, abs=1e-3)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_prune_shortfall_is_detected(wide, monkeypatch):
    from conversions import quantize

    monkeypatch.setattr(quantize, "_exact_percentiles", lambda steps, function, wanted: steps)
    with pytest.raises(StrategyNotApplicable, match="sparsity 0.0000, target 0.5"):
        get_strategy("prune50-int8").apply(wide)
