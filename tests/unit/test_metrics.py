"""A worker's metrics, the rate behind every ETA, and the HTTP server of long-running commands."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from tests.helpers import eventually
from ttg import compute
from ttg.brokers.memory import MemoryBroker
from ttg.errors import UsageError
from ttg.httpd import HTTPServer
from ttg.metrics import DURATION_BUCKETS, Metrics, Probes, probe_routes, serve
from ttg.rate import RateMeter
from ttg.run import RunSpec
from ttg.space import RangeSpace
from ttg.worker import Worker

# -- the rate and the ETA ---------------------------------------------------------------


def readings(
    meter: RateMeter, finished_at: list[float], until: float, every: float = 2.0
) -> Iterator[tuple[float, int]]:
    """Read ``meter`` every ``every`` s (as the exporter does) until ``until``: (time, count)."""
    t = 0.0
    while t <= until:
        count = sum(1 for f in finished_at if f <= t)
        meter.update(count, now=t)
        yield t, count
        t += every


def test_eta_of_long_chunks_stays_near_the_truth_between_bursts() -> None:
    # Two workers, chunks of 40 s, 12 chunks: pairs finish every 40 s, the run at 240 s.
    # A smoothed rate that halved every 10 s without a step read 16x the time left
    # before each burst; the truth is known here at every reading. (A pair split by a
    # reading reads half its rate for that one reading: no estimate can know better.)
    finished_at = [40.0 * (i // 2 + 1) + 0.3 + 0.2 * (i % 2) for i in range(12)]
    end = finished_at[-1]
    meter = RateMeter()
    for t, count in readings(meter, finished_at, until=end - 1, every=2.0):
        if count == 0:
            assert meter.eta(12) is None, t  # no rate before the first chunk finished
            continue
        eta = meter.eta(12 - count)
        assert eta is not None
        assert abs(eta - (end - t)) <= 0.1 * (end - t) + 4, (t, eta, end - t)


def test_a_stall_raises_the_eta_and_a_long_silence_makes_it_unknown() -> None:
    meter = RateMeter(max_age=600)
    for t in range(0, 61, 2):
        meter.update(t, now=float(t))  # one chunk per second for a minute
    assert meter.eta(100) == pytest.approx(100, abs=3)
    etas = []
    for t in range(62, 300, 2):
        meter.update(60, now=float(t))  # then nothing
        etas.append(meter.eta(100))
    # Never down to nothing while nothing finishes, and rising once overdue.
    assert all(e is not None and e > 50 for e in etas), etas
    assert etas[-1] is not None and etas[-1] > 3 * 100
    meter.update(60, now=1000.0)
    assert meter.eta(100) is None and meter.rate == 0


def test_a_rate_first_read_mid_run_counts_from_the_first_step_it_sees() -> None:
    # 500 chunks were done before the first reading; the chunks of the first step
    # seen started before it, so that step alone gives no rate.
    meter = RateMeter()
    meter.update(500, now=0.0)
    meter.update(510, now=1.0)
    assert meter.rate == 0 and meter.eta(10) is None
    meter.update(520, now=11.0)
    assert meter.rate == pytest.approx(1.0)


def test_a_count_that_goes_down_starts_over() -> None:
    meter = RateMeter()
    for t in range(10):
        meter.update(100 * t, now=float(t))
    meter.update(3, now=10.0)
    assert meter.rate == 0


def test_duration_buckets_read_p95_within_27_percent_of_any_constant_chunk_time() -> None:
    # histogram_quantile interpolates inside the bucket: for every observation at t in
    # (a, b], p95 = a + 0.95 (b - a).
    ratios = []
    for lo, hi in itertools.pairwise(DURATION_BUCKETS):
        for t in (lo * 1.0001, (lo + hi) / 2, hi):
            p95 = lo + 0.95 * (hi - lo)
            ratios.append(p95 / t)
    assert min(ratios) > 0.98 and max(ratios) < 1.27
    assert DURATION_BUCKETS[0] == 0.01 and DURATION_BUCKETS[-1] == 4000


# -- a worker's series ------------------------------------------------------------------


def test_worker_series_of_a_run_are_born_when_its_first_chunk_arrives() -> None:
    broker = MemoryBroker()
    spec = RunSpec("r1", RangeSpace(0, 10).to_spec(), 10, compute.DEFAULT_COMPUTE, work_ms=3000)
    broker.seed(spec)
    consumer = broker.consumer("w1", lease_seconds=5, prefetch=1)
    metrics = Metrics()
    worker = Worker(
        consumer,
        metrics=metrics,
        probes=Probes(ready=lambda: True),
        grace_seconds=5,
        retry_delay=0.01,
        read_ahead_cap=1,
        compute_allow=compute.DEFAULT_ALLOW,
        fetch_timeout=0.05,
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        # While the first chunk computes, Prometheus must already scrape every
        # series at 0: a series it first sees at 1 hides that step from rate().
        eventually(lambda: broker.progress("r1").in_flight, timeout=10, what="chunk held")
        text = generate_latest(metrics.registry).decode()
        assert 'ttg_chunks_completed_total{run="r1"} 0.0' in text
        assert 'ttg_parameters_completed_total{run="r1"} 0.0' in text
        assert 'ttg_chunk_duration_seconds_count{run="r1"} 0.0' in text
        eventually(lambda: broker.progress("r1").complete, timeout=20, what="run complete")
        text = generate_latest(metrics.registry).decode()
        assert 'ttg_chunks_completed_total{run="r1"} 1.0' in text
    finally:
        worker.request_stop("test")
        thread.join(10)


# -- the HTTP server --------------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    metrics = Metrics()
    s = HTTPServer(
        0, probe_routes(metrics.registry, Probes(ready=lambda: False)), max_connections=50,
        timeout=1.0, host="127.0.0.1",
    ).start()  # fmt: skip
    yield s
    s.close()


def test_http_server_answers_its_routes(server: HTTPServer) -> None:
    assert get(server.port, "/healthz") == (200, b"ok\n")
    assert get(server.port, "/readyz") == (503, b"broker unreachable\n")
    assert get(server.port, "/nope") == (404, b"not found\n")
    code, body = get(server.port, "/metrics?x=1")
    assert code == 200 and b"ttg_chunks_in_flight 0.0" in body


def test_http_server_closes_silent_connections_and_holds_no_more_than_its_maximum(
    server: HTTPServer,
) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
    try:
        # Past the maximum the oldest silent ones are closed; a request still gets through.
        assert get(server.port, "/healthz") == (200, b"ok\n")
        assert server.connections <= 50
        # And a silent connection is closed after the timeout.
        eventually(lambda: server.connections == 0, timeout=15, what="idle connections closed")
        for s in idle:
            s.settimeout(5)
            assert s.recv(1) == b""  # closed by the server
    finally:
        for s in idle:
            s.close()


def test_http_server_refuses_garbage_in_one_line(server: HTTPServer) -> None:
    for request, status in (
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"nonsense\r\n\r\n", b"400"),
    ):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(request)
            s.settimeout(5)
            assert s.recv(100).split(b" ")[1] == status
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n" + b"X: " + b"y" * 20_000 + b"\r\n\r\n")
        s.settimeout(5)
        # A head past the limit: closed (reset: the rest was never read), never answered.
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(100) == b""


def test_serve_says_which_port_is_taken() -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:  # noqa: S104 - the port serve would use
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"metrics port {port} is in use"):
            serve(port, {})
