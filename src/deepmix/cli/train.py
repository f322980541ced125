"""``deepmix train``: train a DCGMM on a data set into a run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import parse_classes, positive_int

HELP = "train a DCGMM (architecture name or spec) on a data set"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", help="architecture name (A-G, 1L, 2L-a..2L-e, 3L-a, 3L-b) or spec "
                                  "such as F(8,2)-G(25)-F(11,1)-G(36); required unless --resume")
    p.add_argument("--data", help="mnist, fashion-mnist, digits or a folder of IDX files "
                                  "(default mnist; on --resume the run's own)")
    p.add_argument("--classes", help="train on these classes only, e.g. 1-9 or 0,3,5")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--lr", type=float, default=0.01, help="base SGD rate (reference 0.01)")
    p.add_argument("--delay", type=float, default=0.1,
                   help="GMM layer L starts after delay*L of all steps (reference 0.1)")
    p.add_argument("--centroids-first", type=float, default=None, metavar="SIGMA",
                   help="freeze precisions until sigma <= SIGMA")
    p.add_argument("--dequantize", action="store_true", help="add uniform dequantisation noise")
    p.add_argument("--classifier-temperature", type=float, default=1.0, metavar="T",
                   help="a classifier layer sees tempered responsibilities softmax(log r / T) "
                        "(default 1: the papers' classifier; about 10 classifies better)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
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
        cfg = TrainConfig(epochs=args.epochs or 3, batch_size=args.batch_size, lr=args.lr,
                          delay=args.delay, centroids_first=args.centroids_first,
                          dequantize=args.dequantize, seed=args.seed,
                          checkpoint_every=args.checkpoint_every, device=args.device)
        data_info = {"name": str(data_name), "split": "train", "classes": classes,
                     "levels": ds.levels}
        print(f"training {model.spec()} on {data_name} ({len(ds)} images, "
              f"{cfg.epochs} epochs, batch {cfg.batch_size}) into {out}", file=sys.stderr)
        try:
            train(model, ds.to_tensor(), ds.labels, config=cfg, out_dir=out,
                  progress=not args.no_progress, data_info=data_info)
        except KeyboardInterrupt:
            print(f"interrupted: checkpoint saved in {out}; continue with "
                  f"deepmix train --out {out} --resume", file=sys.stderr)
            return 130
    print(f"run folder: {out}")
    return 0
