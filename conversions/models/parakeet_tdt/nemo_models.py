"""Loading NVIDIA NeMo ASR checkpoints, three ways, all ending in ``EncDecRNNTBPEModel.restore_from``:

- :func:`load_nemo` — a local ``.nemo`` file (``pytest --parakeet-tdt-v3-nemo-path FILE.nemo``);
- :func:`download_nemo` — a Hugging Face model id at a pinned revision
  (``pytest --parakeet-tdt-v3-model-id nvidia/parakeet-tdt-0.6b-v3``),
  downloaded once with ``huggingface_hub.hf_hub_download`` into its cache (NeMo's own ``from_pretrained`` takes no
  revision, so the file is fetched here and restored like a local one);
- :func:`tiny_parakeet_tdt` — offline and by default: the real v3 configuration scaled down (same module types)
  with a SentencePiece tokenizer, fitted to say :data:`FIT_TEXT` on the committed speech clip, saved as a real
  ``.nemo`` (cached under ``.cache/models/``) and loaded back through the same :func:`load_nemo` a user's checkpoint
  takes.

The tiny model's weights and tokenizer are committed data (:data:`TINY_DIR`: ``tokenizer.model``,
``tokenizer.vocab``, ``vocab.txt``, ``weights.npz`` and a ``manifest.json`` with their sha256), written once by
``scripts/fit_tiny_parakeet.py``; the ``.nemo`` is assembled from them (:func:`build_committed_tiny`), nothing is
trained at test time. Fitting is not reproducible across CPUs: torch picks other kernels on another CPU (AVX512,
AVX2 or none: ``ATEN_CPU_CAPABILITY``) and 80 Adam steps carry their rounding into every weight (up to 0.21 apart),
so a model fitted on each machine would be a different model on each, and every snapshot baseline would describe
only one of them. Assembled from committed bytes, the model is bit-identical everywhere. The fitting code
(:func:`build_tiny_parakeet_tdt` with ``fit_audio``, :func:`fit_to_utterance`) stays: the script regenerates the
data with it, and models of other seeds or sizes are still built at run time.

Why fitted: a random model's token logits are nearly flat (top-2 margins down to 8e-5 along its greedy path on the
clip), so an fp16 program legitimately flips near-ties and "the same transcript" would test nothing but luck. A
trained model decides with margins of nats; 80 Adam steps on one fixed alignment give the tiny model that property
on the clip (top-2 margins >= 1.8 for tokens and durations along NeMo's greedy path, recorded in the manifest)
while everything else about it stays random.

NeMo is an optional dependency (the ``parakeet`` extra): importing this module does not import it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from conversions.models import nemo_committed as committed

# The real checkpoint: its id, file name and the revision pinned for reproducible downloads (the commit of
# nvidia/parakeet-tdt-0.6b-v3 recorded in public third-party notices; override with --parakeet-tdt-v3-model-revision).
PARAKEET_TDT_V3_ID = "nvidia/parakeet-tdt-0.6b-v3"
PARAKEET_TDT_V3_FILE = "parakeet-tdt-0.6b-v3.nemo"
PARAKEET_TDT_V3_REVISION = "6d590f77001d318fb17a0b5bf7ee329a91b52598"
KNOWN_FILES = {PARAKEET_TDT_V3_ID: PARAKEET_TDT_V3_FILE}

DURATIONS = [0, 1, 2, 3, 4]

# The v3 model's configuration (model_config.yaml of the .nemo, the parts that decide the architecture).
# Training-only sections (datasets, optimiser, spec augment) are left out: they do not change the modules.
PARAKEET_TDT_V3_CONFIG = {
    "sample_rate": 16000,
    "preprocessor": {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
        "window": "hann", "features": 128, "n_fft": 512, "log": True, "frame_splicing": 1, "dither": 1e-05,
        "pad_to": 0, "pad_value": 0.0,
    },
    "encoder": {
        "_target_": "nemo.collections.asr.modules.ConformerEncoder",
        "feat_in": 128, "feat_out": -1, "n_layers": 24, "d_model": 1024, "subsampling": "dw_striding",
        "subsampling_factor": 8, "subsampling_conv_channels": 256, "causal_downsampling": False,
        "ff_expansion_factor": 4, "self_attention_model": "rel_pos", "n_heads": 8, "att_context_size": [-1, -1],
        "att_context_style": "regular", "xscaling": True, "untie_biases": True, "pos_emb_max_len": 5000,
        "conv_kernel_size": 9, "conv_norm_type": "batch_norm", "conv_context_size": None,
        "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1,
    },
    "decoder": {
        "_target_": "nemo.collections.asr.modules.RNNTDecoder",
        "normalization_mode": None, "random_state_sampling": False, "blank_as_pad": True,
        "prednet": {"pred_hidden": 640, "pred_rnn_layers": 2, "t_max": None, "dropout": 0.2},
    },
    "joint": {
        "_target_": "nemo.collections.asr.modules.RNNTJoint",
        "log_softmax": None, "preserve_memory": False, "fuse_loss_wer": False, "fused_batch_size": 4,
        "jointnet": {"joint_hidden": 640, "activation": "relu", "dropout": 0.2},
        "num_extra_outputs": len(DURATIONS),
    },
    "decoding": {"strategy": "greedy_batch", "model_type": "tdt", "durations": DURATIONS,
                 "greedy": {"max_symbols": 10}},
    "loss": {"loss_name": "tdt", "tdt_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0, "durations": DURATIONS,
                                                "sigma": 0.02, "omega": 0.1}},
    "model_defaults": {"enc_hidden": 1024, "pred_hidden": 640, "tdt_durations": DURATIONS,
                       "num_tdt_durations": len(DURATIONS)},
    "vocab_size": 8192,  # SentencePiece pieces; the joint adds blank and the 5 durations: 8198 logits
}

# The offline default: the same structure scaled down (CI builds it in seconds). What changes is sizes only.
TINY_SCALE = {"d_model": 64, "n_layers": 2, "n_heads": 8, "subsampling_conv_channels": 32, "pred_hidden": 64,
              "joint_hidden": 64, "vocab_size": 128}

# A small English text for the tokenizer (BPE pieces need text; the model never sees it otherwise).
TOKENIZER_TEXT = """\
the quick brown fox jumps over the lazy dog while the speech model listens to every word
a voice activity detector decides when someone is speaking and the recognizer writes it down
parity means the converted program behaves like the original one on the same audio
we measure the error of every component and compare the transcript token by token
small models are built with random weights so that the tests run without a download
the encoder turns mel frames into features and the decoder predicts the next token
durations tell the decoder how many frames to skip after each emitted token or blank
numbers like one two three four five six seven eight nine ten are spoken slowly
good morning everyone thank you for coming today we will talk about speech on devices
latency memory and size matter as much as accuracy when a model ships inside an app
"""


# What the tiny model is fitted to say on the committed clip (tests/data/speech_noise_16k.wav).
FIT_TEXT = "good morning everyone thank you for coming today"
FIT_STEPS = 80
FIT_LR = 3e-3


def fit_path(frames: int, token_ids: list[int], blank_id: int, durations: list[int]) -> list[tuple[int, int, int, int]]:
    """A TDT alignment of ``token_ids`` over ``frames`` encoder frames: (frame, tokens emitted so far, target token or
    blank, duration index) per decoding step. Tokens are spread evenly; every fourth token is followed by the next
    on the same frame (duration 0, as TDT allows); blanks skip up to 4 frames in between."""
    count = len(token_ids)
    spacing = max(2, min(5, (frames - 4) // max(count, 1)))
    largest = max(durations)
    cells, t, u = [], 0, 0
    while t < frames:
        if u < count and t >= 2 + spacing * u:
            step = 0 if (u % 4 == 3 and u + 1 < count and 0 in durations) else min(2, spacing)
            cells.append((t, u, token_ids[u], durations.index(step)))
            u, t = u + 1, t + step
        else:
            target = 2 + spacing * u if u < count else frames + largest
            step = max(1, min(largest, target - t))
            while step not in durations:
                step -= 1
            cells.append((t, u, blank_id, durations.index(step)))
            t += step
    if u < count:
        raise ValueError(f"cannot align {count} tokens in {frames} encoder frames")
    return cells


def fit_to_utterance(model, audio: np.ndarray, text: str = FIT_TEXT, steps: int = FIT_STEPS, lr: float = FIT_LR) -> None:
    """Fit ``model`` (in place) to emit ``text`` on ``audio`` ([samples] float, 16 kHz) along :func:`fit_path`: token
    and duration cross-entropy at each step of the alignment (teacher forcing), Adam, one thread (deterministic)."""
    import torch.nn.functional as F

    ids = [int(i) for i in model.tokenizer.text_to_ids(text)]
    blank_id = int(model.decoder.blank_idx)
    durations = [int(d) for d in model.cfg.decoding.durations]
    signal = torch.from_numpy(np.asarray(audio, np.float32).reshape(1, -1))
    length = torch.tensor([signal.shape[1]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.eval()  # no dropout; batch norm keeps its (random) statistics
        with torch.no_grad():
            _, frames = model.forward(input_signal=signal, input_signal_length=length)
        cells = fit_path(int(frames[0]), ids, blank_id, durations)
        at_frame, at_token = torch.tensor([c[0] for c in cells]), torch.tensor([c[1] for c in cells])
        token_target, duration_target = torch.tensor([c[2] for c in cells]), torch.tensor([c[3] for c in cells])
        targets = torch.tensor([ids])
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(steps):
            encoded, _ = model.forward(input_signal=signal, input_signal_length=length)
            g, _ = model.decoder.predict(y=targets, state=None, add_sos=True)
            logits = model.joint.joint(encoded.transpose(1, 2), g)[0, at_frame, at_token]
            loss = (F.cross_entropy(logits[:, :blank_id + 1], token_target)
                    + F.cross_entropy(logits[:, blank_id + 1:], duration_target))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def tokenizer_text(vocab_size: int) -> str:
    """:data:`TOKENIZER_TEXT`, plus for large vocabularies (the real 8192) seeded pseudo-words: BPE can only learn
    as many pieces as its text has distinct merges."""
    if vocab_size <= 256:
        return TOKENIZER_TEXT
    import random

    rng = random.Random(vocab_size)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(40 * vocab_size)]
    lines = [" ".join(words[i:i + 16]) for i in range(0, len(words), 16)]
    return TOKENIZER_TEXT + "\n".join(lines) + "\n"


def config_for(scale: dict | None = None) -> dict:
    """The v3 configuration, optionally scaled: ``scale`` replaces sizes (keys of :data:`TINY_SCALE`)."""
    cfg = copy.deepcopy(PARAKEET_TDT_V3_CONFIG)
    if scale:
        enc = cfg["encoder"]
        for key in ("d_model", "n_layers", "n_heads", "subsampling_conv_channels"):
            enc[key] = scale.get(key, enc[key])
        cfg["decoder"]["prednet"]["pred_hidden"] = scale.get("pred_hidden", 640)
        cfg["joint"]["jointnet"]["joint_hidden"] = scale.get("joint_hidden", 640)
        cfg["model_defaults"]["enc_hidden"] = enc["d_model"]
        cfg["model_defaults"]["pred_hidden"] = cfg["decoder"]["prednet"]["pred_hidden"]
        cfg["vocab_size"] = scale.get("vocab_size", cfg["vocab_size"])
    return cfg


def _quiet_nemo() -> None:
    import logging

    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in ("nemo_logger", "nemo", "NeMo"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from nemo.utils import logging as nemo_logging

        nemo_logging.setLevel(logging.ERROR)
    except Exception:  # noqa: BLE001 - logging only
        pass


def load_nemo(path: str | os.PathLike):
    """A ``.nemo`` checkpoint restored with ``EncDecRNNTBPEModel.restore_from`` on CPU, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NeMo checkpoint {path} does not exist (expected a .nemo checkpoint file)")
    if path.suffix != ".nemo":
        raise ValueError(f"NeMo checkpoint {path} is not a .nemo file (NeMo checkpoints are .nemo tar archives)")
    _quiet_nemo()
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    model = EncDecRNNTBPEModel.restore_from(str(path), map_location=torch.device("cpu"))
    return model.eval()


def download_nemo(model_id: str, revision: str | None = None, filename: str | None = None,
                  cache_dir: str | os.PathLike | None = None) -> Path:
    """The ``.nemo`` file of a Hugging Face model at a pinned revision, downloaded once into the hub cache."""
    from huggingface_hub import hf_hub_download

    if "/" not in model_id:
        raise ValueError(f"model id {model_id!r} is not a Hugging Face id (owner/name)")
    filename = filename or KNOWN_FILES.get(model_id) or f"{model_id.split('/')[-1]}.nemo"
    if revision is None:
        revision = PARAKEET_TDT_V3_REVISION if model_id == PARAKEET_TDT_V3_ID else "main"
    return Path(hf_hub_download(repo_id=model_id, filename=filename, revision=revision, cache_dir=cache_dir))


def _train_tokenizer(directory: Path, vocab_size: int) -> None:
    """A SentencePiece BPE tokenizer in ``directory`` (``tokenizer.model``, ``tokenizer.vocab``, and the
    ``vocab.txt`` NeMo expects beside them)."""
    import sentencepiece as spm

    text = directory / "text.txt"
    text.write_text(tokenizer_text(vocab_size))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(directory / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, num_threads=1, bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2,
        hard_vocab_limit=True, split_digits=False)
    processor = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    (directory / "vocab.txt").write_text("".join(f"{processor.id_to_piece(i)}\n" for i in range(processor.get_piece_size())))
    text.unlink()


def build_tiny_parakeet_tdt(seed: int = 0, scale: dict | None = None, fit_audio: np.ndarray | None = None):
    """A random-weight ``EncDecRNNTBPEModel`` of the v3 architecture (``scale`` = :data:`TINY_SCALE` by default),
    with its tokenizer, in eval mode; fitted to say :data:`FIT_TEXT` on ``fit_audio`` when given. Batch-norm
    statistics are randomised (a fresh model's are 0 and 1, which would make the folded conv an identity and hide
    its conversion)."""
    _quiet_nemo()
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from omegaconf import OmegaConf

    scale = TINY_SCALE if scale is None else scale
    cfg = config_for(scale)
    vocab_size = cfg.pop("vocab_size")
    tokenizer_dir = Path(tempfile.mkdtemp(prefix="parakeet-tokenizer-"))
    try:
        _train_tokenizer(tokenizer_dir, vocab_size)
        cfg["tokenizer"] = {"dir": str(tokenizer_dir), "type": "bpe"}
        torch.manual_seed(seed)
        model = EncDecRNNTBPEModel(cfg=OmegaConf.create(cfg))
    except BaseException:
        shutil.rmtree(tokenizer_dir, ignore_errors=True)
        raise
    # The model registered the tokenizer files as artifacts: save_to copies them, so the directory stays until the
    # model is saved (the caller removes model._tokenizer_tmpdir).
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=generator))
    if fit_audio is not None:
        fit_to_utterance(model, fit_audio)
    model._tokenizer_tmpdir = tokenizer_dir  # removed by the caller once saved
    return model.eval()


def _fit_clip() -> np.ndarray:
    from conversions.audio import load_speech_clip

    return load_speech_clip()


# ---- the committed tiny model ----------------------------------------------------------------------------------
# scripts/fit_tiny_parakeet.py writes these (a regeneration changes every Parakeet snapshot baseline).
TINY_DIR = Path(__file__).resolve().parent / "tiny"
TOKENIZER_FILES, WEIGHTS_FILE, MANIFEST_FILE = committed.TOKENIZER_FILES, committed.WEIGHTS_FILE, committed.MANIFEST_FILE
COMMITTED_FILES, COMMITTED_FORMAT = committed.COMMITTED_FILES, committed.COMMITTED_FORMAT
TinyModelDataError = committed.TinyModelDataError
_sha256, state_dict_arrays, write_npz = committed.sha256_file, committed.state_dict_arrays, committed.write_npz
COMMITTED = committed.CommittedModel(
    "tiny Parakeet model", TINY_SCALE, "restore it from git, or regenerate all files with scripts/fit_tiny_parakeet.py")


def verify_tiny_files(directory: str | os.PathLike | None = None) -> dict:
    """The manifest of the committed tiny model (``directory``, default :data:`TINY_DIR`), after checking that it
    describes this module's tiny model and that every file it lists is present with its recorded sha256. Raises
    :class:`TinyModelDataError` naming the file otherwise."""
    return COMMITTED.verify(TINY_DIR if directory is None else directory)


def write_tiny_files(model, tokenizer_dir: str | os.PathLike, directory: str | os.PathLike | None = None,
                     info: dict | None = None) -> dict:
    """Write the committed tiny model into ``directory`` (default :data:`TINY_DIR`): the tokenizer files from
    ``tokenizer_dir``, ``model``'s state dict as ``weights.npz`` and, last, ``manifest.json`` (sha256 of each file,
    the scale, seed, fit, versions, and ``info``). Each file is written atomically. Returns the manifest."""
    fit = {"text": FIT_TEXT, "steps": FIT_STEPS, "lr": FIT_LR, "clip": "tests/data/speech_noise_16k.wav",
           "clip_sha256": hashlib.sha256(_fit_clip().tobytes()).hexdigest()}
    return COMMITTED.write(model, tokenizer_dir, TINY_DIR if directory is None else directory, fit, info,
                           portable_tokenizer=_without_temp_paths)


def _without_temp_paths(model_bytes: bytes) -> bytes:
    """A SentencePiece ``tokenizer.model`` without the temporary directory it was trained in (its trainer spec
    records the input and output paths; nothing reads them): the same tokenizer always gives the same bytes. Checked
    to tokenize exactly as the original."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    proto.trainer_spec.input[:] = [Path(p).name for p in proto.trainer_spec.input]
    proto.trainer_spec.model_prefix = Path(proto.trainer_spec.model_prefix).name
    portable = proto.SerializeToString()
    before = spm.SentencePieceProcessor(model_proto=model_bytes)
    after = spm.SentencePieceProcessor(model_proto=portable)
    text = TOKENIZER_TEXT + FIT_TEXT
    if (before.encode(text), before.get_piece_size()) != (after.encode(text), after.get_piece_size()):
        raise RuntimeError("tokenizer.model: removing the training paths changed the tokenization")
    return portable


def build_committed_tiny(directory: str | os.PathLike | None = None):
    """The tiny model from its committed files (``directory``, default :data:`TINY_DIR`), checked against the
    manifest first: ``EncDecRNNTBPEModel`` of ``config_for(TINY_SCALE)`` with the committed tokenizer and the
    committed state dict (strict), in eval mode. Nothing is trained or drawn at random that survives: the result is
    the same bits on every CPU. The tokenizer is read from a temporary copy (NeMo registers its files as artifacts
    and ``save_to`` copies them): the caller removes ``model._tokenizer_tmpdir`` once the model is saved."""
    directory = Path(TINY_DIR if directory is None else directory)
    verify_tiny_files(directory)
    _quiet_nemo()
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from omegaconf import OmegaConf

    cfg = config_for(TINY_SCALE)
    cfg.pop("vocab_size")
    tokenizer_dir = Path(tempfile.mkdtemp(prefix="parakeet-tokenizer-"))
    try:
        for name in TOKENIZER_FILES:
            shutil.copyfile(directory / name, tokenizer_dir / name)
        cfg["tokenizer"] = {"dir": str(tokenizer_dir), "type": "bpe"}
        with torch.random.fork_rng(devices=[]):  # the initial weights are replaced; the caller's RNG is left alone
            torch.manual_seed(0)
            model = EncDecRNNTBPEModel(cfg=OmegaConf.create(cfg))
        COMMITTED.load_into(model, directory)
    except BaseException:
        shutil.rmtree(tokenizer_dir, ignore_errors=True)
        raise
    model._tokenizer_tmpdir = tokenizer_dir  # removed by the caller once saved
    return model.eval()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _cached_ok(path: Path) -> str | None:
    """None when ``path`` exists with the digest its sidecar recorded at build; else why not (``""`` if absent)."""
    if not path.is_file():
        return ""
    try:
        recorded = _sidecar(path).read_text().strip()
    except OSError:
        return f"{_sidecar(path).name} is missing"
    actual = _sha256(path)
    return None if actual == recorded else f"sha256 {actual} but {_sidecar(path).name} records {recorded}"


def _cached_nemo(final: Path, build) -> Path:
    """``final`` (a ``.nemo``), trusted only if its sidecar digest matches; else built by ``build()`` (a model with
    ``_tokenizer_tmpdir``), saved atomically with its sidecar, under a file lock (parallel workers build it once).
    A cached file that exists but fails the check is rebuilt with a warning."""
    from filelock import FileLock

    from conversions.files import atomic_path, atomic_write

    if _cached_ok(final) is None:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.with_suffix(".lock"))):
        problem = _cached_ok(final)
        if problem is None:
            return final
        if problem:
            warnings.warn(f"{final}: the cached tiny Parakeet checkpoint does not match the digest recorded when it was "
                          f"built ({problem}); rebuilding it", stacklevel=3)
            final.unlink(missing_ok=True)
        _sidecar(final).unlink(missing_ok=True)
        model = build()
        try:
            with atomic_path(final) as tmp:
                model.save_to(str(tmp))
                digest = _sha256(tmp)
        finally:
            shutil.rmtree(model._tokenizer_tmpdir, ignore_errors=True)
        atomic_write(_sidecar(final), digest + "\n")
    return final


def _is_committed(seed: int, scale: dict | None) -> bool:
    return seed == 0 and (scale is None or scale == TINY_SCALE)


def tiny_parakeet_tdt_path(cache_dir: str | os.PathLike, seed: int = 0, scale: dict | None = None) -> Path:
    """The tiny model's ``.nemo`` file under ``cache_dir``, built and saved on first use (atomic rename, file lock,
    a sidecar ``.sha256`` checked before a cached file is trusted). The name carries a hash of what decides its
    content. The default (seed 0, :data:`TINY_SCALE`) is assembled from the committed files
    (:func:`build_committed_tiny`, verified against their manifest first); any other seed or scale is built and
    fitted at run time as before (not bit-identical across CPUs)."""
    from importlib.metadata import version

    if _is_committed(seed, scale):
        manifest = verify_tiny_files(TINY_DIR)
        identity = {"committed": manifest["files"], "nemo": version("nemo_toolkit"), "torch": torch.__version__,
                    "format": 3, "source": _source_digest()}
        build = build_committed_tiny
    else:
        clip = _fit_clip()
        identity = {"config": config_for(scale), "text": TOKENIZER_TEXT, "seed": seed, "nemo": version("nemo_toolkit"),
                    "torch": torch.__version__, "format": 2, "fit": [FIT_TEXT, FIT_STEPS, FIT_LR],
                    "fit_clip": hashlib.sha256(clip.tobytes()).hexdigest(), "fit_source": _source_digest()}

        def build():
            return build_tiny_parakeet_tdt(seed, scale, fit_audio=clip)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return _cached_nemo(Path(cache_dir) / f"parakeet-tdt-v3-tiny-{digest}.nemo", build)


def _source_digest() -> str:
    """This module's source: changing how the tiny model is built rebuilds it."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def tiny_parakeet_tdt(cache_dir: str | os.PathLike, seed: int = 0, scale: dict | None = None):
    """The offline default model: built, saved as ``.nemo`` and restored through :func:`load_nemo`."""
    return load_nemo(tiny_parakeet_tdt_path(cache_dir, seed, scale))
