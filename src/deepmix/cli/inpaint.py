"""``deepmix inpaint DIR``: complete masked test images; grid of originals, inputs, completions."""

from __future__ import annotations

import argparse

from .common import load_run_and_data, positive_int, top_s_arg

HELP = ("in-paint masked test images with a trained run (known mask, or --unknown: corrupted "
        "and detected), report the error")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="DIR", help="run folder")
    p.add_argument("--out", required=True, metavar="FILE.png",
                   help="PNG grid: rows of originals, masked inputs, completions")
    p.add_argument("--data", help="data set (default: the run's own)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--classes", help="only these classes, e.g. 0 or 1-9")
    p.add_argument("--n", type=positive_int, default=16, help="number of images")
    p.add_argument("--mask", default="right-half",
                   help="right-half, left-half, top-half, bottom-half, center, random, or a .npy "
                        "file of booleans (True = observed) shaped (H, W) or (N, H, W)")
    p.add_argument("--fraction", type=float, default=0.5,
                   help="side fraction of 'center', pixel fraction of 'random'")
    p.add_argument("--mode", choices=["mean", "sample"], default="mean",
                   help="posterior mean (least squares) or drawn completions")
    p.add_argument("--iterations", type=positive_int, default=1)
    p.add_argument("--top-s", type=top_s_arg, default=None,
                   help="components kept per position (default: all)")
    p.add_argument("--divisor", type=float, default=float("inf"),
                   help="noise of drawn completions: std 1/(d*divisor)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unknown", action="store_true",
                   help="do not tell the model the mask: corrupt the hidden part (--corruption), "
                        "detect it from per-position inlier statistics, in-paint, report IoU")
    p.add_argument("--corruption", choices=["noise", "checkerboard", "constant"],
                   default="noise", help="what replaces the hidden pixels with --unknown")
    p.add_argument("--c", type=float, default=2.0,
                   help="outlier threshold: log-likelihood < mean - c * std (with --unknown)")
    p.add_argument("--method", choices=["mask", "fuse"], default="mask",
                   help="unknown-mask in-painting: detected pixel mask, or the paper's eq. 9")
    p.add_argument("--stats-images", type=positive_int, default=5000,
                   help="training images for the inlier statistics (with --unknown)")
    p.add_argument("--json", metavar="FILE", help="also write the errors as JSON ('-': stdout)")
    p.add_argument("--device", default="cpu")


def load_mask(text: str, shape: tuple[int, int], fraction: float, seed: int):
    """A named mask or a .npy file (clear errors for missing or malformed files)."""
    from pathlib import Path

    import numpy as np

    from ..errors import InputError
    from ..inference import make_mask

    if text.endswith(".npy"):
        path = Path(text)
        if not path.is_file():
            raise InputError(f"mask file {path} does not exist")
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"mask file {path} is not a readable .npy array: {exc}") from None
    return make_mask(text, shape, fraction=fraction, seed=seed)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_images
    from ..inference import as_observed, inpaint, missing_mse

    model, data_name, ds = load_run_and_data(args, family=None)
    if model.family != "dcgmm":
        return _run_flat(args, model, data_name, ds)
    x = model.check_images(ds.to_tensor()[: args.n])
    obs = as_observed(load_mask(args.mask, x.shape[1:3], args.fraction, args.seed), x)
    train = load_images(data_name, "train").to_tensor()
    mean_fill = torch.where(obs, x, train.mean(0, keepdim=True).to(x))
    result = {"run": str(args.run_dir), "data": str(data_name), "split": args.split,
              "n": int(x.shape[0]), "mask": args.mask, "mode": args.mode,
              "mse_missing_mean_fill": missing_mse(mean_fill, x, obs)}
    if args.unknown:
        return _run_unknown(args, model, x, obs, train, result)
    done = inpaint(model, x, obs, iterations=args.iterations, mode=args.mode, top_s=args.top_s,
                   divisor=args.divisor, seed=args.seed)
    result["mse_missing"] = missing_mse(done, x, obs)
    shown = torch.where(obs, x, torch.full_like(x, 0.5))
    return _write(args, result, [x, shown, done],
                  f"in-painted {x.shape[0]} images ({args.mask}, {args.mode}): MSE on missing "
                  f"pixels {result['mse_missing']:.4f} (data-mean fill "
                  f"{result['mse_missing_mean_fill']:.4f})",
                  "originals, inputs with the hidden part grey, completions")


def _write(args: argparse.Namespace, result: dict, rows: list, summary: str, layout: str) -> int:
    """Grid PNG (one row per tensor in ``rows``), the summary line and the optional JSON."""
    import torch

    from ..plots import save_grid
    from ..utils.io import write_json_output

    save_grid(torch.cat(rows).cpu(), args.out, ncol=rows[0].shape[0])
    print(summary)
    print(f"wrote {args.out} (rows: {layout})")
    if args.json:
        if write_json_output(args.json, result):
            print(f"wrote {args.json}")
    return 0


def _run_unknown(args, model, x, obs, train, result: dict) -> int:
    import torch

    from ..inference import InlierStatistics, corrupt, inpaint_unknown, mask_iou, missing_mse

    corrupted = corrupt(x, ~obs, args.corruption, seed=args.seed)
    stats = InlierStatistics().fit(model, train[: args.stats_images])
    maps = {L: stats.outlier_mask(model, corrupted, L, args.c)
            for L in range(len(model.gmm_indices))}
    done, detected = inpaint_unknown(model, corrupted, maps, method=args.method,
                                     iterations=args.iterations, mode=args.mode,
                                     top_s=args.top_s, divisor=args.divisor, seed=args.seed)
    true_hidden = ~obs.all(dim=-1)
    result.update({"unknown_mask": True, "corruption": args.corruption, "c": args.c,
                   "method": args.method, "iou": mask_iou(detected.cpu(), true_hidden.cpu()),
                   "mse_missing": missing_mse(done, x, obs),
                   "mse_missing_corrupted_input": missing_mse(corrupted, x, obs)})
    shown = torch.where(detected.unsqueeze(-1), torch.full_like(x, 0.5), corrupted)
    return _write(args, result, [x, corrupted, shown, done],
                  f"unknown mask ({args.corruption}, c={args.c}, {args.method}): detected-mask IoU "
                  f"{result['iou']:.3f}; MSE on the hidden pixels {result['mse_missing']:.4f} "
                  f"(corrupted input {result['mse_missing_corrupted_input']:.4f}, data-mean fill "
                  f"{result['mse_missing_mean_fill']:.4f})",
                  "originals, corrupted, detected part grey, completions")


#: --mode -> each flat family's completion method (a circuit's "mean" is its MPE completion).
_FLAT_METHODS = {"gmm": {"mean": "mean", "sample": "sample"},
                 "circuit": {"mean": "mpe", "sample": "sample"}}
_FLAT_METHODS["drmm"] = {"mean": "mean", "sample": "sample"}   # flat and patch DRMM alike


def _run_flat(args: argparse.Namespace, model, data_name: str, ds) -> int:
    """Known-mask completion for families over flat pixel rows (``model.complete``)."""
    import torch

    from ..errors import ConfigError
    from ..inference import as_observed, missing_mse
    from .families import model_input

    if args.unknown:
        raise ConfigError(f"--unknown needs per-position inlier statistics, which only DCGMM "
                          f"runs have; {args.run_dir} holds a '{model.family}' run")
    methods = _FLAT_METHODS.get(model.family)
    if methods is None or not hasattr(model, "complete"):
        raise ConfigError(f"a '{model.family}' run cannot complete images from a mask")
    x = ds.to_tensor()[: args.n]
    obs = as_observed(load_mask(args.mask, x.shape[1:3], args.fraction, args.seed), x)
    gen = torch.Generator().manual_seed(args.seed)
    flat = model.complete(model_input(model, x), obs.reshape(x.shape[0], -1).to(model.device),
                          method=methods[args.mode], generator=gen)
    done = flat.detach().cpu().float().reshape(x.shape).clamp(0.0, 1.0)
    train = ds.to_tensor() if args.split == "train" else None
    from ..data import load_images

    train = train if train is not None else load_images(data_name, "train").to_tensor()
    mean_fill = torch.where(obs, x, train.mean(0, keepdim=True).to(x))
    result = {"run": str(args.run_dir), "data": str(data_name), "split": args.split,
              "n": int(x.shape[0]), "mask": args.mask, "mode": args.mode,
              "method": methods[args.mode], "family": model.family,
              "mse_missing": missing_mse(done, x, obs),
              "mse_missing_mean_fill": missing_mse(mean_fill, x, obs)}
    shown = torch.where(obs, x, torch.full_like(x, 0.5))
    return _write(args, result, [x, shown, done],
                  f"in-painted {x.shape[0]} images with a {model.family} run ({args.mask}, "
                  f"{methods[args.mode]}): MSE on missing pixels {result['mse_missing']:.4f} "
                  f"(data-mean fill {result['mse_missing_mean_fill']:.4f})",
                  "originals, inputs with the hidden part grey, completions")
