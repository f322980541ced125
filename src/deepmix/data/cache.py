"""Where data sets are cached, and reading / writing the cached ``.npz`` files.

A cache file holds ``x_train, y_train, x_test, y_test`` (uint8 images NHW, uint8 labels). It is
written atomically, so a file under the final name is always a complete one. On use, its arrays
are checked against the data set's known digests (:func:`verify_arrays`), so a file that was
changed or replaced after the download is refused, not trained on.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from deepmix.errors import DataError
from deepmix.utils.io import atomic_path

__all__ = ["SPLIT_KEYS", "cache_dir", "cache_path", "save_npz", "load_npz", "verify_arrays"]

#: The arrays every cache file holds.
SPLIT_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")


def cache_dir() -> Path:
    """The data cache folder: ``$DEEPMIX_DATA`` if set, else ``~/.cache/deepmix``."""
    env = os.environ.get("DEEPMIX_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "deepmix"


def cache_path(name: str) -> Path:
    """The cache file of data set ``name`` (``<cache_dir>/<name>.npz``)."""
    return cache_dir() / f"{name}.npz"


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` as a compressed ``.npz`` at ``path``, atomically."""
    path = Path(path)
    # np.savez_compressed appends ".npz" unless the name already ends with it, hence the suffix.
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
        # mkstemp creates the file 0600; a cache file should get the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    return path


def load_npz(path: str | os.PathLike, name: str, keys: Sequence[str] = SPLIT_KEYS) -> dict[str, np.ndarray]:
    """Read and check ``keys`` of the cache file ``path`` of data set ``name``.

    Raises :class:`DataError` naming the file (and how to rebuild it) when it is unreadable,
    lacks an array, or holds arrays of the wrong kind.
    """
    path = Path(path)
    fix = f"run `deepmix fetch {name} --force` to rebuild it"
    if not path.is_file():
        raise DataError(f"Data cache file {path} does not exist; run `deepmix fetch {name}`.")
    out: dict[str, np.ndarray] = {}
    try:
        # Arrays are read eagerly inside the try: NpzFile decompresses lazily, so corruption
        # in a member would otherwise surface later as a zlib/zipfile error far from here.
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"Data cache file {path} lacks array(s) {', '.join(missing)}; {fix}.")
            for key in keys:
                out[key] = npz[key]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"Data cache file {path} is corrupt ({detail}); {fix}.") from None
    for key, arr in out.items():
        if key.startswith("x_") and (arr.dtype != np.uint8 or arr.ndim not in (3, 4)):
            raise DataError(
                f"Data cache file {path}: {key} should be uint8 images (N,H,W[,C]) but is "
                f"{arr.dtype} {arr.shape}; {fix}."
            )
        if key.startswith("y_") and (arr.ndim != 1 or arr.dtype.kind not in "iu"):
            raise DataError(
                f"Data cache file {path}: {key} should be integer labels (N,) but is "
                f"{arr.dtype} {arr.shape}; {fix}."
            )
    for split in ("train", "test"):
        x, y = out.get(f"x_{split}"), out.get(f"y_{split}")
        if x is not None and y is not None and len(x) != len(y):
            raise DataError(
                f"Data cache file {path}: x_{split} holds {len(x)} images but y_{split} "
                f"{len(y)} labels; {fix}."
            )
    return out


# (file, size, mtime, array) -> digest: each cache array is hashed once per process while the
# file is unchanged (MNIST's train images take about 0.1 s).
_DIGESTS: dict[tuple[str, int, int, str], str] = {}


def verify_arrays(
    path: str | os.PathLike,
    name: str,
    arrays: Mapping[str, np.ndarray],
    digest: Callable[[str, np.ndarray], str],
    expected: Mapping[str, str],
) -> None:
    """Check the arrays read from cache file ``path`` of data set ``name`` against ``expected``.

    ``digest(key, array)`` computes what ``expected[key]`` holds. Raises :class:`DataError`
    naming the file, the array and how to replace the file when a digest differs.
    """
    path = Path(path)
    st = path.stat()
    for key, arr in arrays.items():
        if key not in expected:
            continue
        memo = (str(path.resolve()), st.st_size, st.st_mtime_ns, key)
        got = _DIGESTS.get(memo)
        if got is None:
            got = _DIGESTS[memo] = digest(key, arr)
        if got != expected[key]:
            raise DataError(
                f"Data cache file {path} fails its digest check: {key} has sha256 {got[:16]}..., "
                f"expected {expected[key][:16]}... (the file was changed or is not the "
                f"downloaded {name}); delete it and run `deepmix fetch {name}`, or run "
                f"`deepmix fetch {name} --force`."
            )
