"""Weight compression (``constexpr_*``) and activation quantization kernels.

Torch modules are converted, compressed with ``coremltools.optimize.coreml`` and run on the portable runtime.
Two references, both independent of the runtime's kernels:

- coremltools' own ``decompress_weights`` (its ``materialized_val_inference`` of every constexpr op): the
  weights the runtime decompresses at load time must equal them bit for bit;
- torch, with the module's weights overwritten by those decompressed values: the runtime's output must match
  at the usual tolerance of the program's precision.

Ops exercised, by config (see ``CONFIGS``):

=============================================  ===========================================================
iOS17 target (iOS16 constexpr forms)           op
=============================================  ===========================================================
linear_quantize int8 per-channel / uint8        constexpr_affine_dequantize
per-tensor linear
palettize uniform 1/2/4/6/8 bits, kmeans 4     constexpr_lut_to_dense (packed uint8 indices + shape)
prune magnitude 50% / threshold                 constexpr_sparse_to_dense (packed uint8 mask + shape)
=============================================  ===========================================================

=============================================  ===========================================================
iOS18 target                                   ops
=============================================  ===========================================================
linear_quantize int8 per-channel, uint8 per-    constexpr_blockwise_shift_scale (int8/uint8/int4/uint4
tensor, int4 / uint4 per-block                  data, optional offset)
palettize uniform 1/2/3/4/6/8 bits per-tensor,  constexpr_lut_to_dense (uintN indices, [*blocks, P, V] lut)
per_grouped_channel; unique vector (cluster_dim
2, axis 0 and 1); per-channel scale             + constexpr_blockwise_shift_scale (fp16 data)
palettize then quantize the lut (joint)         constexpr_blockwise_shift_scale -> constexpr_lut_to_dense
prune magnitude / threshold                     constexpr_sparse_to_dense (uint1 mask)
prune then quantize (joint)                     constexpr_sparse_blockwise_shift_scale -> sparse_to_dense
prune then palettize (joint), scalar / grouped  constexpr_lut_to_sparse -> constexpr_sparse_to_dense
/ vector
=============================================  ===========================================================

``constexpr_cast`` (never written by coremltools.optimize) and ``quantize`` / ``dequantize`` are checked on
programs built with the MIL builder against numpy references, as are block / vector layouts the optimizer
does not produce (blocks on several axes, fp16 offsets, int8 luts).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import Phase, example, given, settings, strategies as st

import coremltools as ct
import coremltools.optimize.coreml as cto
from coremltools.converters.mil import Builder as mb

from conversions.runtime import load_model
from conversions.testing import FP16_TOLERANCE, FP32_TOLERANCE, convert_module, torch_outputs

# Every config converts and compresses a module per example (~0.5 s): a few examples each keep the file around
# a minute; the "thorough" profile scales them up.
EXAMPLES = max(2, settings.default.max_examples // 4)
# Weights have >= 64 elements, biases <= 32: only weights are compressed, except by `lut_q` (threshold 2,
# which quantizes the 16-entry lut and thereby also the bias: biases are taken from the decompressed model too).
THRESHOLD = 32
# Shrinking re-converts the module for every attempt (minutes): report the failing example as drawn instead.
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]


# ---- compression recipes ---------------------------------------------------------------------------------
def _quantize(threshold=THRESHOLD, joint=False, **kw):
    def step(m):
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(weight_threshold=threshold, **kw))
        return cto.linear_quantize_weights(m, config, joint_compression=joint)
    return step


def _palettize(joint=False, **kw):
    def step(m):
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(weight_threshold=THRESHOLD, **kw))
        return cto.palettize_weights(m, config, joint_compression=joint)
    return step


def _prune(config_cls=cto.OpMagnitudePrunerConfig, **kw):
    def step(m):
        config = cto.OptimizationConfig(global_config=config_cls(weight_threshold=THRESHOLD, **kw))
        return cto.prune_weights(m, config)
    return step


MAGNITUDE = _prune(target_sparsity=0.5)
THRESHOLD_PRUNE = _prune(cto.OpThresholdPrunerConfig, threshold=0.03, minimum_sparsity_percentile=0.0)


@dataclass
class Config:
    target: str
    steps: list[Callable]
    ops: set[str]  # constexpr ops the compressed program must contain
    lattice: int = 0  # >0: weights drawn from this many vectors of length 2 (lossless "unique" palettization)
    vector_axis: int = 0


CONFIGS = {
    # iOS17 target: iOS16 constexpr forms, operands as attributes, packed sub-byte data.
    "ios17-int8-per-channel": Config("iOS17", [_quantize()], {"constexpr_affine_dequantize"}),
    "ios17-uint8-per-tensor-linear": Config(
        "iOS17", [_quantize(granularity="per_tensor", mode="linear", dtype="uint8")], {"constexpr_affine_dequantize"}),
    "ios17-pal1-uniform": Config("iOS17", [_palettize(nbits=1, mode="uniform")], {"constexpr_lut_to_dense"}),
    "ios17-pal2-uniform": Config("iOS17", [_palettize(nbits=2, mode="uniform")], {"constexpr_lut_to_dense"}),
    "ios17-pal4-uniform": Config("iOS17", [_palettize(nbits=4, mode="uniform")], {"constexpr_lut_to_dense"}),
    "ios17-pal6-uniform": Config("iOS17", [_palettize(nbits=6, mode="uniform")], {"constexpr_lut_to_dense"}),
    "ios17-pal8-uniform": Config("iOS17", [_palettize(nbits=8, mode="uniform")], {"constexpr_lut_to_dense"}),
    "ios17-pal4-kmeans": Config("iOS17", [_palettize(nbits=4, mode="kmeans")], {"constexpr_lut_to_dense"}),
    "ios17-prune-magnitude": Config("iOS17", [MAGNITUDE], {"constexpr_sparse_to_dense"}),
    "ios17-prune-threshold": Config("iOS17", [THRESHOLD_PRUNE], {"constexpr_sparse_to_dense"}),
    # iOS18 target: typed sub-byte tensors, blockwise scales and luts, joint compression.
    "ios18-int8-per-channel": Config("iOS18", [_quantize()], {"constexpr_blockwise_shift_scale"}),
    "ios18-uint8-per-tensor-linear": Config(
        "iOS18", [_quantize(granularity="per_tensor", mode="linear", dtype="uint8")],
        {"constexpr_blockwise_shift_scale"}),
    "ios18-int4-per-block": Config(
        "iOS18", [_quantize(granularity="per_block", block_size=8, dtype="int4")], {"constexpr_blockwise_shift_scale"}),
    "ios18-uint4-per-block-linear": Config(
        "iOS18", [_quantize(granularity="per_block", block_size=8, dtype="uint4", mode="linear")],
        {"constexpr_blockwise_shift_scale"}),
    "ios18-pal1-uniform": Config("iOS18", [_palettize(nbits=1, mode="uniform")], {"constexpr_lut_to_dense"}),
    "ios18-pal3-uniform": Config("iOS18", [_palettize(nbits=3, mode="uniform")], {"constexpr_lut_to_dense"}),
    "ios18-pal6-uniform": Config("iOS18", [_palettize(nbits=6, mode="uniform")], {"constexpr_lut_to_dense"}),
    "ios18-pal8-uniform": Config("iOS18", [_palettize(nbits=8, mode="uniform")], {"constexpr_lut_to_dense"}),
    "ios18-pal2-grouped": Config(
        "iOS18", [_palettize(nbits=2, mode="uniform", granularity="per_grouped_channel", group_size=4)],
        {"constexpr_lut_to_dense"}),
    "ios18-pal4-kmeans-grouped": Config(
        "iOS18", [_palettize(nbits=4, mode="kmeans", granularity="per_grouped_channel", group_size=4)],
        {"constexpr_lut_to_dense"}),
    "ios18-pal2-vector-axis0": Config("iOS18", [_palettize(mode="unique", cluster_dim=2)],
                                      {"constexpr_lut_to_dense"}, lattice=4),
    "ios18-pal2-vector-axis1": Config("iOS18", [_palettize(mode="unique", cluster_dim=2, channel_axis=1)],
                                      {"constexpr_lut_to_dense"}, lattice=3, vector_axis=1),
    "ios18-pal4-per-channel-scale": Config(
        "iOS18", [_palettize(nbits=4, mode="uniform", enable_per_channel_scale=True)],
        {"constexpr_lut_to_dense", "constexpr_blockwise_shift_scale"}),
    "ios18-pal4-then-quantized-lut": Config(
        "iOS18", [_palettize(nbits=4, mode="uniform"), _quantize(threshold=2, granularity="per_tensor", joint=True)],
        {"constexpr_lut_to_dense", "constexpr_blockwise_shift_scale"}),
    "ios18-prune-magnitude": Config("iOS18", [MAGNITUDE], {"constexpr_sparse_to_dense"}),
    "ios18-prune-threshold": Config("iOS18", [THRESHOLD_PRUNE], {"constexpr_sparse_to_dense"}),
    "ios18-prune-then-int8": Config(
        "iOS18", [MAGNITUDE, _quantize(joint=True)],
        {"constexpr_sparse_blockwise_shift_scale", "constexpr_sparse_to_dense"}),
    "ios18-prune-then-int4-per-block-linear": Config(
        "iOS18", [MAGNITUDE, _quantize(joint=True, granularity="per_block", block_size=8, dtype="int4", mode="linear")],
        {"constexpr_sparse_blockwise_shift_scale", "constexpr_sparse_to_dense"}),
    "ios18-prune-then-pal4": Config(
        "iOS18", [MAGNITUDE, _palettize(joint=True, nbits=4, mode="uniform")],
        {"constexpr_lut_to_sparse", "constexpr_sparse_to_dense"}),
    "ios18-prune-then-pal2-grouped": Config(
        "iOS18", [MAGNITUDE, _palettize(joint=True, nbits=2, mode="uniform", granularity="per_grouped_channel",
                                        group_size=4)],
        {"constexpr_lut_to_sparse", "constexpr_sparse_to_dense"}),
    # Joint pruning + *vector* palettization: coremltools 9 fails writing it (IndexError in its palettizer),
    # so constexpr_lut_to_sparse with vectors is checked on a builder program (test_lut_to_sparse_vectors).
}


# ---- modules ---------------------------------------------------------------------------------------------
def make_module(kind: str, cin: int, cout: int, seed: int, lattice: int = 0, vector_axis: int = 0):
    torch.manual_seed(seed)
    if kind == "linear":
        module, x = torch.nn.Linear(cin, cout), torch.randn(2, cin)
    elif kind == "conv1d":
        module, x = torch.nn.Conv1d(cin, cout, 3, padding=1), torch.randn(1, cin, 7)
    else:
        module, x = torch.nn.Conv2d(cin, cout, (3, 2)), torch.randn(1, cin, 5, 4)
    if lattice:
        # Weights made of `lattice` distinct vectors of 2 consecutive elements along `vector_axis`, values exact
        # in fp16: "unique" vector palettization represents them exactly (cluster_dim=2).
        w = module.weight.data
        palette = torch.round(torch.randn(lattice, 2) * 64) / 256
        shape = list(w.shape)
        shape[vector_axis] //= 2
        picks = palette[torch.randint(lattice, shape)]  # shape + [2]
        module.weight.data = picks.movedim(-1, vector_axis + 1).reshape(w.shape).contiguous()
    return module, x


def _pymil_weights(mlmodel) -> dict[str, np.ndarray]:
    """Const values of an (uncompressed) model straight from coremltools' in-memory program, by var name."""
    ops = mlmodel._mil_program.functions["main"].operations
    return {op.outputs[0].name: op.outputs[0].val for op in ops if op.op_type == "const"}


def _weight_bindings(runtime_model) -> list[tuple[str, dict[str, str]]]:
    """(op type, {param: var name}) of every linear/conv op of a runtime-loaded program."""
    result = []
    for op in runtime_model.function.operations:
        if op.op_type in ("linear", "conv"):
            result.append((op.op_type, {p: op.inputs[p][0].var for p in ("weight", "bias") if p in op.inputs}))
    return result


def _run_config(config: Config, kind: str, cin: int, cout: int, seed: int, precision: str) -> None:
    module, x = make_module(kind, cin, cout, seed, config.lattice, config.vector_axis)
    mlmodel = convert_module(module, [x], precision=precision, target=config.target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in config.steps:
            mlmodel = step(mlmodel)
        decompressed = cto.decompress_weights(mlmodel)

    model = load_model(mlmodel, backend="mil", precision=precision)
    producers = {o.name: op.op_type for op in model.function.operations for o in op.outputs}
    op_types = set(producers.values())
    assert config.ops <= op_types, f"compressed program lacks {config.ops - op_types}; it has {sorted(op_types)}"
    (op_type, bindings), = _weight_bindings(model)
    assert producers[bindings["weight"]].startswith("constexpr_"), (
        f"the {op_type} weight comes from a {producers[bindings['weight']]} op: it was not compressed")

    # (a) the runtime's load-time decompression equals coremltools' decompression, bit for bit: both compute
    # in fp32 and round once to the declared type (fp16 programs run with fp16 storage here).
    feeds = {"x0": x.numpy()}
    outputs, trace = model.predict(feeds, trace=True)
    ours = trace.by_var()
    reference = _pymil_weights(decompressed)
    compressed = [var for var in bindings.values() if producers[var].startswith("constexpr_")]
    for var in compressed:
        np.testing.assert_array_equal(ours[var], reference[var], err_msg=f"decompressed {var}")

    # (b) the output matches torch with the decompressed weights. fp32 programs: tight tolerance (same math,
    # fp32 accumulation order only); fp16 programs: fp16 storage of activations.
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(reference[bindings["weight"]].astype(np.float32)))
        module.bias.copy_(torch.from_numpy(reference[bindings["bias"]].astype(np.float32)))
    expected = torch_outputs(module, [x])[0]
    got = outputs[model.outputs[0].name].astype(np.float64)
    tol = FP32_TOLERANCE if precision == "fp32" else FP16_TOLERANCE
    np.testing.assert_allclose(got, expected.astype(np.float64), **tol)


@pytest.mark.parametrize("name", list(CONFIGS))
@settings(max_examples=EXAMPLES, phases=NO_SHRINK)
@given(kind=st.sampled_from(["linear", "conv1d", "conv2d"]), cin=st.sampled_from([8, 16, 24]),
       cout=st.sampled_from([8, 16, 24, 32]), seed=st.integers(0, 2**16), precision=st.sampled_from(["fp32", "fp16"]))
# Hypothesis starts from the simplest draw (fp32 linear 8x8); this example guarantees an fp16 program per config.
@example(kind="conv2d", cin=16, cout=16, seed=1, precision="fp16")
def test_compressed_weights_match_coremltools_and_torch(name, precision, kind, cin, cout, seed):
    _run_config(CONFIGS[name], kind, cin, cout, seed, precision)


def test_compressed_and_decompressed_models_give_identical_outputs():
    """The whole program, not just the weights: the compressed and the decompressed package agree exactly."""
    module, x = make_module("conv1d", 16, 16, seed=3)
    mlmodel = convert_module(module, [x], precision="fp16", target="iOS18")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compressed = _palettize(joint=True, nbits=4, mode="uniform")(MAGNITUDE(mlmodel))
        decompressed = cto.decompress_weights(compressed)
    a = load_model(compressed, backend="mil").predict({"x0": x.numpy()})
    b = load_model(decompressed, backend="mil").predict({"x0": x.numpy()})
    assert "constexpr_lut_to_sparse" in load_model(compressed, backend="mil").op_histogram()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


# ---- programs built with the MIL builder -----------------------------------------------------------------
TYPES = ct.converters.mil.mil.types


def _convert(prog, target):
    # FLOAT32 compute precision leaves the program's own types alone (fp16 ops stay fp16).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
                          compute_precision=ct.precision.FLOAT32)


def _check_decompression(prog, target, op_type, expected, ulps=0):
    """Convert ``prog``, whose ``op_type`` op's last output is added to the zero input ``x``, and compare the
    runtime's load-time value of that output with ``expected`` and with coremltools' own decompression."""
    mlmodel = _convert(prog, target)
    ops = mlmodel._mil_program.functions["main"].operations
    (var,) = [op.outputs[-1].name for op in ops if op.op_type == op_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = _pymil_weights(cto.decompress_weights(mlmodel))[var]
    model = load_model(mlmodel, backend="mil")
    assert op_type in model.op_histogram()
    feeds = {spec.name: np.zeros(spec.shape, spec.dtype) for spec in model.inputs}
    outputs, trace = model.predict(feeds, trace=True)
    got = trace.by_var()[var]
    assert got.dtype == reference.dtype and got.shape == reference.shape
    np.testing.assert_array_equal(got, expected)
    if ulps:
        np.testing.assert_array_max_ulp(got, reference, maxulp=ulps)
    else:
        np.testing.assert_array_equal(got, reference)
    return outputs


def _pack_lsb_first(values: np.ndarray, nbits: int) -> np.ndarray:
    """The iOS16 packing: nbits per value, LSB first, row-major, zero padded to whole bytes."""
    bits = (values.reshape(-1, 1).astype(np.uint16) >> np.arange(nbits)) & 1
    return np.packbits(bits.reshape(-1).astype(np.uint8), bitorder="little")


@settings(max_examples=EXAMPLES * 2, phases=NO_SHRINK)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), nbits=st.sampled_from([1, 2, 4, 6, 8]),
       seed=st.integers(0, 2**16))
def test_ios16_lut_and_sparse_with_partial_bytes(shape, nbits, seed):
    """iOS16 packed indices and masks whose bit count is not a multiple of 8 (the optimizer's test weights
    always fill whole bytes): packing order and padding."""
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, 2**nbits, size=shape)
    lut = rng.standard_normal(2**nbits).astype(np.float16)
    mask = rng.random(shape) < 0.5
    nonzero = rng.standard_normal(int(mask.sum())).astype(np.float16)
    dense_sparse = np.zeros(shape, np.float16)
    dense_sparse[mask] = nonzero

    @mb.program(input_specs=[mb.TensorSpec(shape=tuple(shape), dtype=TYPES.fp16) for _ in range(2)],
                opset_version=ct.target.iOS16)
    def prog(x, y):
        a = mb.constexpr_lut_to_dense(indices=_pack_lsb_first(indices, nbits), lut=lut,
                                      shape=np.array(shape, np.uint32))
        b = mb.constexpr_sparse_to_dense(nonzero_data=nonzero, mask=_pack_lsb_first(mask, 1),
                                         shape=np.array(shape, np.uint32))
        return mb.add(x=x, y=a), mb.add(x=y, y=b)

    _check_decompression(prog, "iOS17", "constexpr_lut_to_dense", lut[indices])
    _check_decompression(prog, "iOS17", "constexpr_sparse_to_dense", dense_sparse)


@settings(max_examples=EXAMPLES * 2, phases=NO_SHRINK)
@given(data=st.data())
def test_blockwise_shift_scale_blocks_on_every_axis(data):
    """Blocks along several axes at once, int4/uint8 data and fp16 offsets: layouts the quantizer never writes."""
    rank = data.draw(st.integers(1, 3), label="rank")
    blocks = data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank), label="blocks")
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank), label="block sizes")
    dtype = data.draw(st.sampled_from(["int8", "uint8", "int4"]), label="data dtype")
    offset_kind = data.draw(st.sampled_from(["none", "same as data", "fp16"]), label="offset")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    shape = [b * s for b, s in zip(blocks, sizes)]
    low, high = {"int8": (-128, 127), "uint8": (0, 255), "int4": (-8, 7)}[dtype]
    np_type = TYPES.nptype_from_builtin(getattr(TYPES, dtype))
    q = rng.integers(low, high + 1, size=shape).astype(np_type)
    scale = rng.uniform(0.01, 1, size=blocks).astype(np.float16)
    offset = {"none": None, "same as data": rng.integers(low, high + 1, size=blocks).astype(np_type),
              "fp16": rng.uniform(-4, 4, size=blocks).astype(np.float16)}[offset_kind]

    @mb.program(input_specs=[mb.TensorSpec(shape=tuple(shape), dtype=TYPES.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        kwargs = {} if offset is None else {"offset": offset}
        return mb.add(x=x, y=mb.constexpr_blockwise_shift_scale(data=q, scale=scale, **kwargs))

    # numpy reference: every element with its own block's scale/offset, fp32 math rounded once to fp16.
    block_of = tuple(np.indices(shape)[d] // sizes[d] for d in range(rank))
    shifted = q.astype(np.float32) - (0 if offset is None else offset.astype(np.float32)[block_of])
    expected = (shifted * scale.astype(np.float32)[block_of]).astype(np.float16)
    # coremltools subtracts an fp16 offset in fp16 (a second rounding); integer offsets subtract exactly.
    _check_decompression(prog, "iOS18", "constexpr_blockwise_shift_scale", expected,
                         ulps=1 if offset_kind == "fp16" else 0)


def _lut_reference(indices, lut, vector_axis, sizes):
    """Element by element: output position -> (index position, vector slot) -> entry of that block's palette."""
    rank, vector = indices.ndim, lut.shape[-1]
    out_shape = list(indices.shape)
    out_shape[vector_axis] *= vector
    out = np.zeros(out_shape, lut.dtype)
    axis = vector_axis % rank
    for pos in np.ndindex(*out_shape):
        src = list(pos)
        src[axis], slot = divmod(pos[axis], vector)
        block = tuple(src[d] // sizes[d] for d in range(rank))
        out[pos] = lut[block + (indices[tuple(src)], slot)]
    return out


def _draw_lut_case(data):
    rank = data.draw(st.integers(1, 3), label="rank")
    blocks = data.draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank), label="blocks")
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank), label="block sizes")
    nbits = data.draw(st.sampled_from([1, 2, 3, 4, 6, 8]), label="nbits")
    vector = data.draw(st.sampled_from([1, 2, 3]), label="vector size")
    vector_axis = data.draw(st.integers(-rank, rank - 1), label="vector axis")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    shape = [b * s for b, s in zip(blocks, sizes)]
    indices = rng.integers(0, 2**nbits, size=shape).astype(TYPES.nptype_from_builtin(getattr(TYPES, f"uint{nbits}")))
    lut = rng.standard_normal(blocks + [2**nbits, vector]).astype(np.float16)
    return rng, indices, lut, vector, vector_axis, sizes


@settings(max_examples=EXAMPLES * 2, phases=NO_SHRINK)
@given(data=st.data())
def test_lut_to_dense_blocks_and_vectors(data):
    """iOS18 lut: a palette per block on any axes, vector entries spread along any axis."""
    _, indices, lut, vector, vector_axis, sizes = _draw_lut_case(data)
    expected = _lut_reference(indices, lut, vector_axis, sizes)

    @mb.program(input_specs=[mb.TensorSpec(shape=expected.shape, dtype=TYPES.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        kwargs = {"vector_axis": vector_axis} if vector > 1 else {}
        return mb.add(x=x, y=mb.constexpr_lut_to_dense(indices=indices, lut=lut, **kwargs))

    _check_decompression(prog, "iOS18", "constexpr_lut_to_dense", expected)


@settings(max_examples=EXAMPLES * 2, phases=NO_SHRINK)
@given(data=st.data())
def test_lut_to_sparse_vectors(data):
    """iOS18 joint sparse + lut, including vector palettes (whose mask is repeated along the vector axis)."""
    rng, indices, lut, vector, vector_axis, sizes = _draw_lut_case(data)
    mask = (rng.random(indices.shape) < 0.6).astype(TYPES.np_uint1_dtype)
    mask.flat[0] = 1  # at least one nonzero
    dense = _lut_reference(indices, lut, vector_axis, sizes)
    dense_mask = np.repeat(mask, vector, axis=vector_axis)
    expected = np.where(dense_mask != 0, dense, 0).astype(np.float16)

    @mb.program(input_specs=[mb.TensorSpec(shape=dense.shape, dtype=TYPES.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        kwargs = {"vector_axis": vector_axis} if vector > 1 else {}
        sparse_mask, values = mb.constexpr_lut_to_sparse(indices_mask=mask, indices_nonzero_data=indices[mask != 0],
                                                          lut=lut, **kwargs)
        return mb.add(x=x, y=mb.constexpr_sparse_to_dense(nonzero_data=values, mask=sparse_mask))

    out = _check_decompression(prog, "iOS18", "constexpr_sparse_to_dense", expected)
    np.testing.assert_array_equal(next(iter(out.values())), expected)


@pytest.mark.parametrize("target", ["iOS17", "iOS18"])
def test_constexpr_cast(target):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6)).astype(np.float16)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 6))], opset_version=getattr(ct.target, target))
    def prog(x):
        return mb.linear(x=x, weight=mb.constexpr_cast(source_val=w, output_dtype="fp32"))

    mlmodel = _convert(prog, target)
    model = load_model(mlmodel, backend="mil", precision="fp32")
    assert "constexpr_cast" in model.op_histogram()
    x = rng.standard_normal((2, 6)).astype(np.float32)
    out = next(iter(model.predict({"x": x}).values()))
    np.testing.assert_allclose(out, x @ w.astype(np.float32).T, **FP32_TOLERANCE)


# ---- quantize / dequantize (iOS17 activation quantization) -----------------------------------------------
@settings(max_examples=EXAMPLES * 3, phases=NO_SHRINK)
@given(data=st.data())
def test_quantize_dequantize(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3), label="shape"))
    dtype = data.draw(st.sampled_from(["int8", "uint8"]), label="dtype")
    per_axis = data.draw(st.booleans(), label="per-axis")
    with_zp = data.draw(st.booleans(), label="zero point")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis") if per_axis else None
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    np_dtype, low, high = {"int8": (np.int8, -128, 127), "uint8": (np.uint8, 0, 255)}[dtype]
    n = shape[axis] if per_axis else None
    # Power-of-two scales make x / scale exact, and half-integers test the rounding (half to even).
    scale = (2.0 ** rng.integers(-4, 2, size=n)).astype(np.float32)
    zp = rng.integers(low, high + 1, size=n).astype(np_dtype) if with_zp else None
    bshape = [1] * len(shape)
    if per_axis:
        bshape[axis] = n
    s_b = np.reshape(scale, bshape)
    steps = rng.integers(-300, 300, size=shape) + rng.choice([0.0, 0.5, 0.25], size=shape)
    x = (steps * s_b).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=shape)], opset_version=ct.target.iOS17)
    def prog(x):
        kwargs = {"scale": scale}
        if zp is not None:
            kwargs["zero_point"] = zp
        if per_axis:
            kwargs["axis"] = axis
        q = mb.quantize(input=x, output_dtype=dtype, **kwargs)
        return mb.cast(x=q, dtype="int32"), mb.dequantize(input=q, **kwargs)

    mlmodel = _convert(prog, "iOS17")
    model = load_model(mlmodel, backend="mil", precision="fp32")
    hist = model.op_histogram()
    assert hist.get("quantize") == 1 and hist.get("dequantize") == 1, hist
    z_b = 0 if zp is None else np.reshape(zp, bshape).astype(np.float32)
    q_ref = np.clip(np.round(x / s_b) + z_b, low, high)  # np.round: half to even
    deq_ref = (q_ref - z_b) * s_b
    out = model.predict({"x": x})
    got_q, got_deq = (out[spec.name] for spec in model.outputs)
    np.testing.assert_array_equal(got_q, q_ref.astype(np.int32))
    np.testing.assert_array_equal(got_deq, deq_ref.astype(np.float32))


def test_unsupported_quantize_dtype_is_named():
    from conversions.runtime.mil.ops.compression import quantize

    with pytest.raises(NotImplementedError, match="int16"):
        quantize(torch.zeros(2), scale=1.0, output_dtype="int16")
