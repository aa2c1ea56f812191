"""Tiered tokens enforced by real `chronoshard-node` and `chronoshard-cache` processes with TLS and authentication
(docs/tokens.md, "Enforcement in nodes and caches"): tokens signed with a test Ed25519 key whose public half is in
``tokens.json`` beside ``security.json``; valid, provisional and temporary behaviours, wrong store, scope, expired,
revoked and tampered tokens with their 401 reasons, a revocation push effective at once, and queued writes applied
exactly once and in order across a SIGKILL of the node between the apply and its record (the idempotency table and
the change log prove it), the queue surviving the restart.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chronoshard.operator import certs
from chronoshard.shardnode.auth import tokenformat as tf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kubernetes import client

from tests.integration.client.secure_shard import SecureShard
from tests.support import rbac, tls_files
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

NS, NAME = "shop", "orders"
MS = "shop/orders-ms"
APP = "system:serviceaccount:shop:app"


@pytest.fixture(scope="module")
def kubeconfig(control_plane, k8s_client, tmp_path_factory) -> Iterator[Path]:
    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    deleg = rbac.delegator(control_plane, core, rb, ns, tmp_path_factory.mktemp("tiered"))
    yield deleg.kubeconfig
    rb.delete_cluster_role_binding(deleg.binding)
    core.delete_namespace(ns)


class TieredShard(SecureShard):
    """A secure one-shard node (+ cache) of shop/orders with tokens.json of MirrorSet shop/orders-ms; ``node_json``
    is given to the node only."""

    def __init__(self, root: Path, kubeconfig: Path, node_json: dict[str, Any] | None = None) -> None:
        super().__init__(root, NS, NAME, kubeconfig)
        self.signing = Ed25519PrivateKey.generate()
        self.kid = tf.key_id(self.signing.public_key())
        (root / "tokens.json").write_text(json.dumps({
            "issuer": tf.issuer_for(MS), "mirrorSet": MS, "store": "shop/orders",
            "members": ["shop/orders", "dr/orders"],
            "keys": [{"kid": self.kid, "publicKey": tf.public_key_b64(self.signing.public_key())}]}))
        self.node_json = root / "node.json"
        self.node_json.write_text(json.dumps(node_json or {}))
        pod = certs.issue_shard_certificate(self.ca_pair, NS, NAME, 1, [], tls_files.now())
        self.pod_ctx = self._context(pod)
        self.operator_ctx = self.operator_ssl_context()
        self.plain_ctx = self.ssl_context()

    def _context(self, pair: certs.KeyPair) -> ssl.SSLContext:
        name = uuid.uuid4().hex[:8]
        (self.root / f"{name}.crt").write_bytes(pair.cert)
        (self.root / f"{name}.key").write_bytes(pair.key)
        ctx = self.ssl_context()
        ctx.load_cert_chain(self.root / f"{name}.crt", self.root / f"{name}.key")
        return ctx

    def _spawn(self, argv: list[str], log: str) -> Any:
        if argv[0].endswith("chronoshard-node"):
            argv = [*argv, "--config", str(self.node_json)]
        return super()._spawn(argv, log)

    def token(self, tier: str = "valid", *, store: str = "shop/orders", verbs: tuple[str, ...] = ("get", "list",
              "update", "delete"), tables: tuple[str, ...] | None = ("t",), ttl: int = 600, **over: Any) -> str:
        now = int(time.time())
        fields: dict[str, Any] = dict(
            iss=tf.issuer_for(MS), sub=APP, jti=uuid.uuid4().hex, iat=now, exp=now + ttl, tier=tier, store=store,
            scope=tf.Scope(verbs=verbs, tables=tables), ms=MS, lsn={"0": 1} if tier == "provisional" else None)
        fields.update(over)
        return tf.encode(tf.Claims(**fields), self.signing, self.kid)


def call(url: str, ctx: ssl.SSLContext, method: str = "GET", body: bytes | None = None, token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=15, context=ctx) as r:
            raw, status, ctype = r.read(), r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raw, status, ctype = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, json.loads(raw) if ctype.startswith("application/json") else raw


@pytest.fixture
def shard(kubeconfig, tmp_path) -> Iterator[TieredShard]:
    s = TieredShard(tmp_path / "shard", kubeconfig).start()
    yield s
    s.stop()


def block(url: str) -> str:
    return f"{url}/v1/tables/t/blocks/k"


def test_valid_provisional_and_temporary_tokens(shard):
    ctx = shard.plain_ctx
    valid = shard.token()
    for url in (shard.cache_url, shard.node_url):
        assert call(block(url), ctx, "PUT", b"v1", valid)[0] == 200
        assert call(block(url), ctx, token=valid) == (200, b"v1")
    # valid and provisional tokens work only against the store they name
    for tier in ("valid", "provisional"):
        status, body = call(block(shard.cache_url), ctx, token=shard.token(tier, store="dr/orders"))
        assert (status, body["reason"]) == (403, "wrong_store"), body
    assert call(block(shard.cache_url), ctx, "PUT", b"v2", shard.token("provisional"))[0] == 200
    # a temporary token reads on any member of the MirrorSet, and is refused outside it
    temporary = shard.token("temporary", store="dr/orders")
    assert call(block(shard.cache_url), ctx, token=temporary) == (200, b"v2")
    status, body = call(block(shard.cache_url), ctx, token=shard.token("temporary", store="elsewhere/x"))
    assert (status, body["reason"]) == (403, "wrong_store")
    # scope: verbs, tables; the partition map; and no admin, replication or metrics route with a tiered token
    status, body = call(block(shard.cache_url), ctx, "DELETE", token=shard.token(verbs=("get",)))
    assert (status, body["reason"]) == (403, "scope")
    status, body = call(f"{shard.cache_url}/v1/tables/other/blocks/k", ctx, token=valid)
    assert (status, body["reason"]) == (403, "scope")
    assert call(f"{shard.cache_url}/v1/partitions", ctx, token=valid)[0] == 200  # the map, to route
    for url, path in ((shard.node_url, "/v1/keys"), (shard.node_url, "/v1/changes"), (shard.cache_url, "/metrics"),
                      (shard.node_url, "/v1/queue"), (shard.node_url, "/v1/tokens/revocations")):
        status, body = call(url + path, ctx, token=valid)
        assert (status, body["reason"]) == (403, "tiered_token_not_allowed"), path


def test_a_temporary_write_is_queued_then_applied_and_reported(shard):
    ctx = shard.plain_ctx
    temporary = shard.token("temporary", store="dr/orders")
    status, body = call(block(shard.cache_url), ctx, "PUT", b"queued", temporary, {"Idempotency-Key": "w-1"})
    assert status == 202 and body["position"] >= 1, body
    wid = body["queued"]

    def applied() -> dict[str, Any] | None:
        s, entry = call(f"{shard.cache_url}/v1/queue/{wid}", ctx, token=temporary)
        assert s == 200, entry
        return entry if entry["state"] == "applied" else None

    entry = wait_for(applied, what="the queued write to be applied")
    assert entry["error"] is None and entry["lsn"] >= 1
    assert call(block(shard.cache_url), ctx, token=shard.token()) == (200, b"queued")
    # only the token's subject (or the pod) sees the entry
    other = shard.token("temporary", store="dr/orders", sub="system:serviceaccount:shop:other")
    assert call(f"{shard.cache_url}/v1/queue/{wid}", ctx, token=other)[0] == 404
    assert call(f"{shard.node_url}/v1/queue/{wid}", ctx, token=other)[0] == 404
    assert call(f"{shard.node_url}/v1/queue/{wid}", shard.pod_ctx)[1]["state"] == "applied"
    # the same subject sending the same Idempotency-Key again (now with a valid token) is the same write: answered
    # from the record the queue's apply left, nothing written
    status, again = call(block(shard.node_url), ctx, "PUT", b"again", shard.token(), {"Idempotency-Key": "w-1"})
    assert (status, again["replayed"], again["lsn"]) == (200, True, entry["lsn"])
    assert call(block(shard.node_url), ctx, token=shard.token()) == (200, b"queued")
    status, first = call(block(shard.node_url), ctx, "PUT", b"direct", shard.token(), {"Idempotency-Key": "w-2"})
    assert status == 200 and "replayed" not in first
    status, again = call(block(shard.node_url), ctx, "PUT", b"other", shard.token(), {"Idempotency-Key": "w-2"})
    assert (status, again["replayed"], again["lsn"]) == (200, True, first["lsn"])
    # through the cache too: the replayed answer does not make the cache serve the body that was not written
    wait_for(lambda: call(block(shard.cache_url), ctx, token=shard.token()) == (200, b"direct"),
             what="the cache to follow the node's direct writes")
    status, again = call(block(shard.cache_url), ctx, "PUT", b"other", shard.token(), {"Idempotency-Key": "w-2"})
    assert (status, again["replayed"]) == (200, True)
    assert call(block(shard.cache_url), ctx, token=shard.token()) == (200, b"direct")


def test_expired_revoked_and_tampered_tokens_get_401_with_their_reason(shard):
    ctx = shard.plain_ctx
    cases = {"token_expired": shard.token(ttl=-5),
             "unknown_key": tf.encode(tf.Claims(iss=tf.issuer_for(MS), sub=APP, jti="x" * 32, iat=1, exp=2 ** 31,
                                                tier="valid", store="shop/orders", scope=tf.Scope(("get",)), ms=MS),
                                      Ed25519PrivateKey.generate(), "nokid"),
             "wrong_issuer": shard.token(iss=tf.issuer_for("shop/other-ms"))}
    good = shard.token()
    head, _, sig = good.split(".")
    widened = shard.token(tables=None)
    cases["token_invalid"] = ".".join([head, widened.split(".")[1], sig])  # a payload the signature is not for
    for url in (shard.cache_url, shard.node_url):
        for reason, token in cases.items():
            status, body = call(block(url), ctx, token=token)
            assert (status, body["error"], body["reason"]) == (401, "unauthenticated", reason), (url, reason)
            assert token not in json.dumps(body)
    # a revocation pushed (by the operator identity) is effective at once, on the node and on the cache
    revoked = shard.token()
    jti = _payload(revoked)["jti"]
    for url in (shard.cache_url, shard.node_url):
        assert call(block(url), ctx, "PUT", b"x", revoked)[0] == 200
        push = json.dumps({"revocations": [{"tokenId": jti, "expiresAt": time.time() + 600}]}).encode()
        assert call(f"{url}/v1/tokens/revocations", shard.operator_ctx, "PUT", push)[0] == 200
        status, body = call(block(url), ctx, token=revoked)
        assert (status, body["reason"]) == (401, "token_revoked")
        listed = call(f"{url}/v1/tokens/revocations", shard.operator_ctx)[1]["revocations"]
        assert [r["tokenId"] for r in listed] == [jti]
    # nothing of a token in the processes' logs or audit lines but its id
    logs = shard.logs()
    for token in (*cases.values(), good, revoked):
        assert token not in logs and token.split(".")[2] not in logs


def _payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def changes(shard: TieredShard) -> list[dict[str, Any]]:
    status, body = call(f"{shard.node_url}/v1/changes?after=0&limit=1000", shard.pod_ctx)
    assert status == 200, body
    return list(body["changes"])


def test_queued_writes_apply_exactly_once_in_order_across_a_sigkill(kubeconfig, tmp_path):
    # The drainer pauses between an apply and its record: the node is killed there.
    shard = TieredShard(tmp_path / "shard", kubeconfig, {"queueRecordPauseSeconds": 600}).start(cache=False)
    try:
        temporary = shard.token("temporary")
        ids = []
        for i in range(3):
            status, body = call(f"{shard.node_url}/v1/tables/t/blocks/k{i}", shard.plain_ctx, "PUT",
                                f"value-{i}".encode(), temporary)
            assert status == 202, body
            ids.append(body["queued"])
        assert [call(f"{shard.node_url}/v1/queue/{w}", shard.pod_ctx)[1]["position"] for w in ids] == [1, 2, 3]
        # the first write is applied (visible in the store) but its entry is not recorded yet
        wait_for(lambda: [c["key"] for c in changes(shard)] == ["k0"], what="the first queued write to be applied")
        assert call(f"{shard.node_url}/v1/queue/{ids[0]}", shard.pod_ctx)[1]["state"] == "queued"
        # Three sealed bodies wait in the queue (one applied, unrecorded): a rotation must count them as holders of
        # their key version, beside the one block in the store.
        keys = call(f"{shard.node_url}/v1/keys", shard.pod_ctx)[1]
        version = next(iter(keys["queuedWrites"]))
        assert keys["queuedWrites"] == {version: 3} and keys["blocks"][version] == 4, keys
        shard.procs[0].kill()  # SIGKILL between the apply and the record
        shard.procs[0].wait()
        shard.procs.clear()
        shard.node_json.write_text(json.dumps({"queueRecordPauseSeconds": 0}))
        shard.start(cache=False)  # the same data directory: queue.sqlite3 and blocks.sqlite3 survive

        def entries() -> list[dict[str, Any]] | None:
            got = [call(f"{shard.node_url}/v1/queue/{w}", shard.pod_ctx)[1] for w in ids]
            return got if all(e["state"] == "applied" for e in got) else None

        done = wait_for(entries, what="every queued write to be applied after the restart")
        log = changes(shard)
        # exactly once and in arrival order: one put per key, k0 not written again by the retried apply
        assert [(c["key"], c["op"]) for c in log] == [("k0", "put"), ("k1", "put"), ("k2", "put")]
        assert [e["lsn"] for e in done] == [c["lsn"] for c in log]  # k0's record is the first apply's answer
        for i in range(3):
            assert call(f"{shard.node_url}/v1/tables/t/blocks/k{i}", shard.pod_ctx) == (200, f"value-{i}".encode())
        with sqlite3.connect(f"file:{shard.root / 'data' / 'blocks.sqlite3'}?mode=ro", uri=True) as db:
            recorded = [row[0].split("\n")[1] for row in db.execute("SELECT key FROM idempotency ORDER BY created_at")]
        assert recorded == [f"queue-{w}" for w in ids]
        with sqlite3.connect(f"file:{shard.root / 'data' / 'queue.sqlite3'}?mode=ro", uri=True) as db:
            assert db.execute("SELECT count(*) FROM writes WHERE frame IS NOT NULL").fetchone()[0] == 0
        assert call(f"{shard.node_url}/v1/keys", shard.pod_ctx)[1]["queuedWrites"] == {}  # drained: nothing held
    finally:
        shard.stop()
