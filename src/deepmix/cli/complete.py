"""``deepmix complete DIR`` (also ``deepmix inpaint DIR``): complete masked test images with a
run of any family that has a conditional (DCGMM, flat GMM, circuit, DRMM incl. the patch DRMM);
grid of originals, inputs, completions; MSE on the hidden pixels against the data-mean fill.

One completion vocabulary for every family: ``--mask`` names the hidden part (or a .npy of
observed pixels), ``--mode mean`` the least-squares fill (DCGMM: top-down posterior mean; flat
GMM: the exact conditional mean E[x_m | x_o]; circuit: its MPE completion; DRMM: the average of
``--samples`` conditional draws, or, for a flat continuous DRMM of at most 2^18 paths K^L,
its exact conditional mean), ``--mode sample`` one drawn completion.
"""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .common import load_run_and_data, positive_int, top_s_arg

HELP = ("complete (in-paint) masked test images with a trained run of any family that can "
        "(known mask; DCGMM also --unknown: corrupted and detected), report the error")

#: Other names of this command (``inpaint`` was its first name, kept for compatibility).
ALIASES = ("inpaint",)


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
    p.add_argument("--samples", type=positive_int, default=None,
                   help="DRMM: conditional draws averaged by --mode mean (default: the model's, "
                        "64 flat, 16 patch)")
    p.add_argument("--iterations", type=positive_int, default=1,
                   help="DCGMM: top-down passes")
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
    completer = _FLAT_METHODS.get(model.family) if model.family != "dcgmm" else None
    if model.family != "dcgmm" and completer is None:
        raise ConfigError(_CANNOT.get(model.family, f"a '{model.family}' run cannot complete "
                                                    f"images from a mask"))
    if args.unknown and model.family != "dcgmm":
        raise ConfigError(f"--unknown needs per-position inlier statistics, which only DCGMM "
                          f"runs have; {args.run_dir} holds a '{model.family}' run")
    x = ds.to_tensor()[: args.n]
    if model.family == "dcgmm":
        x = model.check_images(x)
    obs = as_observed(load_mask(args.mask, x.shape[1:3], args.fraction, args.seed), x)
    train = load_images(data_name, "train").to_tensor()      # the data-mean floor: all classes
    mean_fill = torch.where(obs, x, train.mean(0, keepdim=True).to(x))
    result = {"run": str(args.run_dir), "data": str(data_name), "split": args.split,
              "n": int(x.shape[0]), "mask": args.mask, "mode": args.mode,
              "family": model.family,
              "hidden_fraction": float((~obs).float().mean()),
              "mse_missing_mean_fill": missing_mse(mean_fill, x, obs)}
    if args.unknown:
        return _run_unknown(args, model, x, obs, train, result)
    if model.family == "dcgmm":
        result["method"] = args.mode
        done = inpaint(model, x, obs, iterations=args.iterations, mode=args.mode,
                       top_s=args.top_s, divisor=args.divisor, seed=args.seed)
    else:
        method = completer[args.mode]
        if model.family == "drmm" and method == "mean" and model.exact_completion():
            method = "exact"        # the least-squares fill itself, not an average of draws
        result["method"] = method
        done = _complete_flat(model, x, obs, method, args)
    result["mse_missing"] = missing_mse(done, x, obs)
    shown = torch.where(obs, x, torch.full_like(x, 0.5))
    return _write(args, result, [x, shown, done],
                  f"completed {x.shape[0]} images with a {model.family} run ({args.mask}, "
                  f"{result['method']}): MSE on missing pixels {result['mse_missing']:.4f} "
                  f"(data-mean fill {result['mse_missing_mean_fill']:.4f})",
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


#: --mode -> each flat family's completion method (a circuit's "mean" is its MPE completion;
#: a DRMM's, flat or patch, is the average of --samples conditional draws).
_FLAT_METHODS = {"gmm": {"mean": "mean", "sample": "sample"},
                 "circuit": {"mean": "mpe", "sample": "sample"},
                 "drmm": {"mean": "mean", "sample": "sample"}}
#: Families whose completions average conditional draws (they take ``n_samples``).
_AVERAGES_DRAWS = frozenset({"drmm"})
#: Images per ``model.complete`` call.
_CHUNK = 100
#: Why a family cannot complete, in one line.
_CANNOT = {"deep-gmm": "a 'deep-gmm' run cannot complete images from a mask: its density is a "
                       "mixture over exponentially many paths with full-covariance Gaussians, "
                       "and no exact conditional over them is built (use a dcgmm, gmm, circuit "
                       "or drmm run)"}


def _complete_flat(model, x, obs, method: str, args: argparse.Namespace):
    """Known-mask completion for families over flat pixel rows (``model.complete``)."""
    import torch

    from .families import model_input

    options = {}
    if model.family in _AVERAGES_DRAWS and args.samples is not None:
        options["n_samples"] = args.samples
    gen = torch.Generator().manual_seed(args.seed)
    rows, mask = model_input(model, x), obs.reshape(x.shape[0], -1).to(model.device)
    # Chunks of images bound the memory: a patch DRMM's backward pass holds draws x images
    # rows of every patch grid (1000 MNIST images x 16 draws in one call: 8.7 GB peak).
    flat = torch.cat([model.complete(rows[i:i + _CHUNK], mask[i:i + _CHUNK], method=method,
                                     generator=gen, **options).detach().cpu()
                      for i in range(0, rows.shape[0], _CHUNK)])
    return flat.float().reshape(x.shape).clamp(0.0, 1.0)
