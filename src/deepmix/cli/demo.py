"""``deepmix demo``: fetch data, train a DCGMM, evaluate, sample and write a report
(argument parsing only; the work is :func:`deepmix.experiments.demo.run_demo`)."""

from __future__ import annotations

import argparse
import sys

from .common import positive_int

__all__ = ["HELP", "add_arguments", "run"]

HELP = ("train 2L-c (+ a classifier on its two GMM layers) on MNIST without class 0, then "
        "sample, in-paint, score class 0 as outliers and write an HTML and a Markdown report")


def _class_or_none(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class id or 'none', got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a class id >= 0 or 'none', got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--data", default="mnist", help="mnist, fashion-mnist or digits")
    p.add_argument("--arch", default="2L-c", help="architecture (default 2L-c)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="default 20 (100 on the small digits set)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="default 100 (20 on the small digits set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-samples", type=positive_int, default=100)
    p.add_argument("--top-s", type=positive_int, default=1)
    p.add_argument("--classifier-epochs", type=int, default=5,
                   help="Adam epochs of the classifier on the frozen GMM features (0: none)")
    p.add_argument("--outlier-class", type=_class_or_none, default=0, metavar="C",
                   help="class held out of training and scored as outliers (default 0; "
                        "'none': train on every class)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..experiments.demo import run_demo

    def log(message: str) -> None:
        for line in message.splitlines():
            print(f"deepmix demo: {line}", file=sys.stderr)

    res = run_demo(args.out, data=args.data, arch=args.arch, epochs=args.epochs,
                   batch_size=args.batch_size, seed=args.seed, n_samples=args.n_samples,
                   top_s=args.top_s, classifier_epochs=args.classifier_epochs,
                   outlier_class=args.outlier_class, device=args.device,
                   progress=not args.no_progress, log=log)
    print(f"deepmix demo: report {res.report_html} (and {res.report_md}); samples {res.samples}; "
          f"metrics {res.metrics}")
    return 0
