from __future__ import annotations

import json
import logging

from ttg.logs import JSONFormatter
from ttg.metrics import RateMeter


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
