"""Bytes per row and encode/decode speed of history metadata: SQLite rows, DuckDB, Parquet+zstd, our segments.

    .venv/bin/python -P tests/bench/bench_shadow_metadata.py [--rows 1000000] [--out DIR] [--seed 1]

The rows are synthetic but shaped like a busy shard's change log: consecutive LSNs, times from a Poisson write
process (µs), zipf-distributed keys over ~100k keys in four tables, op mix 80/15/5 put/delete/rewrap, lognormal
sizes, a key rotation two thirds of the way through. Every format stores the same eight fields
(lsn, time, table, key, op, key_version, size, stored_size) and decodes back to Python row tuples; sizes are the
bytes on disk (SQLite after VACUUM, DuckDB after CHECKPOINT) or of the encoded blobs. SQLite (a rowid table keyed
by LSN, no secondary index) is the same-run baseline. duckdb and pyarrow (the `bench` extra) are optional: without
them their rows are skipped with a note.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import itertools
import math
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chronoshard.shardnode.shadow.columnar import MetaRow, decode_segment, encode_segment

TABLES = (("users", 0.35, "user/{:08d}"), ("orders", 0.30, "order/2026/{:07d}"),
          ("events", 0.25, "evt-{:016x}"), ("sessions", 0.10, "sess:{:012x}:web"))
KEYS = 100_000
ZIPF_S = 1.1
WRITES_PER_SECOND = 200.0
COLUMNS = "lsn, time, tbl, key, op, key_version, size, stored_size"


def generate(n: int, seed: int) -> list[MetaRow]:
    """Synthetic change-log metadata (see the module docstring)."""
    rnd = random.Random(seed)
    weights = list(itertools.accumulate(1 / (r + 1) ** ZIPF_S for r in range(KEYS)))
    # Rank -> key id scrambled, so popular keys are not also neighbours in key order.
    ids = list(range(KEYS))
    rnd.shuffle(ids)
    table_cum = list(itertools.accumulate(w for _, w, _ in TABLES))
    ranks = rnd.choices(range(KEYS), cum_weights=weights, k=n)
    ops = rnd.choices(("put", "delete", "rewrap"), weights=(80, 15, 5), k=n)
    last: dict[int, tuple[int, int]] = {}
    rows: list[MetaRow] = []
    us = 1_764_633_600_000_000  # 2025-12-02 00:00 UTC
    rotation = n * 2 // 3
    for i in range(n):
        us += max(1, round(rnd.expovariate(WRITES_PER_SECOND) * 1e6))
        kid = ids[ranks[i]]
        name, _, fmt = TABLES[bisect.bisect(table_cum, (kid % 1000) / 1000 * table_cum[-1])]
        primary = 3 if i < rotation else 4
        op = ops[i]
        if op == "delete" or (op == "rewrap" and kid not in last):
            op = "delete" if op == "delete" else "put"
        if op == "delete":
            kv, size, stored = None, 0, 0
            last.pop(kid, None)
        elif op == "rewrap":
            kv, (size, stored) = primary, last[kid]
        else:
            kv = primary
            size = min(4 << 20, int(rnd.lognormvariate(math.log(2000), 1.0)))
            stored = int(size * rnd.uniform(0.3, 0.6)) + 52  # compressed value + frame + checksum
            last[kid] = (size, stored)
        rows.append(MetaRow(10_000_000 + i, us / 1e6, name, fmt.format(kid), op, kv, size, stored))
    return rows


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_sqlite(rows: Sequence[MetaRow], path: Path, schema: str, index: str | None) -> tuple[int, float, float]:
    """(bytes, encode s, decode s) of rows in a SQLite table (one transaction, then VACUUM)."""
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute(schema)
        if index:
            conn.execute(index)

        def load() -> None:
            with conn:
                conn.executemany(f"INSERT INTO meta ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", rows)
            conn.execute("VACUUM")

        enc, _ = _timed(load)
        dec, out = _timed(lambda: conn.execute(f"SELECT {COLUMNS} FROM meta ORDER BY lsn").fetchall())
        assert len(out) == len(rows)
    finally:
        conn.close()
    return path.stat().st_size, enc, dec


def bench_duckdb(rows: Sequence[MetaRow], path: Path) -> tuple[int, float, float] | str:
    """DuckDB file (loaded through Arrow when pyarrow is there, else from a CSV file)."""
    try:
        import duckdb
    except ImportError:
        return "duckdb not installed (pip install duckdb, the bench extra)"
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.execute("CREATE TABLE meta (lsn BIGINT, time DOUBLE, tbl VARCHAR, key VARCHAR, op VARCHAR, "
                    "key_version INTEGER, size BIGINT, stored_size BIGINT)")
        arrow = _arrow_table(rows)

        def load() -> None:
            if arrow is not None:
                con.register("src", arrow)
                con.execute("INSERT INTO meta SELECT * FROM src")
            else:
                csv_path = path.with_suffix(".csv")
                with csv_path.open("w", newline="") as f:
                    csv.writer(f).writerows(rows)
                con.execute(f"INSERT INTO meta SELECT * FROM read_csv('{csv_path}', header=false)")
                csv_path.unlink()
            con.execute("CHECKPOINT")

        enc, _ = _timed(load)
        dec, out = _timed(lambda: con.execute(f"SELECT {COLUMNS} FROM meta ORDER BY lsn").fetchall())
        assert len(out) == len(rows)
    finally:
        con.close()
    return path.stat().st_size, enc, dec


def _arrow_table(rows: Sequence[MetaRow]) -> Any:
    try:
        import pyarrow as pa
    except ImportError:
        return None
    cols = list(zip(*rows, strict=True))
    names = ["lsn", "time", "tbl", "key", "op", "key_version", "size", "stored_size"]
    types = [pa.int64(), pa.float64(), pa.string(), pa.string(), pa.string(), pa.int32(), pa.int64(), pa.int64()]
    return pa.table([pa.array(c, type=t) for c, t in zip(cols, types, strict=True)], names=names)


def bench_parquet(rows: Sequence[MetaRow], path: Path) -> tuple[int, float, float] | str:
    """One Parquet file, zstd, pyarrow's defaults otherwise (dictionary encoding on)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return "pyarrow not installed (pip install pyarrow, the bench extra)"
    enc, _ = _timed(lambda: pq.write_table(_arrow_table(rows), path, compression="zstd"))

    def read() -> list[tuple[Any, ...]]:
        table = pq.read_table(path)
        return list(zip(*(c.to_pylist() for c in table.columns), strict=True))

    dec, out = _timed(read)
    assert len(out) == len(rows)
    return path.stat().st_size, enc, dec


def bench_segments(rows: Sequence[MetaRow], per_segment: int, level: int) -> tuple[int, float, float]:
    """Our columnar segments of ``per_segment`` rows; checks the decode is exact (to the µs)."""
    chunks = [rows[i:i + per_segment] for i in range(0, len(rows), per_segment)]
    enc, blobs = _timed(lambda: [encode_segment(c, level=level) for c in chunks])
    dec, out = _timed(lambda: [r for b in blobs for r in decode_segment(b)])
    assert out == list(rows), "segment round trip differs"
    return sum(len(b) for b in blobs), enc, dec


def main(argv: Sequence[str] | None = None) -> None:
    """Run every format on the same rows and print one table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, help="directory for the database files (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    t_gen, rows = _timed(lambda: generate(args.rows, args.seed))
    distinct = len({(r.table, r.key) for r in rows})
    print(f"{len(rows)} rows, {distinct} distinct keys, generated in {t_gen:.1f} s; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        runs: list[tuple[str, tuple[int, float, float] | str]] = [
            ("sqlite rowid (lsn pk)", bench_sqlite(rows, out / "rowid.sqlite3", _ROWID, None)),
            ("sqlite rowid + (tbl,key,lsn) index", bench_sqlite(rows, out / "rowid_idx.sqlite3", _ROWID, _INDEX)),
            ("sqlite WITHOUT ROWID pk(tbl,key,lsn)", bench_sqlite(rows, out / "worowid.sqlite3", _WITHOUT, None)),
            ("duckdb", bench_duckdb(rows, out / "meta.duckdb")),
            ("parquet zstd (pyarrow)", bench_parquet(rows, out / "meta.parquet")),
            ("segments 4096 rows, zstd 9", bench_segments(rows, 4096, 9)),
            ("segments 65536 rows, zstd 9", bench_segments(rows, 65536, 9)),
            ("segments 65536 rows, zstd 3", bench_segments(rows, 65536, 3)),
        ]
    report(runs, len(rows))


_ROWID = ("CREATE TABLE meta (lsn INTEGER PRIMARY KEY, time REAL, tbl TEXT, key TEXT, op TEXT, key_version INTEGER, "
          "size INTEGER, stored_size INTEGER)")
_INDEX = "CREATE INDEX meta_key ON meta (tbl, key, lsn)"
_WITHOUT = ("CREATE TABLE meta (lsn INTEGER, time REAL, tbl TEXT, key TEXT, op TEXT, key_version INTEGER, "
            "size INTEGER, stored_size INTEGER, PRIMARY KEY (tbl, key, lsn)) WITHOUT ROWID")


def report(runs: Sequence[tuple[str, tuple[int, float, float] | str]], n: int) -> None:
    """The table: bytes/row, size against SQLite, encode and decode rows per second (wall clock)."""
    base = runs[0][1]
    assert not isinstance(base, str)
    print(f"{'format':38} {'bytes/row':>9} {'vs sqlite':>9} {'encode rows/s':>14} {'decode rows/s':>14}")
    for name, res in runs:
        if isinstance(res, str):
            print(f"{name:38} skipped: {res}")
            continue
        size, enc, dec = res
        print(f"{name:38} {size / n:9.2f} {size / base[0]:9.3f} {n / enc:14,.0f} {n / dec:14,.0f}")
    print("decode = back to Python row tuples; segment sizes are the blobs alone (no container overhead).")


if __name__ == "__main__":
    main()
