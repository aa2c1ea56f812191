"""The ShardSet controller's TLS and access children against a real kube-apiserver: its own CA and the pods'
certificate (chain, names per shard count, re-issued on scale and near expiry), the public CA ConfigMap,
security.json, the ServiceAccount and its auth-delegator ClusterRoleBinding, the NetworkPolicy, the StatefulSet's
mounts and flags, the CA kept and adopted across a delete, and cert-manager's Certificate with the real CRDs."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from chronoshard.operator import certs, podtls, satoken
from chronoshard.operator.shardset import tlsassets
from chronoshard.shardnode.serving.tls import server_context
from kubernetes import client

from tests.integration.operator.test_shardset_controller import (
    GROUP,
    PLURAL,
    VERSION,
    children_exist,
    degraded,
    get_ss,
    read_secret,
    shardset,
)
from tests.support.tls_files import publish
from tests.support.waiting import wait_for
from tests.unit.operator.test_podtls import _handshake

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def _b64(secret, key: str) -> bytes:
    return base64.b64decode(secret.data[key])


def _crb(k8s_client, name):
    try:
        return client.RbacAuthorizationV1Api(k8s_client).read_cluster_role_binding(name)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _serial(secret) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(_b64(secret, "tls.crt")).serial_number


def _no_private_key_in(apis, namespace, name, secrets, caplog):
    """Events, status and the operator's log lines (caplog catches the in-process operator's) hold no key
    material of these Secrets."""
    events = " ".join(e.message or "" for e in apis["core"].list_namespaced_event(namespace).items)
    blob = events + json.dumps(get_ss(apis, namespace, name).get("status") or {}) + caplog.text
    assert caplog.records, "the operator's log lines were captured"
    assert "PRIVATE KEY" not in blob
    for secret, key in secrets:
        pem = _b64(secret, key)
        body = b"".join(pem.splitlines()[1:-1]).decode()
        assert body[:32] not in blob and secret.data[key][:32] not in blob


def test_own_ca_certificate_access_and_pod_spec(operator_runner, apis, k8s_client, namespace, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset(
        "tls", 2, access={"clients": [{"podSelector": {"matchLabels": {"app": "shop"}}}],
                          "monitoring": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}]}))
    sts = wait_for(lambda: children_exist(apis, namespace, "tls"), what="children")
    ca_secret = apis["core"].read_namespaced_secret("tls-ca", namespace)
    tls_secret = apis["core"].read_namespaced_secret("tls-tls", namespace)
    ca = certs.KeyPair(_b64(ca_secret, "ca.crt"), _b64(ca_secret, "ca.key"))
    assert certs.key_matches(ca.cert, ca.key) and certs.common_name(ca.cert) == f"chronoshard-ca:{namespace}:tls"
    assert tls_secret.type == "kubernetes.io/tls" and set(tls_secret.data) == {"tls.crt", "tls.key", "ca.crt"}
    cert = _b64(tls_secret, "tls.crt")
    assert certs.issued_by(cert, ca.cert) and certs.key_matches(cert, _b64(tls_secret, "tls.key"))
    assert _b64(tls_secret, "ca.crt") == ca.cert
    assert certs.common_name(cert) == f"chronoshard:shardset:{namespace}:tls"
    dns, ips = certs.certificate_names(cert)
    assert dns == set(certs.shard_dns_names(namespace, "tls", 2)) and ips == {"127.0.0.1"}
    for owned in (ca_secret, tls_secret):
        assert owned.metadata.owner_references[0].kind == "ShardSet"
    assert apis["core"].read_namespaced_config_map("tls-ca", namespace).data == {"ca.crt": ca.cert.decode()}

    security = json.loads(apis["core"].read_namespaced_config_map("tls-config", namespace).data["security.json"])
    assert security == {"shardSet": {"namespace": namespace, "name": "tls"},
                        "audience": f"chronoshard.io/{namespace}/tls",
                        "podIdentity": f"chronoshard:shardset:{namespace}:tls",
                        "operatorIdentities": ["chronoshard:operator"], "acceptKubeconfigTokens": False,
                        "cacheTTLSeconds": 10, "cacheSize": 10000}

    sa = apis["core"].read_namespaced_service_account("tls-shard", namespace)
    assert sa.automount_service_account_token is True
    crb = _crb(k8s_client, f"chronoshard:shard:{namespace}:tls")
    assert crb.role_ref.name == "system:auth-delegator" and crb.role_ref.kind == "ClusterRole"
    assert [(s.kind, s.name, s.namespace) for s in crb.subjects] == [("ServiceAccount", "tls-shard", namespace)]

    policy = client.NetworkingV1Api(k8s_client).read_namespaced_network_policy("tls", namespace)
    assert policy.spec.pod_selector.match_labels["app.kubernetes.io/instance"] == "tls"
    rules = [([p.to_dict() for p in r._from], sorted(p.port for p in r.ports)) for r in policy.spec.ingress]
    own, operator = rules[0][0]
    assert own["pod_selector"]["match_labels"]["app.kubernetes.io/instance"] == "tls"
    assert operator["pod_selector"]["match_labels"] == {"app.kubernetes.io/name": "chronoshard-operator"}
    assert rules[0][1] == [7400, 7401, 7402, 7403, 7404]
    assert rules[1] == ([{"pod_selector": {"match_labels": {"app": "shop"}, "match_expressions": None},
                          "namespace_selector": None, "ip_block": None}], [7401, 7403, 7404])
    assert rules[2][0][0]["namespace_selector"]["match_labels"] == {"team": "obs"} and rules[2][1] == \
        [7400, 7401, 7402, 7403, 7404]

    pod = sts.spec.template.spec
    assert pod.service_account_name == "tls-shard" and pod.automount_service_account_token is True
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["tls"].secret.secret_name == "tls-tls"
    for c in pod.containers:
        assert c.command[c.command.index("--tls-dir") + 1] == "/etc/chronoshard/tls"
        assert c.command[c.command.index("--security-config") + 1] == "/etc/chronoshard/config/security.json"
        assert {m.name: m.mount_path for m in c.volume_mounts}["tls"] == "/etc/chronoshard/tls"
        assert c.readiness_probe.http_get.scheme == "HTTPS"
    _no_private_key_in(apis, namespace, "tls", [(ca_secret, "ca.key"), (tls_secret, "tls.key")], caplog)

    # The operator's pod client: its own certificate, signed with this CA (read from the Secret), is accepted
    # by a server holding the pods' Secret, and it checks the pod's DNS name.
    ctx = podtls.context_for(namespace, "tls")
    assert podtls.context_for(namespace, "tls") is ctx, "kept in memory, not re-signed per call"
    publish(tmp_path / "pod-tls", {k: _b64(tls_secret, k) for k in ("tls.crt", "tls.key", "ca.crt")})
    seen = asyncio.run(_handshake(server_context(tmp_path / "pod-tls"), ctx, f"tls-1.tls-headless.{namespace}.svc"))
    assert seen == ["chronoshard:operator"]


def test_reissued_on_scale_and_near_expiry(operator_runner, apis, k8s_client, namespace, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset("grow", 1))
    wait_for(lambda: children_exist(apis, namespace, "grow"), what="children")
    first = apis["core"].read_namespaced_secret("grow-tls", namespace)
    assert certs.certificate_names(_b64(first, "tls.crt"))[0] == set(certs.shard_dns_names(namespace, "grow", 1))

    apis["custom"].patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "grow", {"spec": {"shards": 3}})
    scaled = wait_for(lambda: (s := read_secret(apis, namespace, "grow-tls")) and _serial(s) != _serial(first)
                      and s, what="re-issued for 3 shards")
    names = certs.certificate_names(_b64(scaled, "tls.crt"))[0]
    assert f"grow-2.grow-headless.{namespace}.svc" in names and names == set(
        certs.shard_dns_names(namespace, "grow", 3))
    assert _b64(scaled, "ca.crt") == _b64(first, "ca.crt")  # same CA

    # 61 days on, a 90-day certificate has less than a third left: the next pass renews it.
    real = tlsassets.clock
    monkeypatch.setattr(tlsassets, "clock", lambda: real() + timedelta(days=61))
    # Wake the loop now rather than at its next resync: a child deleted by hand is noticed at once.
    client.NetworkingV1Api(k8s_client).delete_namespaced_network_policy("grow", namespace)
    renewed = wait_for(lambda: (s := read_secret(apis, namespace, "grow-tls")) and _serial(s) != _serial(scaled)
                       and s, timeout=45, what="renewed near expiry")
    assert certs.renewal_reason(_b64(renewed, "tls.crt"), real() + timedelta(days=61)) is None
    uid = get_ss(apis, namespace, "grow")["metadata"]["uid"]

    def renewal_messages() -> list[str]:
        return [e.message for e in apis["core"].list_namespaced_event(namespace).items
                if e.reason == "CertificateRenewed" and e.involved_object.uid == uid]

    # Kopf posts events from a background queue, after the pass that renewed.
    wait_for(lambda: any("its DNS names changed" in m for m in renewal_messages())
             and any("expires" in m for m in renewal_messages()), what="renewal events")
    assert "CertificateIssued" in {e.reason for e in apis["core"].list_namespaced_event(namespace).items
                                   if e.involved_object.uid == uid}
    _no_private_key_in(apis, namespace, "grow", [(renewed, "tls.key"), (scaled, "tls.key"), (first, "tls.key")],
                       caplog)


def test_ca_kept_and_adopted_and_binding_removed_on_delete(operator_runner, apis, k8s_client, namespace):
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset("keep", 1))
    wait_for(lambda: children_exist(apis, namespace, "keep"), what="children")
    ca_before = apis["core"].read_namespaced_secret("keep-ca", namespace).data
    crb_name = f"chronoshard:shard:{namespace}:keep"
    assert _crb(k8s_client, crb_name) is not None
    apis["custom"].delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "keep")
    # Kopf runs the deletion handler once the ShardSet's daemon has stopped (up to its cancellation timeout).
    wait_for(lambda: _crb(k8s_client, crb_name) is None, timeout=60, what="ClusterRoleBinding removed")
    wait_for(lambda: read_secret(apis, namespace, "keep-tls") is None, timeout=60, what="tls Secret collected")
    kept = apis["core"].read_namespaced_secret("keep-ca", namespace)
    assert not kept.metadata.owner_references and kept.data == ca_before

    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset("keep", 1))
    wait_for(lambda: children_exist(apis, namespace, "keep"), what="children again")
    uid = get_ss(apis, namespace, "keep")["metadata"]["uid"]
    adopted = wait_for(lambda: (s := read_secret(apis, namespace, "keep-ca")) and s.metadata.owner_references and s,
                       what="CA adopted")
    assert adopted.data == ca_before and adopted.metadata.owner_references[0].uid == uid
    tls_secret = wait_for(lambda: read_secret(apis, namespace, "keep-tls"), what="tls again")
    assert certs.issued_by(_b64(tls_secret, "tls.crt"), base64.b64decode(ca_before["ca.crt"]))
    assert _crb(k8s_client, crb_name) is not None


def test_sweep_removes_bindings_of_shardsets_that_are_gone(operator_runner, k8s_client, namespace):
    rbac = client.RbacAuthorizationV1Api(k8s_client)
    name = f"chronoshard:shard:{namespace}:ghost"
    rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name=name, labels={
            "app.kubernetes.io/managed-by": "chronoshard-operator", "app.kubernetes.io/instance": "ghost",
            "chronoshard.io/shardset-namespace": namespace}),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                                  name="system:auth-delegator"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="ghost-shard", namespace=namespace)]))
    assert tlsassets.sweep_cluster_role_bindings(lambda ns, n: False if n == "ghost" else True) == [name]
    assert _crb(k8s_client, name) is None


# ---- cert-manager ----------------------------------------------------------------------------------------------
def test_issuer_ref_without_cert_manager_is_reported(operator_runner, apis, control_plane, namespace):
    if _cert_manager_served(control_plane):
        pytest.skip("cert-manager's CRDs are already installed on this control plane")
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset(
        "nocm", 1, tls={"issuerRef": {"name": "corp"}}))
    cond = wait_for(lambda: degraded(apis, namespace, "nocm"), what="CertManagerMissing")
    assert cond["reason"] == "CertManagerMissing" and "cert-manager.io/v1" in cond["message"]
    with pytest.raises(client.ApiException):
        apis["apps"].read_namespaced_stateful_set("nocm", namespace)


def _cert_manager_served(control_plane) -> bool:
    return "cert-manager.io/v1" in control_plane.kubectl("api-versions").stdout.split()


@pytest.fixture(scope="module")
def cert_manager_crds(control_plane):
    """cert-manager's real CRDs (from its Go module, via hack/cert-manager-crds.sh) on the test API server."""
    try:
        directory = subprocess.run(["bash", str(REPO / "hack" / "cert-manager-crds.sh")], check=True,
                                   capture_output=True, text=True, timeout=600).stdout.strip()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"cannot fetch cert-manager's CRDs: {exc}")
    names = control_plane.install_crds(Path(directory))
    assert "certificates.cert-manager.io" in names
    yield names
    for name in names:
        control_plane.kubectl("delete", f"crd/{name}", "--wait=false")


def test_cert_manager_certificate_and_the_secret_it_fills(operator_runner, apis, k8s_client, namespace,
                                                          cert_manager_crds, caplog):
    caplog.set_level(logging.DEBUG)
    custom = apis["custom"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset(
        "cm", 2, tls={"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}))

    def certificate():
        try:
            return custom.get_namespaced_custom_object("cert-manager.io", "v1", namespace, "certificates", "cm-tls")
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    cert_obj = wait_for(certificate, what="cert-manager Certificate")
    body = cert_obj["spec"]
    assert body["secretName"] == "cm-tls" and body["commonName"] == f"chronoshard:shardset:{namespace}:cm"
    assert set(body["dnsNames"]) == set(certs.shard_dns_names(namespace, "cm", 2))
    assert body["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert set(body["usages"]) >= {"server auth", "client auth"}
    assert cert_obj["metadata"]["ownerReferences"][0]["kind"] == "ShardSet"
    cond = wait_for(lambda: degraded(apis, namespace, "cm"), what="CertificatePending")
    assert cond["reason"] == "CertificatePending"
    assert read_secret(apis, namespace, "cm-ca") is None, "no CA of the operator's own under cert-manager"
    with pytest.raises(client.ApiException):
        apis["apps"].read_namespaced_stateful_set("cm", namespace)

    # What cert-manager's controller would do (it cannot run here): sign and fill the Secret it was asked for.
    issuer = certs.new_ca("corp", "issuer", tlsassets.clock())
    pair = certs.issue(issuer, body["commonName"], tlsassets.clock(), timedelta(days=90),
                       dns_names=body["dnsNames"], ip_addresses=body.get("ipAddresses") or [])
    labels = body["secretTemplate"]["labels"]
    apis["core"].create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="cm-tls", labels=labels), type="kubernetes.io/tls",
        data={k: base64.b64encode(v).decode() for k, v in
              (("tls.crt", pair.cert), ("tls.key", pair.key), ("ca.crt", issuer.cert))}))
    sts = wait_for(lambda: children_exist(apis, namespace, "cm"), timeout=45, what="StatefulSet once filled")
    assert {v.name: v for v in sts.spec.template.spec.volumes}["tls"].secret.secret_name == "cm-tls"
    wait_for(lambda: degraded(apis, namespace, "cm") is None, what="Degraded cleared")
    assert apis["core"].read_namespaced_config_map("cm-ca", namespace).data == {"ca.crt": issuer.cert.decode()}
    # The operator only read the Secret: cert-manager's content is untouched.
    secret = apis["core"].read_namespaced_secret("cm-tls", namespace)
    assert _b64(secret, "tls.crt") == pair.cert and not secret.metadata.owner_references

    # Scaling changes the Certificate's names (cert-manager then re-issues on its own).
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "cm", {"spec": {"shards": 3}})
    wait_for(lambda: f"cm-2.cm-headless.{namespace}.svc" in (certificate() or {}).get("spec", {}).get("dnsNames", []),
             what="Certificate names for 3 shards")
    _no_private_key_in(apis, namespace, "cm", [(secret, "tls.key")], caplog)


# ---- the operator's identity under cert-manager: its own ServiceAccount token ----------------------------------
def _fill_as_cert_manager(apis, namespace: str, body) -> tuple[certs.KeyPair, certs.KeyPair]:
    """Sign and fill the Secret a Certificate asks for, as cert-manager's controller would: (issuer, pair)."""
    issuer = certs.new_ca("corp", "issuer", tlsassets.clock())
    pair = certs.issue(issuer, body["commonName"], tlsassets.clock(), timedelta(days=90),
                       dns_names=body["dnsNames"], ip_addresses=body.get("ipAddresses") or [])
    apis["core"].create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=body["secretName"], labels=body["secretTemplate"]["labels"]),
        type="kubernetes.io/tls", data={k: base64.b64encode(v).decode() for k, v in
                                        (("tls.crt", pair.cert), ("tls.key", pair.key), ("ca.crt", issuer.cert))}))
    return issuer, pair


def _token_review(k8s_client, token: str, audiences: list[str] | None):
    spec = client.V1TokenReviewSpec(token=token, audiences=audiences)
    return client.AuthenticationV1Api(k8s_client).create_token_review(client.V1TokenReview(spec=spec)).status


async def _call_node(security: dict, tls_dir: Path, control_plane, tmp_path: Path, pod: dict,
                     tokens: dict[str, str]) -> dict[str, tuple[int, dict]]:
    """A real node app with ``security`` (TokenReview against the API server) serving cert-manager's pair; GET
    /v1/keys (an admin route) through the operator's own pod session, and with each of ``tokens``."""
    from chronoshard.shardnode.auth.apiserver import ApiServer, load_connection
    from chronoshard.shardnode.auth.config import parse_security_config
    from chronoshard.shardnode.node.server import NodeConfig
    from chronoshard.shardnode.node.server import create_app as create_node
    from chronoshard.shardnode.serving import tls
    from chronoshard.shardnode.serving.scaffold import secure_app

    from tests.integration.shardnode.test_auth_endpoints import partitioning
    from tests.support.servers import keyring_dir, serve

    app = create_node(NodeConfig(data_dir=tmp_path / "data", keyring_dir=keyring_dir(tmp_path),
                                 partitioning=partitioning(tmp_path)))
    secure_app(app, parse_security_config(security), ApiServer(load_connection(str(control_plane.kubeconfig))),
               "node")
    answers: dict[str, tuple[int, dict]] = {}
    hostname = podtls.endpoint(pod, 0, "node", "/v1/keys").server_hostname
    async with serve(app, tls.install(app, tls_dir)) as url:
        # The operator's own session for this ShardSet's pods: the CA cert-manager published, its token.
        async with await podtls.session({0: pod}, aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(f"{url}/v1/keys", server_hostname=hostname) as resp:
                answers["operator"] = (resp.status, await resp.json())
        # Other callers over the same verified TLS, without the operator's token.
        ctx, _ = podtls.credentials_for(pod["metadata"]["namespace"], "idm")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as other:
            for label, token in tokens.items():
                async with other.get(f"{url}/v1/keys", server_hostname=hostname,
                                     headers={"Authorization": f"Bearer {token}"}) as resp:
                    answers[label] = (resp.status, await resp.json())
    return answers


def test_cert_manager_operator_is_known_by_its_service_account_token(operator_runner, apis, k8s_client, namespace,
                                                                       cert_manager_crds, control_plane, caplog,
                                                                       tmp_path):
    """Under cert-manager the operator has no CA key and so no client certificate: it asks TokenRequest for a
    token of its own ServiceAccount with the ShardSet's audience, security.json names that account as the
    operator, and a real node accepts the token on an admin route and refuses another account's (403)."""
    caplog.set_level(logging.DEBUG)
    core, custom = apis["core"], apis["custom"]
    for sa in ("chronoshard-operator", "intruder"):
        core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
            metadata=client.V1ObjectMeta(name=sa)))
    ref = satoken.ServiceAccountRef(namespace, "chronoshard-operator")
    operator_tokens = satoken.OperatorTokens(ref)
    satoken.reset(operator_tokens)
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset(
            "idm", 1, tls={"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}))
        cert = wait_for(lambda: _get_certificate(custom, namespace, "idm-tls"), what="cert-manager Certificate")
        issuer, pair = _fill_as_cert_manager(apis, namespace, cert["spec"])
        wait_for(lambda: children_exist(apis, namespace, "idm"), timeout=45, what="StatefulSet once filled")
        security = json.loads(core.read_namespaced_config_map("idm-config", namespace).data["security.json"])
        assert security["operatorIdentities"] == ["chronoshard:operator", ref.username]
        aud = f"chronoshard.io/{namespace}/idm"
        assert security["audience"] == aud

        # No client certificate to sign: the operator's credential for these pods is its token.
        ctx, token = podtls.credentials_for(namespace, "idm")
        assert ctx is not None and token and not podtls.has_client_certificate(namespace, "idm")
        assert podtls.credentials_for(namespace, "idm")[1] == token and operator_tokens.requests == 1, "cached"
        review = _token_review(k8s_client, token, [aud])
        assert review.authenticated and review.user.username == ref.username and aud in review.audiences
        assert not _token_review(k8s_client, token, None).authenticated, "not a token for the API server itself"

        intruder = str(core.create_namespaced_service_account_token("intruder", namespace,
                       client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
                           audiences=[aud], expiration_seconds=600))).status.token)
        tls_dir = publish(tmp_path / "pod-tls", {"tls.crt": pair.cert, "tls.key": pair.key, "ca.crt": issuer.cert})
        pod = {"metadata": {"namespace": namespace, "labels": {"app.kubernetes.io/instance": "idm"}},
               "spec": {"containers": [{"command": ["chronoshard-node", "--tls-dir", "/etc/chronoshard/tls"]}]},
               "status": {"podIP": "127.0.0.1"}}
        answers = asyncio.run(_call_node(security, tls_dir, control_plane, tmp_path, pod, {"intruder": intruder}))
        assert answers["operator"][0] == 200, answers["operator"]
        assert answers["intruder"][0] == 403 and answers["intruder"][1]["error"] == "forbidden"
        for text in (token, intruder):
            assert text not in caplog.text and text[-24:] not in caplog.text, "no token in any log line"
    finally:
        satoken.reset(None)


def _get_certificate(custom, namespace: str, name: str):
    try:
        return custom.get_namespaced_custom_object("cert-manager.io", "v1", namespace, "certificates", name)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
