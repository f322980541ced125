"""CIFAR-10 and CIFAR-100 "python version" files a user already has (they cannot be fetched here).

CIFAR-10 ships as ``cifar-10-python.tar.gz``, which unpacks to a folder ``cifar-10-batches-py``
holding ``data_batch_1`` .. ``data_batch_5`` (the 50 000 train images), ``test_batch`` (10 000
test images) and ``batches.meta`` (``label_names``). CIFAR-100 ships as
``cifar-100-python.tar.gz`` / folder ``cifar-100-python`` holding ``train``, ``test`` and ``meta``
(``fine_label_names``, ``coarse_label_names``). Each file is a Python pickle of a dict with
``data``: uint8 (N, 3072), one row per image, the 1 024 red, then green, then blue pixels of
a 32 x 32 image in row-major order, and ``labels`` (CIFAR-10) or ``fine_labels`` /
``coarse_labels`` (CIFAR-100).

Pickles can run arbitrary code when loaded, so these files are never read with plain
``pickle.load``: :class:`SafeUnpickler` resolves only the numpy functions that rebuild an
ndarray (and ``_codecs.encode`` for Latin-1 text, which protocol-2 pickles use for bytes); any
other global, such as ``os.system``, is refused with a :class:`DataError` before anything runs.

Images come out as uint8 NHWC (N, 32, 32, 3), RGB; labels int64 (CIFAR-10: 0..9; CIFAR-100:
the fine labels 0..99, or the coarse 0..19 with ``labels="coarse"``).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from deepmix.data.dataset import ImageDataset
from deepmix.errors import DataError

__all__ = [
    "CIFAR10_FILES",
    "CIFAR100_FILES",
    "SafeUnpickler",
    "safe_unpickle",
    "is_cifar_folder",
    "is_cifar_archive",
    "cifar_label_names",
    "load_cifar",
]

#: The batch files of each split of CIFAR-10, and its meta file.
CIFAR10_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
    "meta": ("batches.meta",),
}
#: The files of each split of CIFAR-100, and its meta file.
CIFAR100_FILES: dict[str, tuple[str, ...]] = {"train": ("train",), "test": ("test",), "meta": ("meta",)}

_SIDE = 32
_PIXELS = _SIDE * _SIDE
_ROW = 3 * _PIXELS  # one image: R plane, G plane, B plane
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _numpy_rebuilders() -> dict[str, Callable[..., Any]]:
    # Take the functions numpy itself pickles with, so that both module paths (numpy.core in
    # files from numpy 1 / Python 2, numpy._core from numpy 2) resolve to the installed numpy
    # without importing the deprecated numpy.core alias.
    sample = np.zeros(1, dtype=np.uint8)
    return {"_reconstruct": sample.__reduce__()[0], "_frombuffer": sample.__reduce_ex__(5)[0]}


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle referred to a global outside :data:`_ALLOWED` (or misused an allowed one)."""


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: Latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


_REBUILD = _numpy_rebuilders()
#: (module, name) -> the object a CIFAR pickle may refer to; nothing else is resolved.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _REBUILD["_reconstruct"],
    ("numpy._core.multiarray", "_reconstruct"): _REBUILD["_reconstruct"],
    ("numpy.core.numeric", "_frombuffer"): _REBUILD["_frombuffer"],
    ("numpy._core.numeric", "_frombuffer"): _REBUILD["_frombuffer"],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, tuples, bytes, str, numbers and numpy arrays.

    ``find_class`` is the only way a pickle reaches code (REDUCE, BUILD, NEWOBJ all call an
    object it returned), so allowing just numpy's array rebuilders keeps loading side-effect
    free. ``encoding="bytes"`` reads Python 2 ``str`` (keys, file names, array data) as bytes.
    """

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file, encoding="bytes")

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def safe_unpickle(data: bytes, source: str) -> Any:
    """The object pickled in ``data`` (see :class:`SafeUnpickler`); ``source`` names it in errors."""
    try:
        return SafeUnpickler(io.BytesIO(data)).load()
    except _RefusedGlobal as exc:
        raise DataError(f"CIFAR file {source} refers to {exc}, which a CIFAR batch never does; "
                        f"refusing to unpickle it (it could run code).") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError, MemoryError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"CIFAR file {source} is truncated or corrupt ({detail}).") from None


def _text(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _as_dict(obj: object, source: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR file {source} holds a {type(obj).__name__}, not a dict of "
                        f"'data' and 'labels'.")
    return {_text(k): v for k, v in obj.items()}


def _images(batch: dict[str, Any], source: str) -> np.ndarray:
    """uint8 NHWC images from a batch's ``data`` rows (R plane, G plane, B plane of 32 x 32)."""
    if "data" not in batch:
        raise DataError(f"CIFAR file {source} has no 'data' (keys: {', '.join(sorted(batch))}).")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _ROW:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"CIFAR file {source}: 'data' must be uint8 of shape (N, {_ROW}), got "
                        f"{what}.")
    # (N, 3, 32, 32) planes -> (N, 32, 32, 3) pixels; a contiguous copy for torch.
    return np.ascontiguousarray(data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1))


def _labels(batch: dict[str, Any], key: str, n: int, classes: int, source: str) -> np.ndarray:
    if key not in batch:
        raise DataError(f"CIFAR file {source} has no '{key}' (keys: {', '.join(sorted(batch))}).")
    try:
        labels = np.asarray(batch[key])
    except (TypeError, ValueError):
        labels = np.asarray([])
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise DataError(f"CIFAR file {source}: '{key}' must be {n} integers, got {labels.dtype} "
                        f"{labels.shape}.")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise DataError(f"CIFAR file {source}: '{key}' must lie in 0..{classes - 1}, got "
                        f"{int(labels.min())}..{int(labels.max())}.")
    return labels.astype(np.int64)


class _Source:
    """The files of one CIFAR copy: a folder, or a .tar(.gz) archive read without unpacking."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def names(self) -> set[str]:
        raise NotImplementedError

    def read(self, wanted: Iterable[str]) -> dict[str, bytes]:
        """The bytes of each wanted file (by base name) that exists; unreadable ones are a
        :class:`DataError`."""
        raise NotImplementedError

    def where(self, name: str) -> str:
        raise NotImplementedError


class _Folder(_Source):
    def names(self) -> set[str]:
        return {p.name for p in self.path.iterdir() if p.is_file()}

    def read(self, wanted: Iterable[str]) -> dict[str, bytes]:
        out = {}
        for name in wanted:
            if not (self.path / name).is_file():
                continue  # the caller names every missing file in one message
            try:
                out[name] = (self.path / name).read_bytes()
            except OSError as exc:
                raise DataError(f"Cannot read CIFAR file {self.path / name}: "
                                f"{exc.strerror or exc}.") from None
        return out

    def where(self, name: str) -> str:
        return str(self.path / name)


class _Archive(_Source):
    def _open(self) -> tarfile.TarFile:
        try:
            return tarfile.open(self.path, "r:*")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            detail = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__).rstrip(": ")
            raise DataError(f"CIFAR archive {self.path} is not a readable .tar(.gz) file "
                            f"({detail}).") from None

    def names(self) -> set[str]:
        try:
            with self._open() as tar:
                return {PurePosixPath(m.name).name for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise self._corrupt(exc) from None

    def _corrupt(self, exc: BaseException) -> DataError:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return DataError(f"CIFAR archive {self.path} is truncated or corrupt ({detail}).")

    def read(self, wanted: Iterable[str]) -> dict[str, bytes]:
        wanted = set(wanted)
        out: dict[str, bytes] = {}
        try:
            with self._open() as tar:
                # One pass in archive order: a gzip stream cannot seek backwards cheaply.
                for member in tar:
                    base = PurePosixPath(member.name).name
                    if member.isfile() and base in wanted and base not in out:
                        handle = tar.extractfile(member)
                        assert handle is not None  # a regular file always has one
                        out[base] = handle.read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise self._corrupt(exc) from None
        return out

    def where(self, name: str) -> str:
        return f"{self.path}:{name}"


def _layout(names: set[str]) -> dict[str, tuple[str, ...]] | None:
    if {"data_batch_1", "test_batch"} & names:
        return CIFAR10_FILES
    if {"train", "test"} <= names and "meta" in names:
        return CIFAR100_FILES
    return None


def is_cifar_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds CIFAR-10 batches (``data_batch_1`` or ``test_batch``) or the
    CIFAR-100 ``train`` / ``test`` / ``meta`` files."""
    folder = Path(folder)
    return folder.is_dir() and _layout({p.name for p in folder.iterdir() if p.is_file()}) is not None


def is_cifar_archive(name: str | os.PathLike) -> bool:
    """Whether a data name is meant as a CIFAR archive (``.tar.gz`` / ``.tgz`` / ``.tar``)."""
    return str(name).lower().endswith(_ARCHIVE_SUFFIXES)


def _source(path: str | os.PathLike) -> tuple[_Source, dict[str, tuple[str, ...]]]:
    path = Path(path).expanduser()
    if path.is_dir():
        source: _Source = _Folder(path)
    elif path.is_file():
        source = _Archive(path)
    else:
        raise DataError(f"CIFAR data {path} does not exist.")
    layout = _layout(source.names())
    if layout is None:
        raise DataError(f"{path} holds neither CIFAR-10 batches (data_batch_1 .. data_batch_5, "
                        f"test_batch) nor CIFAR-100 files (train, test, meta).")
    return source, layout


def cifar_label_names(path: str | os.PathLike, labels: str = "fine") -> list[str]:
    """The class names from ``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100; ``labels`` picks
    ``fine`` or ``coarse``) of a CIFAR folder or archive, in label order."""
    source, layout = _source(path)
    (meta,) = layout["meta"]
    raw = source.read([meta])
    if meta not in raw:
        raise DataError(f"CIFAR data {source.path} lacks {meta}.")
    info = _as_dict(safe_unpickle(raw[meta], source.where(meta)), source.where(meta))
    key = "label_names" if layout is CIFAR10_FILES else f"{labels}_label_names"
    names = info.get(key)
    if not isinstance(names, list):
        raise DataError(f"CIFAR file {source.where(meta)} has no list '{key}'.")
    return [_text(n) for n in names]


def load_cifar(path: str | os.PathLike, split: str = "train", *,
               labels: str = "fine") -> ImageDataset:
    """One split of a CIFAR-10 / CIFAR-100 folder or archive as an :class:`ImageDataset`.

    CIFAR-10: train = ``data_batch_1`` .. ``data_batch_5`` in order (50 000 images), test =
    ``test_batch``. CIFAR-100: ``train`` / ``test``; ``labels`` = ``fine`` (0..99, default) or
    ``coarse`` (0..19). Pixel ``(r, c)`` of channel ``k`` (0 red, 1 green, 2 blue) is column
    ``1024 k + 32 r + c`` of a ``data`` row.
    """
    if split not in ("train", "test"):
        raise DataError(f"Unknown split '{split}'; expected 'train' or 'test'.")
    if labels not in ("fine", "coarse"):
        raise DataError(f"Unknown CIFAR-100 labels '{labels}'; expected 'fine' or 'coarse'.")
    source, layout = _source(path)
    files = layout[split]
    raw = source.read(files)
    missing = [f for f in files if f not in raw]
    if missing:
        raise DataError(f"CIFAR data {source.path} lacks {', '.join(missing)} for the {split} "
                        f"split.")
    cifar10 = layout is CIFAR10_FILES
    key, classes = ("labels", 10) if cifar10 else (f"{labels}_labels", 100 if labels == "fine" else 20)
    images, targets = [], []
    for name in files:
        where = source.where(name)
        batch = _as_dict(safe_unpickle(raw.pop(name), where), where)
        x = _images(batch, where)
        images.append(x)
        targets.append(_labels(batch, key, len(x), classes, where))
    return ImageDataset(str(source.path), np.concatenate(images), np.concatenate(targets), 256)
