"""The commands about runs: seed, status, verify, results, report, runs, control, retry, delete.

Each is a thin door over ``ttg.Sweep`` (``ttg.sweep``): parse the flags, call
the one implementation the Python API uses, print text or ``--json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ttg import config, store
from ttg import progress as bars
from ttg.cli import seed
from ttg.cli.common import Command, emit, endpoint, float_at_least, run_id
from ttg.decode import Problems, one_line
from ttg.errors import RunDataError, RunNotFound, UnsupportedRun, UsageError
from ttg.outputs import AGGREGATES, FORMATS, check_output
from ttg.run import RunSpec
from ttg.store.reader import delete_run
from ttg.sweep import Sweep
from ttg.verify import StatusReport

# Modules only some commands need (certificates, the exporter's helpers, reuse) are
# imported by those commands: every ``ttg`` process builds the whole parser, and
# ``ttg seed`` and ``ttg status`` should not pay for the rest at each start.


def cmd_status(args: argparse.Namespace) -> int:
    if not args.watch:
        with Sweep.attach(args.run, endpoint(args)) as sweep:
            report = sweep.status()
        emit(args, report.to_dict(), bars.explain(report))
        return 0
    ep = endpoint(args)
    waiting = False
    while True:
        try:
            sweep = Sweep.attach(args.run, ep)
            break
        except RunNotFound:
            # Watching a run about to be seeded (`ttg seed ... & ttg status --watch`).
            if not waiting:
                waiting = True
                print(f"ttg: waiting for run {args.run} to be seeded", file=sys.stderr)
            time.sleep(args.interval)
    bar = bars.Bar(args.run, enabled=not args.json and sys.stdout.isatty(), stream=sys.stdout)

    def show(report: StatusReport) -> None:
        if args.json:
            print(bars.as_json(report), flush=True)
        elif bar.enabled:
            bar.update(report.finished, report.total_chunks, suffix=bars.suffix(report))
        else:
            print(bars.describe(report), flush=True)

    with sweep:
        report = sweep.wait(interval=args.interval, on_status=show)
    bar.close()
    if bar.enabled:
        print(bars.explain(report))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if args.offline:
        return _verify_offline(args)
    if args.dataset:
        raise UsageError("a DATASET is checked with --offline --certificate FILE")
    if not args.run:
        raise UsageError("the following arguments are required: --run (or --offline)")
    from ttg.store import certificate  # noqa: PLC0415 - see the imports above
    from ttg.store.check import StoreCheck  # noqa: PLC0415

    if args.certificate:
        check_output(args.certificate, "--certificate")
    with Sweep.attach(args.run, endpoint(args)) as sweep:
        spec = sweep.spec
        if args.certificate and spec.results == store.BROKER:
            raise UsageError(
                f"run {args.run} keeps its results in the broker: a certificate proves a "
                "results store's dataset (seed with TTG_RESULTS_URL)"
            )
        check = StoreCheck(spec, certificate=bool(args.certificate))
        report = sweep.verify(allow_failed=args.allow_failed, check=check)
    if args.certificate and check.leaves is not None:
        doc = certificate.document(spec, check.leaves, report.to_dict())
        certificate.write(args.certificate, doc)
        report.certificate = args.certificate
    lines = [bars.verdict(report, allow_failed=args.allow_failed)]
    if report.results != store.BROKER:
        strays, pending = report.strays_removed, report.pending_objects
        lines.append(
            f"results store: {report.objects_checked} objects checked in {report.results}"
            + (f", {strays} strays removed" if strays else "")
            + (f", {pending} not counted yet" if pending else "")
        )
    if report.certificate:
        lines.append(f"certificate: {report.certificate}")
    emit(args, report.to_dict(), "\n".join(lines))
    return 0 if report.ok else 1


def _verify_offline(args: argparse.Namespace) -> int:
    """``verify --offline --certificate FILE DATASET``: no broker, the dataset alone."""
    from ttg.store import certificate  # noqa: PLC0415 - see the imports above

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
    if args.field and not args.aggregate:
        raise UsageError("--field goes with --aggregate")
    if args.output:
        check_output(args.output)  # before any work
    unreadable = Problems()
    with Sweep.attach(args.run, endpoint(args)) as sweep:
        s = sweep.status()
        if not s.complete:
            print(
                f"ttg: warning: run {args.run} is {s.state}: {s.total_chunks - s.finished} of "
                f"{s.total_chunks} chunks have no outcome yet, their rows are missing",
                file=sys.stderr,
            )
        try:
            if args.aggregate:
                reduced = sweep.aggregate(args.aggregate, field=args.field, problems=unreadable)
                print(bars.as_json(reduced), flush=True)
                return 0
            sweep.export(
                args.output,
                stream=sys.stdout,
                format=args.format,
                chunks=args.chunks,
                traceback=args.traceback,
                raw=args.raw,
                problems=unreadable,
            )
        finally:
            from ttg.results import problems_line  # noqa: PLC0415 - see the imports above

            warning = problems_line(args.run, unreadable)
            if warning:
                print(f"ttg: warning: {warning}", file=sys.stderr)
    return 0


# -- report -----------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    check_output(args.output)
    with Sweep.attach(args.run, endpoint(args)) as sweep:
        summary = sweep.report(args.output)
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
        f"wrote {summary.path} ({summary.bytes // 1024} kB, "
        f"{bars.plural(summary.chunks, 'chunk')}, "
        f"{bars.plural(len(summary.workers), 'worker')}{lost})",
    )
    return 0


# -- runs and run control ------------------------------------------------------------------------


def cmd_runs(args: argparse.Namespace) -> int:
    broker = endpoint(args).open_broker()
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
                "finished": p.finished,
                "done": p.done,
                "failures": p.failures,
                "total_chunks": p.total_chunks,
                "workers": p.workers,
                "age_s": round(now - p.seeded_at, 1) if p.seeded_at else None,
                "backend": args.backend,
                "problems": p.problems,
            }
        )
    problems = broker.problems()
    broker.close()
    head = (
        f"{'RUN':<24} {'STATE':<24} {'FINISHED':>9} {'W/ FAILURES':>12} {'WORKERS':>8} {'AGE':>8}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['run']:<24} {r['state']:<24} {100 * r['progress']:>8.1f}% "
            f"{r['failures']:>12} {'?' if r['workers'] is None else r['workers']:>8} "
            f"{bars.duration(r['age_s']):>8}"
        )
        lines += [f"  problem: {one_line(p, 300)}" for p in r["problems"]]
    if not rows:
        lines = ["no runs"]
    lines += [f"problem: {one_line(p, 300)}" for p in problems]
    emit(args, {"runs": rows, "problems": problems}, "\n".join(lines))
    return 0


def _unreadable_row(run: str, e: RunDataError, backend: str) -> dict[str, Any]:
    """A row of ``ttg runs`` for a run whose spec cannot be read: what is wrong, and zeros."""
    return {
        "run": run,
        "state": "unsupported" if isinstance(e, UnsupportedRun) else "unreadable",
        "progress": 0.0,
        "finished": 0,
        "done": 0,
        "failures": 0,
        "total_chunks": None,
        "workers": None,
        "age_s": None,
        "backend": backend,
        "problems": [e.problem],
    }


def cmd_control(args: argparse.Namespace) -> int:
    with Sweep.attach(args.run, endpoint(args)) as sweep:
        {"cancel": sweep.cancel, "pause": sweep.pause, "resume": sweep.resume}[args.command]()
        control = {"cancel": "cancelled", "pause": "paused", "resume": "running"}[args.command]
        state = sweep.status().state
    emit(
        args,
        {"run": args.run, "control": control, "state": state},
        f"run {args.run}: {control} (workers follow within a lease; state now {state})",
    )
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    dead, errors = args.dead, args.errors
    if not dead and not errors:
        dead = errors = True
    with Sweep.attach(args.run, endpoint(args)) as sweep:
        report = sweep.retry(dead=dead, errors=errors)
    emit(
        args,
        {"run": args.run, "dead": report.dead, "errors": report.errors, "round": report.round},
        f"run {args.run}: re-queued {bars.plural(report.requeued, 'chunk')} ({report.dead} dead, "
        f"{report.errors} with parameter errors); every other result is kept",
    )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from ttg.reuse import refusal, reusers  # noqa: PLC0415 - see the imports above

    broker = endpoint(args).open_broker()
    try:
        try:
            spec: RunSpec | None = broker.spec(args.run)
        except (RunDataError, RunNotFound):
            spec = None  # not through its spec: an unreadable run is deleted all the same
        lose = reusers(broker, args.run)
        if lose and not args.force:
            raise UsageError(refusal(args.run, lose))
        # The objects first: while the run exists, a failed deletion can be tried again.
        objects = bool(spec and not args.keep_results and delete_run(spec))
        if not broker.delete(args.run):
            raise RunNotFound(f"no run {args.run!r}")  # exit 2, like every other command
    finally:
        broker.close()
    if lose:
        print(
            f"ttg: warning: {', '.join(lose)} lost the provenance of their results reused "
            f"from {args.run}",
            file=sys.stderr,
        )
    emit(
        args,
        {"run": args.run, "deleted": True, "results_deleted": objects, "lost_provenance": lose},
        f"run {args.run} deleted"
        + (f", its results in {spec.results} too" if spec and objects else ""),
    )
    return 0


# -- parsers --------------------------------------------------------------------------------------


def _with_run(p: argparse.ArgumentParser, *, json_flag: bool = True) -> argparse.ArgumentParser:
    p.add_argument("--run", required=True, type=run_id)
    if json_flag:
        p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def _report_parsers(command: Command) -> None:
    conn = config.CONNECTION
    p = _with_run(command("status", cmd_status, "progress of a run", *conn))
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
    p = _with_run(
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
        "--traceback",
        action="store_true",
        help="CSV: add the traceback column (JSONL and Parquet always have it)",
    )
    p.add_argument(
        "--aggregate",
        metavar="HOW",
        help=f"reduce the results instead: {', '.join(AGGREGATES)}, or module:function",
    )
    p.add_argument("--field", metavar="NAME", help="with --aggregate: the field of dict results")
    p = _with_run(
        command("report", cmd_report, "draw a run's report: one HTML file, works offline", *conn)
    )
    p.add_argument("--output", required=True, help="the .html file to write")
    p = command("runs", cmd_runs, "every run the broker holds, with its state", *conn)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def add_parsers(command: Command) -> None:
    conn = config.CONNECTION
    seed.add_parser(command)
    _report_parsers(command)
    for name, help_ in (
        ("cancel", "stop handing out a run's chunks for good (results stay)"),
        ("pause", "stop handing out a run's chunks until resumed"),
        ("resume", "hand out a paused or cancelled run's chunks again"),
    ):
        _with_run(command(name, cmd_control, help_, *conn))
    p = _with_run(
        command(
            "retry",
            cmd_retry,
            "re-queue the chunks that died or had parameter errors (after a fix)",
            *conn,
        )
    )
    p.add_argument("--dead", action="store_true", help="only the dead chunks")
    p.add_argument("--errors", action="store_true", help="only the chunks with parameter errors")
    p = _with_run(
        command("delete", cmd_delete, "remove a run: what the broker holds, its results", *conn)
    )
    p.add_argument(
        "--keep-results",
        action="store_true",
        help="leave the run's objects in its results store (only the broker's side goes)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="delete a run other runs reused results of (they lose their provenance)",
    )
