"""Attention: iOS18's fused ``scaled_dot_product_attention`` and the matmul/einsum/softmax attention that
iOS17 programs (and NeMo's relative-position attention) are built from, against torch and numpy."""

from __future__ import annotations

import math

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types as mil_types
from hypothesis import given, strategies as st

from conversions.runtime import load_model
from conversions.testing import assert_matches_torch, assert_outputs_close, convert_module, op_types

PRECISIONS = ["fp32", "fp16"]
TARGETS = ["iOS17", "iOS18"]  # iOS17 decomposes attention into matmul/softmax, iOS18 emits the fused op
MASKS = ["none", "bool", "float", "causal"]


class SDPA(torch.nn.Module):
    def __init__(self, mask: str, scale: float | None = None):
        super().__init__()
        self.mask, self.scale = mask, scale

    def forward(self, q, k, v, *mask):
        kwargs = {} if self.scale is None else {"scale": self.scale}
        if self.mask == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)
        attn_mask = None
        if self.mask == "bool":  # Core ML model inputs cannot be bool: fed as 0/1 floats
            attn_mask = mask[0] > 0.5
        elif self.mask == "float":
            attn_mask = mask[0]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **kwargs)


@st.composite
def attention_inputs(draw, mask: str):
    batch, heads = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    q_len, kv_len = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if mask == "causal":
        kv_len = q_len
    embed, value_embed = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    lead = [batch, heads] if draw(st.booleans()) else [batch]  # rank 4 or rank 3
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(*lead, q_len, embed, generator=g), torch.randn(*lead, kv_len, embed, generator=g),
              torch.randn(*lead, kv_len, value_embed, generator=g)]
    # masks broadcast to [*lead, L, S]: drop or squeeze some leading dims
    mask_lead = draw(st.sampled_from([lead, [1] * len(lead), []]))
    if mask == "bool":
        keep = torch.rand(*mask_lead, q_len, kv_len, generator=g) > 0.4
        keep[..., 0] = True  # no fully masked row (torch gives NaN there, the iOS17 decomposition does not)
        inputs.append(keep.float())
    elif mask == "float":
        inputs.append(torch.randn(*mask_lead, q_len, kv_len, generator=g) * 2)
    return inputs


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("mask", MASKS)
@given(data=st.data())
def test_torch_scaled_dot_product_attention(mask, target, precision, data):
    inputs = data.draw(attention_inputs(mask))
    assert_matches_torch(SDPA(mask), inputs, precision=precision, target=target)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(data=st.data(), scale=st.floats(0.05, 1.0))
def test_torch_sdpa_with_scale_is_decomposed_on_ios18(precision, data, scale):
    """The fused op has no scale input: a torch call with ``scale`` stays matmul/softmax at iOS18."""
    inputs = data.draw(attention_inputs("float"))
    assert_matches_torch(SDPA("float", scale), inputs, precision=precision, target="iOS18")


def test_converted_programs_use_these_ops():
    q = torch.randn(1, 2, 3, 4)
    keep = torch.ones(3, 3)
    fused = op_types(convert_module(SDPA("bool"), [q, q, q, keep], target="iOS18"), include_const=False)
    assert fused[-1] == "scaled_dot_product_attention" and fused.count("scaled_dot_product_attention") == 1
    causal = op_types(convert_module(SDPA("causal"), [q, q, q], target="iOS18"), include_const=False)
    assert causal[-1] == "scaled_dot_product_attention"
    decomposed = op_types(convert_module(SDPA("none"), [q, q, q], target="iOS17"))
    assert "scaled_dot_product_attention" not in decomposed and {"matmul", "softmax"} <= set(decomposed)
    scaled = op_types(convert_module(SDPA("none", 0.3), [q, q, q], target="iOS18"))
    assert "scaled_dot_product_attention" not in scaled
    assert "matmul" in op_types(convert_module(RelPositionMHA(8, 2), [torch.randn(1, 3, 8), torch.randn(1, 5, 8)]))


def numpy_attention(q, k, v, mask=None):
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("precision", PRECISIONS)
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=3), q_len=st.integers(1, 5), kv_len=st.integers(1, 5),
       embed=st.integers(1, 8), value_embed=st.integers(1, 8), mask_rank=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_builder_sdpa_masks_broadcast(precision, lead, q_len, kv_len, embed, value_embed, mask_rank, seed):
    """iOS18 op: rank >= 3 inputs, bool and float masks of lower rank broadcast to [*, L, S]; no scale input
    (always 1/sqrt(E))."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(lead + [q_len, embed]).astype(np.float32)
    k = rng.standard_normal(lead + [kv_len, embed]).astype(np.float32)
    v = rng.standard_normal(lead + [kv_len, value_embed]).astype(np.float32)
    mask_shape = ([q_len, kv_len] if mask_rank > 1 else [kv_len]) + []
    if mask_rank == 3:
        mask_shape = [1] + mask_shape
    keep = rng.random(mask_shape) > 0.3
    keep[..., 0] = True
    bias = (rng.standard_normal(mask_shape) * 3).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=q.shape), mb.TensorSpec(shape=k.shape), mb.TensorSpec(shape=v.shape),
                             mb.TensorSpec(shape=keep.shape, dtype=mil_types.bool), mb.TensorSpec(shape=bias.shape)],
                opset_version=ct.target.iOS18)
    def prog(query, key, value, keep_mask, float_mask):
        return (mb.scaled_dot_product_attention(query=query, key=key, value=value),
                mb.scaled_dot_product_attention(query=query, key=key, value=value, attn_mask=keep_mask),
                mb.scaled_dot_product_attention(query=query, key=key, value=value, attn_mask=float_mask))

    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                         compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16)
    model = load_model(mlmodel, backend="mil", precision=precision)
    assert [op.op_type for op in model.function.operations].count("scaled_dot_product_attention") == 3
    # Core ML model inputs cannot be bool: the converter makes it an fp32 input cast to bool in the program
    out = model.predict({"query": q, "key": k, "value": v, "keep_mask": keep.astype(np.float32), "float_mask": bias})
    got = [out[o.name] for o in model.outputs]
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    expected = [numpy_attention(q64, k64, v64), numpy_attention(q64, k64, v64, keep),
                numpy_attention(q64, k64, v64, bias.astype(np.float64))]
    # fp16: weights sum to 1, so the error is ~ max|v| * (2**-11 per rounding of q, k, v, scores) ~ 1e-2
    tol = dict(atol=1e-5, rtol=1e-4) if precision == "fp32" else dict(atol=2e-2, rtol=2e-2)
    assert_outputs_close(got, expected, ["no mask", "bool mask", "float mask"], tol)


class RelPositionMHA(torch.nn.Module):
    """NeMo FastConformer's relative-position multi-head attention (RelPositionMultiHeadAttention):
    content scores with bias u, position scores with bias v through ``rel_shift``, softmax, values."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.h, self.d_k = heads, d_model // heads
        self.linear_q = torch.nn.Linear(d_model, d_model)
        self.linear_k = torch.nn.Linear(d_model, d_model)
        self.linear_v = torch.nn.Linear(d_model, d_model)
        self.linear_out = torch.nn.Linear(d_model, d_model)
        self.linear_pos = torch.nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = torch.nn.Parameter(torch.randn(heads, self.d_k) * 0.1)
        self.pos_bias_v = torch.nn.Parameter(torch.randn(heads, self.d_k) * 0.1)

    @staticmethod
    def rel_shift(x):
        b, h, qlen, pos_len = x.size()
        x = F.pad(x, pad=(1, 0))
        x = x.view(b, h, -1, qlen)
        return x[:, :, 1:].view(b, h, qlen, pos_len)

    def forward(self, x, pos_emb):  # x [B, T, D], pos_emb [1, 2T-1, D]
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(1, -1, self.h, self.d_k).transpose(1, 2)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        matrix_ac = torch.einsum("bhqd,bhkd->bhqk", q_u, k)  # lowered to a transposed matmul
        matrix_bd = self.rel_shift(torch.matmul(q_v, p.transpose(-2, -1)))[:, :, :, :t]
        attn = torch.softmax((matrix_ac + matrix_bd) / math.sqrt(self.d_k), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, self.h * self.d_k)
        return self.linear_out(out)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(frames=st.integers(1, 10), heads=st.sampled_from([1, 2, 4]), d_k=st.sampled_from([2, 4, 8]),
       seed=st.integers(0, 2**16))
def test_fastconformer_rel_position_attention(precision, frames, heads, d_k, seed):
    torch.manual_seed(seed)
    d_model = heads * d_k
    module = RelPositionMHA(d_model, heads)
    inputs = [torch.randn(1, frames, d_model), torch.randn(1, 2 * frames - 1, d_model)]
    # fp16: scores pass through five fp16-rounded projections of d_model <= 32 terms before the softmax;
    # 3e-2 covers the accumulated ~1e-2 relative error on outputs of size ~1.
    tol = {} if precision == "fp32" else dict(atol=3e-2, rtol=3e-2)
    assert_matches_torch(module, inputs, precision=precision, **tol)
