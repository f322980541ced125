r"""The reference CNN of the sample-quality metric: network, training, cache.

The CNN is the paper's Table VII (Gepperth & Pfülb, "A new perspective on probabilistic image
modeling", Sec. V-F): Dropout(0.1), Conv3x3(64)/ReLU, Conv3x3(64)/ReLU, MaxPool(2),
Conv3x3(64)/ReLU, MaxPool(2), Conv3x3(64)/ReLU, MaxPool(2), Dense(350)/ReLU, Dropout(0.1),
Dense(350)/ReLU, Dense(350)/ReLU, Dense(n_classes)/softmax. The paper trains it with Adam (rate
0.01, batch 100, 15 epochs). Convolutions use Keras' default 'valid' padding when the image is
large enough (28x28 leaves a 1x1x64 map); smaller images (the 8x8 digits) would shrink to nothing,
so they use 'same' padding instead (8x8 leaves 1x1x64 too).

A trained classifier is cached per data set at ``cache_dir()/classifiers/<dataset>.safetensors``
(written atomically, never pickled) with its facts and a SHA-256 digest of its weights in the
header; a file that fails to parse or to match its digest is reported and trained again.

The metric itself, the accuracy of such a classifier on generated samples, works on arrays and
lives in :mod:`deepmix.metrics.sample_quality`; training the CNN needs the data sets, so this
module sits in :mod:`deepmix.experiments` (formerly part of ``deepmix.metrics.sample_quality``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..data import cache_dir, load_images
from ..data.registry import _canonical as _canonical_name
from ..errors import CheckpointError, InputError
from ..metrics.sample_quality import check_labels, count_images
from ..models.dcgmm import as_images
from ..utils.device import resolve_device
from ..utils.io import atomic_path, read_safetensors

__all__ = [
    "SampleQualityCNN",
    "ReferenceClassifier",
    "classifier_path",
    "train_reference_classifier",
    "load_reference_classifier",
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

    @property
    def n_classes(self) -> int:
        """Number of classes the network tells apart."""
        return self.net.n_classes

    def accuracy(self, images: Any, labels: Any, batch_size: int = 500) -> float:
        """Fraction of ``images`` classified as their ``labels``."""
        y = check_labels(labels, count_images(images), self.net.n_classes)
        return float((self.predict(images, batch_size) == y).double().mean())


def _as_nchw(images: Any, shape: Sequence[int]) -> torch.Tensor:
    x = as_images(images, shape, what="images for the sample-quality CNN")
    return x.permute(0, 3, 1, 2).contiguous()


def classifier_path(dataset: str, seed: int = 0) -> Path:
    """Where the reference classifier of ``dataset`` trained with ``seed`` is cached (the
    paper averages its figures over several CNN runs: one file per seed, seed 0 unsuffixed)."""
    suffix = "" if int(seed) == 0 else f"_seed{int(seed)}"
    return cache_dir() / "classifiers" / f"{_canonical(dataset)}{suffix}.safetensors"


def _canonical(dataset: str) -> str:
    return _canonical_name(str(dataset))


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
