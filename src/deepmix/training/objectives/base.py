"""What an objective supplies to the training loop, and the objective registry.

The loop (:func:`deepmix.training.loop.fit`) owns batches, order, seeds, device, progress,
``metrics.jsonl``, checkpoints, resume and Ctrl-C. An objective supplies only

- :meth:`Objective.check`: validate and convert the data (and targets) for the model;
- :meth:`Objective.start`: initialisation from the training data (fresh runs only);
- :meth:`Objective.bind`: per-run machinery such as an optimiser (fresh and resumed runs),
  given the run's :class:`LoopInfo`;
- :meth:`Objective.step`: one batch (a gradient step, or E-step statistics); returns the
  batch's mean loss as a 0-d tensor (or None when the objective logs by itself), so the loop
  never synchronises with the device per step;
- :meth:`Objective.end_epoch`: work at the end of a pass (the M-step of batch EM);
- :meth:`Objective.epoch_order`: the data order of an epoch (default: a permutation from the
  loop's generator);
- ``log_every`` + :meth:`Objective.log_row`: rows every N steps instead of per epoch;
- :meth:`Objective.epoch_metrics`: the objective's own values in each epoch's row;
- :meth:`Objective.state_dict` (JSON) and :meth:`Objective.state_tensors`: whatever resume
  needs beyond the model (controllers, optimiser moments, accumulated statistics).

Distribution (:mod:`deepmix.utils.distributed`) is the loop's business: on several processes
every rank calls the same pieces on its own shard of each global batch (``batch`` holds this
rank's rows only; ``LoopInfo.world`` says who is who). An objective makes its update equal the
one-process update at the global batch with ONE hook, :meth:`Objective.reduce`: it sums a list
of tensors (sufficient statistics, winner sums, weighted gradients, loss sums) over the ranks in
one flattened all-reduce, and does nothing in one process (gradient steps use
:meth:`Objective.reduce_row_weighted` or :meth:`Objective.reduce_gradients`, built on it). EM
reduces its statistics once per
iteration before the M-step, DCGMM its per-step winner statistics, gradient objectives their
gradients. State that only one rank holds (the run folder is written by rank 0) must therefore
be global: equal on every rank after the reductions.

Objectives register under ``(family, name)``; ``family = "*"`` serves every family with a
differentiable ``log_prob``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.autograd.graph import increment_version

from ...errors import ConfigError
from ...utils.config import config_from_dict
from ...utils.distributed import SINGLE, World, shard_bounds

__all__ = ["LoopInfo", "Objective", "ObjectiveOptions", "register_objective", "objective_class",
           "objective_names", "make_objective"]


def adam(params: Any, **options: Any) -> torch.optim.Adam:
    """``torch.optim.Adam`` with its fused kernel where the parameters allow it (floating
    point, CPU or CUDA): one kernel for all parameters instead of ~10 small ops per tensor,
    which is most of a small model's step (DRMM 3 x 16: about a third of it). Same update
    rule, float rounding aside."""
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                  for p in tensors)
    return (_FusedAdam if fused else torch.optim.Adam)(params, fused=fused or None, **options)


class _FusedAdam(torch.optim.Adam):
    """Fused Adam that bumps its parameters' version counters after a step. Why: the fused
    kernel writes the parameters without bumping ``Tensor._version`` (torch 2.13), and caches
    keyed on it (deep GMM log-det tables and affine tails, the GMM layer's linear form) would
    otherwise serve values of the parameters before the step."""

    def step(self, closure: Any = None) -> Any:
        out = super().step(closure)
        stepped = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if stepped:
            increment_version(stepped)
        return out


@dataclass
class LoopInfo:
    """What the loop tells an objective about the run it is bound to."""

    n: int
    batch_size: int
    steps_per_epoch: int
    epochs: int
    seed: int
    device: torch.device
    has_targets: bool = False
    data_info: dict = field(default_factory=dict)
    #: The processes of the run; ``batch_size`` is the global batch (all ranks together).
    world: World = SINGLE

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def global_rows(self, step: int) -> int:
        """Rows of global step ``step``'s batch over all ranks (the last batch of an epoch may
        be shorter)."""
        b = step % self.steps_per_epoch
        return max(0, min(self.batch_size, self.n - b * self.batch_size))

    def shard(self, step: int) -> tuple[int, int]:
        """This rank's part ``[lo, hi)`` of step ``step``'s global batch (``(0, m)`` in one
        process)."""
        return shard_bounds(self.global_rows(step), self.world.rank, self.world.size)

    def rank_rows(self) -> list[slice]:
        """The stored rows this rank reads in an epoch whose order is None (rows as stored):
        for each batch b, ``[b B + lo_b, b B + hi_b)``, empty slices left out."""
        out = []
        for b in range(self.steps_per_epoch):
            lo, hi = self.shard(b)
            if hi > lo:
                out.append(slice(b * self.batch_size + lo, b * self.batch_size + hi))
        return out


@dataclass
class ObjectiveOptions:
    """Options shared by every objective (none yet); each objective subclasses this."""


class Objective:
    """Base class of the pieces an objective plugs into the loop (see the module docstring)."""

    #: Registry name, e.g. ``"mle"``, ``"em"``.
    name: ClassVar[str] = ""
    #: Families it trains; ``("*",)`` means any family with a differentiable ``log_prob``.
    families: ClassVar[tuple[str, ...]] = ("*",)
    #: Its options dataclass (the ``"objective"`` part of a run's ``"train"`` section).
    options_class: ClassVar[type] = ObjectiveOptions
    #: Whether :meth:`state_tensors` captures a mid-epoch state (else checkpoints fall on
    #: epoch ends, and an interrupted epoch is redone on resume).
    resumable_mid_epoch: ClassVar[bool] = True
    #: Whether a mid-epoch :meth:`state_tensors` holds this process's partial sums, summed over
    #: the ranks only at the epoch's end (batch EM); a distributed run then checkpoints at
    #: epoch ends only, so the run folder holds global state alone.
    local_mid_epoch_state: ClassVar[bool] = False
    #: The run's processes; the loop sets it (``LoopInfo.world``) before ``start`` and ``bind``.
    world: World = SINGLE
    #: Rows per step and process that ``deepmix train`` uses when ``--batch-size`` is not given
    #: (None: the whole data set, one step per epoch). An SGD-like objective's batch changes
    #: its result, so the reference batch of the papers (100) is the default; batch EM's
    #: statistics do not depend on it, and smaller steps only add per-step overhead.
    default_batch_size: ClassVar[int | None] = 100

    def __init__(self, options: Any = None) -> None:
        if options is None:
            options = self.options_class()
        elif isinstance(options, dict):
            options = config_from_dict(self.options_class, options,
                                       where=f"objective '{self.name}' options")
        elif not isinstance(options, self.options_class):
            raise ConfigError(f"objective '{self.name}' takes {self.options_class.__name__} "
                              f"options, got {type(options).__name__}")
        self.options = options

    #: Write a metrics row every this many steps (and at the end) from :meth:`log_row`,
    #: instead of one row per epoch; None: per epoch.
    log_every: int | None = None

    def check(self, model: Any, data: Any, targets: Any) -> tuple[torch.Tensor, Any]:
        """The training data (and targets) as the model takes them; errors name the problem."""
        from ...errors import InputError

        if hasattr(model, "check_input"):
            data = model.check_input(data)
        if not torch.is_tensor(data):
            raise InputError(f"training data must be a tensor, got {type(data).__name__}")
        if data.shape[0] == 0:
            raise InputError("no training rows")
        return data.to(model.device), targets

    def reduce(self, tensors: Any) -> None:
        """Sum ``tensors`` (a list) in place over the run's processes, in ONE collective call
        on one flattened buffer; a no-op in one process. Every rank must call it at the same
        point with tensors of the same shapes."""
        self.world.all_reduce_(list(tensors))

    def reduce_gradients(self, params: list[torch.Tensor],
                         extra: list[torch.Tensor] = ()) -> None:
        """Sum the ``.grad`` of ``params`` (zeros where a rank has none, e.g. an empty shard)
        and the ``extra`` tensors over the ranks in ONE :meth:`reduce`: each rank's gradient
        of its share of a global loss becomes the global loss's gradient."""
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        self.reduce([*grads, *extra])

    def reduce_row_weighted(self, params: list[torch.Tensor], loss: torch.Tensor,
                            n: int) -> torch.Tensor:
        r"""The global batch's gradient from this rank's (DDP's average, exact for uneven
        batches): ``params``' ``.grad`` hold :math:`g_r`, the gradient of ``loss``, this rank's
        mean over its ``n`` rows (a rank with none passes a zero loss and no gradients); ONE
        :meth:`reduce` of :math:`[n_r g_r, n_r \mathrm{loss}_r, n_r]` leaves
        :math:`g = \sum_r n_r g_r / \sum_r n_r` in ``.grad``. Returns the global batch's mean
        loss (0-d, the same on every rank)."""
        ref = params[0]
        tail = torch.stack([loss.detach().to(ref.dtype) * n,
                            torch.tensor(float(n), dtype=ref.dtype, device=ref.device)])
        for p in params:
            if p.grad is not None:
                p.grad.mul_(n)
        self.reduce_gradients(params, [tail])
        total = tail[1]
        for p in params:
            p.grad.div_(total)
        return tail[0] / total

    def epoch_metrics(self) -> dict[str, float]:
        """Values the loop adds to each epoch's ``metrics.jsonl`` row (per-epoch rows only,
        i.e. without ``log_every``); called after :meth:`end_epoch` on every rank and must be
        global (equal on every rank): rank 0 writes the row."""
        return {}

    def prepare(self, model: Any, data: torch.Tensor, info: LoopInfo | None = None) -> None:
        """Precompute per-row quantities once per fit (fresh and resumed runs); ``step``
        receives the ``rows`` of its batch to index them. ``info`` (the run, its world) lets
        an objective whose epochs keep the stored order prepare only this rank's rows
        (:meth:`LoopInfo.rank_rows`)."""

    def start(self, model: Any, data: torch.Tensor, generator: torch.Generator) -> None:
        """Initialise ``model`` from the training data (fresh runs only)."""

    def bind(self, model: Any, info: LoopInfo) -> None:
        """Set up per-run state (e.g. the optimiser) for ``model``."""

    def epoch_order(self, info: LoopInfo, epoch: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor | None:
        """The order of epoch ``epoch``'s rows (None: as stored); default a permutation drawn
        from the loop's ``generator`` when batches are smaller than the data."""
        if info.batch_size >= info.n:
            return None
        return torch.randperm(info.n, generator=generator, device=device)

    def step(self, model: Any, batch: torch.Tensor, *, generator: torch.Generator, step: int,
             targets: torch.Tensor | None = None, rows: Any = None) -> torch.Tensor | None:
        """Process one batch (``rows``: its slice or indices into the data); return its mean
        loss (0-d tensor, not synchronised) or None."""
        raise NotImplementedError

    def end_epoch(self, model: Any) -> None:
        """Called after the last batch of every epoch."""

    def log_row(self) -> dict[str, Any]:
        """Values for a metrics row when ``log_every`` is set."""
        return {}

    def progress_postfix(self) -> str | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for resume (controllers, counters)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise ConfigError(f"objective '{self.name}' keeps no state, but the checkpoint "
                              f"holds {sorted(tensors)[:3]}")


_OBJECTIVES: dict[tuple[str, str], type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: register ``cls`` under each of its families and its name."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute name")
    for fam in cls.families:
        _OBJECTIVES[(fam, cls.name)] = cls
    return cls


def objective_names(family: str) -> list[str]:
    """Objective names that can train ``family`` (specific ones first)."""
    own = [n for f, n in _OBJECTIVES if f == family]
    return own + [n for f, n in _OBJECTIVES if f == "*" and n not in own]


def objective_class(family: str, name: str) -> type[Objective]:
    """The objective class of ``name`` for ``family``; a one-line error naming the choices."""
    key = str(name).lower()
    cls = _OBJECTIVES.get((family, key)) or _OBJECTIVES.get(("*", key))
    if cls is None:
        raise ConfigError(f"Unknown objective '{name}' for model family '{family}'; expected "
                          f"one of {', '.join(objective_names(family))}")
    return cls


def make_objective(family: str, name: str, options: Any = None) -> Objective:
    """An objective instance for ``family`` with ``options`` (dataclass, dict or None)."""
    return objective_class(family, name)(options)
