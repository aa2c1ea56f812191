"""The token service's controller: one Kopf daemon per MirrorSet (beside the MirrorSet controller's) renders the
service's children and reports ``status.tokenService`` (docs/tokens.md, "The operator").

Each pass: the signing Secret (created once; rotated on ``chronoshard.io/rotate-token-key``), the service's CA and
certificate, ServiceAccount and its system:auth-delegator binding, ConfigMap ``<ms>-tokens`` (the service's
settings with the members' node and cache addresses from their pods, and the public ``tokens.json``), Service and
StatefulSet; then wakes the member ShardSets whose ``tokens.json`` changed (the ShardSet controller renders it into
their config through operator/tokenlookup.py). Key material never reaches a log, an event or the status.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from .. import certs, kube, naming, satoken, tokenlookup
from ..loop import namespace_of, post_events, run_object_loop
from ..podcontract import CA_CERT_FILE, CA_KEY_FILE, TLS_CERT_FILE, TLS_KEY_FILE
from ..shardpods import shard_pods
from ..spec.common import SpecError
from ..spec.mirrorset import MirrorSetSpec, parse_mirrorset
from ..spec.shardset import parse_shardset
from ..triggers import TRIGGERS
from . import keys, manifests, plan

LOOP_KIND = "MirrorSetTokens"  # its own wake-up key: the MirrorSet controller's loop has "MirrorSet"
PLURAL = "mirrorsets"
PASS_SECONDS = 15.0
MISSING_SECONDS = 5.0

log = logging.getLogger(__name__)

CLOCK: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)  # noqa: E731 - tests may replace it
# The published tokens.json each MirrorSet's members last got (uid → text): a change wakes them.
_PUBLISHED: dict[str, str] = {}
# The active member and operation each MirrorSet's tokens-service.json was last rendered with (uid → marker): a
# change (a failover starting, a promotion) wakes the loop, so the service issues provisional tokens at once.
_RENDERED: dict[str, tuple[Any, ...]] = {}


def _operation_marker(status: Mapping[str, Any]) -> tuple[Any, ...]:
    op = status.get("operation") or {}
    return status.get("activeShardSet"), status.get("term"), op.get("kind"), op.get("to"), op.get("term")


@dataclass
class Pass:
    """One pass over one MirrorSet's token service."""

    body: Mapping[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    key_ids: list[str] = field(default_factory=list)
    rotation: str | None = None  # the rotation request the signing Secret says was handled

    @property
    def namespace(self) -> str:
        """The MirrorSet's namespace."""
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        """The MirrorSet's name."""
        return str(self.body["metadata"]["name"])

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        """Queue an event on the MirrorSet."""
        self.events.append(("Warning" if warning else "Normal", reason, message))


def _decode(secret: Mapping[str, Any] | None, key: str) -> bytes | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    if not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return None


def _create_once(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Create a Secret that is never overwritten; if another writer won, read theirs."""
    created = kube.create(manifest)
    if created is not None:
        return created
    meta = manifest["metadata"]
    return kube.get("v1", "Secret", meta["namespace"], meta["name"])


def _patch_signing(p: Pass, secret: Mapping[str, Any], data: Mapping[str, str | None],
                   annotations: Mapping[str, str] | None = None) -> bool:
    meta: dict[str, Any] = {"resourceVersion": secret["metadata"]["resourceVersion"]}
    if annotations:
        meta["annotations"] = dict(annotations)
    try:
        kube.merge_patch("v1", "Secret", p.namespace, secret["metadata"]["name"],
                         {"metadata": meta, "data": dict(data)})
    except ApiException as exc:
        if exc.status != 409:  # changed under us: the next pass decides again
            raise
        return False
    return True


def ensure_signing(p: Pass, spec: MirrorSetSpec) -> list[dict[str, str]]:
    """The signing Secret (created once, rotated on request); returns the public keys to publish."""
    name = manifests.signing_secret_name(p.name)
    secret = kube.get("v1", "Secret", p.namespace, name)
    if secret is None:
        secret = _create_once(manifests.signing_secret(p.body, keys.new_signing_key(), None, {}))
        p.event("TokenKeyCreated", f"Created signing Secret {name}")
    signing, previous = _decode(secret, keys.SIGNING_FILE), _decode(secret, keys.PREVIOUS_FILE)
    current = keys.public_raw(signing) if signing else None
    if secret is None or current is None:
        p.problems.append(f"Secret {name} holds no Ed25519 {keys.SIGNING_FILE}")
        return []
    old = keys.public_raw(previous) if previous else None
    request = (p.body["metadata"].get("annotations") or {}).get(manifests.ROTATE_ANNOTATION)
    p.rotation = (secret["metadata"].get("annotations") or {}).get(manifests.ROTATED_REQUEST_ANNOTATION)
    step = plan.rotation_step(request, secret["metadata"].get("annotations") or {}, previous is not None, CLOCK(),
                              spec.tokens.valid_ttl)
    if step == plan.ROTATE and request and signing:
        fresh = keys.new_signing_key()
        new_pub = keys.public_raw(fresh)
        data = {keys.SIGNING_FILE: base64.b64encode(fresh).decode(),
                keys.PREVIOUS_FILE: base64.b64encode(signing).decode()}
        if new_pub and _patch_signing(p, secret, data, plan.rotation_annotations(request, CLOCK())):
            p.event("TokenKeyRotated", f"signing key {keys.key_id(current)} replaced by {keys.key_id(new_pub)} "
                                       f"({manifests.ROTATE_ANNOTATION}={request}); the old public key stays "
                                       "published for validTTL")
            old, current = current, new_pub
            p.rotation = request
    elif step == plan.DROP_PREVIOUS and old is not None:
        if _patch_signing(p, secret, {keys.PREVIOUS_FILE: None}):
            p.event("TokenKeyRetired", f"previous signing key {keys.key_id(old)} no longer published")
            old = None
    entries = [keys.public_entry(current)] + ([keys.public_entry(old)] if old is not None else [])
    p.key_ids = [e["kid"] for e in entries]
    return entries


def ensure_tls(p: Pass) -> None:
    """The service's CA (created once) and serving certificate (re-issued near expiry or on a change of names),
    and the public CA ConfigMap."""
    ca_name = manifests.ca_secret_name(p.name)
    ca_secret = kube.get("v1", "Secret", p.namespace, ca_name)
    if ca_secret is None:
        pair = certs.new_ca(p.namespace, manifests.service_name(p.name), CLOCK())
        ca_secret = _create_once(manifests.ca_secret(p.body, pair.cert, pair.key))
    ca_cert, ca_key = _decode(ca_secret, CA_CERT_FILE), _decode(ca_secret, CA_KEY_FILE)
    if ca_cert is None or ca_key is None or not certs.key_matches(ca_cert, ca_key):
        p.problems.append(f"Secret {ca_name} holds no matching {CA_CERT_FILE} and {CA_KEY_FILE}")
        return
    ca = certs.KeyPair(ca_cert, ca_key)
    dns = manifests.dns_names(p.namespace, p.name)
    live = kube.get("v1", "Secret", p.namespace, manifests.tls_secret_name(p.name))
    cert, key = _decode(live, TLS_CERT_FILE), _decode(live, TLS_KEY_FILE)
    if cert is None or key is None or not certs.key_matches(cert, key) or not certs.issued_by(cert, ca_cert) \
            or certs.renewal_reason(cert, CLOCK(), dns_names=dns) is not None:
        leaf = certs.issue(ca, manifests.certificate_identity(p.namespace, p.name), CLOCK(), certs.SERVING_LIFETIME,
                           dns_names=dns)
        kube.apply(manifests.tls_secret(p.body, leaf.cert, leaf.key, ca_cert))
        p.event("TokenServiceCertificateIssued", f"Issued Secret {manifests.tls_secret_name(p.name)}")
    kube.apply(manifests.ca_config_map(p.body, ca_cert.decode()))


def _members(p: Pass, spec: MirrorSetSpec) -> list[tuple[str, str]]:
    return [(p.namespace, spec.source)] + [(spec.mirror_namespace(m, p.namespace), m.shardset) for m in spec.mirrors]


def _member_pods(refs: list[tuple[str, str]]) -> tuple[list[manifests.MemberPods], str]:
    """Each member's pod IPs by shard, and their CA certificates concatenated (the service verifies nodes)."""
    out, cas = [], []
    for ns, name in refs:
        pods = shard_pods(ns, name)
        out.append(manifests.MemberPods(ns, name, {i: (pod.get("status") or {}).get("podIP") or None
                                                   for i, pod in pods.items()}))
        cm = kube.get("v1", "ConfigMap", ns, naming.ca_config_map_name(name))
        ca = ((cm or {}).get("data") or {}).get(CA_CERT_FILE)
        if ca:
            cas.append(ca if ca.endswith("\n") else ca + "\n")
    return out, "".join(cas)


def _image(p: Pass, spec: MirrorSetSpec) -> tuple[str, str] | None:
    """The source ShardSet's image (the token service is a console script of the same wheel)."""
    source = kube.get(naming.API_VERSION, "ShardSet", p.namespace, spec.source)
    if source is None:
        p.problems.append(f"ShardSet {p.namespace}/{spec.source} does not exist")
        return None
    try:
        parsed = parse_shardset(source.get("spec") or {})
    except SpecError:
        p.problems.append(f"ShardSet {p.namespace}/{spec.source} has an invalid spec")
        return None
    return parsed.image, parsed.image_pull_policy


def _publish(p: Pass, members: list[tuple[str, str]], published: str) -> None:
    """Wake the member ShardSets when the public document changed (they re-render tokens.json)."""
    uid = str(p.body["metadata"].get("uid") or p.name)
    if _PUBLISHED.get(uid) == published:
        return
    _PUBLISHED[uid] = published
    for ns, name in members:
        TRIGGERS.fire("ShardSet", ns, name)


def reconcile(body: Mapping[str, Any]) -> Pass:
    """Bring the token service's children to the wished state (blocking: API calls)."""
    p = Pass(body)
    try:
        spec = parse_mirrorset(body.get("spec") or {})
    except SpecError as exc:
        p.problems.append(f"invalid spec: {exc}")
        return p
    image = _image(p, spec)
    if image is None:
        return p
    public = ensure_signing(p, spec)
    ensure_tls(p)
    refs = _members(p, spec)
    members, members_ca = _member_pods(refs)
    identities = satoken.identities()
    kube.apply(manifests.service_account(p.body))
    kube.apply(manifests.cluster_role_binding(p.body))
    published = manifests.tokens_json(p.namespace, p.name, public, refs[0][0] + "/" + refs[0][1],
                                      [f"{ns}/{n}" for ns, n in refs])
    _RENDERED[str(body["metadata"].get("uid") or p.name)] = _operation_marker(body.get("status") or {})
    kube.apply(manifests.config_map(p.body, manifests.service_config(p.body, spec, members, body.get("status") or {}),
                                    manifests.security_config(p.namespace, p.name, identities, members),
                                    members_ca,
                                    published))
    kube.apply(manifests.service(p.body))
    kube.apply(manifests.statefulset(p.body, image[0], image[1], members))
    if public:
        _publish(p, refs, manifests.dump(published))
    return p


def _ready(namespace: str, mirrorset: str) -> bool:
    sts = kube.get("apps/v1", "StatefulSet", namespace, manifests.service_name(mirrorset))
    return int(((sts or {}).get("status") or {}).get("readyReplicas") or 0) >= 1


async def step(body: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str, str]], dict[str, int] | None]:
    """One pass: (``status.tokenService``, events, ``status.tokensIssued`` or None when not known)."""
    p = await asyncio.to_thread(reconcile, body)
    ready = await asyncio.to_thread(_ready, p.namespace, p.name)
    risk = await tokenlookup.read_risk(p.namespace, p.name) if ready else None
    issued = plan.tokens_issued(await tokenlookup.read_status(p.namespace, p.name)) if ready else None
    url = f"https://{naming.token_service_host(p.namespace, p.name)}:{naming.TOKEN_SERVICE_PORT}"
    status = plan.token_service_status(ready, url, p.key_ids, risk, "; ".join(p.problems) or None)
    if p.rotation is not None:
        status["rotationRequest"] = p.rotation
    return status, p.events, issued


def _without_none(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` as the API server stores it after a merge patch (null values removed, recursively)."""
    return {k: _without_none(v) if isinstance(v, Mapping) else v for k, v in doc.items() if v is not None}


@kopf.daemon(naming.GROUP, naming.VERSION, PLURAL, id="token_service", cancellation_timeout=10.0)
async def token_service_loop(name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped,
                             **_: Any) -> None:
    """Keep one MirrorSet's token service and its members' tokens.json in step."""
    ns = namespace_of("MirrorSet", name, namespace)

    async def one_pass(snap: dict[str, Any]) -> tuple[str, float]:
        snap["kind"] = "MirrorSet"  # the loop's snapshot carries the loop's key; owner references need the kind
        status, events, issued = await step(snap)
        old = snap.get("status") or {}
        if old.get("tokenService") != _without_none(status) or (issued is not None
                                                                 and old.get("tokensIssued") != issued):
            # A merge patch keeps keys it does not name: name the ones to drop (a resolved message) as null.
            patch: dict[str, Any] = {"tokenService": {**status, "message": status.get("message"),
                                                      "model": {**status["model"],
                                                                "source": status["model"].get("source")}}}
            if issued is not None:
                patch["tokensIssued"] = issued
            await asyncio.to_thread(kube.patch_status, naming.API_VERSION, "MirrorSet", ns, name, patch)
        post_events(body, events)
        return ("success" if status["ready"] and "message" not in status else "degraded"), (
            MISSING_SECONDS if "message" in status else PASS_SECONDS)

    await run_object_loop(LOOP_KIND, ns, name, body, stopped, one_pass)


@kopf.on.event(naming.GROUP, naming.VERSION, PLURAL, id="token_service_changed")
def token_service_changed(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """Wake the loop on a new rotation request (annotations do not bump the generation) and when the active member
    or the operation changed since the service's settings were rendered."""
    request = (body["metadata"].get("annotations") or {}).get(manifests.ROTATE_ANNOTATION)
    status = body.get("status") or {}
    handled = (status.get("tokenService") or {}).get("rotationRequest")
    uid = str(body["metadata"].get("uid") or name)
    moved = uid in _RENDERED and _RENDERED[uid] != _operation_marker(status)
    if (request is not None and request != handled) or moved:
        TRIGGERS.fire(LOOP_KIND, namespace or "", name)


@kopf.on.delete(naming.GROUP, naming.VERSION, PLURAL, id="token_service_deleted", optional=True)
def token_service_deleted(name: str, namespace: str | None, uid: str, body: kopf.Body, **_: Any) -> None:
    """Remove the cluster-scoped binding (nothing garbage-collects it) and wake the members, whose tokens.json goes
    with the MirrorSet; the namespaced children go with their owner reference."""
    ns = namespace or ""
    try:
        kube.delete("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "",
                    manifests.cluster_role_binding_name(ns, name))
    except ApiException as exc:
        log.warning("MirrorSet %s/%s deleted: cannot remove its token service binding: %s", ns, name,
                    kube.api_error_message(exc))
    _PUBLISHED.pop(uid, None)
    _RENDERED.pop(uid, None)
    tokenlookup.forget(ns, name)
    try:
        spec = parse_mirrorset(body.get("spec") or {})
    except SpecError:
        return
    for m in [(ns, spec.source)] + [(spec.mirror_namespace(x, ns), x.shardset) for x in spec.mirrors]:
        TRIGGERS.fire("ShardSet", *m)

