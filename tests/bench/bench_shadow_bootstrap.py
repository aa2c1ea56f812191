"""Disaster-recovery bootstrap of N keys from object storage vs writing the same N blocks fresh into a node store.

    python -m tests.bench.bench_shadow_bootstrap [--keys 100000] [--segment-rows 10000] [--size 256] [--dir /tmp]

Same run, same machine: a real SeaweedFS (hack/s3.sh; CHRONOSHARD_S3_BIN) on 127.0.0.1 holds a backup of
``--keys`` keys (one sealed history version each, exported in segments of ``--segment-rows``). The baseline writes
the same plaintexts with the node's store code (``bootstrap.write_store``: node.store.put_in_txn in transactions
of 500, synchronous=FULL), which is the floor of any restore into a node. The bootstrap is the whole command's
work: manifest, download and check of every segment, decode, open_version of each frame, the same store write,
the rename. Printed: seconds and keys/s of both, their ratio, bucket bytes. Bounded by --keys; no loop runs on
its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from chronoshard.shardnode.keys.keyring import Keyring, KeyVersion
from chronoshard.shardnode.shadow import backup, bootstrap
from chronoshard.shardnode.shadow.backup import ExportBatch
from chronoshard.shardnode.shadow.codec import Compressor
from chronoshard.shardnode.shadow.columnar import MetaRow
from chronoshard.shardnode.shadow.sealing import seal_version

from tests.support.s3 import S3Server, weed_binary

T0 = 1_764_000_000.0


def values(n: int, size: int) -> list[tuple[str, str, bytes]]:
    """``n`` JSON-ish values of about ``size`` bytes (compressible like application records)."""
    out = []
    for i in range(n):
        doc = {"id": i, "customer": f"c{i % 977}", "status": ("open", "paid", "shipped")[i % 3]}
        body = json.dumps(doc).encode()
        out.append(("orders", f"k{i:08d}", body + b" " * max(0, size - len(body) - 8) + os.urandom(4).hex().encode()))
    return out


def export(server: S3Server, prefix: str, ring: Keyring, items: list[tuple[str, str, bytes]],
           segment_rows: int) -> tuple[float, int]:
    """Seal and export every item as one history version; returns (seconds, bucket bytes)."""
    comp = Compressor()
    store = server.store(prefix)
    t0 = time.perf_counter()
    total = 0
    for start in range(0, len(items), segment_rows):
        rows, frames = [], []
        for lsn, (table, key, value) in enumerate(items[start:start + segment_rows], start=start + 1):
            sealed = seal_version(ring, table, key, lsn, value, comp)
            rows.append(MetaRow(lsn, T0 + lsn / 1000, table, key, "put", sealed.key_version, len(value),
                                sealed.stored_size))
            frames.append(sealed.frame)
        manifest = backup.export_batch(store, ExportBatch(rows, frames))
        total = sum(s.bytes for s in manifest.segments)
    store.close()
    return time.perf_counter() - t0, total


def main() -> None:
    """Run both and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--segment-rows", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-bootstrap-", dir=args.dir))
    ring = Keyring(1, [KeyVersion(1, "primary")], {1: os.urandom(32)})
    server = S3Server(binary=weed_binary(), root=root / "s3")
    creds = server.write_credentials(root / "objectstore")
    try:
        server.start()
        items = values(args.keys, args.size)
        export_s, bucket_bytes = export(server, "bench/prod/orders/0", ring, items, args.segment_rows)

        fresh = root / "fresh"
        fresh.mkdir()
        t0 = time.perf_counter()
        bootstrap.write_store(fresh, lambda: ring, iter(items), {"bench": True})
        fresh_s = time.perf_counter() - t0

        settings = bootstrap.BootstrapSettings(server.settings("bench/prod/orders", creds), "prod", "orders", 0,
                                               None, None)
        t0 = time.perf_counter()
        summary = bootstrap.bootstrap(settings, root / "restored", ring)
        boot_s = time.perf_counter() - t0
        assert summary["blocks"] == args.keys, summary
    finally:
        server.stop()
    n = args.keys
    print(f"keys: {n}, value ~{args.size} B, segments of {args.segment_rows} rows, bucket {bucket_bytes / 1e6:.1f} MB"
          f" ({bucket_bytes / n:.0f} B/key)")
    print(f"export (seal + upload):            {export_s:7.2f} s  {n / export_s:9.0f} keys/s")
    print(f"baseline: fresh node-store write:  {fresh_s:7.2f} s  {n / fresh_s:9.0f} keys/s")
    print(f"bootstrap from object storage:     {boot_s:7.2f} s  {n / boot_s:9.0f} keys/s")
    print(f"bootstrap / fresh write time ratio: {boot_s / fresh_s:.2f}x")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
