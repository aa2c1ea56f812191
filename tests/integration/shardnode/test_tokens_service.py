"""The token service as a real process (`chronoshard-tokens`, docs/tokens.md) with TLS and the auth layer against the
real kube-apiserver (TokenReview for the callers' ServiceAccount tokens, SubjectAccessReview for the scope), and a
real member ShardSet's node and cache: request, status, refresh, revoke (the revocation reaches the node and the
cache, and the token stops working there), the registry across a restart, and a pre-issued temporary token when
the member's node goes down."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chronoshard.operator import certs
from chronoshard.shardnode.auth import tokenformat
from chronoshard.shardnode.tokens.signing import pem
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kubernetes import client

from tests.integration.client.secure_shard import SecureShard, security_json
from tests.integration.client.shards import BIN, free_port, stop_all
from tests.support import rbac, tls_files
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

MS = "orders-ms"
TOKENS = f"{MS}-tokens"


def call(url: str, ctx: ssl.SSLContext, method: str = "GET", doc: Any = None,
         token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=None if doc is None else json.dumps(doc).encode(), method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


class TokenServiceProc:
    """`chronoshard-tokens` over ``root`` with the member's CA (its certificate is issued by it, its CN listed in
    the member's operatorIdentities, as the operator arranges)."""

    def __init__(self, root: Path, member: SecureShard, kubeconfig: Path) -> None:
        self.root, self.member = root, member
        ns = member.namespace
        root.mkdir(parents=True, exist_ok=True)
        pair = certs.issue_shard_certificate(member.ca_pair, ns, TOKENS, 1, ["127.0.0.1"], tls_files.now())
        tls_files.write_tls_dir(root / "tls", pair, member.ca_pair)
        (root / "security.json").write_text(json.dumps(security_json(ns, TOKENS)))
        self.signing_key = Ed25519PrivateKey.generate()
        tls_files.publish(root / "signing", {"signing.pem": pem(self.signing_key)})
        self.write_config()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.env = dict(os.environ, KUBECONFIG=str(kubeconfig))
        self.env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, **over: Any) -> None:
        m = self.member
        doc = {"mirrorSet": f"{m.namespace}/{MS}", "activeStore": f"{m.namespace}/{m.name}",
               "members": [{"store": f"{m.namespace}/{m.name}", "role": "source",
                            "shards": [{"index": 0, "node": m.node_url, "cache": m.cache_url}]}],
               "tokens": {"validTTL": 600, "temporaryTTL": 300, "provisionalTTL": 300},
               "health": {"probeInterval": 0.5}, **over}
        tls_files.publish(self.root / "config", {"tokens-service.json": json.dumps(doc).encode()})

    def start(self) -> TokenServiceProc:
        argv = [str(BIN / "chronoshard-tokens"), "--host", "127.0.0.1", "--port", str(self.port),
                "--config", str(self.root / "config" / "tokens-service.json"), "--signing-dir",
                str(self.root / "signing"), "--data-dir", str(self.root / "data"), "--tls-dir", str(self.root / "tls"),
                "--security-config", str(self.root / "security.json"), "--log-level", "INFO"]
        with open(self.root / "tokens.log", "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self.member.wait_ready(self.url, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_all([self.proc])
            self.proc = None

    def log(self) -> str:
        return (self.root / "tokens.log").read_text(errors="replace")

    def tokens_json(self) -> dict[str, Any]:
        """What the operator puts beside the member's security.json."""
        m = self.member
        pub = self.signing_key.public_key()
        return {"issuer": tokenformat.issuer_for(f"{m.namespace}/{MS}"), "mirrorSet": f"{m.namespace}/{MS}",
                "keys": [{"kid": tokenformat.key_id(pub), "publicKey": tokenformat.public_key_b64(pub)}],
                "service": {"url": self.url, "serverName": "127.0.0.1"}, "store": f"{m.namespace}/{m.name}",
                "members": [f"{m.namespace}/{m.name}"]}


@pytest.fixture(scope="module")
def world(control_plane, k8s_client, tmp_path_factory) -> Iterator[dict[str, Any]]:
    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    root = tmp_path_factory.mktemp("tokens")
    deleg = rbac.delegator(control_plane, core, rb, ns, root)
    member = SecureShard(root / "orders", ns, "orders", deleg.kubeconfig)
    tokens = TokenServiceProc(root / "svc", member, deleg.kubeconfig)
    # The member trusts the token service's certificate as an operator identity (its revocation pushes) and
    # verifies the service's tokens with tokens.json beside security.json.
    doc = security_json(ns, "orders")
    doc["operatorIdentities"] = [*doc["operatorIdentities"], certs.pod_identity(ns, TOKENS)]
    (member.root / "security.json").write_text(json.dumps(doc))
    (member.root / "tokens.json").write_text(json.dumps(tokens.tokens_json()))
    member.start()
    tokens.start()
    rbac.service_account(core, ns, "app")
    rbac.bind_role(rb, ns, "app", rbac.data_rules(["orders"], ["get", "list", "update"], shardset="orders"))
    rbac.service_account(core, ns, "other")
    audience = f"chronoshard.io/{ns}/{TOKENS}"
    world = {"ns": ns, "member": member, "svc": tokens, "ctx": member.ssl_context(),
             "op": member.operator_ssl_context(),
             "app": rbac.token(core, ns, "app", [audience]), "other": rbac.token(core, ns, "other", [audience]),
             "node_audience_token": rbac.token(core, ns, "app", [f"chronoshard.io/{ns}/orders"])}
    try:
        yield world
    finally:
        tokens.stop()
        member.stop()
        rb.delete_cluster_role_binding(deleg.binding)


def wait_tier(w: dict[str, Any], tier: str) -> None:
    def seen() -> bool:
        status, body = call(w["svc"].url + "/v1/status", w["op"])
        assert status == 200, body
        return body["recommendedTier"] == tier

    wait_for(seen, 60, interval=0.2, what=f"the service to recommend {tier}")


def request(w: dict[str, Any], who: str = "app", **doc: Any) -> tuple[int, Any]:
    return call(w["svc"].url + "/v1/tokens", w["ctx"], "POST", doc or {"table": "orders"}, token=w[who])


def test_request_status_refresh_and_the_claims(world):
    w = world
    wait_tier(w, "valid")
    status, body = request(w, table="orders", verbs=["get", "update"])
    assert status == 201, body
    assert body["tier"] == "valid" and body["store"] == f"{w['ns']}/orders" and set(body["risk"]) == {"300", "900",
                                                                                                      "1800"}
    _, keys = call(w["svc"].url + "/v1/keys", w["ctx"], token=w["app"])
    claims = tokenformat.decode_verified(body["token"], tokenformat.public_keys_from_json(keys["keys"]),
                                         now=body["expiresAt"] - 1, issuer=f"chronoshard-tokens:{w['ns']}/{MS}")
    assert claims.sub == f"system:serviceaccount:{w['ns']}:app" and claims.jti == body["tokenId"]
    assert claims.scope.tables == ("orders",) and claims.scope.verbs == ("get", "update")

    status, st = call(w["svc"].url + f"/v1/tokens/{body['tokenId']}", w["ctx"], token=w["app"])
    assert status == 200 and st["state"] == "active" and st["recommendedTier"] == "valid"
    assert st["replacement"] is None
    # another service cannot see it
    assert call(w["svc"].url + f"/v1/tokens/{body['tokenId']}", w["ctx"], token=w["other"])[0] == 404

    status, new = call(w["svc"].url + f"/v1/tokens/{body['tokenId']}/refresh", w["ctx"], "POST", token=w["app"])
    assert status == 200 and new["action"] == "renew" and new["tokenId"] != body["tokenId"]
    _, old = call(w["svc"].url + f"/v1/tokens/{body['tokenId']}", w["ctx"], token=w["app"])
    assert old["state"] == "superseded" and old["supersededBy"] == new["tokenId"]
    status, refused = call(w["svc"].url + f"/v1/tokens/{body['tokenId']}/refresh", w["ctx"], "POST", token=w["app"])
    assert status == 409 and refused["reason"] == "superseded"


def test_rbac_is_checked_at_issuance(world):
    w = world
    status, body = request(w, "other", table="orders")
    assert status == 403, body  # a SubjectAccessReview said no
    assert request(w, table="secrets")[0] == 403  # the role names only the table orders
    assert request(w, table="orders", verbs=["delete"])[0] == 403
    assert request(w, serviceId="system:serviceaccount:x:y", table="orders")[0] == 403
    assert request(w, dataBlockId="no-slash")[0] == 400
    status, _ = call(w["svc"].url + "/v1/tokens", w["ctx"], "POST", {"table": "orders"})
    assert status == 401  # no credential
    assert call(w["svc"].url + "/v1/tokens", w["ctx"], token=w["app"])[0] == 403  # the registry is admin-only
    status, listing = call(w["svc"].url + "/v1/tokens?service=system:serviceaccount:" + w["ns"] + ":app", w["op"])
    assert status == 200 and listing["tokens"]


def test_a_token_works_on_the_node_until_revoked_and_the_revocation_reaches_node_and_cache(world):
    w = world
    wait_tier(w, "valid")
    status, body = request(w, dataBlockId="orders/k1", verbs=["get", "update"])
    assert status == 201, body
    member = w["member"]
    put = call(member.node_url + "/v1/tables/orders/blocks/k1", w["ctx"], "PUT", {"v": 1}, token=body["token"])
    assert put[0] in (200, 201, 204), put
    assert call(member.cache_url + "/v1/tables/orders/blocks/k1", w["ctx"], token=body["token"])[0] == 200
    # outside the token's scope (another key): refused by the node, offline
    assert call(member.node_url + "/v1/tables/orders/blocks/k2", w["ctx"], token=body["token"])[0] == 403

    status, revoked = call(w["svc"].url + f"/v1/tokens/{body['tokenId']}", w["ctx"], "DELETE", token=w["app"])
    assert status == 200 and revoked == {"revoked": True, "tokenId": body["tokenId"], "pushedTo": 2, "pending": 0}
    for url in (member.node_url, member.cache_url):
        status, listed = call(url + "/v1/tokens/revocations", w["op"])
        assert status == 200 and body["tokenId"] in {r["tokenId"] for r in listed["revocations"]}
        status, refused = call(url + "/v1/tables/orders/blocks/k1", w["ctx"], token=body["token"])
        assert status == 401 and refused["reason"] == "token_revoked"
    status, revs = call(w["svc"].url + "/v1/revocations?since=0", w["op"])
    assert status == 200 and body["tokenId"] in {r["tokenId"] for r in revs["revocations"]}
    _, st = call(w["svc"].url + f"/v1/tokens/{body['tokenId']}", w["ctx"], token=w["app"])
    assert st["state"] == "revoked"
    status, refused = call(w["svc"].url + f"/v1/tokens/{body['tokenId']}/refresh", w["ctx"], "POST", token=w["app"])
    assert status == 409 and refused["reason"] == "revoked"


def test_the_registry_survives_a_restart(world):
    w = world
    wait_tier(w, "valid")
    status, body = request(w)
    assert status == 201
    call(w["svc"].url + f"/v1/tokens/{body['tokenId']}", w["ctx"], "DELETE", token=w["app"])
    _, before = call(w["svc"].url + "/v1/status", w["op"])
    w["svc"].stop()
    w["svc"].start()
    _, st = call(w["svc"].url + f"/v1/tokens/{body['tokenId']}", w["ctx"], token=w["app"])
    assert st["state"] == "revoked" and st["tier"] == "valid"
    _, after = call(w["svc"].url + "/v1/status", w["op"])
    assert after["tokens"] == before["tokens"] and after["signingKid"] == before["signingKid"]
    _, revs = call(w["svc"].url + "/v1/revocations", w["op"])
    assert body["tokenId"] in {r["tokenId"] for r in revs["revocations"]}
    # the health history was kept too: the risk endpoint answers from it at once
    status, risk = call(w["svc"].url + "/v1/risk", w["ctx"], token=w["app"])
    assert status == 200 and risk["threshold"] == 0.7


def test_a_node_going_down_pre_issues_temporary_tokens_and_its_return_valid_ones(world):
    w = world
    wait_tier(w, "valid")
    status, body = request(w)
    assert status == 201 and body["tier"] == "valid"
    member = w["member"]
    node = member.procs[0]
    node.kill()
    node.wait()
    try:
        def replacement() -> dict[str, Any] | None:
            _, st = call(w["svc"].url + f"/v1/tokens/{body['tokenId']}", w["ctx"], token=w["app"])
            return st["replacement"]

        temp = wait_for(replacement, 60, interval=0.2, what="a pre-issued temporary token")
        assert temp["tier"] == "temporary" and temp["store"] == f"{w['ns']}/orders"
        status, new = request(w)
        assert status == 201 and new["tier"] == "temporary"
    finally:
        member.procs.remove(node)
        _restart_node(member)
    wait_tier(w, "valid")

    def upgraded() -> dict[str, Any] | None:
        _, st = call(w["svc"].url + f"/v1/tokens/{temp['tokenId']}", w["ctx"], token=w["app"])
        repl = st["replacement"]
        return repl if repl and repl["tier"] == "valid" else None

    valid = wait_for(upgraded, 60, interval=0.2, what="a pre-issued valid token after the node returned")
    assert valid["store"] == f"{w['ns']}/orders"
    status, refreshed = call(w["svc"].url + f"/v1/tokens/{temp['tokenId']}/refresh", w["ctx"], "POST",
                             token=w["app"])
    assert status == 200 and refreshed["tier"] == "valid" and refreshed["action"] == "upgrade"


def _restart_node(member: SecureShard) -> None:
    common = ["--keyring-dir", str(member.keyring), "--partition-map", str(member.partitions / "map.json"),
              "--shard-index", "0", "--host", "127.0.0.1"]
    proc = member._spawn([str(BIN / "chronoshard-node"), "--port", str(member.node_port), "--data-dir",
                          str(member.root / "data"), *common], "node.log")
    member.wait_ready(member.node_url, proc)


def test_a_failover_in_the_config_gives_provisional_tokens_with_the_targets_watermark_then_valid_ones(world):
    w = world
    wait_tier(w, "valid")
    status, held = request(w)
    assert status == 201 and held["tier"] == "valid"
    m, svc = w["member"], w["svc"]
    ns = m.namespace
    # A second member (a stand-in: the same node answers for it) and the MirrorSet's operation towards it.
    members = [{"store": f"{ns}/orders", "role": "source", "shards": [{"index": 0, "node": m.node_url,
                                                                       "cache": m.cache_url}]},
               {"store": f"{ns}/orders-dr", "role": "mirror", "shards": [{"index": 0, "node": m.node_url}]}]
    svc.write_config(members=members, operation={"kind": "failover", "from": f"{ns}/orders",
                                                 "to": f"{ns}/orders-dr", "term": 2})
    try:
        wait_tier(w, "provisional")
        status, body = request(w)
        assert status == 201 and body["tier"] == "provisional" and body["store"] == f"{ns}/orders-dr"
        _, health = call(m.node_url + "/v1/health", w["op"])
        assert body["lsn"]["0"] <= health["replication"]["appliedLsn"] and set(body["lsn"]) == {"0"}

        def provisional_offered() -> dict[str, Any] | None:
            _, st = call(svc.url + f"/v1/tokens/{held['tokenId']}", w["ctx"], token=w["app"])
            repl = st["replacement"]
            return repl if repl and repl["tier"] == "provisional" else None

        assert wait_for(provisional_offered, 60, interval=0.2, what="a pre-issued provisional token")["store"] == \
            f"{ns}/orders-dr"
        # promoted: the target is the active member, no operation
        svc.write_config(members=members, activeStore=f"{ns}/orders-dr")
        wait_tier(w, "valid")
        status, refreshed = call(svc.url + f"/v1/tokens/{body['tokenId']}/refresh", w["ctx"], "POST", token=w["app"])
        assert status == 200 and refreshed["tier"] == "valid" and refreshed["store"] == f"{ns}/orders-dr"
        assert refreshed["action"] == "upgrade"
    finally:
        svc.write_config()
    wait_tier(w, "valid")
