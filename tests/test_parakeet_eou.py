"""Parakeet EOU pieces the generated parity tests rely on, checked directly:

- the committed tiny model: files match the manifest, an altered file is refused naming it, the restored ``.nemo``
  has the weights the manifest records (the same bits on every CPU, nothing trained);
- the chunk variants come from NeMo's ``setup_streaming_params`` and agree with the shipped table of MODELS.md where
  the table follows NeMo (valid output frames, pre-encode cache of the 320 ms port, 320/1280 ms shifts);
- the host streaming decoder: ``max_symbols`` per frame, state advancing only on non-blank, reset after an ``<EOU>``
  chunk, only each chunk's valid frames decoded; a broken decoder is caught by the streamed-transcript check;
- the family's model-source options are its own (``--parakeet-eou-*``) and validated.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("nemo.collections.asr", reason="NeMo is not installed: pip install -e '.[parakeet]'")

from conversions.export import weights_digest  # noqa: E402
from conversions.models.parakeet_eou import nemo_models as nm  # noqa: E402
from conversions.models.parakeet_eou import streaming  # noqa: E402
from conversions.models.parakeet_eou.family import FAMILY, configure  # noqa: E402
from conversions.models.parakeet_eou.modules import CHUNK_FRAMES, chunk_variants, dims  # noqa: E402
from conversions.models.parakeet_eou.pipeline import stream_check  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return nm.tiny_parakeet_eou(tmp_path_factory.mktemp("eou-cache"))


@pytest.fixture(scope="module")
def clip():
    from conversions.audio import load_speech_clip

    return load_speech_clip()


# ---- the committed tiny model ----------------------------------------------------------------------------------
def test_committed_files_match_the_manifest_and_the_fit():
    manifest = nm.verify_tiny_files()
    assert (manifest["scale"], manifest["seed"]) == (nm.TINY_SCALE, 0)
    assert manifest["fit"]["text"] == nm.FIT_TEXT
    for variant in CHUNK_FRAMES:
        recorded = manifest["variants"][variant]
        assert recorded["min_margin"] > 1.0 and len(recorded["eou_chunks"]) == len(nm.UTTERANCES)


def test_restored_model_has_the_committed_weights(model):
    assert weights_digest(model) == nm.verify_tiny_files()["weights_digest"]
    d = dims(model)
    assert d.eou_id is not None and d.eob_id is not None and d.eou_id != d.eob_id
    assert model.tokenizer.ids_to_tokens([d.eou_id, d.eob_id]) == [nm.EOU, nm.EOB]


def test_an_altered_committed_file_is_refused(tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(nm.TINY_DIR, copy)
    (copy / "vocab.txt").write_text("tampered\n")
    with pytest.raises(nm.TinyModelDataError, match="vocab.txt"):
        nm.verify_tiny_files(copy)
    (copy / "weights.npz").unlink()
    with pytest.raises(nm.TinyModelDataError, match="weights.npz|vocab.txt"):
        nm.verify_tiny_files(copy)


# ---- chunk variants from NeMo --------------------------------------------------------------------------------
# MODELS.md's shipped table: variant -> (samples in, shift samples, pre-cache, valid encoder frames out). Each row
# comes from another public port; NeMo's setup_streaming_params(chunk_size=c, shift_size=c) gives chunk = shift.
SHIPPED = {"160ms": (2560, 1280, 16, 2), "320ms": (10080, 5120, 9, 4), "1280ms": (20480, 20480, 16, 16)}


@pytest.mark.parametrize("variant", list(CHUNK_FRAMES))
def test_chunk_variants_follow_nemo_and_the_shipped_table(model, variant):
    v = chunk_variants(model)[variant]
    samples, shift, pre_cache, valid = SHIPPED[variant]
    assert v.valid_out_frames == valid == CHUNK_FRAMES[variant]
    assert v.mel_frames == v.shift_frames == 8 * valid  # NeMo: chunk = shift, 8 mel frames per encoder frame
    assert v.pre_cache_frames == 9  # NeMo's pre_encode_cache_size for causal 8x dw_striding
    assert v.drop_extra_pre_encoded == 2 and v.last_channel_cache == 70
    if variant != "160ms":  # the 160 ms port advances by half its window (1,280 samples); NeMo's chunk = shift
        assert v.shift_samples == shift
    if variant == "320ms":
        assert v.pre_cache_frames == pre_cache
    if variant == "1280ms":
        assert v.samples == samples


# ---- the host streaming decoder ------------------------------------------------------------------------------
BLANK, EOU_ID = 9, 1


def _scripted(decisions_per_frame):
    """encode/decoder/joint fakes: chunk k yields the frames listed; a frame decides tokens in order, then blank."""
    calls = [{"k": k} for k in range(len(decisions_per_frame))]
    log = {"decoder": []}

    def encode(call):
        frames = decisions_per_frame[call["k"]]
        enc = np.zeros((1, 1, 4), np.float32)
        for t, _ in enumerate(frames):
            enc[0, 0, t] = 10 * call["k"] + t
        return {"encoded_output": enc, "encoded_length": np.array([len(frames)], np.int32)}

    def decoder_step(token, state):
        log["decoder"].append((token, state))
        return np.array([len(log["decoder"])]), ("after", token)

    queue = {}

    def joint_step(frame, g):
        key = int(frame.reshape(-1)[0])
        k, t = divmod(key, 10)
        pending = queue.setdefault(key, list(decisions_per_frame[k][t]))
        return streaming.Decision(pending.pop(0) if pending else BLANK, 5.0)

    return calls, encode, decoder_step, joint_step, log


def test_stream_decoder_emits_up_to_max_symbols_and_resets_after_eou():
    frames = [[[4], [5, 6, 7]], [[EOU_ID]], [[3]]]  # chunk 0: two frames; chunk 1: <EOU>; chunk 2: a new utterance
    calls, encode, decoder_step, joint_step, log = _scripted(frames)
    result = streaming.stream_decode(calls, encode, decoder_step, joint_step, "zero", blank_id=BLANK, eou_id=EOU_ID,
                                     max_symbols=2)
    assert result.tokens == [4, 5, 6, EOU_ID, 3]  # 7 dropped: at most two symbols on that frame
    assert result.chunks == [0, 0, 0, 1, 2] and result.eou_chunks(EOU_ID) == [1]
    decoder_tokens = [token for token, _ in log["decoder"]]
    assert decoder_tokens == [BLANK, 4, 5, 6, EOU_ID, BLANK, 3]  # blank start, non-blank only, blank after reset
    assert log["decoder"][5] == (BLANK, "zero")  # the reset starts from the initial state


def test_stream_decoder_decodes_only_valid_frames():
    frames = [[[4]], [[5]]]
    calls, encode, decoder_step, joint_step, _ = _scripted(frames)

    def short(call):
        out = encode(call)
        out["encoded_length"] = np.array([0 if call["k"] == 1 else 1], np.int32)
        return out

    result = streaming.stream_decode(calls, short, decoder_step, joint_step, "zero", blank_id=BLANK, eou_id=EOU_ID,
                                     max_symbols=2)
    assert result.tokens == [4]
    with pytest.raises(ValueError, match="max_symbols"):
        streaming.stream_decode(calls, encode, decoder_step, joint_step, "zero", blank_id=BLANK, eou_id=EOU_ID,
                                max_symbols=0)


def test_stream_check_catches_a_decoder_that_resets_mid_utterance(model, clip, monkeypatch):
    """The torch run passes; the same host decoder resetting its state after every chunk that emitted the clip's
    most frequent word piece (as if it were <EOU>) must fail, naming the first differing token."""
    check = stream_check("320ms")
    assert check(model, clip, None).passed
    ids = [int(i) for i in model.tokenizer.text_to_ids(nm.UTTERANCES[0][0])]
    frequent = max(set(ids), key=ids.count)
    original = streaming.stream_decode

    def early_reset(calls, encode, decoder_step, joint_step, initial_state, **kw):
        return original(calls, encode, decoder_step, joint_step, initial_state, **{**kw, "eou_id": frequent})

    monkeypatch.setattr("conversions.models.parakeet_eou.streaming.stream_decode", early_reset)
    result = check(model, clip, None)
    assert not result.passed and "first difference at token" in result.failure


# ---- options ---------------------------------------------------------------------------------------------------
def test_model_source_options_are_the_family_own(tmp_path):
    flags = [o.flag for o in FAMILY.options]
    assert flags == ["--parakeet-eou-nemo-path", "--parakeet-eou-model-id", "--parakeet-eou-model-revision"]
    dests = [o.dest for o in FAMILY.options]
    with pytest.raises(ValueError, match="does not exist"):
        configure(FAMILY, {dests[0]: str(tmp_path / "missing.nemo")})
    with pytest.raises(ValueError, match="owner/name"):
        configure(FAMILY, {dests[1]: "parakeet"})
    with pytest.raises(ValueError, match="goes with"):
        configure(FAMILY, {dests[2]: "abc"})
    renamed = configure(FAMILY, {dests[1]: "nvidia/parakeet_realtime_eou_120m-v1"})
    assert renamed.name == "parakeet-eou-parakeet-realtime-eou-120m-v1"
