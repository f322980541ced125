r"""In-painting: complete images from their observed pixels (known or detected mask).

**Known mask** (deepmix's procedure, beyond the papers' single pass). With :math:`m` the 0/1 mask of
observed pixels:

1. *Upward pass with marginalisation.* Every GMM layer scores only the observed dimensions of its
   diagonal Gaussians, :math:`\log p(a_{obs} | k) = \sum_i m_i \log\mathcal N(a_i; \mu_{ki}, d_{ki}^{-2})`
   (:meth:`deepmix.layers.GMM.log_scores_observed`), and passes up the responsibilities
   :math:`p(k | a_{obs})`. A position counts as observed for the layer above only when all of its
   input dimensions were observed; Folding gathers masks like values, Pooling takes their minimum.
2. *Downward pass conditioned on the observations.* The top GMM draws from its responsibilities
   (paper eq. 7). Every lower GMM layer draws from the posterior
   :math:`p(k) \propto T_k \, p(a_{obs} | k)` of the control signal :math:`T` from above and its own
   observed part; a fully observed position follows its data, a fully missing one follows
   :math:`T`. Diagonal Gaussians make the missing dimensions' conditional mean the centroid.
3. *Paste* the observed pixels back (they are kept bit-exact) and, for ``iterations > 1``,
   repeat with the upper layers seeing the responsibilities of the completed image (the
   likelihood of the observed pixels stays the only evidence at the lowest layer).

``mode="mean"`` replaces each draw by the posterior expectation (the least-squares completion);
``mode="sample"`` draws (top-S, optional noise) for diverse completions.

**Unknown mask** (paper II-B5, eq. 9): positions whose per-position log-likelihood falls below
:math:`\mathrm{mean} - c\cdot\mathrm{std}` of the training statistics are outliers. ``method="fuse"``
is the paper's procedure (control signal at outlier positions, forward activities elsewhere);
``method="mask"`` (default) turns the lowest layer's outlier positions into a pixel mask and runs
the known-mask procedure on it.

The masks themselves (:func:`make_mask`, :func:`as_observed`, :func:`corrupt`) live in
:mod:`deepmix.inference.masks` and are re-exported here.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..layers import Classifier, Folding, Pooling
from .masks import MASKS, as_observed, corrupt, make_mask  # noqa: F401  (moved; kept importable here)

__all__ = ["make_mask", "as_observed", "corrupt", "inpaint", "inpaint_unknown", "flat_gmm_inpaint",
           "missing_mse", "mask_iou", "MASKS"]


def _below_classifier(model: Any) -> int:
    """Index of the highest non-classifier layer."""
    last = len(model.layers) - 1
    return last - 1 if isinstance(model.layers[last], Classifier) else last


def _observed_pass(model: Any, x: torch.Tensor, observed: torch.Tensor,
                   upward: torch.Tensor | None = None,
                   min_observed: float = 1.0) -> tuple[dict, dict]:
    """Upward pass with marginalisation: responsibilities and observed log-likelihoods per GMM.

    ``upward`` (a completed image) makes the layers above the first GMM see its full
    responsibilities, while the evidence :math:`\\log p(a_{obs}|k)` keeps using ``observed``.
    """
    acts: dict[int, torch.Tensor] = {}
    evidence: dict[int, torch.Tensor] = {}
    m = observed.to(x.dtype)
    h = torch.where(observed, x, torch.zeros_like(x))
    up = upward
    for i in range(_below_classifier(model) + 1):
        layer = model.layers[i]
        if isinstance(layer, Folding):
            h, m = layer(h), layer(m)
            up = None if up is None else layer(up)
        elif isinstance(layer, Pooling):
            h, m = layer(h), -layer(-m)
            up = None if up is None else layer(up)
        else:
            ev = layer.log_scores_observed(h, m, prior=False)
            log_pi = torch.log_softmax(layer.xi, dim=-1)
            log_pi = log_pi[0] if log_pi.shape[0] == 1 else log_pi.view(*layer.input_shape[:2], -1)
            acts[i] = torch.softmax(ev + log_pi, dim=-1)
            evidence[i] = ev
            if up is not None:
                # Later passes: the layers above treat the completion as data.
                up = layer(up)
                h, m = up, torch.ones_like(up)
            else:
                seen = m.mean(dim=-1, keepdim=True) >= min_observed - 1e-6
                h, m = acts[i], seen.to(x.dtype).expand(*seen.shape[:-1], layer.K)
    return acts, evidence


@torch.no_grad()
def inpaint(model: Any, images: Any, observed: Any, *, iterations: int = 1, mode: str = "mean",
            top_s: int | Sequence[int] | None = None, divisor: float = math.inf,
            pooling: str = "dense",
            sharpen: Any = None, seed: int | None = 0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Complete ``images`` (N, H, W, C) in [0, 1] whose pixels are known where ``observed``.

    Arguments:
        model: a trained :class:`~deepmix.models.DCGMM`.
        images: the images; values at unobserved pixels are ignored (but must be finite).
        observed: boolean mask, True = known (see :func:`as_observed` for shapes).
        iterations: passes; later passes let the upper layers see the current completion.
        mode: "mean" (posterior expectation, least squares) or "sample" (draws).
        top_s: components kept per position; default all (posterior mean / posterior draws).
        divisor, pooling, sharpen: as in :meth:`DCGMM.sample` (``divisor=inf``: no noise).
        seed, generator: randomness of ``mode="sample"``.

    Returns the completed images (N, H, W, C) in the model's dtype; observed pixels equal the
    input (converted to that dtype and layout) bit for bit.
    """
    if mode not in ("mean", "sample"):
        raise InputError(f"in-painting mode must be 'mean' or 'sample', got '{mode}'")
    if int(iterations) < 1:
        raise InputError(f"iterations must be >= 1, got {iterations}")
    if top_s is None:
        top_s = max(g.K for g in model.gmm_layers)
    x = model.check_images(images)
    obs = as_observed(observed, x)
    gen = model._generator(generator, seed)
    from .sharpening import sharpening_hook

    refine = sharpening_hook(model, sharpen)
    top = max(model.gmm_indices)
    out = x
    current: torch.Tensor | None = None
    for _ in range(int(iterations)):
        acts, evidence = _observed_pass(model, x, obs, upward=current)

        def fuse(i: int, t: torch.Tensor | None) -> torch.Tensor:
            if i == top or t is None:
                return acts[i]
            return torch.softmax(torch.log(t.clamp_min(1e-6)) + evidence[i], dim=-1)

        gen_x = model.top_down(None, top, n=x.shape[0], top_s=top_s, divisor=divisor,
                               pooling=pooling, mode=mode, generator=gen, fuse=fuse, refine=refine)
        out = torch.where(obs, x, gen_x.clamp(0.0, 1.0))
        current = out
    return out


@torch.no_grad()
def inpaint_unknown(model: Any, images: Any, outliers: Mapping[int, Any], *,
                    method: str = "mask", threshold: float = 0.5, iterations: int = 1,
                    mode: str = "mean", top_s: int | Sequence[int] | None = None,
                    divisor: float = math.inf,
                    seed: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Complete images whose corrupted part is *not* given (paper II-B5).

    Arguments:
        model: a trained DCGMM.
        images: (N, H, W, C) corrupted images.
        outliers: per GMM number (0-based, negative from the top) a boolean (N, H', W') map of
            outlier positions of that layer, e.g. from
            :meth:`deepmix.inference.outliers.InlierStatistics.outlier_mask`. The lowest GMM
            layer's map is required.
        method: "mask" (the lowest layer's outliers become a pixel mask, then :func:`inpaint`) or
            "fuse" (paper eq. 9: at every GMM layer below the top the control signal replaces
            the forward activities at outlier positions; layers without a map use the control
            signal everywhere).
        threshold: a pixel is detected as corrupted when at least this fraction of the lowest
            GMM layer's patches covering it are outliers.

    Returns (completed images, detected mask of corrupted pixels (N, H, W)).
    """
    if method not in ("mask", "fuse"):
        raise InputError(f"method must be 'mask' or 'fuse', got '{method}'")
    x = model.check_images(images)
    N = x.shape[0]
    maps: dict[int, torch.Tensor] = {}
    for key, value in outliers.items():
        try:
            number = int(key)
            t = torch.as_tensor(np.ascontiguousarray(
                value.cpu() if torch.is_tensor(value) else value)).bool()
        except (TypeError, ValueError):
            raise InputError(f"outlier maps must be {{GMM number: boolean (N, H, W) array}}, got "
                             f"key {key!r} with a {type(value).__name__}") from None
        idx = model._gmm_layer_index(number)
        H, W, _ = model.layers[idx].input_shape
        if tuple(t.shape) != (N, H, W):
            raise InputError(f"outlier map of GMM {key} must be (N, H, W) = ({N}, {H}, {W}), got "
                             f"{tuple(t.shape)}")
        maps[idx] = t.to(device=x.device, dtype=torch.bool)
    first = model.gmm_indices[0]
    if first not in maps:
        raise InputError("the outlier map of the lowest GMM layer (0) is required")
    # The pixel mask: carry the lowest layer's outlier indicator down its Folding/Pooling layers.
    ind = maps[first].to(x.dtype).unsqueeze(-1).expand(-1, -1, -1, model.layers[first].D)
    for i in range(first - 1, -1, -1):
        layer = model.layers[i]
        ind = layer.backwards(ind, mode="dense") if isinstance(layer, Pooling) else layer.backwards(ind)
    detected = ind.mean(-1) >= threshold                                    # (N, H, W)
    if method == "mask":
        return inpaint(model, x, ~detected, iterations=iterations, mode=mode, top_s=top_s,
                       divisor=divisor, seed=seed), detected
    acts = {i: a for i, a in zip(model.gmm_indices, _gmm_activations(model, x))}
    top = max(model.gmm_indices)

    def fuse(i: int, t: torch.Tensor | None) -> torch.Tensor:
        if i == top or t is None:
            return acts[i]
        if i not in maps:
            return t
        return torch.where(maps[i].unsqueeze(-1), t, acts[i])

    if top_s is None:
        top_s = max(g.K for g in model.gmm_layers)
    gen = model._generator(None, seed)
    gen_x = model.top_down(None, top, n=N, top_s=top_s, divisor=divisor, mode=mode,
                           generator=gen, fuse=fuse)
    keep = ~detected.unsqueeze(-1).expand_as(x)
    return torch.where(keep, x, gen_x.clamp(0.0, 1.0)), detected


def _gmm_activations(model: Any, x: torch.Tensor) -> list[torch.Tensor]:
    outs = model.activations(x, upto=max(model.gmm_indices))
    return [outs[i] for i in model.gmm_indices]


@torch.no_grad()
def flat_gmm_inpaint(gm: Any, images: Any, observed: Any) -> torch.Tensor:
    r"""Conditional mean :math:`E[x_{miss} | x_{obs}] = \sum_k p(k|x_{obs}) \mu_{k,miss}` of a flat
    diagonal (or spherical) :class:`~deepmix.training.GaussianMixture`; the baseline of the
    in-painting benchmark. Observed pixels are kept."""
    if getattr(gm, "covariance_type", None) not in ("diag", "spherical"):
        raise InputError("flat_gmm_inpaint needs a fitted GaussianMixture with diag or "
                         "spherical covariances")
    x = torch.as_tensor(np.asarray(images.cpu() if torch.is_tensor(images) else images))
    if not x.is_floating_point():
        raise InputError(f"images must be floats in [0, 1], got dtype {x.dtype}")
    x = x.to(torch.float64)
    if x.dim() == 3:
        x = x.unsqueeze(-1)
    if x.dim() != 4:
        raise InputError(f"images must be (N, H, W) or (N, H, W, C), got {tuple(x.shape)}")
    obs = as_observed(observed, x)
    N = x.shape[0]
    X = x.reshape(N, -1)
    M = obs.reshape(N, -1).to(torch.float64)
    mu = torch.as_tensor(gm.means_).to("cpu", torch.float64)                # (K, D)
    var = torch.as_tensor(gm.covariances_).to("cpu", torch.float64)
    if X.shape[1] != mu.shape[1]:
        raise InputError(f"images have {X.shape[1]} pixel values, the GMM models "
                         f"{mu.shape[1]} dimensions")
    if var.dim() == 1:
        var = var.unsqueeze(1).expand_as(mu)
    prec = 1.0 / var
    Xm = X * M
    ll = (Xm * Xm) @ prec.T - 2.0 * Xm @ (prec * mu).T + M @ (prec * mu * mu).T
    ll = -0.5 * (ll + M @ torch.log(2 * math.pi * var).T)
    post = torch.softmax(ll + torch.log(torch.as_tensor(gm.weights_).to("cpu", torch.float64)),
                         dim=1)
    fill = post @ mu
    out = torch.where(M > 0, X, fill).reshape(x.shape)
    return out.to(torch.float32)


def missing_mse(completed: Any, truth: Any, observed: Any) -> float:
    """Mean squared error over the unobserved pixels."""
    c = torch.as_tensor(np.asarray(completed.cpu() if torch.is_tensor(completed) else completed),
                        dtype=torch.float64)
    t = torch.as_tensor(np.asarray(truth.cpu() if torch.is_tensor(truth) else truth),
                        dtype=torch.float64)
    if c.shape != t.shape:
        raise InputError(f"completed {tuple(c.shape)} and true images {tuple(t.shape)} differ")
    if c.dim() == 3:
        c, t = c.unsqueeze(-1), t.unsqueeze(-1)
    miss = ~as_observed(observed, c).cpu()
    if not bool(miss.any()):
        raise InputError("the mask hides no pixel: nothing to score")
    return float(((c - t) ** 2)[miss].mean())


def mask_iou(detected: Any, true: Any) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a = torch.as_tensor(np.asarray(detected.cpu() if torch.is_tensor(detected) else detected)).bool()
    b = torch.as_tensor(np.asarray(true.cpu() if torch.is_tensor(true) else true)).bool()
    if a.shape != b.shape:
        raise InputError(f"masks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union
