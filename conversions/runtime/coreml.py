"""Apple's Core ML runtime behind the same interface as the portable runtime (macOS only).

Predictions go through ``coremltools.models.MLModel`` with the requested compute units. Inputs are cast to the
declared dtypes before the call and outputs to the declared dtypes after it, so both backends return the same
names, shapes and dtypes.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from .errors import BackendUnavailableError
from .io import check_feeds, specs_from_description



class CoreMLModel:
    backend = "coreml"

    def __init__(self, model, compute_units: str = "CPU_ONLY"):
        if sys.platform != "darwin":
            raise BackendUnavailableError(
                f"the Core ML backend needs macOS (Apple's runtime); this is {sys.platform}. "
                "Use backend='mil' for the portable runtime."
            )
        import coremltools as ct

        units = getattr(ct.ComputeUnit, compute_units)  # validated by load_model
        if isinstance(model, (str, os.PathLike)):
            self.source = os.fspath(model)
            self.mlmodel = ct.models.MLModel(self.source, compute_units=units)
        else:
            self.source = getattr(model, "package_path", None) or "<in-memory MLModel>"
            # Re-open with the requested compute units; an in-memory model keeps its weights directory.
            self.mlmodel = ct.models.MLModel(model.get_spec(), weights_dir=getattr(model, "weights_dir", None),
                                             compute_units=units)
        self.compute_units = compute_units
        self.precision = "fp16"
        description = self.mlmodel.get_spec().description
        self.inputs = specs_from_description(description.input)
        self.outputs = specs_from_description(description.output)

    def __repr__(self) -> str:
        return f"CoreMLModel({self.source!r}, compute_units={self.compute_units})"

    def predict(self, inputs, trace: bool = False):
        if trace:
            raise NotImplementedError("Core ML does not expose intermediates; trace with backend='mil'")
        feeds = check_feeds(self.inputs, inputs, self.source)
        raw = self.mlmodel.predict(feeds)
        return {spec.name: np.asarray(raw[spec.name]).astype(spec.dtype, copy=False) for spec in self.outputs}
