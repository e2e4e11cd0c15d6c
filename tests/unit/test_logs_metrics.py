from __future__ import annotations

import json
import logging

from prometheus_client import CollectorRegistry, generate_latest

from ttg.exporter import RunCollector, Snapshot
from ttg.logs import JSONFormatter
from ttg.metrics import Metrics
from ttg.rate import RateMeter
from ttg.run import Progress


def test_json_log_lines_are_one_object_with_extra_fields() -> None:
    record = logging.LogRecord(
        "ttg.worker", logging.WARNING, __file__, 1, "chunk %s failed", (7,), None
    )
    record.run = "r1"
    line = JSONFormatter().format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "warning" and obj["msg"] == "chunk 7 failed" and obj["run"] == "r1"
    assert obj["ts"].endswith("Z")


def test_rate_meter_tracks_a_steady_rate() -> None:
    meter = RateMeter(window=5)
    for t in range(20):
        rate = meter.update(count=10 * t, now=float(t))
    assert abs(rate - 10) < 1e-9


def test_worker_series_of_a_run_are_born_at_zero() -> None:
    m = Metrics()
    m.run("r1").completed.inc()
    text = generate_latest(m.registry).decode()
    # A counter born at 1 would hide its first step from rate(): every series starts at 0.
    assert 'ttg_chunks_completed_total{run="r1"} 1.0' in text
    for name in ("failed", "redelivered", "dead_lettered", "duplicate", "released"):
        assert f'ttg_chunks_{name}_total{{run="r1"}} 0.0' in text
    assert 'ttg_parameters_completed_total{run="r1"} 0.0' in text
    assert 'ttg_chunk_duration_seconds_bucket{le="0.25",run="r1"} 0.0' in text


def test_exporter_has_one_series_per_run_from_the_broker_tallies() -> None:
    p = Progress(
        "r1", total_chunks=10, total_params=100, seeded_chunks=10, done=4, done_params=40,
        queue_depth=6, workers=0, redelivered=2,
    )  # fmt: skip
    done = Progress("r2", total_chunks=5, total_params=5, seeded_chunks=5, done=5, done_params=5)
    registry = CollectorRegistry()
    registry.register(
        RunCollector(
            lambda: Snapshot(0, True, {"r1": p, "r2": done}, {"r1": 3.0, "r2": 0.0}), "redis"
        )
    )
    text = generate_latest(registry).decode()
    assert 'ttg_run_info{backend="redis",run="r1",state="running"} 1.0' in text
    assert 'ttg_run_chunks_done{run="r1"} 4.0' in text
    assert 'ttg_run_workers{run="r1"} 0.0' in text  # present with no worker at all
    assert 'ttg_run_queue_depth{run="r1"} 6.0' in text
    assert 'ttg_run_eta_seconds{run="r1"} 3.0' in text
    assert 'ttg_run_redeliveries_total{run="r1"} 2.0' in text
    assert 'ttg_run_chunks_finished_total{run="r2"} 5.0' in text
    assert 'ttg_run_queue_depth{run="r2"} 0.0' in text
    assert 'ttg_run_eta_seconds{run="r2"} 0.0' in text
    assert "ttg_exporter_broker_up 1.0" in text


def test_exporter_gives_no_eta_before_a_rate_is_known() -> None:
    p = Progress("r1", total_chunks=10, total_params=100, seeded_chunks=10)
    registry = CollectorRegistry()
    registry.register(RunCollector(lambda: Snapshot(0, True, {"r1": p}, {}), "redis"))
    assert "ttg_run_eta_seconds{" not in generate_latest(registry).decode()
