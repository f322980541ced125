"""Reading IDX files, the format of the original MNIST and Fashion-MNIST distributions.

An IDX file is a header ``00 00 <dtype code> <ndim>``, ``ndim`` big-endian uint32 sizes, then the
values in C order (big-endian). Files may be gzip-compressed (``.gz`` as distributed).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from deepmix.errors import DataError

__all__ = ["IDX_FILES", "read_idx", "parse_idx", "load_idx_folder"]

# IDX type codes -> numpy dtypes (big-endian, as the format stores them).
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"

#: The IDX file names (without ``.gz``) of each split, as the original sites distribute them.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def parse_idx(data: bytes, source: str) -> np.ndarray:
    """Parse the (uncompressed) bytes of an IDX file; ``source`` names it in error messages."""
    if len(data) < 4:
        raise DataError(f"IDX file {source} is truncated: {len(data)} bytes, not even a header.")
    if data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES or data[3] == 0:
        raise DataError(
            f"IDX file {source} has a bad magic number {data[:4].hex()} "
            f"(expected 0000 <type {'/'.join(f'{c:02x}' for c in _DTYPES)}> <ndim>=1+)."
        )
    dtype, ndim = _DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {source} is truncated inside its header ({len(data)} bytes).")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "too long"
        raise DataError(
            f"IDX file {source} is {what}: shape {tuple(dims)} needs {expected} data bytes, "
            f"found {got}."
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    # A native-order, writable copy: frombuffer views the immutable bytes object.
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed (detected by its magic bytes)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"Cannot read IDX file {path}: {exc.strerror or exc}.") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"IDX file {path} is a corrupt gzip file ({exc}).") from None
    elif path.suffix == ".gz":
        raise DataError(f"IDX file {path} is named .gz but is not gzip-compressed.")
    return parse_idx(raw, str(path))


def _find(folder: Path, stem: str) -> Path | None:
    # Besides the canonical names, accept the "train-images.idx3-ubyte" spelling some mirrors use.
    variants = (stem, stem.replace("-idx", ".idx"))
    for base in variants:
        for name in (base, base + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_idx_folder(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of an MNIST-style IDX folder: (uint8 images (N,H,W), int64 labels (N,)).

    The folder holds ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, each plain or ``.gz``
    (the names of both the MNIST and the Fashion-MNIST distributions).
    """
    folder = Path(folder)
    if split not in IDX_FILES:
        raise DataError(f"Unknown split '{split}'; expected 'train' or 'test'.")
    if not folder.is_dir():
        raise DataError(f"IDX folder {folder} does not exist or is not a folder.")
    stems = IDX_FILES[split]
    paths = [_find(folder, stem) for stem in stems]
    missing = [f"{stem}[.gz]" for stem, p in zip(stems, paths) if p is None]
    if missing:
        raise DataError(f"IDX folder {folder} lacks {', '.join(missing)} for the {split} split.")
    img_path, lab_path = paths
    assert img_path is not None and lab_path is not None
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"IDX file {img_path} should hold uint8 images (N,H,W) but holds "
            f"{images.dtype} {images.shape}."
        )
    if labels.ndim != 1:
        raise DataError(f"IDX file {lab_path} should hold labels (N,) but has shape {labels.shape}.")
    if len(images) != len(labels):
        raise DataError(
            f"IDX files {img_path.name} and {lab_path.name} in {folder} disagree: "
            f"{len(images)} images but {len(labels)} labels."
        )
    return images, labels.astype(np.int64)
