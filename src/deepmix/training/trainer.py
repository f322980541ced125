"""DCGMM training: :func:`train` runs the :class:`~deepmix.training.objectives.DCGMMObjective`
(every GMM layer ascends its own annealed loss on detached input, a classifier trains by
cross-entropy) on the one training loop, :func:`deepmix.training.loop.fit`.

The loop is deterministic given the seed (initialisation, per-epoch data order, dequantisation
noise), so ``resume=True`` continues an interrupted run to exactly the result of an
uninterrupted one. Host synchronisation happens once per controller window, not per step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..utils.config import config_to_dict
from .checkpoint import read_config
from .config import TrainConfig
from .loop import METRICS_FILE, FitConfig, fit, read_train_section
from .objectives import split_train_config

__all__ = ["train", "fit_model", "read_train_config", "METRICS_FILE"]


def read_train_config(directory: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` a DCGMM run folder was trained with (either format)."""
    directory = Path(directory)
    objective, loop = read_train_section(directory, "dcgmm")
    if objective.name != "dcgmm":
        raise CheckpointError(f"{directory} was not trained by the dcgmm objective")
    return TrainConfig(**config_to_dict(loop), **config_to_dict(objective.options))


def train(model: Any, images: Any, labels: Any = None, *, config: TrainConfig | None = None,
          out_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
          data_info: dict | None = None, stop_after_steps: int | None = None,
          **overrides: Any) -> list[dict]:
    """Train ``model`` (a :class:`~deepmix.models.DCGMM`) in place; returns the metrics history.

    Arguments:
        model: the model; moved to ``config.device``.
        images: training images (N, H, W, C) (see :func:`deepmix.models.as_images`).
        labels: class labels (N,) for a classifier layer (ignored by GMM layers).
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields.
        out_dir: run folder for config.json, weights.safetensors (checkpoints) and metrics.jsonl.
        resume: continue the run saved in ``out_dir`` (same data, same seed); only ``epochs``
            may change.
        progress: show a progress bar with the per-layer losses.
        data_info: description of the data stored in config.json (name, split, classes, N).
        stop_after_steps: stop (with a checkpoint) after this global step, as an interruption.
    """
    cfg = config or TrainConfig()
    if overrides:
        try:
            cfg = dataclasses.replace(cfg, **overrides)
        except TypeError as exc:
            raise ConfigError(f"unknown training option: {exc}") from None
    loop, options = split_train_config(cfg)
    from .objectives import DCGMMObjective

    fit_config = FitConfig(**loop)
    if resume:
        if out_dir is None:
            raise ConfigError("resume=True needs the run folder out_dir")
        read_config(out_dir)  # a clear error when the folder is missing or corrupt
        epochs = overrides.get("epochs") or (config.epochs if config is not None else None)
        fit_config = dataclasses.replace(fit_config, epochs=int(epochs)) if epochs else None
    return fit(model, images, DCGMMObjective(options), config=fit_config, targets=labels,
               out_dir=out_dir, resume=resume, progress=progress, data_info=data_info,
               stop_after_steps=stop_after_steps)


def fit_model(model: Any, data: Any, targets: Any = None, *, objective: Any = None,
              **options: Any) -> list[dict]:
    """``model.fit``: DCGMM through :func:`train` (its options are :class:`TrainConfig`'s),
    any other family through :func:`~deepmix.training.loop.fit` with its default objective."""
    if model.family == "dcgmm" and objective in (None, "dcgmm"):
        return train(model, data, targets, **options)
    return fit(model, data, objective or model.default_objective, targets=targets, **options)
