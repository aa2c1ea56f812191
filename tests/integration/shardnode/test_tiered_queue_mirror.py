"""A write queued on a mirror member (docs/tokens.md, "Enforcement (as built)"): ShardSet B's node mirrors A's over TLS
(replica identities, peers' CAs); a temporary token's write on B is queued there and B's drainer sends it to A, its
source, with B's pod certificate - which A accepts as a replica only, so the write stays queued (retried, the 403 in
its error, never failed nor lost) until B is promoted; then B applies it itself, once."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import pytest
from chronoshard.operator import certs
from chronoshard.shardnode.auth import tokenformat as tf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.shardnode.test_replication_auth import NS_A, NS_B, PeeredShard, call, kubeconfig  # noqa: F401
from tests.support import tls_files
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

MS = f"{NS_A}/orders-ms"


def test_a_write_queued_on_a_mirror_waits_for_its_promotion_and_lands_once(kubeconfig, tmp_path):  # noqa: F811
    a = PeeredShard(tmp_path / "a", kubeconfig, [certs.pod_identity(NS_B, "orders-b")])
    b = PeeredShard(tmp_path / "b", kubeconfig, [certs.pod_identity(NS_A, "orders-a")], NS_B, "orders-b")
    tls_files.publish(a.peers, {"peers-ca.crt": b.ca_pair.cert})
    tls_files.publish(b.peers, {"peers-ca.crt": a.ca_pair.cert})
    key = Ed25519PrivateKey.generate()
    kid = tf.key_id(key.public_key())
    (b.root / "tokens.json").write_text(json.dumps({
        "issuer": tf.issuer_for(MS), "mirrorSet": MS, "store": f"{NS_A}/orders-a",
        "members": [f"{NS_A}/orders-a", f"{NS_B}/orders-b"],
        "keys": [{"kid": kid, "publicKey": tf.public_key_b64(key.public_key())}]}))
    now = int(time.time())
    token = tf.encode(tf.Claims(iss=tf.issuer_for(MS), sub="system:serviceaccount:shop:app", jti=uuid.uuid4().hex,
                                iat=now, exp=now + 600, tier="temporary", store=f"{NS_A}/orders-a",
                                scope=tf.Scope(("get", "update")), ms=MS), key, kid)
    slot = "mirror.ns-b.orders-b"
    try:
        a.start(cache=False)
        b.start(cache=False)
        op_a, op_b = a.operator_ssl_context(), b.operator_ssl_context()
        mirror = {"term": 1, "role": "mirror", "mode": "async", "consumer": slot,
                  "source": {"url": a.node_url, "shardSet": f"{NS_A}/orders-a"}}
        assert call(b.node_url + "/v1/replication", op_b, "PUT", json.dumps(mirror).encode())[0] == 200
        wait_for(lambda: call(b.node_url + "/v1/replication", op_b)[1].get("state") == "streaming",
                 what="B to stream from A")
        req = urllib.request.Request(
            b.node_url + "/v1/tables/t/blocks/q", data=b"queued-on-b", method="PUT",
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "q-1"})
        with urllib.request.urlopen(req, timeout=10, context=b.ssl_context()) as r:
            assert r.status == 202
            wid = json.loads(r.read())["queued"]

        def refused_by_a() -> dict | None:
            entry = call(b.node_url + f"/v1/queue/{wid}", b.pod_context())[1]
            return entry if entry.get("error") and "answered 403" in entry["error"] else None

        entry = wait_for(refused_by_a, what="B's drainer to be refused by A (a replica may not write)")
        assert entry["state"] == "queued"  # retried, not failed
        assert call(a.node_url + "/v1/tables/t/blocks/q", a.pod_context())[0] == 404
        # B is promoted (A fenced first, as a failover does): B applies its queue itself
        assert call(a.node_url + "/v1/replication", op_a, "PUT",
                    json.dumps({"term": 2, "role": "fenced"}).encode())[0] == 200
        assert call(b.node_url + "/v1/replication", op_b, "PUT",
                    json.dumps({"term": 2, "role": "primary"}).encode())[0] == 200
        done = wait_for(lambda: (lambda e: e if e["state"] == "applied" else None)(
            call(b.node_url + f"/v1/queue/{wid}", b.pod_context())[1]), what="the queued write applied on B")
        changes = call(b.node_url + "/v1/changes?after=0", b.pod_context())[1]["changes"]
        assert [(c["key"], c["lsn"]) for c in changes if c["key"] == "q"] == [("q", done["lsn"])]
    finally:
        b.stop()
        a.stop()
