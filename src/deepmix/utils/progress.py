"""Progress reports that work on a terminal, in a notebook and in a batch job's log.

:func:`progress_bar` gives a tqdm bar when stderr is a terminal (or in a Jupyter notebook, the
widget of ``tqdm.auto``). When stderr is not a terminal (a batch job, ``2> log``, ``nohup``), a
redrawn bar would be invisible until the end or litter the log with carriage returns; the bar
then writes plain lines instead: one at the start, one at most every :data:`LOG_INTERVAL_S`
seconds, and one at the end::

    train: step 0/3000 (0%)
    train: step 410/3000 (14%), 13.7 step/s, 3m09s left, G0=-1.23 sigma=0.5
    train: step 3000/3000 (100%), 13.6 step/s, done in 3m41s, G0=-0.98 sigma=0.05
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["LOG_INTERVAL_S", "progress_bar"]

#: Seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL_S = 30.0


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (whose stderr is no terminal, but shows a tqdm widget)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too old or half imported: no notebook bar then
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0.0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _NoBar:
    """What a disabled progress bar is: every call does nothing."""

    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


class _LogLines:
    """The part of tqdm's interface the library uses, written as plain, periodic lines."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, stream: Any,
                 interval: float) -> None:
        self.total, self.n, self.desc, self.unit = int(total), int(initial), desc, unit
        self.stream, self.interval = stream, float(interval)
        self.postfix = ""
        self._start_n = self.n
        self._t0 = self._last = time.monotonic()
        self._printed_n: int | None = None
        self._closed = False
        self._line(final=False)

    def _line(self, final: bool) -> None:
        now = time.monotonic()
        pct = 100.0 * self.n / self.total if self.total else 100.0
        text = f"{self.desc}: {self.unit} {self.n}/{self.total} ({pct:.0f}%)"
        done = self.n - self._start_n
        elapsed = now - self._t0
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            text += f", {rate:.3g} {self.unit}/s"
            if final:
                how = "done in" if self.n >= self.total else "stopped after"
                text += f", {how} {_duration(elapsed)}"
            elif self.total > self.n:
                text += f", {_duration((self.total - self.n) / rate)} left"
        if self.postfix:
            text += f", {self.postfix}"
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken log: training goes on regardless
            pass
        self._last, self._printed_n = now, self.n

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        if time.monotonic() - self._last >= self.interval:
            self._line(final=False)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._printed_n != self.n:
                self._line(final=True)


def progress_bar(total: int, *, initial: int = 0, desc: str, unit: str,
                 enabled: bool = True) -> Any:
    """A progress bar on stderr with tqdm's ``update``, ``set_postfix_str`` and ``close``.

    Arguments:
        total: the count at completion.
        initial: the count to start from (a resumed run).
        desc: the label in front of the bar ("train").
        unit: what is counted ("step").
        enabled: False gives a bar that shows nothing.

    On a terminal (or in a notebook) this is a tqdm bar. Otherwise it writes plain lines: at the
    start, at most every :data:`LOG_INTERVAL_S` seconds, and at the end, so a batch job's log
    shows how far it got without carriage-return animation.
    """
    if not enabled:
        return _NoBar()
    stream = sys.stderr
    if _in_notebook():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=True)
    if _isatty(stream):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream,
                    dynamic_ncols=True, leave=True, mininterval=0.5)
    return _LogLines(total, initial, desc, unit, stream, LOG_INTERVAL_S)
