"""Opening a model: an ``.mlpackage`` directory, a bare ``.mlmodel`` file, or an in-memory ``ct.models.MLModel``.

Every way a package can be broken on disk is turned into a :class:`ModelPackageError` that names the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from coremltools.proto import Model_pb2

from .errors import ModelPackageError


@dataclass
class OpenedModel:
    spec: Model_pb2.Model
    weights_dir: str | None
    source: str  # for messages: the path, or "<in-memory MLModel>"


def _read_spec(path: str) -> Model_pb2.Model:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ModelPackageError(f"model specification {path!r} is missing or unreadable: {exc.strerror}") from None
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise ModelPackageError(f"model specification {path!r} is not a valid Core ML protobuf ({exc})") from None
    if spec.WhichOneof("Type") is None:
        raise ModelPackageError(f"model specification {path!r} holds no model (empty or corrupt protobuf)")
    return spec


def _inside(root: str, rel: str, what: str) -> str:
    root_real = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root_real, rel))
    if os.path.commonpath([root_real, target]) != root_real:
        raise ModelPackageError(f"{what} path {rel!r} escapes the package directory {root_real!r}")
    return target


def open_package(path: str | os.PathLike) -> OpenedModel:
    path = os.fspath(path)
    if os.path.isfile(path):  # a bare .mlmodel: weights, if any, sit beside it in `weights/`
        spec = _read_spec(path)
        weights = os.path.join(os.path.dirname(path), "weights")
        return OpenedModel(spec, weights if os.path.isdir(weights) else None, path)
    if not os.path.isdir(path):
        raise ModelPackageError(f"model package {path!r} does not exist")
    manifest_path = os.path.join(path, "Manifest.json")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ModelPackageError(f"{path!r} is not a model package: it has no Manifest.json") from None
    except (OSError, ValueError) as exc:
        raise ModelPackageError(f"{manifest_path!r} is not valid JSON: {exc}") from None
    try:
        entries = manifest["itemInfoEntries"]
        root_entry = entries[manifest["rootModelIdentifier"]]
        spec_rel = root_entry["path"]
    except (KeyError, TypeError) as exc:
        raise ModelPackageError(f"{manifest_path!r} names no root model (missing key {exc})") from None
    data_dir = os.path.join(path, "Data")
    spec_path = _inside(data_dir, spec_rel, "root model")
    spec = _read_spec(spec_path)
    weights_dir = None
    for entry in entries.values():
        if isinstance(entry, dict) and entry.get("name") == "weights":
            weights_dir = _inside(data_dir, entry.get("path", ""), "weights")
    if weights_dir is None:
        candidate = os.path.join(os.path.dirname(spec_path), "weights")
        weights_dir = candidate if os.path.isdir(candidate) else None
    return OpenedModel(spec, weights_dir, path)


def open_mlmodel(mlmodel) -> OpenedModel:
    """An in-memory ``coremltools.models.MLModel`` (e.g. straight from ``ct.convert``), without saving it."""
    spec = mlmodel.get_spec()
    weights_dir = getattr(mlmodel, "weights_dir", None)
    if weights_dir is not None and not os.path.isdir(weights_dir):
        weights_dir = None
    source = getattr(mlmodel, "package_path", None) or "<in-memory MLModel>"
    return OpenedModel(spec, weights_dir, source)
