"""Status and verify for people: the vocabulary, failing parameters by value, every error."""

from __future__ import annotations

import io

from ttg import progress
from ttg.progress import Bar
from ttg.run import Progress, RunSpec
from ttg.space import grid
from ttg.verify import status_report

SPEC = RunSpec("r", grid(omega=[0.5, 1], zeta=[0, 0.5, 1, 2]).to_spec(), 2, "tests.computes:label")


def test_status_names_failing_parameters_by_value_and_lists_more_than_five() -> None:
    errors = [f"parameter {i}: ValueError: bad {i}" for i in range(8)]
    errors.append("parameter 3: ValueError: bad 3")  # the same error again: shown once
    p = Progress("r", total_chunks=4, total_params=8, seeded_chunks=4, done=1, done_params=4,
                 errors=2, param_errors=3, recent_errors=errors, workers=2)  # fmt: skip
    report = status_report(p, spec=SPEC)
    assert len(report.recent_failures) == 8
    assert report.recent_failures[5].param == {"omega": 1, "zeta": 0.5}
    text = progress.explain(report)
    assert "  error: ValueError: bad 5  e.g. parameter 5 (omega=1, zeta=0.5)" in text
    assert text.count("error: ValueError") == 8
    first = text.splitlines()[0]
    assert first.startswith("run r: running  3/4 chunks finished (75.0%): 1 ok, 2 with errors, ")
    assert "parameters 4 ok, 3 failed of 8" in first and "2 workers" in first
    assert "failed 3" not in first  # "failed" is never a count of chunks


def test_counts_read_in_the_singular_where_there_is_one() -> None:
    p = Progress("r", total_chunks=1, total_params=1, seeded_chunks=1, done=1, done_params=1,
                 workers=1, failed=1)  # fmt: skip
    line = progress.describe(status_report(p, spec=SPEC))
    assert "1 worker" in line and "1 workers" not in line
    assert "1 failed attempt," in line and "parameters 1 ok, 0 failed, 0 dead of 1" in line


def test_a_bar_off_a_terminal_writes_plain_lines_only_when_progress_moved() -> None:
    out = io.StringIO()
    bar = Bar("r", enabled=True, stream=out)
    for done in (0, 0, 0, 5, 10):
        bar.update(done, 10, "2 workers")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\033" not in out.getvalue()
    # The first line at once, then only the end: moves within 5 s are not written.
    assert [line.split()[-3] for line in lines] == ["0/10", "10/10"]
