r"""The C allocator's policy for large tensors: keep freed memory for the next step.

glibc serves every allocation above ``M_MMAP_THRESHOLD`` (dynamic, at most 32 MB) by a fresh
``mmap`` and gives it back on free; below it, memory at the top of the heap is returned once more
than ``M_TRIM_THRESHOLD`` is free. A training step allocates the same few large tensors (design
matrices, scores, responsibilities) and frees them again, so under the default policy the
kernel maps, zeroes and unmaps them on every step: on the 2-core VM of the benchmarks a first
touch costs about 7 ms per MB, and DCGMM's architecture E spent 30 ms of a 47 ms step in
those page faults. :func:`tune_allocator` sets

.. math:: \texttt{M\_MMAP\_THRESHOLD} = 256\,\text{MB}, \qquad
          \texttt{M\_TRIM\_THRESHOLD} = 1\,\text{GB},

so a step's tensors come from (and go back to) the heap, which then stays at the step's
high-water mark instead of shrinking between steps (the peak resident memory is the same
high-water mark either way); a data set above 256 MB is still mapped on its own and returned
when freed. The training loop (:func:`deepmix.training.fit`, so every ``fit``, ``train`` and
``deepmix train``/``demo``) calls it once per process; scoring alone does not: one pass over
a data set gains little, and the peak of ``deepmix evaluate`` varied from run to run under
either policy (0.55-1.54 GB with glibc's defaults, 0.83-1.64 GB with this one;
``benchmarks/memory.py``), so it keeps the defaults. ``DEEPMIX_MALLOC=system`` leaves the C
library's defaults alone everywhere. Elsewhere than glibc (macOS, musl, Windows) it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_allocator", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3       # <malloc.h>
_DONE: list[bool] = []


def tune_allocator() -> bool:
    """Set the allocator policy of the module docstring once per process; returns whether it
    is in effect (False off glibc or with ``DEEPMIX_MALLOC=system``)."""
    if _DONE:
        return _DONE[0]
    ok = False
    if sys.platform.startswith("linux") and os.environ.get("DEEPMIX_MALLOC", "") != "system":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt          # glibc only (musl has none: AttributeError)
            libc.gnu_get_libc_version       # noqa: B018 - glibc's mallopt semantics
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):
            ok = False
    _DONE.append(ok)
    return ok
