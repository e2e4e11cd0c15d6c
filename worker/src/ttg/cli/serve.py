"""``ttg worker`` and ``ttg exporter``: the two long-running commands a chart deploys."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from ttg import config
from ttg.cli.common import Command, endpoint
from ttg.errors import UsageError

if TYPE_CHECKING:
    from ttg.httpd import Route

# Each command imports the worker or the exporter (with the Prometheus client and the
# HTTP server) when it runs: every other command starts without them.

log = logging.getLogger("ttg")


def cmd_worker(args: argparse.Namespace) -> int:
    from ttg.metrics import Metrics, Probes, probe_routes
    from ttg.store.writer import ResultsWriter
    from ttg.worker import Worker

    # Until the worker's own handlers are in place, a signal just ends the wait.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    name = args.worker_name or config.default_worker_name()
    consumer = endpoint(args).open_consumer(
        name, lease_seconds=args.lease_seconds, prefetch=args.prefetch
    )
    metrics = Metrics()
    metrics.broker_up.set_function(lambda: 1 if consumer.connected else 0)
    results = ResultsWriter(name)
    probes = Probes(
        ready=lambda: consumer.connected and results.problem is None,
        why=lambda: results.problem if consumer.connected else None,
    )
    if args.metrics_port:
        # From the start: /healthz answers while the broker is still away (/readyz does not).
        args.metrics_port = _serve_metrics(args, probe_routes(metrics.registry, probes))
    worker = Worker(
        consumer,
        metrics=metrics,
        probes=probes,
        grace_seconds=args.grace_seconds,
        retry_delay=args.retry_delay_seconds,
        read_ahead_cap=args.prefetch,
        compute_allow=args.compute_allow,
        results=results,
        concurrency=args.concurrency,
    )
    worker.install_signal_handlers()
    log.info(
        "worker %s: backend %s, lease %.1fs, metrics :%s, %d compute process(es), computes from %s",
        name,
        args.backend,
        args.lease_seconds,
        args.metrics_port or "off",
        args.concurrency,
        ", ".join(args.compute_allow),
    )
    code = worker.run()
    if worker.compute_running:
        # A chunk given back is still computing in its thread, which cannot be
        # interrupted; the interpreter's normal exit would wait for it.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code


def _serve_metrics(args: argparse.Namespace, routes: dict[str, Route]) -> int:
    """Serve on the metrics port; the port served on.

    A second worker on one machine (``ttg.local``, a terminal beside another)
    finds the default port taken: it takes a free one and says which. A port
    someone chose is theirs: taken, it is an error (exit 2).
    """
    from ttg.metrics import serve

    try:
        serve(args.metrics_port, routes)
        return int(args.metrics_port)
    except UsageError:
        if "metrics-port" not in args.defaulted:
            raise
    server = serve(0, routes)
    port = server.port
    log.warning(
        "metrics port %s is in use (another worker on this machine?): serving /metrics on "
        ":%s instead; set TTG_METRICS_PORT to choose one, 0 to turn it off",
        args.metrics_port,
        port,
    )
    return port


def cmd_exporter(args: argparse.Namespace) -> int:
    from ttg.exporter import Exporter
    from ttg.metrics import probe_routes, serve

    exporter = Exporter(lambda: endpoint(args).open_broker(), args.backend)

    def stop(*_: Any) -> None:
        exporter.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.metrics_port:
        serve(
            args.metrics_port,
            {**probe_routes(exporter.registry, exporter.probes), **exporter.routes()},
        )
    log.info("exporter: backend %s, metrics :%s", args.backend, args.metrics_port or "off")
    exporter.run()
    return 0


def add_parsers(command: Command) -> None:
    conn = config.CONNECTION
    command(
        "worker",
        cmd_worker,
        "compute chunks of every live run until SIGTERM",
        *conn,
        "metrics-port",
        "lease-seconds",
        "retry-delay-seconds",
        "grace-seconds",
        "prefetch",
        "concurrency",
        "compute-allow",
        "worker-name",
    )
    command(
        "exporter",
        cmd_exporter,
        "serve every run's figures (Prometheus /metrics, /api/queue for KEDA) once per install",
        *conn,
        "metrics-port",
    )
