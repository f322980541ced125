"""Sampling to files: a PNG grid and an .npz of the samples.

(Formerly ``deepmix.inference.sampling``: writing pictures needs :mod:`deepmix.plots`, which only
``experiments`` and ``cli`` may import.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..plots.grids import save_grid
from ..utils.io import atomic_path

__all__ = ["sample_to_files"]


def sample_to_files(model: Any, n: int, png: str | Path, npz: str | Path | None = None, *,
                    ncol: int | None = None, **options: Any) -> tuple[Path, Path]:
    """Draw ``n`` samples (options as :meth:`DCGMM.sample`), write ``png`` and ``npz``.

    The .npz holds ``samples`` (n, H, W, C) float32 in [0, 1], ``labels`` when sampled by
    class, and the scalar sampling options.
    """
    png = Path(png)
    npz = Path(npz) if npz is not None else png.with_suffix(".npz")
    samples = model.sample(n, **options).cpu().numpy().astype(np.float32)
    save_grid(samples, png, ncol=ncol)
    meta = {k: np.asarray(v) for k, v in options.items()
            if isinstance(v, (int, float, str, bool)) and v is not None}
    if options.get("labels") is not None:
        meta["labels"] = np.asarray(options["labels"]).reshape(-1)
    with atomic_path(npz, suffix=".npz") as tmp:
        np.savez_compressed(tmp, samples=samples, **meta)
    return png, npz
