"""Kokoro checkpoints other than the offline default: an official ``.pth`` file (``--kokoro-weights``) or a Hugging
Face repo id (``--kokoro-model-id``, downloaded through kokoro's own ``hf_hub_download`` call). Both are checked
for completeness: kokoro's own loader falls back to ``strict=False`` silently, so a checkpoint missing weights
would leave them at random initialisation without a word."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .onnx_weights import KOKORO_82M_CONFIG


def _check_complete(model, checkpoint: dict, source: str) -> None:
    for key, module in ((k, getattr(model, k)) for k in ("bert", "bert_encoder", "predictor", "text_encoder",
                                                          "decoder")):
        if key not in checkpoint:
            raise ValueError(f"{source}: no {key!r} weights (a KModel checkpoint holds bert, bert_encoder, predictor, "
                             f"text_encoder, decoder; found {sorted(checkpoint)})")
        given = {k[7:] if k.startswith("module.") else k for k in checkpoint[key]}
        # AdaIN1d's InstanceNorm is affine only to dodge an old ONNX-export bug (kokoro's comment): checkpoints
        # trained without it lack its weight/bias, which stay the identity (ones, zeros) as at initialisation
        identity_norms = {f"{name}.{p}" for name, m in module.named_modules() if isinstance(m, torch.nn.InstanceNorm1d)
                          for p in ("weight", "bias")}
        missing = sorted(set(module.state_dict()) - given - identity_norms)
        if missing:
            raise ValueError(f"{source}: {key} lacks {len(missing)} weights, e.g. {missing[:3]}")


def load_checkpoint(path: Path):
    """``KModel`` from a local checkpoint (``disable_complex=True``, eval), every weight checked present."""
    from kokoro import KModel

    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"--kokoro-weights {path}: not a torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"--kokoro-weights {path}: expected a dict of submodule state dicts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = KModel(repo_id="hexgrad/Kokoro-82M", config=dict(KOKORO_82M_CONFIG), model=str(path),
                       disable_complex=True)
    _check_complete(model, checkpoint, f"--kokoro-weights {path}")
    return model.eval()


def download_checkpoint(model_id: str):
    """``KModel`` of a hub repo kokoro knows (its config.json and checkpoint, downloaded by kokoro)."""
    from huggingface_hub import hf_hub_download
    from kokoro import KModel

    if model_id not in KModel.MODEL_NAMES:
        raise ValueError(f"--kokoro-model-id {model_id!r}: kokoro knows {sorted(KModel.MODEL_NAMES)}")
    config = hf_hub_download(repo_id=model_id, filename="config.json")
    weights = hf_hub_download(repo_id=model_id, filename=KModel.MODEL_NAMES[model_id])
    model = KModel(repo_id=model_id, config=config, model=weights, disable_complex=True)
    _check_complete(model, torch.load(weights, map_location="cpu", weights_only=True), f"{model_id} ({weights})")
    return model.eval()
