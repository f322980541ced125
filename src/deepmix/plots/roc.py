"""ROC curves of outlier detection written as PNG (atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError
from ..utils.io import atomic_path

__all__ = ["save_roc_curve"]


def save_roc_curve(curves: Mapping[str, Mapping[str, Any]], path: str | Path, *,
                   title: str = "Outlier detection") -> Path:
    """Plot one or more ROC curves into a PNG at ``path``.

    Arguments:
        curves: label -> a dict with ``"fpr"``, ``"tpr"`` (and optionally ``"auroc"``, shown in
            the legend), e.g. ``{"layer 1": roc_curve(s_in, s_out)}``.
        path: the PNG file.
        title: the figure title.
    """
    # The object-oriented API: no pyplot, so the user's backend (a notebook's) is left alone.
    from matplotlib.figure import Figure

    if not curves:
        raise InputError("no ROC curves to plot")
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    ax = fig.subplots()
    for label, c in curves.items():
        if "fpr" not in c or "tpr" not in c:
            raise InputError(f"ROC curve '{label}' needs 'fpr' and 'tpr'")
        fpr, tpr = np.asarray(c["fpr"], dtype=float), np.asarray(c["tpr"], dtype=float)
        if fpr.shape != tpr.shape or fpr.ndim != 1:
            raise InputError(f"ROC curve '{label}': fpr {fpr.shape} and tpr {tpr.shape} must "
                             f"be 1-D of equal length")
        name = f"{label} (AUROC {100 * float(c['auroc']):.1f}%)" if "auroc" in c else str(label)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("outliers kept (false positive rate)")
    ax.set_ylabel("inliers kept (true positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(str(tmp), format="png")
    return path
