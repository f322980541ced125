"""``deepmix report DIR``: one self-contained HTML page about a trained run."""

from __future__ import annotations

import argparse

from .common import positive_int

HELP = ("write a self-contained HTML report of a trained run: metrics, samples, sharpened and "
        "class-conditional samples, in-painting, ROC curve, clustering")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="DIR", help="run folder")
    p.add_argument("--out", metavar="FILE.html", help="default DIR/report.html")
    p.add_argument("--data", help="data set (default: the run's own)")
    p.add_argument("--n-samples", type=positive_int, default=64)
    p.add_argument("--n-test", type=positive_int, default=1000,
                   help="test images used for the figures")
    p.add_argument("--sharpen-iterations", type=positive_int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from ..experiments.run_report import build_report

    path = build_report(args.run_dir, out=args.out, data=args.data, n_samples=args.n_samples,
                        n_test=args.n_test, sharpen_iterations=args.sharpen_iterations,
                        seed=args.seed, device=args.device)
    print(f"wrote {path} (figures in {path.with_suffix('.json')} and {path.parent / (path.stem + '_files')})")
    return 0
