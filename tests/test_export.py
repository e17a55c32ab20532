"""Tests of conversions.export: conversion metadata, cache keys, and the on-disk export cache.

The cache is what lets a parity run skip re-exporting unchanged models, so the properties protected here are
the ones whose failure would make a run silently trust the wrong package: a key that does not change when the
converter, the weights or an option change; a partial package left behind by a failed or killed export; two
pytest-xdist workers exporting the same package at once. Crashes and concurrency are exercised with real child
processes (SIGKILL, two exporters racing), not simulated.

Expected values come from outside the code under test: the requested precision, the deployment target's
specification version (iOS 17 is Core ML specification 8), value types read straight from the program's
protobuf, and file-system facts checked with plain ``pathlib``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conversions.export import (
    ExportCache,
    convert_traced,
    export_key,
    package_metadata,
    weights_digest,
)

REPO = Path(__file__).resolve().parents[1]
KEY_A = "a" * 64
KEY_B = "b" * 64
IOS17_SPEC_VERSION = 8  # Core ML specification version introduced with iOS 17 / macOS 14


def tiny_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


@pytest.fixture(scope="module")
def converted():
    """One fp16 and one fp32 conversion of the same tiny module, shared: each conversion costs ~0.3 s."""
    module = tiny_module()
    return {p: convert_traced(module, {"x": torch.zeros(1, 4)}, ("y",), precision=p) for p in ("fp16", "fp32")}


def child_env() -> dict[str, str]:
    from conversions.testing import clean_subprocess_env

    return clean_subprocess_env({"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})


def tmp_dirs(directory: Path) -> list[Path]:
    return sorted(directory.glob(".tmp-*"))


def packages(directory: Path) -> list[Path]:
    """Final packages only (pathlib's glob also matches the hidden ``.tmp-*`` directories)."""
    return sorted(p for p in directory.glob("*.mlpackage") if not p.name.startswith("."))


class Boom(Exception):
    pass


class ManifestOnly:
    """Stands in for an MLModel: ``save`` writes a minimal complete package (a directory with Manifest.json)."""

    def save(self, path: str) -> None:
        Path(path).mkdir()
        (Path(path) / "Manifest.json").write_text("{}")


# ---- convert_traced and the recorded metadata ------------------------------------------------------------
def _computing_op_dtypes(spec) -> set[str]:
    """Output value types of the ops that compute (not const/cast), read from the ML Program protobuf."""
    from coremltools.proto import MIL_pb2

    dtypes = set()
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                if op.type in ("const", "cast"):
                    continue
                dtypes.update(MIL_pb2.DataType.Name(o.type.tensorType.dataType) for o in op.outputs)
    return dtypes


@pytest.mark.parametrize("precision, program_dtype", [("fp16", "FLOAT16"), ("fp32", "FLOAT32")])
def test_convert_traced_records_what_was_converted(converted, tmp_path, precision, program_dtype):
    """The metadata of a converted program states its real compute precision, target, trace compute units and
    tool versions, both in memory and after saving: reports and the cache rely on it to tell packages apart."""
    import coremltools as ct

    mlmodel = converted[precision]
    spec = mlmodel.get_spec()
    # The program really is what was asked for (checked on the protobuf, independently of the metadata).
    assert spec.specificationVersion == IOS17_SPEC_VERSION
    assert _computing_op_dtypes(spec) == {program_dtype}
    assert [i.name for i in spec.description.input] == ["x"]
    assert [o.name for o in spec.description.output] == ["y"]

    expected = {
        "compute_precision": precision,
        "requested_precision": precision,
        "deployment_target": "iOS17",
        "requested_target": "iOS17",
        "traced_compute_units": "CPU_ONLY",
        "coremltools_version": ct.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
    }
    in_memory = {k: v for k, v in mlmodel.user_defined_metadata.items() if k.startswith("coreml_parity.")}
    assert in_memory == {"coreml_parity." + k: v for k, v in expected.items()}

    path = tmp_path / f"tiny-{precision}.mlpackage"
    mlmodel.save(str(path))
    assert package_metadata(path) == expected


def test_convert_traced_rejects_unknown_precision():
    """A typo in the precision fails loudly, naming the bad value, instead of converting with a default."""
    with pytest.raises(ValueError, match=r"precision.*'fp8'"):
        convert_traced(tiny_module(), {"x": torch.zeros(1, 4)}, ("y",), precision="fp8")


# ---- weights_digest --------------------------------------------------------------------------------------
def test_weights_digest_follows_parameter_values():
    """Equal weights give equal digests (in separate modules, separate storage); changing one weight element by
    one ulp gives a different digest, so retrained or edited weights are never served a stale package."""
    a = tiny_module()
    b = torch.nn.Linear(4, 3)
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    assert weights_digest(a) == weights_digest(b)

    with torch.no_grad():
        b.weight[1, 2] = float(np.nextafter(np.float32(b.weight[1, 2].item()), np.float32(np.inf)))
    assert weights_digest(a) != weights_digest(b)


def test_weights_digest_follows_buffers():
    """Buffers (e.g. batch-norm running statistics) are part of the weights: changing one changes the digest."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    b = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    assert weights_digest(a) == weights_digest(b)

    b[1].running_mean[0] += 0.5
    assert weights_digest(a) != weights_digest(b)


# ---- export_key ------------------------------------------------------------------------------------------
def _convert(module, precision):  # the converter whose source file (this test file) is hashed
    return module, precision


OPTIONS = {"family": "tiny", "component": "linear", "precision": "fp16", "target": "iOS17"}


def test_export_key_is_stable_and_follows_weights_and_options():
    """The same converter, weights and options give the same key (in any option order), and changing the
    weights digest or any single option value gives a different one: each decides the package's content."""
    key = export_key(_convert, "w" * 64, OPTIONS)
    assert len(key) == 64 and set(key) <= set("0123456789abcdef")
    assert export_key(_convert, "w" * 64, dict(reversed(list(OPTIONS.items())))) == key
    assert export_key(_convert, "v" * 64, OPTIONS) != key
    for name in OPTIONS:
        changed = {**OPTIONS, name: OPTIONS[name] + "x"}
        assert export_key(_convert, "w" * 64, changed) != key, name


CONVERTER_SOURCE = '''\
"""A converter under test."""
{comment}

def convert(module, precision):
    return module, precision
'''


def _load_converter(path: Path, comment: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONVERTER_SOURCE.format(comment=comment))
    spec = importlib.util.spec_from_file_location("tiny_converter", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.convert


def test_export_key_follows_converter_source(tmp_path):
    """Editing the converter's source file (even one comment line) changes the key, while the same file content
    in another checkout keeps it: converter edits re-export, an identical copy reuses."""
    original = _load_converter(tmp_path / "a" / "conv.py", "# version 1")
    copy = _load_converter(tmp_path / "b" / "conv.py", "# version 1")
    edited = _load_converter(tmp_path / "c" / "conv.py", "# version 2")
    # Same module name, function name and file name in all three: only the content differs.
    assert (original.__module__, original.__qualname__) == (edited.__module__, edited.__qualname__)
    key = export_key(original, "w" * 64, OPTIONS)
    assert export_key(copy, "w" * 64, OPTIONS) == key
    assert export_key(edited, "w" * 64, OPTIONS) != key


# ---- ExportCache.get_or_export ---------------------------------------------------------------------------
def test_get_or_export_builds_once_then_reuses(converted, tmp_path):
    """A missing package is built and saved under ``<name>-<key[:16]>.mlpackage``; the same key is then served
    from disk without building (also by a new cache object, as in a later run); another key builds again."""
    calls = []

    def build():
        calls.append(1)
        return converted["fp16"]

    cache_dir = tmp_path / "cache"
    first = ExportCache(cache_dir).get_or_export("tiny", KEY_A, build)
    assert (first.reused, first.key, len(calls)) == (False, KEY_A, 1)
    assert first.path == cache_dir / f"tiny-{'a' * 16}.mlpackage"
    assert (first.path / "Manifest.json").is_file()
    assert first.size_bytes == sum(f.stat().st_size for f in first.path.rglob("*") if f.is_file()) > 0
    assert package_metadata(first.path)["compute_precision"] == "fp16"

    again = ExportCache(cache_dir).get_or_export("tiny", KEY_A, build)
    assert (again.reused, again.path, len(calls)) == (True, first.path, 1)

    other = ExportCache(cache_dir).get_or_export("tiny", KEY_B, build)
    assert (other.reused, len(calls)) == (False, 2)
    assert other.path == cache_dir / f"tiny-{'b' * 16}.mlpackage" != first.path
    assert tmp_dirs(cache_dir) == []


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_get_or_export_rejects_names_that_are_not_plain_file_names(tmp_path, name):
    """A name that is empty, has a path separator or is hidden (and would match the ``.tmp-*`` clean-up) is
    refused before anything is built or written."""
    calls = []
    with pytest.raises(ValueError, match="export name") as info:
        ExportCache(tmp_path / "cache").get_or_export(name, KEY_A, lambda: calls.append(1))
    assert repr(name) in str(info.value)
    assert calls == [] and not (tmp_path / "cache").exists()


# ---- a cached package is verified before it is trusted -------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "flip-bit", "delete-file", "no-digest"])
def test_damaged_cached_package_is_re_exported_with_a_warning(converted, tmp_path, damage):
    """A package damaged after export (a truncated weight.bin, one flipped exponent bit, a missing file, a lost
    digest) does not match the digest recorded at export: the next use warns, naming what differs, and exports it
    again, so the damage never reaches a parity check (where a flipped bit would be blamed on an op)."""
    calls = []

    def build():
        calls.append(1)
        return converted["fp16"]

    cache = ExportCache(tmp_path)
    first = cache.get_or_export("tiny", KEY_A, build)
    weights = sorted(first.path.rglob("weight.bin"))
    assert weights and (first.path.parent / (first.path.name + ".sha256")).is_file()
    weight = weights[0]
    data = bytearray(weight.read_bytes())
    if damage == "truncate":
        weight.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip-bit":
        data[-3] ^= 0x40  # an exponent bit of the last fp16 weight
        weight.write_bytes(bytes(data))
    elif damage == "delete-file":
        weight.unlink()
    else:
        (first.path.parent / (first.path.name + ".sha256")).unlink()
    with pytest.warns(UserWarning, match="not trusted .*re-exporting") as caught:
        again = cache.get_or_export("tiny", KEY_A, build)
    assert (again.reused, len(calls)) == (False, 2)
    if damage != "no-digest":
        assert "weight.bin" in str(caught[0].message)
    assert weight.is_file() and package_metadata(again.path)["compute_precision"] == "fp16"
    assert cache.get_or_export("tiny", KEY_A, build).reused is True and len(calls) == 2
    assert tmp_dirs(tmp_path) == []


# ---- atomicity -------------------------------------------------------------------------------------------
class PartialSave:
    """``save`` writes part of a package (a weight file, no manifest) and then fails, like a full disk."""

    def save(self, path: str) -> None:
        Path(path).mkdir()
        (Path(path) / "weight.bin").write_bytes(b"\0" * 64)
        raise Boom("disk full")


def _raise_boom():
    raise Boom("conversion failed")


@pytest.mark.parametrize("build", [_raise_boom, PartialSave], ids=["build-raises", "save-raises-midway"])
def test_failed_export_leaves_nothing(tmp_path, build):
    """A build or save that fails propagates its own exception and leaves neither a final package nor a
    temporary directory, so the next run neither trusts nor trips over a half-written export."""
    with pytest.raises(Boom):
        ExportCache(tmp_path).get_or_export("tiny", KEY_A, build)
    assert packages(tmp_path) == [] and tmp_dirs(tmp_path) == []


def test_save_without_manifest_is_an_error(tmp_path):
    """A save that "succeeds" without writing Manifest.json (not a package) is reported, not published."""

    class NoManifest:
        def save(self, path):
            Path(path).mkdir()
            (Path(path) / "weight.bin").write_bytes(b"\0" * 64)

    with pytest.raises(RuntimeError, match="Manifest.json"):
        ExportCache(tmp_path).get_or_export("tiny", KEY_A, NoManifest)
    assert packages(tmp_path) == [] and tmp_dirs(tmp_path) == []


def test_incomplete_final_directory_is_replaced(converted, tmp_path):
    """A final-named directory without Manifest.json (e.g. an interrupted non-atomic copy) is not trusted: it
    is replaced by a fresh export, and none of its files survive."""
    cache = ExportCache(tmp_path)
    final = cache.path_for("tiny", KEY_A)
    (final / "Data").mkdir(parents=True)
    (final / "Data" / "leftover.bin").write_bytes(b"\1" * 32)

    exported = cache.get_or_export("tiny", KEY_A, lambda: converted["fp32"])
    assert exported.reused is False and exported.path == final
    assert (final / "Manifest.json").is_file()
    assert not (final / "Data" / "leftover.bin").exists()
    assert package_metadata(final)["compute_precision"] == "fp32"


def test_stale_temporary_directory_is_removed(tmp_path):
    """A ``.tmp-<stem>-*`` directory left by a dead exporter of this key is removed by the next export of that
    key; a temporary directory of another key (possibly being written right now) is left alone."""
    cache = ExportCache(tmp_path)
    stem_a = cache.path_for("tiny", KEY_A).stem
    stem_b = cache.path_for("tiny", KEY_B).stem
    stale = tmp_path / f".tmp-{stem_a}-999999-deadbeef.mlpackage"
    busy = tmp_path / f".tmp-{stem_b}-999999-cafecafe.mlpackage"
    for d in (stale, busy):
        d.mkdir()
        (d / "weight.bin").write_bytes(b"\0" * 16)

    exported = cache.get_or_export("tiny", KEY_A, ManifestOnly)
    assert exported.reused is False and (exported.path / "Manifest.json").is_file()
    assert tmp_dirs(tmp_path) == [busy]


# ---- real processes: killed mid-export, two exporters at once --------------------------------------------
KILLED_CHILD = """
import sys, time
from pathlib import Path
from conversions.export import ExportCache

class SlowSave:
    def save(self, path):
        Path(path).mkdir()
        (Path(path) / "weight.bin").write_bytes(b"\\0" * 1024)
        print("saving", flush=True)
        time.sleep(60)

ExportCache(sys.argv[1]).get_or_export("tiny", sys.argv[2], SlowSave)
"""


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def test_export_killed_mid_save_is_not_trusted_and_recovers(converted, tmp_path):
    """A process SIGKILLed while saving a package leaves no final package; the next export of the same key
    is not blocked by the dead process's lock, exports afresh and removes the dead process's temporary files."""
    from filelock import FileLock

    cache_dir, stderr_path = tmp_path / "cache", tmp_path / "child.err"
    # stderr to a file, not a pipe: an unread pipe could fill up and stall the child before it prints "saving".
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(cache_dir), KEY_A], cwd=REPO,
                                env=child_env(), stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = _read_line(proc, timeout=60)
        if line.strip() != "saving":
            proc.kill()
            proc.wait()
            pytest.fail(f"child did not reach save: stdout {line!r}, stderr {stderr_path.read_text()[-2000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    # The crash state: a partial temporary directory of the dead process, no package.
    assert packages(cache_dir) == []
    stem = ExportCache(cache_dir).path_for("tiny", KEY_A).stem
    assert [d.name.startswith(f".tmp-{stem}-{proc.pid}-") for d in tmp_dirs(cache_dir)] == [True]
    # The OS released the dead process's lock (checked with a timeout so a leak fails instead of hanging).
    for lock in cache_dir.glob("*.lock"):
        with FileLock(str(lock), timeout=10):
            pass

    exported = ExportCache(cache_dir).get_or_export("tiny", KEY_A, lambda: converted["fp32"])
    assert exported.reused is False and (exported.path / "Manifest.json").is_file()
    assert package_metadata(exported.path)["compute_precision"] == "fp32"
    assert tmp_dirs(cache_dir) == []


RACING_CHILD = """
import json, os, sys, time
from pathlib import Path
import filelock  # imported before the ready marker, so nothing slow stands between it and the lock
from conversions.export import ExportCache

cache_dir, key, me, other, counter = sys.argv[1:6]

class ManifestOnly:
    def save(self, path):
        Path(path).mkdir()
        (Path(path) / "Manifest.json").write_text("{}")

def build():
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\\n")
    # Stay in the export until the other process has entered get_or_export (plus a margin to reach the lock),
    # so the two really overlap however unevenly the machine starts them.
    deadline = time.monotonic() + 60
    while not Path(other).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    return ManifestOnly()

Path(me).touch()
exported = ExportCache(cache_dir).get_or_export("tiny", key, build)
print(json.dumps({"path": str(exported.path), "reused": exported.reused}), flush=True)
"""


def test_concurrent_exporters_export_once(tmp_path):
    """Two processes asking for the same package at the same time (pytest-xdist workers) export it once: one
    builds, the other waits on the lock and reuses the finished package; both get the same path."""
    cache_dir, counter = tmp_path / "cache", tmp_path / "builds.txt"
    ready = [tmp_path / "ready-0", tmp_path / "ready-1"]
    procs = [subprocess.Popen([sys.executable, "-c", RACING_CHILD, str(cache_dir), KEY_A, str(ready[i]),
                               str(ready[1 - i]), str(counter)],
                              cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
            results.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    assert len(counter.read_text().splitlines()) == 1
    assert results[0]["path"] == results[1]["path"] == str(ExportCache(cache_dir).path_for("tiny", KEY_A))
    assert sorted(r["reused"] for r in results) == [False, True]
    assert (Path(results[0]["path"]) / "Manifest.json").is_file()
    assert tmp_dirs(cache_dir) == []


def test_export_key_follows_every_module_of_the_family_package(tmp_path, monkeypatch):
    """A family's converter traces torch modules defined beside it: editing the package's modules.py (not the
    converter's own file) must re-export too."""
    import importlib

    package = tmp_path / "toyfamily_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "modules.py").write_text("SCALE = 1\n")
    (package / "converters.py").write_text("from .modules import SCALE\n\n\ndef convert(model, precision='fp16'):\n"
                                           "    return SCALE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    convert = importlib.import_module("toyfamily_pkg.converters").convert
    key = export_key(convert, "w" * 64, OPTIONS)
    assert export_key(convert, "w" * 64, OPTIONS) == key
    (package / "modules.py").write_text("SCALE = 2\n")
    assert export_key(convert, "w" * 64, OPTIONS) != key
