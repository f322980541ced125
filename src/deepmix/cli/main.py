"""``deepmix <command>``: train, sample, in-paint and score deep mixture models of images.

Commands: fetch, train, evaluate, sample, inpaint, variants, outliers, cluster, sample-quality,
report, fit-gmm, demo.

Errors a user can cause are printed as one line (``deepmix: error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import DeepmixError
from . import (cluster, demo, evaluate, fetch, fit_gmm, inpaint, outliers, report, sample,
               sample_quality, train, variants)

__all__ = ["main", "build_parser"]

COMMANDS = {"fetch": fetch, "train": train, "evaluate": evaluate, "sample": sample,
            "inpaint": inpaint, "variants": variants, "outliers": outliers,
            "cluster": cluster, "sample-quality": sample_quality, "report": report,
            "fit-gmm": fit_gmm, "demo": demo}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepmix", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def _version() -> str:
    from .. import __version__

    return f"deepmix {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except DeepmixError as exc:
        print(f"deepmix: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepmix: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
