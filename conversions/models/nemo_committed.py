"""Committed tiny NeMo models: a model's tokenizer files and state dict kept in the repository with a manifest of
their sha256, so the offline default model is the same bits on every CPU (fitting is not: torch's kernels round
differently per CPU). Shared by the Parakeet families; each describes its own with a :class:`CommittedModel`.

Files of a committed model's directory: ``tokenizer.model``, ``tokenizer.vocab``, ``vocab.txt`` (what NeMo's ``bpe``
tokenizer directory holds), ``weights.npz`` (every ``state_dict`` entry, ``np.savez`` format with fixed timestamps:
the same weights give the same bytes) and, written last, ``manifest.json``.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from conversions.files import sha256_file  # noqa: F401  (the project's file digest; used below and by the families)

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.vocab", "vocab.txt")
WEIGHTS_FILE = "weights.npz"
MANIFEST_FILE = "manifest.json"
COMMITTED_FILES = (*TOKENIZER_FILES, WEIGHTS_FILE)
COMMITTED_FORMAT = 1  # of the committed files (manifest "format")
_NPZ_DATE = (1980, 1, 1, 0, 0, 0)  # weights.npz members' zip timestamp


class TinyModelDataError(RuntimeError):
    """The committed tiny-model files are missing, altered, or do not fit the model they are loaded into."""


def state_dict_arrays(model) -> dict[str, np.ndarray]:
    """Every entry of ``model.state_dict()`` (parameters and buffers, batch-norm statistics and
    ``num_batches_tracked`` included) as a numpy array of the same dtype; floating ones must be float32."""
    arrays = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        if t.is_floating_point() and t.dtype != torch.float32:
            raise TypeError(f"{name}: {t.dtype}; the committed weights are float32")
        arrays[name] = t.numpy().copy()
    return arrays


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as an ``.npz`` (what ``np.savez`` writes: one stored ``NAME.npy`` per key, read back with
    ``np.load``), members sorted and dated 1980-01-01 so the same arrays always give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_NPZ_DATE)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.require(arrays[name], requirements="C"), allow_pickle=False)


@dataclass(frozen=True)
class CommittedModel:
    """One family's committed tiny model: ``label`` starts every error (``"tiny Parakeet model"``), ``scale`` and
    seed 0 are what its manifest must describe, ``regenerate`` tells how to repair it."""

    label: str
    scale: Mapping
    regenerate: str

    def _error(self, text: str) -> TinyModelDataError:
        return TinyModelDataError(f"{self.label}: {text} ({self.regenerate})")

    def verify(self, directory: str | os.PathLike) -> dict:
        """The manifest of ``directory``, after checking that it describes this model and that every file it lists
        is present with its recorded sha256. Raises :class:`TinyModelDataError` naming the file otherwise."""
        directory = Path(directory)
        manifest_path = directory / MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise self._error(f"cannot read {manifest_path}: {e}") from e
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if manifest.get("format") != COMMITTED_FORMAT or not isinstance(files, dict) or set(files) != set(COMMITTED_FILES):
            raise self._error(f"{manifest_path} is not a format-{COMMITTED_FORMAT} manifest listing "
                              f"{', '.join(COMMITTED_FILES)}")
        if manifest.get("scale") != dict(self.scale) or manifest.get("seed") != 0:
            raise self._error(f"{manifest_path} describes scale {manifest.get('scale')} seed {manifest.get('seed')}, "
                              f"not TINY_SCALE {dict(self.scale)} seed 0")
        for name in COMMITTED_FILES:
            path = directory / name
            if not path.is_file():
                raise self._error(f"{path} is missing")
            actual = sha256_file(path)
            if actual != files[name]:
                raise self._error(f"{path} does not match {manifest_path} (sha256 {actual}, manifest {files[name]}): "
                                  "the file was altered or replaced")
        return manifest

    def write(self, model, tokenizer_dir: str | os.PathLike, directory: str | os.PathLike, fit: Mapping,
              info: Mapping | None = None, portable_tokenizer: Callable[[bytes], bytes] | None = None) -> dict:
        """Write ``directory``: the tokenizer files from ``tokenizer_dir`` (``tokenizer.model`` through
        ``portable_tokenizer``), ``model``'s state dict as ``weights.npz`` and, last, ``manifest.json`` (sha256 of
        each file, the scale, seed, ``fit``, versions, the CPU capability, ``info``). Each file atomically."""
        from importlib.metadata import version

        from conversions.files import atomic_path, atomic_write

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            data = (Path(tokenizer_dir) / name).read_bytes()
            if name == "tokenizer.model" and portable_tokenizer is not None:
                data = portable_tokenizer(data)
            atomic_write(directory / name, data)
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            write_npz(tmp, state_dict_arrays(model))
        manifest = {
            "format": COMMITTED_FORMAT,
            "files": {name: sha256_file(directory / name) for name in COMMITTED_FILES},
            "scale": dict(self.scale), "seed": 0, "fit": dict(fit),
            "torch": torch.__version__, "nemo": version("nemo_toolkit"),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **(info or {}),
        }
        atomic_write(directory / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return manifest

    def read_weights(self, path: str | os.PathLike, model) -> dict[str, torch.Tensor]:
        """``weights.npz`` as a state dict for ``model``: exactly its keys, each of its dtype and shape."""
        expected = model.state_dict()
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        if missing or extra:
            raise self._error(f"{path} does not fit the model of config_for(TINY_SCALE): missing {missing[:5]}, "
                              f"unexpected {extra[:5]}")
        state = {}
        for name, target in expected.items():
            tensor = torch.from_numpy(arrays[name])
            if tensor.dtype != target.dtype or tensor.shape != target.shape:
                raise self._error(f"{path}: {name} is {tensor.dtype} {tuple(tensor.shape)}, the model has "
                                  f"{target.dtype} {tuple(target.shape)}")
            state[name] = tensor
        return state

    def load_into(self, model, directory: str | os.PathLike) -> None:
        """``directory``'s weights loaded into ``model`` (strict), checked to be the same bytes after loading."""
        path = Path(directory) / WEIGHTS_FILE
        state = self.read_weights(path, model)
        model.load_state_dict(state, strict=True)
        loaded = model.state_dict()
        for name, tensor in state.items():
            if not torch.equal(loaded[name], tensor):
                raise self._error(f"{name} changed on loading {path}")
