"""coreml-parity: prove that a PyTorch speech model converted to Core ML still behaves like the original.

Sub-packages:
- ``conversions.runtime``: ``load_model`` for Apple's Core ML runtime (macOS) and the portable MIL runtime (any OS).
- ``conversions.vad`` / ``conversions.stt`` / ``conversions.tts``: model families (reference modules and converters).
"""

__version__ = "0.1.0"
