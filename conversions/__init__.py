"""coreml-parity: prove that a PyTorch speech model converted to Core ML still behaves like the original.

Sub-packages:
- ``conversions.runtime``: ``load_model`` for Apple's Core ML runtime (macOS) and the portable MIL runtime (any OS).
- ``conversions.models.<family>``: one package per model family (torch modules, converters, inputs, bounds, the
  declaration), listed in ``conversions.registry.FAMILY_MODULES``.
- ``conversions.registry`` (declarations), ``conversions.pytest_plugin`` (the generated suite), ``conversions.export``
  (the one export path and its cache), ``conversions.parity`` (checks, pinned figures), ``conversions.report``.
"""

__version__ = "0.1.0"
