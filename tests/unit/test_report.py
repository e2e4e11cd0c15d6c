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

from tests.reportdata import PARAM_ERRORS, T0, SyntheticRun
from ttg.errors import UsageError
from ttg.report import ChunkRow, Event, write_report
from ttg.report.aggregate import MAX_TIME_BINS, Aggregate, Series, TimeGrid
from ttg.report.charts import seconds_text


def card(page: str, label: str) -> str:
    """The value of the header card named ``label``."""
    m = re.search(rf'<div class="v">([^<]*)</div><div class="k">{re.escape(label)}</div>', page)
    assert m, f"no card {label!r}"
    return html.unescape(m.group(1))


def table_rows(page: str, section: str) -> list[list[str]]:
    """The text of every data row of the first table in ``<section id=section>``."""
    body = page.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
    table = body.split("<table>", 1)[1].split("</table>", 1)[0]
    rows = []
    for tr in re.findall(r"<tr>(.*?)</tr>", table)[1:]:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", tr)
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
        chunks=run.rows(),
        events=run.events(),
    )
    page = summary.path.read_text()
    n = run.counts()
    assert '<div class="badge">NOT VERIFIED</div>' in page
    assert f"<li>{n['dead']} chunks dead-lettered</li>" in page
    assert card(page, "chunks done") == f"{n['ok']:,} / 2,000"
    assert card(page, "dead-lettered") == str(n["dead"])
    assert card(page, "chunks with errors") == str(n["errors"])
    assert card(page, "duplicates absorbed") == "0"
    assert card(page, "redelivered") == "1"
    assert card(page, "parameters computed") == f"{run.verify()['done_params']:,} / 200,000"
    assert card(page, "workers (lost)") == "4 (1)"
    assert summary.chunks == 2000 and summary.events == 2
    assert summary.bytes == summary.path.stat().st_size
    assert summary.workers == ["w-0", "w-1", "w-2", "w-3"]


def test_report_verified_run_says_so_and_has_no_failures(tmp_path: Path) -> None:
    rows = [
        ChunkRow(c, "ok", 10, 0, f"w-{c % 2}", 1, T0 + c, T0 + c + 0.5, None) for c in range(50)
    ]
    verify = {
        "run": "r",
        "state": "complete",
        "ok": True,
        "total_chunks": 50,
        "done": 50,
        "dead": 0,
        "errors": 0,
        "duplicates": 0,
        "redelivered": 0,
        "problems": [],
    }
    summary = write_report(tmp_path / "r.html", run="r", verify=verify, chunks=rows, events=[])
    page = summary.path.read_text()
    assert '<div class="badge">VERIFIED</div>' in page and "NOT VERIFIED" not in page
    assert "No chunk died and no parameter raised." in page
    assert summary.lost_workers == []
    # Every section drew its chart.
    for chart in ("progress", "workers", "durations"):
        assert f'<figure class="chart" id="chart-{chart}"><svg' in page


def test_report_marks_the_lost_worker(tmp_path: Path) -> None:
    run = SyntheticRun(2000)
    summary = write_report(
        tmp_path / "r.html",
        run="sweep-1",
        verify=run.verify(),
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
    agg.add_chunk(ChunkRow(0, "ok", 1, 0, "slow", 1, T0, T0 + 10, None))
    agg.add_chunk(ChunkRow(1, "ok", 1, 0, "dies", 1, T0, T0 + 4, None))
    agg.add_chunk(ChunkRow(2, "ok", 1, 0, "other", 2, T0 + 6, T0 + 7, None))
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


def test_report_failures_table_groups_errors_with_counts_and_first_chunks(tmp_path: Path) -> None:
    run = SyntheticRun(3000, lost=None)
    summary = write_report(
        tmp_path / "r.html",
        run="sweep-1",
        verify=run.verify(),
        chunks=run.rows(),
        events=run.events(),
    )
    rows = table_rows(summary.path.read_text(), "failures")
    by_error = {r[3]: r for r in rows}
    dead = [c for c in range(3000) if run.status(c) == "dead"]
    errors = [c for c in range(3000) if run.status(c) == "errors"]
    odd = [c for c in errors if c % 2]
    even = [c for c in errors if not c % 2]
    timeout = by_error["TimeoutError: chunk exceeded its 30 s budget"]
    assert timeout[:3] == ["dead", f"{len(dead)}", f"{len(dead) * 100:,}"]
    assert timeout[4] == ", ".join(map(str, dead[:5])) + ", …"
    zero = by_error["ZeroDivisionError: division by zero"]
    assert zero[:3] == ["parameter errors", str(len(odd)), str(len(odd) * PARAM_ERRORS)]
    assert zero[4].startswith(", ".join(map(str, odd[:5])))
    assert by_error["ValueError: bad input"][1] == str(len(even))
    # Most frequent first.
    assert [int(r[1]) for r in rows] == sorted((int(r[1]) for r in rows), reverse=True)


def test_error_table_caps_distinct_errors_and_counts_the_rest() -> None:
    agg = Aggregate()
    agg.failures.max_distinct = 3
    for c in range(10):
        agg.add_chunk(ChunkRow(c, "dead", 1, 0, "w", 1, None, T0 + c, f"error number {c}"))
    assert len(agg.failures.groups) == 3 and agg.failures.untracked == 7
    assert agg.never_ran == 10 and agg.durations.n == 0


def test_report_for_a_run_with_no_chunks_yet(tmp_path: Path) -> None:
    verify = {
        "run": "fresh",
        "state": "running",
        "ok": False,
        "total_chunks": 100,
        "done": 0,
        "dead": 0,
        "duplicates": 0,
        "redelivered": 0,
        "problems": ["100 chunks missing"],
    }
    summary = write_report(tmp_path / "r.html", run="fresh", verify=verify, chunks=[], events=[])
    page = summary.path.read_text()
    assert summary.chunks == 0 and summary.workers == [] and summary.lost_workers == []
    assert "NOT VERIFIED" in page and "100 chunks missing" in page
    assert "No chunk has finished yet" in page and "No worker has recorded anything yet" in page
    assert card(page, "chunks done") == "0 / 100"
    assert card(page, "chunks with errors") == "0"  # not in this verify: counted from the ledger
    assert "<svg" not in page


def test_report_with_events_but_no_outcomes_yet(tmp_path: Path) -> None:
    events = [Event(T0 + 3, "redelivered", 0, "w-1", "w-0", None)]
    summary = write_report(
        tmp_path / "r.html", run="r", verify={"ok": False}, chunks=[], events=events
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

    def rows() -> Iterator[ChunkRow]:
        read.append(1)
        yield ChunkRow(0, "ok", 1, 0, "w", 1, T0, T0 + 1, None)

    with pytest.raises(UsageError) as e:
        write_report(tmp_path / "r.html", run="r", verify={}, chunks=rows(), events=[])
    assert str(e.value) == "ttg report needs the report extra: pip install 'ttg[report]'"
    assert read == [] and not (tmp_path / "r.html").exists()


def test_report_to_an_unwritable_path_is_a_usage_error(tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "r.html"
    with pytest.raises(UsageError, match="cannot write the report to"):
        write_report(target, run="r", verify={}, chunks=[], events=[])


@pytest.mark.slow
def test_report_of_a_million_chunks_is_small_and_memory_stays_flat(tmp_path: Path) -> None:
    run = SyntheticRun(1_000_000, workers=8)
    samples: dict[int, int] = {}

    def rows() -> Iterator[ChunkRow]:
        for row in run.rows():
            if row.chunk in (100_000, 999_999):
                samples[row.chunk] = rss_bytes()
            yield row

    summary = write_report(
        tmp_path / "big.html",
        run="sweep-1",
        verify=run.verify(),
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
        dataclasses.replace(r, started_at=r.finished_at - 0.04, status="ok", param_errors=0)
        for r in run.rows()
    ]
    page = write_report(
        tmp_path / "r.html", run="even", verify=run.verify(), chunks=rows, events=[]
    ).path.read_text()
    assert "median ≈ p95 ≈ 40 ms" in page
    assert "p95 ≈" not in page.replace("median ≈ p95 ≈", "")


def test_worker_names_with_dollars_are_text_not_mathtext(tmp_path: Path) -> None:
    """A worker may be named anything; matplotlib reads $...$ as mathtext unless told not to."""
    names = {0: "$\\frac{a}{$", 1: "$x^2$-pod", 2: "cost$5", 3: "w\\$"}
    rows = [dataclasses.replace(r, worker=names[r.chunk % 4]) for r in SyntheticRun(200).rows()]
    summary = write_report(
        tmp_path / "r.html", run="r", verify=SyntheticRun(200).verify(), chunks=rows, events=[]
    )
    page = summary.path.read_text()
    assert sorted(summary.workers) == sorted(names.values())
    for name in names.values():
        assert html.escape(name, quote=False) in page
