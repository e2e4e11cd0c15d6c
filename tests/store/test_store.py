"""The results store as a library: objects, Parquet chunks, caps, readers, sweep, on both stores."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.store.conftest import StoreEnv
from tests.store.s3server import BUCKET, SeaweedS3
from ttg.errors import StoreAccessDenied, StoreError, UsageError
from ttg.run import Delivery, Outcome, Recorded, RunSpec, Status
from ttg.store import check_writable, open_store, parse_url
from ttg.store.chunks import chunk_of, run_prefix
from ttg.store.objects import refused
from ttg.store.reader import CountedObjects, DamagedResults, delete_run, resolved
from ttg.store.writer import (
    MAX_CHUNK_BYTES_BROKER,
    MAX_RESULT_BYTES_BROKER,
    ResultsWriter,
    capped,
)


def spec_of(url: str, *, params: int = 10, chunk_size: int = 4, **kw: object) -> RunSpec:
    space = kw.pop("space", {"kind": "range", "start": 0, "stop": params, "step": 1})
    return RunSpec(run="r1", space=space, chunk_size=chunk_size, compute="tests.computes:f",
                   results=url, **kw)  # type: ignore[arg-type]  # fmt: skip


def outcome(
    spec: RunSpec, chunk: int, results: list[object], errors: tuple[tuple[int, str], ...] = ()
) -> Outcome:
    lo, hi = spec.bounds(chunk)
    status = Status.ERRORS if errors else Status.OK
    error = f"parameter {errors[0][0]}: {errors[0][1]}" if errors else None
    return Outcome(chunk, status, hi - lo, "w1", 1, time.time(), result=results,
                   result_json=json.dumps(results, separators=(",", ":")),
                   param_errors=errors, error=error)  # fmt: skip


def delivery(spec: RunSpec, chunk: int, attempt: int = 1) -> Delivery:
    return Delivery(spec, chunk, attempt, handle=None)


def persist_run(spec: RunSpec, writer: ResultsWriter | None = None) -> list[Outcome]:
    """Every chunk of ``spec`` computed as ``x*x`` (parameter 5 an error) and persisted."""
    writer = writer or ResultsWriter("w1")
    items = []
    for c in range(spec.total_chunks):
        lo, hi = spec.bounds(c)
        errors = tuple((i, "ValueError: five") for i in range(lo, hi) if i == 5)
        results = [None if i == 5 else {"sq": i * i} for i in range(lo, hi)]
        items.append((delivery(spec, c), outcome(spec, c, results, errors)))
    return [o for _, o in writer.persist(items)]


def test_parse_url_accepts_the_three_kinds_and_refuses_the_rest() -> None:
    assert parse_url("broker") == "broker"
    assert parse_url("file:///data/ttg/") == "file:///data/ttg"
    assert parse_url("s3://my-bucket/a/b/") == "s3://my-bucket/a/b"
    assert parse_url("s3://my-bucket") == "s3://my-bucket"
    bad_urls = ["redis://x", "file://relative/x", "file:///", "file:///a/../b", "s3://B_ad",
                "s3://bucket/a//b", "s3://k:pw@bucket", "s3://bucket?x=1", "/data/ttg"]  # fmt: skip
    for bad in bad_urls:
        with pytest.raises(UsageError):
            parse_url(bad)


def test_objects_put_get_list_delete(store: StoreEnv) -> None:
    s = open_store(store.url)
    s.put("runs/r1/a.parquet", b"one")
    s.put("runs/r1/sub/b", b"two")
    assert s.get("runs/r1/a.parquet") == b"one"
    assert sorted(s.list("runs/r1/")) == [("runs/r1/a.parquet", 3), ("runs/r1/sub/b", 3)]
    s.delete("runs/r1/a.parquet")
    s.delete("runs/r1/a.parquet")  # already gone: fine
    with pytest.raises(StoreError, match="does not exist"):
        s.get("runs/r1/a.parquet")
    s.delete_folder("runs/r1/")
    assert list(s.list("runs/r1/")) == []
    check_writable(store.url)
    assert list(s.list("_ttg/")) == []


def test_writer_writes_one_object_per_chunk_and_readers_get_the_results_back(
    store: StoreEnv,
) -> None:
    spec = spec_of(store.url)
    persisted = persist_run(spec)
    assert [o.result for o in persisted] == [None, None, None]
    assert all(o.ref is not None and o.ref.rows == o.params for o in persisted)
    names = sorted(n for n, _ in open_store(store.url).list(run_prefix("r1")))
    assert [chunk_of(n) for n in names] == [0, 1, 2]
    # The ledger's JSON form carries the reference, never the results.
    again = [Outcome.from_json(o.chunk, o.to_json()) for o in persisted]
    assert again[0].ref == persisted[0].ref and '"sq"' not in persisted[0].to_json()

    back = list(resolved(spec, again))
    assert back[1].result == [{"sq": 16}, None, {"sq": 36}, {"sq": 49}]
    assert back[1].param_errors == ((5, "ValueError: five"),)
    assert json.loads(back[2].result_json or "") == [{"sq": 64}, {"sq": 81}]


def test_the_run_folder_reads_as_one_parquet_dataset(store: StoreEnv) -> None:
    grid = {
        "kind": "grid",
        "axes": [["omega", [0.5, 1, 2]], ["index", ["a", "b"]], ["mix", [1, "x"]]],
    }
    spec = spec_of(store.url, space=grid, chunk_size=4)
    persist_run(spec)
    s = open_store(store.url)
    if store.root is not None:
        dataset = ds.dataset(store.root / "runs" / "r1")
    else:
        dataset = ds.dataset(f"{BUCKET}/{store.url.split('/', 3)[3]}/runs/r1/", filesystem=s.fs)  # type: ignore[attr-defined]
    table = dataset.to_table().sort_by("index")
    assert table.column_names == ["index", "omega", "param.index", "mix", "result", "status",
                                  "error", "chunk"]  # fmt: skip
    assert table.num_rows == 12
    assert table.column("omega").to_pylist()[:4] == [0.5, 0.5, 0.5, 0.5]
    assert table.column("mix").to_pylist()[:2] == ["1", '"x"']
    assert table.column("status").to_pylist()[4:6] == ["ok", "error"]
    assert json.loads(table.column("result")[4].as_py()) == {"sq": 16}


def test_readers_name_the_chunk_of_a_missing_or_altered_object(store: StoreEnv) -> None:
    spec = spec_of(store.url)
    persisted = persist_run(spec)
    s = open_store(store.url)
    assert persisted[0].ref and persisted[2].ref
    s.delete(persisted[0].ref.name)
    data = bytearray(s.get(persisted[2].ref.name))
    data[-20] ^= 0xFF
    s.put(persisted[2].ref.name, bytes(data))

    problems: list[str] = []
    back = list(resolved(spec, persisted, problems=problems))
    assert back[1].result is not None and back[0].result is None
    assert len(problems) == 2
    assert problems[0].startswith("chunk 0: object ") and problems[0].endswith(" is missing")
    assert problems[1].startswith("chunk 2: ") and "altered" in problems[1]
    with pytest.raises(DamagedResults, match="chunk 0"):
        list(resolved(spec, persisted))


def test_duplicates_objects_are_deleted_and_strays_swept(store: StoreEnv) -> None:
    spec = spec_of(store.url)
    writer = ResultsWriter("w1")
    counted = persist_run(spec, writer)
    # A duplicate of chunk 1 the ledger refused: its worker deletes its object.
    d = delivery(spec, 1, attempt=2)
    ((_, dup),) = writer.persist([(d, outcome(spec, 1, [1, 2, 3, 4]))])
    writer.settled([(d, dup)], [Recorded.DUPLICATE])
    # A stray of chunk 2 (its worker died before recording) and an object of a chunk
    # without an outcome yet (a worker about to record it).
    for chunk in (2, 0):
        d = delivery(spec, chunk, attempt=3)
        writer.persist([(d, outcome(spec, chunk, [0] * (spec.bounds(chunk)[1] - chunk * 4)))])
    s = open_store(store.url)
    assert len(list(s.list(run_prefix("r1")))) == 5

    seen = CountedObjects(spec)
    list(seen.see(counted[1:]))  # chunk 0 not counted yet
    tally = seen.sweep(s)
    assert (tally.strays_removed, tally.pending, tally.foreign) == (1, 2, 0)
    left = sorted(n for n, _ in s.list(run_prefix("r1")))
    assert counted[1].ref and counted[2].ref
    assert counted[1].ref.name in left and counted[2].ref.name in left and len(left) == 4

    assert delete_run(spec)
    assert list(s.list(run_prefix("r1"))) == []


def test_a_result_over_the_cap_is_its_parameter_s_error_naming_its_size() -> None:
    spec = spec_of("broker", params=4, chunk_size=4)
    big = "x" * (MAX_RESULT_BYTES_BROKER + 10)
    o, _ = capped(outcome(spec, 0, [1, big, 3, 4]), 0, in_broker=True)
    assert o.status is Status.ERRORS
    assert o.result == [1, None, 3, 4] and json.loads(o.result_json or "") == [1, None, 3, 4]
    ((index, error),) = o.param_errors
    assert index == 1 and f"{MAX_RESULT_BYTES_BROKER + 12:,} bytes" in error
    assert o.error == f"parameter 1: {error}"
    # Small results pass untouched and are not encoded again.
    small = outcome(spec, 0, [1, 2, 3, 4])
    assert capped(small, 0, in_broker=True) == (small, None)
    # A chunk's results together over the chunk cap: the ones past it become errors.
    part = "y" * (MAX_RESULT_BYTES_BROKER - 2)
    many = [part] * (MAX_CHUNK_BYTES_BROKER // MAX_RESULT_BYTES_BROKER + 2)
    spec = spec_of("broker", params=len(many), chunk_size=len(many))
    o, _ = capped(outcome(spec, 0, many), 0, in_broker=True)
    assert [i for i, _ in o.param_errors] == [len(many) - 2, len(many) - 1]
    assert "chunk's results pass 64 MiB" in o.param_errors[0][1]


def test_the_file_store_never_creates_its_base(tmp_path: Path) -> None:
    s = open_store(f"file://{tmp_path}/not-mounted")
    with pytest.raises(StoreError, match="not a directory"):
        s.put("runs/r1/x.parquet", b"1")
    assert not (tmp_path / "not-mounted").exists()


def test_s3_refuses_unknown_credentials(
    s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    url = f"s3://{BUCKET}/denied-{time.monotonic_ns()}"
    with pytest.raises(StoreAccessDenied):
        check_writable(url)


def test_a_store_error_is_a_refusal_by_its_own_words_never_by_a_name_it_quotes() -> None:
    # CI saw a dead endpoint reported as refused credentials: the probe's random name held 403.
    unreachable = OSError(
        "When initiating multiple part upload for key"
        " 'p/_ttg/probe-3c46ded34e4246caae1395b6a4037e31' in bucket 'ttg-403':"
        " AWS Error NETWORK_CONNECTION during CreateMultipartUpload operation:"
        " curlCode: 7, Could not connect to server"
    )
    assert not refused(unreachable)
    for words in ("AWS Error ACCESS_DENIED during PutObject operation", "HTTP 403 Forbidden",
                  "AWS Error SIGNATURE_DOES_NOT_MATCH during HeadBucket operation",
                  "AccessDeniedException: not yours"):  # fmt: skip
        assert refused(OSError(f"When writing key 'runs/x' in bucket 'b': {words}")), words


def test_persist_reuses_what_it_wrote_when_called_again(file_store: StoreEnv) -> None:
    spec = spec_of(file_store.url)
    writer = ResultsWriter("w1")
    d = delivery(spec, 0)
    o = outcome(spec, 0, [0, 1, 4, 9])
    ((_, first),) = writer.persist([(d, o)])
    ((_, second),) = writer.persist([(d, o)])  # the broker refused the first record
    assert first.ref == second.ref
    assert len(list(open_store(file_store.url).list(run_prefix("r1")))) == 1
    writer.settled([(d, second)], [Recorded.COUNTED])
    assert dataclasses.replace(second, ref=None).result is None


def test_a_ledger_naming_another_object_is_a_problem_never_a_path_followed(
    file_store: StoreEnv,
) -> None:
    spec = spec_of(file_store.url)
    persisted = persist_run(spec)
    assert file_store.root is not None and persisted[0].ref is not None
    (file_store.root.parent / "secret").write_bytes(b"not yours")
    for name in ("../secret", persisted[1].ref.name if persisted[1].ref else "", "runs/r2/x"):
        ref = dataclasses.replace(persisted[0].ref, name=name)
        problems: list[str] = []
        (back,) = resolved(spec, [dataclasses.replace(persisted[0], ref=ref)], problems=problems)
        assert back.result is None
        assert problems == [f"chunk 0: the ledger names {name!r}, not an object of it"]
    with pytest.raises(ValueError, match="not an object reference"):  # a DecodeError
        Outcome.from_json(0, '{"s":"ok","n":4,"w":"w","a":1,"t":1,"o":{"k":"x","n":4,"h":"zz"}}')
