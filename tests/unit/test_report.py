"""``ttg report`` on synthetic ledgers: header, lost workers, failures, size and memory."""

from __future__ import annotations

import dataclasses
import html
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reportdata import PARAM_ERRORS, T0, SyntheticRun, outcome, verify_report
from ttg.errors import UsageError
from ttg.report import Event, write_report
from ttg.report.aggregate import MAX_TIME_BINS, Aggregate, Series, TimeGrid
from ttg.report.charts import seconds_text
from ttg.run import Outcome, RunSpec, Status
from ttg.space import RangeSpace


def card(page: str, label: str) -> str:
    """The value of the header card named ``label``."""
    m = re.search(rf'<div class="v">([^<]*)</div><div class="k">{re.escape(label)}</div>', page)
    assert m, f"no card {label!r}"
    return html.unescape(m.group(1))


def spec(params: int = 1000) -> RunSpec:
    return RunSpec("r", RangeSpace(0, params).to_spec(), 10, "tests.computes:explode_on_13")


def table_rows(page: str, table_id: str) -> list[list[str]]:
    """The text of every data row of the table ``<table id=table_id>``."""
    table = page.split(f'<table id="{table_id}">', 1)[1].split("</table>", 1)[0]
    rows = []
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[1:]:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)
        rows.append([html.unescape(re.sub(r"<[^>]+>", "", c)) for c in cells])
    return rows


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_report_header_shows_verdict_and_counts(tmp_path: Path) -> None:
    run = SyntheticRun(2000)
    summary = write_report(
        tmp_path / "r.html",
        run="sweep-1",
        verify=run.verify(),
        spec=run.spec(),
        chunks=run.rows(),
        events=run.events(),
    )
    page = summary.path.read_text()
    n = run.counts()
    v = run.verify()
    # Exactly once holds; some parameters failed: two verdicts, not one red banner.
    assert '<div class="badge">EXACTLY ONCE · WITH FAILURES</div>' in page
    assert 'header class="verdict warn"' in page
    assert '<div id="verdict-once" class="ok">Exactly once: <b>holds</b></div>' in page
    failed = n["dead"] * 100 + n["errors"] * PARAM_ERRORS
    assert (
        f"Parameters: <b>{failed:,} parameters failed ({n['errors'] * PARAM_ERRORS} raised, "
        f"{n['dead'] * 100:,} in dead chunks) of 200,000</b>"
    ) in page
    assert card(page, "chunks finished") == "2,000 / 2,000"
    assert card(page, "chunks dead") == str(n["dead"])
    assert card(page, "chunks with errors") == str(n["errors"])
    assert card(page, "parameters ok") == f"{v.done_params:,} / 200,000"
    assert card(page, "parameters failed") == str(n["errors"] * PARAM_ERRORS)
    assert card(page, "parameters dead") == f"{n['dead'] * 100:,}"
    assert card(page, "duplicates absorbed") == "0"
    assert card(page, "redelivered") == "1"
    assert card(page, "workers (lost)") == "4 (1)"
    assert summary.chunks == 2000 and summary.events == 2
    assert summary.bytes == summary.path.stat().st_size
    assert summary.workers == ["w-0", "w-1", "w-2", "w-3"]


def test_report_verified_run_says_so_and_has_no_failures(tmp_path: Path) -> None:
    rows = [outcome(c, "ok", 10, f"w-{c % 2}", 1, T0 + c, T0 + c + 0.5) for c in range(50)]
    verify = verify_report(total_chunks=50, finished=50, done=50, total_params=500, done_params=500)
    summary = write_report(
        tmp_path / "r.html", run="r", verify=verify, spec=spec(500), chunks=rows, events=[]
    )
    page = summary.path.read_text()
    assert '<div class="badge">VERIFIED</div>' in page and "NOT VERIFIED" not in page
    assert "Parameters: <b>all 500 ok</b>" in page
    assert "No chunk died and no parameter raised." in page
    assert summary.lost_workers == []
    # Every section drew its chart.
    for chart in ("progress", "workers", "durations"):
        assert f'<figure class="chart" id="chart-{chart}"><svg' in page


def test_report_of_a_reusing_run_shows_computed_vs_reused_and_no_reused_lane(
    tmp_path: Path,
) -> None:
    computed = [outcome(c, "ok", 10, "w-0", 1, T0 + c, T0 + c + 0.5) for c in range(2)]
    src = ((10, "r0", 7, 1, "w-old", T0 - 100),)
    reused = [dataclasses.replace(outcome(c, "ok", 10, "reused", 0, T0, T0), src=src)
              for c in range(2, 5)]  # fmt: skip
    verify = verify_report(total_chunks=5, finished=5, done=5, total_params=50, done_params=50)
    verify = dataclasses.replace(verify, reused_params=30)
    summary = write_report(tmp_path / "r.html", run="r", verify=verify, spec=spec(50),
                           chunks=computed + reused, events=[])  # fmt: skip
    page = summary.path.read_text()
    assert card(page, "computed / reused") == "20 / 30"
    assert summary.workers == ["w-0"]


def test_report_marks_the_lost_worker(tmp_path: Path) -> None:
    run = SyntheticRun(2000)
    summary = write_report(
        tmp_path / "r.html",
        run="sweep-1",
        verify=run.verify(),
        spec=run.spec(),
        chunks=run.rows(),
        events=run.events(),
    )
    assert summary.lost_workers == ["w-2"]
    page = summary.path.read_text()
    assert '<span class="lost">w-2 lost</span>' in page
    # On the timeline: its lane label and the note by the cross.
    assert ">w-2  LOST</text>" in page
    assert "lost: its chunks redelivered" in page


def test_lost_worker_is_one_that_records_nothing_after_its_chunk_is_redelivered() -> None:
    agg = Aggregate()
    agg.add_chunk(outcome(0, "ok", 1, "slow", 1, T0, T0 + 10))
    agg.add_chunk(outcome(1, "ok", 1, "dies", 1, T0, T0 + 4))
    agg.add_chunk(outcome(2, "ok", 1, "other", 2, T0 + 6, T0 + 7))
    # "slow" had a chunk taken away at 5 but recorded an outcome at 10: alive.
    agg.add_event(Event(T0 + 5, "redelivered", 3, "other", "slow", None))
    # "dies" recorded its last outcome at 4; its chunk went elsewhere at 6 and at 5.
    agg.add_event(Event(T0 + 6, "redelivered", 2, "other", "dies", None))
    agg.add_event(Event(T0 + 5, "redelivered", 4, "other", "dies", None))
    # A worker that never recorded anything and lost a chunk is lost too.
    agg.add_event(Event(T0 + 8, "redelivered", 5, "other", "ghost", None))
    assert agg.lost_workers() == ["dies", "ghost"]
    assert agg.lanes["dies"].lost_at == T0 + 5
    # A redelivery with no previous holder, or a release, marks nobody.
    agg.add_event(Event(T0 + 9, "redelivered", 6, "other", None, None))
    agg.add_event(Event(T0 + 9, "released", 7, "slow", None, None))
    assert agg.lost_workers() == ["dies", "ghost"]


def test_report_groups_failures_by_type_and_message_with_an_example(tmp_path: Path) -> None:
    run = SyntheticRun(3000, lost=None)
    summary = write_report(
        tmp_path / "r.html",
        run="sweep-1",
        verify=run.verify(),
        spec=run.spec(),
        chunks=run.rows(),
        events=run.events(),
    )
    page = summary.path.read_text()
    rows = table_rows(page, "error-groups")
    by_error = {r[4]: r for r in rows}
    dead = [c for c in range(3000) if run.status(c) == "dead"]
    errors = [c for c in range(3000) if run.status(c) == "errors"]
    odd = [c for c in errors if c % 2]
    even = [c for c in errors if not c % 2]
    # One row per distinct error, not one per chunk: the "parameter N:" prefix is gone.
    assert len(rows) == 3
    timeout = by_error["TimeoutError: chunk exceeded its 30 s budget"]
    assert timeout[:4] == ["chunk dead", "TimeoutError", f"{len(dead) * 100:,}", str(len(dead))]
    assert timeout[5].startswith(f"parameter {dead[0] * 100} (chunk {dead[0]})")
    zero = by_error["ZeroDivisionError: division by zero"]
    assert zero[:4] == [
        "raised", "ZeroDivisionError", str(len(odd) * PARAM_ERRORS), str(len(odd)),
    ]  # fmt: skip
    # The example names the parameter by index, chunk and value; its traceback on demand.
    assert zero[5] == f"parameter {odd[0] * 100} (chunk {odd[0]}){odd[0] * 100}"
    assert zero[6] == 'showFile "sim.py", line 10, in f\nZeroDivisionError: division by zero'
    assert by_error["ValueError: bad input"][3] == str(len(even))
    # Most parameters first.
    assert [int(r[2].replace(",", "")) for r in rows] == sorted(
        (int(r[2].replace(",", "")) for r in rows), reverse=True
    )


def test_report_lists_as_retried_only_attempts_a_later_attempt_replaced(tmp_path: Path) -> None:
    rows = [
        outcome(0, "ok", 10, "w", 2, T0 + 1, T0 + 2),
        outcome(1, "errors", 10, "w", 1, T0, T0 + 1, "parameter 10: KeyError: 'x'",
                ((10, "KeyError: 'x'"),)),
    ]  # fmt: skip
    events = [
        # Chunk 0 failed once, then its retry succeeded: a replaced attempt.
        Event(T0 + 0.5, "failed", 0, "w", None, "parameter 3: OSError: flaky disk"),
        # Chunk 1's only failed event is its counted outcome: never retried.
        Event(T0 + 1, "failed", 1, "w", None, "parameter 10: KeyError: 'x'"),
    ]
    verify = verify_report(total_chunks=2, finished=2, done=1, errors=1, param_errors=1)
    page = write_report(
        tmp_path / "r.html", run="r", verify=verify, spec=spec(20), chunks=rows, events=events
    ).path.read_text()
    assert [r[:4] for r in table_rows(page, "retried")] == [
        ["replaced", "OSError", "1", "OSError: flaky disk"]
    ]


def test_error_table_caps_distinct_errors_and_counts_the_rest() -> None:
    agg = Aggregate()
    agg.failures.max_distinct = 3
    for c in range(10):
        agg.add_chunk(outcome(c, "dead", 1, "w", 1, None, T0 + c, f"error {'x' * c}"))
    assert len(agg.failures.groups) == 3 and agg.failures.untracked == 7
    assert agg.never_ran == 10 and agg.durations.n == 0


def test_report_for_a_run_with_no_chunks_yet(tmp_path: Path) -> None:
    verify = verify_report(
        run="fresh", state="running", ok=False, verified=False, complete=False, missing=100,
        total_chunks=100, total_params=1000, problems=["100 chunks missing"],
    )  # fmt: skip
    summary = write_report(
        tmp_path / "r.html", run="fresh", verify=verify, spec=spec(), chunks=[], events=[]
    )
    page = summary.path.read_text()
    assert summary.chunks == 0 and summary.workers == [] and summary.lost_workers == []
    assert "NOT VERIFIED" in page and "100 chunks missing" in page
    assert "Exactly once: <b>not known yet: 100 chunks without an outcome</b>" in page
    assert "No chunk has finished yet" in page and "No worker has recorded anything yet" in page
    assert card(page, "chunks finished") == "0 / 100"
    assert card(page, "chunks with errors") == "0"
    assert "<svg" not in page


def test_report_with_events_but_no_outcomes_yet(tmp_path: Path) -> None:
    events = [Event(T0 + 3, "redelivered", 0, "w-1", "w-0", None)]
    summary = write_report(
        tmp_path / "r.html",
        run="r",
        verify=verify_report(ok=False, complete=False),
        spec=spec(),
        chunks=[],
        events=events,
    )
    page = summary.path.read_text()
    assert summary.lost_workers == ["w-0"] and summary.workers == ["w-0", "w-1"]
    assert '<figure class="chart" id="chart-workers"><svg' in page
    assert "No chunk has finished yet" in page and "<th>ok</th><td>false</td>" in page


def test_report_switches_to_time_bins_when_chunks_are_too_many_to_draw(tmp_path: Path) -> None:
    run = SyntheticRun(30_000, workers=3)
    agg = Aggregate()
    for row in run.rows():
        agg.add_chunk(row)
    assert not agg.bars_kept
    assert all(len(lane.bar_kind) == 0 for lane in agg.lanes.values())
    summary = write_report(
        tmp_path / "r.html",
        run="sweep-1",
        verify=run.verify(),
        spec=run.spec(),
        chunks=run.rows(),
        events=run.events(),
    )
    page = summary.path.read_text()
    assert "shade = share of time busy" in page
    assert summary.lost_workers == ["w-2"]


def test_time_grid_coarsens_and_keeps_every_count() -> None:
    grid = TimeGrid()
    counts, busy = Series(grid), Series(grid)
    total_busy = 0.0
    for i in range(20_000):
        t = T0 + i * 0.37
        grid.include(t)
        grid.include(t + 0.3)
        counts.add(t)
        busy.add_span(t, t + 0.3)
        total_busy += 0.3
    assert sum(counts.dense()) == 20_000
    # Epoch-sized floats keep ~0.1 µs per subtraction; nothing is lost beyond that.
    assert math.isclose(sum(busy.dense()), total_busy, rel_tol=1e-6)
    assert len(counts.dense()) <= MAX_TIME_BINS
    # Width is a power of two seconds, just coarse enough for the span.
    assert grid.width * MAX_TIME_BINS >= 20_000 * 0.37 > grid.width * MAX_TIME_BINS / 2


def test_report_needs_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    read = []

    def rows() -> Iterator[Outcome]:
        read.append(1)
        yield outcome(0, "ok", 1, "w", 1, T0, T0 + 1)

    with pytest.raises(UsageError) as e:
        write_report(
            tmp_path / "r.html", run="r", verify=verify_report(), spec=spec(), chunks=rows(),
            events=[],
        )  # fmt: skip
    assert str(e.value) == (
        "ttg report needs the report extra: pip install -e 'worker[report]' (in a TTG checkout)"
    )
    assert read == [] and not (tmp_path / "r.html").exists()


def test_report_to_an_unwritable_path_is_a_usage_error(tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "r.html"
    with pytest.raises(UsageError, match="cannot write the report to"):
        write_report(target, run="r", verify=verify_report(), spec=spec(), chunks=[], events=[])


@pytest.mark.slow
def test_report_of_a_million_chunks_is_small_and_memory_stays_flat(tmp_path: Path) -> None:
    run = SyntheticRun(1_000_000, workers=8)
    samples: dict[int, int] = {}

    def rows() -> Iterator[Outcome]:
        for row in run.rows():
            if row.chunk in (100_000, 999_999):
                samples[row.chunk] = rss_bytes()
            yield row

    summary = write_report(
        tmp_path / "big.html",
        run="sweep-1",
        verify=run.verify(),
        spec=run.spec(),
        chunks=rows(),
        events=run.events(),
    )
    growth = samples[999_999] - samples[100_000]
    print(  # noqa: T201 - the figures behind the asserts, for whoever reads -s output
        f"\n10^6 chunks: report {summary.bytes:,} bytes; RSS growth over the last "
        f"900,000 rows {growth / 2**20:.1f} MiB"
    )
    assert summary.chunks == 1_000_000 and summary.lost_workers == ["w-2"]
    assert summary.bytes < 5 * 2**20
    # Holding the rows would take hundreds of MiB; aggregation holds a few bins.
    assert growth < 16 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB while reading rows"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(8.5e-4, "850 µs"), (9.999e-4, "1 ms"), (0.0125, "12.5 ms"), (0.9999, "1 s"),
     (3.2, "3.2 s"), (119.99, "2 min"), (270, "4.5 min"), (7560, "2.1 h")],
)  # fmt: skip
def test_durations_read_as_people_write_them_even_at_a_unit_boundary(
    seconds: float, text: str
) -> None:
    assert seconds_text(seconds) == text


def test_median_and_p95_of_equal_durations_share_one_label(tmp_path: Path) -> None:
    # Chunks that all take 40 ms (a demo's): two labels at one place would overprint.
    run = SyntheticRun(200, lost=None)
    rows = [
        dataclasses.replace(r, started_at=r.finished_at - 0.04, status=Status.OK, param_errors=())
        for r in run.rows()
    ]
    page = write_report(
        tmp_path / "r.html", run="even", verify=run.verify(), spec=run.spec(), chunks=rows,
        events=[],
    ).path.read_text()  # fmt: skip
    assert "median ≈ p95 ≈ 40 ms" in page
    assert "p95 ≈" not in page.replace("median ≈ p95 ≈", "")


def test_worker_names_with_dollars_are_text_not_mathtext(tmp_path: Path) -> None:
    """A worker may be named anything; matplotlib reads $...$ as mathtext unless told not to."""
    names = {0: "$\\frac{a}{$", 1: "$x^2$-pod", 2: "cost$5", 3: "w\\$"}
    run = SyntheticRun(200)
    rows = [dataclasses.replace(r, worker=names[r.chunk % 4]) for r in run.rows()]
    summary = write_report(
        tmp_path / "r.html", run="r", verify=run.verify(), spec=run.spec(), chunks=rows, events=[]
    )
    page = summary.path.read_text()
    assert sorted(summary.workers) == sorted(names.values())
    for name in names.values():
        assert html.escape(name, quote=False) in page


def test_errors_that_differ_only_in_numbers_are_one_group() -> None:
    agg = Aggregate()
    for c in range(6):
        errors = [(c * 10, f"ValueError: unstable step for x={c * 10}")]
        errors.append((c * 10 + 1, "ZeroDivisionError: division by zero"))
        agg.add_chunk(outcome(c, "errors", 10, "w", 1, None, T0 + c, None, tuple(errors)))
    groups = {g.error: g for g in agg.failures.top(10)}
    assert set(groups) == {
        "ValueError: unstable step for x=…",
        "ZeroDivisionError: division by zero",
    }
    assert [(g.params, g.chunks) for g in groups.values()] == [(6, 6), (6, 6)]
    assert groups["ValueError: unstable step for x=…"].example.index == 0  # type: ignore[union-attr]
