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
