from __future__ import annotations

import json
import logging

from prometheus_client import generate_latest

from ttg.logs import JSONFormatter
from ttg.metrics import Metrics, RateMeter
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
    meter = RateMeter(halflife=5)
    for t in range(20):
        rate = meter.update(count=10 * t, now=float(t))
    assert abs(rate - 10) < 1e-9


def test_run_gauges_are_one_series_per_run_and_go_when_the_run_is_forgotten() -> None:
    m = Metrics()
    m.observe_run(Progress("r1", total_chunks=10, total_params=100, seeded_chunks=10, done=4), 2.0)
    text = generate_latest(m.registry).decode()
    assert 'ttg_run_chunks_done{run="r1"} 4.0' in text
    assert 'ttg_run_progress_ratio{run="r1"} 0.4' in text
    assert 'ttg_run_eta_seconds{run="r1"} 3.0' in text
    m.forget_run("r1")
    assert 'run="r1"' not in generate_latest(m.registry).decode()
