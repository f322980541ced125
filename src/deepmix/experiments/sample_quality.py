r"""Sample quality (paper "new perspective", Sec. V-F, Table III): the protocol on trained models.

One generative model per class draws samples of that class; the reference CNN trained on the real
training set (:mod:`deepmix.experiments.reference_cnn`) classifies them, and the figure is its
accuracy (:func:`deepmix.metrics.sample_quality.sample_quality`, a metric on arrays).

This module is the one place for the whole protocol: :func:`sample_quality` takes a data set name
(its cached CNN is loaded, or trained on first use), :func:`sample_quality_of_models` draws and
scores, and the reference CNN's API is re-exported. (Formerly ``deepmix.metrics.sample_quality``.)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..metrics.sample_quality import sample_quality as _accuracy_of_classifier
from .reference_cnn import (ReferenceClassifier, SampleQualityCNN, classifier_path,
                            load_reference_classifier, train_reference_classifier)

__all__ = [
    "SampleQualityCNN",
    "ReferenceClassifier",
    "classifier_path",
    "train_reference_classifier",
    "load_reference_classifier",
    "sample_quality",
    "sample_quality_of_models",
]


def sample_quality(images: Any, labels: Any, dataset: str | ReferenceClassifier, *,
                   batch_size: int = 500, **train_options: Any) -> float:
    """Accuracy of the reference CNN of ``dataset`` on generated ``images`` of class ``labels``.

    Arguments:
        images: samples (N, H, W, C), (N, C, H, W) or (N, H, W), float in [0, 1], of the data
            set's image size.
        labels: the class each sample was generated for, integers (N,).
        dataset: data set name (its cached classifier is loaded or trained) or a
            :class:`ReferenceClassifier`.
        batch_size: images per forward pass.
        train_options: passed to :func:`train_reference_classifier` if one must be trained.
    """
    clf = dataset if isinstance(dataset, ReferenceClassifier) else \
        load_reference_classifier(dataset, **train_options)
    return _accuracy_of_classifier(images, labels, clf, batch_size=batch_size)


def sample_quality_of_models(models: Any, dataset: str | ReferenceClassifier, *,
                             n_per_class: int = 1000, classes: Sequence[int] | None = None,
                             seed: int = 0, batch_size: int = 500,
                             **sample_options: Any) -> dict[str, Any]:
    """The paper's protocol: draw ``n_per_class`` samples per class and score them.

    Arguments:
        models: ``{class: model}`` with one generative model per class (the paper's setup), or
            one model with a classifier layer, sampled class-conditionally by label.
        dataset: data set name or :class:`ReferenceClassifier` (see :func:`sample_quality`).
        n_per_class: samples per class (the paper: 1000).
        classes: the classes to draw (default: the keys of ``models``, or all of the
            classifier's classes).
        seed: class c draws with seed ``seed + c``.
        batch_size: samples drawn and scored per batch.
        sample_options: passed to ``model.sample`` (``top_s``, ``divisor``, ...).

    Returns ``{"accuracy", "per_class": {c: accuracy}, "n_per_class", "classifier": info}``.
    """
    if n_per_class < 1:
        raise InputError(f"n_per_class must be >= 1, got {n_per_class}")
    clf = dataset if isinstance(dataset, ReferenceClassifier) else \
        load_reference_classifier(dataset)
    if isinstance(models, Mapping):
        wanted = list(models) if classes is None else list(classes)
        missing = [c for c in wanted if c not in models]
        if missing:
            raise InputError(f"no model for class(es) {missing}")
    else:
        if getattr(models, "classifier", None) is None:
            raise InputError("give {class: model} with one model per class, or a model with a "
                             "classifier layer C(S) for class-conditional sampling")
        wanted = list(range(clf.net.n_classes)) if classes is None else list(classes)
    per_class: dict[int, float] = {}
    for c in wanted:
        c = int(c)
        if not 0 <= c < clf.net.n_classes:
            raise InputError(f"class {c} is not one of the classifier's 0..{clf.net.n_classes - 1}")
        if isinstance(models, Mapping):
            x = models[c].sample(n_per_class, seed=seed + c, batch_size=batch_size,
                                 **sample_options)
        else:
            x = models.sample(n_per_class, labels=[c], seed=seed + c, batch_size=batch_size,
                              **sample_options)
        per_class[c] = clf.accuracy(x.cpu(), torch.full((n_per_class,), c), batch_size)
    return {"accuracy": float(np.mean(list(per_class.values()))), "per_class": per_class,
            "n_per_class": n_per_class, "classifier": dict(clf.info)}
