"""Atomic file writes: a temporary file in the target folder, fsync, then ``os.replace``.

An interrupted write therefore never leaves a half file under the final name, and an existing
file is only replaced by a complete new one. Targets that are not regular files (``/dev/null``,
``/dev/stdout``, a FIFO, ...) are written in place instead: renaming onto them would replace the
device or pipe by a plain file. :func:`write_json_output` also takes ``-`` for stdout.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["read_safetensors", "atomic_path", "write_bytes_atomic", "write_text_atomic",
           "write_json_atomic", "STDOUT", "is_stdout", "write_json_output", "json_stdout"]

#: The output name that means standard output (``--json -``).
STDOUT = "-"

# Where write_json_output("-") writes while json_stdout() is active (else sys.stdout).
_json_stream: list = []


def _writes_in_place(path: Path) -> bool:
    """True for an existing target that must not be replaced by rename: anything but a regular
    file (character or block device, FIFO, socket), including through a symlink such as
    ``/dev/stdout``; and the aliases of open file descriptors (``/dev/stdout`` of a shell
    redirected to a file, ``/dev/fd/N``, ``/proc/self/fd/N``)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return True
    text = os.path.abspath(path)
    return (text in ("/dev/stdout", "/dev/stderr") or text.startswith("/dev/fd/")
            or text.startswith("/proc/self/fd/"))


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    ``suffix`` lets writers that insist on an extension (``np.savez`` adds ``.npz``) be used.
    On error the temporary file is removed and ``path`` is left untouched. An existing target
    that is not a regular file (a device such as ``/dev/null`` or ``/dev/stdout``, a FIFO) is
    yielded itself and written in place.
    """
    path = Path(path)
    if _writes_in_place(path):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); the result should have the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        # Again: writers that replace the file (safetensors' save_file) recreate it as 0600.
        os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def is_stdout(target: str | os.PathLike | None) -> bool:
    """Whether an output name means standard output (``-``)."""
    return target is not None and os.fspath(target) == STDOUT


def write_json_output(target: str | os.PathLike, obj: Any) -> bool:
    """Write ``obj`` as JSON to the file ``target`` (atomically), or to stdout for ``-``.

    Returns True when a file was written (the caller may say so), False for stdout.
    """
    if is_stdout(target):
        stream = _json_stream[-1] if _json_stream else sys.stdout
        stream.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        stream.flush()
        return False
    write_json_atomic(target, obj)
    return True


@contextmanager
def json_stdout(stream: Any) -> Iterator[None]:
    """Within the block, :func:`write_json_output` writes ``-`` to ``stream``: the command line
    keeps the real stdout for the JSON while its report lines go to stderr."""
    _json_stream.append(stream)
    try:
        yield
    finally:
        _json_stream.pop()


def read_safetensors(path: str | Path, what: str, fmt: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file written by deepmix, read onto the CPU.

    Raises :class:`~deepmix.errors.CheckpointError` naming ``what`` when the file is missing,
    damaged, or carries another ``format`` than ``fmt`` in its metadata.
    """
    from safetensors import safe_open

    from ..errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for every corruption
        raise CheckpointError(f"{what} {path} is corrupt or not a safetensors file "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    if meta.get("format") != fmt:
        raise CheckpointError(f"{what} {path} was not written by deepmix (format "
                              f"{meta.get('format')!r}, expected {fmt!r})")
    return tensors, meta
