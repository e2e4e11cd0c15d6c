"""``ttg seed``: publish a run's chunks, reusing earlier runs' results if asked (``--reuse``).

A thin door over ``ttg.Sweep.seed`` and ``Sweep.estimate`` (``--dry-run``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING, Any

from ttg import config
from ttg import progress as bars
from ttg.cli.common import Command, emit, endpoint, float_at_least, int_at_least, run_id
from ttg.compute import EXEC
from ttg.errors import UsageError
from ttg.identity import MAX_VERSION_CHARS
from ttg.limits import MAX_PARAM_TIMEOUT, MAX_PARAMS, MAX_WORK_MS, parse_quantity
from ttg.sweep import Sweep, make_space
from ttg.tables import read_table

if TYPE_CHECKING:
    from ttg.reuse import Estimate  # what --dry-run prints (imported by Sweep.estimate)


def cmd_seed(args: argparse.Namespace) -> int:
    if args.space and args.space_file:
        raise UsageError("give --space or --space-file, not both")
    space = read_table(args.space_file) if args.space_file else make_space(args.space, args.params)
    if args.space_file and args.params is not None and args.params != space.size:
        raise UsageError(f"--params {args.params} but --space-file has {space.size} rows")
    compute, options = _compute_of(args)
    sweep = Sweep(
        args.run,
        compute=compute,
        space=space,
        chunk_size=args.chunk_size,
        broker=endpoint(args),
        work_ms=args.work_ms,
        max_deliveries=args.max_deliveries,
        compute_allow=args.compute_allow,
        check=not args.no_check,
        results=args.results_url,
        reuse=args.reuse or (),
        reuse_partial=args.reuse_partial,
        reuse_any_version=args.reuse_any_version,
        compute_version=args.compute_version,
        **options,
    )
    if (args.reuse_partial or args.reuse_any_version) and not args.reuse:
        raise UsageError("--reuse-partial and --reuse-any-version go with --reuse RUN")
    if args.dry_run:
        with sweep:
            return _dry_run(args, sweep.estimate(args.workers or 1))
    if args.workers is not None:
        raise UsageError("--workers goes with --dry-run")
    bar = bars.Bar(f"seeding {args.run}", enabled=not args.json and sys.stderr.isatty())
    with sweep:
        report = sweep.seed(on_progress=bar.update)
    bar.close()
    out = {
        "run": report.run,
        "total_chunks": report.total_chunks,
        "total_params": report.total_params,
        "seeded_chunks": report.seeded_chunks,
        "added": report.added,
        "already_seeded": report.already_seeded,
        "reused": report.reused_params,
        "to_compute": report.total_params - report.reused_params,
        "warnings": list(report.warnings),
    }
    for warning in report.warnings:
        print(f"ttg: warning: {warning}", file=sys.stderr)
    text = (
        f"run {report.run}: {bars.plural(report.total_params, 'parameter')} in "
        f"{bars.plural(report.total_chunks, 'chunk')}; "
        + (
            "already seeded, nothing added"
            if report.already_seeded
            else f"published {bars.plural(report.added, 'chunk')}"
        )
    )
    if args.reuse and not report.already_seeded:
        text = (
            f"run {report.run}: {bars.plural(report.total_params, 'parameter')}: reused "
            f"{report.reused_params}, computing {out['to_compute']}; published "
            f"{bars.plural(sweep.spec.task_chunks, 'chunk')} to compute, recorded "
            f"{bars.plural(sweep.spec.total_chunks - sweep.spec.task_chunks, 'chunk')} "
            "of reused results"
        )
    emit(args, out, text)
    return 0


def _compute_of(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    """The run's compute and its compute options (limits, a program's command) from the flags."""
    # The default compute is for integer ranges: Sweep refuses it for anything else.
    compute = None if args.compute == config.SETTINGS["compute"].default else args.compute
    options: dict[str, Any] = {}
    if args.param_timeout:
        options["param_timeout"] = args.param_timeout
    if args.param_memory:
        parse_quantity(args.param_memory)
        options["param_memory"] = args.param_memory
    if args.exec is not None:
        if compute is not None:
            raise UsageError("give --compute or --exec, not both")
        try:
            argv = shlex.split(args.exec)
        except ValueError as e:
            raise UsageError(f"--exec: {e}") from None
        if not argv:
            raise UsageError("--exec: the command is empty")
        compute, options["exec"] = f"{EXEC}:{argv[0]}", tuple(argv)
    return compute, options


def _dry_run(args: argparse.Namespace, e: Estimate) -> int:
    for warning in e.warnings:
        print(f"ttg: warning: {warning}", file=sys.stderr)
    out = e.to_dict()
    text = (
        f"run {e.run} (dry run, nothing seeded): {bars.plural(e.total_params, 'parameter')}: "
        f"reused {e.reused}, computing {e.to_compute} in "
        f"{bars.plural(e.compute_chunks, 'chunk')} ({e.total_chunks} in all)"
    )
    if e.param_seconds_median is None:
        text += "; no reused run's timings to estimate from"
    else:
        text += (
            f"; {e.param_seconds_median:.3g} s per parameter (p95 {e.param_seconds_p95:.3g} s) "
            f"in the reused runs: about {_seconds(out['estimate_s'])} "
            f"(p95 {_seconds(out['estimate_p95_s'])}) on "
            f"{bars.plural(e.workers, 'worker')}"
        )
    emit(args, out, text)
    return 0


def _seconds(v: float) -> str:
    return f"{v:.2g} s" if v < 60 else bars.duration(v)


def _compute_version(text: str) -> str:
    if not 0 < len(text) <= MAX_VERSION_CHARS or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"expected printable text of 1 to {MAX_VERSION_CHARS} characters"
        )
    return text


def add_parser(command: Command) -> None:
    """``ttg seed``'s flags."""
    p = command(
        "seed",
        cmd_seed,
        "publish a run's chunks (idempotent, resumable)",
        *config.CONNECTION,
        "compute",
        "compute-allow",
        "max-deliveries",
        "results-url",
    )
    p.add_argument("--run", required=True, type=run_id)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
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
    p.add_argument(
        "--space",
        help="range:START:STOP[:STEP], linspace:START:STOP:NUM, logspace:START:STOP:NUM, "
        "or grid:NAME=AXIS;NAME=AXIS (an axis: v1,v2,... or one of those forms)",
    )
    p.add_argument(
        "--space-file",
        metavar="FILE",
        help="a table of parameters, one per row: CSV with a header, or JSONL of objects",
    )
    p.add_argument(
        "--param-timeout",
        metavar="SECONDS",
        type=float_at_least(0, MAX_PARAM_TIMEOUT),
        default=0.0,
        help="a parameter computing longer fails, its compute process killed (default 0: none)",
    )
    p.add_argument(
        "--param-memory",
        metavar="QUANTITY",
        help="memory limit of each compute process, e.g. 256Mi or 2Gi (default: none)",
    )
    p.add_argument(
        "--exec",
        metavar="COMMAND",
        help="run this program per parameter instead of a function: 'PROGRAM ARG... {value}' "
        "(placeholders {value}, {index}, {AXIS}; never a shell; TTG_COMPUTE_ALLOW must list "
        "exec:PROGRAM)",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="do not import the compute here (a seeder without the user's code)",
    )
    p.add_argument(
        "--reuse",
        action="append",
        metavar="RUN",
        help="take the ok results of RUN (complete and verified) for parameters of equal "
        "value instead of computing them; repeat for several runs (the first named wins)",
    )
    p.add_argument(
        "--reuse-partial",
        action="store_true",
        help="reuse runs that are not complete and verified (their ok results as they are)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="seed nothing: say how many parameters are reused and to compute, in how many "
        "chunks, and how long they should take (from the reused runs' timings)",
    )
    p.add_argument(
        "--workers",
        type=int_at_least(1, 100_000),
        default=None,
        help="with --dry-run: workers the estimate divides the compute time among (default 1)",
    )
    p.add_argument(
        "--compute-version",
        metavar="STR",
        type=_compute_version,
        help="a version of the compute's code, part of its identity: bump it when the code "
        "changes and results must not be reused",
    )
    p.add_argument(
        "--reuse-any-version",
        action="store_true",
        help="reuse results of another compute than this run's",
    )
