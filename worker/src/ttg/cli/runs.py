"""The commands about runs: seed, status, verify, results, runs, control, retry, delete."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ttg import compute, config, store
from ttg import space as spaces
from ttg.broker import Broker
from ttg.cli import Command, connect, emit, float_at_least, int_at_least, run_id
from ttg.cli import progress as bars
from ttg.decode import Problems, one_line
from ttg.errors import RunDataError, RunNotFound, UnsupportedRun, UsageError
from ttg.export import AGGREGATES, FORMATS, ExportOptions, aggregate_ledger, export
from ttg.limits import MAX_PARAMS, MAX_WORK_MS
from ttg.metrics import RateMeter
from ttg.outputs import check_output
from ttg.results import dumps, problems_line
from ttg.run import RunSpec
from ttg.store import certificate
from ttg.store.check import StoreCheck
from ttg.store.reader import delete_run, resolved
from ttg.verify import status_report, verify

if TYPE_CHECKING:
    from ttg.report import ReportSummary

# -- seed ---------------------------------------------------------------------------------


def cmd_seed(args: argparse.Namespace) -> int:
    if args.space:
        space = spaces.parse(args.space)
        if args.params is not None and args.params != space.size:
            raise UsageError(f"--params {args.params} but --space has {space.size} parameters")
    elif args.params is None:
        raise UsageError("give --params N (a range 0..N-1) or --space")
    else:
        space = spaces.RangeSpace(0, args.params)
    spec = RunSpec(
        run=args.run,
        space=space.to_spec(),
        chunk_size=args.chunk_size,
        compute=args.compute,
        work_ms=args.work_ms,
        max_deliveries=args.max_deliveries,
        results=args.results_url,
    )
    # Refused here rather than by every worker: the allowlist always, the import
    # unless the seeder does not have the user's code.
    compute.check_allowed(spec.compute, args.compute_allow)
    if not args.no_check:
        compute.load(spec.compute, args.compute_allow)
    if spec.results != store.BROKER:
        store.check_writable(spec.results)  # before the run exists: exit 3 or 4 otherwise
    broker = connect(args)
    bar = bars.Bar(f"seeding {spec.run}", enabled=not args.json and sys.stderr.isatty())
    report = broker.seed(spec, on_progress=bar.update)
    bar.close()
    out = {
        "run": report.run,
        "total_chunks": report.total_chunks,
        "total_params": report.total_params,
        "seeded_chunks": report.seeded_chunks,
        "added": report.added,
        "already_seeded": report.already_seeded,
    }
    text = (
        f"run {report.run}: {report.total_params} parameters in {report.total_chunks} chunks; "
        + (
            "already seeded, nothing added"
            if report.already_seeded
            else f"published {report.added} chunks"
        )
    )
    emit(args, out, text)
    return 0


# -- status / verify -------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    broker = connect(args)
    if not args.watch:
        report = status_report(broker.progress(args.run))
        emit(args, report, bars.explain(report))
        return 0
    meter = RateMeter(window=15.0)
    bar = bars.Bar(args.run, enabled=not args.json and sys.stdout.isatty(), stream=sys.stdout)
    waiting = False
    while True:
        try:
            p = broker.progress(args.run)
        except RunNotFound:
            # Watching a run about to be seeded (`ttg seed ... & ttg status --watch`).
            if not waiting:
                waiting = True
                print(f"ttg: waiting for run {args.run} to be seeded", file=sys.stderr)
            time.sleep(args.interval)
            continue
        report = status_report(p, meter.update(p.finished))
        if args.json:
            print(bars.as_json(report), flush=True)
        elif bar.enabled:
            bar.update(p.finished, p.total_chunks, suffix=bars.suffix(report))
        else:
            print(bars.describe(report), flush=True)
        if p.complete or p.state in ("paused", "cancelled"):
            bar.close()
            if bar.enabled:
                print(bars.explain(report))
            return 0
        time.sleep(args.interval)


def cmd_verify(args: argparse.Namespace) -> int:
    if args.offline:
        return _verify_offline(args)
    if args.dataset:
        raise UsageError("a DATASET is checked with --offline --certificate FILE")
    if not args.run:
        raise UsageError("the following arguments are required: --run (or --offline)")
    if args.certificate:
        check_output(args.certificate, "--certificate")
    broker = connect(args)
    spec = broker.spec(args.run)
    if args.certificate and spec.results == store.BROKER:
        raise UsageError(
            f"run {args.run} keeps its results in the broker: a certificate proves a "
            "results store's dataset (seed with TTG_RESULTS_URL)"
        )
    check = StoreCheck(spec, certificate=bool(args.certificate))
    report = verify(broker, args.run, allow_failed=args.allow_failed, check=check)
    if args.certificate and check.leaves is not None:
        certificate.write(args.certificate, certificate.document(spec, check.leaves, report))
        report["certificate"] = args.certificate
    verdict = "VERIFIED" if report["ok"] else "NOT VERIFIED"
    lines = [f"{verdict}: {bars.describe(report)}", f"closed form: {report['closed_form']}"]
    if report["missing"]:
        lines.append(f"missing {report['missing']} chunks, e.g. {report['missing_sample']}")
    if report["dead"] or report["errors"]:
        lines.append(
            f"failures: {report['dead']} chunks dead, {report['errors']} chunks with "
            f"{report['param_errors']} parameter errors"
            + ("" if args.allow_failed else " (--allow-failed accepts them)")
        )
    if report["dead"] or report["errors"]:
        lines += [f"error: {e}" for e in report["recent_errors"]]
    lines += [f"problem: {p}" for p in report["problems"]]
    if report.get("results", store.BROKER) != store.BROKER:
        strays, pending = report["strays_removed"], report["pending_objects"]
        lines.append(
            f"results store: {report['objects_checked']} objects checked in {report['results']}"
            + (f", {strays} strays removed" if strays else "")
            + (f", {pending} not counted yet" if pending else "")
        )
    if report.get("certificate"):
        lines.append(f"certificate: {report['certificate']}")
    emit(args, report, "\n".join(lines))
    return 0 if report["ok"] else 1


def _verify_offline(args: argparse.Namespace) -> int:
    """``verify --offline --certificate FILE DATASET``: no broker, the dataset alone."""
    if not args.certificate or not args.dataset:
        raise UsageError("--offline needs --certificate FILE and the DATASET to check")
    report = certificate.check_offline(
        args.certificate, args.dataset, allow_failed=args.allow_failed
    )
    verdict = report["certificate_verdict"]
    lines = [
        f"{'VERIFIED' if report['ok'] else 'NOT VERIFIED'} offline: run {report['run']}, "
        f"{report['objects']} objects, {report['rows']} rows in {report['dataset']}",
        f"root hash: {'matches' if report['root_match'] else 'DIFFERS from'} the certificate's; "
        f"certificate's verdict: {'verified' if verdict.get('verified') else 'not verified'}"
        f"{'' if verdict.get('ok') else ' (with failures)'}, {report['created_at']}",
    ]
    if report["missing"]:
        lines.append(f"missing {report['missing']} chunks, e.g. {report['missing_sample']}")
    lines += [f"problem: {p}" for p in report["problems"]]
    emit(args, report, "\n".join(lines))
    return 0 if report["ok"] else 1


# -- results ------------------------------------------------------------------------------------


def cmd_results(args: argparse.Namespace) -> int:
    opts = ExportOptions(args.format, args.output, args.chunks, args.raw)
    if args.output:
        check_output(args.output)  # before any work
    broker = connect(args)
    spec = broker.spec(args.run)  # an unknown run is an error, not an empty file
    p = broker.progress(args.run)
    if not p.complete:
        print(
            f"ttg: warning: run {args.run} is {p.state}: {p.total_chunks - p.finished} of "
            f"{p.total_chunks} chunks have no outcome yet, their rows are missing",
            file=sys.stderr,
        )
    unreadable = Problems()
    # A run with a results store: each chunk's object is read (and checked) in turn.
    ledger = resolved(spec, broker.ledger(args.run, problems=unreadable))
    try:
        if args.aggregate:
            reduced = aggregate_ledger(spec, ledger, args.aggregate)
            print(dumps({**reduced, "run": args.run}, sort_keys=True), flush=True)
        else:
            export(spec, ledger, opts, sys.stdout)
    finally:
        warning = problems_line(args.run, unreadable)
        if warning:
            print(f"ttg: warning: {warning}", file=sys.stderr)
    return 0


# -- report -----------------------------------------------------------------------------------


def write_run_report(broker: Broker, run: str, path: str) -> ReportSummary:
    """Verify ``run`` and draw its report to ``path`` (the report extra is needed)."""
    from ttg.report import ChunkRow, write_report  # noqa: PLC0415 - the optional extra

    verdict = verify(broker, run)
    rows = (
        ChunkRow(
            chunk=o.chunk,
            status=str(o.status),
            params=o.params,
            param_errors=len(o.param_errors),
            worker=o.worker,
            attempt=o.attempt,
            started_at=o.started_at,
            finished_at=o.finished_at,
            error=o.error,
        )
        for o in broker.ledger(run)
    )
    return write_report(Path(path), run=run, verify=verdict, chunks=rows, events=broker.events(run))


def cmd_report(args: argparse.Namespace) -> int:
    check_output(args.output)
    summary = write_run_report(connect(args), args.run, args.output)
    lost = f", lost workers: {', '.join(summary.lost_workers)}" if summary.lost_workers else ""
    emit(
        args,
        {
            "run": args.run,
            "output": str(summary.path),
            "bytes": summary.bytes,
            "chunks": summary.chunks,
            "workers": summary.workers,
            "lost_workers": summary.lost_workers,
        },
        f"wrote {summary.path} ({summary.bytes // 1024} kB, {summary.chunks} chunks, "
        f"{len(summary.workers)} worker{'' if len(summary.workers) == 1 else 's'}{lost})",
    )
    return 0


# -- runs and run control ------------------------------------------------------------------------


def cmd_runs(args: argparse.Namespace) -> int:
    broker = connect(args)
    now = time.time()
    rows = []
    for run in broker.runs():
        try:
            p = broker.progress(run)
        except UsageError:
            continue  # deleted meanwhile
        except RunDataError as e:
            rows.append(_unreadable_row(run, e, args.backend))
            continue
        rows.append(
            {
                "run": run,
                "state": p.state,
                "progress": round(p.ratio, 4),
                "done": p.done,
                "failures": p.failures,
                "total_chunks": p.total_chunks,
                "workers": p.workers,
                "age_s": round(now - p.seeded_at, 1) if p.seeded_at else None,
                "backend": args.backend,
                "problems": p.problems,
            }
        )
    lines = [f"{'RUN':<24} {'STATE':<24} {'PROGRESS':>9} {'FAILURES':>9} {'WORKERS':>8} {'AGE':>8}"]
    for r in rows:
        lines.append(
            f"{r['run']:<24} {r['state']:<24} {100 * r['progress']:>8.1f}% {r['failures']:>9} "
            f"{'?' if r['workers'] is None else r['workers']:>8} "
            f"{bars.duration(r['age_s']):>8}"
        )
        lines += [f"  problem: {one_line(p, 300)}" for p in r["problems"]]
    emit(args, {"runs": rows}, "\n".join(lines) if rows else "no runs")
    return 0


def _unreadable_row(run: str, e: RunDataError, backend: str) -> dict[str, Any]:
    """A row of ``ttg runs`` for a run whose spec cannot be read: what is wrong, and zeros."""
    return {
        "run": run,
        "state": "unsupported" if isinstance(e, UnsupportedRun) else "unreadable",
        "progress": 0.0,
        "done": 0,
        "failures": 0,
        "total_chunks": None,
        "workers": None,
        "age_s": None,
        "backend": backend,
        "problems": [e.problem],
    }


def cmd_control(args: argparse.Namespace) -> int:
    control = {"cancel": "cancelled", "pause": "paused", "resume": "running"}[args.command]
    broker = connect(args)
    broker.set_control(args.run, control)
    p = broker.progress(args.run)
    emit(
        args,
        {"run": args.run, "control": control, "state": p.state},
        f"run {args.run}: {control} (workers follow within a lease; state now {p.state})",
    )
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    dead, errors = args.dead, args.errors
    if not dead and not errors:
        dead = errors = True
    report = connect(args).retry(args.run, dead=dead, errors=errors)
    emit(
        args,
        {"run": args.run, "dead": report.dead, "errors": report.errors, "round": report.round},
        f"run {args.run}: re-queued {report.requeued} chunks ({report.dead} dead, "
        f"{report.errors} with parameter errors); every other result is kept",
    )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    broker = connect(args)
    try:
        spec: RunSpec | None = broker.spec(args.run)
    except RunDataError:
        spec = None  # a run whose data cannot be read is deleted all the same
    # The objects first: while the run exists, a failed deletion can be tried again.
    objects = bool(spec and not args.keep_results and delete_run(spec))
    if not broker.delete(args.run):
        raise RunNotFound(f"no run {args.run!r}")  # exit 2, like every other command
    emit(
        args,
        {"run": args.run, "deleted": True, "results_deleted": objects},
        f"run {args.run} deleted"
        + (f", and its results in {spec.results}" if spec and objects else ""),
    )
    return 0


# -- parsers --------------------------------------------------------------------------------------


def add_parsers(command: Command) -> None:
    conn = config.CONNECTION

    def with_run(p: argparse.ArgumentParser, *, json_flag: bool = True) -> argparse.ArgumentParser:
        p.add_argument("--run", required=True, type=run_id)
        if json_flag:
            p.add_argument("--json", action="store_true", help="one JSON object on stdout")
        return p

    p = command(
        "seed",
        cmd_seed,
        "publish a run's chunks (idempotent, resumable)",
        *conn,
        "compute",
        "compute-allow",
        "max-deliveries",
        "results-url",
    )
    with_run(p)
    p.add_argument(
        "--params",
        type=int_at_least(1, MAX_PARAMS),
        help="parameters 0..N-1 (or give --space)",
    )
    p.add_argument("--chunk-size", required=True, type=int_at_least(1, MAX_PARAMS))
    p.add_argument(
        "--work-ms",
        type=int_at_least(0, MAX_WORK_MS),
        default=0,
        help=f"simulated cost per chunk (at most {MAX_WORK_MS})",
    )
    p.add_argument("--space", help="range:START:STOP[:STEP] or grid:NAME=v1,v2;NAME=...")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="do not import the compute here (a seeder without the user's code)",
    )

    p = with_run(command("status", cmd_status, "progress of a run", *conn))
    p.add_argument(
        "--watch",
        action="store_true",
        help="live progress until the run completes (waits for a run not seeded yet)",
    )
    p.add_argument(
        "--interval",
        type=float_at_least(0.01, 3600),
        default=1.0,
        help="seconds between updates with --watch (>= 0.01)",
    )

    p = command("verify", cmd_verify, "exit 0 only if every chunk succeeded, exactly once", *conn)
    p.add_argument("--run", type=run_id, help="the run (not with --offline)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument(
        "--certificate",
        metavar="FILE",
        help="write the run's certificate to FILE (with --offline: the certificate to check)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="check --certificate FILE against DATASET alone, without the broker",
    )
    p.add_argument(
        "dataset",
        nargs="?",
        metavar="DATASET",
        help="with --offline: the run's folder (a path, file:///… or s3://…/runs/RUN)",
    )
    p.add_argument(
        "--allow-failed",
        action="store_true",
        help="a run that finished with dead chunks or parameter errors verifies too",
    )

    p = with_run(
        command("results", cmd_results, "export results, one row per parameter", *conn),
        json_flag=False,
    )
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument(
        "--output",
        help="file to write (default stdout): written beside it, renamed over it when complete",
    )
    p.add_argument("--chunks", action="store_true", help="one row per chunk instead")
    p.add_argument(
        "--raw",
        action="store_true",
        help="CSV cells as they are (by default a text cell starting with = + - @ gets a ')",
    )
    p.add_argument(
        "--aggregate",
        metavar="HOW",
        help=f"reduce the results instead: {', '.join(AGGREGATES)}, or module:function",
    )

    p = with_run(
        command("report", cmd_report, "draw a run's report: one HTML file, works offline", *conn)
    )
    p.add_argument("--output", required=True, help="the .html file to write")

    p = command("runs", cmd_runs, "every run the broker holds, with its state", *conn)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")

    for name, help_ in (
        ("cancel", "stop handing out a run's chunks for good (results stay)"),
        ("pause", "stop handing out a run's chunks until resumed"),
        ("resume", "hand out a paused or cancelled run's chunks again"),
    ):
        with_run(command(name, cmd_control, help_, *conn))

    p = with_run(
        command(
            "retry",
            cmd_retry,
            "re-queue the chunks that died or had parameter errors (after a fix)",
            *conn,
        )
    )
    p.add_argument("--dead", action="store_true", help="only the dead chunks")
    p.add_argument("--errors", action="store_true", help="only the chunks with parameter errors")

    p = with_run(
        command("delete", cmd_delete, "remove a run: what the broker holds, its results", *conn)
    )
    p.add_argument(
        "--keep-results",
        action="store_true",
        help="leave the run's objects in its results store (only the broker's side goes)",
    )
