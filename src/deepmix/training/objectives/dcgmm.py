r"""DCGMM's objective: every GMM layer ascends its own annealed loss on detached input.

All layers train in the same bottom-up pass over a batch; GMM layer L (from 0) starts after
``delay * L`` of all steps; a linear classifier trains by cross-entropy on labels from step 0.
Each GMM layer's annealing radius sigma is steered by a :class:`SigmaController` over windows
of ``window`` steps, and the loop logs one ``metrics.jsonl`` row per window with the per-layer
losses and radii. The data order of epoch e is a permutation seeded by ``(seed, e)`` and the
dequantisation noise of step t by ``(seed, t)``, so a run is reproducible from its folder, and
host synchronisation happens once per window, not per step.

On several processes every rank computes the winner statistics of its shard for every active
GMM layer (:meth:`~deepmix.layers.GMM.winner_statistics`; each layer's input is the layer
below's output *before* its update, so nothing waits), together with the classifier's
row-weighted gradient and loss, then ONE all-reduce of all of them in one flattened buffer per
step, then every layer's update from the global sums: the one-process update at the global
batch. The sigma controllers therefore see the global losses and agree on every rank.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from ...errors import InputError
from ...layers import GMM, Classifier, Folding
from ..annealing import SigmaController
from ..config import TrainConfig
from .base import LoopInfo, Objective, ObjectiveOptions, register_objective

__all__ = ["DCGMMOptions", "DCGMMObjective", "LOOP_FIELDS", "split_train_config"]

#: TrainConfig fields that belong to the loop (FitConfig); the rest are DCGMMOptions.
LOOP_FIELDS = ("epochs", "batch_size", "seed", "device", "checkpoint_every")

# Seed mixers: distinct streams for the epoch orders and the dequantisation noise.
_ORDER_SEED_MIX = 1_000_003
_NOISE_SEED_MIX = 7_919


@dataclass
class DCGMMOptions(ObjectiveOptions):
    """The DCGMM part of :class:`~deepmix.training.TrainConfig` (see there for each field)."""

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

    def __post_init__(self) -> None:
        TrainConfig(**{f.name: getattr(self, f.name) for f in fields(self)})  # same checks


def split_train_config(cfg: TrainConfig) -> tuple[dict[str, Any], DCGMMOptions]:
    """(loop fields, DCGMM options) of a :class:`TrainConfig`."""
    values = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    loop = {k: values.pop(k) for k in LOOP_FIELDS}
    return loop, DCGMMOptions(**values)


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed) * _ORDER_SEED_MIX + int(epoch))
    return torch.randperm(n, generator=gen)


@register_objective
class DCGMMObjective(Objective):
    """Per-layer annealed SGD of DCGMM's GMM layers (+ its classifier), as the papers train."""

    name = "dcgmm"
    families = ("dcgmm",)
    options_class = DCGMMOptions
    uses_targets: ClassVar[bool] = True

    # ------------------------------------------------------------------------------ set-up
    def check(self, model: Any, data: Any, targets: Any) -> tuple[torch.Tensor, Any]:
        x = model.check_images(data)
        if x.shape[0] == 0:
            raise InputError("no training images")
        clf = model.classifier
        if targets is None or clf is None:
            return x, None
        y = torch.as_tensor(targets).to(device=x.device, dtype=torch.long).reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise InputError(f"got {y.shape[0]} labels for {x.shape[0]} images")
        if int(y.min()) < 0 or int(y.max()) >= clf.S:
            raise InputError(f"labels must lie in 0..{clf.S - 1} for classifier {clf.spec()}")
        return x, y

    def epoch_order(self, info: LoopInfo, epoch: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor | None:
        return _epoch_order(info.n, info.seed, epoch).to(device)

    def start(self, model: Any, data: torch.Tensor, generator: torch.Generator) -> None:
        if self.options.sigma0 is not None:
            for g in model.gmm_layers:
                g.sigma.fill_(self.options.sigma0)

    def bind(self, model: Any, info: LoopInfo) -> None:
        o = self.options
        self.info = info
        self.gmms = model.gmm_layers
        total = info.total_steps
        self.starts = [int(o.delay * L * total) for L in range(len(self.gmms))]
        if info.world.is_main:   # one warning per run, not one per process
            self._warn_if_sigma_cannot_anneal(info)
        device = info.device
        self.controllers = [SigmaController(float(g.sigma), o.sigma_min, o.sigma_decay, o.window,
                                            o.ratio_low, o.ratio_high) for g in self.gmms]
        self.acc = [torch.zeros((), dtype=torch.float64, device=device) for _ in self.gmms]
        self.acc_n = [0 for _ in self.gmms]
        self.last_losses: list[float | None] = [None] * len(self.gmms)
        self.clf_acc = torch.zeros((), dtype=torch.float64, device=device)
        self.clf_n = 0
        self.positions = [g.input_shape[0] * g.input_shape[1] for g in self.gmms]
        self.gmm_pos = {li: L for L, li in enumerate(model.gmm_indices)}
        clf = model.classifier
        self.opt = (torch.optim.SGD(clf.parameters(), lr=o.classifier_lr)
                    if clf is not None and info.has_targets else None)
        self.sources = set(model.classifier_sources) if self.opt is not None else set()
        self.log_every = o.window

    def _warn_if_sigma_cannot_anneal(self, info: LoopInfo) -> None:
        # The sigma controller's first window sets its baseline and the second its first
        # change, so a layer's sigma can first anneal at the end of its third window.
        o, total, spe = self.options, info.total_steps, info.steps_per_epoch
        need = 3 * o.window
        trainable = [L for L in range(len(self.gmms)) if o.delay * L < 1]
        short = [L for L in trainable if total - self.starts[L] < need]
        if not short:
            return
        epochs = info.epochs
        while any(epochs * spe - int(o.delay * L * epochs * spe) < need for L in trainable):
            epochs += 1
        warnings.warn(
            f"sigma will never anneal in GMM layer(s) {', '.join(map(str, short))}: training "
            f"runs {total} steps ({info.epochs} epochs x {spe} batches of {info.batch_size} of "
            f"{info.n} images; {', '.join(str(total - self.starts[L]) for L in short)} for "
            f"those layers), but the controller window is {o.window} steps and sigma first "
            f"moves after 3 windows ({need} steps); train at least {epochs} epochs or use a "
            f"smaller batch size", UserWarning, stacklevel=5)

    # -------------------------------------------------------------------------------- step
    def step(self, model: Any, batch: torch.Tensor, *, generator: torch.Generator, step: int,
             targets: torch.Tensor | None = None, rows: Any = None) -> None:
        o = self.options
        h = batch
        nb = h.shape[0]
        distributed = self.world.distributed
        if o.dequantize:
            levels = int(self.info.data_info.get("levels", 256))
            gen = torch.Generator(device=h.device).manual_seed(
                self.info.seed * _NOISE_SEED_MIX + step)
            if distributed:
                # This rank's rows of the global batch's noise: the one-process draw.
                lo, hi = self.info.shard(step)
                shape = (self.info.global_rows(step), *h.shape[1:])
                noise = torch.rand(shape, generator=gen, device=h.device, dtype=h.dtype)[lo:hi]
            else:
                noise = torch.rand(h.shape, generator=gen, device=h.device, dtype=h.dtype)
            h = (h * (levels - 1) + noise) / levels
        pending: list[tuple[int, Any, Any, bool]] = []   # distributed: updates after the reduce
        clf_loss = None
        gi = 0
        fold = None
        stash: dict[int, torch.Tensor] = {}
        for li, layer in enumerate(model.layers):
            if isinstance(layer, GMM):
                if step >= self.starts[gi]:
                    update_d = o.centroids_first is None or float(layer.sigma) <= o.centroids_first
                    if distributed:
                        st = layer.winner_statistics(h, fold=fold)
                        h = st.resp
                        pending.append((gi, layer, st, update_d))
                    else:
                        loss_sum, h = layer.train_step(h, o.lr, o.lr_mu, o.lr_d, o.lr_xi,
                                                       update_d=update_d, fold=fold)
                        self._account(gi, layer, loss_sum, nb)
                    fold = None
                else:
                    with torch.no_grad():
                        h = layer(h)
                if li in self.sources:
                    stash[li] = h
                gi += 1
            elif isinstance(layer, Classifier):
                if self.opt is not None:
                    with torch.enable_grad():
                        self.opt.zero_grad(set_to_none=True)
                        if nb:
                            loss = layer.loss(h, targets,
                                              [stash[j] for j in model.classifier_sources])
                            loss.backward()
                        else:   # an empty shard still joins the all-reduce
                            loss = torch.zeros((), device=h.device)
                    if distributed:
                        clf_loss = loss.detach()
                    else:
                        self.opt.step()
                        self.clf_acc += loss.detach()
                        self.clf_n += 1
            elif isinstance(layer, Folding) and self.gmm_pos.get(li + 1) is not None \
                    and step >= self.starts[self.gmm_pos[li + 1]]:
                # The GMM above builds [patches, patches^2] from this layer's input itself.
                fold = layer
            else:
                with torch.no_grad():
                    h = layer(h)
        if distributed:
            self._reduce_and_apply(step, nb, pending, clf_loss)
        return None

    def _account(self, gi: int, layer: Any, loss_sum: torch.Tensor, rows: int) -> None:
        """Add a step's loss to layer ``gi``'s window; steer sigma at the window's end."""
        o = self.options
        # One op (a divide and a promoting add were two, 10 us of a 2 ms step).
        self.acc[gi].add_(loss_sum, alpha=1.0 / (rows * self.positions[gi]))
        self.acc_n[gi] += 1
        if self.acc_n[gi] == o.window:
            c = self.controllers[gi]
            window_sum = float(self.acc[gi])
            if c.update_window(window_sum, self.acc_n[gi]):
                layer.sigma.fill_(c.sigma)
            self.last_losses[gi] = window_sum / self.acc_n[gi]
            self.acc[gi].zero_()
            self.acc_n[gi] = 0

    def _reduce_and_apply(self, step: int, nb: int, pending: list, clf_loss: Any) -> None:
        """ONE all-reduce of every layer's winner statistics and the classifier's row-weighted
        gradient and loss, then the updates from the global sums."""
        o = self.options
        grads = []
        if clf_loss is not None:
            for p in self.opt.param_groups[0]["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad.mul_(nb))
            grads.append(clf_loss.mul(nb).reshape(1))
        buffers = [t for _, _, st, _ in pending for t in st.tensors()] + grads
        self.reduce(buffers)
        rows = self.info.global_rows(step)
        for gi, layer, st, update_d in pending:
            layer.apply_statistics(st, rows, o.lr, o.lr_mu, o.lr_d, o.lr_xi, update_d=update_d)
            self._account(gi, layer, st.loss_sum, rows)
        if clf_loss is not None:
            for g in grads[:-1]:
                g.div_(rows)
            self.opt.step()
            self.clf_acc += grads[-1][0].double() / rows
            self.clf_n += 1

    # ----------------------------------------------------------------------------- logging
    def log_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"loss": self.last_losses[:],
                               "sigma": [float(g.sigma) for g in self.gmms]}
        if self.clf_n:
            row["classifier_loss"] = float(self.clf_acc) / self.clf_n
            self.clf_acc.zero_()
            self.clf_n = 0
        return row

    def progress_postfix(self) -> str:
        return (" ".join(f"G{i}={v:.2f}" if v is not None else f"G{i}=-"
                         for i, v in enumerate(self.last_losses))
                + " sigma=" + ",".join(f"{float(g.sigma):.2g}" for g in self.gmms))

    # ------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"controllers": [c.state_dict() for c in self.controllers],
                "acc": [float(a) for a in self.acc], "acc_n": list(self.acc_n),
                "last_losses": self.last_losses, "clf_acc": float(self.clf_acc),
                "clf_n": self.clf_n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.info.device
        self.controllers = [SigmaController.from_state(s) for s in state["controllers"]]
        self.acc = [torch.tensor(v, dtype=torch.float64, device=device) for v in state["acc"]]
        self.acc_n = list(state["acc_n"])
        self.last_losses = list(state.get("last_losses", [None] * len(self.gmms)))
        self.clf_acc = torch.tensor(float(state.get("clf_acc", 0.0)), dtype=torch.float64,
                                    device=device)
        self.clf_n = int(state.get("clf_n", 0))
