r"""CPU threads that yield to other work: torch's intra-op threads sized to the free cores.

torch starts one intra-op thread per core. When another CPU-bound process shares the cores,
every parallel op waits at its barrier for the thread the scheduler has descheduled, so a step
made of many short ops runs at the pace of time slices: on 2 cores a DCGMM epoch beside one busy
process took 3.1x its quiet time with 2 threads and 1.27x with 1. :class:`ThreadGovernor`
samples the number of *other* runnable threads every few seconds and sets

.. math:: n_\text{threads} = \max\bigl(1, \min(n_\text{requested}, n_\text{cpus} - n_\text{other})\bigr),

acting at once on the start and later only when two samples in a row agree (a compile or a
short-lived process does not flip it). A start that sees other runnable threads takes the
median of up to five samples two milliseconds apart (three that agree end it early): a busy
neighbour is runnable in each, while a blip seen by a single sample (a process exiting, a kernel
thread, this process's own threads going to sleep between the two reads of ``/proc``) had cost a
1.5 s epoch 40 % (one thread until two later samples undid it). A start that sees none decides
at once (no pause for short fits). It reads Linux's ``/proc``; elsewhere it leaves the threads alone. Changing the count
changes how float sums are split over threads, so results may differ in the last bits from a
run at a fixed count: pass an explicit thread count (``deepmix --threads N``,
``DEEPMIX_THREADS``) where bit-reproducibility across machines matters.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

__all__ = ["other_runnable_threads", "available_cpus", "ThreadGovernor", "thread_target",
           "pin_threads", "threads_pinned"]

_PROC = Path("/proc")
_PINNED: list[int] = []


def pin_threads(n: int) -> None:
    """Use exactly ``n`` threads from now on: no governor adapts them (``deepmix --threads``)."""
    torch.set_num_threads(int(n))
    _PINNED[:] = [int(n)]


def threads_pinned() -> bool:
    """Whether :func:`pin_threads` fixed the thread count."""
    return bool(_PINNED)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _own_running_threads() -> int:
    n = 0
    for stat in (_PROC / "self" / "task").glob("*/stat"):
        try:
            text = stat.read_bytes()
        except OSError:
            continue
        # The state follows the command name in parentheses, which may itself hold spaces.
        if text[text.rindex(b")") + 2:text.rindex(b")") + 3] == b"R":
            n += 1
    return n


def other_runnable_threads() -> int | None:
    """Runnable threads of other processes now (``procs_running`` of ``/proc/stat`` minus this
    process's running threads), or None where ``/proc`` is not available."""
    try:
        for line in (_PROC / "stat").read_text().splitlines():
            if line.startswith("procs_running "):
                return max(0, int(line.split()[1]) - _own_running_threads())
    except (OSError, ValueError):
        return None
    return None


def thread_target(requested: int, others: int, cpus: int) -> int:
    """:math:`\\max(1, \\min(n_\\text{requested}, n_\\text{cpus} - n_\\text{other}))`."""
    return max(1, min(int(requested), int(cpus) - int(others)))


class ThreadGovernor:
    """Adapts ``torch.set_num_threads`` to the free cores; call :meth:`tick` between steps.

    Arguments:
        requested: the most threads to use (default: torch's count when the governor starts).
        interval: seconds between samples of the other processes' load.
    """

    #: Most samples of the start decision (their median) and the pause between them, in seconds.
    start_samples: int = 5
    start_pause: float = 0.002

    def __init__(self, requested: int | None = None, *, interval: float = 1.0) -> None:
        self.requested = int(requested or torch.get_num_threads())
        self.interval = float(interval)
        self.cpus = available_cpus()
        self.changes = 0
        others = other_runnable_threads() if self.requested > 1 else None
        self.enabled = others is not None
        if others:   # (0: free cores, the common case, decided at once; None: no /proc)
            seen = [others]
            while len(seen) < self.start_samples and max(map(seen.count, seen)) < 3:
                time.sleep(self.start_pause)
                again = other_runnable_threads()
                if again is None:
                    break
                seen.append(again)
            others = sorted(seen)[(len(seen) - 1) // 2]
        self._pending: int | None = None
        if self.enabled:
            # The first sample acts at once: an epoch may last less than two intervals, and a
            # neighbour that is already busy when training starts is the common case (a wrong
            # guess from a passing blip is undone after two samples).
            target = thread_target(self.requested, others, self.cpus)
            if target != torch.get_num_threads():
                torch.set_num_threads(target)
                self.changes += 1
        self._next = time.monotonic() + self.interval

    def tick(self) -> None:
        """Sample the load when ``interval`` has passed; adopt a new count seen twice running."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        others = other_runnable_threads()
        if others is None:
            return
        target = thread_target(self.requested, others, self.cpus)
        if target == torch.get_num_threads():
            self._pending = None
        elif self._pending == target:
            torch.set_num_threads(target)
            self.changes += 1
            self._pending = None
        else:
            self._pending = target

    def restore(self) -> None:
        """Back to the requested count (the end of a fit)."""
        if self.enabled and torch.get_num_threads() != self.requested:
            torch.set_num_threads(self.requested)
