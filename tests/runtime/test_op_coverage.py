"""Op coverage of the portable runtime: the real speech models' ops, and coremltools' core op set.

``tests/data/op_inventory.json`` lists, per model component (Parakeet TDT, Kokoro) and per target/precision,
the MIL op types of the converted program; ``scripts/op_inventory.py`` regenerates it in the models venv
(``pip install -e .[models]``). This file needs neither NeMo nor kokoro: it checks that the runtime has a kernel
for every op listed there, and that whatever core op it lacks is a deliberate, documented gap.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from conversions.runtime.mil import supported_ops

INVENTORY = Path(__file__).resolve().parent.parent / "data" / "op_inventory.json"

# Every coremltools core MIL op without a runtime kernel, with the reason, as a sentence. This dict is the whole list
# of gaps (no prefix wildcards, no separate sets): test_core_op_coverage fails on a core op missing from it, on an
# entry that has a kernel by now (stale), and on an entry that names no core op.
# While a kernel is being written, its op may sit here with the reason "kernel in progress" (issue 16 planned that
# for cond, while_loop, make_list, list_* and read_state, whose kernels landed first); remove the entry with the
# kernel, or the stale-entry check fails.
NOT_COVERED = {
    "_const_symbolic": (
        "Converter-internal constant that may hold symbolic dimensions: coremltools' passes fold it into a plain "
        "const, and with the passes skipped (PassPipeline.EMPTY) it is written without its value (its `val` input "
        "is internal and not serialized), so a model package never carries one that could be executed; "
        "test_const_symbolic_is_never_executable checks both."
    ),
}
# Op types that only exist in serialized programs, with a kernel: coremltools writes its ``coreml`` dialect op
# ``coreml_update_state`` as ``write_state`` + ``read_state`` (backend/mil/load.py); its op registry has no write_state.
SERIALIZED_ONLY_OPS = {"write_state"}


def core_ops() -> set[str]:
    import coremltools.converters.mil.mil.ops.defs  # noqa: F401  (registers every opset's ops)
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    return set(SSAOpRegistry.core_ops)


def load_inventory() -> dict:
    return json.loads(INVENTORY.read_text())


def inventory_cases():
    data = load_inventory()
    return [pytest.param(name, entry, id=name) for name, entry in data["components"].items()]


def inventory_problems(data: dict) -> list[str]:
    """What is wrong with an op inventory as ``scripts/op_inventory.py`` writes it: every variant of every component
    is converted (a sorted op list with ``const``) or has its failure recorded with a reason (a failed trace counts
    for every variant, a failed family build for the whole family), and ``all_ops`` is the union of the op lists."""
    problems = []
    variants = set(data["variants"])

    def unexplained(reason) -> bool:
        return not isinstance(reason, str) or len(reason.strip()) <= 10

    for name, entry in data["components"].items():
        if "error" in entry:  # the family's library failed to build the model: nothing else is recorded
            if unexplained(entry["error"]):
                problems.append(f"{name}: the family failed to build without a reason: {entry['error']!r}")
            continue
        ops, errors = entry.get("ops", {}), entry.get("errors", {})
        for key, reason in errors.items():
            if unexplained(reason):
                problems.append(f"{name} {key}: conversion failed without a reason: {reason!r}")
            if key != "trace" and key not in variants:
                problems.append(f"{name}: error recorded for unknown variant {key!r}")
        if "trace" not in errors and not variants <= set(ops) | set(errors):
            problems.append(f"{name}: variants neither converted nor recorded as failed: "
                            f"{sorted(variants - set(ops) - set(errors))}")
        if set(ops) & set(errors):
            problems.append(f"{name}: variants both converted and failed: {sorted(set(ops) & set(errors))}")
        for key, op_list in ops.items():
            if key not in variants:
                problems.append(f"{name}: ops recorded for unknown variant {key!r}")
            if op_list != sorted(set(op_list)) or "const" not in op_list:
                problems.append(f"{name} {key}: not a sorted op-type list: {op_list}")
    union = sorted({op for e in data["components"].values() for ops in e.get("ops", {}).values() for op in ops})
    if data.get("all_ops") != union:
        problems.append(f"all_ops is not the union of the components' op lists: {data.get('all_ops')} vs {union}")
    return problems


def test_inventory_covers_both_seed_families_and_all_variants():
    data = load_inventory()
    names = list(data["components"])
    assert any(n.startswith("parakeet_tdt.") for n in names) and any(n.startswith("kokoro.") for n in names), names
    assert set(data["variants"]) == {"iOS17-fp16", "iOS17-fp32", "iOS18-fp16", "iOS18-fp32"}
    problems = inventory_problems(data)
    assert not problems, "tests/data/op_inventory.json:\n" + "\n".join(problems)


@pytest.mark.parametrize("name, entry", inventory_cases())
def test_runtime_runs_every_op_the_component_emits(name, entry):
    supported = supported_ops()
    missing = {key: sorted(set(ops) - supported) for key, ops in entry.get("ops", {}).items()}
    missing = {key: ops for key, ops in missing.items() if ops}
    assert not missing, f"{name}: MIL ops without a runtime kernel, per variant: {missing}"


class _Scale(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2.0  # the 2.0 is a const op


class _Untraceable(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("this module cannot be traced (test component)")


def test_inventory_records_why_a_component_did_not_convert(monkeypatch):
    """A conversion failure is a converter limitation, not a runtime gap; the inventory must at least say why.
    The committed inventory has no failure, so the script's recording of failures is checked on components that
    fail on purpose: a family that does not build, a component that does not trace, a variant that does not
    convert. ``inventory_problems`` accepts what the script writes for them, and rejects it once a reason or a
    variant is lost."""
    from conversions import op_inventory as script  # what scripts/op_inventory.py runs
    real_convert = script.convert

    def convert(component, target, precision, traced=None):
        if component.name == "fake.convert_fails" and target == "iOS18":
            raise ValueError("coremltools cannot convert this component for iOS18 (test failure)")
        return real_convert(component, target, precision, traced)

    def broken_family(seed):
        raise ImportError("the model library is not installed (test failure)")

    def fake_family(seed):
        x = {"x": torch.randn(1, 4)}
        return [script.Component("fake.converts", _Scale(), x, "relu"),
                script.Component("fake.convert_fails", _Scale(), x, "relu, not for iOS18"),
                script.Component("fake.trace_fails", _Untraceable(), x, "raises in forward")]

    monkeypatch.setattr(script, "convert", convert)
    monkeypatch.setattr(script, "BUILDERS", {"fake": fake_family, "broken": broken_family})
    monkeypatch.setattr(script, "_library_version", lambda family: "0.0")
    data = script.inventory(["fake", "broken"], variants=[("iOS17", "fp32"), ("iOS18", "fp32")], log=lambda *a: None)

    components = data["components"]
    assert "not installed (test failure)" in components["broken"]["error"]
    assert "cannot be traced (test component)" in components["fake.trace_fails"]["errors"]["trace"]
    assert "cannot convert this component for iOS18" in components["fake.convert_fails"]["errors"]["iOS18-fp32"]
    assert set(components["fake.convert_fails"]["ops"]) == {"iOS17-fp32"}
    assert "errors" not in components["fake.converts"] and set(components["fake.converts"]["ops"]) == {
        "iOS17-fp32", "iOS18-fp32"}
    assert inventory_problems(data) == []

    for damage, expected in [
        (lambda d: d["components"]["fake.convert_fails"]["errors"].update({"iOS18-fp32": ""}), "without a reason"),
        (lambda d: d["components"]["fake.trace_fails"]["errors"].update({"trace": None}), "without a reason"),
        (lambda d: d["components"]["broken"].update({"error": " "}), "without a reason"),
        (lambda d: d["components"]["fake.convert_fails"].pop("errors"), "neither converted nor recorded"),
        (lambda d: d["components"]["fake.converts"]["ops"].pop("iOS18-fp32"), "neither converted nor recorded"),
        (lambda d: d["components"]["fake.converts"]["ops"]["iOS17-fp32"].remove("const"), "not a sorted op-type"),
    ]:
        damaged = copy.deepcopy(data)
        damage(damaged)
        problems = inventory_problems(damaged)
        assert any(expected in p for p in problems), f"{expected!r} not reported; problems: {problems}"


def test_supported_ops_are_core_mil_ops():
    extra = supported_ops() - core_ops() - SERIALIZED_ONLY_OPS
    assert not extra, f"runtime kernels for op types that are not coremltools core ops: {sorted(extra)}"


def _is_sentence(reason) -> bool:
    """A reason says something: a string of at least three words (not an empty string, a bare op name or a flag)."""
    return isinstance(reason, str) and len(reason.split()) >= 3


def test_core_op_coverage(record_property):
    """Every core op has a kernel or an entry in NOT_COVERED, and no entry is stale."""
    core = core_ops()
    supported = supported_ops() & core
    uncovered = core - supported
    record_property("core_ops", len(core))
    record_property("core_ops_supported", len(supported))
    record_property("core_op_coverage", f"covers {len(supported)} of {len(core)}")
    print(f"\nportable runtime covers {len(supported)} of {len(core)} coremltools core MIL ops; "
          f"not covered: {sorted(uncovered)}")
    unlisted = sorted(uncovered - set(NOT_COVERED))
    assert not unlisted, (f"core MIL ops without a kernel and not in NOT_COVERED: {unlisted}; "
                          "write the kernel, or add the op to NOT_COVERED with the reason")
    stale = sorted(op for op in NOT_COVERED if op in supported_ops())
    assert not stale, f"NOT_COVERED lists ops that now have a kernel (remove them): {stale}"
    unknown = sorted(set(NOT_COVERED) - core)
    assert not unknown, f"NOT_COVERED lists op types that are not coremltools core ops: {unknown}"
    vague = {op: reason for op, reason in NOT_COVERED.items() if not _is_sentence(reason)}
    assert not vague, f"NOT_COVERED reasons must be sentences: {vague}"
    assert len(core) == len(supported) + len(NOT_COVERED)


def test_const_symbolic_is_never_executable():
    """The reason given for ``_const_symbolic``: converted normally, the op is gone (folded into ``const``); with
    coremltools' passes skipped it is serialized with no input and no value, and the runtime refuses it by name."""
    import coremltools as ct
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import get_new_symbol

    from conversions.runtime import load_model

    def program():
        @mb.program(input_specs=[mb.TensorSpec(shape=(6,))], opset_version=ct.target.iOS17)
        def prog(x):
            return mb.reshape(x=x, shape=mb._const_symbolic(val=np.array([get_new_symbol(), 3], dtype=object)))

        return prog

    def ops(mlmodel):
        function = mlmodel.get_spec().mlProgram.functions["main"]
        return list(function.block_specializations[function.opset].operations)

    kwargs = dict(convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                  compute_precision=ct.precision.FLOAT32)
    folded = ct.convert(program(), **kwargs)
    assert "_const_symbolic" not in {op.type for op in ops(folded)}
    np.testing.assert_array_equal(load_model(folded, backend="mil").predict({"x": np.arange(6, dtype=np.float32)})[
        next(iter(folded.get_spec().description.output)).name], np.arange(6, dtype=np.float32).reshape(2, 3))
    raw = ct.convert(program(), pass_pipeline=ct.PassPipeline.EMPTY, **kwargs)
    (op,) = [op for op in ops(raw) if op.type == "_const_symbolic"]
    assert not op.inputs and set(op.attributes) == {"name"}, "serialized with a value after all"
    with pytest.raises(NotImplementedError, match="'_const_symbolic'.*not supported by the portable runtime"):
        load_model(raw, backend="mil")


def test_serialized_only_ops_have_kernels():
    assert SERIALIZED_ONLY_OPS <= supported_ops()
