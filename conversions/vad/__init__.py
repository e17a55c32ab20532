"""Voice activity detection models: clean, convertible re-implementations and their references."""
