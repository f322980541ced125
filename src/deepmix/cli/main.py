"""``deepmix <command>``: train, sample, in-paint and score deep mixture models of images.

Commands: fetch, train, evaluate, sample, complete (alias inpaint), variants, outliers, cluster,
sample-quality, report, fit-gmm, demo.

Errors a user can cause are printed as one line (``deepmix: error: ...``) with exit status 2.
``deepmix --threads N COMMAND`` (or ``DEEPMIX_THREADS=N``) fixes torch's CPU threads. Without it,
training starts at torch's count (one per core) and yields cores that other processes keep busy
(:class:`deepmix.utils.threads.ThreadGovernor`): thread pools that compete for the same cores
collapse (two 2-thread trainings on 2 cores ran about 100x slower than one).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Sequence

from ..errors import DeepmixError
from ..utils.io import is_stdout, json_stdout
from ..utils.threads import pin_threads
from .common import positive_int
from . import (cluster, complete, demo, evaluate, fetch, fit_gmm, outliers, report, sample,
               sample_quality, train, variants)

__all__ = ["main", "build_parser"]

COMMANDS = {"fetch": fetch, "train": train, "evaluate": evaluate, "sample": sample,
            "complete": complete, "variants": variants, "outliers": outliers,
            "cluster": cluster, "sample-quality": sample_quality, "report": report,
            "fit-gmm": fit_gmm, "demo": demo}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepmix", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads, fixed (default: $DEEPMIX_THREADS, else one per "
                             "free core, adapted while training)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        # A command's other names (``complete`` is also ``inpaint``): one parser, one run.
        p = sub.add_parser(name, aliases=list(getattr(module, "ALIASES", ())),
                           help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        # A private dest: a command's own option may be called --run (sample-quality's is).
        p.set_defaults(_command=module.run)
    return parser


def _version() -> str:
    from .. import __version__

    return f"deepmix {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command line as given: deepmix train --nproc N runs it again in each process.
    args._argv = list(sys.argv[1:] if argv is None else argv)
    threads = args.threads
    if threads is None and os.environ.get("DEEPMIX_THREADS"):
        try:
            threads = positive_int(os.environ["DEEPMIX_THREADS"])
        except argparse.ArgumentTypeError as exc:
            parser.error(f"DEEPMIX_THREADS: {exc}")
    if threads is not None:
        pin_threads(threads)
    try:
        if is_stdout(getattr(args, "json", None)):
            # --json -: the JSON is the command's output on stdout; its report lines go to stderr.
            with json_stdout(sys.stdout), contextlib.redirect_stdout(sys.stderr):
                return int(args._command(args) or 0)
        return int(args._command(args) or 0)
    except DeepmixError as exc:
        print(f"deepmix: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepmix: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
