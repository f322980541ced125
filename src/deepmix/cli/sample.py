"""``deepmix sample DIR``: top-S sampling (optionally by class, with sharpening) to PNG + .npz."""

from __future__ import annotations

import argparse

from .common import add_sampling_arguments, parse_classes, positive_int, sampling_options

HELP = "draw samples from a trained run (PNG grid + .npz), optionally of given classes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="DIR", help="run folder")
    p.add_argument("--n", type=positive_int, default=64,
                   help="number of samples (per class with --class)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="PNG grid to write")
    p.add_argument("--npz", metavar="FILE.npz", help="samples array (default: next to the PNG)")
    p.add_argument("--class", dest="classes", metavar="CLASSES",
                   help="class-conditional samples through the classifier layer: one class (3), "
                        "a list or range (0-9: one grid row per class)")
    add_sampling_arguments(p)
    p.add_argument("--use-pi", action="store_true", help="top layer draws by pi, not uniformly")
    p.add_argument("--batch-size", type=positive_int, default=1000,
                   help="samples drawn per batch (bounds memory)")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..experiments.sampling import sample_to_files
    from ..training.checkpoint import load_model

    model = load_model(args.run_dir, device=args.device)
    if model.family != "dcgmm":
        return _sample_flat(model, args)
    options = sampling_options(args)
    n, ncol, labels = args.n, None, None
    classes = parse_classes(args.classes)
    if classes is not None:
        labels = torch.tensor(classes).repeat_interleave(args.n)
        model.check_labels(labels, len(labels))      # a clear error before any work
        n, ncol = len(labels), (args.n if len(classes) > 1 else None)
    png, npz = sample_to_files(model, n, args.out, args.npz, use_pi=args.use_pi,
                               batch_size=args.batch_size, labels=labels, ncol=ncol, **options)
    print(f"wrote {png} and {npz}")
    return 0


def _sample_flat(model, args: argparse.Namespace) -> int:
    """Families over flat pixel rows: ``model.sample`` reshaped to the run's image shape."""
    from pathlib import Path

    import numpy as np
    import torch

    from ..errors import InputError
    from ..plots import save_grid
    from ..training.checkpoint import read_config
    from ..utils.io import atomic_path

    if args.classes is not None:
        raise InputError(f"a '{model.family}' run has no classes to condition on (--class)")
    shape = read_config(args.run_dir).get("data", {}).get("shape")
    gen = torch.Generator().manual_seed(args.seed)
    x = model.sample(args.n, generator=gen).detach().cpu().float().clamp(0.0, 1.0)
    if shape is None or int(np.prod(shape)) != x[0].numel():
        raise InputError(f"the run folder {args.run_dir} does not record an image shape for "
                         f"its {x[0].numel()} values; no grid to draw")
    images = x.reshape(args.n, *shape)
    png = save_grid(images, args.out)
    npz = Path(args.npz) if args.npz else Path(args.out).with_suffix(".npz")
    with atomic_path(npz, suffix=".npz") as tmp:
        np.savez_compressed(tmp, samples=images.numpy())
    print(f"wrote {png} and {npz}")
    return 0
