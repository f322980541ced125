"""A user's own images: an ``.npy`` / ``.npz`` file, or a folder of PNG / JPEG images.

:func:`deepmix.data.load_images` (and so ``deepmix train --data PATH``) reads these:

- ``.npy``: one array of images (N, H, W) or (N, H, W, C); uint8 (0..255), integers in 0..255,
  or floats in [0, 1]. No labels.
- ``.npz``: ``images`` (as above) and optionally ``labels`` (N,) integers; or the cache layout
  ``x_train``, ``x_test`` (and optionally ``y_train``, ``y_test``), which gives its own splits.
- A folder of ``.png`` / ``.jpg`` / ``.jpeg`` files, read with Pillow. Files directly in the
  folder have no labels; one subfolder per class gives labels: the subfolder names when they are
  all integers ("0", "1", ...), else the index of the name in sorted order. A folder holding
  ``train/`` and ``test/`` subfolders (each laid out as above) gives its own splits. Grey images
  give C = 1; when any image has colour, all are read as RGB (C = 3; alpha is dropped).

Splits: a source without its own train/test parts holds out every :data:`TEST_EVERY`-th image
(index 0, 5, 10, ... in file / array order; for folders, files sorted by path) as the test
split, and the other images are the train split: the digits convention, so ``deepmix
evaluate`` of a run reports held-out figures. Images are stored as 256 grey levels; float
images are rounded to the nearest of them (``round(255 x)``).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from deepmix.data.dataset import ImageDataset
from deepmix.errors import DataError, InputError

__all__ = ["ARRAY_SUFFIXES", "IMAGE_SUFFIXES", "TEST_EVERY", "is_array_file",
           "is_image_folder", "load_array_file", "load_image_folder"]

#: File suffixes read as arrays of images.
ARRAY_SUFFIXES: tuple[str, ...] = (".npy", ".npz")
#: File suffixes of images in a folder.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
#: Without its own splits, every TEST_EVERY-th image (index % TEST_EVERY == 0) is the test split.
TEST_EVERY = 5
_LEVELS = 256


def is_array_file(name: str | os.PathLike) -> bool:
    """Whether a data name is meant as an ``.npy`` / ``.npz`` file (it need not exist)."""
    return Path(name).suffix.lower() in ARRAY_SUFFIXES


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_image_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds images, directly, in class subfolders or in train/test parts."""
    folder = Path(folder)
    if _images_in(folder):
        return True
    for sub in folder.iterdir():
        if sub.is_dir() and (_images_in(sub) or any(
                s.is_dir() and _images_in(s) for s in sub.iterdir())):
            return True
    return False


def _split(n: int, split: str) -> np.ndarray:
    is_test = np.arange(n) % TEST_EVERY == 0
    return is_test if split == "test" else ~is_test


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise DataError(f"Unknown split '{split}'; expected 'train' or 'test'.")


def _as_levels(arr: np.ndarray, where: str) -> np.ndarray:
    """uint8 images (N, H, W, C) from an array of images in 0..255 or [0, 1]."""
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise InputError(f"{where}: images must be uint8 (0..255) or floats in [0, 1], got "
                         f"{arr.dtype}.")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        hint = "; a single image needs a leading axis of 1" if arr.ndim == 2 else ""
        raise InputError(f"{where}: images must have shape (N, H, W) or (N, H, W, C), got "
                         f"{arr.shape}{hint}.")
    if arr.shape[1] in (1, 3, 4) and min(arr.shape[2:]) > 4:  # (N, C, H, W), e.g. from torch
        raise InputError(f"{where}: shape {arr.shape} looks channels-first (N, C, H, W); "
                         f"deepmix wants (N, H, W, C): use np.moveaxis(x, 1, -1).")
    if len(arr) == 0:
        raise InputError(f"{where} holds no images.")
    if min(arr.shape[1:]) == 0:
        raise InputError(f"{where}: images of shape {arr.shape[1:]} are empty.")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(f"{where} holds NaN or infinite pixel values.")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"{where}: float pixel values must lie in [0, 1], got {lo:g}..{hi:g}"
                             f" (for 0..255 data use uint8, or divide by 255).")
        return np.rint(arr * (_LEVELS - 1)).astype(np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 255:
        raise InputError(f"{where}: integer pixel values must lie in 0..255, got {lo}..{hi}.")
    return arr.astype(np.uint8)


def _as_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise InputError(f"{where}: labels must be integers of shape ({n},), got {labels.dtype} "
                         f"{labels.shape}.")
    if n and int(labels.min()) < 0:
        raise InputError(f"{where}: labels must be >= 0, got {int(labels.min())}.")
    return labels.astype(np.int64)


def _dataset(name: str, images: np.ndarray, labels: np.ndarray | None, split: str,
             where: str, own_splits: bool) -> ImageDataset:
    if not own_splits:
        keep = _split(len(images), split)
        images = images[keep]
        labels = labels[keep] if labels is not None else None
    if len(images) == 0:
        rule = "" if own_splits else f" (every {TEST_EVERY}th image is the test split)"
        raise InputError(f"{where}: its {split} split is empty{rule}; give more images.")
    return ImageDataset(name, images, labels, _LEVELS)


def load_array_file(path: str | os.PathLike, split: str = "train") -> ImageDataset:
    """One split of the images in an ``.npy`` or ``.npz`` file (see the module docstring)."""
    _check_split(split)
    path = Path(path).expanduser()
    name = str(path)
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    kind = path.suffix.lower()
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"Data file {path} is not a readable {kind} file ({detail}).") from None
    if kind == ".npy" or not hasattr(loaded, "files"):
        if hasattr(loaded, "files"):  # an .npz archive named .npy
            loaded.close()
            raise DataError(f"Data file {path} is an .npz archive; name it .npz.")
        return _dataset(name, _as_levels(loaded, name), None, split, name, own_splits=False)
    try:
        with loaded as npz:
            files = set(npz.files)
            if "images" in files:
                where = f"{path}:images"
                images = _as_levels(npz["images"], where)
                labels = (_as_labels(npz["labels"], len(images), f"{path}:labels")
                          if "labels" in files else None)
                return _dataset(name, images, labels, split, where, own_splits=False)
            if {"x_train", "x_test"} <= files:
                where = f"{path}:x_{split}"
                images = _as_levels(npz[f"x_{split}"], where)
                key = f"y_{split}"
                labels = (_as_labels(npz[key], len(images), f"{path}:{key}")
                          if key in files else None)
                return _dataset(name, images, labels, split, where, own_splits=True)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InputError):
            raise
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"Data file {path} is corrupt ({detail}).") from None
    found = ", ".join(sorted(files)) or "nothing"
    raise DataError(f"Data file {path} holds {found}; expected an array 'images' (and "
                    f"optionally 'labels'), or x_train and x_test.")


def _read_image(path: Path) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 pixels of one image file."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise DataError("Reading PNG/JPEG images needs Pillow: pip install pillow.") from None
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey
                arr = np.asarray(img, dtype=np.int64)
                if arr.size and (arr.min() < 0 or arr.max() > 65535):
                    raise DataError(f"Image {path} has pixel values outside 0..65535.")
                return np.rint(arr / 257.0).astype(np.uint8)
            if mode in ("1", "L", "LA", "P") and (mode != "P" or _grey_palette(img)):
                return np.asarray(img.convert("L"), dtype=np.uint8)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises many types (UnidentifiedImageError, OSError, ...)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"Cannot read image {path} ({detail}).") from None


def _grey_palette(img) -> bool:
    try:
        palette = np.asarray(img.convert("RGB"))
    except Exception:
        return False
    return bool((palette[..., 0] == palette[..., 1]).all() and (palette[..., 1] == palette[..., 2]).all())


def _class_label(names: list[str]) -> dict[str, int]:
    if all(n.isdigit() for n in names):
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(sorted(names))}


def _folder_files(folder: Path, where: str) -> tuple[list[Path], list[str | None]]:
    """The image files of one folder (direct, or one subfolder per class) and their class
    subfolder names (None for files directly in ``folder``)."""
    direct = _images_in(folder)
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and _images_in(p))
    if direct and classes:
        raise DataError(f"Image folder {where} holds both images and class subfolders "
                        f"({classes[0].name}/); put every image in a class subfolder, or none.")
    if classes:
        files = [(f, c.name) for c in classes for f in _images_in(c)]
        return [f for f, _ in files], [c for _, c in files]
    return direct, [None] * len(direct)


def load_image_folder(folder: str | os.PathLike, split: str = "train") -> ImageDataset:
    """One split of a folder of PNG / JPEG images (see the module docstring)."""
    _check_split(split)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"Image folder {folder} does not exist or is not a folder.")
    parts = {p.name: p for p in folder.iterdir() if p.is_dir() and p.name in ("train", "test")}
    own_splits = set(parts) == {"train", "test"}
    if own_splits:
        files, classes = _folder_files(parts[split], str(parts[split]))
        other = _folder_files(parts["test" if split == "train" else "train"], "")[1]
        names = sorted({c for c in classes + other if c is not None})
    else:
        files, classes = _folder_files(folder, str(folder))
        names = sorted({c for c in classes if c is not None})
    where = str(parts[split]) if own_splits else str(folder)
    if not files:
        raise DataError(f"Image folder {where} holds no {'/'.join(IMAGE_SUFFIXES)} images "
                        f"(directly or in one subfolder per class).")
    if own_splits and any(c is None for c in classes) and names:
        raise DataError(f"Image folder {folder}: train/ and test/ must both use class "
                        f"subfolders, or neither.")
    pixels = [_read_image(f) for f in files]
    first = pixels[0].shape[:2]
    for f, p in zip(files, pixels):
        if p.shape[:2] != first:
            raise DataError(f"Image folder {where}: images differ in size: {files[0]} is "
                            f"{first[1]}x{first[0]} but {f} is {p.shape[1]}x{p.shape[0]} "
                            f"(width x height); resize them to one size.")
    colour = any(p.ndim == 3 for p in pixels)
    if colour:
        pixels = [p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2) for p in pixels]
    else:
        pixels = [p[..., None] for p in pixels]
    images = np.stack(pixels)
    labels = None
    if names:
        mapping = _class_label(names)
        labels = np.array([mapping[c] for c in classes], dtype=np.int64)
    return _dataset(str(folder), images, labels, split, where, own_splits=own_splits)
