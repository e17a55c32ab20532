"""Parakeet TDT v3, beyond the generated suite (tests/test_parity.py: per component, quantization, and the family's
transcript pipeline check, ``test_pipeline[parakeet-tdt-v3/transcript/...]``):

- the transcript check itself: it names the first differing token when a converted component decides wrongly;
- dimensions come from the model's configuration (a model of other sizes goes through the same converters);
- the int16 shape trap of coremltools' fp16 pipeline on the preprocessor's flexible input;
- model loading: ``.nemo`` errors, the pinned Hugging Face download, the tiny model's ``.nemo`` round trip, the
  family's own model-source options.

``pytest -k parakeet`` selects these with the generated tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nemo.collections.asr", reason="NeMo is not installed: pip install -e '.[parakeet]'")

from conversions.models.parakeet_tdt import converters, family, inputs, modules, nemo_models, pipeline  # noqa: E402

FAMILY = family.FAMILY


@pytest.fixture(scope="module")
def model(parity):
    return parity.reference(FAMILY)[0]


@pytest.fixture(scope="module")
def clip(parity):
    return parity.clip(FAMILY)


# ---- dimensions from the configuration ------------------------------------------------------------------------
def test_dims_are_read_from_the_model(model):
    d = modules.dims(model)
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
        d = modules.dims(other)
        assert (d.d_model, d.pred_hidden, d.vocab_size, d.num_logits) == (32, 48, 96, 96 + 1 + 5)
        expected = {
            converters.convert_encoder: {"encoder": (1, 32, d.encoder_frames)},
            converters.convert_decoder: {"decoder": (1, 48, 1), "h_out": (2, 1, 48), "c_out": (2, 1, 48)},
            converters.convert_joint: {"logits": (1, d.encoder_frames, 1, d.num_logits)},
            converters.convert_joint_decision_step: {"token_id": (1, 1, 1), "duration": (1, 1, 1)},
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
    torch_pre = modules.preprocessor_module(model)
    d = modules.dims(model)
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

    path = nemo_models.tiny_parakeet_tdt_path(family.MODEL_CACHE)
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
    with pytest.raises((FileNotFoundError, ValueError), match="NeMo checkpoint .*" + bad.replace(".", r"\.")):
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


def test_family_name_follows_the_model_source(tmp_path):
    """Each model source gets its own family name (report, baselines); the options are the family's own."""
    checkpoint = tmp_path / "My Parakeet.nemo"
    checkpoint.write_bytes(b"x")
    assert FAMILY.name == "parakeet-tdt-v3" and FAMILY.with_options({}) is FAMILY
    path_dest, id_dest, revision_dest = (o.dest for o in FAMILY.options)
    assert FAMILY.with_options({path_dest: str(checkpoint)}).name == "parakeet-tdt-v3-my-parakeet"
    by_id = FAMILY.with_options({id_dest: "nvidia/parakeet-tdt-0.6b-v3", revision_dest: "abc"})
    assert by_id.name == "parakeet-tdt-v3-parakeet-tdt-0.6b-v3"
    assert by_id.source == {id_dest: "nvidia/parakeet-tdt-0.6b-v3", revision_dest: "abc"}
    assert all(o.flag.startswith("--parakeet-tdt-v3-") for o in FAMILY.options)


def test_tiny_model_says_its_fitted_text(model, clip):
    call = inputs.audio_call(modules.dims(model), clip, clip.shape[-1])
    assert model.tokenizer.ids_to_text(pipeline.nemo_transcribe(model, call)[0]) == nemo_models.FIT_TEXT


def test_transcript_check_names_the_first_differing_token(model, clip):
    """The pipeline check fails, naming the token and NeMo's vs our frames, when a converted component decides
    differently: a joint that always says blank with duration 1 (a wrong index, the kind of bug it must catch)."""
    class AlwaysBlank:
        def predict(self, feeds):
            d = modules.dims(model)
            return {"token_id": np.array([[[d.blank_id]]], np.int32), "duration": np.array([[[1]]], np.int32)}

    class Torch:  # the torch components behind the .predict interface
        def __init__(self, module, outputs):
            self.module, self.outputs = module, outputs

        def predict(self, feeds):
            return dict(zip(self.outputs, inputs.run_module(self.module, *feeds.values())))

    components = {"mel-encoder": Torch(modules.mel_encoder_module(model), ("encoder", "encoder_length")),
                  "decoder": Torch(modules.decoder_module(model), ("decoder", "h_out", "c_out")),
                  "joint-decision-step": AlwaysBlank()}
    result = pipeline.transcript_check(model, clip, components)
    assert not result.passed
    assert "first difference at token 0" in result.failure and "NeMo" in result.failure
    components["joint-decision-step"] = Torch(modules.joint_decision_module(model), ("token_id", "token_prob", "duration"))
    assert pipeline.transcript_check(model, clip, components).passed


@pytest.mark.parametrize("args, message", [
    (["--parakeet-tdt-v3-nemo-path", "missing-model.nemo"],
     "--parakeet-tdt-v3-nemo-path: .*missing-model.nemo does not exist"),
    (["--parakeet-tdt-v3-nemo-path", __file__, "--parakeet-tdt-v3-model-id", "nvidia/parakeet-tdt-0.6b-v3"],
     "name two models: give one"),
    (["--parakeet-tdt-v3-model-revision", "abc"], "goes with --parakeet-tdt-v3-model-id"),
], ids=["missing-file", "two-sources", "revision-alone"])
def test_model_source_options_fail_early(args, message, tmp_path):
    """A bad model-source option is a usage error at startup, naming the problem (not a failure per test)."""
    import re
    import subprocess
    import sys

    from conversions.testing import clean_subprocess_env

    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "tests/test_parity.py", *args], cwd=family.MODEL_CACHE.parents[1], capture_output=True,
                          text=True, timeout=300, env=clean_subprocess_env())
    assert done.returncode == 4, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert re.search(message, done.stderr), done.stderr[-2000:]
