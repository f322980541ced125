r"""Outlier detection quality: the area under the ROC curve, inliers as the positive class.

A detector keeps a sample as an inlier when its score (a log-likelihood: higher means more
typical) is at least a threshold :math:`t`. Sweeping :math:`t` traces the ROC curve

.. math:: \mathrm{TPR}(t) = \frac{|\{i \in \text{inliers}: s_i \ge t\}|}{N_\text{in}}, \qquad
          \mathrm{FPR}(t) = \frac{|\{o \in \text{outliers}: s_o \ge t\}|}{N_\text{out}},

(the paper's "ROC-like curve" plots kept inliers against rejected outliers, i.e. TPR against
1 - FPR, which encloses the same area). The AUROC equals the probability that a random inlier
scores above a random outlier (ties count one half): 1 is a perfect detector, 0.5 chance.
Computed with scikit-learn's ``roc_auc_score`` / ``roc_curve``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["auroc", "roc_curve", "outlier_separation", "as_scores"]


def as_scores(scores: Any, what: str = "scores") -> np.ndarray:
    """Validate scores as a non-empty 1-D float64 array without NaN.

    Infinite values are legal log-likelihoods (a density of 0, or a degenerate component) and
    only their rank matters to the ROC, so -inf / +inf are replaced by values just below / above
    the finite range (scikit-learn refuses infinities).
    """
    return _replace_inf(_validate(scores, what))


def _validate(scores: Any, what: str) -> np.ndarray:
    if hasattr(scores, "detach"):
        scores = scores.detach().to("cpu").double().numpy()
    try:
        a = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers, got {type(scores).__name__}") from None
    if a.ndim != 1:
        raise InputError(f"{what} must be one score per sample (1-D), got shape {a.shape}")
    if a.size == 0:
        raise InputError(f"{what} are empty: need at least one sample")
    if np.isnan(a).any():
        raise InputError(f"{what} contain NaN ({int(np.isnan(a).sum())} of {a.size})")
    return a


def _replace_inf(a: np.ndarray) -> np.ndarray:
    inf = np.isinf(a)
    if not inf.any():
        return a
    finite = a[~inf]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    a = a.copy()
    a[a == -np.inf] = lo - 1.0
    a[a == np.inf] = hi + 1.0
    return a


def _stack(inlier_scores: Any, outlier_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels (1 = inlier) and scores; infinities are replaced jointly so ranks are kept."""
    s_in = _validate(inlier_scores, "inlier scores")
    s_out = _validate(outlier_scores, "outlier scores")
    y = np.concatenate([np.ones(s_in.size, dtype=np.int64), np.zeros(s_out.size, dtype=np.int64)])
    return y, _replace_inf(np.concatenate([s_in, s_out]))


def auroc(inlier_scores: Any, outlier_scores: Any) -> float:
    """Area under the ROC curve of separating inliers (positive) from outliers by score.

    Arguments:
        inlier_scores: (N_in,) scores of known inliers, higher = more typical.
        outlier_scores: (N_out,) scores of known outliers.
    """
    from sklearn.metrics import roc_auc_score

    y, s = _stack(inlier_scores, outlier_scores)
    return float(roc_auc_score(y, s))


def roc_curve(inlier_scores: Any, outlier_scores: Any) -> dict[str, Any]:
    """The ROC curve: ``{"fpr", "tpr", "thresholds"}`` (1-D arrays) and ``"auroc"``.

    ``tpr[i]`` is the fraction of inliers kept and ``fpr[i]`` the fraction of outliers kept when
    samples scoring at least ``thresholds[i]`` are kept. The curve runs from (0, 0) to (1, 1);
    scikit-learn drops collinear points, so it stays short even for many samples.
    """
    from sklearn.metrics import roc_auc_score, roc_curve as sk_roc_curve

    y, s = _stack(inlier_scores, outlier_scores)
    fpr, tpr, thresholds = sk_roc_curve(y, s)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds,
            "auroc": float(roc_auc_score(y, s))}


def outlier_separation(inlier_scores: Any, outlier_scores: Any) -> dict[str, Any]:
    """How well scores separate known inliers from known outliers, in one dict.

    Keys: ``"auroc"``, ``"fpr"``, ``"tpr"``, ``"thresholds"`` (as :func:`roc_curve`),
    ``"n_inliers"``, ``"n_outliers"``, ``"inlier_mean"``, ``"outlier_mean"`` and the scores
    themselves as float64 numpy arrays, ``"inlier_scores"``, ``"outlier_scores"``.
    """
    a, b = _validate(inlier_scores, "inlier scores"), _validate(outlier_scores, "outlier scores")
    curve = roc_curve(a, b)
    return {**curve, "n_inliers": int(a.size), "n_outliers": int(b.size),
            "inlier_mean": float(a.mean()), "outlier_mean": float(b.mean()),
            "inlier_scores": a, "outlier_scores": b}

