r"""A flat GMM trained by EM, SGD-MLE, score matching or sliced score matching on rows of
numbers (2-D toys, ``.npy`` matrices, flattened images), as a standard run folder.

This is what ``deepmix fit-gmm`` runs: data loading with a train/validation split
(:class:`DensityDataConfig`), the model (:class:`DensityModelConfig`) and the options
(:class:`DensityTrainConfig`) map onto the one training loop, :func:`deepmix.training.fit`,
with the flat-GMM objectives (``em``, ``sgd``, ``sm``, ``ssm``). The run folder is the loop's:

- ``config.json``: ``family`` "gmm", the :class:`~deepmix.models.gmm.MixtureConfig`, the
  loop's ``train`` section (objective, options, loop) and ``data`` (the
  :class:`DensityDataConfig` fields and ``n``); strict, unknown keys are errors;
- ``weights.safetensors``: the :class:`~deepmix.models.gmm.MixtureDensity` (+ trainer state);
- ``metrics.jsonl``: one line per epoch (EM: per iteration; epoch 0 = the initialisation) with
  ``train_nll`` and ``valid_nll`` (mean :math:`-\log p(x)` in nats), the objective's ``loss``
  and ``seconds``, the cumulative training time without evaluation;
- ``report.md``: what was trained on what, and the final numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError, DataError, DeepmixError, InputError
from ..models import MixtureConfig, MixtureDensity
from ..utils.config import config_from_dict, config_to_dict
from ..utils.io import write_text_atomic
from ..utils.tensors import all_finite
from .checkpoint import CONFIG_FILE, load_model, read_config
from .loop import METRICS_FILE

__all__ = ["DensityModelConfig", "DensityTrainConfig", "DensityDataConfig", "DENSITY_OBJECTIVES",
           "TOY_DATA", "IMAGE_DATA", "load_density_data", "train_density", "load_density",
           "read_density_config", "is_density_run", "METRICS_FILE"]

DENSITY_OBJECTIVES = ("em", "sgd", "sm", "ssm")
#: 2-D sets: the thesis' versions (spec §6.1, 10 000 train / 10 000 validation) and two more toys.
TOY_DATA = ("halfmoons", "spirals", "board", "swissroll", "sierpinski")
IMAGE_DATA = ("mnist", "fashion-mnist", "digits")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class DensityModelConfig:
    r"""The model of a density run (``config.json`` ``"model"``).

    Arguments:
        family: always ``"gmm"``; lets :func:`deepmix.load` tell this run from a DCGMM one.
        n_components: K.
        n_features: D.
        covariance_type: ``"full"`` or ``"diag"``.
        parametrization: ``"covariance"`` (thesis: :math:`\Sigma = LL^T + 10^{-6} I`) or
            ``"precision"`` (:math:`\Sigma^{-1} = RR^T`, softplus diagonal); full only.
        dtype: ``"float64"`` or ``"float32"``.
    """

    family: str = "gmm"
    n_components: int = 8
    n_features: int = 2
    covariance_type: str = "full"
    parametrization: str = "covariance"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.family != "gmm":
            raise ConfigError(f"model family '{self.family}' is not a flat GMM")
        if self.n_components < 1 or self.n_features < 1:
            raise ConfigError(f"need n_components >= 1 and n_features >= 1, got "
                              f"{self.n_components} and {self.n_features}")
        if self.covariance_type not in ("full", "diag"):
            raise ConfigError(f"Unknown covariance type '{self.covariance_type}'; expected full "
                              f"or diag")
        if self.parametrization not in ("covariance", "precision"):
            raise ConfigError(f"Unknown parametrization '{self.parametrization}'; expected "
                              f"covariance or precision")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"Unknown dtype '{self.dtype}'; expected float64 or float32")

    def build(self) -> MixtureDensity:
        return MixtureDensity(self.n_components, self.n_features, self.covariance_type,
                              parametrization=self.parametrization, dtype=_DTYPES[self.dtype])


@dataclass
class DensityTrainConfig:
    """How a density run is trained (``config.json`` ``"train"``).

    Arguments:
        objective: ``em`` (closed-form EM), ``sgd`` (Adam on the mean NLL), ``sm`` (exact score
            matching, closed form) or ``ssm`` (sliced score matching, variance-reduced).
        epochs: EM iterations, or passes over the training data.
        lr: Adam learning rate (gradient objectives).
        batch_size: rows per gradient step; None = full batch (the thesis' 2-D runs).
        init: ``kmeans`` (means = k-means centres, pi uniform, Sigma = I) or ``random``.
        seed: seeds the initialisation, the data order and the SSM slices.
        reg_covar: added to every EM covariance diagonal.
        clip: gradient-norm clipping (None: off).
        n_slices: SSM directions per point.
        projection: SSM directions, ``gaussian`` or ``rademacher``.
    """

    objective: str = "em"
    epochs: int = 100
    lr: float = 0.05
    batch_size: int | None = None
    init: str = "kmeans"
    seed: int = 0
    reg_covar: float = 1e-6
    clip: float | None = None
    n_slices: int = 1
    projection: str = "gaussian"

    def __post_init__(self) -> None:
        if self.objective not in DENSITY_OBJECTIVES:
            raise ConfigError(f"Unknown objective '{self.objective}'; expected one of "
                              f"{', '.join(DENSITY_OBJECTIVES)}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.init not in ("kmeans", "random"):
            raise ConfigError(f"Unknown init '{self.init}'; expected kmeans or random")
        if self.reg_covar < 0:
            raise ConfigError(f"reg_covar must be >= 0, got {self.reg_covar}")
        if self.clip is not None and self.clip <= 0:
            raise ConfigError(f"clip must be > 0, got {self.clip}")
        if self.n_slices < 1:
            raise ConfigError(f"n_slices must be >= 1, got {self.n_slices}")
        if self.projection not in ("gaussian", "rademacher"):
            raise ConfigError(f"Unknown projection '{self.projection}'; expected gaussian or "
                              f"rademacher")


@dataclass
class DensityDataConfig:
    """Which data a density run saw (``config.json`` ``"data"``).

    Arguments:
        name: a 2-D toy (:data:`TOY_DATA`), an image set (:data:`IMAGE_DATA`, pixels flattened
            to [0, 1]^D) or the path of an ``.npy`` file holding an (N, D) array.
        n_train: use only the first n_train training rows (None: all).
        dequantize: image sets: add U[0, 1) noise per grey level before scaling (required for
            SM/SSM, whose loss is unbounded below on quantised pixels, spec §8).
        valid_fraction: ``.npy`` and image sets: the last fraction of the rows is the validation
            split (MNIST: 1/6 = the last 10 000 training images, as the thesis).
    """

    name: str = "halfmoons"
    n_train: int | None = None
    dequantize: bool = False
    valid_fraction: float = 1.0 / 6.0

    def __post_init__(self) -> None:
        if self.n_train is not None and self.n_train < 1:
            raise ConfigError(f"n_train must be >= 1, got {self.n_train}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ConfigError(f"valid_fraction must lie in (0, 1), got {self.valid_fraction}")


def load_density_data(cfg: DensityDataConfig, dtype: torch.dtype = torch.float64,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train (N, D), valid (M, D)) tensors of ``cfg``; toy splits are the thesis' 10k / 10k."""
    name = cfg.name
    if name in ("halfmoons", "spirals", "board"):
        from ..data.toys import thesis_train_valid

        train, valid = thesis_train_valid(name)
    elif name in TOY_DATA:
        from ..data.toys import make_toy

        x = torch.from_numpy(make_toy(name, 20_000, seed=42).astype(np.float64))
        train, valid = x[:10_000], x[10_000:]
    elif name in IMAGE_DATA:
        from ..data import load_images

        ds = load_images(name, "train")
        gen = torch.Generator().manual_seed(0)
        x = ds.to_tensor(dequantize=cfg.dequantize, generator=gen).reshape(len(ds), -1)
        n_valid = max(1, int(round(len(x) * cfg.valid_fraction)))
        train, valid = x[:-n_valid], x[-n_valid:]
    elif name.endswith(".npy"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} is not a readable .npy array ({exc})") from None
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
            raise InputError(f"{path} holds an array of shape {x.shape} and dtype {x.dtype}; "
                             f"expected numbers of shape (n_samples, n_features)")
        if x.shape[0] < 2:
            raise InputError(f"{path} has {x.shape[0]} rows; need at least 2 (train + valid)")
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        n_valid = max(1, int(round(len(x) * cfg.valid_fraction)))
        train, valid = x[:-n_valid], x[-n_valid:]
    else:
        raise DataError(f"Unknown data '{name}'; expected one of "
                        f"{', '.join(TOY_DATA + IMAGE_DATA)} or a .npy file")
    if cfg.n_train is not None:
        train = train[:cfg.n_train]
    if not all_finite(train) or not all_finite(valid):
        raise InputError(f"data '{name}' contains NaN or infinite values")
    return train.to(dtype), valid.to(dtype)


def _is_quantised(name: str) -> bool:
    return name in IMAGE_DATA


@torch.no_grad()
def _mean_nll(model: MixtureDensity, x: torch.Tensor, chunk: int = 8192) -> float:
    total = sum(float(model.log_prob(x[i:i + chunk]).sum()) for i in range(0, len(x), chunk))
    return -total / len(x)


def _objective(train_cfg: DensityTrainConfig) -> Any:
    """The loop objective of a density run's training options."""
    from .objectives import make_objective

    if train_cfg.objective == "em":
        return make_objective("gmm", "em", {"init": train_cfg.init,
                                            "reg_covar": train_cfg.reg_covar})
    options: dict[str, Any] = {"lr": train_cfg.lr, "clip": train_cfg.clip,
                               "init": train_cfg.init}
    if train_cfg.objective == "ssm":
        options.update(n_slices=train_cfg.n_slices, projection=train_cfg.projection)
    return make_objective("gmm", train_cfg.objective, options)


def train_density(out_dir: str | Path, model_cfg: DensityModelConfig,
                  train_cfg: DensityTrainConfig, data_cfg: DensityDataConfig, *,
                  data: tuple[torch.Tensor, torch.Tensor] | None = None,
                  verbose: bool = True, resume: bool = False,
                  ) -> tuple[MixtureDensity, list[dict[str, Any]]]:
    """Train a flat GMM on the one loop and write its run folder; returns (model, metric rows).

    ``model_cfg.n_features`` must equal the data's D. ``data`` = (train, valid) overrides
    loading ``data_cfg`` (tests, notebooks); the config still records ``data_cfg``. With
    ``resume`` the run in ``out_dir`` continues to ``train_cfg.epochs``.
    """
    from .loop import FitConfig, fit

    if train_cfg.objective in ("sm", "ssm") and _is_quantised(data_cfg.name) \
            and not data_cfg.dequantize:
        raise ConfigError(f"{train_cfg.objective.upper()} on quantised pixels is unbounded "
                          f"below (zero score, -1/sigma^2 on constant pixels); dequantize the "
                          f"data (--dequantize)")
    dtype = _DTYPES[model_cfg.dtype]
    objective = _objective(train_cfg)          # bad options fail before any data is loaded
    train, valid = data if data is not None else load_density_data(data_cfg, dtype)
    train, valid = train.to(dtype), valid.to(dtype)
    for what, x in (("training", train), ("validation", valid)):
        if x.ndim != 2 or x.shape[1] != model_cfg.n_features:
            raise InputError(f"{what} data have shape {tuple(x.shape)}; the model expects "
                             f"(n, {model_cfg.n_features})")
    if train.shape[0] < model_cfg.n_components:
        raise InputError(f"Expected n_samples >= n_components but got n_components = "
                         f"{model_cfg.n_components}, n_samples = {train.shape[0]}")
    out = Path(out_dir)
    model = load_density(out) if resume else model_cfg.build()
    cfg = FitConfig(epochs=train_cfg.epochs, batch_size=train_cfg.batch_size,
                    seed=train_cfg.seed, device=str(train.device))

    def evaluate(m: MixtureDensity) -> dict[str, float]:
        return {"train_nll": _mean_nll(m, train), "valid_nll": _mean_nll(m, valid)}

    def show(row: dict[str, Any]) -> None:
        if verbose:
            loss = row.get("loss")
            print(f"epoch {row['epoch']:4d}: train NLL {row['train_nll']:.4f}, valid NLL "
                  f"{row['valid_nll']:.4f}" + (f", loss {loss:.4g}" if loss is not None else ""),
                  flush=True)

    metrics = fit(model, train, objective, config=cfg, out_dir=out, resume=resume,
                  data_info=config_to_dict(data_cfg), evaluate=evaluate, callback=show)
    final = {"train_nll": metrics[-1]["train_nll"], "valid_nll": metrics[-1]["valid_nll"],
             "seconds": metrics[-1]["seconds"]}
    _write_report(out, model_cfg, train_cfg, data_cfg, final, len(train), len(valid))
    return model, metrics


def _write_report(out: Path, model_cfg: DensityModelConfig, train_cfg: DensityTrainConfig,
                  data_cfg: DensityDataConfig, final: dict, n_train: int, n_valid: int) -> None:
    lines = [f"# Flat GMM, {train_cfg.objective.upper()} on {data_cfg.name}", "",
             f"- **model**: K = {model_cfg.n_components}, D = {model_cfg.n_features}, "
             f"{model_cfg.covariance_type} covariance ({model_cfg.parametrization}), "
             f"{model_cfg.dtype}",
             f"- **training**: {train_cfg.objective}, {train_cfg.epochs} epochs, init "
             f"{train_cfg.init}, seed {train_cfg.seed}"
             + ("" if train_cfg.objective == "em" else
                f", Adam lr {train_cfg.lr}, batch {train_cfg.batch_size or 'full'}"),
             f"- **data**: {n_train} training rows, {n_valid} validation rows", "",
             "| split | mean log-likelihood (nats) |", "|---|---|",
             f"| train | {-final['train_nll']:.4f} |", f"| validation | {-final['valid_nll']:.4f} |",
             "", f"Training time {final['seconds']:.2f} s (evaluation excluded). Per-epoch "
             f"values: `{METRICS_FILE}`.", ""]
    write_text_atomic(out / "report.md", "\n".join(lines))


def read_density_config(directory: str | Path
                        ) -> tuple[DensityModelConfig, DensityTrainConfig, DensityDataConfig]:
    """The model, training and data options of a density run (strict)."""
    from .loop import read_train_section

    directory = Path(directory)
    config = read_config(directory)
    where = f"{directory / CONFIG_FILE}"
    try:
        section = dict(config["model"])
        section.pop("family", None)            # folders written before the loop
        mc = config_from_dict(MixtureConfig, section, where=f"{where} 'model'")
        model = DensityModelConfig(n_components=mc.n_components, n_features=mc.n_features,
                                   covariance_type=mc.covariance_type,
                                   parametrization=mc.parametrization, dtype=mc.dtype)
        train_section = config.get("train", {})
        if "objective" in train_section and "loop" not in train_section:
            train = config_from_dict(DensityTrainConfig, train_section, where=f"{where} 'train'")
        else:
            objective, loop = read_train_section(directory, "gmm")
            o = objective.options
            train = DensityTrainConfig(
                objective=objective.name, epochs=loop.epochs, batch_size=loop.batch_size,
                seed=loop.seed, init=getattr(o, "init", None) or "kmeans",
                lr=getattr(o, "lr", DensityTrainConfig.lr),
                reg_covar=getattr(o, "reg_covar", DensityTrainConfig.reg_covar),
                clip=getattr(o, "clip", None), n_slices=getattr(o, "n_slices", 1),
                projection=getattr(o, "projection", "gaussian"))
        data_section = {k: v for k, v in config.get("data", {}).items() if k != "n"}
        data = config_from_dict(DensityDataConfig, data_section, where=f"{where} 'data'")
    except DeepmixError as exc:
        raise CheckpointError(str(exc)) from None
    return model, train, data


def load_density(directory: str | Path, device: str | torch.device = "cpu") -> MixtureDensity:
    """Rebuild the :class:`MixtureDensity` of a density run folder from the folder alone
    (its options are checked strictly too)."""
    read_density_config(directory)
    return load_model(directory, device=device, family="gmm")


def is_density_run(config: dict) -> bool:
    """Whether a parsed ``config.json`` belongs to a flat-GMM density run."""
    model = config.get("model")
    return isinstance(model, dict) and model.get("family") == "gmm"

