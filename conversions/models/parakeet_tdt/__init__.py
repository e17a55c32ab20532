"""NVIDIA Parakeet TDT v3 through NeMo: seven Core ML components (``preprocessor``, ``encoder``, ``mel-encoder``,
``decoder``, ``joint``, ``joint-decision``, ``joint-decision-step``), transcript parity with NeMo's own greedy
decoding, and the offline tiny model. Files: ``nemo_models.py`` (loading, the tiny model), ``modules.py`` (torch
wrappers, sizes from the config), ``converters.py``, ``inputs.py``, ``bounds.py`` (bounds, decision metric),
``tdt.py`` (host greedy TDT decoder), ``pipeline.py`` (the app's calls, transcript check), ``family.py``.

Importing the package does not import NeMo (the ``parakeet`` extra); without it the family's tests skip."""

from .family import FAMILY

__all__ = ["FAMILY"]
