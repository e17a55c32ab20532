"""Errors raised by the runtimes, written for the person reading a red CI log."""


class ModelPackageError(ValueError):
    """A model package (``.mlpackage``) or its weight file is missing, malformed or truncated."""


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine (e.g. Core ML off macOS)."""
