r"""Gradient objectives for any family with a differentiable ``log_prob``: a loss and an
optimiser step per batch (SGD maximum likelihood, score matching, sliced score matching).

The losses are those of :mod:`deepmix.training.objectives.losses`; closed forms are used where
the model has them (:class:`~deepmix.models.MixtureDensity`), autograd otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...errors import ConfigError
from .base import Objective, ObjectiveOptions, register_objective
from .losses import nll, score_matching, sliced_score_matching

__all__ = ["GradientOptions", "SlicedOptions", "GradientObjective", "MaximumLikelihood",
           "ScoreMatching", "SlicedScoreMatching"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


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
    """

    lr: float = 0.05
    optimizer: str = "adam"
    clip: float | None = None
    init: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.lr, bool) or not (isinstance(self.lr, (int, float)) and self.lr > 0
                                             and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ConfigError(f"Unknown optimizer '{self.optimizer}'; expected "
                              f"{' or '.join(_OPTIMIZERS)}")
        if self.clip is not None and not self.clip > 0:
            raise ConfigError(f"clip must be > 0, got {self.clip}")


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

    def step(self, model: Any, batch: torch.Tensor, *, generator: torch.Generator, step: int = 0,
             targets: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.loss(model, batch, generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.options.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.options.clip)
        self.optimizer.step()
        return loss.detach()

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
