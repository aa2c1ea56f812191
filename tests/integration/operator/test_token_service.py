"""The token service's controller (#18) against a real kube-apiserver: a MirrorSet gets its signing Secret, TLS,
ServiceAccount and auth-delegator binding, ConfigMap, Service and StatefulSet, each owned by it; every member's
config gets tokens.json and the service's identity; a rotation publishes both keys; deleting the MirrorSet removes
tokens.json from the members and the binding."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kubernetes import client

from tests.support.waiting import wait_for

GROUP, VERSION = "chronoshard.io", "v1alpha1"

pytestmark = pytest.mark.integration


@pytest.fixture()
def other_namespace(k8s_client) -> Iterator[str]:
    """A second namespace for the mirror member."""
    core = client.CoreV1Api(k8s_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def _read(fn, *args: Any) -> Any:
    try:
        return fn(*args)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _config(apis, ns: str, name: str) -> dict[str, str]:
    cm = _read(apis["core"].read_namespaced_config_map, f"{name}-config", ns)
    return dict(cm.data or {}) if cm is not None else {}


def _ms(apis, ns: str) -> dict[str, Any]:
    return apis["custom"].get_namespaced_custom_object(GROUP, VERSION, ns, "mirrorsets", "orders")


def _public_of(pem: bytes) -> str:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def test_token_service_children_tokens_json_rotation_and_delete(operator_runner, apis, k8s_client, namespace,
                                                                 other_namespace):
    ns_a, ns_b = namespace, other_namespace
    for ns, name in ((ns_a, "src"), (ns_b, "mir")):
        apis["custom"].create_namespaced_custom_object(GROUP, VERSION, ns, "shardsets", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ShardSet", "metadata": {"name": name},
            "spec": {"shards": 2}})
    wait_for(lambda: _config(apis, ns_a, "src") and _config(apis, ns_b, "mir"), what="the members' configs")
    assert "tokens.json" not in _config(apis, ns_a, "src")  # in no MirrorSet: no tokens
    ms = apis["custom"].create_namespaced_custom_object(GROUP, VERSION, ns_a, "mirrorsets", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MirrorSet", "metadata": {"name": "orders"},
        "spec": {"sourceRef": {"name": "src"}, "failover": {"policy": "manual"},
                 "mirrors": [{"shardSetRef": {"name": "mir"}, "namespace": ns_b}]}})
    uid = ms["metadata"]["uid"]
    core, apps, rbac = apis["core"], apis["apps"], client.RbacAuthorizationV1Api(k8s_client)

    # Every namespaced child exists and is owned by the MirrorSet.
    sts = wait_for(lambda: _read(apps.read_namespaced_stateful_set, "orders-tokens", ns_a),
                   what="the token service's StatefulSet")
    children = [sts, core.read_namespaced_service("orders-tokens", ns_a),
                core.read_namespaced_service_account("orders-tokens", ns_a),
                core.read_namespaced_config_map("orders-tokens", ns_a),
                core.read_namespaced_config_map("orders-tokens-ca", ns_a),
                core.read_namespaced_secret("orders-token-signing", ns_a),
                core.read_namespaced_secret("orders-tokens-ca", ns_a),
                core.read_namespaced_secret("orders-tokens-tls", ns_a)]
    for c in children:
        refs = c.metadata.owner_references or []
        assert [(r.kind, r.uid, r.controller) for r in refs] == [("MirrorSet", uid, True)], c.metadata.name
    assert sts.spec.replicas == 1
    assert sts.spec.volume_claim_templates[0].spec.resources.requests["storage"] == "1Gi"
    assert sts.spec.template.spec.containers[0].command[0] == "chronoshard-tokens"
    crb = rbac.read_cluster_role_binding(f"chronoshard:tokens:{ns_a}:orders")
    assert crb.role_ref.name == "system:auth-delegator"
    assert [(s.name, s.namespace) for s in crb.subjects] == [("orders-tokens", ns_a)]

    # The service's settings name both members; its certificate carries the Service name.
    cm = core.read_namespaced_config_map("orders-tokens", ns_a)
    cfg = json.loads(cm.data["tokens-service.json"])
    assert cfg["mirrorSet"] == f"{ns_a}/orders" and cfg["activeStore"] == f"{ns_a}/src"
    assert [m["store"] for m in cfg["members"]] == [f"{ns_a}/src", f"{ns_b}/mir"]
    tls = core.read_namespaced_secret("orders-tokens-tls", ns_a)
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(base64.b64decode(tls.data["tls.crt"]))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"orders-tokens.{ns_a}.svc" in sans

    # tokens.json in every member's config: the signing key's public half, the member itself as store.
    signing = core.read_namespaced_secret("orders-token-signing", ns_a)
    first = _public_of(base64.b64decode(signing.data["signing.pem"]))
    for ns, name in ((ns_a, "src"), (ns_b, "mir")):
        doc = json.loads(wait_for(lambda ns=ns, name=name: _config(apis, ns, name).get("tokens.json"),
                                  what=f"{name}'s tokens.json"))
        assert doc["issuer"] == f"chronoshard-tokens:{ns_a}/orders" and doc["store"] == f"{ns}/{name}"
        assert [k["publicKey"] for k in doc["keys"]] == [first]
        assert doc["members"] == [f"{ns_a}/src", f"{ns_b}/mir"]
        security = json.loads(_config(apis, ns, name)["security.json"])
        assert {f"system:serviceaccount:{ns_a}:orders-tokens", f"chronoshard:tokens:{ns_a}:orders"} <= set(
            security["operatorIdentities"])
        assert "PRIVATE KEY" not in _config(apis, ns, name)["tokens.json"]
        # The pods trust the service's CA as their own (its certificate is its operator identity), after theirs.
        own = core.read_namespaced_config_map(f"{name}-ca", ns).data["ca.crt"]
        tokens_ca = core.read_namespaced_config_map("orders-tokens-ca", ns_a).data["ca.crt"]
        wait_for(lambda ns=ns, name=name, want=own + tokens_ca: base64.b64decode(core.read_namespaced_secret(
            f"{name}-tls", ns).data["ca.crt"]).decode() == want, what=f"{name}'s ca.crt bundle")
    status = wait_for(lambda: (_ms(apis, ns_a).get("status") or {}).get("tokenService"), what="status.tokenService")
    assert status["ready"] is False and status["url"] == f"https://orders-tokens.{ns_a}.svc:7405"
    kid = status["keyIds"][0]
    assert len(status["keyIds"]) == 1

    # Rotation: a new signing key, both public keys published, the old one second.
    apis["custom"].patch_namespaced_custom_object(GROUP, VERSION, ns_a, "mirrorsets", "orders", {
        "metadata": {"annotations": {"chronoshard.io/rotate-token-key": "r1"}}})
    rotated = wait_for(lambda: len(((_ms(apis, ns_a).get("status") or {}).get("tokenService") or {})
                                   .get("keyIds") or []) == 2 and _ms(apis, ns_a)["status"]["tokenService"],
                       what="two published keys")
    assert rotated["keyIds"][1] == kid and rotated["rotationRequest"] == "r1"
    signing = core.read_namespaced_secret("orders-token-signing", ns_a)
    assert _public_of(base64.b64decode(signing.data["previous.pem"])) == first
    second = _public_of(base64.b64decode(signing.data["signing.pem"]))
    for ns, name in ((ns_a, "src"), (ns_b, "mir")):
        wait_for(lambda ns=ns, name=name: [k["publicKey"] for k in json.loads(
            _config(apis, ns, name).get("tokens.json") or "{}").get("keys", [])] == [second, first],
            what=f"{name}'s tokens.json with both keys")

    # Delete: tokens.json and the service identity leave the members, the binding goes.
    apis["custom"].delete_namespaced_custom_object(GROUP, VERSION, ns_a, "mirrorsets", "orders")
    for ns, name in ((ns_a, "src"), (ns_b, "mir")):
        wait_for(lambda ns=ns, name=name: "tokens.json" not in _config(apis, ns, name),
                 what=f"{name}'s tokens.json removed")
        security = json.loads(_config(apis, ns, name)["security.json"])
        assert f"system:serviceaccount:{ns_a}:orders-tokens" not in security["operatorIdentities"]
        own = core.read_namespaced_config_map(f"{name}-ca", ns).data["ca.crt"]
        wait_for(lambda ns=ns, name=name, own=own: base64.b64decode(core.read_namespaced_secret(
            f"{name}-tls", ns).data["ca.crt"]).decode() == own, what=f"{name}'s ca.crt back to its own CA")
    wait_for(lambda: _read(rbac.read_cluster_role_binding, f"chronoshard:tokens:{ns_a}:orders") is None,
             what="the binding removed")
