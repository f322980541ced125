r"""Gradient objectives for any family with a differentiable ``log_prob``: a loss and an
optimiser step per batch (SGD maximum likelihood, score matching, sliced score matching).

The losses are those of :mod:`deepmix.training.objectives.losses`; closed forms are used where
the model has them (:class:`~deepmix.models.MixtureDensity`), autograd otherwise.

On several processes the gradients are all-reduced as DDP does, in one flattened buffer per
step, but weighted by each rank's rows: :math:`g = \sum_r n_r g_r / \sum_r n_r` is the
gradient of the global batch's mean loss even when the last batch splits unevenly. (DDP itself
needs the loss computed through the wrapper's ``forward``; the objectives call ``log_prob``,
the closed-form scores and the circuits' own derivatives instead.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...errors import ConfigError
from .base import Objective, ObjectiveOptions, adam, register_objective
from .losses import nll, score_matching, sliced_score_matching

__all__ = ["GradientOptions", "SlicedOptions", "GradientObjective", "MaximumLikelihood",
           "ScoreMatching", "SlicedScoreMatching"]

_OPTIMIZERS = {"adam": adam, "sgd": torch.optim.SGD}


@dataclass
class GradientOptions(ObjectiveOptions):
    """Options of a gradient objective.

    Arguments:
        lr: learning rate.
        optimizer: ``"adam"`` or ``"sgd"``.
        clip: gradient-norm clipping (None: off).
        init: initialisation of the model from the training data before the first step,
            by the family's ``initialize`` (flat GMM: ``"kmeans"`` or ``"random"``); None
            uses the family's default where it has one.
        lr_decay_every: multiply the rate by ``lr_decay`` every this many epochs (None: off).
        lr_decay: the factor of that step schedule.
        skip_nonfinite: skip a step whose loss or gradient norm is not finite instead of
            stopping (as mixed-precision loss scalers do); skipped steps are counted in
            ``skipped`` and left out of the epoch's mean loss.
    """

    lr: float = 0.05
    optimizer: str = "adam"
    clip: float | None = None
    init: str | None = None
    lr_decay_every: int | None = None
    lr_decay: float = 0.5
    skip_nonfinite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.lr, bool) or not (isinstance(self.lr, (int, float)) and self.lr > 0
                                             and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ConfigError(f"Unknown optimizer '{self.optimizer}'; expected "
                              f"{' or '.join(_OPTIMIZERS)}")
        if self.clip is not None and not self.clip > 0:
            raise ConfigError(f"clip must be > 0, got {self.clip}")
        if self.lr_decay_every is not None and (isinstance(self.lr_decay_every, bool) or not
                                                isinstance(self.lr_decay_every, int) or
                                                self.lr_decay_every < 1):
            raise ConfigError(f"lr_decay_every must be an integer >= 1 or None, got "
                              f"{self.lr_decay_every!r}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr_decay must lie in (0, 1], got {self.lr_decay}")


@dataclass
class SlicedOptions(GradientOptions):
    """Sliced score matching adds its directions.

    Arguments:
        n_slices: random directions per point.
        projection: ``"gaussian"`` or ``"rademacher"``.
        variance_reduced: use :math:`\\tfrac12\\|s\\|^2` instead of :math:`\\tfrac12 (v^T s)^2`.
    """

    n_slices: int = 1
    projection: str = "gaussian"
    variance_reduced: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.n_slices, bool) or not isinstance(self.n_slices, int) \
                or self.n_slices < 1:
            raise ConfigError(f"n_slices must be an integer >= 1, got {self.n_slices!r}")
        if self.projection not in ("gaussian", "rademacher"):
            raise ConfigError(f"Unknown projection '{self.projection}'; expected gaussian or "
                              f"rademacher")


class GradientObjective(Objective):
    """A loss minimised by a torch optimiser; subclasses name the loss."""

    options_class: ClassVar[type] = GradientOptions

    def loss(self, model: Any, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def start(self, model: Any, data: torch.Tensor, generator: torch.Generator) -> None:
        init = self.options.init
        if hasattr(model, "initialize"):
            model.initialize(data, init, generator=generator) if init is not None else \
                model.initialize(data, generator=generator)
        elif init is not None:
            raise ConfigError(f"init '{init}' needs a family with initialize(); "
                              f"{type(model).__name__} has none")

    def bind(self, model: Any, info: Any = None) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(f"{type(model).__name__} has no trainable parameters")
        self.optimizer = _OPTIMIZERS[self.options.optimizer](self.params, lr=self.options.lr)
        o = self.options
        self.scheduler = (torch.optim.lr_scheduler.StepLR(self.optimizer, o.lr_decay_every,
                                                          gamma=o.lr_decay)
                          if o.lr_decay_every is not None else None)
        self.skipped = 0

    def step(self, model: Any, batch: torch.Tensor, *, generator: torch.Generator, step: int = 0,
             targets: torch.Tensor | None = None, rows: Any = None) -> torch.Tensor | None:
        if self.world.distributed:
            return self._distributed_step(batch, generator, model)
        loss = self.loss(model, batch, generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return self._apply(loss)

    def _distributed_step(self, batch: torch.Tensor, generator: torch.Generator,
                          model: Any) -> torch.Tensor | None:
        """Local gradient, then ONE all-reduce of ``[n_r g_r..., n_r loss_r, n_r]``."""
        n = batch.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        ref = self.params[0]
        if n:
            loss = self.loss(model, batch, generator)
            loss.backward()
        else:   # an empty shard of a short last batch still joins the all-reduce
            loss = torch.zeros((), dtype=ref.dtype, device=ref.device)
        total = self.reduce_row_weighted(self.params, loss, n)
        # The global batch's mean loss: the same on every rank, so every rank skips alike.
        out = self._apply(total)
        return None if out is None else loss.detach()

    def _apply(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Clip, skip a non-finite step, or step the optimiser; the loss to log."""
        norm = None
        if self.options.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.options.clip)
        if self.options.skip_nonfinite:
            # One host sync per step, the price of the check; off by default.
            if norm is None:
                norm = torch.nn.utils.clip_grad_norm_(self.params, float("inf"))
            if not (bool(torch.isfinite(loss)) and bool(torch.isfinite(norm))):
                self.skipped += 1
                return None
        self.optimizer.step()
        return loss.detach()

    def end_epoch(self, model: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "lr": [g["lr"] for g in self.optimizer.param_groups],
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        for group, lr in zip(self.optimizer.param_groups, state.get("lr", [])):
            group["lr"] = lr          # a schedule has moved it
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    # The optimiser's moments, flattened to named tensors (safetensors holds no nesting).
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                out[f"optimizer.{index}.{key}"] = t
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        sd = self.optimizer.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
        sd["state"] = state
        self.optimizer.load_state_dict(sd)


@register_objective
class MaximumLikelihood(GradientObjective):
    r"""SGD maximum likelihood: minimise :math:`-\frac1B\sum_b \log p(x_b)`."""

    name = "mle"

    def loss(self, model: Any, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return nll(model, batch)


@register_objective
class SGDMaximumLikelihood(MaximumLikelihood):
    """``sgd``: the name the thesis (and ``deepmix fit-gmm``) uses for :class:`MaximumLikelihood`."""

    name = "sgd"


@register_objective
class ScoreMatching(GradientObjective):
    r"""Exact score matching: :math:`\mathrm{tr}\,\nabla_x^2\log p + \tfrac12\|\nabla_x\log p\|^2`."""

    name = "sm"

    def loss(self, model: Any, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return score_matching(model, batch)


@register_objective
class SlicedScoreMatching(GradientObjective):
    r"""Sliced score matching: :math:`v^T\nabla_x^2\log p\,v + \tfrac12\|\nabla_x\log p\|^2`."""

    name = "ssm"
    options_class = SlicedOptions

    def loss(self, model: Any, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        o = self.options
        return sliced_score_matching(model, batch, n_slices=o.n_slices, projection=o.projection,
                                     variance_reduced=o.variance_reduced, generator=generator)
