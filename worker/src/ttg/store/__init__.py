"""Results stores: where a run's results live, when not in the broker's ledger.

A store is chosen once per install (``TTG_RESULTS_URL``) and recorded in each
run's spec when it is seeded (``RunSpec.results``), so workers and readers of a
run always agree on where its results are:

- ``broker``: in the ledger, as before (small runs, ``make demo``);
- ``file:///PATH``: Parquet objects in a directory, typically a ReadWriteMany
  volume mounted at the same path in every pod;
- ``s3://BUCKET[/PREFIX]``: Parquet objects in any S3-compatible store.

Workers write each chunk's results as one immutable Parquet object, durable
before the ledger counts the chunk; the ledger keeps the object's name, row
count and sha256 (``ttg.run.ObjectRef``) in place of the results
(``ttg.store.writer``). Readers fetch and check the objects
(``ttg.store.reader``). A run's objects under ``runs/RUN/`` form a Parquet
dataset that pandas, Polars, DuckDB or Spark read directly
(``ttg.store.chunks`` documents the layout); ``ttg.store.certificate`` proves
it complete without the broker.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import re
import threading
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ttg.errors import UsageError
from ttg.store.objects import FileStore, ObjectNotFound, ObjectStore, S3Store

__all__ = ["BROKER", "ObjectNotFound", "ObjectStore", "check_writable", "open_store", "parse_url"]

#: The results URL that keeps results in the ledger (the default).
BROKER = "broker"
#: An S3 bucket name (the rules S3 itself enforces, loosely).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: Where ``check_writable`` writes its probe: beside the runs, never inside a run's dataset.
PROBE_FOLDER = "_ttg"

_stores: dict[str, ObjectStore] = {}
_lock = threading.Lock()


def parse_url(url: str) -> str:
    """``url`` if it names a results store TTG can use, made canonical (no trailing ``/``).

    Raises:
        UsageError: it is none of ``broker``, ``file:///ABSOLUTE/PATH``, ``s3://BUCKET[/PREFIX]``.
    """
    if url == BROKER:
        return url
    parts = urlsplit(url)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(
            f"results URL {url!r}: no query, fragment or credentials (credentials come "
            "from AWS_* variables)"
        )
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/") or path == "/":
            raise UsageError(f"results URL {url!r}: expected file:///ABSOLUTE/PATH")
        if any(p in ("..", ".") for p in path.split("/")):
            raise UsageError(f"results URL {url!r}: the path must not hold . or ..")
        return "file://" + path.rstrip("/")
    if parts.scheme == "s3":
        if not _BUCKET.fullmatch(parts.netloc):
            raise UsageError(f"results URL {url!r}: {parts.netloc!r} is not an S3 bucket name")
        prefix = parts.path.strip("/")
        if any(p in ("", "..", ".") for p in prefix.split("/")) and prefix:
            raise UsageError(f"results URL {url!r}: the prefix must not hold //, . or ..")
        return f"s3://{parts.netloc}" + (f"/{prefix}" if prefix else "")
    raise UsageError(f"results URL {url!r}: expected broker, file:///PATH or s3://BUCKET/PREFIX")


def open_store(url: str) -> ObjectStore:
    """The store at ``url`` (not ``broker``), one per URL per process (S3 clients are reused).

    Raises:
        UsageError: not a store URL.
        StoreError: the store cannot be set up here (pyarrow missing, bad endpoint).
    """
    canonical = parse_url(url)
    if canonical == BROKER:
        raise UsageError("the broker is not a results store")
    with _lock:
        store = _stores.get(canonical)
        if store is None:
            parts = urlsplit(canonical)
            if parts.scheme == "file":
                store = FileStore(canonical, Path(unquote(parts.path)))
            else:
                store = S3Store(canonical, parts.netloc, parts.path.strip("/"))
                if not any(isinstance(s, S3Store) for s in _stores.values()):
                    # Registered after pyarrow's own handler, so it runs first: the AWS SDK
                    # aborts the process if it is shut down while a client is still alive.
                    atexit.register(_forget_s3)
            _stores[canonical] = store
        return store


def _forget_s3() -> None:
    """Drop every S3 client, then shut the AWS SDK down, before the interpreter's own exit.

    Left to pyarrow's handler, with a client still referenced, the SDK's threads were
    sometimes destroyed while running: "terminate called without an active exception",
    exit -6, after the command had done its work.
    """
    with _lock:
        for url in [u for u, s in _stores.items() if isinstance(s, S3Store)]:
            del _stores[url]
    gc.collect()
    with contextlib.suppress(Exception):
        from pyarrow import fs  # noqa: PLC0415

        fs.finalize_s3()


def check_writable(url: str) -> None:
    """Write, read back and delete a small probe object in the store at ``url``.

    What ``ttg seed`` does before it records a run that keeps its results there.

    Raises:
        StoreError: unreachable, refusing writes, or not giving back what was written.
        StoreAccessDenied: it refused our credentials.
    """
    from ttg.errors import StoreError  # noqa: PLC0415

    store = open_store(url)
    name = f"{PROBE_FOLDER}/probe-{uuid.uuid4().hex}"
    data = b"ttg probe\n"
    store.put(name, data)
    try:
        if store.get(name) != data:
            raise StoreError(f"results store {url}: a probe object read back differently")
    finally:
        store.delete(name)
