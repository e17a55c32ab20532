"""``coreml-parity audit``, the fp16 doctor (conversions/audit.py), and the hooks it runs on.

Expected values come from outside the code under test: which op overflows or underflows follows from the module's
arithmetic and fp16's range (max 65504, smallest subnormal 6e-8); whether a keep-fp32 set works is decided by a
real re-export streamed against the torch module (or, for Parakeet, the component's declared bounds); the
converter's own keep-fp32 set is read from its export's value types.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest
import torch

from conversions import audit
from conversions.export import convert_traced, export_key, keep_fp32_override, package_metadata
from conversions.registry import Bound
from conversions.runtime import load_model

BOUND = Bound(1e-2, 0.0, 40.0, "test: ~fp16 storage of values up to 16")


class Troubled(torch.nn.Module):
    """Two fp16 failures of the classic kinds, one per output."""

    def forward(self, loud, quiet):
        energy = (loud * 300.0) ** 2  # |loud| <= 1: up to 9e4 > 65504, inf in fp16
        level = energy / 90000.0  # back in [0, 1]
        power = quiet * quiet  # quiet ~ 1e-4: ~1e-8, below fp16's smallest subnormal (6e-8): flushed to 0
        return level + 1.0, torch.log(power + 1e-12)


class Fine(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x * 0.5 + 1.0)


def troubled_inputs():
    g = torch.Generator().manual_seed(0)
    return {"loud": torch.rand(1, 64, generator=g) * 2 - 1, "quiet": 1e-4 + 2e-4 * torch.rand(1, 64, generator=g)}


def quiet_progress(message):
    pass


@pytest.fixture(scope="module")
def troubled():
    subject = audit.module_subject(Troubled(), troubled_inputs(), ("level", "log_power"),
                                   {"level": BOUND, "log_power": BOUND}, label="troubled")
    return subject, audit.audit(subject, progress=quiet_progress)


def types_of(program, names):
    by_name = {audit.base_name(op.name): op.op_type for op in program.function.operations}
    return sorted(by_name[n] for n in names)


# ---- the doctor on a synthetic module ----------------------------------------------------------------------------
def test_all_fp16_module_fails_where_fp16_cannot_hold_the_values(troubled):
    _, result = troubled
    figures = {row["output"]: row for row in result.all_fp16}
    assert figures["level"]["max_abs"] == np.inf  # 9e4 -> inf
    assert figures["log_power"]["max_abs"] > 1.0  # log(6e-8) instead of log(1e-8): ~1.8 off
    assert not result.passes_already


def test_flags_name_the_overflow_and_the_underflow(troubled):
    subject, result = troubled
    flags = {f.op: f for f in result.flags}
    ops = {audit.base_name(op.name): op.op_type for op in subject.program.function.operations}
    overflowing = [f for f in flags.values() if "overflow" in f.kinds]
    assert [ops[f.op] for f in overflowing] == ["pow"]  # (loud * 300) ** 2, and only it
    assert overflowing[0].overflow > 0
    underflowing = [f for f in flags.values() if "underflow" in f.kinds and f.flushed]
    assert "mul" in [ops[f.op] for f in underflowing]  # quiet * quiet
    power = next(f for f in underflowing if ops[f.op] == "mul" and f.flushed_fraction > 0.1)
    assert power.outputs == ["log_power"]  # it feeds that output only
    # ranked by effect: every flagged op's effect was measured on the outputs it feeds
    assert all(f.excess_if_exact is not None for f in result.flags)


def test_verified_proposal_keeps_the_ops_that_need_fp32(troubled):
    subject, result = troubled
    assert result.verified and result.exit_code == 0
    # energy (pow) and its scaling back (the division, as a mul by 1/90000); the power spectrum (mul), the guard
    # (add) and the log. The scaling of the input (loud * 300 fits fp16) and the final + 1 stay fp16.
    assert types_of(subject.exact, result.proposal) == ["add", "log", "mul", "mul", "pow"]
    verification = result.verifications[-1]
    assert verification.method == "re-export" and verification.passed
    assert verification.matched == verification.kept and not verification.unmatched
    # the printed selector, pasted into a converter, gives the same verified program
    namespace = {}
    exec(result.selector_code, namespace)
    mlmodel = convert_traced(Troubled(), troubled_inputs(), ("level", "log_power"), precision="fp16",
                             keep_fp32=namespace["keep_fp32"])
    feeds = {k: v.numpy() for k, v in troubled_inputs().items()}
    with torch.no_grad():
        level, log_power = Troubled()(**troubled_inputs())
    got = load_model(mlmodel, backend="mil").predict(feeds)
    assert np.abs(got["level"].astype(np.float32) - level.numpy()).max() <= BOUND.atol
    assert np.abs(got["log_power"].astype(np.float32) - log_power.numpy()).max() <= BOUND.atol


def test_module_fine_in_fp16_needs_nothing_kept():
    x = torch.linspace(-2, 2, 32).reshape(1, 32)
    subject = audit.module_subject(Fine(), {"x": x}, ("y",), {"y": BOUND}, label="fine")
    result = audit.audit(subject, progress=quiet_progress)
    assert result.passes_already and result.exit_code == 0 and not result.proposal
    assert "nothing to keep fp32" in audit.format_report(result)


# ---- the hooks ---------------------------------------------------------------------------------------------------
def test_emulated_mixed_export_matches_the_real_one(troubled):
    """with_fp16_ops on the fp32 export reproduces a real fp16 export bit for bit: the all-fp16 one, and a mixed one."""
    subject, result = troubled
    feeds = {k: v.numpy() for k, v in troubled_inputs().items()}
    plan = audit.fp16_ops(subject.program)
    emulated = subject.exact.with_fp16_ops(plan).predict(feeds)
    real = subject.program.predict(feeds)
    for name in ("level", "log_power"):
        np.testing.assert_array_equal(emulated[name].astype(np.float16), real[name])
    mixed = load_model(subject.reexport(frozenset(result.proposal)), backend="mil")
    emulated = subject.exact.with_fp16_ops({n: p for n, p in plan.items() if n not in result.proposal}).predict(feeds)
    real = mixed.predict(feeds)
    for name in ("level", "log_power"):
        np.testing.assert_array_equal(emulated[name].astype(np.float16), real[name])


def test_overrides_replace_an_op_output_only_when_given():
    module = Fine()
    x = torch.linspace(-2, 2, 8).reshape(1, 8)
    model = load_model(convert_traced(module, {"x": x}, ("y",), precision="fp32"), backend="mil", precision="fp32")
    feeds = {"x": x.numpy()}
    plain = model.predict(feeds)["y"]
    trace = model.trace(feeds)
    relu = next(op for op in trace.values() if op.op_type == "relu")
    var = next(iter(relu.outputs))
    given = np.full_like(relu.value, 7.0)
    assert np.all(model.predict(feeds, overrides={var: given})["y"] == 7.0)
    np.testing.assert_array_equal(model.predict(feeds)["y"], plain)  # no lasting effect
    with pytest.raises(ValueError, match="no op"):
        model.predict(feeds, overrides={"not_a_variable": given})


def test_keep_fp32_override_changes_the_export_its_metadata_and_its_key():
    module, example = Fine(), {"x": torch.zeros(1, 8)}
    everything = convert_traced(module, example, ("y",), keep_fp32=lambda block: set(block.operations))
    assert not audit.fp16_ops(load_model(everything, backend="mil"))  # the converter's own set: all fp32
    key = export_key(Fine.forward, "w", {"precision": "fp16"})
    with keep_fp32_override(None, "all-fp16"):
        overridden = convert_traced(module, example, ("y",), keep_fp32=lambda block: set(block.operations))
        assert export_key(Fine.forward, "w", {"precision": "fp16"}) != key
    assert export_key(Fine.forward, "w", {"precision": "fp16"}) == key  # only within the block
    assert audit.fp16_ops(load_model(overridden, backend="mil"))  # all fp16 despite the converter
    assert overridden.user_defined_metadata["coreml_parity.keep_fp32_override"] == "all-fp16"


# ---- the command line ---------------------------------------------------------------------------------------------
def parse(*argv):
    parser = argparse.ArgumentParser()
    audit.add_parser(parser.add_subparsers())
    return parser.parse_args(["audit", *argv])


def test_unknown_family_component_names_the_known_ones(capsys):
    assert audit.run(parse("silero-vad/no-such-component")) == 2
    err = capsys.readouterr().err
    assert "silero-vad/no-such-component" in err and "parakeet-tdt-v3/preprocessor" in err


def test_input_with_a_wrong_name_says_which_inputs_exist(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    assert audit.run(parse("parakeet-tdt-v3/preprocessor", "--input", f"signal={tmp_path / 'x.npy'}")) == 2
    err = capsys.readouterr().err
    assert "signal" in err and "audio_signal" in err and "audio_length" in err
    assert audit.run(parse("parakeet-tdt-v3/preprocessor", "--input", f"audio_signal={tmp_path / 'nope.npy'}")) == 2
    assert "cannot read" in capsys.readouterr().err


def test_bare_package_is_verified_on_the_runtime(tmp_path, capsys):
    path = tmp_path / "troubled.mlpackage"
    convert_traced(Troubled(), troubled_inputs(), ("level", "log_power"), precision="fp16").save(str(path))
    assert "model" not in package_metadata(path)  # no family: a bare package
    for name, value in troubled_inputs().items():
        np.save(tmp_path / f"{name}.npy", value.numpy())
    inputs = [arg for name in ("loud", "quiet") for arg in ("--input", f"{name}={tmp_path / name}.npy")]
    assert audit.run(parse(str(path), *inputs)) == 2
    assert "--atol" in capsys.readouterr().err
    assert audit.run(parse(str(path), *inputs, "--atol", "0.01", "--json")) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["verified"] and report["verifications"][-1]["method"] == "runtime emulation"
    assert any("re-export verification needs FAMILY/COMPONENT" in n for n in report["notes"])


# ---- Parakeet's mel front end: the doctor rediscovers what front_end_ops keeps fp32 by hand --------------------------
def test_parakeet_preprocessor_needs_and_gets_a_verified_keep_fp32_set(pytestconfig):
    from conversions import registry
    from conversions.pytest_plugin import export_dir

    family = next(f for f in registry.families() if f.name == "parakeet-tdt-v3")
    if family.missing_requirements():
        pytest.skip(f"NeMo is not installed ({family.install_hint})")
    started = time.monotonic()
    subject = audit.family_subject(family, family.component("preprocessor"), export_dir(pytestconfig),
                                   progress=quiet_progress)
    result = audit.audit(subject, progress=quiet_progress)
    seconds = time.monotonic() - started
    print(f"\naudit parakeet-tdt-v3/preprocessor: {seconds:.0f} s\n{audit.format_report(result)}")
    # the premise: the all-fp16 preprocessor fails its declared fp16 bounds on the clip
    assert not all(row["passed"] for row in result.all_fp16)
    # the doctor's proposal, re-exported, passes them
    assert result.verified and result.exit_code == 0
    verification = result.verifications[-1]
    assert verification.method == "re-export" and all(row["passed"] for row in verification.outputs)
    assert not verification.unmatched
    # and holds on the generated inputs (random_inputs, against random_bounds), where all fp16 fails some
    assert result.generated["passed"] < result.generated["total"] == audit.DEFAULT_GENERATED
    assert verification.generated["passed"] == verification.generated["total"]
    # Every proposed op is one the hand-written front_end_ops keeps fp32. Compared by op name in the saved
    # programs: the all-fp16 export names each op <name>_cast_fp16, the converter's own export keeps <name> for the
    # ops it keeps fp32, and the names come from the same trace of the same module (stable between exports; the
    # re-export above finds every proposed name). The converter's set is read from its export's value types.
    assert subject.converter_fp32 is not None
    assert set(result.proposal) <= set(subject.converter_fp32)
    assert len(result.proposal) < len(subject.converter_fp32)  # smaller than the whole block
    proposed_types = set(types_of(subject.exact, result.proposal))
    assert {"pow", "matmul", "log"} <= proposed_types  # the power spectrum before the log
