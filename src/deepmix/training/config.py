"""Training options of a DCGMM run, with the reference defaults of the spec."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ..errors import ConfigError

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Options of :func:`deepmix.training.train` (serialised to ``config.json``).

    Arguments:
        epochs: passes over the training data.
        batch_size: images per SGD step (reference 100).
        lr: base rate eps of the plain SGD ascent (reference 0.01).
        lr_mu, lr_d, lr_xi: per-parameter factors on ``lr`` (reference 1.0, 0.1, 0.2).
        sigma0: start of the annealing radius; None means the reference sqrt(2K)/4 per layer.
        sigma_min: floor of sigma (reference 0.01).
        sigma_decay: factor applied by the controller (reference 0.9).
        window: steps per controller window (reference 100).
        ratio_low, ratio_high: the controller decays sigma when low < ratio < high.
        delay: GMM layer L (from 0) starts updating after ``delay * L`` of all steps (0.1).
        centroids_first: keep d frozen until the layer's sigma is at or below this value
            (the papers' "centroids first, then precisions"); None disables it (reference).
        classifier_lr: SGD rate of the linear classifier (cross-entropy, from step 0).
        dequantize: add uniform noise of one grey level to every batch (for density figures).
        seed: seeds the initialisation, the data order and the dequantisation noise.
        checkpoint_every: also write a checkpoint every N steps (0: only at epoch ends).
        device: torch device of the run ("cpu", "cuda", ...).
    """

    epochs: int = 3
    batch_size: int = 100
    lr: float = 0.01
    lr_mu: float = 1.0
    lr_d: float = 0.1
    lr_xi: float = 0.2
    sigma0: float | None = None
    sigma_min: float = 0.01
    sigma_decay: float = 0.9
    window: int = 100
    ratio_low: float = -0.1
    ratio_high: float = 0.05
    delay: float = 0.1
    centroids_first: float | None = None
    classifier_lr: float = 0.05
    dequantize: bool = False
    seed: int = 0
    checkpoint_every: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) and type(self.device).__name__ == "device":
            self.device = str(self.device)  # a torch.device; stored as text in config.json
        # Types first, so that a value from JSON or the command line such as "0.1" is named
        # here rather than failing in a comparison below.
        for f in fields(self):
            value = getattr(self, f.name)
            kind = str(f.type)
            if kind.startswith("int"):
                ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                want = "an integer"
            elif kind.startswith("float"):
                ok = (isinstance(value, (int, float, np.integer, np.floating))
                      and not isinstance(value, bool)) or (value is None and "None" in kind)
                want = "a number" + (" or None" if "None" in kind else "")
            elif kind == "bool":
                ok, want = isinstance(value, (bool, np.bool_)), "true or false"
            else:
                ok, want = isinstance(value, str), "a string"
            if not ok:
                raise ConfigError(f"{f.name} must be {want}, got {value!r}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:  # written so that NaN fails too
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        for name in ("lr_mu", "lr_d", "lr_xi"):
            value = getattr(self, name)
            if not 0 <= value < float("inf"):
                raise ConfigError(f"{name} must be a finite factor >= 0 (0 freezes those "
                                  f"parameters), got {value}")
        if not self.classifier_lr > 0:
            raise ConfigError(f"classifier_lr must be > 0, got {self.classifier_lr}")
        if not self.sigma_min > 0:
            raise ConfigError(f"sigma_min must be > 0, got {self.sigma_min}")
        if self.sigma0 is not None and not self.sigma0 > 0:
            raise ConfigError(f"sigma0 must be > 0, got {self.sigma0}")
        if self.window < 1:
            raise ConfigError(f"window must be >= 1, got {self.window}")
        if not 0 < self.sigma_decay < 1:
            raise ConfigError(f"sigma_decay must lie in (0, 1), got {self.sigma_decay}")
        if self.delay < 0:
            raise ConfigError(f"delay must be >= 0, got {self.delay}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
