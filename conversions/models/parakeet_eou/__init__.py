"""NVIDIA Parakeet Realtime EOU 120M through NeMo: a streaming ASR with end-of-utterance detection. Eight Core ML
components (``preprocessor``, ``encoder-160ms``, ``encoder-320ms``, ``encoder-1280ms`` with caches in and out,
``decoder``, ``joint``, ``joint-decision``, ``joint-decision-step``), streamed-transcript and ``<EOU>`` parity
with NeMo's own streaming inference per chunk variant, and the offline tiny model. Files: ``nemo_models.py``
(loading, the tiny model and its fit), ``modules.py`` (torch wrappers, chunk variants from ``setup_streaming_params``),
``converters.py``, ``inputs.py``, ``bounds.py``, ``streaming.py`` (chunking, host streaming greedy decoder, NeMo's
streaming), ``pipeline.py`` (the streamed-transcript check), ``family.py``.

Importing the package does not import NeMo (the ``parakeet`` extra); without it the family's tests skip."""

from .family import FAMILY

__all__ = ["FAMILY"]
