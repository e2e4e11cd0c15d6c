"""The project's exception hierarchy.

Backends translate client exceptions (redis, pika) into these at the boundary
with ``raise X(...) from None``, so the worker loop and the CLI only ever catch
TTG's own errors. Each class carries the exit code the CLI ends with
(docs/contract.md, "Exit codes").
"""


class TTGError(Exception):
    """Base class of every error TTG raises on purpose."""

    #: Process exit code the CLI uses when this error ends a command.
    exit_code = 1


class UsageError(TTGError):
    """Bad input from the user: a flag, a value, a run id, a parameter space."""

    exit_code = 2


class RunNotFound(UsageError):
    """The run id names no run the broker knows (bad input: exit 2, like any other)."""


class RunConflict(UsageError):
    """A run with this id exists with different parameters."""


class BrokerError(TTGError):
    """The broker refused or failed an operation; worth retrying."""

    exit_code = 3


class BrokerConnectionError(BrokerError):
    """The broker cannot be reached (down, restarting, network cut)."""


class AuthenticationError(BrokerError):
    """The broker refused our credentials, or the TLS handshake failed: retrying will not help."""

    exit_code = 4


class StoreError(TTGError):
    """A results store (``file://`` volume, ``s3://`` bucket) failed an operation; worth retrying.

    Exit code 3, like an unreachable broker: the store may be back later.
    """

    exit_code = 3


class StoreAccessDenied(StoreError):
    """The results store refused our credentials or our access to the bucket."""

    exit_code = 4
