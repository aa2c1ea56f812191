"""The token service's manifests (operator/tokens/manifests.py) and keys (operator/tokens/keys.py)."""

from __future__ import annotations

import base64
import json

from chronoshard.operator.spec.mirrorset import parse_mirrorset
from chronoshard.operator.tokenlookup import member_document
from chronoshard.operator.tokens import keys, manifests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

OWNER = {"apiVersion": "chronoshard.io/v1alpha1", "kind": "MirrorSet",
         "metadata": {"name": "orders-ms", "namespace": "shop", "uid": "u-1"}}
SPEC = parse_mirrorset({"sourceRef": {"name": "orders"},
                        "mirrors": [{"shardSetRef": {"name": "orders"}, "namespace": "dr"}],
                        "tokens": {"validTTL": "30m"}, "prediction": {"unavailabilityThreshold": 0.6}})
MEMBERS = [manifests.MemberPods("shop", "orders", {0: "10.0.0.5", 1: None}),
           manifests.MemberPods("dr", "orders", {0: "fd00::7"})]


def test_signing_key_is_ed25519_and_its_kid_is_derived_from_the_public_key():
    pem = keys.new_signing_key()
    raw = keys.public_raw(pem)
    assert raw is not None and len(raw) == 32
    Ed25519PublicKey.from_public_bytes(raw)
    entry = keys.public_entry(raw)
    assert base64.b64decode(entry["publicKey"]) == raw and entry["kid"] == keys.key_id(raw)
    assert keys.key_id(keys.public_raw(keys.new_signing_key()) or b"") != entry["kid"]
    assert keys.public_raw(b"not a key") is None
    # the kid the service signs with and the nodes look keys up by
    from chronoshard.shardnode.auth.tokenformat import key_id

    assert entry["kid"] == key_id(Ed25519PublicKey.from_public_bytes(raw))


def test_every_namespaced_child_is_owned_by_the_mirrorset():
    children = [manifests.signing_secret(OWNER, b"pem", None, {}), manifests.ca_secret(OWNER, b"c", b"k"),
                manifests.tls_secret(OWNER, b"c", b"k", b"ca"), manifests.ca_config_map(OWNER, "ca"),
                manifests.service_account(OWNER), manifests.service(OWNER),
                manifests.config_map(OWNER, {}, {}, "", {}), manifests.statefulset(OWNER, "img:1", "IfNotPresent",
                                                                                 MEMBERS)]
    for c in children:
        refs = c["metadata"]["ownerReferences"]
        assert refs == [{"apiVersion": "chronoshard.io/v1alpha1", "kind": "MirrorSet", "name": "orders-ms",
                         "uid": "u-1", "controller": True, "blockOwnerDeletion": True}], c["kind"]
        assert c["metadata"]["namespace"] == "shop"
    assert {c["metadata"]["name"] for c in children} == {
        "orders-ms-token-signing", "orders-ms-tokens-ca", "orders-ms-tokens-tls", "orders-ms-tokens"}


def test_signing_secret_holds_previous_only_during_a_rotation():
    s = manifests.signing_secret(OWNER, b"new", b"old", {"a": "b"})
    assert s["data"] == {"signing.pem": base64.b64encode(b"new").decode(),
                         "previous.pem": base64.b64encode(b"old").decode()}
    assert "previous.pem" not in manifests.signing_secret(OWNER, b"new", None, {})["data"]


def test_binding_is_to_auth_delegator_and_not_swept_as_a_shardset_binding():
    crb = manifests.cluster_role_binding(OWNER)
    assert crb["metadata"]["name"] == "chronoshard:tokens:shop:orders-ms"
    assert crb["roleRef"]["name"] == "system:auth-delegator"
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "orders-ms-tokens", "namespace": "shop"}]
    assert "chronoshard.io/shardset-namespace" not in crb["metadata"]["labels"]
    assert "ownerReferences" not in crb["metadata"]


def test_service_config_lists_each_members_nodes_and_caches_from_its_pods():
    status = {"activeShardSet": "shop/orders", "term": 3,
              "operation": {"kind": "switchover", "from": "shop/orders", "to": "dr/orders", "step": "Fencing",
                            "term": 4, "tokens": {"0": 5}}}
    cfg = manifests.service_config(OWNER, SPEC, MEMBERS, status)
    assert cfg["mirrorSet"] == "shop/orders-ms" and cfg["activeStore"] == "shop/orders"
    assert cfg["operation"] == {"kind": "switchover", "from": "shop/orders", "to": "dr/orders", "step": "Fencing",
                                "term": 4}
    shop, dr = cfg["members"]
    assert (shop["store"], shop["role"], dr["role"]) == ("shop/orders", "source", "mirror")
    assert shop["audience"] == "chronoshard.io/shop/orders"
    assert shop["tokenFile"] == "/var/run/secrets/chronoshard/members/shop.orders/token"
    # shard 1 has no IP yet: left out until the pod has one
    assert shop["shards"] == [{"index": 0, "serverName": "orders-0.orders-headless.shop.svc",
                               "node": "https://10.0.0.5:7400", "cache": "https://10.0.0.5:7401"}]
    assert dr["shards"][0]["node"] == "https://[fd00::7]:7400"
    assert cfg["tokens"] == {"validTTL": 1800, "temporaryTTL": 300, "provisionalTTL": 900}
    assert cfg["prediction"] == {"windows": [300, 900, 1800], "unavailabilityThreshold": 0.6,
                                 "model": "gradient-boosting"}
    assert manifests.service_config(OWNER, SPEC, MEMBERS, {})["operation"] is None


def test_service_config_parses_as_the_token_service_reads_it():
    from chronoshard.shardnode.tokens.config import parse_service_config

    status = {"activeShardSet": "dr/orders", "operation": {"kind": "failover", "from": "dr/orders",
                                                           "to": "shop/orders", "term": 5}}
    cfg = parse_service_config(manifests.service_config(OWNER, SPEC, MEMBERS, status))
    assert cfg.mirror_set == "shop/orders-ms" and cfg.active_store == "dr/orders"
    assert cfg.operation is not None and cfg.operation.target == "shop/orders" and cfg.operation.term == 5
    assert [c.copy_id for c in cfg.copies()] == ["shop/orders#0", "dr/orders#0"]
    assert (cfg.valid_ttl, cfg.threshold, cfg.windows) == (1800.0, 0.6, (300.0, 900.0, 1800.0))


def test_tokens_json_shape_and_per_member_store():
    pub = keys.public_entry(b"\x01" * 32)
    doc = manifests.tokens_json("shop", "orders-ms", [pub], "shop/orders", ["shop/orders", "dr/orders"])
    assert doc == {"issuer": "chronoshard-tokens:shop/orders-ms", "mirrorSet": "shop/orders-ms", "keys": [pub],
                   "service": {"url": "https://orders-ms-tokens.shop.svc:7405",
                               "serverName": "orders-ms-tokens.shop.svc"},
                   "store": "shop/orders", "members": ["shop/orders", "dr/orders"]}
    mine = json.loads(member_document(manifests.dump(doc), "dr", "orders") or "")
    assert mine == {**doc, "store": "dr/orders"}
    assert member_document("[1]", "dr", "orders") is None and member_document("{", "dr", "orders") is None


def test_statefulset_one_replica_volume_probes_and_the_signing_key_only_here():
    sts = manifests.statefulset(OWNER, "img:1", "IfNotPresent", MEMBERS)
    spec = sts["spec"]
    assert spec["replicas"] == 1
    assert spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["serviceAccountName"] == "orders-ms-tokens"
    (c,) = pod["containers"]
    assert c["command"][0] == "chronoshard-tokens" and "--signing-dir" in c["command"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["securityContext"]["readOnlyRootFilesystem"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["signing"]["secret"]["secretName"] == "orders-ms-token-signing"
    audiences = [s["serviceAccountToken"]["audience"] for s in vols["member-tokens"]["projected"]["sources"]]
    assert audiences == ["chronoshard.io/shop/orders", "chronoshard.io/dr/orders"]
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "tokens"


def test_security_json_parses_as_the_guard_reads_it():
    from chronoshard.shardnode.auth.config import parse_security_config

    cfg = parse_security_config(manifests.security_config("shop", "orders-ms", ["chronoshard:operator"], MEMBERS))
    assert cfg.name == "orders-ms-tokens" and cfg.accept_kubeconfig_tokens
    assert cfg.operator_identities == ("chronoshard:operator",)
    assert cfg.replica_identities == ("chronoshard:shardset:shop:orders", "chronoshard:shardset:dr:orders")


def test_members_network_policy_admits_the_token_service_to_node_and_cache():
    from chronoshard.operator.shardset import manifests as shard_manifests
    from chronoshard.operator.spec.shardset import parse_shardset
    from chronoshard.operator.tokens.manifests import selector_labels

    owner = {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
             "metadata": {"name": "orders", "namespace": "dr", "uid": "u-2"}}
    spec = parse_shardset({"shards": 1})
    peer = {"namespaceSelector": {}}
    without = shard_manifests.network_policy(owner, spec, peer, [("shop", "orders")])
    member = shard_manifests.network_policy(owner, spec, peer, [("shop", "orders")], ("shop", "orders-ms"))
    assert member["spec"]["ingress"][:-1] == without["spec"]["ingress"]
    rule = member["spec"]["ingress"][-1]
    assert rule["ports"] == [{"port": 7400, "protocol": "TCP"}, {"port": 7401, "protocol": "TCP"}]
    # the selector is exactly the token service pod's labels (operator/tokens/manifests.py)
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
                             "podSelector": {"matchLabels": selector_labels("orders-ms")}}]
