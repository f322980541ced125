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
on the first batch of the stage (the paper's image init batch is the batch, 64), from a
generator seeded by the run's seed and the stage.

Several processes: a step equals the one-process step at the global batch. The fit term is a
mean over rows, but the orphan regulariser's :math:`\max_i d_{ik}` is not: its gradient reaches
the one row of the global maximum. So the ranks first exchange their per-layer maxima (one small
reduce), then each backpropagates its share of the global loss and the gradients are summed in
one reduce (:meth:`Objective.reduce_gradients`); with ``alpha = 0`` the row-weighted gradient
all-reduce alone (:meth:`Objective.reduce_row_weighted`). A later stage initialises on its first
global batch (the whole data and the epoch's order are on every rank), alike on every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import ConfigError
from . import drmm_kernel
from .base import LoopInfo, Objective, ObjectiveOptions, adam, register_objective

# Seed mixer of a later stage's initialisation generator (the run's seed, the stage).
_STAGE_SEED_MIX = 1_000_037

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

    def prepare(self, model: Any, data: torch.Tensor, info: Any = None) -> None:
        self._data = data          # a later stage initialises on its first global batch
        self._order: torch.Tensor | None = None

    def epoch_order(self, info: LoopInfo, epoch: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor | None:
        self._order = super().epoch_order(info, epoch, generator, device)
        return self._order

    def start(self, model: Any, data: torch.Tensor, generator: torch.Generator) -> None:
        if self.options.init is None:
            return
        n = min(self.options.init_batch, data.shape[0])
        rows = torch.randperm(data.shape[0], generator=generator,
                              device=generator.device)[:n].to(data.device)
        model.initialize(data[rows], generator=generator)

    def bind(self, model: Any, info: LoopInfo) -> None:
        self.info = info
        self.stages = model.stages()
        self.total = max(1, info.total_steps)
        self.stage_steps = max(1, math.ceil(self.total / len(self.stages)))
        self.optimizers = [adam(stage.parameters(), lr=self.options.lr, betas=(0.9, 0.999),
                                 eps=1e-8)
                           for stage in self.stages]
        self._now: tuple[float, float] | None = None     # (rho_E, lr) of the last step
        rho = self.options.rho_final
        self.rho_final = getattr(model, "default_rho_final", 1.0) if rho is None else rho

    def layer_losses(self, model: Any, batch: torch.Tensor, rho_e: float,
                     mask: torch.Tensor | None = None, *, alpha: float | None = None,
                     end_to_end: bool = False) -> torch.Tensor:
        """The summed per-layer losses of one batch of a (flat) DRMM (differentiable);
        ``end_to_end`` lets the gradients through the layers' inputs."""
        alpha = self.options.alpha if alpha is None else alpha
        total = batch.new_zeros(())
        for fit, data in self._layer_parts(model, batch, rho_e, mask, end_to_end):
            total = total - fit.mean()
            if alpha:
                total = total - alpha * data.max(0).values.mean()
        return total

    def _layer_parts(self, model: Any, batch: torch.Tensor, rho_e: float,
                     mask: torch.Tensor | None, end_to_end: bool
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer: :math:`m_{i,e_i}` (N,) and the data terms d (N, K), differentiable."""
        streams = model.split(batch, mask)
        parts = []
        for layer in model.layers:
            inputs = streams if end_to_end else [type(s)(s.value.detach(), s.mask.detach())
                                                 for s in streams]
            data, latent = layer.terms(inputs)
            m = layer.row_log_weights(data.shape[0]) + data + latent
            with torch.no_grad():
                e = (data + rho_e * latent).argmax(1)
                h = m.argmax(1)
            parts.append((m.gather(1, e[:, None])[:, 0], data))
            with torch.set_grad_enabled(end_to_end and torch.is_grad_enabled()):
                streams = layer.advance(inputs, h)
        return parts

    def _global_share(self, stage: Any, values: torch.Tensor, rho_e: float,
                      mask: torch.Tensor | None, alpha: float, end_to_end: bool
                      ) -> torch.Tensor:
        r"""This rank's share :math:`L_r` of the global batch's loss, :math:`\sum_r L_r = L`.

        The fit term is a mean over rows (each rank sums its rows, divided by the global row
        count). The orphan regulariser :math:`\max_i d_{ik}` is not: its gradient reaches the
        one row holding the global maximum. So the ranks first exchange their per-layer
        maxima and row counts (one small :meth:`reduce` of a zero-filled (ranks, sum K + 1)
        table), and the rank holding component k's global maximum (the lowest such rank, as
        ``max`` takes the first row) contributes that term.
        """
        world = self.world
        n = values.shape[0]
        parts = self._layer_parts(stage, values, rho_e, mask, end_to_end) if n else []
        Ks = [layer.n_components for layer in stage.layers]
        table = values.new_zeros(world.size, sum(Ks) + 1)
        if n:
            table[world.rank, :-1] = torch.cat([d.detach().max(0).values for _, d in parts])
        else:       # an empty shard of a short last batch holds no maximum
            table[world.rank, :-1] = -math.inf
        table[world.rank, -1] = float(n)
        self.reduce([table])
        share = values.new_zeros(())
        if not n:
            return share
        rows = table[:, -1].sum()
        winner = table[:, :-1].argmax(0) == world.rank          # (sum K,)
        for (fit, data), mine in zip(parts, winner.split(Ks)):
            share = share - fit.sum() / rows
            if alpha:
                top = torch.where(mine, data.max(0).values, data.new_zeros(()))
                share = share - alpha * top.sum() / data.shape[1]
        return share

    def step(self, model: Any, batch: torch.Tensor, *, generator: torch.Generator, step: int,
             targets: torch.Tensor | None = None, rows: Any = None) -> torch.Tensor | None:
        j = min(len(self.stages) - 1, step // self.stage_steps)
        first = j * self.stage_steps
        span = (self.total - first) if j == len(self.stages) - 1 else self.stage_steps
        t = (step - first) / max(1, span)
        stage, optimizer = self.stages[j], self.optimizers[j]
        if batch.shape[0]:
            values, mask = model.stage_input(j, batch)
        else:   # an empty shard of a short last batch: nothing to encode; it joins the reduces
            values, mask = batch, None
        if j > 0 and step == first and self.options.init is not None:
            self._initialize_stage(model, j, step)
        plan = CURRICULA[self.options.curriculum]
        if plan.restart_step(span) == step - first:
            optimizer.state.clear()            # Adam restarted (v2, at t = 0.5)
        for group in optimizer.param_groups:
            group["lr"] = self.options.lr * lr_factor(t)
        self._now = (plan.rho(t, self.rho_final), self.options.lr * lr_factor(t))
        alpha = self.options.alpha * plan.regulariser_weight(t)
        optimizer.zero_grad(set_to_none=True)
        # (the optimiser's own list: no module walk per step)
        params = optimizer.param_groups[0]["params"]
        if self.world.distributed and not alpha:
            # A plain mean over rows: the row-weighted gradient all-reduce (ONE reduce).
            n = values.shape[0]
            local = self.layer_losses(stage, values, self._now[0], mask, alpha=0.0,
                                      end_to_end=plan.end_to_end(t)) if n else \
                values.new_zeros(())
            if n:
                local.backward()
            loss = self.reduce_row_weighted(params, local, n)
        elif self.world.distributed:
            share = self._global_share(stage, values, self._now[0], mask, alpha,
                                       plan.end_to_end(t))
            if share.requires_grad:
                share.backward()
            loss = share.detach().clone()
            # The gradients of the shares sum to the global batch's gradient.
            self.reduce_gradients(params, [loss])
        else:
            fast = self._kernel_step(stage, values, mask, alpha, plan.end_to_end(t))
            if fast is None:
                loss = self.layer_losses(stage, values, self._now[0], mask, alpha=alpha,
                                         end_to_end=plan.end_to_end(t))
                loss.backward()
            else:
                loss = fast
        optimizer.step()
        return loss.detach()

    def _kernel_step(self, stage: Any, values: torch.Tensor, mask: torch.Tensor | None,
                     alpha: float, end_to_end: bool) -> torch.Tensor | None:
        """The loss, with the gradients set, by :mod:`.drmm_kernel` where it takes the step
        (a small flat DRMM, no mask, gradient stops); None: the autograd path's job."""
        if end_to_end or (mask is not None and not bool((mask == 1).all())):
            return None
        params = drmm_kernel.eligible(stage, values)
        out = None if params is None else \
            drmm_kernel.loss_and_gradients(stage, values, params, self._now[0], alpha)
        if out is None:
            return None
        loss, grads = out
        for p, g in zip(params, grads):
            p.grad = g
        return loss

    def _initialize_stage(self, model: Any, j: int, step: int) -> None:
        """Stage j's data-dependent initialisation on the stage's first global batch (every
        rank alike: the whole data and the epoch's order are on every rank) from a generator
        seeded by the run's seed and j."""
        b = step % self.info.steps_per_epoch
        lo = b * self.info.batch_size
        hi = lo + self.info.global_rows(step)
        rows = slice(lo, hi) if self._order is None else self._order[lo:hi]
        values, _ = model.stage_input(j, self._data[rows])
        gen = torch.Generator().manual_seed((self.info.seed * _STAGE_SEED_MIX + j) % 2 ** 63)
        self.stages[j].initialize(values, generator=gen)

    def epoch_metrics(self) -> dict[str, float]:
        """The schedules at the epoch's last step: rho_E and Adam's rate."""
        if self._now is None:
            return {}
        return {"rho_e": self._now[0], "lr": self._now[1]}

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
