"""Parakeet TDT v3, beyond the generated per-component suite (tests/test_parity.py, tests/test_quantization.py):

- transcript parity: the host-side TDT greedy decoder (``conversions/stt/tdt.py``) driving the converted components
  (fused mel+encoder, decoder step, single-step joint+decision) on each backend gives exactly NeMo's own greedy TDT
  decoding of the same audio; the same decoder driven by the torch components tells a decoder bug from a
  conversion bug;
- dimensions come from the model's configuration (a model of other sizes goes through the same converters);
- the int16 shape trap of coremltools' fp16 pipeline on the preprocessor's flexible input;
- model loading: ``.nemo`` errors, the pinned Hugging Face download, the tiny model's ``.nemo`` round trip.

``pytest -k parakeet`` selects these with the generated tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nemo.collections.asr", reason="NeMo is not installed: pip install -e '.[parakeet]'")

from conversions.pytest_plugin import selected_variants, skip_unless_runnable  # noqa: E402
from conversions.stt import nemo_models, parakeet_tdt as pt  # noqa: E402

FAMILY = pt.FAMILY


@pytest.fixture(scope="module")
def model(parity):
    return parity.reference(FAMILY)[0]


@pytest.fixture(scope="module")
def clip(parity):
    return parity.clip(FAMILY)


# ---- dimensions from the configuration ------------------------------------------------------------------------
def test_dims_are_read_from_the_model(model):
    d = pt.dims(model)
    cfg = model.cfg
    assert d.d_model == cfg.encoder.d_model and d.pred_hidden == cfg.decoder.prednet.pred_hidden
    assert d.pred_layers == cfg.decoder.prednet.pred_rnn_layers and d.n_mels == cfg.preprocessor.features
    assert d.vocab_size == model.tokenizer.vocab_size and d.blank_id == model.decoder.blank_idx
    assert d.durations == tuple(cfg.decoding.durations)
    # 15 s at 16 kHz, hop 160: 1501 mel frames (centred STFT), 8x subsampling: 188 encoder frames (the contract)
    assert (d.window_samples, d.mel_frames, d.encoder_frames) == (240000, 1501, 188)


def test_other_sizes_go_through_the_same_converters(tmp_path):
    """A model of different sizes (and 3 durations): every converted component's I/O shapes follow its config."""
    from conversions.runtime import load_model

    scale = {"d_model": 32, "n_layers": 1, "n_heads": 4, "subsampling_conv_channels": 16, "pred_hidden": 48,
             "joint_hidden": 40, "vocab_size": 96}
    other = nemo_models.build_tiny_parakeet_tdt(seed=3, scale=scale)
    try:
        d = pt.dims(other)
        assert (d.d_model, d.pred_hidden, d.vocab_size, d.num_logits) == (32, 48, 96, 96 + 1 + 5)
        expected = {
            pt.convert_encoder: {"encoder": (1, 32, d.encoder_frames)},
            pt.convert_decoder: {"decoder": (1, 48, 1), "h_out": (2, 1, 48), "c_out": (2, 1, 48)},
            pt.convert_joint: {"logits": (1, d.encoder_frames, 1, d.num_logits)},
            pt.convert_joint_decision_step: {"token_id": (1, 1, 1), "duration": (1, 1, 1)},
        }
        for convert, shapes in expected.items():
            program = load_model(convert(other, "fp32"), backend="mil", precision="fp32")
            declared = {s.name: tuple(s.shape) for s in program.outputs}
            for name, shape in shapes.items():
                assert declared[name] == shape, (convert.__name__, name, declared[name], shape)
    finally:
        import shutil

        shutil.rmtree(other._tokenizer_tmpdir, ignore_errors=True)


# ---- coremltools' int16 shape cast ------------------------------------------------------------------------------
def test_fp16_preprocessor_keeps_runtime_shapes_int32(parity):
    """coremltools' fp16 pipeline casts gather inputs to int16 even when they are runtime shapes; a 240,000-sample
    input would wrap to a negative length. The export path removes that pass for flexible dims beyond int16."""
    from conversions.export import package_metadata
    from conversions.runtime import load_model

    package = parity.package(FAMILY, FAMILY.component("preprocessor"), "fp16").path
    ops = load_model(package, backend="mil").function.operations
    int16_values = [f"{op.op_type} {op.name}" for op in ops for out in op.outputs
                    if getattr(out.type, "dtype", None) in ("int16", "uint16")]
    assert not int16_values, int16_values
    assert "add_int16_cast" in package_metadata(package).get("removed_passes", "")


def test_preprocessor_takes_any_length_up_to_the_window(parity, model, clip):
    """The flexible input at both ends and in between, on the fp16 program (not only the lengths hypothesis drew):
    the first n samples of the clip (speech, so the clip's bound holds), the last length the whole window."""
    from conversions.runtime import load_model

    program = load_model(parity.package(FAMILY, FAMILY.component("preprocessor"), "fp16").path, backend="mil")
    torch_pre = pt.preprocessor_module(model)
    d = pt.dims(model)
    speech = np.zeros(d.window_samples, np.float32)
    speech[:clip.shape[-1]] = clip.reshape(-1)[:d.window_samples]
    bound = FAMILY.component("preprocessor").bounds["fp16"]["mel"]
    for n in (1, d.hop, 16000, d.window_samples):
        audio = speech[None, :n].copy()
        length = np.array([n], np.int32)
        got = program.predict({"audio_signal": audio, "audio_length": length})
        with torch.no_grad():
            mel, mel_length = torch_pre(torch.from_numpy(audio), torch.from_numpy(length))
        assert got["mel"].shape == tuple(mel.shape) == (1, d.n_mels, n // d.hop + 1), n
        assert int(got["mel_length"][0]) == int(mel_length[0]), n
        assert np.abs(got["mel"] - mel.numpy()).max() <= bound.atol + bound.rtol * np.abs(mel.numpy()).max(), n


# ---- loading -------------------------------------------------------------------------------------------------------
def test_tiny_model_is_a_real_nemo_checkpoint(model):
    """The offline model went through save_to / restore_from like a user's checkpoint, tokenizer included."""
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    path = nemo_models.tiny_parakeet_tdt_path(pt.MODEL_CACHE)
    assert path.suffix == ".nemo" and path.is_file()
    assert isinstance(model, EncDecRNNTBPEModel)
    assert model.cfg.decoding.model_type == "tdt" and model.cfg.loss.loss_name == "tdt"
    assert type(model.encoder).__name__ == "ConformerEncoder" and model.encoder.self_attention_model == "rel_pos"
    assert model.cfg.encoder.subsampling == "dw_striding" and model.cfg.encoder.subsampling_factor == 8
    ids = model.tokenizer.text_to_ids("good morning everyone")
    assert ids and model.tokenizer.ids_to_text(ids) == "good morning everyone"


@pytest.mark.parametrize("bad", ["missing.nemo", "model.pt"])
def test_load_nemo_names_the_bad_path(tmp_path, bad):
    path = tmp_path / bad
    if bad.endswith(".pt"):
        path.write_bytes(b"x")
    with pytest.raises((FileNotFoundError, ValueError), match="--nemo-path: .*" + bad.replace(".", r"\.")):
        nemo_models.load_nemo(path)


def test_download_pins_the_revision(monkeypatch, tmp_path):
    """--model-id downloads the .nemo file at the pinned revision through huggingface_hub (the hub is unreachable
    here: the call is recorded, not made)."""
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda **kw: calls.append(kw) or str(tmp_path / kw["filename"]))
    path = nemo_models.download_nemo(nemo_models.PARAKEET_TDT_V3_ID)
    assert calls == [{"repo_id": "nvidia/parakeet-tdt-0.6b-v3", "filename": "parakeet-tdt-0.6b-v3.nemo",
                      "revision": nemo_models.PARAKEET_TDT_V3_REVISION, "cache_dir": None}]
    assert path.name == "parakeet-tdt-0.6b-v3.nemo"
    nemo_models.download_nemo("someone/other-model", revision="abc")
    assert calls[-1]["filename"] == "other-model.nemo" and calls[-1]["revision"] == "abc"
    with pytest.raises(ValueError, match="owner/name"):
        nemo_models.download_nemo("not-an-id")


def test_family_name_follows_the_model_source(monkeypatch):
    monkeypatch.delenv(pt.NEMO_PATH_ENV, raising=False)
    monkeypatch.delenv(pt.MODEL_ID_ENV, raising=False)
    assert pt._family_name() == "parakeet-tdt-v3"
    monkeypatch.setenv(pt.NEMO_PATH_ENV, "/models/My Parakeet.nemo")
    assert pt._family_name() == "parakeet-tdt-v3-my-parakeet"
    monkeypatch.delenv(pt.NEMO_PATH_ENV)
    monkeypatch.setenv(pt.MODEL_ID_ENV, "nvidia/parakeet-tdt-0.6b-v3")
    assert pt._family_name() == "parakeet-tdt-v3-parakeet-tdt-0.6b-v3"


def pytest_generate_tests(metafunc):
    if "transcript_variant" in metafunc.fixturenames:
        variants = selected_variants(metafunc.config)
        metafunc.parametrize("transcript_variant", variants, ids=[f"{FAMILY.name}/{v.id}" for v in variants])


# ---- transcript parity ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_call(model, clip):
    """The clip zero-padded to the 15 s window with its true length: what an app feeds the fused encoder."""
    return pt.audio_call(pt.dims(model), clip, clip.shape[-1])


@pytest.fixture(scope="module")
def nemo_result(model, clip_call):
    return pt.nemo_transcribe(model, clip_call)


@pytest.fixture(scope="module")
def torch_result(model, clip_call):
    return pt.transcribe(model, pt.torch_pipeline(model), clip_call)


def _first_difference(ours: list[int], theirs: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return i
    return None if len(ours) == len(theirs) else min(len(ours), len(theirs))


def _describe(model, label, result, tokens, frames, reference=None) -> str:
    """Where a transcript parts from NeMo's, with the reference's top-2 margin at that step (a margin within the
    numerical error means a near-tie; above it, a conversion bug)."""
    i = _first_difference(result.tokens, tokens)
    if i is None:
        i = _first_difference(result.frames, frames)
    lines = [f"{label}: transcript differs from NeMo's greedy TDT decoding",
             f"  NeMo  ({len(tokens)} tokens): {tokens}  {model.tokenizer.ids_to_text(tokens)!r}",
             f"  ours  ({len(result.tokens)} tokens): {result.tokens}  {model.tokenizer.ids_to_text(result.tokens)!r}",
             f"  first difference at token {i}: frames NeMo {frames[i:i + 3]} vs ours {result.frames[i:i + 3]}"]
    if reference is not None and i is not None and i < len(reference.token_steps):
        step = reference.token_steps[i]
        lines.append(f"  torch reference margin at that step: token {reference.margins[step]:.3g}, duration "
                     f"{reference.duration_margins[step]:.3g} (decisions above {pt.DECISION_MARGIN:g} must not flip)")
    return "\n".join(lines)


def test_torch_components_transcribe_like_nemo(model, torch_result, nemo_result):
    """Our host decoder driving the torch wrappers = NeMo's own decoding: a difference here is a decoder (or
    wrapper) bug, not a conversion one."""
    tokens, frames, durations = nemo_result
    assert tokens, "NeMo decoded nothing: the tiny model is fitted to say FIT_TEXT on the clip"
    assert (torch_result.tokens, torch_result.frames) == (tokens, frames), _describe(model, "torch", torch_result,
                                                                                     tokens, frames)
    if durations:  # NeMo fills token durations only in some configurations
        assert torch_result.durations == durations
    # the decisions are made, not tied: the transcript's exactness below is a real requirement
    assert torch_result.min_margin > pt.DECISION_MARGIN, torch_result.min_margin


def test_tiny_model_says_its_fitted_text(model, nemo_result):
    assert model.tokenizer.ids_to_text(nemo_result[0]) == nemo_models.FIT_TEXT


def test_transcript_parity(transcript_variant, parity, model, clip_call, nemo_result, torch_result):
    """The converted fused mel+encoder, decoder step and single-step joint+decision, driven by the host TDT greedy
    decoder on the variant's backend, produce exactly NeMo's tokens at exactly its frames."""
    skip_unless_runnable(transcript_variant)
    precision = transcript_variant.program_precision
    loaded = [transcript_variant.load(parity.package(FAMILY, FAMILY.component(name), precision).path)
              for name in ("mel-encoder", "decoder", "joint-decision-step")]
    result = pt.transcribe(model, pt.package_pipeline(model, *loaded), clip_call)
    tokens, frames, _ = nemo_result
    label = f"{FAMILY.name}/{transcript_variant.id}"
    assert (result.tokens, result.frames) == (tokens, frames), _describe(model, label, result, tokens, frames,
                                                                         torch_result)
    assert result.durations == torch_result.durations, label


@pytest.mark.parametrize("args, message", [
    (["--nemo-path", "missing-model.nemo"], "--nemo-path: .*missing-model.nemo does not exist"),
    (["--nemo-path", __file__, "--model-id", "nvidia/parakeet-tdt-0.6b-v3"], "name two models: give one"),
], ids=["missing-file", "two-sources"])
def test_model_source_options_fail_early(args, message, tmp_path):
    """A bad --nemo-path / --model-id is a usage error at startup, naming the problem (not a failure per test)."""
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "tests/test_parity.py", *args], cwd=pt.MODEL_CACHE.parents[1], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 4, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert re.search(message, done.stderr), done.stderr[-2000:]
