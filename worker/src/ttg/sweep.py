"""``ttg.Sweep``: one run, from Python — and the one implementation behind the CLI.

Seeding, status, waiting, results, verification, retry, control and the report
of a run are methods here; ``ttg seed``, ``ttg status``, ``ttg results``,
``ttg verify``, ``ttg retry`` … are thin doors that parse flags, call them and
print. A sweep talks to a broker through an :class:`~ttg.endpoint.Endpoint`: a
URL (``"redis://…"``, ``"amqp://…"``), the ``TTG_*`` variables when none is
given, or the broker of a ``ttg.local()`` block, which also runs the workers
(and lets them run a script's own functions).

    import ttg
    space = ttg.grid(omega=[0.5, 1, 2], zeta=ttg.linspace(0, 1, 5))
    with ttg.local(workers=2) as broker:
        sweep = ttg.Sweep("osc-1", compute="sweep_sim.oscillator:simulate",
                          space=space, chunk_size=4, broker=broker)
        sweep.run(progress=True)
        df = sweep.results()
        assert sweep.verify().ok
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from ttg import compute as computes
from ttg import endpoint as endpoints
from ttg import space as spaces
from ttg import store
from ttg.broker import Broker, RetryReport, SeedReport
from ttg.decode import Problems, preview
from ttg.endpoint import Endpoint
from ttg.errors import RunConflict, TTGError, UsageError, needs_extra
from ttg.identity import identity
from ttg.outputs import check_output
from ttg.progress import Bar, suffix
from ttg.rate import RateMeter
from ttg.run import RunSpec, check_run_id
from ttg.store.reader import delete_run, resolved
from ttg.verify import StatusReport, VerifyReport, status_report, verify

# The exporter (``ttg.export``, ``ttg.results``) and reuse (``ttg.reuse``) are imported by
# the methods that use them: ``ttg seed`` and ``ttg status`` start without them.
if TYPE_CHECKING:
    import pandas as pd

    from ttg import results as rowsof
    from ttg import reuse as reuses
    from ttg.report.model import ReportSummary
    from ttg.store.check import StoreCheck

#: Parameters per chunk a sweep picks when none is given: about this many chunks …
DEFAULT_CHUNKS = 256
#: … with at most this many parameters each.
MAX_DEFAULT_CHUNK_SIZE = 1000


class Host(Protocol):
    """What a ``ttg.local()`` block gives a sweep: its broker, and workers that follow it."""

    endpoint: Endpoint

    def compute_name(self, fn: Callable[..., Any]) -> str:
        """The ``module:function`` the local workers import ``fn`` by."""

    def serve(self, compute: str) -> None:
        """Make sure workers are running that may run ``compute``."""

    def check(self) -> None:
        """Raise if the workers cannot finish anything any more (every one exited)."""


BrokerArg = str | Endpoint | Host | None


def _endpoint(broker: BrokerArg) -> Endpoint:
    if broker is None:
        if not os.environ.get("TTG_BROKER_URL"):
            # The commands' default (localhost:6379) would be some other Redis on this
            # machine: from Python, say where the broker is.
            raise UsageError(
                "no broker: pass broker= (a URL, or a ttg.local() block) or set TTG_BROKER_URL"
            )
        return endpoints.from_env(os.environ)
    if isinstance(broker, Endpoint):
        return broker
    if isinstance(broker, str):
        # A URL given here is the whole address: credentials meant for TTG_BROKER_URL's
        # broker stay out of it; the TLS files and the connect timeout still apply.
        base = endpoints.from_env(os.environ)
        return replace(base, backend=endpoints.backend_of(broker), url=broker, username=None,
                       password=None)  # fmt: skip
    return broker.endpoint


def compute_name(fn: str | Callable[..., Any], host: Host | None = None) -> str:
    """``module:function`` for ``fn``: a name as given, or an importable function's own.

    Raises:
        UsageError: ``fn`` is defined where workers cannot import it (a script's
            ``__main__`` outside ``ttg.local()``, a notebook, a nested function or a lambda).
    """
    if isinstance(fn, str):
        computes.check_name(fn)
        return fn
    qualname = getattr(fn, "__qualname__", "")
    module = getattr(fn, "__module__", None)
    if not callable(fn) or not module or not qualname:
        raise UsageError(f"compute {fn!r}: give a function or a 'module:function' name")
    if "<" in qualname or "." in qualname:
        raise UsageError(
            f"compute {module}:{qualname}: workers can import only a module's top-level "
            "function (not a lambda, a nested function or a method)"
        )
    if module == "__main__":
        if host is not None:
            return host.compute_name(fn)
        raise UsageError(
            f"compute {qualname} is defined in __main__ (this script or notebook): workers "
            f"elsewhere cannot import it. Move it into a module they have (e.g. mysim.py, "
            f"then compute='mysim:{qualname}'), or run the sweep inside ttg.local()"
        )
    return f"{module}:{qualname}"


def default_chunk_size(params: int) -> int:
    """About ``DEFAULT_CHUNKS`` chunks, at most ``MAX_DEFAULT_CHUNK_SIZE`` parameters each."""
    return max(1, min(MAX_DEFAULT_CHUNK_SIZE, params // DEFAULT_CHUNKS))


def make_space(
    space: spaces.AnySpace | range | int | str | None, params: int | None = None
) -> spaces.AnySpace:
    """A parameter space from what a caller has: a space, a Python ``range``, a count N
    (0..N-1), or ``--space`` text.

    Raises:
        UsageError: neither given, or a count that disagrees with the space's size.
    """
    if space is None:
        if params is None:
            raise UsageError("give --params N (a range 0..N-1) or --space")
        return spaces.RangeSpace(0, params)
    if isinstance(space, bool):
        raise UsageError(f"space {space!r} is not a parameter space")
    if isinstance(space, int):
        space = spaces.RangeSpace(0, space)
    elif isinstance(space, range):
        space = spaces.RangeSpace(space.start, space.stop, space.step)
    elif isinstance(space, str):
        space = spaces.parse(space)
    elif not hasattr(space, "to_spec"):
        raise UsageError(
            f"space {preview(space, 60)} is not a parameter space: give a count, a range, "
            "ttg.grid(...), ttg.linspace(...), ttg.table(...) or --space text"
        )
    if params is not None and params != space.size:
        raise UsageError(f"--params {params} but the space has {space.size} parameters")
    return space


class Sweep:
    """One run: seed it, follow it, read its results and prove them.

    Args:
        run: The run id, ``[a-z0-9][a-z0-9-]{0,62}``.
        compute: ``"module:function"`` or an importable function. None: the
            default compute (``ttg.compute:square``), for integer ranges only.
        space: A space (``ttg.grid``, ``ttg.linspace``, ``ttg.table`` …), a
            Python ``range``, a count N (0..N-1), or ``--space`` text.
        chunk_size: Parameters per chunk: aim for seconds of work per chunk,
            well under the workers' SIGTERM grace. Default: about 256 chunks.
        broker: A URL, an ``Endpoint``, a ``ttg.local()`` block, or None for
            ``TTG_BROKER_URL`` and the other ``TTG_*`` variables.
        work_ms: Simulated cost per chunk (demos, benchmarks).
        max_deliveries: Deliveries of a chunk before it is recorded dead.
        compute_allow: Module prefixes the compute must come from; None: as
            ``TTG_COMPUTE_ALLOW`` says when set, else not checked here (the
            workers refuse what they may not run).
        check: Import the compute here before seeding, so a typo fails now.
        reuse: Runs whose ``ok`` results this run takes for parameters of equal
            value instead of computing them (README "Sweeps that grow"); they must be
            complete and verified, unless ``reuse_partial``, and have the same
            compute (``ttg.identity``), unless ``reuse_any_version``.
        compute_version: A version of the compute's code to bump when it changes in a
            way its package version does not say: part of its identity.
        **options: Further fields of the run's spec, as ``ttg.run.RunSpec`` names
            them (limits, a program to run, a results store: see docs/contract.md).
    """

    def __init__(
        self,
        run: str,
        compute: str | Callable[..., Any] | None = None,
        space: spaces.AnySpace | range | int | str | None = None,
        *,
        chunk_size: int | None = None,
        broker: BrokerArg = None,
        work_ms: int = 0,
        max_deliveries: int = 5,
        compute_allow: tuple[str, ...] | None = None,
        check: bool = True,
        reuse: Sequence[str] = (),
        reuse_partial: bool = False,
        reuse_any_version: bool = False,
        compute_version: str | None = None,
        **options: Any,
    ) -> None:
        self._connect(broker)
        self._reuse: tuple[str, ...] = tuple(reuse)
        self._reuse_how = {"partial": reuse_partial, "any_version": reuse_any_version}
        s = make_space(space)
        if compute is None:
            if not isinstance(s, spaces.RangeSpace):
                raise UsageError(
                    f"a {type(s).__name__.removesuffix('Space').lower()} space needs a compute "
                    f"(--compute module:function): the default {computes.DEFAULT_COMPUTE} "
                    "is a placeholder for integer ranges"
                )
            compute = computes.DEFAULT_COMPUTE
        name = compute_name(compute, self._host)
        unknown = set(options) - set(RunSpec.__dataclass_fields__)
        if unknown:
            raise UsageError(f"Sweep: no run option {', '.join(sorted(unknown))} in this version")
        self.spec = RunSpec(
            run=run,
            space=s.to_spec(),
            chunk_size=chunk_size if chunk_size is not None else default_chunk_size(s.size),
            compute=name,
            work_ms=work_ms,
            max_deliveries=max_deliveries,
            **{
                "identity": identity(
                    name, compute_version, look=check, command=options.get("exec", ())
                ),
                **options,
            },
        )
        allow = compute_allow
        if allow is None and os.environ.get("TTG_COMPUTE_ALLOW") and self._host is None:
            allow = computes.parse_allow(os.environ["TTG_COMPUTE_ALLOW"])
        if allow is not None:
            computes.check_allowed(name, allow)
        if check and isinstance(compute, str) and not name.startswith(computes.EXEC + ":"):
            # A function object given is imported already. Without an allowlist here, the
            # name itself is the entry: still only a function its module defines.
            computes.load(name, allow if allow is not None else (name,))

    def _connect(self, broker: BrokerArg) -> None:
        self._host: Host | None = None if isinstance(broker, str | Endpoint | None) else broker
        self.endpoint = _endpoint(broker)
        self._broker: Broker | None = None
        self._meter = RateMeter()
        self._reuse = ()
        self._reuse_how = {"partial": False, "any_version": False}

    @classmethod
    def attach(cls, run: str, broker: BrokerArg = None) -> Sweep:
        """Follow a run seeded elsewhere (by ``ttg seed``, the chart, another process).

        Raises:
            RunNotFound: the broker holds no such run.
        """
        sweep = cls.__new__(cls)
        sweep._connect(broker)
        try:
            sweep.spec = sweep.broker.spec(check_run_id(run))
        except BaseException:
            sweep.close()
            raise
        return sweep

    # -- the broker ------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self.spec.run

    @property
    def broker(self) -> Broker:
        """The connection, opened on first use (waiting ``TTG_CONNECT_TIMEOUT_SECONDS``)."""
        if self._broker is None:
            self._broker = self.endpoint.open_broker()
        return self._broker

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None

    def __enter__(self) -> Sweep:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Sweep({self.spec.run!r}, compute={self.spec.compute!r}, "
            f"params={self.spec.total_params}, chunks={self.spec.total_chunks}, "
            f"broker={self.endpoint.backend}:{self.endpoint.url.split('@')[-1]!r})"
        )

    # -- seeding and waiting ---------------------------------------------------------------

    def seed(self, on_progress: Callable[[int, int], None] | None = None) -> SeedReport:
        """Publish the run's chunks: idempotent and resumable (a second call adds nothing).

        Raises:
            RunConflict: a run of this id exists with different parameters.
        """
        if self._host is not None:
            self._host.serve(self.spec.compute)
        if self.spec.results != store.BROKER:
            store.check_writable(self.spec.results)  # before the run exists: exit 3 or 4
        match, warnings = None, list[str]()
        if self._reuse:
            from ttg import reuse as reuses  # noqa: PLC0415 - see the imports above

            self.spec, match = reuses.plan(
                self.broker, self.spec, self._reuse, warnings=warnings, **self._reuse_how
            )
        try:
            with match or contextlib.nullcontext():
                reused = None if match is None else functools.partial(match.outcomes, self.spec)
                report = self.broker.seed(self.spec, on_progress=on_progress, reused=reused)
        except RunConflict as e:
            raise RunConflict(self._conflict() or str(e)) from None
        reused_params = self.spec.total_params - self.spec.computed_params
        return dataclasses.replace(report, reused_params=reused_params, warnings=tuple(warnings))

    def estimate(self, workers: int = 1) -> reuses.Estimate:
        """What seeding would do, without seeding (``ttg seed --dry-run``): parameters
        total, reused and to compute, chunks, and the compute time ``workers`` would take
        at the reused runs' measured seconds per parameter (median and p95)."""
        from ttg import reuse as reuses  # noqa: PLC0415 - see the imports above

        warnings: list[str] = []
        spec, match = self.spec, None
        if self._reuse:
            spec, match = reuses.plan(
                self.broker, self.spec, self._reuse, warnings=warnings, **self._reuse_how
            )
        with match or contextlib.nullcontext():
            return reuses.estimate(spec, match, workers, warnings)

    def _conflict(self) -> str | None:
        """What differs between this sweep's spec and the one stored under its run id."""
        try:
            stored = self.broker.spec(self.spec.run).to_dict()
        except TTGError:
            return None
        mine = self.spec.to_dict()
        fields = sorted(k for k in mine.keys() | stored.keys() if mine.get(k) != stored.get(k))
        if not fields:
            return None

        def show(spec: dict[str, Any], field: str) -> str:
            value = spec.get(field)
            if field == "space" and isinstance(value, dict):
                return f"{value.get('kind')} of {spaces.from_spec(value).size} parameters"
            return repr(value)

        diffs = "; ".join(f"{f} {show(stored, f)} there, {show(mine, f)} here" for f in fields)
        return f"run {self.spec.run!r} exists with different parameters: {diffs}; pick a new run id"

    def run(self, *, progress: bool = False, timeout: float | None = None) -> StatusReport:
        """Seed, then wait until every chunk has an outcome (or the run is paused or cancelled).

        Args:
            progress: Draw a progress bar on stderr while waiting.
            timeout: Give up after this many seconds (``TimeoutError``).
        """
        self.seed()
        return self.wait(progress=progress, timeout=timeout)

    def status(self) -> StatusReport:
        """The run's progress now, its recent errors named by their parameters' values."""
        return status_report(self.broker.progress(self.spec.run), spec=self.spec, meter=self._meter)

    def wait(
        self,
        *,
        progress: bool = False,
        timeout: float | None = None,
        interval: float = 0.2,
        on_status: Callable[[StatusReport], None] | None = None,
    ) -> StatusReport:
        """Poll until every chunk has an outcome, or the run is paused or cancelled.

        A status every ``interval`` seconds: a read that took longer is not followed
        by a wait. Where the backend follows outcomes as they arrive (RabbitMQ), the
        wait ends as soon as every chunk has one.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        bar = Bar(self.spec.run, enabled=progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                started = time.monotonic()
                s = self.status()
                if on_status is not None:
                    on_status(s)
                bar.update(s.finished, s.total_chunks, suffix(s))
                if s.complete or s.state in ("paused", "cancelled"):
                    return s
                if self._host is not None:
                    self._host.check()
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"run {self.spec.run}: {s.finished}/{s.total_chunks} chunks finished "
                        f"after {timeout}s"
                    )
                left = interval - (time.monotonic() - started)
                self.broker.wait_progress(self.spec.run, max(0.0, left))
        finally:
            bar.close()

    # -- results ----------------------------------------------------------------------------

    def rows(self) -> Iterator[rowsof.ResultRow]:
        """One row per parameter with an outcome, in index order (flat memory)."""
        from ttg import results as rowsof  # noqa: PLC0415 - see the imports above

        outcomes = rowsof.in_chunk_order(resolved(self.spec, self.broker.ledger(self.spec.run)))
        return rowsof.parameter_rows(self.spec, outcomes)

    def results(self, *, traceback: bool = True) -> pd.DataFrame:
        """A pandas DataFrame, one row per parameter (pandas comes with the ``pandas`` extra).

        Columns: ``index``, the parameter (one column per grid axis or table
        column, else ``value``), ``result`` (dict results: one ``result.KEY``
        column per key, when every result has the same keys), ``status`` (ok |
        error | dead), ``error``, ``traceback``, ``chunk``, ``worker``,
        ``attempt``, ``finished_at``.
        """
        try:
            import pandas  # noqa: PLC0415 - optional: the pandas extra
        except ImportError:
            raise needs_extra("Sweep.results() (pandas)", "pandas") from None
        from ttg import export as exports  # noqa: PLC0415 - see the imports above

        cols, cells = exports.table_cells(
            self.spec, resolved(self.spec, self.broker.ledger(self.spec.run)), traceback=traceback
        )
        return pandas.DataFrame(cells, columns=cols)

    def export(
        self,
        path: str | None = None,
        *,
        stream: IO[str] | None = None,
        format: str = "jsonl",
        chunks: bool = False,
        traceback: bool = False,
        raw: bool = False,
        problems: Problems | None = None,
    ) -> int:
        """Write the results to ``path`` (else ``stream``, else stdout): ``ttg results``.

        ``format`` is ``jsonl`` (a ``traceback`` field always), ``csv``
        (``traceback=True`` adds the column; ``raw=True`` leaves cells a
        spreadsheet would run as formulas as they are) or ``parquet`` (a path;
        the column always). A file is written beside ``path`` and renamed over
        it when complete. Ledger records that cannot be read are described in
        ``problems`` (else in one logged warning). Returns the number of rows written.
        """
        from ttg import export as exports  # noqa: PLC0415 - see the imports above

        opts = exports.ExportOptions(format, path, chunks, raw, traceback)
        if path:
            check_output(path)  # before any work
        # A results store's objects are read (and checked) one chunk at a time.
        ledger = resolved(self.spec, self.broker.ledger(self.spec.run, problems=problems))
        return exports.export(self.spec, ledger, opts, stream or sys.stdout)

    def aggregate(
        self, how: str, *, field: str | None = None, problems: Problems | None = None
    ) -> dict[str, Any]:
        """Reduce the ``ok`` results: sum, min, max, mean (of ``field`` for dict results) or M:F.

        Integers are summed exactly; floats are summed exactly and rounded once.
        """
        from ttg import export as exports  # noqa: PLC0415 - see the imports above

        # A results store's objects are read (and checked) one chunk at a time.
        ledger = resolved(self.spec, self.broker.ledger(self.spec.run, problems=problems))
        out = exports.aggregate_ledger(self.spec, ledger, how, field=field)
        out["run"] = self.spec.run
        return out

    # -- proof, repair, control ----------------------------------------------------------------

    def verify(
        self, *, allow_failed: bool = False, check: StoreCheck | None = None
    ) -> VerifyReport:
        """Read the whole ledger: exactly once (``verified``), and every parameter ok (``ok``)."""
        return verify(self.broker, self.spec.run, allow_failed=allow_failed, check=check)

    def retry(self, *, dead: bool = True, errors: bool = True) -> RetryReport:
        """After a fix: re-queue the chunks that died and/or hold parameter errors."""
        if self._host is not None:
            self._host.serve(self.spec.compute)
        return self.broker.retry(self.spec.run, dead=dead, errors=errors)

    def pause(self) -> None:
        """Workers stop taking the run's chunks within a lease (they finish what they hold)."""
        self.broker.set_control(self.spec.run, "paused")

    def resume(self) -> None:
        self.broker.set_control(self.spec.run, "running")

    def cancel(self) -> None:
        """Stop handing out the run's chunks for good (``resume`` undoes it); results stay."""
        self.broker.set_control(self.spec.run, "cancelled")

    def delete(self, *, keep_results: bool = False, force: bool = False) -> list[str]:
        """Remove the run's objects from its results store (unless ``keep_results``), then
        everything the broker holds for it.

        Returns:
            The runs that reused its results and so lose their provenance (``force``).

        Raises:
            UsageError: other runs reuse its results, and not ``force``.
        """
        from ttg import reuse as reuses  # noqa: PLC0415 - see the imports above

        lose = reuses.reusers(self.broker, self.spec.run)
        if lose and not force:
            raise UsageError(reuses.refusal(self.spec.run, lose))
        if not keep_results:
            delete_run(self.spec)
        self.broker.delete(self.spec.run)
        return lose

    def report(self, path: str | Path) -> ReportSummary:
        """Verify the run and draw its report: one self-contained HTML file (``report`` extra)."""
        from ttg.report import write_report  # noqa: PLC0415 - optional: the report extra

        check_output(path)
        verdict = self.verify()
        return write_report(
            Path(path),
            run=self.spec.run,
            verify=verdict,
            spec=self.spec,
            chunks=self.broker.ledger(self.spec.run),
            events=self.broker.events(self.spec.run),
        )
