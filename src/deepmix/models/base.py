r"""The model protocol: what every family of deepmix provides.

A family is an :class:`torch.nn.Module` subclass of :class:`Model` with

- ``family``: its registry name (``"dcgmm"``, ``"gmm"``, ``"circuit"``, ...);
- ``config_class``: a dataclass that rebuilds the model (``from_config(config)``), stored as the
  ``"model"`` section of a run folder's ``config.json`` (unknown keys are errors);
- :meth:`Model.log_prob`: the true log-density :math:`\log p(x)` in nats, one value per sample;
  a family without one raises :class:`~deepmix.errors.NoDensityError` naming what it offers instead
  (a per-layer likelihood, a lower bound);
- :meth:`Model.sample`: ``sample(n, *, generator=None, condition=None)``;
- all state in registered parameters or buffers, so ``state_dict()``, ``.to(device)`` and
  safetensors see everything a fitted model is.

:func:`deepmix.models.register_family` puts a class in the registry that ``deepmix.load``,
``deepmix train --model NAME``, ``evaluate`` and ``sample`` read.
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import InputError

__all__ = ["Model", "install_training"]

# Training lives above models (models <- training); it installs its entry points here when
# deepmix.training is imported, so every model has fit/save without models importing training.
_TRAINING: dict[str, Any] = {}


def install_training(*, fit: Any, save: Any) -> None:
    """Called by :mod:`deepmix.training` to provide :meth:`Model.fit` and :meth:`Model.save`."""
    _TRAINING.update(fit=fit, save=save)


def _training(name: str) -> Any:
    # ``import deepmix`` (which any ``deepmix.models`` import runs first) imports training.
    try:
        return _TRAINING[name]
    except KeyError:
        raise RuntimeError("deepmix.training is not imported; import deepmix first") from None


class Model(nn.Module):
    """Base class of every model family (see the module docstring for the contract)."""

    #: Registry name of the family.
    family: ClassVar[str] = ""
    #: The dataclass of :attr:`config`; ``from_config(config_class(...))`` rebuilds the model.
    config_class: ClassVar[type]
    #: The objective :meth:`fit` uses when none is named.
    default_objective: ClassVar[str] = "mle"

    config: Any

    @classmethod
    def from_config(cls, config: Any) -> "Model":
        """A freshly initialised model of ``config`` (an instance of :attr:`config_class`)."""
        raise NotImplementedError(f"{cls.__name__}.from_config")

    def log_prob(self, x: Any) -> torch.Tensor:
        r""":math:`\log p(x)` in nats, shape (N,)."""
        raise NotImplementedError(f"{type(self).__name__}.log_prob")

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               condition: Any = None) -> torch.Tensor:
        """``n`` samples; ``condition`` as the family documents it (None: unconditional)."""
        raise NotImplementedError(f"{type(self).__name__}.sample")

    def fit(self, data: Any, targets: Any = None, *, objective: Any = None,
            **options: Any) -> list[dict]:
        """Train in place on ``data`` with ``objective`` (default :attr:`default_objective`);
        ``options`` are the loop's (epochs, batch_size, seed, device, out_dir, resume, ...) and
        the objective's. Returns the metrics rows (see :func:`deepmix.training.fit`)."""
        return _training("fit")(self, data, targets, objective=objective, **options)

    def save(self, directory: Any) -> Any:
        """Write a run folder (``config.json`` + ``weights.safetensors``) that
        ``deepmix.load`` rebuilds; written atomically."""
        return _training("save")(self, directory)

    # ------------------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        """Device of the model's state (CPU for a model without tensors)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's state."""
        for t in list(self.parameters()) + list(self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    def score(self, x: Any) -> float:
        """Mean log-likelihood per sample in nats (scikit-learn's ``score``)."""
        with torch.no_grad():
            return float(self.log_prob(x).mean())

    @staticmethod
    def _completion_input(x: Any, mask: Any, check: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows checked by ``check`` where observed, bool mask on their device) for
        ``complete(x, mask)``: the mask must be bool and of x's shape (True = observed);
        missing entries may hold anything (NaN included), so only observed ones are checked."""
        def is_array(v: Any) -> bool:
            return isinstance(v, torch.Tensor) or hasattr(v, "__array__")

        if not (is_array(x) and is_array(mask)):
            raise InputError("complete needs x and mask as tensors or numpy arrays")
        xt = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
        mt = mask if torch.is_tensor(mask) else torch.as_tensor(np.asarray(mask))
        if mt.dtype != torch.bool or mt.shape != xt.shape:
            raise InputError(f"mask must be a bool array of x's shape {tuple(xt.shape)} (True = "
                             f"observed), got {mt.dtype} {tuple(mt.shape)}")
        xc = check(torch.where(mt, xt, torch.zeros((), dtype=xt.dtype)))
        return xc, mt.to(xc.device)

    @staticmethod
    def _check_n(n: Any) -> int:
        """``n`` as a positive int, or an :class:`InputError` naming the value."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or int(n) < 1:
            raise InputError(f"the number of samples must be a positive integer, got {n!r}")
        return int(n)
