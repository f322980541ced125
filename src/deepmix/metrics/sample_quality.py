r"""Sample quality: accuracy of a reference classifier, trained on real data, on generated samples.

The protocol of Gepperth & Pfülb ("A new perspective on probabilistic image modeling", Sec. V-F,
Tab. III): one generative model per class draws samples of that class; a CNN trained on the real
training set classifies them, and the quality figure is its accuracy

.. math:: q = \frac1N \sum_{n=1}^N [\arg\max_c f_c(\hat x_n) = y_n],

so samples that a good classifier cannot recognise as their class count as bad samples.

This module is the metric on arrays: images, their intended classes and a classifier. The paper's
classifier (the Table VII CNN, trained and cached per data set) is
:mod:`deepmix.experiments.reference_cnn`; :mod:`deepmix.experiments.sample_quality` runs the whole
protocol (by data set name, and on per-class models).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError

__all__ = ["sample_quality", "check_labels", "count_images"]


def count_images(images: Any) -> int:
    """Number of images in a batch (its first dimension; 0 for a scalar or an empty batch)."""
    return int(images.shape[0]) if hasattr(images, "shape") and len(images.shape) else 0


def check_labels(labels: Any, n: int, n_classes: int | None = None) -> torch.Tensor:
    """Class labels as an int64 CPU tensor (n,); :class:`InputError` for non-integers, a wrong
    count or (with ``n_classes``) a class outside 0..n_classes-1."""
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(f"labels must be integers, got dtype {y.dtype}")
    y = y.reshape(-1).long()
    if y.numel() != n:
        raise InputError(f"got {y.numel()} labels for {n} images")
    if n_classes is not None and n and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise InputError(f"labels must lie in 0..{n_classes - 1}, got values in "
                         f"{int(y.min())}..{int(y.max())}")
    return y


@torch.no_grad()
def _predict(classifier: Any, images: Any, batch_size: int) -> torch.Tensor:
    """Predicted classes (N,) on the CPU: ``classifier.predict(images, batch_size)`` when it has
    one, else ``classifier(batch)`` per batch, giving logits (n, C) or classes (n,)."""
    if hasattr(classifier, "predict"):
        return torch.as_tensor(classifier.predict(images, batch_size)).cpu().reshape(-1)
    if not callable(classifier):
        raise InputError(f"classifier must have predict() or be callable, got "
                         f"{type(classifier).__name__}")
    out = []
    for i in range(0, count_images(images), batch_size):
        p = torch.as_tensor(classifier(images[i:i + batch_size]))
        out.append((p.argmax(1) if p.dim() == 2 else p.reshape(-1)).cpu().long())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def sample_quality(images: Any, labels: Any, classifier: Any, *, batch_size: int = 500) -> float:
    """Accuracy of ``classifier`` on generated ``images`` of class ``labels``.

    Arguments:
        images: samples in whatever layout the classifier takes (the reference CNN takes
            (N, H, W, C), (N, C, H, W) or (N, H, W), float in [0, 1], of its data set's size).
        labels: the class each sample was generated for, integers (N,).
        classifier: an object with ``predict(images, batch_size)`` returning classes (N,), such
            as :class:`deepmix.experiments.reference_cnn.ReferenceClassifier`, or a callable
            (e.g. a ``torch.nn.Module``) mapping a batch to logits (n, C) or classes (n,). Its
            ``n_classes``, where it has one, bounds the labels. To name a data set instead (its
            cached reference CNN), use :func:`deepmix.experiments.sample_quality.sample_quality`.
        batch_size: images per forward pass.
    """
    if isinstance(classifier, str):
        raise InputError(f"give a classifier, not the data set name '{classifier}': "
                         f"deepmix.experiments.sample_quality.sample_quality loads the reference "
                         f"CNN of a data set by name")
    n = count_images(images)
    if n == 0:
        raise InputError("no images to score")
    y = check_labels(labels, n, getattr(classifier, "n_classes", None))
    return float((_predict(classifier, images, batch_size) == y).double().mean())
