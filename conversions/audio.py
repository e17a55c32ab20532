"""Audio shared by every model family: the committed speech clip, WAV reading, and generated test audio.

- :data:`SPEECH_CLIP`: ``tests/data/speech_noise_16k.wav``, 16-bit mono 16 kHz speech with pauses, silence and
  noise; every family streams it through its components (the real input of the parity checks).
- :func:`read_wav`: a 16-bit PCM mono WAV as float32 samples in ``[-1, 1)``, with a clear error for other formats.
- :func:`write_wav`: float samples to a 16-bit PCM mono WAV at any rate (e.g. Kokoro's 24 kHz speech), atomically;
  ``read_wav(path, sample_rate)`` reads it back.
- :func:`synthetic_audio` and :data:`AUDIO_KINDS`: seeded test signals for hypothesis-generated inputs
  (noise, tones, chirps, bursts, silence, clipping), and :func:`audio_strategy` drawing them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
SPEECH_CLIP = Path(__file__).resolve().parents[1] / "tests" / "data" / "speech_noise_16k.wav"
AUDIO_KINDS = ("noise", "tone", "chirp", "bursts", "silence", "clipped")


def read_wav(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A 16-bit PCM mono WAV file at ``sample_rate`` as float32 samples in ``[-1, 1)`` (stdlib ``wave`` + numpy)."""
    import wave

    with wave.open(str(path), "rb") as f:
        if f.getnchannels() != 1 or f.getsampwidth() != 2 or f.getframerate() != sample_rate:
            raise ValueError(f"{path}: expected 16-bit mono {sample_rate} Hz, got {f.getnchannels()} channel(s), "
                             f"{8 * f.getsampwidth()}-bit, {f.getframerate()} Hz")
        frames = f.readframes(f.getnframes())
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0


def write_wav(path, audio, sample_rate: int) -> Path:
    """Write ``audio`` (float samples, any shape squeezable to 1-D) as a 16-bit PCM mono WAV at ``sample_rate`` Hz
    (stdlib ``wave``) and return the path; parent directories are created.

    Samples are clipped to ``[-1, 1]`` (louder ones are clipped, not rescaled), then stored as
    ``round(x * 32768)`` limited to ``[-32768, 32767]``: the inverse of :func:`read_wav`'s ``/ 32768``, so a
    round trip is within ``0.5 / 32768`` (``1 / 32768`` at ``x = 1``). NaN or infinite samples raise
    ``ValueError``. The file appears whole or not at all: it is written to a temporary file beside ``path``
    and renamed (:func:`conversions.files.atomic_write`).
    """
    import io
    import wave

    from conversions.files import atomic_write
    from conversions.metrics import _count

    sample_rate = _count("sample_rate", sample_rate)
    samples = np.asarray(audio)
    if samples.dtype.kind not in "biuf":
        raise ValueError(f"audio must be a real numeric array, got dtype {samples.dtype}")
    if samples.ndim == 0 or sum(size != 1 for size in samples.shape) > 1:
        raise ValueError(f"audio must be a 1-D waveform (or squeezable to 1-D), got shape {samples.shape}")
    samples = samples.astype(np.float64).reshape(-1)
    if not np.isfinite(samples).all():
        raise ValueError(f"audio has {int(np.count_nonzero(~np.isfinite(samples)))} non-finite sample(s); "
                         "it cannot be written as PCM")
    pcm = np.clip(np.rint(np.clip(samples, -1.0, 1.0) * 32768.0), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, buffer.getvalue())


def load_speech_clip() -> np.ndarray:
    """The committed speech clip (:data:`SPEECH_CLIP`) as float32 samples."""
    return read_wav(SPEECH_CLIP)


def synthetic_audio(kind: str, samples: int, amplitude: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Test audio of ``samples`` samples, ``[1, samples]`` float32 in [-1, 1]: ``noise`` (white), ``tone`` (a sine at
    a seeded frequency), ``chirp`` (50 Hz -> 7.5 kHz at 16 kHz), ``bursts`` (noise switched on and off like
    syllables), ``silence`` (all zero), ``clipped`` (a tone driven into +-amplitude)."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / sample_rate
    nyquist_margin = sample_rate / 2 - 100
    if kind == "noise":
        x = rng.standard_normal(samples) / 3
    elif kind == "tone":
        x = np.sin(2 * np.pi * rng.uniform(60, min(7900, nyquist_margin)) * t + rng.uniform(0, 2 * np.pi))
    elif kind == "chirp":
        x = np.sin(2 * np.pi * (50 * t + (7450 / (2 * max(samples, 1) / sample_rate)) * t ** 2))
    elif kind == "bursts":
        gate = np.repeat(rng.random(-(-samples // 800)) > 0.5, 800)[:samples]
        x = gate * rng.standard_normal(samples) / 3
    elif kind == "silence":
        x = np.zeros(samples)
    elif kind == "clipped":
        x = np.clip(4 * np.sin(2 * np.pi * rng.uniform(80, 400) * t), -1, 1)
    else:
        raise ValueError(f"unknown synthetic audio kind {kind!r}; choose from {AUDIO_KINDS}")
    return (amplitude * np.clip(x, -1, 1)).astype(np.float32)[None]


def audio_strategy(samples: int, min_amplitude: float = 1e-4):
    """A hypothesis strategy of ``[1, samples]`` :func:`synthetic_audio` of any kind, level and seed."""
    from hypothesis import strategies as st

    return st.builds(synthetic_audio, st.sampled_from(AUDIO_KINDS), st.just(samples),
                     st.floats(min_amplitude, 1.0).map(float), st.integers(0, 2 ** 32 - 1))
