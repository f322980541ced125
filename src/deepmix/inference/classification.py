r"""Generative-discriminative classification: a linear classifier on unsupervised GMM features.

The GMM layers are trained without labels; the classifier layer C(S) (or C(S, n) on the
concatenated responsibilities of the n highest GMM layers, the papers' best classifier) learns
softmax regression :math:`p(y | x) = \mathrm{softmax}(W \hat A(x) + b)` on their frozen outputs.
:func:`fit_classifier` trains it after (or instead of) the joint SGD of the training loop: the
features are computed once, so each epoch is one pass of a linear model.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..layers import Classifier
from ..layers.classifier import check_temperature

__all__ = ["classifier_features", "fit_classifier", "accuracy", "set_temperature",
           "choose_temperature"]


def _classifier(model: Any) -> Classifier:
    clf = model.classifier
    if clf is None:
        raise InputError(f"model {model.spec()} has no classifier layer: add C(S) or C(S, n) to "
                         f"its spec")
    return clf


def set_temperature(model: Any, temperature: float) -> None:
    """Set the temperature T of the classifier's tempered features (kept in the model config,
    so a saved model predicts with it); see :class:`~deepmix.layers.Classifier`.

    A classifier fitted at another temperature does not fit the new features, so when T changes
    its weights are reset to zero (the start of :func:`fit_classifier`): fit it again.
    """
    clf = _classifier(model)
    t = model.check_classifier_temperature(temperature)
    if t != clf.temperature:
        with torch.no_grad():
            clf.linear.weight.zero_()
            clf.linear.bias.zero_()
    clf.temperature = t
    model.config.classifier_temperature = t


#: Images per forward pass when features of a whole data set are built. Small enough that the
#: pass's temporaries (2L-c: ~8 MB at 128) stay in the allocator's reuse: at 500 their heap
#: fragments added ~0.1 GB to the demo's peak beside the 0.66 GB feature matrix; as fast.
FEATURE_BATCH = 128


def _input_batches(model: Any, x: torch.Tensor, batch_size: int):
    """The classifier's untempered inputs batch by batch: (layer below, [extra sources])."""
    below = len(model.layers) - 2
    for start in range(0, x.shape[0], batch_size):
        outs = model.activations(x[start:start + batch_size], upto=below)
        yield outs[below], [outs[j] for j in model.classifier_sources]


def _filled(batches: Any, n: int) -> list[torch.Tensor]:
    """Concatenate per-batch lists of tensors along dim 0 into buffers allocated once, so the
    peak is one copy of the result rather than the batches plus their ``torch.cat``."""
    out: list[torch.Tensor] = []
    start = 0
    for parts in batches:
        if not out:
            out = [p.new_empty((n, *p.shape[1:])) for p in parts]
        for buf, p in zip(out, parts):
            buf[start:start + p.shape[0]] = p
        start += parts[0].shape[0]
    return out


@torch.no_grad()
def _raw_inputs(model: Any, images: Any, batch_size: int) -> list[torch.Tensor]:
    """The classifier's untempered inputs for all ``images``: the layer below, then each extra."""
    x = model.check_images(images)
    return _filled(([below, *extras] for below, extras in _input_batches(model, x, batch_size)),
                   x.shape[0])


@torch.no_grad()
def classifier_features(model: Any, images: Any, *,
                        batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """The classifier's flattened, concatenated (and tempered) inputs (N, F) for ``images``."""
    clf = _classifier(model)
    x = model.check_images(images)
    # Batch by batch into one buffer, so only one copy of the (large) feature matrix exists.
    return _filled(([clf._flat(below, extras)] for below, extras in
                    _input_batches(model, x, batch_size)), x.shape[0])[0]


def _labels(labels: Any, n: int, S: int, device: torch.device) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels.cpu() if torch.is_tensor(labels) else labels))
    if y.is_floating_point() or y.dim() != 1 or y.shape[0] != n:
        raise InputError(f"labels must be {n} integers, got shape {tuple(y.shape)} "
                         f"dtype {y.dtype}")
    if int(y.min()) < 0 or int(y.max()) >= S:
        raise InputError(f"labels must lie in 0..{S - 1}")
    return y.long().to(device)


def _train_linear(linear: torch.nn.Linear, X: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
                  y: torch.Tensor, *, epochs: int, lr: float, batch_size: int,
                  weight_decay: float, seed: int, rows: torch.Tensor | None = None) -> list[dict]:
    """Softmax regression of ``linear`` on (X, y) by Adam, on the ``rows`` of X only if given
    (no copy of the features); one history row per epoch. ``X`` is the (N, F) features or a
    function of row indices giving theirs (features made batch by batch, never all at once)."""
    features = X if callable(X) else X.__getitem__
    opt = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    n = y.shape[0] if rows is None else rows.shape[0]
    history = []
    for epoch in range(int(epochs)):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen).to(y.device)
        if rows is not None:
            order = rows[order]
        total, correct = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            with torch.enable_grad():
                logits = linear(features(idx))
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            correct += int((logits.argmax(1) == y[idx]).sum())
        history.append({"epoch": epoch + 1, "loss": total / n, "train_accuracy": correct / n,
                        "seconds": time.perf_counter() - t0})
    return history


def fit_classifier(model: Any, images: Any, labels: Any, *, epochs: int = 30,
                   lr: float = 1e-3, batch_size: int = 256, weight_decay: float = 0.0,
                   seed: int = 0, features: torch.Tensor | None = None,
                   temperature: float | None = None) -> list[dict]:
    """Train only the classifier layer (Adam, cross-entropy) on the frozen GMM features.

    Returns one row per epoch (mean training loss, accuracy, seconds). ``features`` may pass
    precomputed :func:`classifier_features` of ``images`` (at the classifier's temperature).
    ``temperature`` first sets the temperature of the tempered features (see
    :func:`set_temperature`, :func:`choose_temperature`).
    """
    clf = _classifier(model)
    if temperature is not None:
        if features is not None and check_temperature(temperature) != clf.temperature:
            raise InputError("fit_classifier: features were given, so the temperature cannot "
                             "change here; call set_temperature before computing them")
        set_temperature(model, temperature)
    X = classifier_features(model, images) if features is None else features
    y = _labels(labels, X.shape[0], clf.S, X.device)
    return _train_linear(clf.linear, X, y, epochs=epochs, lr=lr, batch_size=batch_size,
                         weight_decay=weight_decay, seed=seed)


def choose_temperature(model: Any, images: Any, labels: Any, *,
                       grid: Sequence[float] = (1.0, 3.0, 10.0, 20.0),
                       val_fraction: float = 0.1, epochs: int = 10, lr: float = 1e-3,
                       batch_size: int = 256, seed: int = 0) -> tuple[float, dict[float, float]]:
    """Pick the feature temperature by validation accuracy, and set it on the model.

    A seeded ``val_fraction`` of ``images`` is held out; for each T of ``grid`` a fresh linear
    classifier is fitted on the rest (``epochs`` of Adam) and scored on the held-out part. Every
    T gets the same training budget, and flatter (higher-T) features fit more slowly, so give
    ``epochs`` the budget of the final :func:`fit_classifier`: the choice is the best T *for
    that budget*. The GMM forward pass runs once. Returns (best T, {T: validation accuracy});
    ties go to the smaller T. The model is left at the best T, its classifier reset to zero when
    T changed (see :func:`set_temperature`): fit it afterwards with :func:`fit_classifier`.
    """
    clf = _classifier(model)
    temps = [model.check_classifier_temperature(t) for t in grid]
    if not temps:
        raise InputError("choose_temperature needs at least one temperature in grid")
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    x = model.check_images(images)
    n = x.shape[0]
    n_val = max(1, int(round(val_fraction * n)))
    if n - n_val < 1:
        raise InputError(f"choose_temperature: {n} images leave nothing to fit on")
    y = _labels(labels, n, clf.S, x.device)   # before the (long) forward pass
    raw = _raw_inputs(model, x, FEATURE_BATCH)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).to(y.device)
    val, fit = order[:n_val], order[n_val:]
    previous = clf.temperature
    scores: dict[float, float] = {}
    try:
        def features(rows: torch.Tensor) -> torch.Tensor:
            # Tempered per batch from the stored raw inputs: a tempered copy of all features
            # for every T would double the memory (about 0.65 GB per copy for 2L-c on MNIST).
            return clf._flat(raw[0][rows], [r[rows] for r in raw[1:]])

        for t in temps:
            clf.temperature = t
            linear = torch.nn.Linear(clf.linear.in_features, clf.S).to(y.device, raw[0].dtype)
            torch.nn.init.zeros_(linear.weight)
            torch.nn.init.zeros_(linear.bias)
            _train_linear(linear, features, y, epochs=epochs, lr=lr, batch_size=batch_size,
                          weight_decay=0.0, seed=seed, rows=fit)
            with torch.no_grad():
                hits = sum(int((linear(features(v)).argmax(1) == y[v]).sum())
                           for v in torch.split(val, FEATURE_BATCH))
            scores[t] = hits / val.shape[0]
    finally:
        clf.temperature = previous
    best = max(sorted(scores), key=lambda t: scores[t])
    set_temperature(model, best)
    return best, scores


@torch.no_grad()
def accuracy(model: Any, images: Any, labels: Any, *, batch_size: int = 500) -> float:
    """Fraction of ``images`` whose predicted class equals ``labels``."""
    clf = _classifier(model)
    X = classifier_features(model, images, batch_size=batch_size)
    y = _labels(labels, X.shape[0], clf.S, X.device)
    return float((clf.linear(X).argmax(1) == y).float().mean())
