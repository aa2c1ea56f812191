"""The chronoshard CLI: pure formatting, and every block command against real shard nodes served in-process."""

from __future__ import annotations

import asyncio
import io
import json

from chronoshard.shardnode.client.cli import (
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    format_table,
    main,
    map_rows,
    render_status,
    status_summary,
)
from chronoshard.shardnode.keyspace.partitioning import initial_map

from tests.support.shard_cluster import ShardCluster

M3 = initial_map(3)


def test_format_table_pads_columns():
    text = format_table(["key", "size"], [["a", 1], ["longer-key", None]])
    assert text.splitlines() == ["KEY          SIZE", "a            1", "longer-key"]


def test_map_rows_cover_everything():
    rows = map_rows(M3)
    assert rows[0][:4] == [0, "0000000000000000", "5555555555555554", 0]
    assert rows[-1][2] == "ffffffffffffffff"
    assert all(r[4] == "33.33%" for r in rows)


SHARDSET = {
    "metadata": {"name": "orders", "namespace": "team"},
    "spec": {"shards": 3},
    "status": {
        "phase": "Ready", "shards": {"desired": 3, "ready": 2}, "keyVersion": 2,
        "keyVersions": [{"id": 1, "state": "decrypt-only"}, {"id": 2, "state": "primary"}],
        "partitionMap": {"epoch": 4, "partitions": [{"id": 0}, {"id": 1}, {"id": 2}]},
        "conditions": [{"type": "Ready", "status": "False", "reason": "ShardsNotReady", "message": "2/3"}],
    },
}
ROTATION = {
    "metadata": {"name": "weekly"}, "spec": {"shardSetRef": {"name": "orders"}},
    "status": {"phase": "Rewrapping", "fromVersion": 1, "toVersion": 2,
               "shards": [{"shard": 0, "rewrapped": 10, "remaining": 5, "oldVersionBlocks": 5}]},
}


def test_status_summary_and_render():
    s = status_summary(SHARDSET, [ROTATION])
    assert s["shards"] == {"desired": 3, "ready": 2}
    assert s["keyVersion"] == 2 and s["partitionEpoch"] == 4 and s["partitions"] == 3
    assert s["rotationInProgress"] is True
    text = render_status(s)
    assert "2/3 ready" in text and "v1 (decrypt-only), v2 (primary)" in text
    assert "in progress" in text and "Rewrapping" in text and "ShardsNotReady" in text
    done = dict(ROTATION, status={"phase": "Completed"})
    assert status_summary(SHARDSET, [done])["rotationInProgress"] is False
    bare = status_summary({"metadata": {"name": "x"}, "spec": {"shards": 2}}, [])
    assert bare["phase"] == "Unknown" and bare["shards"] == {"desired": 2, "ready": 0}
    assert "none in progress" in render_status(bare)


def run_cli(*argv: str, stdin: bytes = b"") -> tuple[int, str, bytes]:
    out, bout = io.StringIO(), io.BytesIO()
    code = main(list(argv), out=out, stdin=io.BytesIO(stdin), bout=bout)
    return code, out.getvalue(), bout.getvalue()


async def test_block_commands_direct_and_via_url(tmp_path, capsys):
    async with ShardCluster([M3] * 3) as cl:
        eps = ",".join(cl.urls)

        def work() -> None:
            assert run_cli("--endpoints", eps, "put", "t", "alpha", "--value", "one")[0] == 0
            assert run_cli("--endpoints", eps, "put", "t", "beta", stdin=b"\x00two")[0] == 0
            f = tmp_path / "v.bin"
            f.write_bytes(b"three")
            assert run_cli("--url", cl.urls[2], "put", "t", "gamma", "--file", str(f))[0] == 0
            assert run_cli("--endpoints", eps, "get", "t", "beta")[2] == b"\x00two"
            code, out, _ = run_cli("--url", cl.urls[0], "-o", "json", "get", "t", "gamma")
            assert code == 0 and json.loads(out)["value"] == "dGhyZWU="
            code, out, _ = run_cli("--endpoints", eps, "ls", "t")
            lines = out.splitlines()
            assert lines[0].split() == ["KEY", "SIZE", "SHARD", "KEY-VERSION"]
            assert [ln.split()[0] for ln in lines[1:]] == ["alpha", "beta", "gamma"]
            owners = [M3.shard_of("t", k) for k in ("alpha", "beta", "gamma")]
            assert [int(ln.split()[2]) for ln in lines[1:]] == owners
            code, out, _ = run_cli("--endpoints", eps, "-o", "json", "ls", "t", "--prefix", "g")
            assert [b["key"] for b in json.loads(out)] == ["gamma"]
            assert run_cli("--endpoints", eps, "delete", "t", "alpha")[0] == 0
            assert run_cli("--endpoints", eps, "get", "t", "alpha")[0] == EXIT_NOT_FOUND
            assert run_cli("--endpoints", eps, "delete", "t", "alpha")[0] == EXIT_NOT_FOUND
            assert run_cli("--endpoints", eps, "delete", "t", "alpha", "--missing-ok")[0] == 0
            code, out, _ = run_cli("--endpoints", eps, "map")
            assert code == 0 and out.startswith("epoch 1, 3 shards, 3 partitions")
            code, out, _ = run_cli("--url", cl.urls[1], "-o", "json", "map")
            assert json.loads(out) == M3.to_dict()
            assert run_cli("--endpoints", "http://127.0.0.1:1", "--timeout", "2", "get", "t", "x")[0] \
                == EXIT_UNAVAILABLE
            assert run_cli("get", "t", "x")[0] == EXIT_USAGE
            assert run_cli("--url", cl.urls[0], "ls", "t")[0] == 1

        await asyncio.to_thread(work)
    err = capsys.readouterr().err
    assert "not found" in err and "unavailable" in err and "--shardset NAME" in err
    assert "a scan must reach every shard" in err


def test_map_from_file(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(M3.to_json())
    code, out, _ = run_cli("--map-file", str(path), "map")
    assert code == 0
    assert out.splitlines()[1].split() == ["PARTITION", "START", "END", "SHARD", "SHARE"]
    assert len(out.splitlines()) == 5
    assert run_cli("--map-file", str(tmp_path / "missing.json"), "map")[0] == EXIT_UNAVAILABLE
