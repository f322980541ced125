"""Outlier detection with DCGMM (paper "new perspective", Sec. V-B, Table I).

Protocol: train a DCGMM on the training images of classes 1-9 (inliers) of MNIST or
Fashion-MNIST; score the test images of classes 1-9 (inliers) and of class 0 (outliers) by the
position-mean log-likelihood of each GMM layer; report the AUROC (inliers positive), the paper's
figure being the top layer's. Training as in the reference: plain SGD, batch 100, the trainer's
default annealing; the paper trains 25-80 epochs and averages 5 runs.

The paper scores by the test *loss* of each layer (its max-component approximation at the final
sigma); deepmix scores by the true log-likelihood and also reports the annealed loss's AUROC.

Two protocols:

- ``"shared"`` (default): the architectures of Table V as written, every GMM layer sharing its
  parameters over positions, the same number of epochs for every architecture.
- ``"reference"``: the settings of the authors' public experiment scripts for this table
  (repository ``anon-scientist/cvpr22-experiments``, ``scripts/outliers-{A..G}.bash``), which the
  paper summarises as "in some experiments, we disable parameter sharing between input positions
  for specific layers": lower GMM layers *independent* (one GMM per position), D's top layer
  G(25) instead of G(49), per-architecture epochs (A, B, E, F 80; C 15; D 20; G 25) and the
  per-architecture learning-rate factors of their ``bash/DCGMM-*.bash`` layer settings (A:
  lambda_sigma = lambda_pi = 0.5; F, G: lambda_pi = 0, i.e. fixed uniform mixture weights; B-E:
  deepmix's defaults 0.1 / 0.2). See :data:`REFERENCE_PROTOCOL` and
  :data:`REFERENCE_TRAIN_OPTIONS`. Two details of those scripts are not copied: G's layer delays
  0.1/0.15/0.2 (deepmix uses 0.1 per layer) and the reference's normalisation of mixture weights
  over all positions of an independent layer (a bug; deepmix normalises per position).

:func:`detect_outliers` is the measurement for any trained model and any inliers/outliers: the
scores come from :mod:`deepmix.inference.outliers`, their separation from
:func:`deepmix.metrics.auroc.outlier_separation`.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from ..data import load_images
from ..inference.outliers import layer_scores
from ..metrics.auroc import auroc, outlier_separation
from ..models.dcgmm import DCGMM
from ..models.spec import LayerSpec, format_spec, parse_spec, resolve_architecture
from .dcgmm_papers import PUBLISHED as PAPER_FIGURES

__all__ = ["PUBLISHED", "ARCHS", "DATASETS", "PROTOCOLS", "REFERENCE_PROTOCOL",
           "REFERENCE_TRAIN_OPTIONS", "published", "protocol_spec", "protocol_epochs",
           "protocol_train_options", "run_cell", "detect_outliers"]

ARCHS = ("A", "B", "C", "D", "E", "F", "G")
DATASETS = ("mnist", "fashion-mnist")

#: Table I: top-layer AUROC in %, architecture -> (MNIST, Fashion-MNIST).
PUBLISHED: dict[str, tuple[float, float]] = {
    arch: PAPER_FIGURES["outlier_auroc"][arch] for arch in ARCHS}

PROTOCOLS = ("shared", "reference")

#: The authors' outlier scripts: architecture -> (GMM layers made independent, counted from 0;
#: replaced K per GMM layer; epochs).
REFERENCE_PROTOCOL: dict[str, tuple[tuple[int, ...], dict[int, int], int]] = {
    "A": ((), {}, 80),
    "B": ((0,), {}, 80),
    "C": ((0,), {}, 15),
    "D": ((0, 1), {2: 25}, 20),
    "E": ((0, 1), {}, 80),
    "F": ((0, 1, 2), {}, 80),
    "G": ((0, 1, 2), {}, 25),
}

#: The authors' per-architecture layer settings as deepmix training options: their lambda_sigma
#: and lambda_pi are deepmix's ``lr_d`` and ``lr_xi`` (factors on the learning rate); an
#: architecture not listed uses the defaults, which are theirs for B-E.
REFERENCE_TRAIN_OPTIONS: dict[str, dict[str, float]] = {
    "A": {"lr_d": 0.5, "lr_xi": 0.5},
    "F": {"lr_xi": 0.0},
    "G": {"lr_xi": 0.0},
}

INLIER_CLASSES = list(range(1, 10))
OUTLIER_CLASSES = [0]


def published(arch: str, dataset: str) -> float | None:
    """The paper's figure (in %) for ``arch`` on ``dataset``, or None."""
    row = PUBLISHED.get(arch)
    return None if row is None else row[DATASETS.index(dataset)]


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown outlier protocol '{protocol}': use one of {', '.join(PROTOCOLS)}")


def protocol_spec(arch: str, protocol: str = "shared") -> str:
    """The spec string ``arch`` is trained with under ``protocol`` (see the module docstring)."""
    _check_protocol(protocol)
    spec, _ = resolve_architecture(arch)
    if protocol == "shared":
        return spec
    independent, new_k, _ = REFERENCE_PROTOCOL[arch]
    layers = parse_spec(spec)
    out, g = [], 0
    for ls in layers:
        if ls.kind == "G":
            K = new_k.get(g, ls.args[0])
            ls = LayerSpec("G", (K,), g in independent)
            g += 1
        out.append(ls)
    return format_spec(out)


def protocol_epochs(arch: str, protocol: str = "shared", default: int = 25) -> int:
    """Epochs of ``arch`` under ``protocol``: the reference scripts' own, else ``default``."""
    _check_protocol(protocol)
    return REFERENCE_PROTOCOL[arch][2] if protocol == "reference" else default


def protocol_train_options(arch: str, protocol: str = "shared") -> dict[str, float]:
    """Training options of ``arch`` under ``protocol`` (empty: the trainer's defaults)."""
    _check_protocol(protocol)
    return dict(REFERENCE_TRAIN_OPTIONS.get(arch, {})) if protocol == "reference" else {}


def run_cell(arch: str, dataset: str, *, seed: int = 0, epochs: int | None = 3,
             batch_size: int = 100, max_train: int | None = None, eval_batch: int = 1000,
             device: str = "cpu", protocol: str = "shared",
             **train_options: Any) -> dict[str, Any]:
    """Train ``arch`` on classes 1-9 of ``dataset`` and measure its outlier detection.

    ``protocol`` "reference" trains the variant of the authors' scripts (independent lower
    layers, see :func:`protocol_spec`, and their learning-rate factors, see
    :func:`protocol_train_options`); ``epochs=None`` then takes their epochs.
    ``train_options`` (e.g. ``lr_d``) go to the trainer and override the protocol's. Returns a
    JSON-ready dict: per GMM layer the AUROC (in %) of the true log-likelihood and of the
    annealed loss, the top layer's figures, the published one, and wall times.
    """
    spec = protocol_spec(arch, protocol)
    if epochs is None:
        epochs = protocol_epochs(arch, protocol)
    options = {**protocol_train_options(arch, protocol), **train_options}
    train = load_images(dataset, "train", classes=INLIER_CLASSES)
    x_train = train.to_tensor()
    if max_train is not None:
        x_train = x_train[:max_train]
    x_in = load_images(dataset, "test", classes=INLIER_CLASSES).to_tensor()
    x_out = load_images(dataset, "test", classes=OUTLIER_CLASSES).to_tensor()
    model = DCGMM(spec, seed=seed)
    t0 = time.perf_counter()
    model.fit(x_train, epochs=epochs, batch_size=batch_size, seed=seed, device=device,
              progress=False, **options)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    layers = []
    with torch.no_grad():
        for L in range(len(model.gmm_indices)):
            ll_in = _batched(model.log_likelihood, x_in, L, eval_batch)
            ll_out = _batched(model.log_likelihood, x_out, L, eval_batch)
            an_in = _batched(model.annealed_loss, x_in, L, eval_batch)
            an_out = _batched(model.annealed_loss, x_out, L, eval_batch)
            layers.append({"layer": L, "auroc": 100 * auroc(ll_in, ll_out),
                           "auroc_annealed_loss": 100 * auroc(an_in, an_out),
                           "inlier_mean_ll": float(ll_in.mean()),
                           "outlier_mean_ll": float(ll_out.mean())})
    eval_s = time.perf_counter() - t0
    return {"arch": arch, "protocol": protocol, "spec": model.spec(), "dataset": dataset,
            "seed": seed,
            "epochs": epochs, "batch_size": batch_size, "train_options": options,
            "n_train": int(len(x_train)),
            "n_inliers": int(len(x_in)), "n_outliers": int(len(x_out)),
            "top_auroc": layers[-1]["auroc"], "published": published(arch, dataset),
            "layers": layers, "train_seconds": round(train_s, 1),
            "eval_seconds": round(eval_s, 1), "torch_threads": torch.get_num_threads()}


def _batched(fn, x: torch.Tensor, layer: int, batch: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch], layer) for i in range(0, len(x), batch)]).cpu()


def detect_outliers(model: Any, inliers: Any, outliers: Any, layer: int | Sequence[int] | str = -1,
                    *, batch_size: int = 500) -> dict[str, Any]:
    """Score known inliers and outliers with GMM layer(s) and measure the separation by AUROC.

    Returns, for a single ``layer``, ``{"layer", "auroc", "fpr", "tpr", "thresholds",
    "n_inliers", "n_outliers", "inlier_mean", "outlier_mean", "inlier_scores",
    "outlier_scores"}`` (curves and scores as numpy arrays; inliers are the positive class); for
    a list of layers or "all", ``{"layers": {L: that dict}, "best_layer": L}``.
    """
    single = isinstance(layer, (int, np.integer))
    s_in = layer_scores(model, inliers, layer, batch_size=batch_size)
    s_out = layer_scores(model, outliers, layer, batch_size=batch_size)
    results = {}
    for L in s_in:
        a, b = s_in[L].double().numpy(), s_out[L].double().numpy()
        results[L] = {"layer": L, **outlier_separation(a, b)}
    if single:
        return next(iter(results.values()))
    best = max(results, key=lambda L: results[L]["auroc"])
    return {"layers": results, "best_layer": best}
