"""Speech recognition models (NVIDIA NeMo Parakeet)."""
