r"""DRMM training as an objective of the one loop (spec drmm §4, the v1 paper's hard EM).

Every step trains all layers at once on detached inputs. Per layer, with data terms d, latent
terms a and :math:`m = \log w + d + a`:

- forward: :math:`h_i = \arg\max_k m_{ik}` feeds the residual and latent to the next layer;
- E-step labels :math:`e_i = \arg\max_k (d_{ik} + \rho_E(t)\, a_{ik})` (no log w);
- loss :math:`-\frac1N\sum_i m_{i,e_i} - \alpha\, \frac1K \sum_k \max_i d_{ik}` (the orphan
  regulariser, :math:`\alpha = 0.01`), summed over layers, minimised by one Adam;
- schedules with :math:`t` = step / total steps: :math:`\rho_E(t) = \rho_{final}(0.5 + 0.5
  \tanh(20(t - 0.5)))`, :math:`\mathrm{lr}(t) = \mathrm{lr}_0 \min(1, (2-2t)^2)`.

Initialisation: the model's data-dependent :meth:`~deepmix.models.DRMM.initialize` on an init
batch of ``init_batch`` rows drawn from the training data.

Models of several stages (the image hierarchy, ``model.stages()``) train them one after the
other in equal shares of the run's steps (the reference's split), each stage with its own Adam,
its own schedules (t runs over the stage) and a fresh data-dependent initialisation of its DRMM
on the first batch of the stage (the paper's image init batch is the batch, 64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import ConfigError
from .base import LoopInfo, Objective, ObjectiveOptions, register_objective

__all__ = ["DRMMOptions", "DRMMObjective", "rho_schedule", "lr_factor", "CURRICULA",
           "Curriculum", "CurriculumV2"]


def rho_schedule(t: float, rho_final: float = 1.0) -> float:
    r""":math:`\rho_E(t) = \rho_{final}\,(0.5 + 0.5\tanh(20(t - 0.5)))`."""
    return rho_final * (0.5 + 0.5 * math.tanh(20.0 * (t - 0.5)))


def lr_factor(t: float) -> float:
    r""":math:`\min(1, (2 - 2t)^2)`: constant, then a quadratic decay to 0 over the second
    half."""
    return min(1.0, (2.0 - 2.0 * t) ** 2)


class Curriculum:
    """``"v1"`` (the paper, deepmix default): the smooth rho_E schedule, gradient stops
    throughout, the regulariser at full weight, one Adam per stage."""

    def rho(self, t: float, final: float) -> float:
        return rho_schedule(t, final)

    def end_to_end(self, t: float) -> bool:
        """Whether gradients flow through the layers' inputs (no gradient stops)."""
        return False

    def regulariser_weight(self, t: float) -> float:
        return 1.0

    def restart_step(self, span: int) -> int | None:
        """The stage-local step at which Adam restarts (None: never)."""
        return None


class CurriculumV2(Curriculum):
    """``"v2"`` (reference code, Dec 2020): rho_E steps 0 -> rho_final at t = 0.5 with Adam
    restarted there, gradient stops removed for t > 0.75, regulariser weighted by the lr
    factor (spec §4)."""

    def rho(self, t: float, final: float) -> float:
        return final if t >= 0.5 else 0.0

    def end_to_end(self, t: float) -> bool:
        return t > 0.75

    def regulariser_weight(self, t: float) -> float:
        return lr_factor(t)

    def restart_step(self, span: int) -> int | None:
        return math.ceil(0.5 * span)


#: ``curriculum`` option -> its schedules (v3, soft maximum likelihood, is not built).
CURRICULA: dict[str, Curriculum] = {"v1": Curriculum(), "v2": CurriculumV2()}


@dataclass
class DRMMOptions(ObjectiveOptions):
    """Options of DRMM hard-EM training.

    Arguments:
        lr: lr0 of Adam (paper: 0.005 for 2-D data and Fig. 7, 0.002 otherwise).
        rho_final: end value of the E-step's latent weight; None: the model's default (1.0;
            0.5 for image models).
        alpha: weight of the orphan regulariser (0.01).
        init_batch: rows of the initialisation batch (256 2-D, 1024 IK, 2000 Fig. 7).
        init: ``"data"`` (spec §4) or None to train the model as it is.
        curriculum: ``"v1"`` (the paper) or ``"v2"`` (the reference's Dec 2020 schedules).
    """

    lr: float = 0.005
    rho_final: float | None = None
    alpha: float = 0.01
    init_batch: int = 256
    init: str | None = "data"
    curriculum: str = "v1"

    def __post_init__(self) -> None:
        if self.curriculum not in CURRICULA:
            raise ConfigError(f"Unknown curriculum '{self.curriculum}'; expected "
                              f"{' or '.join(CURRICULA)} (v3 is not built)")
        if isinstance(self.lr, bool) or not (isinstance(self.lr, (int, float)) and self.lr > 0
                                             and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("rho_final", "alpha"):
            v = getattr(self, name)
            if v is None and name == "rho_final":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if isinstance(self.init_batch, bool) or not isinstance(self.init_batch, int) or \
                self.init_batch < 1:
            raise ConfigError(f"init_batch must be an integer >= 1, got {self.init_batch!r}")
        if self.init not in (None, "data"):
            raise ConfigError(f"Unknown DRMM init '{self.init}'; expected data or None")


@register_objective
class DRMMObjective(Objective):
    """Hard EM of all DRMM layers per step (see the module docstring)."""

    name = "drmm-em"
    families = ("drmm",)
    options_class = DRMMOptions

    def start(self, model: Any, data: torch.Tensor, generator: torch.Generator) -> None:
        if self.options.init is None:
            return
        n = min(self.options.init_batch, data.shape[0])
        rows = torch.randperm(data.shape[0], generator=generator,
                              device=generator.device)[:n].to(data.device)
        model.initialize(data[rows], generator=generator)

    def bind(self, model: Any, info: LoopInfo) -> None:
        self.stages = model.stages()
        self.total = max(1, info.total_steps)
        self.stage_steps = max(1, math.ceil(self.total / len(self.stages)))
        self.optimizers = [torch.optim.Adam(stage.parameters(), lr=self.options.lr,
                                            betas=(0.9, 0.999), eps=1e-8)
                           for stage in self.stages]
        rho = self.options.rho_final
        self.rho_final = getattr(model, "default_rho_final", 1.0) if rho is None else rho

    def layer_losses(self, model: Any, batch: torch.Tensor, rho_e: float,
                     mask: torch.Tensor | None = None, *, alpha: float | None = None,
                     end_to_end: bool = False) -> torch.Tensor:
        """The summed per-layer losses of one batch of a (flat) DRMM (differentiable);
        ``end_to_end`` lets the gradients through the layers' inputs."""
        alpha = self.options.alpha if alpha is None else alpha
        streams = model.split(batch, mask)
        total = batch.new_zeros(())
        for layer in model.layers:
            inputs = streams if end_to_end else [type(s)(s.value.detach(), s.mask.detach())
                                                 for s in streams]
            data, latent = layer.terms(inputs)
            m = layer.row_log_weights(data.shape[0]) + data + latent
            with torch.no_grad():
                e = (data + rho_e * latent).argmax(1)
                h = m.argmax(1)
            total = total - m.gather(1, e[:, None]).mean()
            if alpha:
                total = total - alpha * data.max(0).values.mean()
            with torch.set_grad_enabled(end_to_end and torch.is_grad_enabled()):
                streams = layer.advance(inputs, h)
        return total

    def step(self, model: Any, batch: torch.Tensor, *, generator: torch.Generator, step: int,
             targets: torch.Tensor | None = None, rows: Any = None) -> torch.Tensor | None:
        j = min(len(self.stages) - 1, step // self.stage_steps)
        first = j * self.stage_steps
        span = (self.total - first) if j == len(self.stages) - 1 else self.stage_steps
        t = (step - first) / max(1, span)
        stage, optimizer = self.stages[j], self.optimizers[j]
        values, mask = model.stage_input(j, batch)
        if j > 0 and step == first and self.options.init is not None:
            stage.initialize(values, generator=generator)
        plan = CURRICULA[self.options.curriculum]
        if plan.restart_step(span) == step - first:
            optimizer.state.clear()            # Adam restarted (v2, at t = 0.5)
        for group in optimizer.param_groups:
            group["lr"] = self.options.lr * lr_factor(t)
        loss = self.layer_losses(stage, values, plan.rho(t, self.rho_final), mask,
                                 alpha=self.options.alpha * plan.regulariser_weight(t),
                                 end_to_end=plan.end_to_end(t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    # Adam's moments per stage, flattened to named tensors (as the gradient objectives do).
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for j, optimizer in enumerate(self.optimizers):
            for index, state in optimizer.state_dict()["state"].items():
                for key, value in state.items():
                    out[f"stage{j}.{index}.{key}"] = value if torch.is_tensor(value) else \
                        torch.tensor(value)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        states: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
        for name, value in tensors.items():
            stage, index, key = name.split(".", 2)
            states.setdefault(int(stage[len("stage"):]), {}).setdefault(int(index), {})[key] = \
                value
        for j, optimizer in enumerate(self.optimizers):
            sd = optimizer.state_dict()
            sd["state"] = states.get(j, {})
            optimizer.load_state_dict(sd)


@register_objective
class DRMMEM(DRMMObjective):
    """``em``: the name the other families' EM uses, for :class:`DRMMObjective`."""

    name = "em"
