"""What counts as "the same compute" when a run reuses another's results.

A compute's identity is one line, recorded in the run's spec at seeding:

- ``module:function`` itself;
- the version of the installed distribution that provides the module's top-level
  package (``importlib.metadata``), e.g. ``mylab==1.4.0``; for a module that no
  distribution provides (a script's directory, a checkout on ``PYTHONPATH``), the
  sha256 of the module's source file (``file=12 hex``), so an edit is a new identity;
- for a program compute (``exec:PROGRAM``), the sha256 of the program's file and its
  command template;
- ``--compute-version STR`` when given: a version the user bumps when they change the
  code in a way none of the above sees (data files, a C library, a config).

Parts that cannot be known where ``ttg seed`` runs (``--no-check``, the code is not
installed there) are written ``unknown``; two identities are the same compute only if
the lines are equal (docs/contract.md, "Sweeps that grow").
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ttg.compute import EXEC

if TYPE_CHECKING:
    from importlib.metadata import Distribution

#: Hex digits of a file's sha256 kept in an identity.
DIGEST_CHARS = 12
#: Longest ``--compute-version``.
MAX_VERSION_CHARS = 200
#: Where a distribution lists its files (``Distribution.files`` reads the first there is).
_FILE_LISTS = ("RECORD", "installed-files.txt", "SOURCES.txt")


def _file_digest(path: str | None) -> str:
    if not path:
        return "unknown"
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:DIGEST_CHARS]
    except OSError:
        return "unknown"


def _provides(dist: Distribution, top: str) -> bool:
    """Whether ``dist`` provides top-level package ``top``, as
    ``importlib.metadata.packages_distributions()`` decides it (declared
    ``top_level.txt``, else inferred from its files) — without parsing the file
    list of every distribution that cannot: that walk over a large environment
    (a conda env of hundreds) cost each ``ttg seed`` 70 ms to seconds.
    """
    declared = (dist.read_text("top_level.txt") or "").split()
    if declared:
        return top in declared
    listing = "".join(dist.read_text(n) or "" for n in _FILE_LISTS)
    if top not in listing:
        return False  # no file of it names the package
    return any(
        (f.parts[0] if len(f.parts) > 1 else f.with_suffix("").name) == top
        for f in dist.files or ()
        if f.suffix == ".py"
    )


@functools.cache
def _provider(top: str) -> Distribution | None:
    """The first installed distribution providing top-level package ``top``."""
    # Imported here: ~13 ms that only seeding needs, not every command importing ttg.sweep.
    from importlib import metadata  # noqa: PLC0415

    return next((d for d in metadata.distributions() if _provides(d, top)), None)


def _module_part(module: str, look: bool) -> str:
    dist = _provider(module.split(".", maxsplit=1)[0])
    if dist is not None:
        # The version of the distribution found (its metadata read once), not a second
        # search of the path by its name.
        meta = dist.metadata
        if meta["Name"] and meta["Version"]:
            return f"{meta['Name']}=={meta['Version']}"
    if not look:
        return "file=unknown"
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    return f"file={_file_digest(found.origin if found else None)}"


def identity(
    compute: str,
    version: str | None = None,
    *,
    look: bool = True,
    command: Sequence[str] = (),
) -> str:
    """The identity line of ``compute`` as installed here, with the user's ``version``.

    A program compute's ``command`` (its argument list, placeholders unexpanded) is
    part of it: the same program given other arguments computes something else.

    ``look=False`` (``ttg seed --no-check``) never looks for the module's file, which
    would import its parent packages.
    """
    module, _, name = compute.partition(":")
    if module == EXEC:
        part = f"file={_file_digest(shutil.which(name) or name)}"
        if command:
            part += f" command={json.dumps(list(command))}"
    else:
        part = _module_part(module, look)
    line = f"{compute} {part}"
    return line if version is None else f"{line} version={version}"
