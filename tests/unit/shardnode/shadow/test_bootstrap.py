"""Disaster-recovery bootstrap: history exported to a real S3 server, restored into an empty node data dir, and
read back through a real node at the point in time."""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from chronoshard.shardnode.keys.keyring import load_keyring
from chronoshard.shardnode.node.server import NodeConfig
from chronoshard.shardnode.node.server import create_app as create_node
from chronoshard.shardnode.node.store import DB_NAME, get_meta
from chronoshard.shardnode.shadow import backup, bootstrap
from chronoshard.shardnode.shadow.bootstrap import BootstrapRefused, parse_bootstrap

from tests.support.backups import T0, batch_of, make_history, state_at, write_bootstrap_json
from tests.support.kubelet_dir import write_keyring
from tests.support.servers import serve

SOURCE_KEY, OTHER_KEY, NODE_KEY = os.urandom(32), os.urandom(32), os.urandom(32)


@pytest.fixture
def source(tmp_path, s3_server):
    """A source keyring dir, 600 versions (one a minute: ten hours) over 80 keys exported in three batches."""
    kdir = tmp_path / "source-keyring"
    write_keyring(kdir, 1, {1: ("primary", SOURCE_KEY)})
    ring = load_keyring(kdir)
    versions = make_history(ring, keys=80, versions=600, seed=4, step=60.0)
    cold = s3_server.settings(credentials_dir=s3_server.write_credentials(tmp_path / "objectstore"))
    store = s3_server.store(f"{cold.prefix}/0")
    for part in (versions[:200], versions[200:450], versions[450:]):
        backup.export_batch(store, batch_of(part))
    return kdir, versions, cold


def _run(tmp_path, cold, kdir, data_dir, *extra, point=None, **kw):
    settings = write_bootstrap_json(tmp_path / "bootstrap.json", cold, point=point, **kw)
    return bootstrap.main(["bootstrap", "--settings", str(settings), "--data-dir", str(data_dir),
                           "--keyring-dir", str(kdir), *extra])


async def _node_state(data_dir: Path, kdir: Path) -> dict[tuple[str, str], bytes]:
    """Every block a real node serves from ``data_dir``, via its HTTP scan."""
    out: dict[tuple[str, str], bytes] = {}
    app = create_node(NodeConfig(data_dir=data_dir, keyring_dir=kdir, keyring_poll_seconds=0.05))
    async with serve(app) as url, aiohttp.ClientSession() as s:
        for table in ("orders", "users"):
            after = None
            while True:
                params = {"limit": "1000", "values": "true", **({"after": after} if after else {})}
                async with s.get(f"{url}/v1/tables/{table}/blocks", params=params) as r:
                    assert r.status == 200, await r.text()
                    page = await r.json()
                out.update({(table, i["key"]): base64.b64decode(i["value"]) for i in page["items"]})
                after = page["next"]
                if after is None:
                    break
        # One block by its own route too, to read through the node's single-block path.
        if out:
            (t, k), value = next(iter(sorted(out.items())))
            async with s.get(f"{url}/v1/tables/{t}/blocks/{k}") as r:
                assert r.status == 200 and await r.read() == value
    return out


@pytest.mark.parametrize("at", [None, 3.5 * 3600, 6 * 3600, 0.5 * 3600])
async def test_bootstrap_then_a_real_node_serves_the_state_at_the_point(tmp_path, source, at):
    kdir, versions, cold = source
    point = None if at is None else T0 + at  # T0 is an hour boundary
    data = tmp_path / "data"
    data.mkdir()
    (data / "lost+found").mkdir()  # a fresh volume's, which does not count as data
    assert _run(tmp_path, cold, kdir, data, point=point) == 0
    assert sorted(p.name for p in data.iterdir()) == [DB_NAME, "lost+found"]
    # The hourly cold tier is read at the hour boundary at or before the point, exclusive (exact there).
    expected = state_at(versions, before=None if point is None else backup.cold_point(point))
    assert expected or at == 0.5 * 3600
    assert await _node_state(data, kdir) == expected


async def test_blocks_are_sealed_with_the_node_keyring_when_it_differs(tmp_path, source):
    kdir, versions, cold = source
    node_kdir = tmp_path / "node-keyring"
    write_keyring(node_kdir, 1, {3: ("primary", NODE_KEY)})
    data = tmp_path / "data"
    assert _run(tmp_path, cold, kdir, data, "--node-keyring-dir", str(node_kdir)) == 0
    conn = sqlite3.connect(data / DB_NAME)
    assert {v for (v,) in conn.execute("SELECT DISTINCT key_version FROM blocks")} == {3}
    conn.close()
    assert await _node_state(data, node_kdir) == state_at(versions)


def test_a_second_run_leaves_a_bootstrapped_dir_as_it_is(tmp_path, source):
    kdir, _, cold = source
    data = tmp_path / "data"
    assert _run(tmp_path, cold, kdir, data) == 0
    digest = hashlib.sha256((data / DB_NAME).read_bytes()).hexdigest()
    # The init container runs again on every pod start, also after the node wrote its own files.
    (data / "LOCK").write_text("")
    assert _run(tmp_path, cold, kdir, data, point=T0 + 10) == 0
    assert hashlib.sha256((data / DB_NAME).read_bytes()).hexdigest() == digest
    conn = sqlite3.connect(data / DB_NAME)
    marker = get_meta(conn, "bootstrap")
    conn.close()
    assert marker["manifest"] == 3 and marker["shard"] == 0 and marker["pointInTime"] is None
    assert "secret" not in str(marker).lower()


def test_refuses_a_data_dir_holding_other_data(tmp_path, source):
    kdir, _, cold = source
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.txt").write_text("keep me")
    assert _run(tmp_path, cold, kdir, data) == 2
    assert sorted(p.name for p in data.iterdir()) == ["mine.txt"]
    # A node store that was not bootstrapped is somebody's data too.
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / DB_NAME).execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)").connection.close()
    assert _run(tmp_path, cold, kdir, other) == 2


async def test_a_failure_midway_leaves_no_store_and_the_next_run_completes(tmp_path, s3_server):
    kdir = tmp_path / "keyring"
    write_keyring(kdir, 2, {1: ("decrypt-only", SOURCE_KEY), 2: ("primary", OTHER_KEY)})
    full = load_keyring(kdir)
    old_only = tmp_path / "old-keyring"
    write_keyring(old_only, 1, {1: ("primary", SOURCE_KEY)})
    # History sealed under version 1, then (after a rotation) under version 2.
    first = make_history(load_keyring(old_only), keys=60, versions=1200, seed=8)
    second = make_history(full, keys=60, versions=100, seed=9, start_lsn=1201)
    cold = s3_server.settings(credentials_dir=s3_server.write_credentials(tmp_path / "objectstore"))
    store = s3_server.store(f"{cold.prefix}/0")
    backup.export_batch(store, batch_of(first))
    backup.export_batch(store, batch_of(second))
    data = tmp_path / "data"
    # Without key version 2 the second segment does not open: the run fails after writing blocks of the first.
    assert _run(tmp_path, cold, old_only, data) == 1
    assert not (data / DB_NAME).exists()
    assert (data / bootstrap.TMP_DIR / DB_NAME).exists()
    assert _run(tmp_path, cold, kdir, data) == 0
    assert sorted(p.name for p in data.iterdir()) == [DB_NAME]
    assert await _node_state(data, kdir) == state_at(first + second)


def test_refusals_and_failures_have_clear_exit_codes(tmp_path, source, s3_server, caplog):
    kdir, _, cold = source
    data = tmp_path / "data"
    # No backup for shard 7.
    assert _run(tmp_path, cold, kdir, data, shard=7) == 2
    assert "no backup" in caplog.text
    # Wrong credentials: a failure whose message holds no secret.
    bad = tmp_path / "bad-creds"
    bad.mkdir()
    (bad / "accessKeyId").write_text(s3_server.credentials.access_key_id)
    (bad / "secretAccessKey").write_text("not-the-secret-" + os.urandom(4).hex())
    from dataclasses import replace

    assert _run(tmp_path, replace(cold, credentials_dir=str(bad)), kdir, data) == 1
    assert s3_server.credentials.secret_access_key not in caplog.text
    assert "not-the-secret" not in caplog.text
    (tmp_path / "bad.json").write_text('{"cold": {}, "nope": 1}')
    assert bootstrap.main(["--settings", str(tmp_path / "bad.json"), "--data-dir", str(data)]) == 2
    assert not (data / DB_NAME).exists()


def test_parse_bootstrap_accepts_both_shapes_and_refuses_bad_input():
    cold = {"endpoint": "http://127.0.0.1:1", "bucket": "b", "prefix": "base/prod/orders"}
    s = parse_bootstrap({"cold": cold, "source": {"namespace": "prod", "name": "orders"}, "pointInTime": None,
                         "tables": ["orders"]}, pod_name="restored-4")
    assert s.shard == 4 and s.object_prefix() == "base/prod/orders/4" and s.tables == ("orders",)
    s = parse_bootstrap({"coldStorage": cold, "source": {"namespace": "prod", "name": "orders"},
                         "shards": {"index": 2}, "pointInTime": "2026-12-01T10:00:00+01:00"})
    assert s.shard == 2 and s.point_in_time == datetime(2026, 12, 1, 9, 0, tzinfo=UTC).timestamp()
    for doc, pod in [
        ({"cold": cold, "source": {"namespace": "p", "name": "o"}}, None),  # no shard anywhere
        ({"cold": cold, "source": {"namespace": "p"}, "shards": {"index": 0}}, None),
        ({"cold": {**cold, "endpoint": "ftp://x"}, "source": {"namespace": "p", "name": "o"}}, "a-0"),
        ({"cold": cold, "source": {"namespace": "p", "name": "o"}, "pointInTime": "yesterday"}, "a-0"),
        ({"cold": cold, "source": {"namespace": "p", "name": "o"}, "pointInTime": "2026-12-01T10:00:00"}, "a-0"),
        ({"source": {"namespace": "p", "name": "o"}}, "a-0"),
        ([], "a-0"),
    ]:
        with pytest.raises(BootstrapRefused):
            parse_bootstrap(doc, pod)


async def test_history_store_cold_tier_to_s3_to_a_node(tmp_path, s3_server):
    """The whole path: changes applied to a real HistoryStore, compacted into its cold tier (hourly), each cold
    segment exported as the shadow's housekeeping does, bootstrapped at hour boundaries, read through a node."""
    from dataclasses import dataclass

    from tests.support.shadow_history import delete, open_history, put

    kdir = tmp_path / "keyring"
    write_keyring(kdir, 1, {1: ("primary", SOURCE_KEY)})
    ring = load_keyring(kdir)
    h, _ = open_history(tmp_path / "shadow", ring)
    hour = 1_000_000 * 3600.0
    rnd = __import__("random").Random(21)
    changes, live = [], {}
    for lsn in range(1, 401):  # four hours of changes over 25 keys of two tables
        t, table, key = hour + lsn * 36.0, rnd.choice(["orders", "users"]), f"k{rnd.randrange(25):02d}"
        if (table, key) in live and rnd.random() < 0.2:
            changes.append(delete(lsn, t, table, key))
            live.pop((table, key))
        else:
            value = f"{key}@{lsn}".encode() * rnd.randrange(1, 30)
            changes.append(put(ring, lsn, t, table, key, value))
            live[(table, key)] = value
    h.apply(changes)

    @dataclass(frozen=True)
    class Retention:
        hot_seconds: float = 600.0
        warm_seconds: float = 1200.0
        cold_seconds: float = 100 * 3600.0

    h.compact(hour + 6 * 3600, Retention(), 60.0)
    segments = h.cold_segments(limit=100)
    assert segments and all(s.rows for s in segments)
    cold = s3_server.settings(credentials_dir=s3_server.write_credentials(tmp_path / "objectstore"))
    store = s3_server.store(f"{cold.prefix}/0")
    for seg in segments:
        backup.export_batch(store, backup.ExportBatch(seg.rows, seg.frames))
    for n, point in enumerate((hour + 3600, hour + 3 * 3600, None)):
        data = tmp_path / f"data{n}"
        assert _run(tmp_path, cold, kdir, data, point=point) == 0
        # The reference is the history store's own answer at that point (cold: the last version of each hour).
        expected = {}
        for table in ("orders", "users"):
            for v in h.state_at(table, time=point, limit=1000):
                expected[(table, v.key)] = v.value
        assert expected
        assert await _node_state(data, kdir) == expected
