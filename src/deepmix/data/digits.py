"""scikit-learn's embedded 8x8 digits (1 797 images, 17 grey levels): no download needed.

There is no official split; deterministically, every 5th image (index % 5 == 0, 360 images) is
the test split and the other 1 437 the train split.
"""

from __future__ import annotations

import numpy as np

from deepmix.errors import DataError

__all__ = ["NAME", "LEVELS", "TEST_EVERY", "load_digits_split"]

NAME = "digits"
LEVELS = 17
TEST_EVERY = 5


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of the digits: (uint8 images (N, 8, 8) in 0..16, int64 labels (N,))."""
    if split not in ("train", "test"):
        raise DataError(f"Unknown split '{split}'; expected 'train' or 'test'.")
    from sklearn.datasets import load_digits  # late: importing sklearn costs about a second

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)  # float64 holding integers 0..16
    labels = bunch.target.astype(np.int64)
    is_test = np.arange(len(images)) % TEST_EVERY == 0
    keep = is_test if split == "test" else ~is_test
    return images[keep], labels[keep]
