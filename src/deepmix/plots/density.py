r"""Pictures of 2-D densities: log-density heat-maps and sample histograms / scatter plots.

A model is anything with ``log_prob(x) -> (N,)`` on (N, 2) inputs (``MixtureDensity``,
``GaussianMixture``, circuits). The heat-map evaluates :math:`\log p` on a regular
``resolution`` x ``resolution`` grid over ``bounds`` (the thesis' figures use 100 x 100) and shows
it with a floor at ``max - dynamic_range`` nats, because the log-density of a GMM falls
quadratically away from the data and would otherwise spend the whole colour scale on empty space.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..utils.io import atomic_path

__all__ = ["data_bounds", "density_figure", "log_density_grid", "plot_log_density",
           "plot_samples", "save_figure", "subplots"]

Bounds = tuple[float, float, float, float]  # (xmin, xmax, ymin, ymax)


def _points(x: Any, what: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2 or a.shape[1] != 2:
        raise InputError(f"{what} has shape {tuple(a.shape)}; expected (n, 2) points")
    return a.astype(np.float64)


def data_bounds(x: Any, margin: float = 0.1) -> Bounds:
    """A square-ish box around the points x (n, 2), widened by ``margin`` of its extent."""
    a = _points(x, "x")
    lo, hi = a.min(0), a.max(0)
    pad = margin * (hi - lo).max()
    return (float(lo[0] - pad), float(hi[0] + pad), float(lo[1] - pad), float(hi[1] + pad))


@torch.no_grad()
def log_density_grid(model: Any, bounds: Bounds, resolution: int = 100,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Evaluate :math:`\log p` on a grid; returns (xs (R,), ys (R,), log p (R, R)).

    Row i of the result is y = ys[i], column j is x = xs[j] (image orientation for
    ``imshow(origin="lower")``). The grid is passed in the model's own dtype and device.
    """
    if resolution < 2:
        raise InputError(f"resolution must be >= 2, got {resolution}")
    xmin, xmax, ymin, ymax = bounds
    if not (xmax > xmin and ymax > ymin):
        raise InputError(f"bounds {bounds} are empty; expected (xmin, xmax, ymin, ymax)")
    xs, ys = np.linspace(xmin, xmax, resolution), np.linspace(ymin, ymax, resolution)
    gx, gy = np.meshgrid(xs, ys)
    grid = np.stack([gx.ravel(), gy.ravel()], 1)
    ref = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if ref is None and getattr(model, "means_", None) is not None:
        ref = model.means_
    dtype = ref.dtype if ref is not None else torch.float64
    device = ref.device if ref is not None else torch.device("cpu")
    lp = model.log_prob(torch.as_tensor(grid, dtype=dtype, device=device))
    return xs, ys, lp.detach().double().cpu().numpy().reshape(resolution, resolution)


def plot_log_density(ax: Any, model: Any, bounds: Bounds, *, resolution: int = 100,
                     points: Any | None = None, dynamic_range: float = 15.0,
                     title: str | None = None, max_points: int = 2000, cmap: str = "viridis"
                     ) -> np.ndarray:
    """Heat-map of log p on ``ax`` with an optional scatter of ``points`` (data or samples).

    Returns the (resolution, resolution) log-density array that was drawn.
    """
    _, _, lp = log_density_grid(model, bounds, resolution)
    top = float(np.max(lp[np.isfinite(lp)])) if np.isfinite(lp).any() else 0.0
    ax.imshow(np.clip(lp, top - dynamic_range, top), origin="lower", extent=bounds,
              aspect="auto", cmap=cmap, interpolation="nearest")
    if points is not None:
        a = _points(points, "points")[:max_points]
        ax.scatter(a[:, 0], a[:, 1], s=1.0, c="white", alpha=0.35, linewidths=0)
    _finish(ax, bounds, title)
    return lp


def plot_samples(ax: Any, samples: Any, bounds: Bounds, *, bins: int = 100,
                 title: str | None = None, scatter: bool = False, max_points: int = 5000) -> None:
    """A 2-D histogram (the thesis' sample figure) or, with ``scatter``, a scatter plot."""
    a = _points(samples, "samples")
    if scatter:
        a = a[:max_points]
        ax.scatter(a[:, 0], a[:, 1], s=1.0, c="k", alpha=0.4, linewidths=0)
    else:
        xmin, xmax, ymin, ymax = bounds
        ax.hist2d(a[:, 0], a[:, 1], bins=bins, range=[[xmin, xmax], [ymin, ymax]],
                  cmap="magma")
    _finish(ax, bounds, title)


def _finish(ax: Any, bounds: Bounds, title: str | None) -> None:
    ax.set_xlim(bounds[0], bounds[1])
    ax.set_ylim(bounds[2], bounds[3])
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def subplots(nrows: int, ncols: int, size: float = 2.2) -> tuple[Any, np.ndarray]:
    """A matplotlib figure with an (nrows, ncols) array of axes.

    It is a plain :class:`matplotlib.figure.Figure`, not a pyplot one: the user's backend (a
    notebook's, say) is neither switched nor used, and nothing needs closing.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * ncols, size * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG atomically (and close it if pyplot manages it)."""
    import sys

    path = Path(path)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(str(tmp), format="png", dpi=dpi)
    if "matplotlib.pyplot" in sys.modules:  # a figure of the caller's own pyplot
        sys.modules["matplotlib.pyplot"].close(fig)
    return path


def density_figure(path: str | Path, models: Sequence[tuple[str, Any]], data: Any, *,
                   bounds: Bounds | None = None, n_samples: int = 10_000, seed: int = 0,
                   resolution: int = 100) -> Path:
    """One PNG: a column per (name, model), log-density over data on top, samples below.

    Models need ``log_prob`` and ``sample(n, generator=...)`` returning (n, 2) (a tuple's first
    element is taken, as :class:`~deepmix.models.gmm.GaussianMixture` returns labels too).
    """
    bounds = bounds or data_bounds(data)
    fig, axes = subplots(2, len(models))
    for j, (name, model) in enumerate(models):
        plot_log_density(axes[0, j], model, bounds, resolution=resolution, points=data,
                         title=f"{name}: log p")
        s = model.sample(n_samples, generator=torch.Generator().manual_seed(seed))
        s = s[0] if isinstance(s, tuple) else s
        plot_samples(axes[1, j], s, bounds, title=f"{name}: samples")
    return save_figure(fig, path)
