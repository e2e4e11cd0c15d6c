"""Object stores under a results store's base: a mounted directory or an S3 bucket.

The whole store needs four operations on immutable objects: put (durable and
whole when it returns), get, list a prefix, delete. ``file://`` uses the
operating system directly (write a hidden temporary file, fsync, rename, fsync
the directory: the only way to make a write durable and atomic on a volume, which
no filesystem library offers more simply). ``s3://`` uses pyarrow's
``S3FileSystem`` (the AWS C++ SDK inside the pyarrow wheel): the same dependency
that writes Parquet, so the store adds nothing to install, and it reads
credentials the standard way (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
a profile, a web identity token, an instance role). fsspec with s3fs would pull
aiobotocore, botocore and aiohttp, with their own pinned versions, for the same
four calls.

Every failure becomes a ``StoreError`` (``StoreAccessDenied`` for refused
credentials), with one line saying what failed; an object that is not there is
``ObjectNotFound``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ttg.errors import StoreAccessDenied, StoreError

#: Longest error text kept from a filesystem or S3 error (S3 messages run long).
MAX_ERROR_CHARS = 300
#: S3 connection and request timeouts, seconds: a store that hangs is retried by TTG's
#: own backoff, not waited on inside one request.
S3_CONNECT_TIMEOUT_SECONDS = 5.0
S3_REQUEST_TIMEOUT_SECONDS = 20.0
#: S3 errors that say our credentials or permissions are wrong (retrying will not help).
_DENIED = re.compile(
    r"ACCESS_DENIED|AccessDenied|INVALID_ACCESS_KEY_ID|InvalidAccessKeyId|SIGNATURE_DOES_NOT_MATCH"
    r"|SignatureDoesNotMatch|Forbidden|\b403\b"
)
_QUOTED = re.compile(r"'[^']*'")


def refused(e: BaseException) -> bool:
    """Whether the store refused our credentials, judged by its error without the names it quotes.

    Object names (random hex, users' prefixes) can hold ``403``; only the store's own words count.
    """
    return _DENIED.search(_QUOTED.sub("''", str(e))) is not None


class ObjectNotFound(StoreError):
    """The object is not in the store (deleted, or never written)."""


def _one_line(e: BaseException) -> str:
    text = str(e.strerror if isinstance(e, OSError) and e.strerror else e)
    return " ".join(text.split())[:MAX_ERROR_CHARS]


class ObjectStore(ABC):
    """Immutable objects named by ``/``-separated paths under one base."""

    #: The store's URL (``file:///data/ttg``, ``s3://bucket/prefix``).
    url: str

    def location(self, name: str) -> str:
        """The object's URL, for people and for tools reading the dataset directly."""
        return f"{self.url.rstrip('/')}/{name}"

    @abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Write ``name``: durable and whole when this returns, never partly visible."""

    @abstractmethod
    def get(self, name: str) -> bytes:
        """The object's bytes.

        Raises:
            ObjectNotFound: there is no such object.
        """

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name`` if it exists."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """``(name, size)`` of every object under ``prefix`` (a folder), in no set order."""

    @abstractmethod
    def delete_folder(self, prefix: str) -> None:
        """Remove every object under ``prefix`` (a folder), and the folder where there is one."""


class FileStore(ObjectStore):
    """A directory, typically a ReadWriteMany volume mounted at the same path in every pod."""

    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.root = root

    def _fail(self, what: str, name: str, e: OSError) -> StoreError:
        return StoreError(f"results store {self.url}: cannot {what} {name}: {_one_line(e)}")

    def _check_root(self) -> None:
        # Never create the base: a volume that is not mounted must not turn into a
        # directory on the container's own (ephemeral) disk.
        if not self.root.is_dir():
            raise StoreError(f"results store {self.url}: {self.root} is not a directory (mounted?)")

    def put(self, name: str, data: bytes) -> None:
        path = self.root / name
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            if not path.parent.is_dir():
                self._check_root()
                path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            # Names carry a random token: a rename never replaces another object.
            os.rename(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise self._fail("write", name, e) from None

    def get(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.location(name)} does not exist") from None
        except OSError as e:
            raise self._fail("read", name, e) from None

    def delete(self, name: str) -> None:
        try:
            (self.root / name).unlink(missing_ok=True)
        except OSError as e:
            raise self._fail("delete", name, e) from None

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        top = self.root / prefix
        try:
            if not top.is_dir():
                self._check_root()
                return
            for dirpath, _, files in os.walk(top):
                for f in files:
                    path = Path(dirpath) / f
                    with contextlib.suppress(FileNotFoundError):
                        yield str(path.relative_to(self.root)), path.stat().st_size
        except OSError as e:
            raise self._fail("list", prefix, e) from None

    def delete_folder(self, prefix: str) -> None:
        top = self.root / prefix
        try:
            if top.is_dir():
                shutil.rmtree(top)
            elif not top.exists():
                self._check_root()
        except OSError as e:
            raise self._fail("delete", prefix, e) from None


class S3Store(ObjectStore):
    """A bucket (and prefix) of any S3-compatible store, through pyarrow's S3 filesystem.

    The endpoint comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (unset: AWS),
    the region from ``AWS_REGION`` or ``AWS_DEFAULT_REGION``, the credentials from the
    SDK's standard chain.
    """

    def __init__(self, url: str, bucket: str, prefix: str) -> None:
        self.url = url
        self.bucket = bucket
        self.prefix = prefix
        try:
            from pyarrow import fs  # noqa: PLC0415 - the parquet extra, loaded only for a store
        except ImportError:
            raise StoreError(
                f"results store {url} needs pyarrow: pip install 'ttg[parquet]'"
            ) from None
        self._fs_module = fs
        options: dict[str, Any] = {
            "connect_timeout": S3_CONNECT_TIMEOUT_SECONDS,
            "request_timeout": S3_REQUEST_TIMEOUT_SECONDS,
            # TTG retries with its own backoff; the SDK's retries would only hide a long outage.
            "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=2),
        }
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            scheme, sep, rest = endpoint.partition("://")
            options["endpoint_override"] = rest.rstrip("/") if sep else endpoint
            options["scheme"] = scheme if sep else "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region or endpoint:
            # A custom endpoint has no region to discover, and S3 requests are signed for one.
            options["region"] = region or "us-east-1"
        try:
            self.fs = fs.S3FileSystem(**options)
        except (OSError, ValueError) as e:
            raise StoreError(f"results store {url}: {_one_line(e)}") from None

    def _path(self, name: str) -> str:
        return "/".join(p for p in (self.bucket, self.prefix, name) if p)

    def _fail(self, what: str, name: str, e: BaseException) -> StoreError:
        text = f"results store {self.url}: cannot {what} {name}: {_one_line(e)}"
        return StoreAccessDenied(text) if refused(e) else StoreError(text)

    def put(self, name: str, data: bytes) -> None:
        try:
            with self.fs.open_output_stream(self._path(name)) as f:
                f.write(data)
        except OSError as e:
            raise self._fail("write", name, e) from None

    def get(self, name: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._path(name)) as f:
                data: bytes = f.readall()
                return data
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.location(name)} does not exist") from None
        except OSError as e:
            raise self._fail("read", name, e) from None

    def delete(self, name: str) -> None:
        try:
            self.fs.delete_file(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail("delete", name, e) from None

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        base = self._path("")
        selector = self._fs_module.FileSelector(
            self._path(prefix), recursive=True, allow_not_found=True
        )
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as e:
            raise self._fail("list", prefix, e) from None
        for info in infos:
            if info.type == self._fs_module.FileType.File:
                yield info.path[len(base) :].lstrip("/"), int(info.size or 0)

    def delete_folder(self, prefix: str) -> None:
        # DeleteObjects, a thousand keys a request: a run of 10^5 objects in a hundred.
        try:
            self.fs.delete_dir_contents(self._path(prefix).rstrip("/"), missing_dir_ok=True)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail("delete", prefix, e) from None
