"""Apple's Core ML runtime behind the same interface as the portable runtime (macOS only).

Predictions go through ``coremltools.models.MLModel`` with the requested compute units. Inputs are cast to the
declared dtypes before the call and outputs to the declared dtypes after it, so both backends return the same
names, shapes and dtypes. A stateful model (iOS 18) takes the ``state`` of ``make_state()`` (coremltools' ``MLState``,
macOS 15+) like the portable runtime's ``MILState``.
"""

from __future__ import annotations

import os
import sys
import weakref

import numpy as np

from .errors import BackendUnavailableError
from .io import check_feeds, check_state_argument, feature_value, specs_from_description, state_specs_from_description



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
        self.states = state_specs_from_description(getattr(description, "state", ()))
        self._made_states = weakref.WeakSet()  # the MLStates of make_state(), to refuse another model's

    def __repr__(self) -> str:
        return f"CoreMLModel({self.source!r}, compute_units={self.compute_units})"

    def make_state(self):
        """New state buffers (zeros) for this stateful model: coremltools' ``MLState`` (macOS 15+)."""
        check_state_argument(self.source, self.states, None, making=True)
        state = self.mlmodel.make_state()
        self._made_states.add(state)
        return state

    def predict(self, inputs, state=None, *, trace: bool = False):
        if trace:
            raise NotImplementedError("Core ML does not expose intermediates; trace with backend='mil'")
        check_state_argument(self.source, self.states, state)
        if state is not None and state not in self._made_states:
            raise ValueError(f"{self.source}: the state was not made by this model's make_state(); use this model's")
        feeds = check_feeds(self.inputs, inputs, self.source)
        raw = self.mlmodel.predict(feeds) if state is None else self.mlmodel.predict(feeds, state=state)
        # Arrays are cast to their declared dtype; a classifier's label / dictionary stay Python values (feature_value).
        return {spec.name: (np.asarray(raw[spec.name]).astype(spec.dtype, copy=False) if spec.is_array
                            else feature_value(spec, raw[spec.name])) for spec in self.outputs}
