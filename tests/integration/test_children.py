"""The supervisor and its compute processes, without a broker: real children, real crashes.

What a child writes is batched (``ttg.children.child.Output``): results held back
a moment, several chunks' answers in one write. These tests pin what that must
never cost: a crash or an overrun is still blamed on exactly its parameter, and
every other parameter of every chunk queued with the child keeps its result.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.computes import MISBEHAVIOUR, NOTES_ENV
from ttg.children import protocol
from ttg.children.child import Output
from ttg.children.supervisor import Supervisor
from ttg.run import RunSpec

pytestmark = pytest.mark.integration

#: One failure class per chunk of 10 (tests.computes.MISBEHAVIOUR), a 2 s time limit.
SPEC = RunSpec(
    run="children-1",
    space={"kind": "range", "start": 0, "stop": 50},
    chunk_size=10,
    compute="tests.computes:misbehave",
    param_timeout=2.0,
    param_memory="256Mi",
)
CAUSES = {
    3: "ValueError: cannot compute parameter 3",
    13: "timed out after 2 s",
    23: "killed by signal 11 (SIGSEGV)",
    33: "exited with code 3",
    43: "exceeded its memory limit 256Mi",
}


def test_chunks_queued_together_keep_every_result_but_the_culprits() -> None:
    assert set(MISBEHAVIOUR) == set(CAUSES)
    sup = Supervisor(("tests.computes",), slots=1)
    sup.start()
    begun: list[tuple[int, int]] = []
    try:
        chunks = [(SPEC, lo, lo + 10) for lo in range(0, 50, 10)]
        results = list(sup.compute_many(0, chunks, lambda i, j: begun.append((i, j)), depth=5))
    finally:
        sup.close()
    assert begun == [(0, 5)]  # every chunk marked begun once, before the child had it
    for n, r in enumerate(results):
        assert not isinstance(r, Exception), r
        (bad,) = [i for i in CAUSES if n * 10 <= i < n * 10 + 10]
        ((index, error, _, _),) = r.errors
        assert index == bad and CAUSES[bad] in error, r.errors
        for i in range(n * 10, n * 10 + 10):
            want = None if i == bad else (0 if i == 44 else i * i)
            assert r.results[i - n * 10] == want, (i, r.results)


def test_a_hang_is_blamed_at_once_and_a_crash_after_held_results_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parameters 10-12 are quick and held back when 13 hangs: the child said it is on
    13 (``at``), so the overrun is 13's at once, computed once. 20-22 are held back
    when 23 segfaults: they are computed again, a line each, to find the culprit."""
    monkeypatch.setenv(NOTES_ENV, str(tmp_path))
    sup = Supervisor(("tests.computes",), slots=1)
    sup.start()
    try:
        spec = replace(SPEC, compute="tests.computes:misbehave_noted")
        hang, crash = (sup.compute(0, spec, lo, lo + 10) for lo in (10, 20))
    finally:
        sup.close()
    assert [(i, t) for i, t, _, _ in hang.errors] == [(13, "timed out after 2 s")]
    assert hang.results == [i * i if i != 13 else None for i in range(10, 20)]
    assert [(i, t) for i, t, _, _ in crash.errors] == [(23, "killed by signal 11 (SIGSEGV)")]
    assert crash.results == [i * i if i != 23 else None for i in range(20, 30)]
    starts = sorted(int(p.name.split("-")[0]) for p in tmp_path.iterdir())
    assert starts.count(13) == 1, starts  # blamed at once: one time limit, not two
    # 23 again (or once, if the child said it was on 23 before it died); 20-22 again
    # only if their results were still held back when 23 crashed.
    assert starts.count(23) in (1, 2) and starts.count(24) == 1, starts
    assert all(starts.count(i) in (1, 2) for i in range(20, 23)), starts


def written(lines: list[bytes]) -> list[protocol.Reply]:
    return protocol.parse_many(b"".join(lines).splitlines())


def test_output_holds_fast_results_and_answers_requests_in_order() -> None:
    lines: list[bytes] = []
    out = Output(lines.append)
    out.request(0, careful=False)
    out.held.extend([0, 1, 4])
    out.done(protocol.end(0.1), hold=True)  # the worker did not ask: nothing written yet
    assert lines == []
    out.request(3, careful=False)
    out.held.append(9)
    out.line(protocol.failed(4, "ValueError: no", True), 5)
    out.held.append(25)
    out.done(protocol.end(0.2), hold=False)
    assert len(lines) == 1  # two requests' answers, one write
    assert written(lines) == [
        protocol.Computed(0, [0, 1, 4]),
        protocol.End(0.1),
        protocol.Computed(3, [9]),
        protocol.Failed(4, "ValueError: no", True),
        protocol.Computed(5, [25]),
        protocol.End(0.2),
    ]


def test_output_names_a_slow_parameter_then_writes_each_result_at_once() -> None:
    lines: list[bytes] = []
    out = Output(lines.append)
    out.request(7, careful=False)
    out.held.extend([49, 64])
    out.tick()  # first sight of parameter 9: the results so far go out
    out.tick()  # still on 9 a tick later: said so
    assert written(lines) == [protocol.Computed(7, [49, 64]), protocol.At(9)]
    assert out.careful
    lines.clear()
    out.held.append(81)
    out.flush()  # what the computing loop does once ``careful``
    assert written(lines) == [protocol.Computed(9, [81])]


def test_results_json_cannot_carry_fail_alone_and_long_lines_are_split() -> None:
    lines: list[bytes] = []
    out = Output(lines.append)
    out.request(0, careful=False)
    out.held.extend([1, {2}, 3])
    big = "x" * (protocol.SPLIT_BYTES // 2)
    out.held.extend([big, big, big])
    out.done(protocol.end(0.0), hold=False)
    replies = written(lines)
    assert replies[:3] == [
        protocol.Computed(0, [1]),
        protocol.Failed(1, "result is not JSON-serialisable: TypeError: Object of type set "
                        "is not JSON serializable", True),
        protocol.Computed(2, [3]),
    ]  # fmt: skip
    assert [r.first for r in replies[3:-1]] == [3, 4, 5]  # type: ignore[union-attr]
    assert all(len(line) <= protocol.SPLIT_BYTES + 64 for line in b"".join(lines).splitlines())
    assert json.loads(b"".join(lines).splitlines()[-1]) == ["end", 0.0]
