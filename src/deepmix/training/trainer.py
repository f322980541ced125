"""The training loop of DCGMM: every GMM layer ascends its own annealed loss on detached input.

All layers train in the same bottom-up pass over a batch; GMM layer L (from 0) starts after
``delay * L`` of all steps; a linear classifier trains by cross-entropy on labels from step 0.
The loop is deterministic given the seed (initialisation, per-epoch data order, dequantisation
noise), so ``resume=True`` continues an interrupted run to exactly the result of an
uninterrupted one. Host synchronisation happens once per controller window, not per step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, InputError
from ..utils.config import config_from_dict, config_to_dict
from ..utils.device import resolve_device
from ..utils.io import write_text_atomic
from .annealing import SigmaController
from .checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, read_config, save_model
from .config import TrainConfig

__all__ = ["train", "METRICS_FILE"]

METRICS_FILE = "metrics.jsonl"


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen)


def _defer_sigint(flag: list[bool]) -> Any:
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


def _restore_sigint(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def _read_metrics(path: Path, upto_step: int) -> list[dict]:
    if not path.is_file():
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


def train(model: Any, images: Any, labels: Any = None, *, config: TrainConfig | None = None,
          out_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
          data_info: dict | None = None, stop_after_steps: int | None = None,
          **overrides: Any) -> list[dict]:
    """Train ``model`` (a :class:`~deepmix.models.DCGMM`) in place; returns the metrics history.

    Arguments:
        model: the model; moved to ``config.device``.
        images: training images (N, H, W, C) (see :func:`deepmix.models.as_images`).
        labels: class labels (N,) for a classifier layer (ignored by GMM layers).
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields.
        out_dir: run folder for config.json, weights.safetensors (checkpoints) and metrics.jsonl.
        resume: continue the run saved in ``out_dir`` (same data, same seed).
        progress: show a tqdm progress bar with the per-layer losses.
        data_info: description of the data stored in config.json (name, split, classes, N).
        stop_after_steps: stop (with a checkpoint) after this global step, as an interruption.
    """
    from ..layers import GMM, Classifier, Folding  # here: layers import training.annealing

    cfg = config or TrainConfig()
    if overrides:
        try:
            cfg = dataclasses.replace(cfg, **overrides)
        except TypeError as exc:
            raise ConfigError(f"unknown training option: {exc}") from None
    out = Path(out_dir) if out_dir is not None else None
    state: dict[str, Any] = {}
    if resume:
        if out is None:
            raise ConfigError("resume=True needs the run folder out_dir")
        saved = read_config(out)
        if "train" not in saved:
            raise CheckpointError(f"{out / CONFIG_FILE} has no training section: nothing to resume")
        try:
            saved_cfg = config_from_dict(TrainConfig, saved["train"],
                                         where=f"{out / CONFIG_FILE} 'train'")
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
        # Only the number of epochs may change on resume; everything else comes from the run.
        epochs = overrides.get("epochs") or (config.epochs if config is not None else None)
        cfg = dataclasses.replace(saved_cfg, epochs=int(epochs or saved_cfg.epochs))
        state = load_checkpoint(model, out)
        data_info = data_info or saved.get("data")

    device = resolve_device(cfg.device)
    model.to(device)
    x = model.check_images(images)
    N = x.shape[0]
    if N == 0:
        raise InputError("no training images")
    y = None
    clf = model.classifier
    if labels is not None and clf is not None:
        y = torch.as_tensor(labels).to(device=device, dtype=torch.long).reshape(-1)
        if y.shape[0] != N:
            raise InputError(f"got {y.shape[0]} labels for {N} images")
        if int(y.min()) < 0 or int(y.max()) >= clf.S:
            raise InputError(f"labels must lie in 0..{clf.S - 1} for classifier {clf.spec()}")
    data_info = dict(data_info or {})
    if resume and data_info.get("n") not in (None, N):
        raise InputError(f"resume with {N} training images, but the run was trained on "
                         f"{data_info['n']}: use the same data")
    data_info["n"] = N

    B = min(cfg.batch_size, N)
    steps_per_epoch = math.ceil(N / B)
    total = cfg.epochs * steps_per_epoch
    gmms = model.gmm_layers
    starts = [int(cfg.delay * L * total) for L in range(len(gmms))]
    # The sigma controller's first window sets its baseline and the second its first change, so
    # a GMM layer's sigma can first anneal at the end of its third window of training steps.
    need = 3 * cfg.window
    trainable = [L for L in range(len(gmms)) if cfg.delay * L < 1]
    short = [L for L in trainable if total - starts[L] < need]
    if short:
        epochs = cfg.epochs
        while any(epochs * steps_per_epoch - int(cfg.delay * L * epochs * steps_per_epoch) < need
                  for L in trainable):
            epochs += 1
        warnings.warn(
            f"sigma will never anneal in GMM layer(s) {', '.join(map(str, short))}: training "
            f"runs {total} steps ({cfg.epochs} epochs x {steps_per_epoch} batches of {B} of {N} "
            f"images; {', '.join(str(total - starts[L]) for L in short)} for those layers), but "
            f"the controller window is {cfg.window} steps and sigma first moves after 3 windows "
            f"({need} steps); train at least {epochs} epochs or use a smaller batch size",
            UserWarning, stacklevel=2)
    if state:
        controllers = [SigmaController.from_state(s) for s in state["controllers"]]
        acc = [torch.tensor(v, dtype=torch.float64, device=device) for v in state["acc"]]
        acc_n = list(state["acc_n"])
        step = int(state["step"])
        last_losses = list(state.get("last_losses", [None] * len(gmms)))
    else:
        controllers = []
        for g in gmms:
            if cfg.sigma0 is not None:
                g.sigma.fill_(cfg.sigma0)
            controllers.append(SigmaController(float(g.sigma), cfg.sigma_min, cfg.sigma_decay,
                                               cfg.window, cfg.ratio_low, cfg.ratio_high))
        acc = [torch.zeros((), dtype=torch.float64, device=device) for _ in gmms]
        acc_n = [0 for _ in gmms]
        step = 0
        last_losses = [None] * len(gmms)
    clf_acc = torch.tensor(float(state.get("clf_acc", 0.0)), dtype=torch.float64, device=device)
    clf_n = int(state.get("clf_n", 0))
    opt = torch.optim.SGD(clf.parameters(), lr=cfg.classifier_lr) if (clf and y is not None) else None

    train_dict = config_to_dict(cfg)
    history: list[dict] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if not resume and (out / WEIGHTS_FILE).exists():
            raise CheckpointError(f"{out} already holds a run: pass resume to continue it, or "
                                  f"choose another folder")
        history = _read_metrics(out / METRICS_FILE, step) if resume else []
        write_text_atomic(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))

    def state_now() -> dict:
        return {"step": step, "controllers": [c.state_dict() for c in controllers],
                "acc": [float(a) for a in acc], "acc_n": acc_n, "last_losses": last_losses,
                "clf_acc": float(clf_acc), "clf_n": clf_n}

    def checkpoint() -> None:
        if out is not None:
            save_model(model, out, train=train_dict, data=data_info, state=state_now())

    metrics_fh = open(out / METRICS_FILE, "a", encoding="utf-8") if out is not None else None
    bar = None
    if progress:
        from ..utils.progress import progress_bar

        bar = progress_bar(total, initial=step, desc="train", unit="step")
    t_window, step_window = time.perf_counter(), step
    positions = [g.input_shape[0] * g.input_shape[1] for g in gmms]
    gmm_pos = {li: L for L, li in enumerate(model.gmm_indices)}

    def active_after(step: int) -> set[int]:
        return {li for li, L in gmm_pos.items() if step >= starts[L]}

    sources = set(model.classifier_sources) if opt is not None else set()
    order, order_epoch = None, -1
    stop_at = total if stop_after_steps is None else min(total, stop_after_steps)
    interrupted: list[bool] = []
    previous_handler = _defer_sigint(interrupted)
    try:
        while step < stop_at and not interrupted:
            epoch, b = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = _epoch_order(N, cfg.seed, epoch).to(device), epoch
            idx = order[b * B:(b + 1) * B]
            h = x[idx]
            nb = h.shape[0]
            if cfg.dequantize:
                levels = int(data_info.get("levels", 256))
                gen = torch.Generator(device=device).manual_seed(cfg.seed * 7_919 + step)
                noise = torch.rand(h.shape, generator=gen, device=device, dtype=h.dtype)
                h = (h * (levels - 1) + noise) / levels
            gi = 0
            fold = None
            stash: dict[int, torch.Tensor] = {}
            for li, layer in enumerate(model.layers):
                if isinstance(layer, GMM):
                    if step >= starts[gi]:
                        update_d = (cfg.centroids_first is None
                                    or float(layer.sigma) <= cfg.centroids_first)
                        loss_sum, h = layer.train_step(h, cfg.lr, cfg.lr_mu, cfg.lr_d, cfg.lr_xi,
                                                       update_d=update_d, fold=fold)
                        fold = None
                        acc[gi] += loss_sum / (nb * positions[gi])
                        acc_n[gi] += 1
                        if acc_n[gi] == cfg.window:
                            c = controllers[gi]
                            window_sum = float(acc[gi])
                            if c.update_window(window_sum, acc_n[gi]):
                                layer.sigma.fill_(c.sigma)
                            last_losses[gi] = window_sum / acc_n[gi]
                            acc[gi].zero_()
                            acc_n[gi] = 0
                    else:
                        with torch.no_grad():
                            h = layer(h)
                    if li in sources:
                        stash[li] = h
                    gi += 1
                elif isinstance(layer, Classifier):
                    if opt is not None:
                        with torch.enable_grad():
                            loss = layer.loss(h, y[idx], [stash[j] for j in model.classifier_sources])
                            opt.zero_grad(set_to_none=True)
                            loss.backward()
                            opt.step()
                        clf_acc += loss.detach()
                        clf_n += 1
                elif isinstance(layer, Folding) and li + 1 in active_after(step):
                    # The GMM above builds [patches, patches^2] from this layer's input itself.
                    fold = layer
                else:
                    with torch.no_grad():
                        h = layer(h)
            step += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.window == 0 or step == total:
                now = time.perf_counter()
                row = {"step": step, "epoch": step / steps_per_epoch,
                       "loss": last_losses[:],
                       "sigma": [float(g.sigma) for g in gmms],
                       "images_per_s": (step - step_window) * B / max(now - t_window, 1e-9)}
                if clf_n:
                    row["classifier_loss"] = float(clf_acc) / clf_n
                    clf_acc.zero_()
                    clf_n = 0
                t_window, step_window = now, step
                history.append(row)
                if metrics_fh is not None:
                    metrics_fh.write(json.dumps(row) + "\n")
                    metrics_fh.flush()
                if bar is not None:
                    bar.set_postfix_str(" ".join(
                        f"G{i}={v:.2f}" if v is not None else f"G{i}=-" for i, v in enumerate(last_losses))
                        + " sigma=" + ",".join(f"{float(g.sigma):.2g}" for g in gmms))
            if step % steps_per_epoch == 0 or step == stop_at or (
                    cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoint()
        if interrupted:
            # Ctrl-C took effect between two steps, so the checkpoint is a consistent state.
            checkpoint()
            raise KeyboardInterrupt
    finally:
        _restore_sigint(previous_handler)
        if bar is not None:
            bar.close()
        if metrics_fh is not None:
            metrics_fh.close()
    return history
