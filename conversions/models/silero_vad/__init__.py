"""Silero VAD v6 (16 kHz): a clean torch module rebuilt from the ``silero-vad`` package's TorchScript weights, its
five Core ML components (``stft``, ``encoder``, ``decoder``, ``unified-36ms``, ``unified-256ms``) and their
declaration. Files: ``modules.py`` (torch modules, weights, streaming), ``converters.py``, ``inputs.py`` (clip feeds,
generated inputs), ``bounds.py`` (bounds, task metric), ``family.py`` (the declaration)."""

from .family import FAMILY

__all__ = ["FAMILY"]
