"""SVHN cropped digits (``train_32x32.mat``, ``test_32x32.mat``) a user already has.

The files are MATLAB v5 ``.mat`` files, read with :func:`scipy.io.loadmat` (scipy comes with
scikit-learn). Each holds ``X``: uint8 (32, 32, 3, N), RGB, and ``y``: (N, 1) labels 1..10,
where 10 stands for the digit 0. Images come out as uint8 NHWC (N, 32, 32, 3) and labels as the
digit shown, int64 0..9 (10 -> 0).

A folder holding the files gives their splits (``train_32x32.mat`` -> train, ``test_32x32.mat``
-> test; ``extra_32x32.mat`` is not used). One ``.mat`` file on its own has no split of its own:
like every user file (:mod:`deepmix.data.files`), every 5th image (index 0, 5, ...) is its test
split and the others its train split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.io

from deepmix.data.dataset import ImageDataset
from deepmix.data.files import TEST_EVERY
from deepmix.errors import DataError

__all__ = ["SVHN_FILES", "is_svhn_file", "is_svhn_folder", "read_svhn_mat", "load_svhn"]

#: The file of each split, as the SVHN site distributes them.
SVHN_FILES: dict[str, str] = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def is_svhn_file(name: str | os.PathLike) -> bool:
    """Whether a data name is meant as a ``.mat`` file (it need not exist)."""
    return Path(name).suffix.lower() == ".mat"


def is_svhn_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds ``train_32x32.mat`` or ``test_32x32.mat``."""
    folder = Path(folder)
    return folder.is_dir() and any((folder / f).is_file() for f in SVHN_FILES.values())


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 32, 32, 3), int64 digits (N,)) of one SVHN ``.mat`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"SVHN file {path} does not exist.")
    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except NotImplementedError as exc:  # scipy's message for MATLAB v7.3 (HDF5) files
        raise DataError(f"SVHN file {path} is not a MATLAB v5 file ({exc}).") from None
    except Exception as exc:  # scipy raises ValueError, OSError, TypeError, ... on bad files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"SVHN file {path} is truncated or corrupt ({detail}).") from None
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        raise DataError(f"SVHN file {path} lacks {' and '.join(missing)} (an SVHN .mat file holds "
                        f"X (32, 32, 3, N) and y (N, 1)).")
    x, y = mat["X"], np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise DataError(f"SVHN file {path}: X must be uint8 (H, W, 3, N), got {x.dtype} {x.shape}.")
    n = x.shape[3]
    if y.size != n or y.dtype.kind not in "iuf":
        raise DataError(f"SVHN file {path}: y must hold {n} labels, got {y.dtype} {y.shape}.")
    y = y.reshape(n)
    if y.dtype.kind == "f" and not np.array_equal(y, np.rint(y)):
        raise DataError(f"SVHN file {path}: y holds non-integer labels.")
    y = y.astype(np.int64)
    if n and (int(y.min()) < 0 or int(y.max()) > 10):
        raise DataError(f"SVHN file {path}: labels must lie in 1..10 (10 = digit 0), got "
                        f"{int(y.min())}..{int(y.max())}.")
    # (H, W, C, N) -> (N, H, W, C), contiguous for torch; label 10 is the digit 0.
    return np.ascontiguousarray(np.moveaxis(x, 3, 0)), np.where(y == 10, 0, y)


def load_svhn(path: str | os.PathLike, split: str = "train") -> ImageDataset:
    """One split of an SVHN folder or ``.mat`` file (see the module docstring)."""
    if split not in SVHN_FILES:
        raise DataError(f"Unknown split '{split}'; expected 'train' or 'test'.")
    path = Path(path).expanduser()
    if path.is_dir():
        file = path / SVHN_FILES[split]
        if not file.is_file():
            raise DataError(f"SVHN folder {path} lacks {SVHN_FILES[split]} for the {split} split "
                            f"(pass one .mat file itself to hold out every {TEST_EVERY}th image).")
        images, labels = read_svhn_mat(file)
    else:
        images, labels = read_svhn_mat(path)
        is_test = np.arange(len(images)) % TEST_EVERY == 0
        keep = is_test if split == "test" else ~is_test
        images, labels = images[keep], labels[keep]
    if len(images) == 0:
        raise DataError(f"SVHN data {path}: its {split} split is empty.")
    return ImageDataset(str(path), images, labels, 256)
