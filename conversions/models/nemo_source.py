"""Where a NeMo model family's checkpoint comes from: its own pytest options (``--<family>-nemo-path``,
``--<family>-model-id``, ``--<family>-model-revision``), their validation, and the family's name after the
checkpoint (so a user's model never shares report or baselines with the offline default). Shared by the Parakeet
families; each declares its own options through :func:`source_options`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from conversions.registry import FamilyOption, ModelFamily


def source_options(name: str, label: str, example_id: str, revision_note: str) -> tuple[FamilyOption, ...]:
    return (
        FamilyOption(f"--{name}-nemo-path", f"{label}: check this NeMo checkpoint (restore_from) instead of the "
                                            "offline tiny model", metavar="FILE.nemo"),
        FamilyOption(f"--{name}-model-id", f"{label}: download this Hugging Face model (e.g. {example_id}) at a "
                                           "pinned revision and check it", metavar="ID"),
        FamilyOption(f"--{name}-model-revision", f"revision (commit) of the model id ({revision_note})",
                     metavar="REV"),
    )


def _dests(options: tuple[FamilyOption, ...]) -> tuple[str, str, str]:
    path, model_id, revision = (o.dest for o in options)
    return path, model_id, revision


def family_name(name: str, options: tuple[FamilyOption, ...], source: Mapping[str, Any]) -> str:
    """``name`` for the offline default; ``<name>-<checkpoint>`` for a user's checkpoint."""
    path, model_id, _ = _dests(options)
    if source.get(path):
        label = Path(source[path]).name.removesuffix(".nemo")
    elif source.get(model_id):
        label = str(source[model_id]).split("/")[-1]
    else:
        return name
    slug = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in label).strip("-")
    return f"{name}-{slug.lower()}"


def configure_source(base_name: str, options: tuple[FamilyOption, ...], family: ModelFamily,
                     values: Mapping[str, Any]) -> ModelFamily:
    """Validate the model-source options and name the family after the checkpoint."""
    path_key, id_key, revision_key = _dests(options)
    path, model_id, revision = values.get(path_key), values.get(id_key), values.get(revision_key)
    if path and model_id:
        raise ValueError(f"--{base_name}-nemo-path and --{base_name}-model-id name two models: give one")
    if revision and not model_id:
        raise ValueError(f"--{base_name}-model-revision goes with --{base_name}-model-id")
    source = dict(values)
    if path:
        resolved = Path(path).resolve()
        if not resolved.is_file():
            raise ValueError(f"--{base_name}-nemo-path: {resolved} does not exist (expected a .nemo checkpoint file)")
        if resolved.suffix != ".nemo":
            raise ValueError(f"--{base_name}-nemo-path: {resolved} is not a .nemo file (NeMo checkpoints are .nemo "
                             "archives)")
        source[path_key] = str(resolved)
    if model_id and "/" not in str(model_id):
        raise ValueError(f"--{base_name}-model-id: {model_id!r} is not a Hugging Face id (owner/name)")
    return replace(family, name=family_name(base_name, options, source), source=source)


def chosen(options: tuple[FamilyOption, ...], source: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(nemo path, model id, revision) from a configured ``source``."""
    path, model_id, revision = _dests(options)
    return source.get(path), source.get(model_id), source.get(revision) or None


def build_model(options: tuple[FamilyOption, ...], source: Mapping[str, Any], *, load: Callable[[Any], Any],
                download: Callable[[str, str | None], Any], tiny: Callable[[], Any]):
    """The model a configured ``source`` names: ``load(path)`` of the ``.nemo`` path, ``load(download(id,
    revision))`` of a hub id, else ``tiny()`` (the family's offline default)."""
    path, model_id, revision = chosen(options, source)
    if path:
        return load(path)
    if model_id:
        return load(download(model_id, revision))
    return tiny()
