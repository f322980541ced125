r"""EM objectives: an E-step that accumulates sufficient statistics over the batches of an epoch,
and a closed-form M-step at its end (batch EM: one EM iteration per epoch).

- flat GMM (:class:`GaussianMixtureEM`): statistics :math:`\sum_n r_{nk}`, :math:`\sum_n r_{nk}
  x_n`, :math:`\sum_n r_{nk} x_n x_n^T` (or its diagonal / trace), the M-step of scikit-learn's
  ``GaussianMixture`` (same ``reg_covar``, same initialisations);
- circuits (:class:`CircuitEM`): expected counts by differentiating the circuit (Peharz et al.),
  the EinsumNetwork M-step.

The loss logged per batch is the mean negative log-likelihood under the parameters the E-step
saw, so an epoch's loss is EM's training NLL before that epoch's update.

On several processes each rank accumulates the statistics of its shard and
:meth:`~deepmix.training.objectives.Objective.reduce` sums them over the ranks (one flattened
all-reduce) right before every M-step, so the update is the one-process update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...errors import ConfigError
from .. import gmm_em
from ..gmm_em import COMPUTE_DTYPES, INIT_METHODS, MixtureEM, resolve_compute_dtype
from .base import Objective, ObjectiveOptions, register_objective

__all__ = ["GaussianMixtureEMOptions", "GaussianMixtureEM", "StepwiseEMOptions",
           "GaussianMixtureStepwiseEM", "CircuitEMOptions", "CircuitEM"]


@dataclass
class GaussianMixtureEMOptions(ObjectiveOptions):
    """Options of flat-GMM EM.

    Arguments:
        init: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"sklearn-kmeans"`` (as
            :class:`~deepmix.training.GaussianMixture`).
        reg_covar: added to the diagonal of every covariance.
        compute_dtype: dtype of the E-step and statistics products of diag / spherical
            mixtures: ``"auto"`` (float32 on large data where its rounding of the
            per-sample log-likelihood, checked at the start, stays below 1e-3 nats; else the
            model's dtype), ``"float32"`` or ``"float64"``; sums over rows stay in the model's
            dtype (:mod:`deepmix.training.gmm_em`).
    """

    init: str = "kmeans"
    reg_covar: float = 1e-6
    compute_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.init not in INIT_METHODS:
            raise ConfigError(f"Unknown init '{self.init}'; expected one of "
                              f"{', '.join(INIT_METHODS)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"Unknown compute_dtype '{self.compute_dtype}'; expected one of "
                              f"{', '.join(COMPUTE_DTYPES)}")
        if not self.reg_covar >= 0:
            raise ConfigError(f"reg_covar must be >= 0, got {self.reg_covar}")


@register_objective
class GaussianMixtureEM(Objective):
    """Batch EM for the flat GMM family (``gmm``): one EM iteration per epoch."""

    name = "em"
    families = ("gmm",)
    options_class = GaussianMixtureEMOptions
    # Mid-epoch statistics are this rank's partial sums until the epoch's end.
    local_mid_epoch_state: ClassVar[bool] = True
    # The fit does not depend on the batch (statistics are summed over the epoch) and the
    # engine works in row chunks of its own: one step per EM iteration avoids ~600 Python
    # steps per MNIST iteration at batch 100 (and, distributed, lets each rank stream its shard).
    default_batch_size: ClassVar[int | None] = None

    def _engine(self, model: Any) -> MixtureEM:
        return MixtureEM(model.n_components, model.covariance_type,
                         reg_covar=self.options.reg_covar, init_params=self.options.init,
                         dtype=model.means.dtype, device=model.means.device)

    def _read(self, model: Any) -> None:
        # The next E-step sees exactly the parameters a resumed run would load.
        with torch.no_grad():
            e = self.engine
            e.weights_, e.means_ = model.weights.detach(), model.means.detach().clone()
            e.covariances_ = model.covariances.detach()
        self._terms = None

    def prepare(self, model: Any, data: torch.Tensor, info: Any = None) -> None:
        # The fused design matrix [x - c, (x - c)^2] once per fit (diag, spherical): an EM
        # iteration is then two products per batch; full covariances take x as it is.
        # Batch EM keeps the stored order, so a rank reads the same rows every epoch: on
        # several processes it builds the matrix of those rows alone (building all of them
        # on every rank cost as much as two EM iterations and did not shrink with the ranks).
        e = self._engine(model)
        self._squares, self._fused = None, None
        self._data, self._local = data, None
        if info is not None and info.world.size > 1:
            parts = info.rank_rows()
            if len(parts) == 1:
                self._data = data[parts[0]]                          # a view: no copy
            else:
                self._data = torch.cat([data[r] for r in parts]) if parts else data[:0]
            # Global row -> row of the local matrix, for the slices that step() receives.
            self._local, offset = {}, 0
            for r in parts:
                self._local[r.start] = offset
                offset += r.stop - r.start
        if e.fused:
            self._cdt = resolve_compute_dtype(self.options.compute_dtype, data.dtype,
                                              e.covariance_type, *data.shape)
            self._fused = e.fused_rows(self._data, self._cdt)

    def _recentre(self, engine: MixtureEM, shift: torch.Tensor,
                  dtype: torch.dtype | None = None) -> None:
        # z rebuilt around the shift that keeps float32 products accurate (a function of the
        # initial parameters, kept in the checkpoint so that a resumed run computes alike),
        # in ``dtype`` when it changes.
        if dtype is not None and dtype != self._fused.z.dtype:
            self._fused = engine.fused_rows(self._data, dtype, shift=shift)
        else:
            engine.fused_rows(self._data, shift=shift, out=self._fused)

    def _own(self, rows: Any) -> Any:
        """The rows of this rank's design matrix that the loop's ``rows`` (a slice of the
        stored data, as batch EM's order is None) name."""
        if self._local is None:
            return rows
        if rows.stop <= rows.start:       # an empty shard of a short last batch
            return slice(0, 0)
        lo = self._local[rows.start]
        return slice(lo, lo + rows.stop - rows.start)

    def epoch_order(self, info: Any, epoch: int, generator: torch.Generator,
                    device: torch.device) -> None:
        return None           # batch EM's statistics do not depend on the order of the rows

    def start(self, model: Any, data: torch.Tensor, generator: torch.Generator) -> None:
        engine = self._engine(model)
        with torch.no_grad():
            fused = self._fused
            if fused is not None and self._local is not None and engine.init_params in (
                    "kmeans", "k-means++"):
                # k-means sees every row on every rank (so that all ranks, and one process,
                # start alike): the full matrix for the initialisation only.
                fused = engine.fused_rows(data, self._cdt)
            engine.initialize(data, self._squares, generator, fused=fused)
            del fused
            model.set_moments(engine.weights_, engine.means_, engine.covariances_)
            if self._fused is not None:
                self._recentre(engine, engine.precision_weighted_shift())
                if (self.options.compute_dtype == "auto" and self._fused.z.dtype != data.dtype
                        and engine.rounding_error(data, self._fused.shift, self._fused.z.dtype)
                        > gmm_em.AUTO_ROUNDING_BUDGET):
                    # These data need the products in the model's dtype (module docstring of
                    # gmm_em: components nearly constant far from the shift).
                    self._recentre(engine, self._fused.shift, data.dtype)

    def bind(self, model: Any, info: Any = None) -> None:
        self.engine = self._engine(model)
        self._read(model)
        self.stats: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, model: Any, batch: torch.Tensor, *, generator: torch.Generator, step: int = 0,
             targets: torch.Tensor | None = None, rows: Any = None) -> torch.Tensor:
        e = self.engine
        if self._fused is not None:
            if rows is not None:
                part = self._fused[self._own(rows)]
                if self._terms is None:
                    self._terms = e.fused_terms(part.shift, part.z.dtype)
                terms = self._terms
            else:  # a batch from outside the fit's data: its own design matrix and shift
                part = e.fused_rows(batch, self._fused.z.dtype)
                terms = e.fused_terms(part.shift, part.z.dtype)
            total, stats = e.fused_statistics(part, terms)
            self.stats = list(stats) if self.stats is None else [a + b for a, b in
                                                                 zip(self.stats, stats)]
            return -total / max(batch.shape[0], 1)   # an empty shard of a short batch
        if self._terms is None:
            self._terms = e.precision_terms()
        XX = None
        if self._squares is not None and rows is not None:
            XX = self._squares[rows]
        elif self._squares is not None:
            XX = e.squares(batch)
        lp = e.weighted_log_prob(batch, self._terms, XX)
        norm = torch.logsumexp(lp, 1, keepdim=True)
        resp = torch.exp(lp - norm)
        stats = e.statistics(batch, resp, XX)
        self.stats = list(stats) if self.stats is None else [a + b for a, b in
                                                             zip(self.stats, stats)]
        return -norm.mean()

    @torch.no_grad()
    def end_epoch(self, model: Any) -> None:
        if self.stats is None:
            return
        e = self.engine
        self.reduce(self.stats)           # one all-reduce per EM iteration (no-op in one process)
        e.set_from_statistics(*self.stats)
        model.set_moments(e.weights_, e.means_, e.covariances_)
        self._read(model)
        self.stats = None

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {} if self._fused is None else {
            "shift": self._fused.shift,
            "compute_bits": torch.tensor(torch.finfo(self._fused.z.dtype).bits)}
        if self.stats is not None:
            out.update({f"stats.{i}": t for i, t in enumerate(self.stats)})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        device = self.engine.means_.device
        if "shift" in tensors and self._fused is not None:
            bits = int(tensors.get("compute_bits", torch.tensor(0)))
            self._recentre(self.engine, tensors["shift"].to(device),
                           {32: torch.float32, 64: torch.float64}.get(bits))
        stats = sorted(k for k in tensors if k.startswith("stats."))
        if stats:
            self.stats = [tensors[f"stats.{i}"].to(device) for i in range(len(stats))]


@dataclass
class StepwiseEMOptions(GaussianMixtureEMOptions):
    r"""Stepwise EM adds its step size :math:`\eta_t = (t + 2)^{-\alpha}`.

    Arguments:
        step_decay: :math:`\alpha` in (0.5, 1].
    """

    step_decay: float = 0.7

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.5 < self.step_decay <= 1.0:
            raise ConfigError(f"step_decay must lie in (0.5, 1], got {self.step_decay}")


@register_objective
class GaussianMixtureStepwiseEM(GaussianMixtureEM):
    r"""Stepwise EM (Liang & Klein, 2009) for flat GMMs: after every batch the running
    statistics move towards the batch's by :math:`\eta_t`, then the M-step runs."""

    name = "stepwise-em"
    options_class = StepwiseEMOptions
    # The running statistics are global after every step's all-reduce.
    local_mid_epoch_state: ClassVar[bool] = False

    def _engine(self, model: Any) -> MixtureEM:
        e = super()._engine(model)
        e.step_decay = self.options.step_decay
        return e

    def epoch_order(self, info: Any, epoch: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor:
        return torch.randperm(info.n, generator=generator, device=device)

    def prepare(self, model: Any, data: torch.Tensor, info: Any = None) -> None:
        # Stepwise EM takes the reference path on x and x^2 (or its row sums).
        self._fused, self._local = None, None
        self._squares = self._engine(model).squares(data)

    def bind(self, model: Any, info: Any = None) -> None:
        super().bind(model, info)
        self.engine._running, self.engine._steps = None, 0

    @torch.no_grad()
    def step(self, model: Any, batch: torch.Tensor, *, generator: torch.Generator, step: int = 0,
             targets: torch.Tensor | None = None, rows: Any = None) -> torch.Tensor:
        e = self.engine
        XX = None if self._squares is None else self._squares[rows]
        reduce = None
        if self.world.distributed:
            def reduce(stats: list[torch.Tensor]) -> None:
                self.reduce(stats)
        lower = e.stepwise_update(batch, XX, reduce=reduce)
        model.set_moments(e.weights_, e.means_, e.covariances_)
        running, steps = e._running, e._steps
        self._read(model)
        e._running, e._steps = running, steps
        return torch.tensor(-lower, dtype=torch.float64)

    def end_epoch(self, model: Any) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.engine._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine._steps = int(state.get("steps", 0))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        r = self.engine._running
        return {} if r is None else {f"running.{i}": t for i, t in enumerate(r)}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            device = self.engine.means_.device
            self.engine._running = tuple(tensors[f"running.{i}"].to(device)
                                         for i in range(len(tensors)))


@dataclass
class CircuitEMOptions(ObjectiveOptions):
    """Options of circuit EM.

    Arguments:
        stepsize: None for batch EM (one update per epoch); otherwise online EM with
            :math:`\\theta \\leftarrow (1-s)\\theta + s\\hat\\theta` after every ``frequency``
            batches.
        frequency: batches per online update.
    """

    stepsize: float | None = None
    frequency: int = 1

    def __post_init__(self) -> None:
        if self.stepsize is not None and not 0.0 < self.stepsize <= 1.0:
            raise ConfigError(f"stepsize must lie in (0, 1], got {self.stepsize}")
        if isinstance(self.frequency, bool) or not isinstance(self.frequency, int) \
                or self.frequency < 1:
            raise ConfigError(f"frequency must be an integer >= 1, got {self.frequency!r}")


@register_objective
class CircuitEM(Objective):
    """EM for EinsumNetwork circuits (``circuit``): batch or online."""

    name = "em"
    families = ("circuit",)
    options_class = CircuitEMOptions
    # The accumulated statistics live inside the circuit between updates.
    resumable_mid_epoch: ClassVar[bool] = False

    def epoch_order(self, info: Any, epoch: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor:
        # Every epoch in a fresh order, a full batch too (as EinsumNetwork.fit_em always did).
        return torch.randperm(info.n, generator=generator, device=device)

    def bind(self, model: Any, info: Any = None) -> None:
        model.reset_em_statistics()
        self.batches = 0

    def _update(self, model: Any) -> None:
        if self.world.distributed:
            # The expected counts of every rank's shard, summed in one all-reduce.
            self.reduce(list(model._em_stats.values()))
        model.em_update(self.options.stepsize)

    def step(self, model: Any, batch: torch.Tensor, *, generator: torch.Generator, step: int = 0,
             targets: torch.Tensor | None = None, rows: Any = None) -> torch.Tensor:
        logp = model.em_accumulate(batch)
        self.batches += 1
        if self.options.stepsize is not None and self.batches % self.options.frequency == 0:
            self._update(model)
        return -logp.double().mean()   # float64: the epoch mean sums many batches

    def end_epoch(self, model: Any) -> None:
        if model._em_stats is not None:
            self._update(model)
        self.batches = 0
