"""Revocations pulled from the token service (docs/tokens.md, "Enforcement (as built)"): a member node restarted after
a revocation was pushed has forgotten it (the set is in memory) and learns it again from the real token service's
``GET /v1/revocations`` at start-up, with its pod certificate (listed in the service's replicaIdentities); the
revoked token is refused again without any new push."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from chronoshard.operator import certs
from kubernetes import client

from tests.integration.client.secure_shard import SecureShard, security_json
from tests.integration.shardnode.test_tokens_service import TOKENS, TokenServiceProc, _restart_node, call, wait_tier
from tests.support import rbac
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pulled(control_plane, k8s_client, tmp_path_factory) -> Iterator[dict[str, Any]]:
    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    root = tmp_path_factory.mktemp("pull")
    deleg = rbac.delegator(control_plane, core, rb, ns, root)
    member = SecureShard(root / "orders", ns, "orders", deleg.kubeconfig)
    svc = TokenServiceProc(root / "svc", member, deleg.kubeconfig)
    # The service accepts the member's pods as replicas (GET /v1/revocations is a REPLICATION route there).
    svc_doc = {**security_json(ns, TOKENS), "replicaIdentities": [certs.pod_identity(ns, "orders")]}
    (svc.root / "security.json").write_text(json.dumps(svc_doc))
    doc = security_json(ns, "orders")
    doc["operatorIdentities"] = [*doc["operatorIdentities"], certs.pod_identity(ns, TOKENS)]
    (member.root / "security.json").write_text(json.dumps(doc))
    (member.root / "tokens.json").write_text(json.dumps(svc.tokens_json()))
    member.start()
    svc.start()
    rbac.service_account(core, ns, "app")
    rbac.bind_role(rb, ns, "app", rbac.data_rules(["orders"], ["get", "list", "update"], shardset="orders"))
    world = {"ns": ns, "member": member, "svc": svc, "ctx": member.ssl_context(), "op": member.operator_ssl_context(),
             "app": rbac.token(core, ns, "app", [f"chronoshard.io/{ns}/{TOKENS}"])}
    try:
        yield world
    finally:
        svc.stop()
        member.stop()
        rb.delete_cluster_role_binding(deleg.binding)


def test_a_restarted_node_pulls_the_revocations_it_forgot(pulled):
    w = pulled
    wait_tier(w, "valid")
    member, svc = w["member"], w["svc"]
    status, body = call(svc.url + "/v1/tokens", w["ctx"], "POST", {"dataBlockId": "orders/k1",
                                                                   "verbs": ["get", "update"]}, token=w["app"])
    assert status == 201, body
    block = member.node_url + "/v1/tables/orders/blocks/k1"
    assert call(block, w["ctx"], "PUT", {"v": 1}, token=body["token"])[0] == 200
    status, revoked = call(svc.url + f"/v1/tokens/{body['tokenId']}", w["ctx"], "DELETE", token=w["app"])
    assert status == 200 and revoked["pending"] == 0, revoked
    assert call(block, w["ctx"], token=body["token"])[1]["reason"] == "token_revoked"

    node = member.procs[0]
    node.kill()  # its revocation set (memory) is gone
    node.wait()
    member.procs.remove(node)
    _restart_node(member)

    def listed() -> bool:
        status, doc = call(member.node_url + "/v1/tokens/revocations", w["op"])
        assert status == 200, doc
        return body["tokenId"] in {r["tokenId"] for r in doc["revocations"]}

    wait_for(listed, 30, interval=0.1, what="the restarted node to pull the revocation")
    status, refused = call(block, w["ctx"], token=body["token"])
    assert (status, refused["reason"]) == (401, "token_revoked")
    # (the first start, before the service ran, logged one failed pull: a connection error, never a refusal)
    assert "(403 refused)" not in (member.root / "node.log").read_text()
