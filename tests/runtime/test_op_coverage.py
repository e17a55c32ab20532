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

# Core MIL ops the runtime deliberately does not execute, beyond the families matched by prefix below.
# Anything else unsupported is a regression (or a new coremltools op) and must fail test_unsupported_ops_are_known.
UNSUPPORTED_CONTROL_FLOW = {"cond", "while_loop"}  # the executor runs flat programs; no seed model emits them
UNSUPPORTED_PREFIXES = ("list_", "random_")  # tensor lists (make_list below) and random sampling: not deterministic
DOCUMENTED_UNSUPPORTED = {
    "make_list": "tensor-list construction, only with the list_* ops (dynamic-length loops)",
    "_const_symbolic": "converter-internal constant with symbolic shape; never serialized into a model package",
    "classify": "classifier output head (labels + probability dictionary); speech models output tensors",
    "conv_quantized": "experimental iOS15 conv with inline quantization; coremltools emits constexpr_* ops instead",
    "read_state": "iOS18 stateful models (read_state / coreml_update_state); the runtime takes state as inputs",
}


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
    extra = supported_ops() - core_ops()
    assert not extra, f"runtime kernels for op types that are not coremltools core ops: {sorted(extra)}"


def test_unsupported_ops_are_known(record_property):
    core = core_ops()
    supported = supported_ops() & core
    unsupported = core - supported
    unknown = sorted(op for op in unsupported
                     if op not in UNSUPPORTED_CONTROL_FLOW and op not in DOCUMENTED_UNSUPPORTED
                     and not op.startswith(UNSUPPORTED_PREFIXES))
    record_property("core_ops", len(core))
    record_property("core_ops_supported", len(supported))
    print(f"\nportable runtime covers {len(supported)} of {len(core)} coremltools core MIL ops; "
          f"not covered: {sorted(unsupported)}")
    assert not unknown, (f"core MIL ops without a kernel and not in the documented list: {unknown}; "
                         "write the kernel, or document the gap in DOCUMENTED_UNSUPPORTED with a reason")


def test_documented_gaps_are_still_gaps():
    # Once a kernel lands for a documented gap, the entry must go (the list stays the true set of gaps).
    stale = sorted(op for op in set(DOCUMENTED_UNSUPPORTED) | UNSUPPORTED_CONTROL_FLOW if op in supported_ops())
    assert not stale, f"documented as unsupported but now have a kernel: {stale}"
    assert set(DOCUMENTED_UNSUPPORTED) <= core_ops(), "documented gaps must name core MIL ops"
