"""Small C++ kernels built on first use with the system compiler and called through ctypes.

Why hand-written: a few hot loops (a DCGMM layer's training pass, a small DRMM's training
step) are hundreds of tiny torch ops, where dispatch, not arithmetic, sets the speed; one C++
call does the same work in one pass. The sources hold no torch headers, so the build needs only
a C++ compiler (seconds, once); the library is cached per user under
``$DEEPMIX_CACHE/deepmix/kernels`` (default ``~/.cache``), keyed on the source, the compiler, the
flags, this CPU's features and the torch version. Without a compiler, on another OS, or if the
build fails, :func:`load` returns None and callers keep their pure-torch path;
``DEEPMIX_FUSED=0`` turns every kernel off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import torch

__all__ = ["load", "enabled"]

FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared", "-std=c++17"]
_LOADED: dict[str, ctypes.CDLL | None] = {}


def enabled() -> bool:
    """False where ``DEEPMIX_FUSED=0`` asks for the pure-torch paths."""
    return os.environ.get("DEEPMIX_FUSED", "1") != "0"


def _cache_dir() -> Path:
    base = os.environ.get("DEEPMIX_CACHE") or os.environ.get("XDG_CACHE_HOME") \
        or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepmix" / "kernels"


def _cpu_key() -> str:
    # -march=native ties the binary to this CPU: key the cache on its feature flags.
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(name: str, source: str, openmp: bool) -> ctypes.CDLL | None:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None or platform.system() != "Linux":
        return None
    flags = FLAGS + (["-fopenmp"] if openmp else [])
    key = hashlib.sha256("\0".join([source, cxx, *flags, _cpu_key(),
                                    torch.__version__]).encode()).hexdigest()[:16]
    out = _cache_dir() / f"{name}_{key}.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            src = Path(tmp) / f"{name}.cpp"
            src.write_text(source)
            lib = Path(tmp) / out.name
            res = subprocess.run([cxx, *flags, str(src), "-o", str(lib)],
                                 capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                return None
            os.replace(lib, out)   # atomic: concurrent builds (ranks, tests) never see half a file
    # Loading after torch makes an OpenMP kernel share torch's runtime (same soname).
    return ctypes.CDLL(str(out))


def load(name: str, source: str, declare: Callable[[ctypes.CDLL], None], *,
         openmp: bool = False) -> ctypes.CDLL | None:
    """The library built from ``source`` (once per process; cached on disk), its functions'
    signatures set by ``declare``; None where kernels are off or cannot be built."""
    if not enabled():
        return None
    if name not in _LOADED:
        try:
            lib = _build(name, source, openmp)
            if lib is not None:
                declare(lib)
            _LOADED[name] = lib
        except Exception:   # no compiler, read-only cache, sandbox: the torch path still works
            _LOADED[name] = None
    return _LOADED[name]
