"""Argument helpers shared by the commands."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError

__all__ = ["parse_classes", "positive_int", "top_s_arg", "add_sampling_arguments",
           "sampling_options", "load_run_and_data"]


def parse_classes(text: str | None) -> list[int] | None:
    """``"1,2,5"`` or ``"1-9"`` (or a mix, ``"0,3-5"``) to a sorted list of class ids."""
    if text is None or text.strip() == "":
        return None
    out: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if a > b:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
    except ValueError:
        raise ConfigError(f"bad --classes '{text}': use e.g. 1,2,5 or 1-9") from None
    return sorted(out)


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def top_s_arg(text: str) -> int | list[int]:
    """``"3"`` (one S for every GMM layer) or ``"2,2,2,5"`` (one per GMM layer, lowest first)."""
    values = [positive_int(part.strip()) for part in text.split(",")]
    return values[0] if len(values) == 1 else values


def add_sampling_arguments(p: argparse.ArgumentParser, *, divisor: float = 10.0,
                           top_s: int = 1) -> None:
    """Options shared by the commands that run the backward (sampling) pass."""
    p.add_argument("--top-s", type=top_s_arg, default=top_s,
                   help="S of top-S sampling: one value, or one per GMM layer, lowest first "
                        "(e.g. 2,2,2,5)")
    p.add_argument("--divisor", type=float, default=divisor,
                   help="noise std is 1/(d*divisor); 'inf' for none")
    p.add_argument("--pooling", choices=["dense", "sparse"], default="dense",
                   help="up-sampling of Pooling layers")
    p.add_argument("--sharpen", action="store_true",
                   help="sharpen after Folding/Pooling layers by gradient ascent")
    p.add_argument("--sharpen-iterations", type=int, default=300)
    p.add_argument("--sharpen-rate", type=float, default=0.01,
                   help="step on each sample's objective: the reference's rate / its batch size")
    p.add_argument("--sharpen-wrec", type=float, default=0.0,
                   help="weight of the reconstruction term of sharpening")
    p.add_argument("--sharpen-target", type=int, default=None,
                   help="GMM layer whose loss sharpening raises (default: the next one up)")
    p.add_argument("--seed", type=int, default=0)


def sampling_options(args: argparse.Namespace) -> dict:
    """Keyword options of DCGMM.sample / variants from :func:`add_sampling_arguments`."""
    sharpen = None
    if args.sharpen:
        sharpen = {"iterations": args.sharpen_iterations, "rate": args.sharpen_rate,
                   "w_rec": args.sharpen_wrec, "target": args.sharpen_target}
    return {"top_s": args.top_s, "divisor": args.divisor, "pooling": args.pooling,
            "sharpen": sharpen, "seed": args.seed}


def load_run_and_data(args: argparse.Namespace, family: str | None = "dcgmm"
                      ) -> tuple[Any, str, Any]:
    """(model, data name, dataset) for a command's ``run_dir``, ``--data`` (default: the run's
    own data set), ``--split``, ``--classes`` and ``--device``; a run of another ``family`` than
    the command needs (None: any) is refused with one line naming both."""
    from ..data import load_images
    from ..training.checkpoint import load_model, read_config

    config = read_config(args.run_dir)
    data_name = args.data or config.get("data", {}).get("name", "mnist")
    model = load_model(args.run_dir, device=args.device, family=family)
    ds = load_images(data_name, args.split, classes=parse_classes(args.classes))
    return model, str(data_name), ds
