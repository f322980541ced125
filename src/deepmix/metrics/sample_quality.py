r"""Sample quality: accuracy of a reference CNN, trained on real data, on generated samples.

The protocol of Gepperth & Pfülb ("A new perspective on probabilistic image modeling", Sec. V-F,
Tab. III): one generative model per class draws samples of that class; a CNN trained on the real
training set classifies them, and the quality figure is its accuracy

.. math:: q = \frac1N \sum_{n=1}^N [\arg\max_c f_c(\hat x_n) = y_n],

so samples that a good classifier cannot recognise as their class count as bad samples.

The CNN is the paper's Table VII: Dropout(0.1), Conv3x3(64)/ReLU, Conv3x3(64)/ReLU, MaxPool(2),
Conv3x3(64)/ReLU, MaxPool(2), Conv3x3(64)/ReLU, MaxPool(2), Dense(350)/ReLU, Dropout(0.1),
Dense(350)/ReLU, Dense(350)/ReLU, Dense(n_classes)/softmax. The paper trains it with Adam (rate
0.01, batch 100, 15 epochs). Convolutions use Keras' default 'valid' padding when the image is
large enough (28x28 leaves a 1x1x64 map); smaller images (the 8x8 digits) would shrink to nothing,
so they use 'same' padding instead (8x8 leaves 1x1x64 too).

A trained classifier is cached per data set at ``cache_dir()/classifiers/<dataset>.safetensors``
(written atomically, never pickled) with its facts and a SHA-256 digest of its weights in the
header; a file that fails to parse or to match its digest is reported and trained again.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..utils.io import atomic_path

__all__ = [
    "SampleQualityCNN",
    "ReferenceClassifier",
    "classifier_path",
    "train_reference_classifier",
    "load_reference_classifier",
    "sample_quality",
    "sample_quality_of_models",
]

#: Version of the network layout and file format; a cached file of another version is retrained.
FORMAT = "deepmix-sample-quality-cnn/1"


class SampleQualityCNN(nn.Module):
    """The CNN of the paper's Table VII, for (N, C, H, W) float images in [0, 1].

    Arguments:
        input_shape: (H, W, C) of the images.
        n_classes: number of classes (10 for MNIST, Fashion-MNIST and digits).
        padding: "valid", "same" or None (None: "valid" where the image leaves at least a 1x1
            map after the four convolutions and three poolings, else "same").
    """

    def __init__(self, input_shape: Sequence[int] = (28, 28, 1), n_classes: int = 10,
                 padding: str | None = None) -> None:
        super().__init__()
        H, W, C = (int(v) for v in input_shape)
        if padding is None:
            padding = "valid" if min(_valid_size(H), _valid_size(W)) >= 1 else "same"
        if padding not in ("valid", "same"):
            raise InputError(f"unknown padding '{padding}'; expected 'valid' or 'same'")
        pad = 0 if padding == "valid" else 1
        size_h, size_w = (_valid_size(H), _valid_size(W)) if pad == 0 else (_same_size(H), _same_size(W))
        if min(size_h, size_w) < 1:
            raise InputError(f"images of {H}x{W} are too small for the sample-quality CNN")
        self.input_shape = (H, W, C)
        self.n_classes = int(n_classes)
        self.padding = padding

        def conv(c_in: int) -> nn.Conv2d:
            return nn.Conv2d(c_in, 64, 3, padding=pad)

        self.features = nn.Sequential(
            nn.Dropout(0.1),
            conv(C), nn.ReLU(), conv(64), nn.ReLU(), nn.MaxPool2d(2),
            conv(64), nn.ReLU(), nn.MaxPool2d(2),
            conv(64), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * size_h * size_w, 350), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(350, 350), nn.ReLU(),
            nn.Linear(350, 350), nn.ReLU(),
            nn.Linear(350, self.n_classes),  # logits; the softmax lives in the loss / argmax
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, n_classes) of images (N, C, H, W)."""
        return self.head(self.features(x))


def _valid_size(n: int) -> int:
    """Side length after the Table VII stack with 'valid' convolutions (floor pooling)."""
    n = n - 4  # two 3x3 convolutions
    n = n // 2 - 2  # pool, conv
    n = n // 2 - 2  # pool, conv
    return n // 2


def _same_size(n: int) -> int:
    return n // 2 // 2 // 2


@dataclass
class ReferenceClassifier:
    """A trained :class:`SampleQualityCNN` with the facts of its training.

    Attributes:
        net: the network (in eval mode).
        info: data set, input shape, classes, epochs, seed, learning rate, test accuracy,
            training seconds, format.
    """

    net: SampleQualityCNN
    info: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def predict(self, images: Any, batch_size: int = 500) -> torch.Tensor:
        """Predicted classes (N,) of images (N, H, W, C), (N, C, H, W) or (N, H, W) in [0, 1]."""
        x = _as_nchw(images, self.net.input_shape)
        self.net.eval()
        out = [self.net(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def accuracy(self, images: Any, labels: Any, batch_size: int = 500) -> float:
        """Fraction of ``images`` classified as their ``labels``."""
        y = _check_labels(labels, _count(images), self.net.n_classes)
        return float((self.predict(images, batch_size) == y).double().mean())


def _count(images: Any) -> int:
    return int(images.shape[0]) if hasattr(images, "shape") and len(images.shape) else 0


def _as_nchw(images: Any, shape: Sequence[int]) -> torch.Tensor:
    from ..models.dcgmm import as_images  # late: models import layers, not needed for training

    x = as_images(images, shape, what="images for the sample-quality CNN")
    return x.permute(0, 3, 1, 2).contiguous()


def _check_labels(labels: Any, n: int, n_classes: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(f"labels must be integers, got dtype {y.dtype}")
    y = y.reshape(-1).long()
    if y.numel() != n:
        raise InputError(f"got {y.numel()} labels for {n} images")
    if n and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise InputError(f"labels must lie in 0..{n_classes - 1}, got values in "
                         f"{int(y.min())}..{int(y.max())}")
    return y


def classifier_path(dataset: str, seed: int = 0) -> Path:
    """Where the reference classifier of ``dataset`` trained with ``seed`` is cached (the
    paper averages its figures over several CNN runs: one file per seed, seed 0 unsuffixed)."""
    from ..data import cache_dir

    suffix = "" if int(seed) == 0 else f"_seed{int(seed)}"
    return cache_dir() / "classifiers" / f"{_canonical(dataset)}{suffix}.safetensors"


def _canonical(dataset: str) -> str:
    from ..data.registry import _canonical as canon

    return canon(str(dataset))


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, shapes and bytes of the tensors, in sorted order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _save(clf: ReferenceClassifier, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in clf.net.state_dict().items()}
    meta = {"format": FORMAT, "info": json.dumps(clf.info), "sha256": _digest(tensors)}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _load(path: Path) -> ReferenceClassifier:
    """Read a cached classifier; :class:`CheckpointError` naming the defect if it is unusable."""
    from ..utils.io import read_safetensors

    tensors, meta = read_safetensors(path, "reference classifier", FORMAT)
    if meta.get("sha256") != _digest(tensors):
        raise CheckpointError(f"reference classifier {path} fails its SHA-256 check (damaged)")
    try:
        info = json.loads(meta["info"])
        net = SampleQualityCNN(info["input_shape"], info["n_classes"], info["padding"])
        net.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"reference classifier {path} does not match the network "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    net.eval()
    return ReferenceClassifier(net, info)


def train_reference_classifier(dataset: str, *, epochs: int | None = None, seed: int = 0,
                               batch_size: int = 100, lr: float = 1e-3,
                               schedule: str = "cosine", max_train: int | None = None,
                               save: bool = True, progress: bool = False,
                               device: str | torch.device = "cpu") -> ReferenceClassifier:
    r"""Train the Table VII CNN on the training split of ``dataset``; report its test accuracy.

    Arguments:
        dataset: "mnist", "fashion-mnist", "digits" or an IDX folder (see
            :func:`deepmix.data.load_images`).
        epochs: passes over the training set (the paper: 15). None: at least 3 and at least
            600 steps (3 on MNIST and Fashion-MNIST, 40 on the 1 437 digits).
        seed: seeds the initialisation, the batch order and the dropout.
        batch_size: images per Adam step (the paper: 100).
        lr: Adam rate. The paper states 0.01; with PyTorch's Adam that rate often kills this
            ReLU stack in the first steps, so the default is Adam's usual 1e-3.
        schedule: "cosine" decays the rate to 0 over all steps,
            :math:`\epsilon_t = \epsilon\,(1 + \cos(\pi t / T)) / 2`, which buys in 3 epochs
            what a constant rate needs many more for; "constant" keeps it (the paper).
        max_train: use only the first ``max_train`` training images (tests, quick looks).
        save: write the result to :func:`classifier_path` (atomically).
        progress: print one line per epoch.
        device: where to train (the result lives on the CPU; a GPU draws other dropout masks,
            so its network differs from a CPU run's of the same seed).
    """
    from ..data import load_images
    from ..utils.device import resolve_device

    if epochs is not None and epochs < 1:
        raise InputError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise InputError(f"lr must be > 0, got {lr}")
    if schedule not in ("cosine", "constant"):
        raise InputError(f"unknown schedule '{schedule}'; expected 'cosine' or 'constant'")
    train_ds = load_images(dataset, "train")
    test_ds = load_images(dataset, "test")
    if train_ds.labels is None or test_ds.labels is None:
        raise InputError(f"data set '{dataset}' has no labels: cannot train a classifier")
    x = train_ds.to_tensor().permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(train_ds.labels)
    if max_train is not None:
        x, y = x[:max_train], y[:max_train]
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    if epochs is None:
        epochs = max(3, math.ceil(600 / steps_per_epoch))
    n_classes = int(max(train_ds.labels.max(), test_ds.labels.max())) + 1
    gen = torch.Generator().manual_seed(int(seed))
    dev = resolve_device(device)
    # Seeds dropout without touching the caller's RNG (the device's too, on a GPU).
    rng_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(int(seed))
        net = SampleQualityCNN(train_ds.shape, n_classes).to(dev)
        seconds = _fit(net, x.to(dev), y.to(dev), gen, epochs=epochs, batch_size=batch_size,
                       lr=lr, schedule=schedule, progress=progress)
    net.cpu().eval()
    clf = ReferenceClassifier(net, {
        "format": FORMAT, "dataset": _canonical(dataset), "input_shape": list(train_ds.shape),
        "n_classes": n_classes, "padding": net.padding, "epochs": epochs, "seed": seed,
        "batch_size": batch_size, "lr": lr, "schedule": schedule, "n_train": int(len(x)),
        "train_seconds": round(seconds, 2), "torch_threads": torch.get_num_threads(),
        "device": str(dev),
    })
    clf.info["test_accuracy"] = clf.accuracy(test_ds.to_tensor(), test_ds.labels)
    if save:
        _save(clf, classifier_path(dataset, seed))
    return clf


def _fit(net: SampleQualityCNN, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, *,
         epochs: int, batch_size: int, lr: float, schedule: str, progress: bool) -> float:
    """Adam on the cross-entropy, in place; returns the seconds it took."""
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / steps))
        if schedule == "cosine" else 1.0)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=gen).to(x.device)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return time.perf_counter() - start


def load_reference_classifier(dataset: str, *, seed: int = 0, train_if_missing: bool = True,
                              **train_options: Any) -> ReferenceClassifier:
    """The cached reference classifier of ``dataset`` (the CNN run of ``seed``), trained (and
    cached) when needed.

    A missing file is trained; a corrupt one (unreadable, failed digest, other format) is
    reported with a warning and trained again. With ``train_if_missing=False`` both raise
    :class:`CheckpointError` instead. ``train_options`` go to :func:`train_reference_classifier`.
    """
    path = classifier_path(dataset, seed)
    try:
        return _load(path)
    except CheckpointError as exc:
        if not train_if_missing:
            raise CheckpointError(f"{exc}; train it with train_reference_classifier"
                                  f"('{dataset}')") from None
        if path.exists():
            warnings.warn(f"{exc}; training it again", RuntimeWarning, stacklevel=2)
    return train_reference_classifier(dataset, seed=seed, **train_options)


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
    n = _count(images)
    if n == 0:
        raise InputError("no images to score")
    return clf.accuracy(images, labels, batch_size)


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
