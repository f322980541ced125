"""The thesis' 2-D density estimation (pc-training spec §6.1): a full-covariance GMM trained by
EM, gradient descent on the NLL (GD), exact score matching (SM) and sliced score matching (SSM).

Data as in the thesis: 20 000 points (seed 42), centred, shuffled, 10 000 train / 10 000 validation
(:func:`deepmix.data.toys.thesis_toy`, :func:`deepmix.data.toys.thesis_train_valid`, re-exported
here as ``thesis_toy`` and ``train_valid``). Init: pi uniform, Sigma = I, means = k-means centres
of the training split (the thesis fitted k-means on all 20 000 points; deepmix keeps validation
out). Gradient objectives run full-batch Adam for T steps at rate lr; EM runs T full-batch
iterations with reg_covar 1e-6 and no convergence test. :data:`PUBLISHED` holds the thesis'
validation log-likelihoods with the chosen (lr, T) of its grid search.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import torch

from ..data.toys import THESIS_TOYS, thesis_toy, thesis_train_valid
from ..errors import ConfigError
from ..models import MixtureDensity
from ..training import GaussianMixture
from ..training.loop import fit_density

__all__ = ["DATASETS", "PUBLISHED", "thesis_toy", "train_valid", "run_cell"]

DATASETS = THESIS_TOYS

#: The thesis' 10 000 / 10 000 split; the data now live in :mod:`deepmix.data.toys`.
train_valid = thesis_train_valid

#: (data, K) -> objective -> (validation mean LL in nats, lr or None for EM, T)
PUBLISHED: dict[tuple[str, int], dict[str, tuple[float, float | None, int]]] = {
    ("halfmoons", 8): {"em": (-1.04, None, 200), "gd": (-1.03, .05, 200), "sm": (-1.08, .025, 200), "ssm": (-1.10, .05, 200)},
    ("halfmoons", 12): {"em": (-1.19, None, 200), "gd": (-1.01, .025, 200), "sm": (-1.09, .01, 200), "ssm": (-1.07, .05, 200)},
    ("halfmoons", 24): {"em": (-1.23, None, 50), "gd": (-1.01, .05, 200), "sm": (-1.04, .05, 200), "ssm": (-1.07, .025, 200)},
    ("spirals", 20): {"em": (-2.80, None, 100), "gd": (-2.79, .05, 200), "sm": (-2.93, .05, 50), "ssm": (-2.92, .025, 200)},
    ("spirals", 40): {"em": (-2.74, None, 50), "gd": (-2.68, .025, 200), "sm": (-2.76, .025, 200), "ssm": (-2.81, .01, 200)},
    ("spirals", 80): {"em": (-2.78, None, 50), "gd": (-2.68, .05, 100), "sm": (-2.81, .01, 100), "ssm": (-2.82, .025, 200)},
    ("board", 8): {"em": (-3.81, None, 50), "gd": (-3.81, .05, 100), "sm": (-3.81, .01, 100), "ssm": (-3.82, .01, 100)},
    ("board", 60): {"em": (-3.64, None, 100), "gd": (-3.59, .025, 200), "sm": (-3.72, .01, 100), "ssm": (-3.72, .01, 100)},
    ("board", 100): {"em": (-3.60, None, 100), "gd": (-3.57, .01, 200), "sm": (-3.73, .025, 50), "ssm": (-3.70, .025, 50)},
}


def run_cell(data: str, K: int, objective: str, *, lr: float | None = None, T: int | None = None,
             seed: int = 0, init: str = "kmeans", record_curve: bool = True,
             valid_curve: bool = False, keep_model: bool = False) -> dict[str, Any]:
    """Train one (data, K, objective) cell; returns validation LL, seconds and the NLL curves.

    ``objective``: ``em``, ``gd``, ``sm`` or ``ssm``; ``lr`` and ``T`` default to the thesis'
    chosen values for the cell (else 0.05 and 200). ``init``: ``kmeans`` or ``random`` (spec
    §6.1; EM's random init is :class:`GaussianMixture`'s: random points, random weights, the data
    covariance for every component). With ``record_curve`` the result holds the training NLL
    after every step (``train_nll_curve``, entry 0 = the initialisation) and the training time
    up to it (``seconds_curve``, evaluation time excluded), with ``valid_curve`` also the
    validation NLL (``valid_nll_curve``); ``keep_model`` adds the trained model under
    ``"model"`` (not JSON-serialisable).
    """
    published = PUBLISHED.get((data, K), {}).get(objective)
    T = T or (published[2] if published else 200)
    lr = lr or (published[1] if published and published[1] else 0.05)
    if objective not in ("em", "gd", "sm", "ssm"):
        raise ConfigError(f"Unknown objective '{objective}'; expected em, gd, sm or ssm")
    train, valid = train_valid(data)
    curve: list[float] = []
    vcurve: list[float] = []
    times: list[float] = []
    t0 = time.perf_counter()
    if objective == "em":
        gm = GaussianMixture(K, covariance_type="full", max_iter=T, tol=0.0, reg_covar=1e-6,
                             init_params="kmeans" if init == "kmeans" else "random",
                             random_state=seed)

        def em_callback(step: int, mean_ll: float, model: GaussianMixture) -> None:
            if valid_curve:
                vcurve.append(-model.score(valid))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gm.fit(train, callback=em_callback if valid_curve else None)
        seconds = gm.seconds_[-1]
        curve = [-v for v in gm.history_] if record_curve else []
        times = list(gm.seconds_) if record_curve else []
        valid_ll = gm.score(valid)
        model: Any = gm
    else:
        gen = torch.Generator().manual_seed(seed)
        model = MixtureDensity(K, 2, "full", dtype=torch.float64)
        model.initialize(train, init, generator=gen)
        paused = 0.0

        def record(step: int, _loss: float) -> None:
            nonlocal paused
            t = time.perf_counter()
            times.append(t - t0 - paused)
            with torch.no_grad():
                curve.append(float(-model.log_prob(train).mean()))
                if valid_curve:
                    vcurve.append(float(-model.log_prob(valid).mean()))
            paused += time.perf_counter() - t

        if record_curve:
            record(0, math.nan)
        fit_density(model, train, "mle" if objective == "gd" else objective, epochs=T, lr=lr,
                    seed=seed, callback=record if record_curve else None)
        seconds = time.perf_counter() - t0 - paused
        with torch.no_grad():
            valid_ll = float(model.log_prob(valid).mean())
    out = {"data": data, "K": K, "objective": objective, "lr": None if objective == "em" else lr,
           "T": T, "seed": seed, "init": init, "valid_ll": valid_ll, "seconds": seconds,
           "published_ll": published[0] if published else None, "train_nll_curve": curve,
           "seconds_curve": times}
    if valid_curve:
        out["valid_nll_curve"] = vcurve
    if keep_model:
        out["model"] = model
    return out
