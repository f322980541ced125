r"""Hard EM over paths for the deep GMM (family ``"deep-gmm"``, objective ``"hard-em"``).

Objective :math:`J = \frac1N\sum_i s_{c_i}(x_i)`: the E step maximises over the paths
:math:`c_i` (:meth:`~deepmix.models.DeepGMM.search`, warm-started from the previous paths), the
M step over all parameters jointly with the paths fixed, by minibatch Adam.

How it maps onto the one loop [deepmix]: a loop **epoch is one pass of minibatch Adam** over the
data. An EM iteration is an E step over the whole training set (run at the first step of its
M step, on the rows ``prepare`` stored) followed by an M step of ``first_m_epochs`` epochs (the
first iteration) or ``m_epochs`` epochs (later ones); so ``epochs`` of the loop counts Adam
passes and the number of EM iterations follows from it. Schedule (spec section 4, deepmix
defaults): Adam with default betas, LR ``lr`` times ``em_lr_decay`` per EM iteration, times
``final_lr_factor`` for the last ``min(final_updates, 40%)`` updates of every M step; Adam's
moments reset at each M step. After every E step a transformation (a bank block, for unshared
layers) used by fewer than ``min_usage`` samples becomes a perturbed copy of its layer's most
used one. With the factorised prior (``prior="factorised"``) the M step also sets the weights
in closed form, right after the E step: :math:`\pi_{l,v}[j] = (n_{l,v,j} + \alpha) / (N +
n_l\alpha)`, the smoothed usage counts of the new paths (a re-seeded value and its source
share the source's count, so the copy can win paths).

The loss logged per batch is :math:`-s_c(x)` under the current paths, nats per image; each
epoch's row adds the last E step's ``e_step_lower_bound`` and ``reseeded``
(:meth:`HardEM.epoch_metrics`).

Several processes: each rank searches its contiguous shard of the rows, from its rows of the
random restarts drawn for all rows from a generator of (seed, EM iteration), and ONE reduce of a
zero-filled path table assembles the paths on every rank (equal to the one-process paths); the
re-seeding draws from the same generator, so alike everywhere; the M step (and the gates) use
the row-weighted gradient all-reduce (:meth:`Objective.reduce_row_weighted`). The factorised
prior's counts are taken from the assembled paths, so they need no reduce of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import ConfigError
from ...utils.distributed import shard_bounds
from .base import Objective, ObjectiveOptions, register_objective

__all__ = ["HardEMOptions", "HardEM"]

# Seed mixer of the E steps' generators (the run's seed, the EM iteration).
_E_SEED_MIX = 1_000_039


@dataclass
class HardEMOptions(ObjectiveOptions):
    """Options of hard EM.

    Arguments:
        lr: Adam's base learning rate (one rate for the whole network).
        em_lr_decay: the base rate's factor per EM iteration.
        final_lr_factor: the rate's factor for the last updates of every M step.
        final_updates: that many last updates (at most 40% of the M step's updates).
        first_m_epochs: loop epochs (Adam passes) of the first M step.
        m_epochs: loop epochs of every later M step.
        min_usage: re-seed transformations used by fewer samples after an E step (None:
            max(2 Cb, 0.001 N); 0: never).
        search: the E step's path search (None: the model's ``search``).
        ridge: added to the covariances the initial whitening factorises.
        gating_epochs: the run's last this many epochs train the gating networks (a model with
            ``gating``) by cross-entropy on the last E step's paths, by Adam at ``gating_lr``;
            the transformations stay fixed then (paper section 3).
        gating_lr: Adam's rate for the gates.
        prior_smoothing: :math:`\\alpha > 0`, added to every usage count of the factorised
            prior's M step (a model with ``prior="factorised"``; ignored otherwise).
    """

    lr: float = 1e-3
    em_lr_decay: float = 0.9
    final_lr_factor: float = 0.1
    final_updates: int = 4000
    first_m_epochs: int = 1
    m_epochs: int = 1
    min_usage: float | None = None
    search: str | None = None
    ridge: float = 1e-6
    gating_epochs: int = 0
    gating_lr: float = 1e-3
    prior_smoothing: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lr", "em_lr_decay", "final_lr_factor", "gating_lr", "prior_smoothing"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and v > 0
                                           and math.isfinite(v)):
                raise ConfigError(f"{name} must be a positive number, got {v!r}")
        for name in ("final_updates", "first_m_epochs", "m_epochs", "gating_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (
                    0 if name in ("final_updates", "gating_epochs") else 1):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.min_usage is not None and not self.min_usage >= 0:
            raise ConfigError(f"min_usage must be >= 0 or None, got {self.min_usage}")
        if self.search not in (None, "auto", "exact", "coordinate"):
            raise ConfigError(f"Unknown path search '{self.search}'; expected exact, "
                              f"coordinate or auto")
        if not self.ridge >= 0:
            raise ConfigError(f"ridge must be >= 0, got {self.ridge}")


@register_objective
class HardEM(Objective):
    """Hard EM over paths with minibatch-Adam M steps (see the module docstring)."""

    name = "hard-em"
    families = ("deep-gmm",)
    options_class = HardEMOptions
    # Checkpoints fall on epoch ends; the paths and Adam's moments are in state_tensors.
    resumable_mid_epoch = False

    # ------------------------------------------------------------------------ schedule
    def _m_step_of(self, epoch: int) -> tuple[int, int, int]:
        """(EM iteration, its first epoch, its number of epochs) of loop epoch ``epoch``."""
        o = self.options
        if epoch < o.first_m_epochs:
            return 0, 0, o.first_m_epochs
        k = (epoch - o.first_m_epochs) // o.m_epochs
        return k + 1, o.first_m_epochs + k * o.m_epochs, o.m_epochs

    def learning_rate(self, step: int) -> float:
        """The rate of global step ``step`` under the schedule."""
        o = self.options
        epoch, b = divmod(step, self.info.steps_per_epoch)
        k, first, length = self._m_step_of(epoch)
        total = length * self.info.steps_per_epoch
        u = (epoch - first) * self.info.steps_per_epoch + b
        final = min(o.final_updates, int(0.4 * total))
        lr = o.lr * o.em_lr_decay ** k
        return lr * o.final_lr_factor if u >= total - final else lr

    # ------------------------------------------------------------------------ the loop's
    def prepare(self, model: Any, data: torch.Tensor, info: Any = None) -> None:
        self._data = data

    def start(self, model: Any, data: torch.Tensor, generator: torch.Generator) -> None:
        model.initialize(data, generator=generator, ridge=self.options.ridge)

    def bind(self, model: Any, info: Any) -> None:
        self.info = info
        if self.options.gating_epochs and not model.config.gating:
            raise ConfigError("gating_epochs needs a model with gating=True")
        self.params = [p for p in model.transform_parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=self.options.lr)
        gates = model.gate_parameters()
        self.gate_optimizer = torch.optim.Adam(gates, lr=self.options.gating_lr) \
            if gates else None
        self.paths: torch.Tensor | None = None
        self.e_scores: list[float] = []
        self.reseeded: list[int] = []

    def e_generator(self, k: int) -> torch.Generator:
        """The randomness of EM iteration k's E step (random restarts, re-seeding noise): a
        CPU generator seeded by the run's seed and k, the same on every rank and device."""
        return torch.Generator().manual_seed((self.info.seed * _E_SEED_MIX + k) % 2 ** 63)

    def e_step(self, model: Any, k: int) -> None:
        """EM iteration k's path search over the whole training set (warm start from the
        previous paths), the min_usage re-seeding, and fresh Adam moments.

        On several processes each rank searches its contiguous shard of the rows
        (``shard_bounds``) from its rows of the random restarts drawn for all rows, so the
        paths equal the one-process paths; ONE reduce of a zero-filled (N, V) table (each
        rank's rows filled) and the score sum assembles them on every rank."""
        generator = self.e_generator(k)
        N = self._data.shape[0]
        randoms = model.random_paths(N, generator) \
            if model.search_method(self.options.search) == "coordinate" else None
        lo, hi = shard_bounds(N, self.world.rank, self.world.size)
        if hi > lo:
            paths, scores = model.search(
                self._data[lo:hi], None if self.paths is None else self.paths[lo:hi],
                method=self.options.search, generator=generator,
                random_start=None if randoms is None else randoms[lo:hi])
        else:   # fewer rows than ranks
            paths = torch.zeros(0, model.n_vars, dtype=torch.long, device=self._data.device)
            scores = self._data.new_zeros(0)
        score = scores.to(torch.float64).sum().reshape(1)
        if self.world.distributed:
            # Path values are small integers: exact in the data's float dtype (the score sum
            # travels in it too, so the table costs N x V x 4 bytes for float32 models).
            table = torch.zeros(N, model.n_vars, dtype=self._data.dtype,
                                device=self._data.device)
            table[lo:hi] = paths.to(table)
            score = score.to(table.dtype)
            self.reduce([table, score])
            paths = table.round().long()
        self.paths = paths
        self.e_scores.append(float(score[0]) / N)
        copies: list[tuple[int, int, list[int]]] = []
        self.reseeded.append(self._reseed(model, generator, copies))
        if getattr(model, "prior", None) is not None:
            self._set_prior(model, copies)
        self.optimizer = torch.optim.Adam(self.params, lr=self.options.lr)

    @torch.no_grad()
    def _set_prior(self, model: Any, copies: list[tuple[int, int, list[int]]]) -> None:
        """The factorised prior's closed-form M step on the paths (re-seeded copies share
        their source's count)."""
        counts = model.path_counts(self.paths)
        for i, best, values in copies:
            cols = [best, *values]
            counts[i][:, cols] = counts[i][:, best:best + 1] / len(cols)
        model.set_prior_from_counts(counts, self.options.prior_smoothing)

    @torch.no_grad()
    def _reseed(self, model: Any, generator: torch.Generator,
                copies: list[tuple[int, int, list[int]]] | None = None) -> int:
        """Re-seed the rarely used values; appends (layer, source, values) to ``copies``."""
        N = self.paths.shape[0]
        threshold = self.options.min_usage
        if threshold is None:
            threshold = max(2 * model.Cb, 0.001 * N)
        count = 0
        for i, (layer, cols) in enumerate(zip(model.layers, model.var_slices)):
            n = layer.n_values
            if n == 1 or threshold <= 0:
                continue
            usage = torch.bincount(self.paths[:, cols].reshape(-1), minlength=n)
            best = int(usage.argmax())
            rare = (usage < threshold).nonzero().flatten().tolist()
            if rare and copies is not None:
                copies.append((i, best, rare))
            for v in rare:
                for p in layer.parameters():
                    src = p[best]
                    noise = torch.randn(src.shape, generator=generator, dtype=src.dtype,
                                        device=generator.device)
                    p[v] = src + 0.01 * (src.abs().mean() + 1e-3) * noise.to(src.device)
                count += 1
        return count

    def step(self, model: Any, batch: torch.Tensor, *, generator: torch.Generator, step: int,
             targets: torch.Tensor | None = None, rows: Any = None) -> torch.Tensor:
        epoch, b = divmod(step, self.info.steps_per_epoch)
        if epoch >= self.info.epochs - self.options.gating_epochs and self.paths is not None:
            return self._gate_step(model, batch, self.paths[rows])
        k, first, _ = self._m_step_of(epoch)
        if b == 0 and (self.paths is None or first == epoch):
            self.e_step(model, k)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        self.optimizer.zero_grad(set_to_none=True)
        n = batch.shape[0]
        if n:
            # The loop's rows were checked once (check); skip the per-batch finiteness sync.
            loss = -model.score_folded(model.fold(batch), self.paths[rows]).mean()
            loss.backward()
        else:   # an empty shard of a short last batch still joins the all-reduce
            loss = batch.new_zeros(())
        if self.world.distributed:
            self.reduce_row_weighted(self.params, loss, n)
        self.optimizer.step()
        return loss.detach()

    def _gate_step(self, model: Any, batch: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the gates on the paths: :math:`-\\sum_l \\log g_l(h_l)[c_l]`
        (on several processes the row-weighted gradient all-reduce, as the M step)."""
        gates = list(self.gate_optimizer.param_groups[0]["params"])
        self.gate_optimizer.zero_grad(set_to_none=True)
        n = batch.shape[0]
        if not n:
            loss = batch.new_zeros(())
            self.reduce_row_weighted(gates, loss, n)
            self.gate_optimizer.step()
            return loss
        with torch.no_grad():
            h = model.fold(batch)
            inputs = []
            for layer, cl in zip(model.layers, model.split(c)):
                h = layer(h, cl)
                inputs.append(h)
        loss = batch.new_zeros(())
        for i, (h, cl) in enumerate(zip(inputs, model.split(c))):
            term = model._gate_term(i, h, cl)
            if torch.is_tensor(term):
                loss = loss - term.mean()
        loss.backward()
        if self.world.distributed:
            self.reduce_row_weighted(gates, loss, n)
        self.gate_optimizer.step()
        return loss.detach()

    def epoch_metrics(self) -> dict[str, float]:
        """The last E step's mean lower bound (nats per image) and the transformations it
        re-seeded (global: reduced and drawn alike on every rank)."""
        if not self.e_scores:
            return {}
        return {"e_step_lower_bound": self.e_scores[-1], "reseeded": self.reseeded[-1]}

    # ------------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"e_scores": self.e_scores, "reseeded": self.reseeded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.e_scores = [float(v) for v in state.get("e_scores", [])]
        self.reseeded = [int(v) for v in state.get("reseeded", [])]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {} if self.paths is None else {"paths": self.paths}
        for prefix, opt in (("optimizer", self.optimizer), ("gate_optimizer",
                                                           self.gate_optimizer)):
            if opt is None:
                continue
            for index, state in opt.state_dict()["state"].items():
                for key, value in state.items():
                    out[f"{prefix}.{index}.{key}"] = value if torch.is_tensor(value) else \
                        torch.tensor(value)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        if "paths" in tensors:
            self.paths = tensors.pop("paths").long()
        for prefix, opt in (("optimizer", self.optimizer), ("gate_optimizer",
                                                           self.gate_optimizer)):
            if opt is None:
                continue
            sd = opt.state_dict()
            state: dict[int, dict[str, torch.Tensor]] = {}
            for name, value in tensors.items():
                head, index, key = name.split(".", 2)
                if head == prefix:
                    state.setdefault(int(index), {})[key] = value
            sd["state"] = state
            opt.load_state_dict(sd)
