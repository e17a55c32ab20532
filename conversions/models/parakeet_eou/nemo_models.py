"""Parakeet Realtime EOU 120M checkpoints, three ways, all ending in ``EncDecRNNTBPEModel.restore_from`` (NeMo picks
the checkpoint's own class, e.g. ``EncDecRNNTBPEEOUModel``, from its config):

- a local ``.nemo`` (``pytest --parakeet-eou-nemo-path FILE.nemo``);
- a Hugging Face id at a pinned revision (``pytest --parakeet-eou-model-id nvidia/parakeet_realtime_eou_120m-v1``),
  downloaded once with ``huggingface_hub``;
- offline and by default: :func:`tiny_parakeet_eou`, the real EOU configuration scaled down (same module types:
  cache-aware FastConformer with causal 8x dw_striding, chunked-limited attention [70, 1], causal depthwise conv
  with a time cache, a 1-layer LSTM prediction net, RNN-T joint) with a SentencePiece tokenizer whose vocabulary
  holds ``<EOU>`` and ``<EOB>``, fitted to transcribe the committed clip's two sentences each followed by ``<EOU>``.
  Its weights and tokenizer are committed under ``tiny/`` (written by ``scripts/fit_tiny_parakeet_eou.py``) and
  assembled into a real ``.nemo`` (cached under ``.cache/models/``, digest-checked) that is restored through the
  same path as a user's checkpoint: nothing is trained at test time, so the model is the same bits on every CPU.

Why fitted: a random model decides on near-ties (see the TDT family's notes); a fitted one decides with margins of
nats along its greedy path, so "the same transcript, ``<EOU>`` in the same chunk" tests the conversion, not luck.
The fit streams the clip through the encoder chunk by chunk with its caches, as an app does (NeMo's fixed-shape
mode: zero pre-encode cache first, extra pre-encoded frames dropped on every chunk), in each chunk variant in turn
(160, 320, 1280 ms; and offline every fourth step, so NeMo's offline transcript is comparable), so the margins
hold where the suite decides: along every variant's streamed greedy path.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from conversions.models import nemo_committed as committed
from conversions.models.parakeet_tdt.nemo_models import _cached_nemo, _quiet_nemo, download_nemo, load_nemo

PARAKEET_EOU_ID = "nvidia/parakeet_realtime_eou_120m-v1"
PARAKEET_EOU_FILE = "parakeet_realtime_eou_120m-v1.nemo"
EOU, EOB = "<EOU>", "<EOB>"

# The real model's architecture (MODELS.md: 17 layers, d_model 512, attention context [70, 1], causal conv with a
# time cache of 8 = kernel 9, 8x subsampling, 1-layer LSTM of 640, 1024 BPE + <EOU> + <EOB> (+ blank = 1027 logits),
# mel front end without per-feature normalisation). Training-only sections are left out.
PARAKEET_EOU_CONFIG = {
    "sample_rate": 16000,
    "preprocessor": {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "sample_rate": 16000, "normalize": "NA", "window_size": 0.025, "window_stride": 0.01, "window": "hann",
        "features": 128, "n_fft": 512, "log": True, "frame_splicing": 1, "dither": 1e-05, "pad_to": 0,
        "pad_value": 0.0,
    },
    "encoder": {
        "_target_": "nemo.collections.asr.modules.ConformerEncoder",
        "feat_in": 128, "feat_out": -1, "n_layers": 17, "d_model": 512, "subsampling": "dw_striding",
        "subsampling_factor": 8, "subsampling_conv_channels": 256, "causal_downsampling": True,
        "ff_expansion_factor": 4, "self_attention_model": "rel_pos", "n_heads": 8, "att_context_size": [70, 1],
        "att_context_style": "chunked_limited", "xscaling": True, "untie_biases": True, "pos_emb_max_len": 5000,
        "conv_kernel_size": 9, "conv_norm_type": "layer_norm", "conv_context_size": "causal",
        "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1,
    },
    "decoder": {
        "_target_": "nemo.collections.asr.modules.RNNTDecoder",
        "normalization_mode": None, "random_state_sampling": False, "blank_as_pad": True,
        "prednet": {"pred_hidden": 640, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.2},
    },
    "joint": {
        "_target_": "nemo.collections.asr.modules.RNNTJoint",
        "log_softmax": None, "preserve_memory": False, "fuse_loss_wer": False, "fused_batch_size": 4,
        "jointnet": {"joint_hidden": 640, "activation": "relu", "dropout": 0.2},
    },
    # greedy RNN-T; shipped Swift decoders stop at 2 symbols per frame, which is what the tiny model is built with
    "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 2}},
    "loss": {"loss_name": "default"},
    "model_defaults": {"enc_hidden": 512, "pred_hidden": 640},
    "vocab_size": 1026,  # SentencePiece pieces incl. <EOU> and <EOB>; the joint adds blank: 1027 logits
}

TINY_SCALE = {"d_model": 64, "n_layers": 2, "n_heads": 8, "subsampling_conv_channels": 32, "pred_hidden": 64,
              "joint_hidden": 64, "vocab_size": 128}

# The committed clip (tests/data/speech_noise_16k.wav, see tests/data/README.md): two espeak sentences separated by
# gaps and a pink-noise burst. (text, first second of speech, last second of speech), read off its envelope.
UTTERANCES = (
    ("the quick brown fox jumps over the lazy dog", 0.85, 3.65),
    ("voice activity detection finds the speech in a noisy recording", 5.55, 9.30),
)
FIT_TEXT = " ".join(f"{text} {EOU}" for text, _, _ in UTTERANCES)
EOU_DELAY_S = 0.25  # <EOU> is emitted this long after the last word (an endpointer waits for a pause)
FIT_CHUNK_FRAMES = (2, 4, 16)  # the 160 / 320 / 1280 ms chunks (encoder frames), streamed in turn while fitting
FIT_STEPS = 200
FIT_LR = 3e-3

TOKENIZER_TEXT = """\
the quick brown fox jumps over the lazy dog while the speech model listens to every word
voice activity detection finds the speech in a noisy recording and the recognizer writes it down
a voice activity detector decides when someone is speaking and when the utterance ends
parity means the converted program behaves like the original one on the same audio
we measure the error of every component and compare the transcript token by token
the encoder turns mel frames into features and the decoder predicts the next token
streaming models keep caches between chunks and emit an end of utterance token
"""


def config_for(scale: dict | None = None) -> dict:
    """The EOU configuration, optionally scaled: ``scale`` replaces sizes (keys of :data:`TINY_SCALE`)."""
    cfg = copy.deepcopy(PARAKEET_EOU_CONFIG)
    if scale:
        enc = cfg["encoder"]
        for key in ("d_model", "n_layers", "n_heads", "subsampling_conv_channels"):
            enc[key] = scale.get(key, enc[key])
        cfg["decoder"]["prednet"]["pred_hidden"] = scale.get("pred_hidden", 640)
        cfg["joint"]["jointnet"]["joint_hidden"] = scale.get("joint_hidden", 640)
        cfg["model_defaults"] = {"enc_hidden": enc["d_model"], "pred_hidden": cfg["decoder"]["prednet"]["pred_hidden"]}
        cfg["vocab_size"] = scale.get("vocab_size", cfg["vocab_size"])
    return cfg


def train_tokenizer(directory: Path, vocab_size: int) -> None:
    """A SentencePiece BPE tokenizer in ``directory`` (``tokenizer.model``, ``tokenizer.vocab``, ``vocab.txt``) with
    ``<EOU>`` and ``<EOB>`` as user-defined pieces (kept whole in text, one id each)."""
    import sentencepiece as spm

    text = directory / "text.txt"
    if vocab_size <= 256:
        text.write_text(TOKENIZER_TEXT)
    else:  # the real 1026 pieces: BPE needs as many distinct merges as it learns pieces
        import random

        rng = random.Random(vocab_size)
        words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                 for _ in range(40 * vocab_size)]
        text.write_text(TOKENIZER_TEXT + "\n".join(" ".join(words[i:i + 16]) for i in range(0, len(words), 16)))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(directory / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, num_threads=1, bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2,
        hard_vocab_limit=True, split_digits=False, user_defined_symbols=[EOU, EOB])
    processor = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    (directory / "vocab.txt").write_text("".join(f"{processor.id_to_piece(i)}\n" for i in range(processor.get_piece_size())))
    text.unlink()


def _new_model(cfg: dict, tokenizer_dir: Path, seed: int):
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from omegaconf import OmegaConf

    cfg = dict(cfg)
    cfg.pop("vocab_size", None)
    cfg["tokenizer"] = {"dir": str(tokenizer_dir), "type": "bpe"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EncDecRNNTBPEModel(cfg=OmegaConf.create(cfg))
    return model


def build_tiny_parakeet_eou(seed: int = 0, scale: dict | None = None):
    """A random-weight ``EncDecRNNTBPEModel`` of the EOU architecture (``scale`` = :data:`TINY_SCALE` by default)
    with its ``<EOU>``/``<EOB>`` tokenizer, in eval mode. The caller removes ``model._tokenizer_tmpdir`` once the
    model is saved (NeMo registers the tokenizer files as artifacts)."""
    _quiet_nemo()
    cfg = config_for(TINY_SCALE if scale is None else scale)
    tokenizer_dir = Path(tempfile.mkdtemp(prefix="parakeet-eou-tokenizer-"))
    try:
        train_tokenizer(tokenizer_dir, cfg["vocab_size"])
        model = _new_model(cfg, tokenizer_dir, seed)
    except BaseException:
        shutil.rmtree(tokenizer_dir, ignore_errors=True)
        raise
    model._tokenizer_tmpdir = tokenizer_dir
    return model.eval()


# ---- fitting (scripts/fit_tiny_parakeet_eou.py) -----------------------------------------------------------------
def eou_id(model) -> int:
    return int(model.tokenizer.token_to_id(EOU))


def fit_cells(model, frames: int, frame_s: float) -> list[tuple[int, int, int, int]]:
    """The RNN-T alignment the model is fitted along: (frame, text sequence, tokens of that sequence so far, target
    token or blank); sequence k < len(UTTERANCES) is utterance k alone, the last one the whole text. Each
    utterance's tokens (its words, then ``<EOU>``) are spread over its speech frames, two at most per frame,
    ``<EOU>`` :data:`EOU_DELAY_S` after the last word; the decoder restarts (zero state) for each utterance, as an
    app resets it after ``<EOU>``. Blank frames outside speech are also taught with the previous
    utterance's final state (the decoder is reset only at the next chunk boundary)."""
    blank = int(model.decoder.blank_idx)
    cells = []
    plan = {}  # frame -> (utterance, [tokens emitted there])
    spans = []
    for k, (text, start, end) in enumerate(UTTERANCES):
        ids = [int(i) for i in model.tokenizer.text_to_ids(text)]
        first, last = int(start / frame_s), int(end / frame_s)
        per_frame = max(1, -(-len(ids) // (last - first + 1)))
        if per_frame > 2:
            raise ValueError(f"utterance {k}: {len(ids)} tokens in {last - first + 1} frames (more than 2 a frame)")
        for i, token in enumerate(ids):
            t = first + (i * (last - first + 1)) // len(ids)
            plan.setdefault(t, (k, []))[1].append(token)
        eou_frame = min(frames - 1, int((end + EOU_DELAY_S) / frame_s))
        plan.setdefault(eou_frame, (k, []))[1].append(eou_id(model))
        spans.append((first, eou_frame, len(ids) + 1))
    emitted = {k: 0 for k in range(len(UTTERANCES))}
    for t in range(frames):
        current = next((k for k, (first, eou, _) in enumerate(spans) if first <= t <= eou), None)
        if t in plan:
            k, tokens = plan[t]
            for token in tokens:
                cells.append((t, k, emitted[k], token))
                emitted[k] += 1
            cells.append((t, k, emitted[k], blank))
            continue
        if current is not None:
            cells.append((t, current, emitted[current], blank))
            continue
        # silence or noise: blank from a fresh decoder state (reset) and from the last finished utterance's state
        upcoming = next((k for k, (first, _, _) in enumerate(spans) if t < first), None)
        previous = max((k for k, (_, eou, _) in enumerate(spans) if t > eou), default=None)
        if upcoming is not None:
            cells.append((t, upcoming, 0, blank))
        else:
            cells.append((t, previous if previous is not None else 0, 0, blank))
        if previous is not None:
            cells.append((t, previous, spans[previous][2], blank))
    # Without a reset (offline decoding, NeMo's streaming without the app's reset) the decoder continues after
    # <EOU>: the same targets, teacher-forced with the whole text so far (sequence index len(UTTERANCES)).
    offsets = np.cumsum([0] + [count for _, _, count in spans]).tolist()
    continued = [(t, len(UTTERANCES), offsets[k] + u, target) for t, k, u, target in cells if k > 0]
    return cells + continued


def streamed_encoding(model, mel: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """The encoder output of ``mel`` [1, n_mels, F] streamed as an app streams it (the chunks of
    :func:`~.streaming.chunk_calls`, NeMo's buffer's cut: zero pre-encode cache first, extra pre-encoded frames
    dropped on every chunk, caches carried), differentiable in the weights: [1, T, D] of the valid frames. Sets the
    model's own encoder up for chunks of ``chunk_frames`` encoder frames (the caller restores it)."""
    from .modules import chunk_variants
    from .streaming import chunk_calls

    variant = next(v for v in chunk_variants(model).values() if v.encoder_frames == chunk_frames)
    encoder = model.encoder
    encoder.setup_streaming_params(chunk_size=chunk_frames, shift_size=chunk_frames)
    channel, time_, channel_len = encoder.get_initial_cache_state(batch_size=1)
    pre = variant.pre_cache_frames
    pre_cache = mel.new_zeros(1, mel.shape[1], pre)
    pieces = []
    for call in chunk_calls(model, variant, mel.numpy()):
        signal = torch.cat([pre_cache, torch.from_numpy(call["audio_signal"])], dim=-1)
        encoded, length, channel, time_, channel_len = encoder.cache_aware_stream_step(
            processed_signal=signal, processed_signal_length=torch.tensor([pre + int(call["audio_length"][0])]),
            cache_last_channel=channel, cache_last_time=time_, cache_last_channel_len=channel_len,
            keep_all_outputs=False, drop_extra_pre_encoded=variant.drop_extra_pre_encoded)
        pieces.append(encoded[:, :, :int(length[0])])
        pre_cache = signal[:, :, signal.shape[-1] - pre:]
    return torch.cat(pieces, dim=-1).transpose(1, 2)


def fit_to_clip(model, audio: np.ndarray, steps: int = FIT_STEPS, lr: float = FIT_LR) -> None:
    """Fit ``model`` in place to say :data:`FIT_TEXT` on ``audio`` along :func:`fit_cells`: cross-entropy of each
    cell's target (tokens and blank), teacher forcing per utterance, the encoder streamed in each chunk variant's
    chunks in turn (:data:`FIT_CHUNK_FRAMES`, :func:`streamed_encoding`), Adam, one thread."""
    import torch.nn.functional as F

    signal = torch.from_numpy(np.asarray(audio, np.float32).reshape(1, -1))
    frame_s = int(model.cfg.encoder.subsampling_factor) * float(model.cfg.preprocessor.window_stride)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.eval()  # no dropout
        with torch.no_grad():
            mel, _ = model.preprocessor(input_signal=signal, length=torch.tensor([signal.shape[1]]))
            frames = streamed_encoding(model, mel, FIT_CHUNK_FRAMES[0]).shape[1]
        cells = fit_cells(model, int(frames), frame_s)
        texts = [[int(i) for i in model.tokenizer.text_to_ids(text)] + [eou_id(model)] for text, _, _ in UTTERANCES]
        texts.append([token for ids in texts for token in ids])
        at_frame = torch.tensor([c[0] for c in cells])
        targets = torch.tensor([c[3] for c in cells])
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        for step in range(steps):
            mode = (*FIT_CHUNK_FRAMES, None)[step % (len(FIT_CHUNK_FRAMES) + 1)]
            if mode is None:  # the offline pass too, so that NeMo's offline transcript (reported) is meaningful
                f = model.encoder(audio_signal=mel, length=torch.tensor([mel.shape[-1]]))[0].transpose(1, 2)[0]
            else:
                f = streamed_encoding(model, mel, mode)[0]  # [T, D]
            f = f[:frames] if f.shape[0] >= frames else torch.nn.functional.pad(f, (0, 0, 0, frames - f.shape[0]))
            rows = [model.decoder.predict(y=torch.tensor([ids]), state=None, add_sos=True)[0][0] for ids in texts]
            g_cells = torch.stack([rows[c[1]][c[2]] for c in cells])  # [N, H]
            logits = model.joint.joint_net(model.joint.project_encoder(f[at_frame])
                                           + model.joint.project_prednet(g_cells))
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        model.encoder.setup_streaming_params()
        torch.set_num_threads(threads)
    model.eval()


def _fit_clip() -> np.ndarray:
    from conversions.audio import load_speech_clip

    return load_speech_clip()


# ---- the committed tiny model ----------------------------------------------------------------------------------
TINY_DIR = Path(__file__).resolve().parent / "tiny"
TOKENIZER_FILES, WEIGHTS_FILE, MANIFEST_FILE = committed.TOKENIZER_FILES, committed.WEIGHTS_FILE, committed.MANIFEST_FILE
COMMITTED_FILES = committed.COMMITTED_FILES
TinyModelDataError = committed.TinyModelDataError
COMMITTED = committed.CommittedModel(
    "tiny Parakeet EOU model", TINY_SCALE,
    "restore it from git, or regenerate all files with scripts/fit_tiny_parakeet_eou.py")


def verify_tiny_files(directory: str | os.PathLike | None = None) -> dict:
    """The committed tiny model's manifest (``directory``, default :data:`TINY_DIR`), after checking every file
    against it (:class:`TinyModelDataError` naming the file otherwise)."""
    return COMMITTED.verify(TINY_DIR if directory is None else directory)


def write_tiny_files(model, tokenizer_dir: str | os.PathLike, directory: str | os.PathLike | None = None,
                     info: dict | None = None) -> dict:
    """Write the committed tiny model (tokenizer files, ``weights.npz``, then ``manifest.json``), each atomically."""
    from conversions.models.parakeet_tdt.nemo_models import _without_temp_paths

    fit = {"text": FIT_TEXT, "steps": FIT_STEPS, "lr": FIT_LR, "chunk_frames": list(FIT_CHUNK_FRAMES),
           "clip": "tests/data/speech_noise_16k.wav", "clip_sha256": hashlib.sha256(_fit_clip().tobytes()).hexdigest()}
    return COMMITTED.write(model, tokenizer_dir, TINY_DIR if directory is None else directory, fit, info,
                           portable_tokenizer=_without_temp_paths)


def build_committed_tiny(directory: str | os.PathLike | None = None):
    """The tiny EOU model from its committed files (checked against the manifest first): the model of
    ``config_for(TINY_SCALE)`` with the committed tokenizer and state dict (strict, exact), in eval mode."""
    directory = Path(TINY_DIR if directory is None else directory)
    verify_tiny_files(directory)
    _quiet_nemo()
    tokenizer_dir = Path(tempfile.mkdtemp(prefix="parakeet-eou-tokenizer-"))
    try:
        for name in TOKENIZER_FILES:
            shutil.copyfile(directory / name, tokenizer_dir / name)
        model = _new_model(config_for(TINY_SCALE), tokenizer_dir, 0)
        COMMITTED.load_into(model, directory)
    except BaseException:
        shutil.rmtree(tokenizer_dir, ignore_errors=True)
        raise
    model._tokenizer_tmpdir = tokenizer_dir
    return model.eval()


def tiny_parakeet_eou_path(cache_dir: str | os.PathLike) -> Path:
    """The committed tiny model's ``.nemo`` under ``cache_dir``, assembled on first use (atomic, locked, its
    digest checked before a cached file is trusted); the name hashes the committed files and this module."""
    from importlib.metadata import version

    manifest = verify_tiny_files(TINY_DIR)
    identity = {"committed": manifest["files"], "nemo": version("nemo_toolkit"), "torch": torch.__version__,
                "format": 1, "source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return _cached_nemo(Path(cache_dir) / f"parakeet-eou-tiny-{digest}.nemo", build_committed_tiny)


def tiny_parakeet_eou(cache_dir: str | os.PathLike):
    """The offline default model: assembled from the committed files, saved as ``.nemo``, restored like a user's."""
    return load_nemo(tiny_parakeet_eou_path(cache_dir))


def download_eou(model_id: str = PARAKEET_EOU_ID, revision: str | None = None) -> Path:
    """The ``.nemo`` of a Hugging Face model id (default: the real EOU model) at ``revision`` (default ``main``)."""
    filename = PARAKEET_EOU_FILE if model_id == PARAKEET_EOU_ID else None
    return download_nemo(model_id, revision or "main", filename=filename)
