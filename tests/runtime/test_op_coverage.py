"""Op coverage of the portable runtime: the real speech models' ops, and coremltools' core op set.

``tests/data/op_inventory.json`` lists, per model component (Parakeet TDT, Kokoro) and per target/precision,
the MIL op types of the converted program; ``scripts/op_inventory.py`` regenerates it in the models venv
(``pip install -e .[models]``). This file needs neither NeMo nor kokoro: it checks that the runtime has a kernel
for every op listed there, and that whatever core op it lacks is a deliberate, documented gap.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_inventory_covers_both_seed_families_and_all_variants():
    data = load_inventory()
    names = list(data["components"])
    assert any(n.startswith("parakeet_tdt.") for n in names) and any(n.startswith("kokoro.") for n in names), names
    assert set(data["variants"]) == {"iOS17-fp16", "iOS17-fp32", "iOS18-fp16", "iOS18-fp32"}
    for name, entry in data["components"].items():
        converted = set(entry.get("ops", {}))
        failed = set(entry.get("errors", {}))
        # Every variant is either converted or has its conversion error recorded: no silent gap.
        assert converted | failed >= set(data["variants"]), f"{name}: variants missing from the inventory"
        for key, ops in entry.get("ops", {}).items():
            assert ops == sorted(set(ops)) and "const" in ops, f"{name} {key}: not a sorted op-type list"


@pytest.mark.parametrize("name, entry", inventory_cases())
def test_runtime_runs_every_op_the_component_emits(name, entry):
    supported = supported_ops()
    missing = {key: sorted(set(ops) - supported) for key, ops in entry.get("ops", {}).items()}
    missing = {key: ops for key, ops in missing.items() if ops}
    assert not missing, f"{name}: MIL ops without a runtime kernel, per variant: {missing}"


def test_inventory_records_why_a_component_did_not_convert():
    # A conversion failure is a converter limitation, not a runtime gap; it must at least say why.
    for name, entry in load_inventory()["components"].items():
        for key, error in entry.get("errors", {}).items():
            assert isinstance(error, str) and len(error) > 10, f"{name} {key}: conversion failed without a reason"


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
