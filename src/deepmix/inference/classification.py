r"""Generative-discriminative classification: a linear classifier on unsupervised GMM features.

The GMM layers are trained without labels; the classifier layer C(S) (or C(S, n) on the
concatenated responsibilities of the n highest GMM layers, the papers' best classifier) learns
softmax regression :math:`p(y | x) = \mathrm{softmax}(W \hat A(x) + b)` on their frozen outputs.
:func:`fit_classifier` trains it after (or instead of) the joint SGD of the training loop: the
features are computed once, so each epoch is one pass of a linear model.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..layers import Classifier

__all__ = ["classifier_features", "fit_classifier", "accuracy"]


def _classifier(model: Any) -> Classifier:
    clf = model.classifier
    if clf is None:
        raise InputError(f"model {model.spec()} has no classifier layer: add C(S) or C(S, n) to "
                         f"its spec")
    return clf


@torch.no_grad()
def classifier_features(model: Any, images: Any, *, batch_size: int = 500) -> torch.Tensor:
    """The classifier's flattened, concatenated inputs (N, F) for ``images``."""
    clf = _classifier(model)
    x = model.check_images(images)
    below = len(model.layers) - 2
    parts = []
    for start in range(0, x.shape[0], batch_size):
        outs = model.activations(x[start:start + batch_size], upto=below)
        parts.append(clf._flat(outs[below], [outs[j] for j in model.classifier_sources]))
    return torch.cat(parts)


def _labels(labels: Any, n: int, S: int, device: torch.device) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels.cpu() if torch.is_tensor(labels) else labels))
    if y.is_floating_point() or y.dim() != 1 or y.shape[0] != n:
        raise InputError(f"labels must be {n} integers, got shape {tuple(y.shape)} "
                         f"dtype {y.dtype}")
    if int(y.min()) < 0 or int(y.max()) >= S:
        raise InputError(f"labels must lie in 0..{S - 1}")
    return y.long().to(device)


def fit_classifier(model: Any, images: Any, labels: Any, *, epochs: int = 30,
                   lr: float = 1e-3, batch_size: int = 256, weight_decay: float = 0.0,
                   seed: int = 0, features: torch.Tensor | None = None) -> list[dict]:
    """Train only the classifier layer (Adam, cross-entropy) on the frozen GMM features.

    Returns one row per epoch (mean training loss, accuracy, seconds). ``features`` may pass
    precomputed :func:`classifier_features` of ``images``.
    """
    clf = _classifier(model)
    X = classifier_features(model, images) if features is None else features
    y = _labels(labels, X.shape[0], clf.S, X.device)
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    history = []
    for epoch in range(int(epochs)):
        t0 = time.perf_counter()
        order = torch.randperm(X.shape[0], generator=gen).to(X.device)
        total, correct = 0.0, 0
        for start in range(0, X.shape[0], batch_size):
            idx = order[start:start + batch_size]
            logits = clf.linear(X[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            correct += int((logits.argmax(1) == y[idx]).sum())
        history.append({"epoch": epoch + 1, "loss": total / X.shape[0],
                        "train_accuracy": correct / X.shape[0],
                        "seconds": time.perf_counter() - t0})
    return history


@torch.no_grad()
def accuracy(model: Any, images: Any, labels: Any, *, batch_size: int = 500) -> float:
    """Fraction of ``images`` whose predicted class equals ``labels``."""
    clf = _classifier(model)
    X = classifier_features(model, images, batch_size=batch_size)
    y = _labels(labels, X.shape[0], clf.S, X.device)
    return float((clf.linear(X).argmax(1) == y).float().mean())
