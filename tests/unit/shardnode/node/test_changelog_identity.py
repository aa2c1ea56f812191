"""Who made each change, in the node's change log: stored with puts and deletes (not rewraps), added to a database
made before, and served by GET /v1/changes (with and without frames) from writes through the real auth middleware."""

from __future__ import annotations

import sqlite3

import aiohttp
from aiohttp import web
from chronoshard.shardnode.auth.apiserver import ApiServer, ApiServerConnection
from chronoshard.shardnode.auth.config import parse_security_config
from chronoshard.shardnode.auth.identity import Identity
from chronoshard.shardnode.auth.writer import ON_BEHALF_HEADER
from chronoshard.shardnode.node import changelog
from chronoshard.shardnode.node.server import NodeConfig, create_app
from chronoshard.shardnode.serving.changestream import parse_change
from chronoshard.shardnode.serving.scaffold import secure_app

from tests.support.rbac import security_doc
from tests.support.servers import keyring_dir, serve
from tests.support.stores import open_store, ring

CFG = parse_security_config(security_doc("shop"))


async def test_puts_and_deletes_log_their_identity(store):
    s, _ = store
    await s.put("t", "a", b"1", identity="alice")
    await s.put("t", "b", b"2")
    await s.delete("t", "a", identity="bob")
    entries = await s.read(lambda c: changelog.read(c, 0, 10))
    assert [(e.op, e.key, e.identity) for e in entries] == [("put", "a", "alice"), ("put", "b", None),
                                                            ("delete", "a", "bob")]
    assert entries[0].to_json()["identity"] == "alice" and entries[1].to_json()["identity"] is None
    framed = await s.read(lambda c: list(changelog.iter_changes(c, 0, 10, frames=True)))
    assert [e.identity for e in framed] == ["alice", None, "bob"]
    # What the shadow's stream client makes of it (and of an older node's entry, which has no field).
    assert parse_change(entries[2].to_json()).identity == "bob"
    old = {k: v for k, v in entries[0].to_json().items() if k != "identity"}
    assert parse_change(old).identity is None
    assert parse_change({**old, "identity": ["not", "a", "name"]}).identity is None


def test_a_change_log_from_before_gains_the_column(tmp_path):
    conn = sqlite3.connect(tmp_path / "old.sqlite3", isolation_level=None)
    conn.executescript("""
        CREATE TABLE changes (lsn INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, tbl TEXT NOT NULL,
            key TEXT NOT NULL, op TEXT NOT NULL, key_version INTEGER, size INTEGER NOT NULL);
        INSERT INTO changes (time, tbl, key, op, key_version, size) VALUES (1.0, 't', 'k', 'put', 1, 3);
    """)
    changelog.migrate(conn)
    assert {"frame", "checksum", "identity"} <= {r[1] for r in conn.execute("PRAGMA table_info(changes)")}
    changelog.append(conn, "t", "k", "delete", None, 0, identity="carol")
    assert [(e.lsn, e.identity) for e in changelog.read(conn, 0, 10)] == [(1, None), (2, "carol")]


async def test_a_rewrap_logs_no_identity(tmp_path):
    from chronoshard.shardnode.node import rewrap

    s, holder = open_store(tmp_path, ring(1, (1,)))
    try:
        await s.put("t", "k", b"v", identity="alice")
        k = ring(2, (1, 2))
        holder.keyring = k
        await s.write(lambda c: rewrap.start_in_txn(c, k, 10))
        await s.write(lambda c: rewrap.batch_in_txn(c, k))
        entries = await s.read(lambda c: changelog.read(c, 0, 10))
        assert [(e.op, e.identity) for e in entries] == [("put", "alice"), ("rewrap", None)]
    finally:
        s.close()


class CertLike:
    """Authenticates X-Test-As: pod or operator, as their client certificates would (no API server asked)."""

    async def authenticate(self, request: web.Request) -> Identity | None:
        kind = request.headers.get("X-Test-As")
        if kind == "pod":
            return Identity(CFG.pod_identity, (), "pod", "client-certificate")
        if kind == "operator":
            return Identity("chronoshard:operator", (), "operator", "client-certificate")
        return None


async def test_changes_serve_the_writer_the_guard_decided(tmp_path):
    from kubernetes import client

    app = create_app(NodeConfig(data_dir=tmp_path / "d", keyring_dir=keyring_dir(tmp_path)))
    secure_app(app, CFG, ApiServer(ApiServerConnection("https://127.0.0.1:9", False, client.Configuration())),
               "node", authenticators=[CertLike()])
    pod, op = {"X-Test-As": "pod"}, {"X-Test-As": "operator"}
    async with serve(app) as url, aiohttp.ClientSession() as s:
        for headers, key in (({**pod, ON_BEHALF_HEADER: "system:serviceaccount:shop:app"}, "a"),
                             (pod, "b"), ({**pod, ON_BEHALF_HEADER: "x" * 257}, "c")):
            r = await s.put(f"{url}/v1/tables/t/blocks/{key}", data=b"v", headers=headers)
            assert r.status == 200, await r.text()
        r = await s.delete(f"{url}/v1/tables/t/blocks/a", headers={**pod, ON_BEHALF_HEADER: "chronoshard:reversion:p"})
        assert r.status == 200
        # (A user's header is ignored: test_writer.py; here a user would need a real API server's review.)
        want = [("a", "system:serviceaccount:shop:app"), ("b", CFG.pod_identity), ("c", CFG.pod_identity),
                ("a", "chronoshard:reversion:p")]
        for frames in ("false", "true"):
            body = await (await s.get(f"{url}/v1/changes", params={"after": "0", "frames": frames},
                                      headers=op)).json()
            assert [(e["key"], e["identity"]) for e in body["changes"]] == want, frames
