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


class Interrupted(TTGError):
    """SIGINT or SIGTERM stopped a command part way; the message says what was left as it was."""

    exit_code = 130


class RunNotFound(UsageError):
    """The run id names no run the broker knows (bad input: exit 2, like any other)."""


class RunConflict(UsageError):
    """A run with this id exists with different parameters."""


class RunDataError(TTGError):
    """What the broker holds for one run cannot be read: garbage, or data of a newer version.

    Raised by the backends' decode layer for one run's spec or records; a reader
    that serves many runs (a worker, the exporter, ``ttg runs``) skips that run,
    reports it, and goes on with the others. ``ttg delete`` still removes it.
    Exit code 5 (docs/contract.md): neither bad input nor an unreachable broker.
    """

    exit_code = 5

    def __init__(self, run: str | None, problem: str) -> None:
        super().__init__(f"run {run}: {problem}" if run else problem)
        self.run = run
        self.problem = problem


class UnsupportedRun(RunDataError):
    """The run's spec requires features this version does not know (a newer ``ttg seed``)."""


class BrokerError(TTGError):
    """The broker refused or failed an operation; worth retrying."""

    exit_code = 3


class BrokerConnectionError(BrokerError):
    """The broker cannot be reached (down, restarting, network cut)."""


class BrokerDataError(BrokerError, RunDataError):
    """The broker refused an operation because of what it holds for a run (Redis ``WRONGTYPE``,
    a script failing on garbage): retrying will not help until that data is removed.

    A ``BrokerError`` to the worker loop (it backs off, and gives up on the run's
    chunks after its budget), a ``RunDataError`` to a command (exit 5).
    """

    exit_code = 5


class AuthenticationError(BrokerError):
    """The broker refused our credentials, or the TLS handshake failed: retrying will not help."""

    exit_code = 4


def needs_extra(what: str, extra: str) -> UsageError:
    """The error for a feature whose optional dependencies are not installed.

    The install line works from a TTG checkout (the package is not on PyPI).
    """
    return UsageError(
        f"{what} needs the {extra} extra: pip install -e 'worker[{extra}]' (in a TTG checkout)"
    )


class StoreError(TTGError):
    """A results store (``file://`` volume, ``s3://`` bucket) failed an operation; worth retrying.

    Exit code 3, like an unreachable broker: the store may be back later.
    """

    exit_code = 3


class StoreAccessDenied(StoreError):
    """The results store refused our credentials or our access to the bucket."""

    exit_code = 4
