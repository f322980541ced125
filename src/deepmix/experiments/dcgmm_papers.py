"""Shared pieces of the DCGMM papers' experiments (``benchmarks/reproduce/``).

:data:`PUBLISHED` restates the figures of ``shared/spec/dcgmm.md`` ("Published figures");
:func:`trained_model` trains a paper architecture on a data set (or loads it from a cache folder
of run directories, so the table scripts can share models) and returns it with its wall time.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data import load_images
from ..errors import ConfigError, DeepmixError
from ..models import DCGMM
from ..training import TrainConfig, train
from ..training.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model, read_config

__all__ = ["PUBLISHED", "trained_model", "markdown_table", "mean_std"]

#: figure -> row -> (MNIST, Fashion-MNIST) in percent, from the papers (spec dcgmm.md).
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "outlier_auroc": {"A": (95.4, 62.2), "B": (93.3, 72.2), "C": (94.2, 74.3), "D": (92.5, 68.1),
                      "E": (92.8, 74.9), "F": (84.1, 68.1), "G": (77.4, 62.7),
                      "RAT-SPN": (91.8, 39.2), "DGCSPN": (90.6, 57.1), "PD-SPN": (91.2, 48.5)},
    "sample_quality": {"A": (98.2, 80.3), "B": (98.7, 83.6), "E": (99.1, 94.5), "F": (99.9, 89.0),
                       "RAT-SPN": (99.2, 85.4), "DGCSPN": (98.0, 80.4), "PD-SPN": (97.2, 81.2)},
    "classification": {"B": (98.0, 89.6), "RAT-SPN": (98.19, 89.52), "DGCSPN": (98.66, 90.74)},
}
DATASETS = ("mnist", "fashion-mnist")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    t = torch.tensor(list(values), dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def _finished_run(run: Path, cfg: TrainConfig, spec: str, classes: list[int] | None) -> bool:
    """Whether the run folder holds this very training, finished: same model, data classes and
    training options (device and checkpoint interval aside), and the last checkpoint at the
    final step (an interrupted run stores its target epochs too, so those alone do not tell)."""
    from ..models.spec import format_spec, parse_spec
    from ..training.checkpoint import FORMAT
    from ..utils.config import config_to_dict
    from ..utils.io import read_safetensors

    from ..training.trainer import read_train_config

    config = read_config(run)
    data = config.get("data", {})
    try:
        saved = config_to_dict(read_train_config(run))
    except DeepmixError:
        return False
    if any(saved.get(k) != v for k, v in config_to_dict(cfg).items()
           if k not in ("device", "checkpoint_every")):
        return False
    try:
        if format_spec(parse_spec(config["model"]["spec"])) != format_spec(parse_spec(spec)):
            return False
    except (KeyError, TypeError, DeepmixError):
        return False
    n = data.get("n")
    if data.get("classes") != classes or not isinstance(n, int) or n < 1:
        return False
    _, metadata = read_safetensors(run / WEIGHTS_FILE, "weights file", FORMAT)
    try:
        step = json.loads(metadata.get("state", "{}")).get("step")
    except json.JSONDecodeError:
        return False
    return step == cfg.epochs * math.ceil(n / min(cfg.batch_size, n))


def trained_model(arch: str, data: str, *, classes: Sequence[int] | None = None,
                  epochs: int = 10, batch_size: int = 100, seed: int = 0,
                  cache: str | Path | None = None, spec_suffix: str = "",
                  labels: bool = False, progress: bool = False, device: str = "cpu",
                  **train_options: Any) -> tuple[DCGMM, float]:
    """Train ``arch`` (+ ``spec_suffix``, e.g. ``-C(10,2)``) on ``data`` or load it from ``cache``.

    Returns (model on ``device``, training seconds; 0.0 when loaded). The cache folder is named
    after the architecture, data, classes, epochs, batch size, seed, labels and the training
    options that differ from the defaults (e.g. ``lr_xi=0``); a cached run is reused only when
    its saved configuration is this training's and it ran to its last step, else it is trained
    anew.
    """
    from ..models.spec import resolve_architecture

    spec, _ = resolve_architecture(arch)
    spec += spec_suffix
    try:  # checked before anything is loaded or trained
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, device=device,
                          **train_options)
    except TypeError as exc:
        raise ConfigError(f"unknown training option: {exc}") from None
    defaults = TrainConfig()
    options = "".join(
        f"_{k}{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"_{k}{v}"
        for k, v in sorted(train_options.items()) if v != getattr(defaults, k))
    classes = list(classes) if classes is not None else None
    tag = "".join(c if c.isalnum() else "_" for c in
                  f"{arch}{spec_suffix}_{data}_{'all' if classes is None else '-'.join(map(str, classes))}"
                  f"_e{epochs}_b{batch_size}_s{seed}{options}{'_labels' if labels else ''}")
    run = Path(cache) / tag if cache is not None else None
    if run is not None and (run / WEIGHTS_FILE).is_file() and (run / CONFIG_FILE).is_file():
        try:
            if _finished_run(run, cfg, spec, classes):
                return load_model(run, device=device), 0.0
        except DeepmixError:
            pass  # a corrupt cached run is trained anew
    ds = load_images(data, "train", classes=classes)
    model = DCGMM(spec, input_shape=ds.shape, seed=seed)
    if run is not None and run.exists():
        import shutil

        shutil.rmtree(run)
    t0 = time.perf_counter()
    train(model, ds.to_tensor(), ds.labels if labels else None, config=cfg, out_dir=run,
          progress=progress, data_info={"name": data, "split": "train",
                                        "classes": classes, "levels": ds.levels})
    return model, time.perf_counter() - t0


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
