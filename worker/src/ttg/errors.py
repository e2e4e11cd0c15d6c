"""The project's exception hierarchy.

Backends translate client exceptions (redis, pika) into these at the boundary
with ``raise X(...) from None``, so the worker loop and the CLI only ever catch
TTG's own errors.
"""


class TTGError(Exception):
    """Base class of every error TTG raises on purpose."""

    #: Process exit code the CLI uses when this error ends a command.
    exit_code = 1


class UsageError(TTGError):
    """Bad input from the user: a flag, a value, a run id, a parameter space."""

    exit_code = 2


class RunNotFound(TTGError):
    """The run id names no run the broker knows."""

    exit_code = 1


class RunConflict(UsageError):
    """A run with this id exists with different parameters."""


class BrokerError(TTGError):
    """The broker refused or failed an operation."""

    exit_code = 3


class BrokerConnectionError(BrokerError):
    """The broker cannot be reached (down, restarting, network cut)."""
