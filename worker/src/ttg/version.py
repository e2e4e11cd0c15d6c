"""TTG's version, read from the installed package's metadata (pyproject.toml writes it once)."""

from __future__ import annotations

import functools


@functools.cache
def version() -> str:
    """The installed version; ``0+unknown`` in a source tree that was never installed.

    Read on first use: the metadata lookup costs ~0.1 s, and importing
    ``importlib.metadata`` ~13 ms, which every ``ttg`` command and compute process
    would pay at start if done eagerly.
    """
    from importlib.metadata import PackageNotFoundError  # noqa: PLC0415 - see above
    from importlib.metadata import version as _metadata_version  # noqa: PLC0415

    try:
        return _metadata_version("ttg")
    except PackageNotFoundError:
        return "0+unknown"
