"""``deepmix fit-gmm``: a flat GMM trained by EM, SGD, score matching or sliced score matching,
written as a run folder (config.json, weights.safetensors, metrics.jsonl, report.md)."""

from __future__ import annotations

import argparse

from .common import positive_int

HELP = "train a flat Gaussian mixture by EM, SGD, SM or SSM into a run folder"


def _optional_float(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got '{text}'") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Names are checked by the config dataclasses, not by argparse choices, so that a bad value
    # gets the same one-line "deepmix: error: ..." as a bad value in a config.json.
    p.add_argument("--data", default=None,
                   help="halfmoons, spirals, board (the thesis' 10k/10k splits), swissroll, "
                        "sierpinski, mnist, fashion-mnist, digits, or an (N, D) .npy file")
    p.add_argument("--objective", default="em", help="em (default), sgd, sm or ssm")
    p.add_argument("--k", type=positive_int, default=8, help="number of components K")
    p.add_argument("--covariance", default="full", help="full (default) or diag")
    p.add_argument("--parametrization", default="covariance",
                   help="covariance (thesis: Sigma = L L^T + 1e-6 I) or precision")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="EM iterations or passes over the data (default 100)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="rows per gradient step (default: full batch)")
    p.add_argument("--init", default="kmeans", help="kmeans (default) or random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reg-covar", type=float, default=1e-6, help="EM covariance regulariser")
    p.add_argument("--clip", type=_optional_float, default=None, help="gradient-norm clipping")
    p.add_argument("--n-slices", type=positive_int, default=1, help="SSM directions per point")
    p.add_argument("--projection", default="gaussian", help="SSM directions: gaussian or rademacher")
    p.add_argument("--n-train", type=positive_int, default=None,
                   help="use only the first N training rows")
    p.add_argument("--dequantize", action="store_true",
                   help="image data: uniform noise per grey level (required for sm/ssm)")
    p.add_argument("--dtype", default="float64", help="float64 (default) or float32")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (its own options; --epochs may extend it)")


def run(args: argparse.Namespace) -> int:
    from ..training.density_run import (DensityDataConfig, DensityModelConfig,
                                        DensityTrainConfig, load_density_data, train_density)

    import torch

    if args.resume:
        import dataclasses

        from ..training.density_run import read_density_config

        model_cfg, train_cfg, data_cfg = read_density_config(args.out)
        if args.epochs is not None:
            train_cfg = dataclasses.replace(train_cfg, epochs=args.epochs)
        dtype = torch.float64 if model_cfg.dtype == "float64" else torch.float32
        data = load_density_data(data_cfg, dtype)
        _, metrics = train_density(args.out, model_cfg, train_cfg, data_cfg, data=data,
                                   verbose=not args.quiet, resume=True)
        last = metrics[-1]
        print(f"resumed {args.out} to epoch {last['epoch']}: valid LL "
              f"{-last['valid_nll']:.4f} nats")
        return 0
    if args.data is None:
        from ..errors import ConfigError

        raise ConfigError("--data is required (or --resume to continue a run)")

    train_cfg = DensityTrainConfig(
        objective=str(args.objective).lower(), epochs=args.epochs or 100, lr=args.lr,
        batch_size=args.batch_size, init=args.init, seed=args.seed, reg_covar=args.reg_covar,
        clip=args.clip, n_slices=args.n_slices, projection=args.projection)
    data_cfg = DensityDataConfig(name=args.data, n_train=args.n_train,
                                 dequantize=bool(args.dequantize))
    # Validate the model options before loading (possibly large) data.
    DensityModelConfig(n_components=args.k, covariance_type=args.covariance,
                       parametrization=args.parametrization, dtype=args.dtype)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    data = load_density_data(data_cfg, dtype)
    model_cfg = DensityModelConfig(n_components=args.k, n_features=int(data[0].shape[1]),
                                   covariance_type=args.covariance,
                                   parametrization=args.parametrization, dtype=args.dtype)
    _, metrics = train_density(args.out, model_cfg, train_cfg, data_cfg, data=data,
                               verbose=not args.quiet)
    last = metrics[-1]
    print(f"{train_cfg.objective} K={args.k} on {args.data}: train LL {-last['train_nll']:.4f}, "
          f"valid LL {-last['valid_nll']:.4f} nats, {last['seconds']:.2f} s; wrote {args.out}")
    return 0
