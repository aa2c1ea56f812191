"""A write queued on a mirror member (docs/tokens.md, "Enforcement (as built)"): ShardSet B's node mirrors A's over TLS
(replica identities, peers' CAs); a temporary token's write on B is queued there and B's drainer applies it on A, its
source, with B's pod certificate as a *queued apply* (the entry's id and its Idempotency-Key): A takes it once,
records the token's user as the writer, and streams it back to B. Without those headers a replica still may not
write. (A write queued on a mirror whose source stays down is applied by the mirror once promoted:
test_tiered_client / the e2e.)"""

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


def test_a_write_queued_on_a_mirror_is_applied_on_its_source_once(kubeconfig, tmp_path):  # noqa: F811
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
        op_b = b.operator_ssl_context()
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

        # B's drainer applies it on A, its source, as a queued apply: once, recorded for the token's user.
        done = wait_for(lambda: (lambda e: e if e["state"] == "applied" else None)(
            call(b.node_url + f"/v1/queue/{wid}", b.pod_context())[1]), what="the queued write applied on A")
        with urllib.request.urlopen(a.node_url + "/v1/tables/t/blocks/q", timeout=10, context=a.pod_context()) as r:
            assert r.read() == b"queued-on-b"
        changes = call(a.node_url + "/v1/changes?after=0", a.pod_context())[1]["changes"]
        mine = [c for c in changes if c["key"] == "q"]
        assert [c["lsn"] for c in mine] == [done["lsn"]]  # exactly once, at the LSN B's entry reports
        assert mine[0].get("identity") == "system:serviceaccount:shop:app"  # the writer, not B's pod
        # ... and streamed back to B like any of A's writes (B applies A's LSN; this test's two shards do not share a
        # keyring as a MirrorSet's members do, so B's copy is not read here).
        wait_for(lambda: call(b.node_url + "/v1/replication", op_b)[1].get("appliedLsn") == done["lsn"],
                 what="the applied write to reach B through the stream")
        # The queued-apply entry is the only write B made on A (a replica writing on its own is refused: the header
        # rule is unit-tested in tests/unit/shardnode/auth/test_writer.py, the refusal in test_replication_auth).
        assert [c["key"] for c in changes] == ["q"]
    finally:
        b.stop()
        a.stop()
