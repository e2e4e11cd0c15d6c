"""Check a TTG run's certificate against its Parquet dataset, with pyarrow and hashlib alone.

Usage: python check_certificate.py certificate.json /data/ttg/runs/RUN/
"""

import hashlib, json, pathlib, sys  # noqa: E401, I001
import pyarrow.parquet as pq


def need(ok: bool, why: str) -> None:
    ok or sys.exit(f"NOT VERIFIED: {why}")


cert, folder, leaves = json.load(open(sys.argv[1])), pathlib.Path(sys.argv[2]), {}  # noqa: SIM115
for f in sorted(folder.glob("[!._]*.parquet")):
    data, t = f.read_bytes(), pq.read_table(f, columns=["chunk", "index"])
    c = t["chunk"][0].as_py()
    lo, hi = c * cert["chunk_size"], min((c + 1) * cert["chunk_size"], cert["params"])
    need(c not in leaves, f"chunk {c} has two objects")
    need(t["index"].to_pylist() == list(range(lo, hi)), f"{f.name}: not chunk {c}'s parameters")
    line = f"{c} {f.name} {t.num_rows} {hashlib.sha256(data).hexdigest()}\n"
    leaves[c] = hashlib.sha256(line.encode()).digest()
expected = [c for c in range(cert["chunks"]) if c not in cert["dead_chunks"]]
need(sorted(leaves) == expected, "chunks missing")
root = hashlib.sha256(b"".join(leaves[c] for c in sorted(leaves))).hexdigest()
need(root == cert["root_sha256"], "the objects differ from those the certificate names")
print("the dataset matches the certificate; verified:", cert["verdict"]["verified"])  # noqa: T201
