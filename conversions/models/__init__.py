"""One package per model family (``silero_vad``, ``parakeet_tdt``, ...), each exposing ``FAMILY``; the built-in ones
are listed in :data:`conversions.registry.FAMILY_MODULES`."""
