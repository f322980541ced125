"""Argument helpers shared by the commands."""

from __future__ import annotations

import argparse

from ..errors import ConfigError

__all__ = ["parse_classes", "positive_int"]


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
