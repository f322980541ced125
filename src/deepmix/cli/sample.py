"""``deepmix sample DIR``: top-S sampling to a PNG grid and an .npz."""

from __future__ import annotations

import argparse

from .common import positive_int

HELP = "draw samples from a trained run (PNG grid + .npz)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="DIR", help="run folder")
    p.add_argument("--n", type=positive_int, default=64, help="number of samples")
    p.add_argument("--out", required=True, metavar="FILE.png", help="PNG grid to write")
    p.add_argument("--npz", metavar="FILE.npz", help="samples array (default: next to the PNG)")
    p.add_argument("--top-s", type=positive_int, default=1, help="S of top-S sampling")
    p.add_argument("--divisor", type=float, default=10.0,
                   help="noise std is 1/(d*divisor); 'inf' for none")
    p.add_argument("--use-pi", action="store_true", help="top layer draws by pi, not uniformly")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=1000,
                   help="samples drawn per batch (bounds memory)")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from ..inference import sample_to_files
    from ..training.checkpoint import load_model

    model = load_model(args.run_dir, device=args.device)
    png, npz = sample_to_files(model, args.n, args.out, args.npz, top_s=args.top_s,
                               divisor=args.divisor, use_pi=args.use_pi, seed=args.seed,
                               batch_size=args.batch_size)
    print(f"wrote {png} and {npz}")
    return 0
