"""Run folders: ``config.json`` + ``weights.safetensors`` (with the trainer state in its metadata).

The trainer state lives in the safetensors header, so weights and state are replaced together in
one atomic rename and can never disagree. Weights are never unpickled: safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError, DeepmixError
from ..utils.config import config_from_dict, config_to_dict
from ..utils.io import atomic_path, read_safetensors, write_json_atomic

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "FORMAT", "save_model", "save_checkpoint",
           "read_config", "load_model", "load_checkpoint"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT = "deepmix-run/1"


def _model_config_dict(model: Any) -> dict:
    return config_to_dict(model.config)


def save_checkpoint(model: torch.nn.Module, directory: str | Path,
                    state: dict[str, Any] | None = None) -> Path:
    """Atomically write ``weights.safetensors`` (tensors + JSON trainer ``state`` as metadata)."""
    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "state": json.dumps(state or {})}
    path = directory / WEIGHTS_FILE
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def save_model(model: Any, directory: str | Path, *, train: dict | None = None,
               data: dict | None = None, state: dict | None = None) -> Path:
    """Write a loadable run folder: ``config.json`` and ``weights.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "model": _model_config_dict(model)}
    if train is not None:
        config["train"] = train
    if data is not None:
        config["data"] = data
    save_checkpoint(model, directory, state)
    write_json_atomic(directory / CONFIG_FILE, config)
    return directory


def read_config(directory: str | Path) -> dict:
    """The parsed ``config.json`` of a run folder (CheckpointError when missing or corrupt)."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise CheckpointError(f"run folder {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} is not a deepmix run folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or "model" not in config:
        raise CheckpointError(f"{path} is not a {FORMAT} config (format field missing or wrong)")
    unknown = sorted(set(config) - {"format", "model", "train", "data"})
    if unknown:
        raise CheckpointError(f"{path}: unknown key(s) {', '.join(unknown)}; known: format, "
                              f"model, train, data")
    return config


def load_checkpoint(model: torch.nn.Module, directory: str | Path) -> dict[str, Any]:
    """Load weights into ``model`` (shapes must match exactly); returns the trainer state."""
    path = Path(directory) / WEIGHTS_FILE
    tensors, metadata = read_safetensors(path, "weights file", FORMAT)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path} does not match the model in config.json "
                              f"(missing: {missing[:3]}, unexpected: {extra[:3]})")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the model "
                                  f"needs {tuple(expected[k].shape)}")
        if not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: tensor {k} holds NaN or infinite values")
    model.load_state_dict(tensors)
    try:
        return json.loads(metadata.get("state", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: trainer state in the metadata is corrupt") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model of a run folder from its ``config.json`` and weights."""
    from ..models.dcgmm import DCGMM, ModelConfig

    config = read_config(directory)
    if isinstance(config["model"], dict) and config["model"].get("family") == "gmm":
        from .density_run import load_density  # flat-GMM runs (deepmix fit-gmm)

        return load_density(directory, device=device)
    try:
        mc = config_from_dict(ModelConfig, config["model"], where=f"{CONFIG_FILE} 'model'")
        model = DCGMM.from_config(mc)
    except DeepmixError as exc:
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: {exc}") from None
    from ..utils.device import resolve_device

    target = resolve_device(device)
    load_checkpoint(model, directory)
    return model.to(target)
