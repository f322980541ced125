r"""The training loop every family shares.

:func:`fit` runs ``epochs`` passes over the data in batches (a fresh order per epoch, drawn from
one seeded generator), calls the objective's pieces (:mod:`deepmix.training.objectives`), logs
one ``metrics.jsonl`` row per epoch, checkpoints the run folder at epoch ends (and every
``checkpoint_every`` steps where the objective allows), and turns Ctrl-C into a checkpoint
between two steps. ``resume=True`` continues a run to exactly the result of an uninterrupted
one: the model, the objective's tensors (optimiser moments, EM statistics) and the generator
state are all in the checkpoint.

``metrics.jsonl`` rows (one schema for every family): ``epoch``, ``step``, ``loss`` (mean of
the objective's batch losses over the epoch; absent for epoch 0, the initialisation),
``seconds`` (cumulative training time, evaluation excluded), ``samples_per_s``, the
objective's own per-epoch values (:meth:`~deepmix.training.objectives.Objective.epoch_metrics`,
e.g. hard EM's ``e_step_lower_bound``), and whatever the ``evaluate`` callback returns (e.g.
``train_nll``, ``valid_nll``).

Several processes (``torchrun``, ``deepmix train --nproc N``; :mod:`deepmix.utils.distributed`)
run the same loop: every rank draws the same seeded order of each epoch and takes its
contiguous part of every global batch (``batch_size`` rows per rank, so the global batch is
``world_size x batch_size``); the objective sums what it must over the ranks through
:meth:`~deepmix.training.objectives.Objective.reduce`; the epoch's loss sums are reduced once
per epoch; rank 0 alone writes the run folder, ``metrics.jsonl``, the progress bar and the
checkpoints, which hold global state only (the global batch is stored as the run's
``batch_size``), so ``resume`` continues on any number of processes. Ranks agree on Ctrl-C
every few steps, so all of them stop at the same step.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointError, ConfigError, InputError
from ..models.registry import family_of
from ..utils.config import config_from_dict, config_to_dict
from ..utils.device import resolve_device
from ..utils.distributed import World, current_world, process_rank
from ..utils.io import write_text_atomic
from ..utils.memory import tune_allocator
from ..utils.threads import ThreadGovernor, threads_pinned
from .checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, read_config, save_model
from .objectives import LoopInfo, Objective, make_objective, objective_class

__all__ = ["FitConfig", "fit", "fit_density", "METRICS_FILE", "defer_sigint", "restore_sigint"]

METRICS_FILE = "metrics.jsonl"
#: In a distributed run the ranks agree on an interruption (Ctrl-C) every this many steps.
_AGREE_EVERY = 20
# Seed mixer of the per-rank step generators of a distributed run.
_RANK_SEED_MIX = 1_000_033


@dataclass
class FitConfig:
    """Options of the loop itself, the same for every family (``"train"`` ``"loop"``).

    Arguments:
        epochs: passes over the training data (EM: iterations).
        batch_size: rows per step and process; None means the whole data set (full batch).
            A run folder stores the global batch (all processes together) here.
        seed: seeds the initialisation, the data order and the objective's randomness.
        device: torch device of the run.
        checkpoint_every: also checkpoint every N steps (0: at epoch ends only).
    """

    epochs: int = 10
    batch_size: int | None = None
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "seed", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name} must be an integer, got {v!r}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not
                                            isinstance(self.batch_size, int) or
                                            self.batch_size < 1):
            raise ConfigError(f"batch_size must be an integer >= 1 or None, got "
                              f"{self.batch_size!r}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not isinstance(self.device, str):
            self.device = str(self.device)


def defer_sigint(flag: list[bool]) -> Any:
    """Turn Ctrl-C into a flag checked between steps (main thread only; else None)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        if flag:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        flag.append(True)

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:
        return None


def restore_sigint(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def _train_section(objective: Objective, cfg: FitConfig) -> dict[str, Any]:
    return {"objective": objective.name, "options": config_to_dict(objective.options),
            "loop": config_to_dict(cfg)}


def read_train_section(directory: Path, family: str) -> tuple[Objective, FitConfig]:
    """The objective and loop options a run folder was trained with (strict).

    DCGMM folders written before the loop held a flat ``TrainConfig`` there; they read as the
    ``dcgmm`` objective with the same options.
    """
    saved = read_config(directory)
    section = saved.get("train")
    where = f"{directory / CONFIG_FILE} 'train'"
    if not isinstance(section, dict):
        raise CheckpointError(f"{where}: the run folder has no training section: nothing to "
                              f"resume")
    try:
        if "objective" not in section and family == "dcgmm":
            from .config import TrainConfig
            from .objectives import split_train_config

            loop, options = split_train_config(config_from_dict(TrainConfig, section,
                                                                where=where))
            return make_objective("dcgmm", "dcgmm", options), FitConfig(**loop)
        unknown = sorted(set(section) - {"objective", "options", "loop"})
        if unknown or "objective" not in section:
            raise CheckpointError(f"{where}: " + (f"unknown key(s) {', '.join(unknown)}; "
                                                  if unknown else "no 'objective'; ")
                                  + "known: objective, options, loop")
        objective = make_objective(family, section["objective"], section.get("options") or {})
        cfg = config_from_dict(FitConfig, section.get("loop") or {}, where=f"{where} 'loop'")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return objective, cfg


def _generator_state(gen: torch.Generator) -> torch.Tensor:
    return gen.get_state().clone()


def fit(model: Any, data: Any, objective: Objective | str = "mle", *,
        config: FitConfig | None = None, targets: Any = None,
        out_dir: str | Path | None = None, resume: bool = False, progress: bool = False,
        data_info: dict | None = None,
        evaluate: Callable[[Any], dict[str, float]] | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        stop_after_steps: int | None = None, initialize: bool = True,
        until: Callable[[list[dict[str, Any]]], bool] | None = None,
        **options: Any) -> list[dict[str, Any]]:
    """Train ``model`` on ``data`` (rows along dim 0) with ``objective``; returns the metric rows.

    Arguments:
        model: a registered family's module (see :mod:`deepmix.models.base`).
        data: the training rows, in a form the objective's ``check`` accepts.
        objective: an :class:`~deepmix.training.objectives.Objective`, or its name for the
            model's family (``options`` then are its options).
        config: the loop's :class:`FitConfig`; keyword ``options`` that are FitConfig fields
            override it.
        targets: per-row targets (class labels) for objectives that use them.
        out_dir: run folder (config.json, weights.safetensors, metrics.jsonl); None: in memory.
        resume: continue the run in ``out_dir`` (same data); only ``epochs`` may change, and
            the run's own objective and options are used.
        progress: show a progress bar (plain lines when stderr is not a terminal).
        data_info: what the data were, stored in config.json's ``"data"``.
        evaluate: ``evaluate(model) -> {name: value}`` after the initialisation and every epoch
            (time excluded from ``seconds``), e.g. training and validation NLL.
        callback: called with every metrics row (after it is written).
        stop_after_steps: stop after this global step with a checkpoint, as an interruption.
        initialize: let the objective initialise the model from the data first (fresh runs);
            False trains the model as it is.
        until: ``until(rows) -> bool`` after every epoch row; True ends training there (with a
            checkpoint), e.g. EM's convergence test.

    In a distributed run (``WORLD_SIZE > 1``) every rank calls ``fit`` with the same
    arguments and the whole data; ``evaluate`` and ``until`` run on rank 0 (its decision is
    shared), ``callback`` on every rank.
    """
    tune_allocator()      # a step's large tensors reuse freed memory (utils/memory.py)
    family = _family_name(model, needed=out_dir is not None)
    loop_fields = set(FitConfig.__dataclass_fields__)
    loop_over = {k: options.pop(k) for k in list(options) if k in loop_fields}
    cfg = config or FitConfig()
    if loop_over:
        cfg = FitConfig(**{**config_to_dict(cfg), **loop_over})
    if isinstance(objective, str):
        objective = make_objective(family, objective, options or None)
    elif options:
        raise ConfigError(f"unknown option(s) {', '.join(sorted(options))}: give objective "
                          f"options to the objective itself")
    if "*" not in objective.families and family not in objective.families:
        raise ConfigError(f"objective '{objective.name}' trains {', '.join(objective.families)} "
                          f"models, not '{family}'")
    out = Path(out_dir) if out_dir is not None else None
    state: dict[str, Any] = {}
    trainer_tensors: dict[str, torch.Tensor] = {}
    if resume:
        if out is None:
            raise ConfigError("resume needs the run folder out_dir")
        objective, saved_cfg = read_train_section(out, family)   # the run's own objective
        epochs = loop_over.get("epochs", config.epochs if config is not None else None)
        cfg = FitConfig(**{**config_to_dict(saved_cfg),
                           "epochs": int(epochs or saved_cfg.epochs)})
        state = load_checkpoint(model, out, trainer_tensors)
        if not state or "step" not in state:
            raise CheckpointError(f"{out / WEIGHTS_FILE} holds no trainer state: nothing to "
                                  f"resume")
        data_info = data_info or read_config(out).get("data")
    elif out is not None and (out / WEIGHTS_FILE).exists() and process_rank() == 0:
        # (rank 0 alone checks: it may already have written the other ranks' run folder)
        raise CheckpointError(f"{out} already holds a run: pass resume to continue it, or "
                              f"choose another folder")
    device = resolve_device(cfg.device)
    world = current_world(device)
    if world.distributed and not resume and cfg.batch_size is not None:
        # The run folder holds the global batch: resume keeps it on any number of processes.
        cfg = FitConfig(**{**config_to_dict(cfg), "batch_size": cfg.batch_size * world.size})
    writes = out is not None and world.is_main
    model.to(device)
    x, y = objective.check(model, data, targets)
    N = int(x.shape[0])
    data_info = dict(data_info or {})
    if resume and data_info.get("n") not in (None, N):
        raise InputError(f"resume with {N} training rows, but the run was trained on "
                         f"{data_info['n']}: use the same data")
    data_info["n"] = N
    B = N if cfg.batch_size is None else min(cfg.batch_size, N)
    steps_per_epoch = math.ceil(N / B)
    total = cfg.epochs * steps_per_epoch
    info = LoopInfo(n=N, batch_size=B, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs,
                    seed=cfg.seed, device=device, has_targets=y is not None,
                    data_info=data_info, world=world)
    objective.world = world
    gen = torch.Generator(device=x.device).manual_seed(cfg.seed)
    metrics_path = out / METRICS_FILE if writes else None
    if writes:
        out.mkdir(parents=True, exist_ok=True)
    step = int(state.get("step", 0))
    paused = 0.0
    seconds0 = float(state.get("seconds", 0.0))
    t0 = time.perf_counter()

    def with_evaluation(row: dict[str, Any]) -> dict[str, Any]:
        nonlocal paused
        if evaluate is not None and world.is_main:
            t = time.perf_counter()
            row.update(evaluate(model))
            paused += time.perf_counter() - t
        return row

    objective.prepare(model, x, info)
    if resume:
        history = _read_rows(metrics_path, step)  # type: ignore[arg-type]
        if "loop.generator" in trainer_tensors:
            gen.set_state(trainer_tensors["loop.generator"])
        world.broadcast_(list(model.state_dict().values()))   # the checkpoint rank 0 read
        objective.bind(model, info)
        objective.load_state_dict(state.get("objective", state))
        objective.load_state_tensors({k[len("objective."):]: v.to(device)
                                      for k, v in trainer_tensors.items()
                                      if k.startswith("objective.")})
    else:
        if initialize:
            # A CPU generator of its own: the same seed initialises alike on every device.
            objective.start(model, x, torch.Generator().manual_seed(cfg.seed))
        # Every rank built and initialised the model alike from the same seed (or was handed
        # it); rank 0's copy makes it certain.
        world.broadcast_(list(model.state_dict().values()))
        objective.bind(model, info)
        history = [] if objective.log_every else [
            with_evaluation({"epoch": 0, "step": 0, "seconds": 0.0})]
        if history and callback is not None:
            callback(history[0])
    if metrics_path is not None:
        write_text_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
    train_section = _train_section(objective, cfg)
    epoch_loss = torch.tensor(float(state.get("epoch_loss", 0.0)), dtype=torch.float64,
                              device=device)
    epoch_rows = int(state.get("epoch_rows", 0))
    loss_rows = int(state.get("loss_rows", epoch_rows))
    # Inside an epoch a checkpoint also keeps the generator as it was when the epoch's order
    # was drawn, so a resumed run redraws the same order and then goes on with the generator
    # as it was at the checkpoint (the objective's own draws, e.g. SSM slices).
    epoch_state = trainer_tensors.get("loop.epoch_generator")
    mid_epoch = objective.resumable_mid_epoch and not (world.distributed and
                                                       objective.local_mid_epoch_state)

    def sum_epoch_over_ranks(keep_on_main: bool) -> None:
        """The epoch's loss sums over all ranks; with ``keep_on_main`` (a mid-epoch
        checkpoint) rank 0 holds them and the others restart from zero, so the epoch's end
        sums them again without counting anything twice."""
        nonlocal epoch_rows, loss_rows
        if not world.distributed:
            return
        t = torch.stack([epoch_loss, torch.tensor(float(loss_rows), dtype=torch.float64,
                                                  device=device),
                         torch.tensor(float(epoch_rows), dtype=torch.float64, device=device)])
        world.all_reduce_([t])
        if keep_on_main and not world.is_main:
            t.zero_()
        epoch_loss.copy_(t[0])
        loss_rows, epoch_rows = int(t[1]), int(t[2])

    def checkpoint() -> None:
        if out is None:
            return
        if step % steps_per_epoch:
            sum_epoch_over_ranks(keep_on_main=True)
        if not writes:
            return
        tensors = {"loop.generator": _generator_state(gen)}
        if epoch_state is not None and step % steps_per_epoch:
            tensors["loop.epoch_generator"] = epoch_state
        tensors.update({f"objective.{k}": v for k, v in objective.state_tensors().items()})
        now = seconds0 + time.perf_counter() - t0 - paused
        save_model(model, out, train=train_section, data=data_info, tensors=tensors,
                   state={"step": step, "epoch_loss": float(epoch_loss),
                          "epoch_rows": epoch_rows, "loss_rows": loss_rows, "seconds": now,
                          "objective": objective.state_dict()})

    fh = open(metrics_path, "a", encoding="utf-8") if metrics_path is not None else None
    step_gen = _step_generators(world, cfg.seed, x.device)

    def emit(row: dict[str, Any]) -> None:
        history.append(row)
        if fh is not None:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        if callback is not None:
            callback(row)

    if out is not None and not resume:
        checkpoint()  # the initialised model: an interrupted first epoch resumes from here
    bar = None
    if progress and world.is_main:
        from ..utils.progress import progress_bar

        bar = progress_bar(total, initial=step, desc="train", unit="step")
    stop_at = total if stop_after_steps is None else min(total, stop_after_steps)
    interrupted: list[bool] = []
    previous = defer_sigint(interrupted)
    # What every rank agrees on: in one process the flag itself, in several the flag of any
    # rank at the last agreement (a collective at the same steps on all ranks).
    agreed = interrupted if not world.distributed else []

    def agree() -> None:
        if world.distributed and not agreed and world.any(bool(interrupted), device):
            agreed.append(True)

    order: torch.Tensor | None = None
    pending_order = step % steps_per_epoch != 0
    t_epoch = t_window = time.perf_counter()
    step_window = step
    # CPU threads sized to the cores other processes leave free (utils/threads.py), unless
    # the user fixed the count; on a quiet machine it never changes anything.
    governor = ThreadGovernor() if device.type == "cpu" and not threads_pinned() else None
    try:
        while step < stop_at and not agreed:
            epoch, b = divmod(step, steps_per_epoch)
            if b == 0 or pending_order:
                draw = gen
                if b == 0:
                    epoch_state = _generator_state(gen)
                    epoch_loss.zero_()
                    epoch_rows = loss_rows = 0
                    t_epoch = time.perf_counter()
                elif epoch_state is not None:
                    draw = torch.Generator(device=x.device)
                    draw.set_state(epoch_state)
                order = objective.epoch_order(info, epoch, draw, x.device)
                pending_order = False
            lo, hi = info.shard(step)          # this rank's part of the global batch
            lo, hi = b * B + lo, b * B + hi
            rows = slice(lo, hi) if order is None else order[lo:hi]
            if isinstance(rows, slice):
                batch = x[rows]
                batch_y = None if y is None else y[rows]
            else:   # index_select: advanced indexing x[rows] took 5-7x longer for a batch
                batch = x.index_select(0, rows)
                batch_y = None if y is None else y.index_select(0, rows)
            loss = objective.step(model, batch, generator=step_gen(step) or gen, step=step,
                                  targets=batch_y, rows=rows)
            if loss is not None and batch.shape[0]:
                epoch_loss += loss.to(torch.float64) * batch.shape[0]
                loss_rows += int(batch.shape[0])
            epoch_rows += int(batch.shape[0])
            step += 1
            if governor is not None:
                governor.tick()
            if step % _AGREE_EVERY == 0 or step % steps_per_epoch == 0:
                agree()
            if bar is not None:
                bar.update(1)
            every = objective.log_every
            if every and (step % every == 0 or step == total):
                now = time.perf_counter()
                emit({"step": step, "epoch": step / steps_per_epoch,
                      "seconds": seconds0 + now - t0 - paused,
                      "samples_per_s": (step - step_window) * B / max(now - t_window, 1e-9),
                      **objective.log_row()})
                t_window, step_window = now, step
                postfix = objective.progress_postfix()
                if bar is not None and postfix:
                    bar.set_postfix_str(postfix)
            if step % steps_per_epoch == 0:
                objective.end_epoch(model)
                sum_epoch_over_ranks(keep_on_main=False)
                if not every:
                    mean = float(epoch_loss) / loss_rows if loss_rows else math.nan
                    if not math.isfinite(mean):
                        raise ConfigError(f"objective '{objective.name}' loss became {mean} in "
                                          f"epoch {epoch + 1}; lower the learning rate or set "
                                          f"clip")
                    now = seconds0 + time.perf_counter() - t0 - paused
                    emit(with_evaluation({
                        "epoch": epoch + 1, "step": step, "loss": mean, "seconds": now,
                        "samples_per_s": epoch_rows / max(time.perf_counter() - t_epoch,
                                                          1e-9),
                        **objective.epoch_metrics()}))
                    if bar is not None:
                        bar.set_postfix_str(f"loss={mean:.4g}")
                epoch_loss.zero_()
                epoch_rows = loss_rows = 0
                checkpoint()
                if until is not None and world.any(world.is_main and until(history), device):
                    break
            elif mid_epoch and (
                    (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                    or step == stop_at or agreed):
                checkpoint()
        if agreed:
            raise KeyboardInterrupt
    finally:
        if governor is not None:
            governor.restore()
        restore_sigint(previous)
        if bar is not None:
            bar.close()
        if fh is not None:
            fh.close()
    return history


def _step_generators(world: World, seed: int,
                     device: torch.device) -> Callable[[int], torch.Generator | None]:
    """The generator an objective's step draws from (SSM's directions): in one process None,
    i.e. the loop's own generator, as always; in a distributed run one seeded by (seed, step,
    rank), so the ranks draw independent numbers while the loop's generator, which draws the
    epoch orders, stays the same on every rank (and the checkpoint, global, needs no
    per-rank state)."""
    if not world.distributed:
        return lambda step: None
    gen = torch.Generator(device=device)

    def draw(step: int) -> torch.Generator:
        return gen.manual_seed(((seed * _RANK_SEED_MIX + step) * world.size + world.rank)
                               % 2 ** 63)

    return draw


def _family_name(model: Any, needed: bool) -> str:
    """The registered family of ``model``; any ``nn.Module`` with a ``log_prob`` may still be
    trained in memory by the family-independent (gradient) objectives."""
    try:
        return family_of(model).name
    except ConfigError:
        if needed or not hasattr(model, "log_prob"):
            raise
        return "*"


def _read_rows(path: Path, upto_step: int) -> list[dict]:
    if path is None or not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash; the checkpoint decides what is kept
        if row.get("step", 0) <= upto_step:
            rows.append(row)
    return rows


def fit_density(model: torch.nn.Module, data: torch.Tensor, objective: str = "mle", *,
                epochs: int = 10, batch_size: int | None = None, lr: float = 0.05,
                optimizer: str = "adam", clip: float | None = None, seed: int = 0,
                callback: Callable[[int, float], None] | None = None,
                **objective_options: Any) -> list[float]:
    """Minimise a gradient ``objective`` over ``data`` (N, D); returns the epoch losses.

    A shortcut for :func:`fit` without a run folder: ``batch_size=None`` means full batch
    (the thesis' 2-D runs), ``callback(epoch, mean_loss)`` runs after every epoch.
    """
    family = _family_name(model, needed=False)
    cls = objective_class(family, objective)
    opts = {"lr": lr, "optimizer": optimizer, "clip": clip, **objective_options}
    if "init" not in opts:
        opts["init"] = None
    obj = cls(cls.options_class(**opts))
    rows = fit(model, data, obj, config=FitConfig(epochs=epochs, batch_size=batch_size,
                                                  seed=seed, device=str(data.device)),
               initialize=False,
               callback=None if callback is None else
               (lambda row: callback(row["epoch"], row["loss"]) if "loss" in row else None))
    return [r["loss"] for r in rows if "loss" in r]
