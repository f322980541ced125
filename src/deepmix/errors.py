"""User-facing errors.

Every problem a user can cause (bad input, bad spec, missing file, unreachable data) is raised as a
:class:`DeepmixError` subclass with a one-line message that names the problem. The CLI prints that
line and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

__all__ = [
    "DeepmixError",
    "SpecError",
    "InputError",
    "DataError",
    "CheckpointError",
    "ConfigError",
    "NoDensityError",
    "DistributedError",
]


class DeepmixError(Exception):
    """Base class of all errors deepmix raises on purpose."""


class SpecError(DeepmixError, ValueError):
    """A malformed model spec, an unknown architecture or inconsistent layer shapes."""


class InputError(DeepmixError, ValueError):
    """Input data of the wrong shape, dtype or with non-finite values."""


class DataError(DeepmixError):
    """A data set that cannot be obtained, verified or read."""


class CheckpointError(DeepmixError):
    """A missing, incomplete or corrupt run folder / checkpoint."""


class ConfigError(DeepmixError, ValueError):
    """An invalid configuration (unknown key, bad value)."""


class NoDensityError(InputError):
    """A model without a normalised density was asked for ``log_prob``; the message names the
    score it offers instead (a per-layer likelihood, a lower bound)."""


class DistributedError(DeepmixError):
    """A distributed run that cannot start or continue: a bad launch environment, or a peer
    process that died or stopped answering within the timeout (the message names it)."""
