"""The ShardSet's TLS children (API I/O over the pure ``certs`` and ``manifests``): the CA Secret (created once,
adopted, orphaned on delete), the pods' certificate Secret (issued, re-issued on a change of names or near
expiry), the public CA ConfigMap; or, with ``spec.tls.issuerRef``, a cert-manager Certificate and a read of the
Secret cert-manager fills. The access children: the pods' ServiceAccount, its auth-delegator binding, the
NetworkPolicy.

Messages name Secrets and certificates, never key material.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException

from .. import certs, kube, naming, satoken
from ..podcontract import CA_CERT_FILE, CA_KEY_FILE, TLS_CERT_FILE, TLS_KEY_FILE
from ..spec.shardset import ShardSetSpec
from . import manifests
from .applied import APPLIED
from .secrets import Events, adopt, create_once

log = logging.getLogger(__name__)

# Injectable for tests (the operator runs in-process there): the clock and the pods' certificate lifetime.
clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731
serving_lifetime: timedelta = certs.SERVING_LIFETIME

Problems = list[tuple[str, str]]
# Problems that keep the StatefulSet from rolling: pods could not start without their certificate.
BLOCKING = ("CAInvalid", "CertManagerMissing", "CertificatePending", "CertificateInvalid")
OPERATOR_NAME_LABEL = {"app.kubernetes.io/name": "chronoshard-operator"}


@dataclass(frozen=True)
class TLSState:
    """What the pods' certificate is now (for the status and the operator's own client)."""

    ca_cert: bytes | None = None
    not_after: str | None = None


def _decode(secret: Mapping[str, Any] | None, key: str) -> bytes | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    if not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return None


def _names(namespace: str, name: str, shards: int, pod_ips: Iterable[str]) -> tuple[list[str], list[str]]:
    return certs.shard_dns_names(namespace, name, shards), certs.shard_ip_addresses(pod_ips)


def _ensure_ca(owner: Mapping[str, Any], events: Events, problems: Problems) -> certs.KeyPair | None:
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    secret_name = naming.ca_secret_name(name)
    existing = kube.get("v1", "Secret", ns, secret_name)
    if existing is None:
        ca = certs.new_ca(ns, name, clock())
        existing = create_once(manifests.ca_secret(owner, ca.cert, ca.key), events,
                               ("Normal", "CACreated", f"Created CA Secret {secret_name}"))
    try:
        adopt(owner, existing, events, "CA", "CAAdopted")
    except ValueError as exc:
        problems.append(("CAInvalid", str(exc)))
        return None
    cert, key = _decode(existing, CA_CERT_FILE), _decode(existing, CA_KEY_FILE)
    if cert is None or key is None or not certs.key_matches(cert, key) or not certs.issued_by(cert, cert):
        problems.append(("CAInvalid", f"Secret {secret_name} does not hold a matching {CA_CERT_FILE} and "
                                      f"{CA_KEY_FILE}; the pods' certificate cannot be issued"))
        return None
    return certs.KeyPair(cert, key)


def _renewal(secret: Mapping[str, Any] | None, ca: certs.KeyPair, dns: list[str], ips: list[str]) -> str | None:
    cert, key = _decode(secret, TLS_CERT_FILE), _decode(secret, TLS_KEY_FILE)
    if cert is None or key is None:
        return "none was issued yet"
    if not certs.key_matches(cert, key):
        return "its key does not match"
    if not certs.issued_by(cert, ca.cert) or not (_decode(secret, CA_CERT_FILE) or b"").startswith(ca.cert):
        return "it is not from the ShardSet's CA"
    return certs.renewal_reason(cert, clock(), dns_names=dns, ip_addresses=ips)


def trust_bundle(ca_cert: bytes, extra_cas: bytes = b"") -> bytes:
    """The pods' ``ca.crt``: the ShardSet's CA first, then CAs its pods also trust as their own (a MirrorSet's token
    service CA: its certificate is the operator identity it calls the nodes with; docs/tokens.md)."""
    if not extra_cas:
        return ca_cert
    return ca_cert + (b"" if ca_cert.endswith(b"\n") else b"\n") + extra_cas


def _own_ca(owner: Mapping[str, Any], shards: int, pod_ips: Iterable[str], events: Events,
            problems: Problems, extra_cas: bytes = b"") -> TLSState:
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    ca = _ensure_ca(owner, events, problems)
    if ca is None:
        return TLSState()
    dns, ips = _names(ns, name, shards, pod_ips)
    secret_name = naming.tls_secret_name(name)
    live = kube.get("v1", "Secret", ns, secret_name)
    reason = _renewal(live, ca, dns, ips)
    if reason is not None:
        try:
            pair = certs.issue(ca, certs.pod_identity(ns, name), clock(), serving_lifetime, dns_names=dns,
                               ip_addresses=ips)
        except ValueError as exc:  # e.g. a CN past 64 characters
            problems.append(("CertificateInvalid", f"cannot issue the pods' certificate: {exc}"))
            return TLSState(ca.cert)
        kube.apply(manifests.tls_secret(owner, pair.cert, pair.key, trust_bundle(ca.cert, extra_cas)))
        first = reason == "none was issued yet"
        until = _not_after(pair.cert)
        events.append(("Normal", "CertificateIssued" if first else "CertificateRenewed",
                       f"Issued Secret {secret_name} for {shards} shard(s), valid until {until}"
                       + ("" if first else f" (renewed: {reason})")))
        return TLSState(ca.cert, until)
    bundle = trust_bundle(ca.cert, extra_cas)
    if _decode(live, CA_CERT_FILE) != bundle:
        # Only the trusted CAs changed (a token service came or went): same certificate, new ca.crt.
        kube.apply(manifests.tls_secret(owner, _decode(live, TLS_CERT_FILE) or b"", _decode(live, TLS_KEY_FILE) or b"",
                                        bundle))
    return TLSState(ca.cert, _not_after(_decode(live, TLS_CERT_FILE) or b""))


def _not_after(cert_pem: bytes) -> str | None:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def _cert_manager(owner: Mapping[str, Any], spec: ShardSetSpec, shards: int, pod_ips: Iterable[str],
                  problems: Problems) -> TLSState:
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    if not kube.group_version_served("cert-manager.io", "v1"):
        problems.append(("CertManagerMissing", "spec.tls.issuerRef names a cert-manager issuer, but the API server "
                                               "does not serve cert-manager.io/v1 (is cert-manager installed?)"))
        return TLSState()
    dns, ips = _names(ns, name, shards, pod_ips)
    kube.apply(manifests.certificate(owner, spec, dns, ips))
    secret_name = naming.tls_secret_name(name)
    secret = kube.get("v1", "Secret", ns, secret_name)
    cert, key, ca = (_decode(secret, f) for f in (TLS_CERT_FILE, TLS_KEY_FILE, CA_CERT_FILE))
    if cert is None or key is None:
        problems.append(("CertificatePending", f"waiting for cert-manager to issue Secret {secret_name} "
                                               f"(Certificate {naming.certificate_name(name)})"))
        return TLSState()
    if ca is None or not certs.issued_by(cert, ca):
        problems.append(("CertificateInvalid", f"Secret {secret_name} has no {CA_CERT_FILE} that signed its "
                                               f"{TLS_CERT_FILE}; use an issuer that publishes its CA"))
        return TLSState()
    if certs.renewal_reason(cert, clock(), dns_names=dns) is not None:
        # cert-manager re-issues on its own once the Certificate changed; until then the pods keep this one.
        log.info("ShardSet %s/%s: Secret %s waits for cert-manager to re-issue it", ns, name, secret_name)
    return TLSState(ca, _not_after(cert))


def ensure_tls(owner: Mapping[str, Any], spec: ShardSetSpec, shards: int, pod_ips: Iterable[str],
               events: Events, problems: Problems, extra_cas: bytes = b"") -> TLSState:
    """Bring the TLS children to the wished state; the public CA ConfigMap follows the CA in use. ``extra_cas``:
    CAs the pods also trust as their own (with the operator's own CA only; not under cert-manager)."""
    if spec.issuer_ref is None:
        state = _own_ca(owner, shards, pod_ips, events, problems, extra_cas)
    else:
        state = _cert_manager(owner, spec, shards, pod_ips, problems)
    if state.ca_cert is not None:
        APPLIED.apply(manifests.ca_config_map(owner, state.ca_cert.decode()))
    return state


def operator_peer() -> dict[str, Any]:
    """The NetworkPolicy peer that selects the operator's pods: in its namespace when it knows it (the chart
    sets POD_NAMESPACE), else in any namespace."""
    namespace = os.environ.get("POD_NAMESPACE")
    selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}} if namespace else {}
    return {"namespaceSelector": selector, "podSelector": {"matchLabels": dict(OPERATOR_NAME_LABEL)}}


def operator_identities() -> tuple[str, ...]:
    """Whom security.json names as the operator: its client certificate's CN and, when the operator knows its
    ServiceAccount, that account's user name (the identity its tokens prove under cert-manager)."""
    return satoken.identities()


def ensure_access(owner: Mapping[str, Any], spec: ShardSetSpec,
                  replica_peers: Sequence[tuple[str, str]] = (),
                  token_service: tuple[str, str] | None = None) -> None:
    """The pods' ServiceAccount, its system:auth-delegator binding and the NetworkPolicy (which also lets the
    other MirrorSet members' pods, ``replica_peers``, reach the node, and the MirrorSet's token service the node
    and cache)."""
    APPLIED.apply(manifests.service_account(owner))
    kube.apply(manifests.cluster_role_binding(owner))  # cluster-scoped, not watched: always sent
    APPLIED.apply(manifests.network_policy(owner, spec, operator_peer(), replica_peers, token_service))


def delete_cluster_role_binding(namespace: str, name: str) -> None:
    """Best effort: remove the ShardSet's ClusterRoleBinding (nothing garbage-collects a cluster-scoped child)."""
    try:
        if kube.delete("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "",
                       naming.cluster_role_binding_name(namespace, name)):
            log.info("ShardSet %s/%s deleted: removed its ClusterRoleBinding", namespace, name)
    except ApiException as exc:
        log.warning("ShardSet %s/%s deleted: cannot remove its ClusterRoleBinding: %s", namespace, name,
                    kube.api_error_message(exc))


def sweep_cluster_role_bindings(shardset_exists: Callable[[str, str], bool]) -> list[str]:
    """Delete the operator's ClusterRoleBindings whose ShardSet is gone (missed deletions); returns their names."""
    selector = f"app.kubernetes.io/managed-by={naming.MANAGER},{manifests.NAMESPACE_LABEL}"
    removed = []
    for crb in kube.list_objects("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "", selector):
        labels = crb["metadata"].get("labels") or {}
        ns, name = labels.get(manifests.NAMESPACE_LABEL, ""), labels.get("app.kubernetes.io/instance", "")
        if ns and name and not shardset_exists(ns, name):
            if kube.delete("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "", crb["metadata"]["name"]):
                removed.append(crb["metadata"]["name"])
    return removed
