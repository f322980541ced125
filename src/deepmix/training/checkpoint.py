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
from ..models.registry import family_of, get_family, model_config_dict, model_from_config_dict
from ..utils.io import atomic_path, read_safetensors, write_json_atomic
from ..utils.tensors import all_finite

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "FORMAT", "STATE_PREFIX", "save_model", "save_checkpoint",
           "read_config", "run_family", "load_model", "load_checkpoint"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT = "deepmix-run/1"


#: Prefix of the trainer's own tensors (optimiser moments, EM statistics, generator state) in
#: ``weights.safetensors``; they are not model state and never reach ``load_state_dict``.
STATE_PREFIX = "_trainer/"


def save_checkpoint(model: torch.nn.Module, directory: str | Path,
                    state: dict[str, Any] | None = None,
                    tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Atomically write ``weights.safetensors``: the model's tensors, the trainer's ``tensors``
    (stored under :data:`STATE_PREFIX`) and the JSON trainer ``state`` as metadata."""
    directory = Path(directory)
    extra = {STATE_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in (tensors or {}).items()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tensors.update(extra)
    metadata = {"format": FORMAT, "state": json.dumps(state or {})}
    path = directory / WEIGHTS_FILE
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def save_model(model: Any, directory: str | Path, *, train: dict | None = None,
               data: dict | None = None, state: dict | None = None,
               tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a loadable run folder: ``config.json`` and ``weights.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "family": family_of(model).name,
              "model": model_config_dict(model)}
    if train is not None:
        config["train"] = train
    if data is not None:
        config["data"] = data
    save_checkpoint(model, directory, state, tensors)
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
    unknown = sorted(set(config) - {"format", "family", "model", "train", "data"})
    if unknown:
        raise CheckpointError(f"{path}: unknown key(s) {', '.join(unknown)}; known: format, "
                              f"family, model, train, data")
    return config


def run_family(config: dict) -> str:
    """The model family of a parsed ``config.json``.

    Run folders name it in ``"family"``; folders written before that key existed are DCGMM runs,
    or flat-GMM runs whose ``"model"`` section says ``"family": "gmm"``.
    """
    family = config.get("family")
    if family is None:
        model = config.get("model")
        family = "gmm" if isinstance(model, dict) and model.get("family") == "gmm" else "dcgmm"
    if not isinstance(family, str):
        raise CheckpointError(f"{CONFIG_FILE}: 'family' must be a string, got {family!r}")
    return family


def load_checkpoint(model: torch.nn.Module, directory: str | Path,
                    trainer_tensors: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Load weights into ``model`` (shapes must match exactly); returns the trainer state.

    The trainer's own tensors go into ``trainer_tensors`` (prefix removed) when it is given.
    """
    path = Path(directory) / WEIGHTS_FILE
    tensors, metadata = read_safetensors(path, "weights file", FORMAT)
    extra = {k[len(STATE_PREFIX):]: tensors.pop(k) for k in list(tensors)
             if k.startswith(STATE_PREFIX)}
    if trainer_tensors is not None:
        trainer_tensors.update(extra)
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
        if not all_finite(v):
            raise CheckpointError(f"{path}: tensor {k} holds NaN or infinite values")
    model.load_state_dict(tensors)
    try:
        return json.loads(metadata.get("state", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: trainer state in the metadata is corrupt") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu",
               family: str | None = None):
    """Rebuild the model of a run folder from its ``config.json`` and weights.

    The family named in ``config.json`` picks the model class through the registry
    (:mod:`deepmix.models.registry`); ``family`` (optional) is the one the caller expects, and
    a run of another family is refused with a message naming both.
    """
    from ..utils.device import resolve_device

    directory = Path(directory)
    config = read_config(directory)
    name = run_family(config)
    where = directory / CONFIG_FILE
    try:
        get_family(name)
    except DeepmixError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    if family is not None and name != family:
        raise CheckpointError(f"{directory} holds a '{name}' run; this needs a '{family}' run")
    section = config["model"]
    if isinstance(section, dict) and "family" in section and config.get("family") is None:
        section = {k: v for k, v in section.items() if k != "family"}  # legacy flat-GMM runs
    try:
        model = model_from_config_dict(name, section, where=f"{where} 'model'")
    except DeepmixError as exc:
        raise CheckpointError(str(exc)) from None
    target = resolve_device(device)
    load_checkpoint(model, directory)
    return model.to(target)
