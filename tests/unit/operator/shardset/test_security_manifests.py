"""The ShardSet's security children, built by the pure manifest functions: TLS Secrets, the CA ConfigMap,
security.json, the ServiceAccount and its ClusterRoleBinding, the NetworkPolicy, the cert-manager Certificate,
and the StatefulSet's TLS mounts and flags."""

import base64
import json

import pytest
from chronoshard.operator import podcontract
from chronoshard.operator.shardset import manifests
from chronoshard.operator.spec.shardset import parse_shardset

OWNER = {
    "apiVersion": "chronoshard.io/v1alpha1",
    "kind": "ShardSet",
    "metadata": {"name": "orders", "namespace": "shop", "uid": "1234-uid"},
}
OPERATOR_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "chronoshard-system"}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "chronoshard-operator"}}}


def spec(**fields):
    return parse_shardset({"shards": 3, **fields})


def test_every_container_mounts_the_tls_secret_and_gets_both_flags():
    pod = manifests.statefulset(OWNER, spec())["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "orders-tls"
    assert pod["serviceAccountName"] == "orders-shard" and pod["automountServiceAccountToken"] is True
    for c in pod["containers"]:
        cmd = c["command"]
        assert cmd[cmd.index("--tls-dir") + 1] == "/etc/chronoshard/tls"
        assert cmd[cmd.index("--security-config") + 1] == "/etc/chronoshard/config/security.json"
        assert "--insecure" not in cmd
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/chronoshard/tls", "readOnly": True}
        assert mounts["config"]["mountPath"] == "/etc/chronoshard/config"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["scheme"] == "HTTPS"
    commands = [" ".join(c["command"]) for c in pod["containers"]]
    assert "--node-url https://$(POD_IP):7400" in commands[1]
    assert "--cache-url https://$(POD_IP):7401" in commands[2]
    assert "http://" not in " ".join(commands)


def test_security_json_follows_the_fixed_interface():
    cm = manifests.config_map(OWNER, spec(access={"acceptKubeconfigTokens": True}))
    doc = json.loads(cm["data"]["security.json"])
    assert doc == {"shardSet": {"namespace": "shop", "name": "orders"},
                   "audience": "chronoshard.io/shop/orders",
                   "podIdentity": "chronoshard:shardset:shop:orders",
                   "operatorIdentities": ["chronoshard:operator"],
                   "acceptKubeconfigTokens": True, "cacheTTLSeconds": 10, "cacheSize": 10000}
    extra = manifests.config_map(OWNER, spec(), operator_identities=("chronoshard:operator",
                                                                     "system:serviceaccount:ops:op"))
    assert json.loads(extra["data"]["security.json"])["operatorIdentities"][1] == "system:serviceaccount:ops:op"
    assert json.loads(extra["data"]["security.json"])["acceptKubeconfigTokens"] is False


def test_tls_and_ca_secrets_and_the_public_ca_config_map():
    ca = manifests.ca_secret(OWNER, b"CA-CERT", b"CA-KEY")
    assert ca["metadata"]["name"] == "orders-ca"
    assert {k: base64.b64decode(v) for k, v in ca["data"].items()} == {"ca.crt": b"CA-CERT", "ca.key": b"CA-KEY"}
    tls = manifests.tls_secret(OWNER, b"CRT", b"KEY", b"CA-CERT")
    assert tls["type"] == "kubernetes.io/tls" and tls["metadata"]["name"] == "orders-tls"
    assert set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert tls["metadata"]["ownerReferences"][0]["uid"] == "1234-uid"
    cm = manifests.ca_config_map(OWNER, "CA-CERT")
    assert cm["metadata"]["name"] == "orders-ca" and cm["data"] == {"ca.crt": "CA-CERT"}


def test_service_account_and_its_cluster_role_binding():
    sa = manifests.service_account(OWNER)
    assert sa["metadata"]["name"] == "orders-shard" and sa["automountServiceAccountToken"] is True
    crb = manifests.cluster_role_binding(OWNER)
    assert crb["metadata"]["name"] == "chronoshard:shard:shop:orders"
    assert "ownerReferences" not in crb["metadata"] and "namespace" not in crb["metadata"]
    assert crb["metadata"]["labels"]["chronoshard.io/shardset-namespace"] == "shop"
    assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                              "name": "system:auth-delegator"}
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "orders-shard", "namespace": "shop"}]


def _rules(policy):
    return [(r["from"], sorted(p["port"] for p in r["ports"])) for r in policy["spec"]["ingress"]]


def test_network_policy_defaults_clients_to_the_namespace():
    policy = manifests.network_policy(OWNER, spec(), OPERATOR_PEER)
    own = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "chronoshard",
                                           "app.kubernetes.io/instance": "orders",
                                           "app.kubernetes.io/component": "shard"}}}
    assert policy["spec"]["podSelector"] == own["podSelector"] and policy["spec"]["policyTypes"] == ["Ingress"]
    assert _rules(policy) == [([own, OPERATOR_PEER], [7400, 7401, 7402, 7403, 7404]),
                              ([{"podSelector": {}}], [7401, 7403, 7404])]


def test_network_policy_with_clients_and_monitoring():
    clients = [{"podSelector": {"matchLabels": {"app": "shop"}}}]
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    policy = manifests.network_policy(OWNER, spec(access={"clients": clients, "monitoring": monitoring}),
                                      OPERATOR_PEER)
    rules = _rules(policy)
    assert rules[1:] == [(clients, [7401, 7403, 7404]), (monitoring, [7400, 7401, 7402, 7403, 7404])]
    none = manifests.network_policy(OWNER, spec(access={"clients": []}), OPERATOR_PEER)
    assert len(_rules(none)) == 1  # only the ShardSet's own pods and the operator


def test_cert_manager_certificate():
    s = spec(tls={"issuerRef": {"name": "corp", "kind": "ClusterIssuer"}})
    cert = manifests.certificate(OWNER, s, ["orders-0.orders-headless.shop.svc", "localhost"], ["127.0.0.1"])
    assert cert["apiVersion"] == "cert-manager.io/v1" and cert["kind"] == "Certificate"
    assert cert["metadata"]["name"] == "orders-tls"
    body = cert["spec"]
    assert body["secretName"] == "orders-tls" and body["commonName"] == "chronoshard:shardset:shop:orders"
    assert body["issuerRef"] == {"name": "corp", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert set(body["usages"]) >= {"server auth", "client auth"}
    assert body["secretTemplate"]["labels"]["app.kubernetes.io/component"] == "tls"
    with pytest.raises(ValueError):
        manifests.certificate(OWNER, spec(), [], [])


def test_pod_contract_names():
    assert podcontract.pod_dns_name("shop", "orders", 2) == "orders-2.orders-headless.shop.svc"
    assert podcontract.audience("shop", "orders") == "chronoshard.io/shop/orders"
