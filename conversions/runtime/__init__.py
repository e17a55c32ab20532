"""One entry point for both runtimes: ``load_model(model, backend=...)``.

- ``backend="mil"``: the portable MIL runtime (any OS), see :mod:`conversions.runtime.mil`.
- ``backend="coreml"``: Apple's Core ML runtime through coremltools (macOS only).
- ``backend="auto"``: ``coreml`` on macOS, ``mil`` elsewhere.

Both return an object with ``predict(dict[str, ndarray], state=None) -> dict[str, ndarray]``, ``inputs``,
``outputs`` and ``states`` (lists of :class:`TensorSpec`; ``states`` is empty unless the model is an iOS 18 stateful
model), and ``make_state()`` for a stateful model (its result goes to every ``predict(..., state=...)``); both give
the same names, shapes and dtypes for the same model.
"""

from __future__ import annotations

import os
import sys

from .errors import BackendUnavailableError, ModelPackageError
from .io import TensorSpec

BACKENDS = ("auto", "mil", "coreml")
COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_NE", "CPU_AND_GPU", "ALL")

__all__ = ["load_model", "TensorSpec", "ModelPackageError", "BackendUnavailableError", "BACKENDS",
           "COMPUTE_UNITS", "coreml_available"]


def coreml_available() -> bool:
    """True where Apple's Core ML runtime can run predictions (macOS)."""
    return sys.platform == "darwin"


def _open(model):
    from .package import open_mlmodel, open_package

    if isinstance(model, (str, os.PathLike)):
        return open_package(model)
    if hasattr(model, "get_spec"):
        return open_mlmodel(model)
    raise TypeError(f"load_model() takes a path to a .mlpackage/.mlmodel or a coremltools MLModel, "
                    f"got {type(model).__name__}")


def load_model(model, backend: str = "auto", compute_units: str = "CPU_ONLY", precision: str = "fp16",
               function_name: str | None = None):
    """Load ``model`` (a path or an in-memory ``ct.models.MLModel``) for prediction on ``backend``.

    ``compute_units`` applies to the Core ML backend (``CPU_ONLY``, ``CPU_AND_NE``, ``CPU_AND_GPU``, ``ALL``);
    ``precision`` to the portable runtime (``fp16`` honours the program's types, ``fp32`` runs it all in fp32).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if compute_units not in COMPUTE_UNITS:
        raise ValueError(f"compute_units must be one of {COMPUTE_UNITS}, got {compute_units!r}")
    if backend == "auto":
        backend = "coreml" if coreml_available() else "mil"
    if backend == "coreml":
        from .coreml import CoreMLModel

        if precision != "fp16":
            raise ValueError("precision applies to the portable runtime only; Core ML runs the program's own types")
        return CoreMLModel(model, compute_units=compute_units)
    from .mil import MILModel

    return MILModel(_open(model), precision=precision, function_name=function_name)
