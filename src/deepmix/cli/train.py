"""``deepmix train``: train a model of any family (DCGMM, GMM, circuit, DRMM) into a run folder."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from .common import parse_classes, positive_int

HELP = "train a model (DCGMM by default; --model gmm, circuit or drmm) on a data set"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="FAMILY",
                   help="model family: dcgmm (default), gmm, circuit or drmm (on --resume: the "
                        "run's)")
    p.add_argument("--objective", default=None,
                   help="gmm/circuit: em (default), mle (alias sgd), sm or ssm")
    p.add_argument("--k", type=positive_int, default=10,
                   help="gmm: components; circuit: sums per region; drmm: components per "
                        "layer (default 10)")
    p.add_argument("--covariance", default="diag", help="gmm: full, diag (default) or spherical")
    p.add_argument("--structure", default="rat-spn", help="circuit: rat-spn (default) or pd")
    p.add_argument("--depth", type=positive_int, default=3, help="circuit: RAT-SPN depth")
    p.add_argument("--repetitions", type=positive_int, default=5,
                   help="circuit: RAT-SPN repetitions")
    p.add_argument("--pd-pieces", type=positive_int, default=4,
                   help="circuit: Poon-Domingos cuts per side")
    p.add_argument("--dtype", default="float64", help="gmm/circuit: float64 (default) or float32")
    p.add_argument("--arch", help="architecture name (A-G, 1L, 2L-a..2L-e, 3L-a, 3L-b) or spec "
                                  "such as F(8,2)-G(25)-F(11,1)-G(36); required unless --resume")
    p.add_argument("--data", help="mnist, fashion-mnist, digits, cifar10, cifar100, svhn "
                                  "(files you put under $DEEPMIX_DATA), a folder of IDX files "
                                  "or PNG/JPEG images, or an .npy/.npz of images (default "
                                  "mnist; on --resume the run's own)")
    p.add_argument("--classes", help="train on these classes only, e.g. 1-9 or 0,3,5")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="rows per step and process (default: the objective's: 100, or the "
                        "whole data set for flat-GMM batch EM, whose fit does not depend on it)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--lr", type=float, default=None,
                   help="DCGMM: base SGD rate (reference 0.01); gmm/circuit gradient "
                        "objectives: the optimiser's rate (default 0.05)")
    p.add_argument("--delay", type=float, default=0.1,
                   help="GMM layer L starts after delay*L of all steps (reference 0.1)")
    p.add_argument("--centroids-first", type=float, default=None, metavar="SIGMA",
                   help="freeze precisions until sigma <= SIGMA")
    p.add_argument("--dequantize", action="store_true", help="add uniform dequantisation noise")
    p.add_argument("--classifier-temperature", type=float, default=1.0, metavar="T",
                   help="a classifier layer sees tempered responsibilities softmax(log r / T) "
                        "(default 1: the papers' classifier; about 10 classifies better)")
    p.add_argument("--layers", default=None,
                   help="drmm: the number of layers L (default 3); deep-gmm: the layer spec, "
                        "data side first (default hc3,hc3,hc3,bd4; e.g. hc5,hc5,hc5,bd4 or "
                        "hc3,ubd4: full<n>, diag<n>, bd<n>, ubd<m>, hc<k>[x<n>])")
    p.add_argument("--fold", type=positive_int, default=2,
                   help="deep-gmm: fold factor r, images become (H/r, W/r, r*r*C)")
    p.add_argument("--search", default="auto",
                   help="deep-gmm: E-step path search, auto (default), exact, coordinate or "
                        "beam (shared layers, 16 prefixes kept)")
    p.add_argument("--gating", action="store_true",
                   help="deep-gmm: gating networks for the path prior (trained in the last "
                        "--gating-epochs)")
    p.add_argument("--prior", choices=("uniform", "factorised", "gating"), default=None,
                   help="deep-gmm: the path prior: uniform (the paper's, default), factorised "
                        "(learned weights per layer and location, set in closed form by every "
                        "M step) or gating (networks, as --gating)")
    p.add_argument("--gating-epochs", type=int, default=0, metavar="N",
                   help="deep-gmm: the last N epochs train the gates on the last E step's paths")
    p.add_argument("--first-m-epochs", type=positive_int, default=1,
                   help="deep-gmm: epochs (Adam passes) of the first M step (default 1)")
    p.add_argument("--m-epochs", type=positive_int, default=1,
                   help="deep-gmm: epochs of every later M step (default 1)")
    p.add_argument("--warm-start", type=positive_int, default=None, metavar="K",
                   help="deep-gmm: fit a flat diagonal GMM with K components to the training "
                        "images first and start from its exact twin "
                        "(DeepGMM.from_gaussian_mixture); then the default layers are "
                        "hc5,hc5,hc5,diag<K>,bd1,diag2, the objective mle, lr 1e-4")
    p.add_argument("--variance-floor", type=float, default=None, metavar="F",
                   help="deep-gmm --warm-start: the wide twins' variance floor (default 1e-3 "
                        "when the layers hold a diag2 after diag<K>)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS")
    p.add_argument("--preset", default=None,
                   help="drmm: an image hierarchy of patch DRMMs, mnist (paper Table 1) or "
                        "mnist-small (fits a 2-core CPU)")
    p.add_argument("--sigma", default="scalar",
                   help="drmm: scalar (default, one variance per layer) or diagonal")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                   help="train on N local processes (torch.distributed, gloo on CPU, NCCL on "
                        "CUDA; 1 thread each unless --threads); --batch-size is per process. "
                        "Under torchrun the launcher's processes are used instead")


def _run_family(args: argparse.Namespace, family: str) -> int:
    """Train (or resume) a flat-row family through the one training loop."""
    from ..data import load_images
    from ..training import FitConfig, fit, make_objective
    from ..training.checkpoint import load_model, read_config
    from .families import DEFAULT_OBJECTIVE, build_model, describe, model_input

    out = Path(args.out)
    if args.resume:
        saved = read_config(out)
        data_info = saved.get("data", {})
        if "valid_fraction" in data_info:
            from ..errors import ConfigError

            raise ConfigError(f"{out} was written by deepmix fit-gmm (rows with a validation "
                              f"split); continue it with deepmix fit-gmm --out {out} --resume")
        data_name = args.data or data_info.get("name", "mnist")
        classes = parse_classes(args.classes) if args.classes else data_info.get("classes")
        dequantize = bool(data_info.get("dequantize", False))
        model = load_model(out, family=family)
        ds = load_images(data_name, "train", classes=classes)
        objective, config = None, None
    else:
        data_name = args.data or "mnist"
        classes = parse_classes(args.classes)
        dequantize = bool(args.dequantize)
        warm = getattr(args, "warm_start", None)
        if warm is not None and family != "deep-gmm":
            from ..errors import ConfigError

            raise ConfigError(f"--warm-start is a deep-gmm option (it starts a deep GMM from a "
                              f"flat GMM), not one of {family}")
        name = args.objective or ("mle" if warm else DEFAULT_OBJECTIVE.get(family, "mle"))
        lr = 1e-4 if warm and args.lr is None else args.lr
        options = {} if lr is None else {"lr": lr}
        if family == "deep-gmm" and name == "hard-em":
            options.update(first_m_epochs=args.first_m_epochs, m_epochs=args.m_epochs,
                           gating_epochs=args.gating_epochs)
        objective = make_objective(family, name, options or None)   # errors before data
        if name in ("sm", "ssm") and not dequantize:
            from ..errors import ConfigError

            raise ConfigError(f"{name.upper()} on quantised pixels is unbounded below; add "
                              f"--dequantize")
        ds = load_images(data_name, "train", classes=classes)
        model = None if warm else build_model(family, args, ds.shape)
        batch = args.batch_size if args.batch_size is not None else objective.default_batch_size
        config = FitConfig(epochs=args.epochs or 10, batch_size=batch, seed=args.seed,
                           device=args.device, checkpoint_every=args.checkpoint_every)
        data_info = {"name": _data_name(data_name), "split": "train", "classes": classes,
                     "levels": ds.levels, "shape": list(ds.shape), "dequantize": dequantize}
    import torch

    gen = torch.Generator().manual_seed(args.seed)
    images = ds.to_tensor(dequantize=dequantize, generator=gen)
    if not args.resume:
        if model is None:
            model = _warm_start(args, images)
        if _main_rank():
            print(f"training {describe(model)} by {objective.name} on {data_name} ({len(ds)} "
                  f"images, {config.epochs} epochs, batch "
                  f"{'all rows' if config.batch_size is None else config.batch_size}"
                  f"{_per_process()}) into {out}", file=sys.stderr)
    x = model_input(model, images)
    try:
        if args.resume:
            overrides = {"epochs": args.epochs} if args.epochs else {}
            rows = fit(model, x, _saved_objective(out, family), out_dir=out, resume=True,
                       progress=not args.no_progress, data_info=data_info, **overrides)
        else:
            rows = fit(model, x, objective, config=config, out_dir=out,
                       progress=not args.no_progress, data_info=data_info,
                       initialize=getattr(args, "warm_start", None) is None)
    except KeyboardInterrupt:
        if _main_rank():
            print(f"interrupted: checkpoint saved in {out}; continue with "
                  f"deepmix train --out {out} --resume", file=sys.stderr)
        return 130
    last = rows[-1]
    if _main_rank():
        if "loss" in last:
            print(f"epoch {last['epoch']}: loss {last['loss']:.4f}", file=sys.stderr)
        print(f"run folder: {out}")
    return 0


def _warm_start(args: argparse.Namespace, images: Any) -> Any:
    """The deep GMM of ``--warm-start K``: a flat diagonal GMM (deepmix's estimator, seeded by
    ``--seed``) fitted to the training images, as the exact twin of ``--layers``."""
    from ..models import DeepGMM
    from ..training.gaussian_mixture import GaussianMixture

    K = args.warm_start
    layers = args.layers or f"hc5,hc5,hc5,diag{K},bd1,diag2"
    floor = args.variance_floor
    tokens = [t.strip() for t in layers.split(",")]
    if floor is None and f"diag{K}" in tokens and "diag2" in tokens[tokens.index(f"diag{K}"):]:
        floor = 1e-3
    if floor is not None and not (math.isfinite(floor) and floor > 0):
        from ..errors import ConfigError

        # checked before the flat GMM's fit, which takes a while on real data
        raise ConfigError(f"--variance-floor must be a positive number, got {floor!r}")
    rows = images.reshape(images.shape[0], -1)
    if _main_rank():
        print(f"warm start: fitting a flat diagonal GMM with {K} components to {len(rows)} "
              f"images", file=sys.stderr)
    gm = GaussianMixture(K, covariance_type="diag", random_state=args.seed).fit(rows)
    return DeepGMM.from_gaussian_mixture(gm, tuple(images.shape[1:]), fold=args.fold,
                                         layers=layers, dtype=args.dtype, seed=args.seed,
                                         search=args.search, variance_floor=floor)


def _saved_objective(out: Path, family: str):
    from ..training.loop import read_train_section

    return read_train_section(out, family)[0]


def run(args: argparse.Namespace) -> int:
    from ..utils.distributed import launch_local, launched

    if args.nproc > 1 and not launched():
        # torchrun's own launcher runs this same command line once per process.
        argv = getattr(args, "_argv", sys.argv[1:])
        return launch_local(args.nproc, ["-m", "deepmix.cli.main", *argv])
    try:
        return _run(args)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _main_rank() -> bool:
    """Whether this process reports (rank 0, or the only process)."""
    from ..utils.distributed import process_rank

    return process_rank() == 0


def _per_process() -> str:
    """`` per process x N`` in a distributed run (the global batch is N times larger)."""
    import os

    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return f" per process x {size}" if size > 1 else ""


def _run(args: argparse.Namespace) -> int:
    from ..training.checkpoint import read_config, run_family

    family = args.model
    if args.resume:
        saved = run_family(read_config(Path(args.out)))
        if family is not None and family != saved:
            from ..errors import ConfigError

            raise ConfigError(f"{args.out} holds a '{saved}' run; --model {family} does not "
                              f"match (leave --model out on --resume)")
        family = saved
    family = family or "dcgmm"
    from ..models import get_family

    get_family(family)                       # an unknown family is named before anything runs
    if family != "dcgmm":
        return _run_family(args, family)
    return _run_dcgmm(args)


def _run_dcgmm(args: argparse.Namespace) -> int:
    from ..data import load_images
    from ..errors import ConfigError
    from ..layers.classifier import check_temperature
    from ..models import DCGMM
    from ..training import TrainConfig, train
    from ..training.checkpoint import read_config, load_model

    out = Path(args.out)
    if args.resume and args.classifier_temperature != 1.0:
        raise ConfigError("--classifier-temperature is set when a run starts; on a trained "
                          "model use deepmix.inference.set_temperature (then refit the "
                          "classifier)")
    if args.resume:
        saved = read_config(out)
        data_info = saved.get("data", {})
        data_name = args.data or data_info.get("name", "mnist")
        classes = parse_classes(args.classes) if args.classes else data_info.get("classes")
        model = load_model(out)  # rebuilt from config.json; weights replaced by the checkpoint
        overrides = {"epochs": args.epochs} if args.epochs else {}
        ds = load_images(data_name, "train", classes=classes)
        train(model, ds.to_tensor(), ds.labels, out_dir=out, resume=True,
              progress=not args.no_progress, **overrides)
    else:
        if not args.arch:
            raise ConfigError("--arch is required (or --resume to continue a run)")
        check_temperature(args.classifier_temperature)   # before loading any data
        data_name = args.data or "mnist"
        classes = parse_classes(args.classes)
        ds = load_images(data_name, "train", classes=classes)
        model = DCGMM(args.arch, input_shape=ds.shape, seed=args.seed,
                      classifier_temperature=args.classifier_temperature)
        cfg = TrainConfig(epochs=args.epochs or 3,
                          batch_size=100 if args.batch_size is None else args.batch_size,
                          lr=0.01 if args.lr is None else args.lr,
                          delay=args.delay, centroids_first=args.centroids_first,
                          dequantize=args.dequantize, seed=args.seed,
                          checkpoint_every=args.checkpoint_every, device=args.device)
        data_info = {"name": _data_name(data_name), "split": "train", "classes": classes,
                     "levels": ds.levels}
        if _main_rank():
            print(f"training {model.spec()} on {data_name} ({len(ds)} images, "
                  f"{cfg.epochs} epochs, batch {cfg.batch_size}{_per_process()}) into {out}",
                  file=sys.stderr)
        try:
            train(model, ds.to_tensor(), ds.labels, config=cfg, out_dir=out,
                  progress=not args.no_progress, data_info=data_info)
        except KeyboardInterrupt:
            if _main_rank():
                print(f"interrupted: checkpoint saved in {out}; continue with "
                      f"deepmix train --out {out} --resume", file=sys.stderr)
            return 130
    if _main_rank():
        print(f"run folder: {out}")
    return 0


def _data_name(name: str) -> str:
    """A data set name as stored in config.json: a path becomes absolute, so later commands
    find the data from any folder."""
    import os

    return os.path.abspath(name) if os.path.exists(name) else str(name)
