"""The installed ``chronoshard`` command against real node + cache processes on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess

from chronoshard.shardnode.keyspace.partitioning import initial_map

from .shards import BIN


def cli(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(BIN / "chronoshard"), *args], input=input, capture_output=True, timeout=60)


def test_cli_round_trip(nodes, caches):
    eps = ",".join(caches.urls)
    for i in range(20):
        r = cli("--endpoints", eps, "put", "docs", f"doc-{i:02d}", "--value", f"text {i}")
        assert r.returncode == 0, r.stderr
    r = cli("--endpoints", eps, "put", "docs", "bin", input=bytes(range(256)))
    assert r.returncode == 0, r.stderr
    assert cli("--url", caches.urls[1], "get", "docs", "bin").stdout == bytes(range(256))
    assert cli("--endpoints", eps, "get", "docs", "doc-07").stdout == b"text 7"

    listing = json.loads(cli("--endpoints", eps, "-o", "json", "ls", "docs", "--prefix", "doc-").stdout)
    assert [b["key"] for b in listing] == [f"doc-{i:02d}" for i in range(20)]
    m = initial_map(3)
    assert all(b["shard"] == m.shard_of("docs", b["key"]) for b in listing)
    table = cli("--endpoints", eps, "ls", "docs").stdout.decode().splitlines()
    assert table[0].split()[:3] == ["KEY", "SIZE", "SHARD"] and len(table) == 22
    r = cli("--url", caches.urls[0], "ls", "docs")  # one Service URL cannot scan every shard
    assert r.returncode == 1 and b"--endpoints" not in r.stderr and b"every shard" in r.stderr

    r = cli("--url", caches.urls[2], "delete", "docs", "doc-03")
    assert r.returncode == 0 and b"deleted" in r.stdout
    r = cli("--endpoints", eps, "get", "docs", "doc-03")
    assert r.returncode == 3 and b"not found" in r.stderr

    assert json.loads(cli("--url", nodes.urls[0], "-o", "json", "map").stdout) == m.to_dict()
    text = cli("--endpoints", eps, "map").stdout.decode()
    assert text.startswith("epoch 1, 3 shards, 3 partitions") and "5555555555555554" in text
