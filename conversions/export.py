"""The export contract: trace, convert, record, cache, save atomically. One export path for every model family.

- :func:`convert_traced` traces a torch module on fixed-shape example inputs and converts it to an ML Program
  with the project's conventions: minimum deployment target iOS 17, traced and converted with ``CPU_ONLY``,
  fp16 compute precision by default (fp32 as an option). The package's metadata records what was really used,
  read back from the converted program (its compute precision, its specification version), plus the tool
  versions.
- :class:`ExportCache` keeps exported ``.mlpackage`` directories on disk, keyed by a hash of everything that
  decides their content (:func:`export_key`): the sources of the converter's family package, the reference weights, the
  conversion options and the coremltools/torch/numpy versions. An unchanged model is never re-exported across
  runs. Exports are serialized per key with a file lock (one pytest-xdist worker exports, the others wait and
  reuse) and written to a temporary directory that is renamed into place only when complete, so a run killed
  mid-export never leaves a package that a later run trusts; a digest of every file is recorded at export and
  checked on use, so a package damaged later (truncated, a flipped bit) is re-exported, never trusted.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import os
import platform
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write

PRECISIONS = ("fp16", "fp32")
DEFAULT_TARGET = "iOS17"
TRACE_COMPUTE_UNITS = "CPU_ONLY"
METADATA_PREFIX = "coreml_parity."
INT16_MAX = 32767
# Bump when the cache layout or the meaning of a key changes.
CACHE_FORMAT = 1


def convert_traced(module: torch.nn.Module, example_inputs: Mapping[str, torch.Tensor], output_names: Sequence[str], *,
                   precision: str = "fp16", target: str = DEFAULT_TARGET, metadata: Mapping[str, str] | None = None,
                   ranges: Mapping[str, Mapping[int, tuple[int, int]]] | None = None,
                   keep_fp32: Callable[[object], set] | None = None):
    """Trace ``module`` on ``example_inputs`` (input name -> tensor, in ``forward`` order) and convert it.

    Returns an in-memory ``ct.models.MLModel`` (ML Program) whose inputs carry the given names and the example
    shapes and whose outputs carry ``output_names``. Float inputs are declared float32, integer inputs int32.
    ``ranges`` makes dimensions flexible: input name -> {axis: (lower, upper)} (``ct.RangeDim``, the example's
    size as default); the module must then trace shape arithmetic as tensor ops, not Python ints.
    ``keep_fp32(block) -> set of ops``: in an fp16 export, the ops of the MIL block that must still compute in fp32
    (coremltools' ``FP16ComputePrecision`` op selector); the program is then mixed precision.
    """
    import coremltools as ct

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    module = module.eval()
    names = list(example_inputs)
    tensors = tuple(example_inputs.values())
    ranges = dict(ranges or {})
    unknown = set(ranges) - set(names)
    if unknown:
        raise ValueError(f"ranges name inputs {sorted(unknown)} the module does not take (inputs: {names})")

    def shape_of(name, x):
        shape = list(x.shape)
        for axis, (lower, upper) in ranges.get(name, {}).items():
            if not lower <= shape[axis] <= upper:
                raise ValueError(f"input {name!r}: example size {shape[axis]} of axis {axis} is outside its range "
                                 f"[{lower}, {upper}]")
            shape[axis] = ct.RangeDim(lower_bound=lower, upper_bound=upper, default=shape[axis])
        return tuple(shape)
    # coremltools' fp16 pipeline casts int32 inputs of gather/squeeze to int16 (``common::add_int16_cast``), also
    # when they are runtime shapes: a flexible dimension beyond 32767 then wraps (a 240,000-sample input becomes a
    # negative length, and every mask built from ``arange(x.size(1))`` comes out empty). Keep such shapes int32.
    pipeline = ct.PassPipeline.DEFAULT
    largest = max((upper for axes in ranges.values() for _, upper in axes.values()), default=0)
    if largest > INT16_MAX:
        pipeline.remove_passes({"common::add_int16_cast"})
        metadata = {**(metadata or {}), "removed_passes": "common::add_int16_cast (flexible dimension up to "
                                                          f"{largest} > int16)"}
    override = _KEEP_FP32_OVERRIDE.get()
    if override is not None and precision == "fp16":  # coreml-parity audit: its set replaces the converter's
        keep_fp32 = override.keep_fp32
        metadata = {**(metadata or {}), "keep_fp32_override": override.token}
    compute_precision = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    if precision == "fp16" and keep_fp32 is not None:
        compute_precision = ct.transform.FP16ComputePrecision(op_selector=_fp16_selector(keep_fp32))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-int shapes: the shapes are fixed on purpose
        traced = torch.jit.trace(module, tensors)
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name=n, shape=shape_of(n, x), dtype=np.float32 if x.is_floating_point() else np.int32)
                    for n, x in zip(names, tensors)],
            outputs=[ct.TensorType(name=n) for n in output_names],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision=compute_precision,
            compute_units=getattr(ct.ComputeUnit, TRACE_COMPUTE_UNITS),
            pass_pipeline=pipeline,
        )
    record_metadata(mlmodel, {**(metadata or {}), "requested_precision": precision, "requested_target": target})
    return mlmodel


@dataclass(frozen=True)
class KeepFp32Override:
    keep_fp32: Callable[[object], set] | None
    token: str


_KEEP_FP32_OVERRIDE: ContextVar[KeepFp32Override | None] = ContextVar("keep_fp32_override", default=None)


@contextmanager
def keep_fp32_override(keep_fp32: Callable[[object], set] | None, token: str) -> Iterator[None]:
    """Within the block, every :func:`convert_traced` uses ``keep_fp32`` as its keep-fp32 selector instead of the one
    its converter passes; ``None`` converts every op in fp16. Lets ``coreml-parity audit`` re-export any
    FAMILY/COMPONENT all-fp16 or with a candidate set without editing its converter. ``token`` names the selector:
    it is recorded in the package's metadata (``keep_fp32_override``) and added to :func:`export_key`, so an
    overridden export never shares a cache entry with the converter's own. fp32 exports compute the same."""
    handle = _KEEP_FP32_OVERRIDE.set(KeepFp32Override(keep_fp32, token))
    try:
        yield
    finally:
        _KEEP_FP32_OVERRIDE.reset(handle)


def _fp16_selector(keep_fp32: Callable[[object], set]) -> Callable[[object], bool]:
    """coremltools' op selector (True = compute in fp16) from the set of ops to keep fp32, computed once per block
    on its first op: before any cast is inserted, while the block holds only the converted ops."""
    kept: dict[int, set] = {}

    def select(op) -> bool:
        block = op.enclosing_block
        if id(block) not in kept:
            kept[id(block)] = set(keep_fp32(block))
        return op not in kept[id(block)]

    return select


def record_metadata(mlmodel, extra: Mapping[str, str]) -> None:
    """Write ``coreml_parity.*`` keys into the model's user-defined metadata: ``extra``, the tool versions, and
    what the converted program really is (``compute_precision`` from its value types, ``deployment_target``
    from its specification version)."""
    import coremltools as ct

    from .inspect_model import summarize
    from .runtime import load_model

    summary = summarize(load_model(mlmodel, backend="mil"))
    values = {
        **{k: str(v) for k, v in extra.items()},
        "compute_precision": summary.precision,
        "deployment_target": summary.deployment_target,
        "traced_compute_units": TRACE_COMPUTE_UNITS,
        "coremltools_version": ct.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
    }
    for key, value in values.items():
        mlmodel.user_defined_metadata[METADATA_PREFIX + key] = value


def package_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``coreml_parity.*`` metadata of a saved package (prefix stripped), read from its protobuf."""
    from .runtime.package import open_package

    spec = open_package(path).spec
    return {k.removeprefix(METADATA_PREFIX): v for k, v in spec.description.metadata.userDefined.items()
            if k.startswith(METADATA_PREFIX)}


# ---- cache keys ------------------------------------------------------------------------------------------
def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def weights_digest(module: torch.nn.Module) -> str:
    """Hash of a module's parameters and buffers (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    import coremltools as ct

    return {"coremltools": ct.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def converter_sources(converter: Callable) -> list[Path]:
    """The source files an export of ``converter`` depends on: every module of its family package (the torch
    modules it traces, its inputs and bounds live beside it), or its own file when it is a top-level module."""
    source = Path(inspect.getsourcefile(converter)).resolve()
    module = getattr(converter, "__module__", "") or ""
    if "." in module and (source.parent / "__init__.py").is_file():
        return sorted(source.parent.rglob("*.py"))
    return [source]


def export_key(converter: Callable, weights: str, options: Mapping[str, object]) -> str:
    """Hex digest identifying an export: the sources of ``converter``'s family package (:func:`converter_sources`:
    any change to its torch modules or converters re-exports), this export path, the weights digest, the options and
    the tool versions."""
    # inspect_model decides the metadata recorded in each package (its compute precision, its target).
    from . import inspect_model

    family_sources = converter_sources(converter)
    root = family_sources[0].parent
    sources = {f"family/{p.relative_to(root).as_posix()}": file_digest(p) for p in family_sources}
    sources.update({Path(__file__).name: file_digest(__file__),
                    Path(inspect_model.__file__).name: file_digest(inspect_model.__file__)})
    options = dict(options)
    override = _KEEP_FP32_OVERRIDE.get()
    if override is not None:  # an overridden export is another package (see keep_fp32_override)
        options["keep_fp32_override"] = override.token
    payload = {"format": CACHE_FORMAT, "converter": f"{converter.__module__}.{converter.__qualname__}",
               "sources": sources, "weights": weights, "options": dict(sorted(options.items())),
               "versions": tool_versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ---- the on-disk cache -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportedPackage:
    path: Path
    key: str
    reused: bool  # True when this run found it in the cache

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


class ExportCache:
    """``.mlpackage`` directories under ``directory``, named ``<name>-<key[:16]>.mlpackage``, each with a digest
    file beside it (``<package>.sha256``: one line per file of the package, its sha256 and relative path).

    A package is trusted only if it is complete (its final directory holds a ``Manifest.json``: the final name is
    created by one ``os.rename`` of a fully saved temporary directory) **and** its files still match the digest
    recorded when it was exported. A truncated ``weight.bin``, a flipped bit or a deleted file is found on use:
    the package is re-exported with a warning naming what differed, instead of failing every later run (or being
    blamed on an op as a conversion error).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path_for(self, name: str, key: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"export name must be a plain file name, got {name!r}")
        return self.directory / f"{name}-{key[:16]}.mlpackage"

    def get_or_export(self, name: str, key: str, build: Callable[[], object]) -> ExportedPackage:
        """The cached package for (``name``, ``key``), exporting it with ``build() -> MLModel`` if missing or if it
        no longer matches its recorded digest."""
        from filelock import FileLock

        final = self.path_for(name, key)
        if _trusted(final, warn=False):
            return ExportedPackage(final, key, reused=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final.with_suffix(".lock"))):
            if _trusted(final, warn=True):  # another process exported it while we waited
                return ExportedPackage(final, key, reused=True)
            # Whoever held the lock before us and left these is dead: nobody writes them without the lock.
            for stale in self.directory.glob(glob.escape(f".tmp-{final.stem}-") + "*"):
                shutil.rmtree(stale, ignore_errors=True)
            if final.exists():  # not complete or not matching its digest: a copy, an older writer, a damaged file
                shutil.rmtree(final)
            digest_path = _digest_path(final)
            digest_path.unlink(missing_ok=True)
            tmp = self.directory / f".tmp-{final.stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}.mlpackage"
            try:
                build().save(str(tmp))
                if not _complete(tmp):
                    raise RuntimeError(f"saving {name} produced no {tmp / 'Manifest.json'}")
                atomic_write(digest_path, package_digest(tmp))
                os.rename(tmp, final)
            except BaseException:
                digest_path.unlink(missing_ok=True)
                raise
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return ExportedPackage(final, key, reused=False)


def package_digest(path: str | os.PathLike) -> str:
    """One line per file of a package directory, ``<sha256>  <relative path>``, sorted by path."""
    root = Path(path)
    lines = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
        lines.append(f"{h.hexdigest()}  {f.relative_to(root).as_posix()}")
    return "\n".join(lines) + "\n"


def _digest_path(package: Path) -> Path:
    return package.with_name(package.name + ".sha256")


def _complete(path: Path) -> bool:
    return (path / "Manifest.json").is_file()


def _trusted(package: Path, warn: bool) -> bool:
    """Complete and matching its recorded digest. With ``warn``, say why a complete package is not trusted."""
    if not _complete(package):
        return False
    try:
        recorded = _digest_path(package).read_text()
    except OSError:
        problem = f"{_digest_path(package).name} (its digest) is missing"
    else:
        current = package_digest(package)
        if current == recorded:
            return True
        before = dict(reversed(line.split("  ", 1)) for line in recorded.splitlines() if "  " in line)
        after = dict(reversed(line.split("  ", 1)) for line in current.splitlines() if "  " in line)
        changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
        problem = f"files differ from their digest: {', '.join(changed[:5]) or 'digest file unreadable'}"
    if warn:
        warnings.warn(f"export cache: {package} is not trusted ({problem}); re-exporting it", stacklevel=3)
    return False
