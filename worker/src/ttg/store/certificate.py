"""A run's certificate: proof, checkable without TTG's broker, that its dataset is complete.

``ttg verify --certificate FILE`` writes a small JSON document: the run's spec,
its chunk and parameter counts, the chunks recorded dead, the verdict, when, and
one root hash folding every counted chunk's object::

    leaf(chunk) = sha256("<chunk> <object file name> <rows> <sha256 of the object>\\n")
    root        = sha256(leaf(c1) + leaf(c2) + ...)   chunks in increasing order, dead ones out

``ttg verify --offline --certificate FILE DATASET`` (or the ten lines of
``docs/check_certificate.py``, pyarrow and hashlib only) recomputes it from the
Parquet dataset alone and checks that every parameter of every chunk not dead is
present exactly once: each such chunk has exactly one object, holding exactly its
parameters in index order, and the root matches.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import tempfile
from hashlib import sha256
from pathlib import Path
from typing import Any

from ttg.errors import TTGError, UsageError
from ttg.run import Outcome, RunSpec
from ttg.store import open_store, parse_url
from ttg.store.chunks import _pa
from ttg.version import version

#: The certificate's format, its first field.
FORMAT = "ttg-certificate/1"
#: Chunk ids listed when some are missing.
MISSING_SAMPLE = 20


def leaf(chunk: int, file_name: str, rows: int, digest: str) -> bytes:
    """One chunk's leaf of the root hash."""
    return sha256(f"{chunk} {file_name} {rows} {digest}\n".encode()).digest()


class Leaves:
    """Every counted chunk's leaf, 33 bytes per chunk (invariant 10), folded in chunk order."""

    def __init__(self, total_chunks: int) -> None:
        self.total = total_chunks
        self._leaves = bytearray(32 * total_chunks)
        self._have = bytearray(total_chunks)
        self.dead: list[int] = []

    def add(self, chunk: int, value: bytes) -> bool:
        """Set ``chunk``'s leaf; False if it had one already."""
        if self._have[chunk]:
            return False
        self._have[chunk] = 1
        self._leaves[32 * chunk : 32 * chunk + 32] = value
        return True

    def has(self, chunk: int) -> bool:
        return bool(self._have[chunk])

    def see(self, o: Outcome) -> None:
        if not 0 <= o.chunk < self.total:
            return
        if o.ref is None:
            self.dead.append(o.chunk)
        else:
            self.add(
                o.chunk, leaf(o.chunk, o.ref.name.rsplit("/", 1)[-1], o.ref.rows, o.ref.sha256)
            )

    def root(self) -> str:
        h = sha256()
        for c in range(self.total):
            if self._have[c]:
                h.update(self._leaves[32 * c : 32 * c + 32])
        return h.hexdigest()


def document(spec: RunSpec, leaves: Leaves, report: dict[str, Any]) -> dict[str, Any]:
    """The certificate of ``spec``'s run, from a verify ``report`` and the leaves it saw."""
    verdict_fields = ("verified", "ok", "complete", "missing", "dead", "errors", "param_errors",
                      "failed_params", "duplicates", "closed_form", "problems")  # fmt: skip
    return {
        "format": FORMAT,
        "run": spec.run,
        "spec": spec.to_dict(),
        "results": spec.results,
        "dataset": f"{spec.results}/runs/{spec.run}/",
        "chunks": spec.total_chunks,
        "params": spec.total_params,
        "chunk_size": spec.chunk_size,
        "dead_chunks": sorted(leaves.dead),
        "root_sha256": leaves.root(),
        "leaf": "sha256 of '<chunk> <object file name> <rows> <object sha256>\\n'; "
        "root: sha256 of the leaves of every chunk not dead, in chunk order",
        "verdict": {k: report.get(k) for k in verdict_fields},
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "ttg_version": version(),
    }


def write(path: str, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` whole or not at all (a temporary file beside it, renamed).

    Raises:
        UsageError: the file cannot be written.
    """
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path())
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)
        raise UsageError(f"--certificate {path}: {e.strerror or e}") from None


def _load(path: str) -> tuple[dict[str, Any], RunSpec]:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"--certificate {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"--certificate {path}: not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError(f"--certificate {path}: not a {FORMAT} document")
    try:
        spec = RunSpec.from_dict(doc["spec"])
        dead = [int(c) for c in doc["dead_chunks"]]
        str(doc["root_sha256"])
        dict(doc["verdict"])
    except (KeyError, TypeError, ValueError, TTGError) as e:
        raise UsageError(f"--certificate {path}: malformed: {e}") from None
    doc["dead_chunks"] = dead
    return doc, spec


def dataset_url(dataset: str) -> str:
    """A dataset argument as a store URL: a path becomes ``file://`` (absolute)."""
    if "://" not in dataset:
        return "file://" + str(Path(dataset).resolve())
    return parse_url(dataset)


def check_offline(path: str, dataset: str, *, allow_failed: bool = False) -> dict[str, Any]:
    """Check the certificate at ``path`` against the Parquet dataset at ``dataset`` alone.

    Returns the report (``ok`` true when the dataset is exactly what the
    certificate proves and its verdict is verified, and, unless ``allow_failed``,
    without failures).

    Raises:
        UsageError: the certificate is unreadable, or the dataset URL is not one.
        StoreError: the dataset's store failed.
    """
    doc, spec = _load(path)
    pa = _pa()
    import pyarrow.parquet as pq  # noqa: PLC0415

    store = open_store(dataset_url(dataset))
    leaves = Leaves(spec.total_chunks)
    dead = set(doc["dead_chunks"])
    problems: list[str] = []
    objects = rows = 0
    for name, _ in sorted(store.list("")):
        base = name.rsplit("/", 1)[-1]
        if base.startswith((".", "_")) or not base.endswith(".parquet"):
            continue  # what Parquet readers skip too
        objects += 1
        data = store.get(name)
        try:
            # One object at a time, on this thread: pyarrow's CPU pool, once started, was
            # sometimes torn down while running at exit ("terminate called", exit -6).
            table = pq.read_table(
                pa.BufferReader(data), columns=["chunk", "index"], use_threads=False
            )
            chunks = set(table.column("chunk").to_pylist())
            indexes = table.column("index").to_pylist()
        except (pa.ArrowException, OSError, KeyError, ValueError) as e:
            problems.append(f"{base}: not a chunk object ({' '.join(str(e).split())[:200]})")
            continue
        rows += table.num_rows
        if len(chunks) != 1 or not 0 <= next(iter(chunks)) < spec.total_chunks:
            problems.append(f"{base}: holds chunks {sorted(chunks)[:5]}, not one of the run's")
            continue
        chunk = next(iter(chunks))
        lo, hi = spec.bounds(chunk)
        if chunk in dead:
            problems.append(f"{base}: chunk {chunk} is dead in the certificate")
        elif indexes != list(range(lo, hi)):
            problems.append(f"{base}: does not hold parameters {lo}..{hi - 1} of chunk {chunk}")
        elif not leaves.add(chunk, leaf(chunk, base, table.num_rows, sha256(data).hexdigest())):
            problems.append(f"{base}: chunk {chunk} has more than one object")
    missing = [c for c in range(spec.total_chunks) if c not in dead and not leaves.has(c)]
    root = leaves.root()
    root_match = root == doc["root_sha256"]
    if not root_match:
        problems.append("the objects differ from those the certificate names (root hash)")
    verdict = doc["verdict"]
    return {
        "run": spec.run,
        "dataset": store.url,
        "certificate": path,
        "objects": objects,
        "rows": rows,
        "missing": len(missing),
        "missing_sample": missing[:MISSING_SAMPLE],
        "root_sha256": root,
        "root_match": root_match,
        "certificate_verdict": verdict,
        "created_at": doc.get("created_at"),
        "problems": problems,
        "ok": bool(
            root_match
            and not problems
            and not missing
            and verdict.get("verified")
            and (allow_failed or verdict.get("ok"))
        ),
    }
