"""Where exports and reports go: a regular file, replaced whole or not at all.

``--output`` is written beside its target under a temporary name and renamed
over it only once complete, so an interrupted or failed export leaves the
previous file as it was (DESIGN.md invariant 13), and a reader never sees half
a file. The target must be a regular file or nothing: a FIFO, a device, a
socket or a directory is refused, and so is a symbolic link (TTG never writes
through one, nor replaces it: give the path it points to).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from ttg.errors import Interrupted, UsageError

#: Reductions ``ttg results --aggregate`` knows by name (``ttg.export`` computes them).
AGGREGATES = ("sum", "min", "max", "mean")
#: Formats ``ttg results`` writes (``ttg.export``). Here, not there: the command line
#: offers them without importing the exporter.
FORMATS = ("jsonl", "csv", "parquet")


def check_output(path: str | Path, what: str = "--output") -> Path:
    """Refuse, before any work, an output path that is not (or cannot become) a regular file.

    Raises:
        UsageError: it is a symbolic link, a FIFO, a device, a socket or a
            directory, or its directory is missing or not writable.
    """
    target = Path(path)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror}") from None
    if st is not None:
        kind = _kind(st.st_mode)
        if kind is not None:
            raise UsageError(f"{what} {path}: is {kind}, not a regular file; refused")
        if not os.access(target, os.W_OK):
            raise UsageError(f"{what} {path}: not writable")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{what} {path}: no directory {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: its directory {folder} is not writable")
    return target


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    for test, name in (
        (stat.S_ISLNK, "a symbolic link (give the path it points to)"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


@contextlib.contextmanager
def replacing(path: str | Path, what: str = "--output") -> Iterator[Path]:
    """A temporary path beside ``path``; renamed over ``path`` when the block ends normally.

    On any error, SIGINT or SIGTERM inside the block the temporary file is
    removed and ``path`` is left as it was (``Interrupted``, exit 130, says so).
    The new file keeps the permissions of the one it replaces.

    Raises:
        UsageError: ``path`` is refused (``check_output``) or cannot be written.
        Interrupted: SIGINT or SIGTERM arrived; nothing was replaced.
    """
    target = check_output(path, what)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror}") from None
    os.close(fd)
    try:
        with _sigterm_interrupts():
            yield tmp
        _keep_mode(target, tmp)
        # Checked again at the last moment: a FIFO or link put there meanwhile is
        # not replaced either.
        check_output(target, what)
        os.replace(tmp, target)
    except KeyboardInterrupt:
        _remove(tmp)
        left = "left as it was" if target.exists() else "not written"
        raise Interrupted(f"interrupted: {target} {left}") from None
    except BaseException:
        _remove(tmp)
        raise


def _keep_mode(target: Path, tmp: Path) -> None:
    with contextlib.suppress(OSError):
        os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile (as SIGINT does), so the block cleans up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
