"""The in-memory image data set every loader returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deepmix.errors import DataError

__all__ = ["ImageDataset"]


@dataclass(eq=False)  # element-wise array equality makes a generated __eq__ useless
class ImageDataset:
    """Quantised images with optional labels.

    Arguments:
        name: The data set's name (``"mnist"``, ``"digits"``, a folder path, ...).
        images: uint8 images of shape (N, H, W, C); (N, H, W) is accepted and given C = 1.
        labels: int64 class labels of shape (N,), or None.
        levels: Number of grey levels; pixel values lie in ``0 .. levels - 1``.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray | None
    levels: int

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.dtype != np.uint8:
            raise DataError(
                f"Data set '{self.name}': images must be uint8 (N,H,W,C), got {images.dtype} {images.shape}."
            )
        if not 2 <= int(self.levels) <= 256:
            raise DataError(f"Data set '{self.name}': levels must be in 2..256, got {self.levels}.")
        if images.size and int(images.max()) >= self.levels:
            raise DataError(
                f"Data set '{self.name}': pixel value {int(images.max())} does not fit {self.levels} levels."
            )
        self.images, self.levels = images, int(self.levels)
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
                raise DataError(
                    f"Data set '{self.name}': labels must be integers of shape ({len(images)},), "
                    f"got {labels.dtype} {labels.shape}."
                )
            self.labels = labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape (H, W, C) of one image."""
        h, w, c = self.images.shape[1:]
        return (h, w, c)

    def to_tensor(self, dequantize: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """The images as float32 (N, H, W, C) in [0, 1].

        Plain: ``x / (levels - 1)``, so 0 and the top level map to 0 and 1. Dequantised:
        ``(x + u) / levels`` with ``u ~ U[0, 1)`` per pixel, a continuous density whose
        likelihoods are comparable in nats / bits per dimension. ``generator`` seeds ``u``.
        """
        # In place on the one float32 copy: the peak is that copy, not two of it (MNIST's
        # training images are 188 MB as float32).
        x = torch.from_numpy(self.images).to(torch.float32)
        if not dequantize:
            return x.div_(self.levels - 1)
        u = torch.rand(x.shape, generator=generator, dtype=torch.float32)
        return x.add_(u).div_(self.levels)

    def subset(self, classes: Sequence[int]) -> "ImageDataset":
        """The images whose label is one of ``classes``, in their original order."""
        if self.labels is None:
            raise DataError(f"Data set '{self.name}' has no labels, so it cannot be subset by class.")
        wanted = sorted({int(c) for c in classes})
        if not wanted:
            raise DataError(f"Data set '{self.name}': subset needs at least one class.")
        present = set(np.unique(self.labels).tolist())
        unknown = [c for c in wanted if c not in present]
        if unknown:
            raise DataError(
                f"Data set '{self.name}' has no class(es) {unknown}; its classes are {sorted(present)}."
            )
        keep = np.isin(self.labels, wanted)
        return ImageDataset(self.name, self.images[keep], self.labels[keep], self.levels)
