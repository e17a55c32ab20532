"""Helpers for tests that convert small torch modules and run them on the portable runtime.

Used by the op-family tests under ``tests/runtime/`` and by any test that needs "convert this module, run it
here, compare with torch".
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

FP32_TOLERANCE = dict(atol=1e-5, rtol=1e-4)  # fp32 program: only op-ordering/accumulation differences
FP16_TOLERANCE = dict(atol=2e-2, rtol=2e-2)  # fp16 storage of activations and weights: ~3 significant digits


def convert_module(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], *, names: Sequence[str] | None = None,
                   precision: str = "fp32", target: str = "iOS17", input_dtypes: Sequence | None = None):
    """Trace ``module`` on ``example_inputs`` and convert it to an in-memory ML Program.

    ``precision`` picks coremltools' compute precision (``fp16`` or ``fp32``); ``target`` the minimum
    deployment target (``iOS17`` or ``iOS18``).
    """
    import coremltools as ct

    module = module.eval()
    names = list(names or [f"x{i}" for i in range(len(example_inputs))])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, tuple(example_inputs))
        inputs = []
        for i, (name, x) in enumerate(zip(names, example_inputs)):
            dtype = None
            if input_dtypes is not None and input_dtypes[i] is not None:
                dtype = input_dtypes[i]
            elif not x.is_floating_point():
                dtype = np.int32
            else:
                dtype = np.float32
            inputs.append(ct.TensorType(name=name, shape=tuple(x.shape), dtype=dtype))
        return ct.convert(
            traced,
            inputs=inputs,
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
            compute_units=ct.ComputeUnit.CPU_ONLY,
        )


def torch_outputs(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module.eval()(*example_inputs)
    if isinstance(out, torch.Tensor):
        out = (out,)
    flat: list[np.ndarray] = []

    def walk(o):
        if isinstance(o, torch.Tensor):
            flat.append(o.detach().numpy())
        else:
            for item in o:
                walk(item)

    walk(out)
    return flat


def run_on_runtime(mlmodel, example_inputs: Sequence[torch.Tensor], names: Sequence[str] | None = None,
                   precision: str = "fp16") -> list[np.ndarray]:
    from conversions.runtime import load_model

    model = load_model(mlmodel, backend="mil", precision=precision)
    names = list(names or [f"x{i}" for i in range(len(example_inputs))])
    result = model.predict({n: x.numpy() for n, x in zip(names, example_inputs)})
    return [result[spec.name] for spec in model.outputs]


def assert_matches_torch(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], *, precision: str = "fp32",
                         target: str = "iOS17", atol: float | None = None, rtol: float | None = None,
                         names: Sequence[str] | None = None, input_dtypes: Sequence | None = None) -> None:
    """Convert ``module``, run it on the portable runtime and compare every output with torch.

    ``precision="fp32"`` converts with fp32 compute precision and runs the runtime in fp32: a tight check of
    the kernels' semantics. ``precision="fp16"`` checks the default fp16 program with fp16 storage emulated.
    """
    mlmodel = convert_module(module, example_inputs, names=names, precision=precision, target=target,
                             input_dtypes=input_dtypes)
    expected = torch_outputs(module, example_inputs)
    got = run_on_runtime(mlmodel, example_inputs, names=names, precision=precision)
    tol = {key: value for key, value in (("atol", atol), ("rtol", rtol)) if value is not None}
    assert_outputs_close(got, expected, [f"output {i} ({precision} program) vs torch" for i in range(len(expected))],
                         tol, precision=precision)


def assert_close(got: np.ndarray, expected: np.ndarray, precision: str = "fp32", what: str = "", *,
                 atol: float | None = None, rtol: float | None = None) -> None:
    """Same shape; floats within the precision's default tolerance (or ``atol``/``rtol``); ints exactly equal."""
    assert got.shape == expected.shape, f"{what}: shape {got.shape} vs {expected.shape}"
    if expected.dtype.kind == "f":
        tol = dict(FP32_TOLERANCE if precision == "fp32" else FP16_TOLERANCE)
        if atol is not None:
            tol["atol"] = atol
        if rtol is not None:
            tol["rtol"] = rtol
        np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), err_msg=what, **tol)
    else:
        np.testing.assert_array_equal(got.astype(np.int64), expected.astype(np.int64), err_msg=what)


def assert_outputs_close(got: Sequence[np.ndarray], expected: Sequence, names: Sequence[str] | None = None,
                         tol: dict | None = None, *, precision: str = "fp32") -> None:
    """Every output against its reference, in order: as many outputs as references (and names), each compared by
    :func:`assert_close` (same shape; floats within ``tol``, a dict of ``atol``/``rtol``, or the precision's
    default tolerance; integer and bool outputs exactly equal). ``names`` label the failures (default
    ``output <i>``)."""
    got, expected = list(got), list(expected)
    names = [f"output {i}" for i in range(len(expected))] if names is None else list(names)
    assert len(got) == len(expected) == len(names), (
        f"{len(got)} outputs, {len(expected)} references, {len(names)} names: {names}")
    for name, g, e in zip(names, got, expected):
        assert_close(np.asarray(g), np.asarray(e), precision, name, **(tol or {}))


def edit_package_spec(package, edit) -> None:
    """Rewrite the model specification (``model.mlmodel``) of the saved ``package`` in place: ``edit`` gets the
    parsed ``Model_pb2.Model`` and changes it. For tests that need a package that parses but is broken."""
    from pathlib import Path

    from coremltools.proto import Model_pb2

    (path,) = Path(package).rglob("model.mlmodel")
    spec = Model_pb2.Model()
    spec.ParseFromString(path.read_bytes())
    edit(spec)
    path.write_bytes(spec.SerializeToString())


def op_types(mlmodel, *, include_const: bool = True) -> list[str]:
    """The op types of a converted program's main function, in program order (``const`` ops optional)."""
    from conversions.runtime import load_model

    operations = load_model(mlmodel, backend="mil").function.operations
    return [op.op_type for op in operations if include_const or op.op_type != "const"]


def convert_program(prog, target="iOS17", precision: str = "fp32", inputs=None):
    """Convert a MIL builder program (or traced module) to an ML Program; ``target`` is a name or a ``ct.target``."""
    import coremltools as ct

    return ct.convert(prog, inputs=inputs, convert_to="mlprogram",
                      minimum_deployment_target=getattr(ct.target, target) if isinstance(target, str) else target,
                      compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16)


def predict_outputs(mlmodel, feeds: dict, precision: str = "fp32") -> list[np.ndarray]:
    """Run ``mlmodel`` on the portable runtime and return its outputs in declared order."""
    from conversions.runtime import load_model

    model = load_model(mlmodel, backend="mil", precision=precision)
    out = model.predict(feeds)
    return [out[spec.name] for spec in model.outputs]


def run_program(prog, feeds: dict, precision: str = "fp32", target="iOS17") -> tuple[list[str], list[np.ndarray]]:
    """Convert a builder program, run it on the runtime; return (non-const op types, outputs in declared order)."""
    from conversions.runtime import load_model

    model = load_model(convert_program(prog, target, precision), backend="mil", precision=precision)
    out = model.predict(feeds)
    kinds = [op.op_type for op in model.function.operations if op.op_type != "const"]
    return kinds, [out[spec.name] for spec in model.outputs]


class TorchFunction(torch.nn.Module):
    """A module whose forward calls ``fn`` on its inputs (to convert a lambda or plain function)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def load_script(name: str):
    """``scripts/<name>.py`` imported as module ``name`` (registered in ``sys.modules``, so its dataclasses and the
    child processes it spawns can find it again). For tests of the repository's scripts."""
    import importlib.util
    import sys
    from pathlib import Path

    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# What a child Python/pytest process must not inherit from the pytest process (or xdist worker) that spawns it:
# xdist's worker variables make a child pytest behave as a worker (pytest-benchmark, for one, then disables itself),
# PYTEST_CURRENT_TEST and PYTEST_ADDOPTS belong to the parent run, and the parity plugin's per-session records
# directory would let the child write its records into the parent's session.


def clean_subprocess_env(extra: dict | None = None) -> dict:
    """``os.environ`` for a child Python/pytest process spawned by a test: without ``PYTEST_XDIST_*``,
    ``PYTEST_CURRENT_TEST``, ``PYTEST_ADDOPTS`` and ``COREML_PARITY_RECORDS_DIR``, then updated with ``extra``
    (a value of ``None`` removes that variable). Serial or under ``pytest -n N``, the child gets the same view."""
    import os

    from .bench_gate import SCRUBBED_ENV, SCRUBBED_ENV_PREFIXES

    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV and not k.startswith(SCRUBBED_ENV_PREFIXES)}
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env
