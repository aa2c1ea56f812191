"""The ShardSet controller: Kopf handlers and the reconcile that applies the pure manifests.

One daemon per ShardSet runs the reconcile loop; it wakes when the ShardSet's spec changes, when any child
changes or disappears (watch on labelled children → wake the owner), and every ``RESYNC_SECONDS``.
The keyring Secret is created once and never overwritten: key material is only ever changed by a
KeyRotation. On deletion the keyring is orphaned, not deleted, because the shards' volumes are retained and
are unreadable without it; re-creating a ShardSet of the same name adopts both. With
``spec.keyEncryption.provider: embedded`` the keyring's versions are wrapped under a key-encryption key: the
operator's ``<name>-kek`` Secret (created once, orphaned like the keyring) or the user's ``kekSecretRef``, which
must exist and hold a 32-byte ``kek.key`` before any keyring is created.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import fnmatch
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from chronoshard.shardnode.keyspace import partitioning
from kubernetes.client.exceptions import ApiException

from .. import kube, naming, reshardplan
from ..conditions import conditions_equal_ignoring_time
from ..keyring import (
    KeyringManifest,
    initial_keyring_data,
    new_kek_data,
    parse_kek,
    parse_manifest,
    versions_not_unwrapping,
    wrapped_versions,
)
from ..loop import namespace_of, post_events, run_object_loop
from ..metrics import set_key_version
from ..mirrorlookup import PEERS, mirror_membership
from ..mirrorselect import MemberRef, MirrorMembership, members_of
from ..podcontract import CA_CERT_FILE, PARTITION_MAP_FILE, pod_identity
from ..prefetchlookup import policy_in_force
from ..reshardlookup import reshard_running
from ..settings import RUNTIME
from ..shadowlookup import shadow_policy_in_force
from ..shardpods import shard_pods
from ..spec.common import SpecError
from ..spec.mirrorset import parse_mirrorset
from ..spec.shardset import ShardSetSpec, parse_shardset
from ..tokenlookup import member_tokens
from ..triggers import TRIGGERS
from ..weavelookup import weave_plan_in_force
from . import manifests, tlsassets
from .applied import APPLIED
from .secrets import adopt, create_once
from .status import Observed, shardset_status

KIND = "ShardSet"
PLURAL = "shardsets"
RESYNC_SECONDS = 30.0
# A user's kekSecretRef Secret is not a labelled child, so no watch wakes the loop when it is fixed: look sooner.
KEK_RETRY_SECONDS = 5.0
KEK_PROBLEMS = ("KEKMissing", "KEKInvalid", "KEKMismatch", "KeyringWrapped", "BootstrapSecretMissing")
BLOCKING = ("InvalidImage", "StorageClassNotFound", "KeyringInvalid", *KEK_PROBLEMS, *tlsassets.BLOCKING)
MANAGED = {"app.kubernetes.io/managed-by": naming.MANAGER}

# docker/OCI reference: [registry[:port]/]path[:tag][@digest]; catches typos like spaces or "::".
_IMAGE_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]{1,2}[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]{1,2}[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)

log = logging.getLogger(__name__)


@dataclass
class ReconcileResult:
    """What one reconcile did: events to post and the status it wrote."""

    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    status: dict[str, Any] | None = None
    outcome: str = "success"
    delay: float = RESYNC_SECONDS


def _selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(naming.selector_labels(name).items()))


def _ensure_kek(owner: Mapping[str, Any], spec: ShardSetSpec, result: ReconcileResult,
                problems: list[tuple[str, str]]) -> bytes | None:
    """The KEK bytes for a wrapped keyring (None with provider none, or with a problem recorded)."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    secret_name = manifests.kek_secret_in_use(name, spec)
    if secret_name is None:
        return None
    existing = kube.get("v1", "Secret", ns, secret_name)
    if spec.key_encryption.kek_secret is not None:
        # The user's Secret: read it, never create or adopt it.
        if existing is None:
            problems.append(("KEKMissing", f"Secret {secret_name} (spec.keyEncryption.kekSecretRef.name) does not "
                                           "exist; the keyring is created once it holds a 32-byte kek.key"))
            return None
    else:
        if existing is None:
            existing = _create_kek(owner, spec, secret_name, result, problems)
            if existing is None:
                return None
        try:
            adopt(owner, existing, result.events, "key-encryption key", "KEKAdopted")
        except ValueError as exc:
            problems.append(("KEKInvalid", str(exc)))
            return None
    try:
        return parse_kek(existing.get("data"), secret_name)
    except ValueError as exc:
        problems.append(("KEKInvalid", f"{exc}; the KEK must be 32 bytes"))
        return None


def _create_kek(owner: Mapping[str, Any], spec: ShardSetSpec, secret_name: str, result: ReconcileResult,
                problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    """Create ``<name>-kek`` once: a copy of the source's KEK when the spec bootstraps with one, else a new key."""
    source_kek = spec.from_shadow.kek_secret if spec.from_shadow is not None else None
    if source_kek is None:
        return create_once(manifests.kek_secret(owner, new_kek_data()), result.events,
                           ("Normal", "KEKCreated", f"Created key-encryption key Secret {secret_name}"))
    data = _bootstrap_secret_data(owner, spec, "kek", problems)
    if data is None:
        return None
    return create_once(manifests.kek_secret(owner, data), result.events,
                       ("Normal", "KEKCopied", f"Created key-encryption key Secret {secret_name} from the source's "
                                               f"Secret {source_kek}"))


def _bootstrap_secret_data(owner: Mapping[str, Any], spec: ShardSetSpec, which: str,
                           problems: list[tuple[str, str]]) -> dict[str, str] | None:
    """The data of the source's keyring or KEK Secret named by spec.bootstrap.fromShadow; None when the spec
    names none (``kek`` only) or it is missing (then a problem is recorded)."""
    source = spec.from_shadow
    if source is None:
        return None
    name = source.keyring_secret if which == "keyring" else source.kek_secret
    if name is None:
        return None
    secret = kube.get("v1", "Secret", owner["metadata"]["namespace"], name)
    if secret is None or not secret.get("data"):
        field = "keyringSecret" if which == "keyring" else "kekSecret"
        problems.append(("BootstrapSecretMissing",
                         f"Secret {name} (spec.bootstrap.fromShadow.{field}.name) does not exist or is empty; the "
                         "shards are restored once it holds the source's " + which))
        return None
    return dict(secret["data"])


def _ensure_keyring(owner: Mapping[str, Any], spec: ShardSetSpec, kek: bytes | None, result: ReconcileResult,
                    problems: list[tuple[str, str]]) -> tuple[KeyringManifest | None, tuple[int, ...]]:
    """Create the keyring once (wrapped under ``kek`` when the spec says so), adopt it, and check it fits the KEK.

    Returns the manifest (None while no keyring can be made) and the ids of the versions stored wrapped.
    """
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    secret_name = naming.keyring_secret_name(name)
    existing = kube.get("v1", "Secret", ns, secret_name)
    if existing is None and spec.from_shadow is not None:
        # A restored ShardSet reads data sealed under the source's keys: its keyring is a copy of the source's.
        copied = _bootstrap_secret_data(owner, spec, "keyring", problems)
        if copied is None:
            return None, ()
        parse_manifest(copied)  # refuse (KeyringInvalid) a Secret that is not a keyring before copying it
        existing = create_once(manifests.keyring_secret(owner, copied), result.events,
                                ("Normal", "KeyringCopied", f"Created keyring Secret {secret_name} from the "
                                                            f"source's Secret {spec.from_shadow.keyring_secret}"))
    if existing is None:
        if spec.key_encryption.wrapped and kek is None:
            return None, ()  # the KEK's problem is reported; a keyring made now would have no KEK to match
        data = initial_keyring_data(spec.key_algorithm, kek=kek if spec.key_encryption.wrapped else None)
        form = "wrapped" if spec.key_encryption.wrapped else "unwrapped"
        existing = create_once(manifests.keyring_secret(owner, data), result.events,
                                ("Normal", "KeyringCreated",
                                 f"Created keyring Secret {secret_name} with key version 1 ({form})"))
    manifest = parse_manifest(existing.get("data"))
    adopt(owner, existing, result.events, "keyring", "KeyringAdopted")
    data = existing.get("data") or {}
    wrapped = wrapped_versions(data)
    if wrapped and not spec.key_encryption.wrapped:
        problems.append(("KeyringWrapped", f"keyring Secret {secret_name} holds wrapped key version(s) "
                                           f"{list(wrapped)}, but spec.keyEncryption.provider is none: the shards "
                                           "would have no KEK to unwrap them"))
    elif wrapped and kek is not None:
        bad = versions_not_unwrapping(data, kek)
        if bad:
            problems.append(("KEKMismatch", f"key version(s) {bad} in keyring Secret {secret_name} do not unwrap "
                                            f"under the KEK in Secret {manifests.kek_secret_in_use(name, spec)}"))
    return manifest, wrapped


def _ensure_partition_map(owner: Mapping[str, Any], spec: ShardSetSpec, result: ReconcileResult,
                          problems: list[tuple[str, str]]) -> partitioning.PartitionMap:
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    cm_name = naming.partitions_config_map_name(name)
    existing = kube.get("v1", "ConfigMap", ns, cm_name)
    version = None
    current: partitioning.PartitionMap | None = None
    if existing is None or PARTITION_MAP_FILE not in (existing.get("data") or {}):
        pmap = partitioning.initial_map(spec.shards)
        result.events.append(("Normal", "PartitionMapCreated",
                              f"Partition map epoch {pmap.epoch}: {spec.shards} equal range(s), one per shard"))
    else:
        current = partitioning.PartitionMap.from_json(existing["data"][PARTITION_MAP_FILE])
        version = existing["metadata"].get("resourceVersion")
        mover = reshard_running(ns, name) if spec.shards != current.shards else None
        if mover is not None:
            # The Reshard pushes maps of the next epochs: a rescale now would make a second map of one epoch.
            reason = "ScaleDownWaitingForReshard" if spec.shards < current.shards else "ScaleWaitingForReshard"
            problems.append((reason, f"Reshard {mover} is changing the partition map; the ShardSet keeps "
                                     f"{current.shards} shard(s) until it ends"))
            pmap = current
        elif spec.rebalance:
            pmap = _rebalance(owner, spec, current, problems)
        else:
            pmap = _rescale(spec, current, problems)
        if pmap.epoch != current.epoch:
            result.events.append(("Normal", "PartitionMapUpdated",
                                  f"Partition map epoch {pmap.epoch}: {pmap.shards} shard(s)"))
    manifest = manifests.partitions_config_map(owner, pmap.to_json())
    if version:
        # A Reshard writes this map at every cutover: the apply is conditional on the version just read, so this
        # pass never puts back an older epoch (a 409 means the map moved on: the change wakes the next pass).
        manifest["metadata"]["resourceVersion"] = version
    try:
        APPLIED.apply(manifest)
    except ApiException as exc:
        if exc.status != 409:
            raise
        result.delay = 1.0
        return current or pmap  # not written: the map in force is still the one read; plan nothing on it
    if spec.rebalance and version:
        _ensure_rebalance(owner, spec, pmap, problems)
    return pmap


def _rescale(spec: ShardSetSpec, current: partitioning.PartitionMap, problems: list[tuple[str, str]]
             ) -> partitioning.PartitionMap:
    """Without rebalance: new shards own nothing; a scale-down stranding partitions is refused."""
    try:
        return partitioning.rescale(current, spec.shards)
    except partitioning.StrandedPartitionsError as exc:
        problems.append(("ScaleDownRefused", f"{exc}. The ShardSet keeps {current.shards} shard(s); "
                                             "move the partitions first or restore spec.shards"))
        return current


def _rebalance(owner: Mapping[str, Any], spec: ShardSetSpec, current: partitioning.PartitionMap,
               problems: list[tuple[str, str]]) -> partitioning.PartitionMap:
    """With rebalance: scale-up adds the (empty) shards at once; a scale-down keeps the old count until a Reshard
    moved every partition off the shards being removed."""
    if spec.shards >= current.shards or not [s for s in partitioning.owning_shards(current) if s >= spec.shards]:
        return partitioning.rescale(current, spec.shards)
    problems.append(("ScaleDownWaitingForReshard",
                     f"shards {spec.shards}..{current.shards - 1} still own partitions: the ShardSet keeps "
                     f"{current.shards} shard(s) until a Reshard has moved them onto the other shards"))
    return current


def _ensure_rebalance(owner: Mapping[str, Any], spec: ShardSetSpec, pmap: partitioning.PartitionMap,
                      problems: list[tuple[str, str]]) -> None:
    """Create ``<name>-rebalance-<epoch>`` when the map is not balanced over spec.shards and no Reshard of this
    ShardSet is in progress; a failed one is reported, not retried with the same map."""
    if reshardplan.balanced(pmap, spec.shards):
        return
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    try:
        reshards = [r for r in kube.list_objects(naming.API_VERSION, "Reshard", ns)
                    if ((r.get("spec") or {}).get("shardSetRef") or {}).get("name") == name]
    except ApiException as exc:
        if exc.status == 404:  # the Reshard CRD is not installed
            problems.append(("RebalanceUnavailable", "spec.partitioning.rebalance needs the Reshard CRD"))
            return
        raise
    wanted = manifests.rebalance_reshard_name(name, pmap.epoch)
    if any((r.get("status") or {}).get("phase") not in ("Completed", "Failed", "RolledBack") for r in reshards):
        return  # one layout change at a time: look again when it ends (the map it writes wakes this ShardSet)
    mine = next((r for r in reshards if r["metadata"]["name"] == wanted), None)
    if mine is not None:
        problems.append(("RebalanceFailed", f"Reshard {wanted} ended {mine['status'].get('phase')}; the keyspace "
                                            "is not balanced (delete the Reshard to plan again)"))
        return
    steps = reshardplan.rebalance_steps(pmap, min(spec.shards, pmap.shards))
    if steps:
        kube.create(manifests.rebalance_reshard(owner, pmap.epoch, steps, spec.rebalance_grace_period))
        log.info("ShardSet %s/%s: created Reshard %s (%d step(s))", ns, name, wanted, len(steps))


def _keep_immutable_claims(desired: dict[str, Any], live: Mapping[str, Any] | None,
                           problems: list[tuple[str, str]]) -> None:
    """volumeClaimTemplates cannot change on a StatefulSet: keep the live ones and say so."""
    if live is None:
        return
    live_claims = live["spec"].get("volumeClaimTemplates") or []

    def essence(claims: list[Mapping[str, Any]]) -> list[tuple[Any, Any]]:
        return [(c["spec"].get("resources"), c["spec"].get("storageClassName")) for c in claims]

    if essence(live_claims) != essence(desired["spec"]["volumeClaimTemplates"]):
        problems.append(("StorageChangeNotApplied",
                         "spec.storage changed, but a StatefulSet's volume claims are immutable; existing "
                         "shards keep their volumes (expand the PVCs directly or recreate the ShardSet)"))
        desired["spec"]["volumeClaimTemplates"] = [
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": c["metadata"]["name"], "labels": c["metadata"].get("labels", {})},
             "spec": {k: v for k, v in c["spec"].items() if k in ("accessModes", "resources", "storageClassName")}}
            for c in live_claims
        ]


def _peers_ca(peers: tuple[MemberRef, ...]) -> str:
    """The peers' public CA certificates (their ``<name>-ca`` ConfigMaps), concatenated in member order; a peer
    whose ConfigMap does not exist yet is left out until it does (its creation wakes this ShardSet)."""
    pems = []
    for peer in peers:
        cm = kube.get("v1", "ConfigMap", peer.namespace, naming.ca_config_map_name(peer.name))
        pem = ((cm or {}).get("data") or {}).get(CA_CERT_FILE)
        if pem:
            pems.append(pem if pem.endswith("\n") else pem + "\n")
    return "".join(pems)


def _ensure_replication(owner: Mapping[str, Any], membership: MirrorMembership, live_sts: Mapping[str, Any] | None,
                        problems: list[tuple[str, str]]) -> None:
    """A MirrorSet member: the other members' CAs for its node, and the Role its pods hold their Leases with. A
    ShardSet that left its MirrorSet (its live pods still mount the CAs) loses them, so no right outlives it."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    if membership.conflicting:
        problems.append(("MirrorSetConflict", f"MirrorSet(s) {', '.join(membership.conflicting)} also name this "
                                              f"ShardSet; only the oldest, {membership.namespace}/{membership.name}, "
                                              "takes effect"))
    if not membership.is_member:
        if live_sts is not None and _mounts_replication(live_sts):
            _drop_replication(ns, name)
        return
    APPLIED.apply(manifests.replication_config_map(owner, _peers_ca(membership.peers(ns, name))))
    APPLIED.apply(manifests.lease_role(owner))
    APPLIED.apply(manifests.lease_role_binding(owner))


def _mounts_replication(sts: Mapping[str, Any]) -> bool:
    volumes = ((((sts.get("spec") or {}).get("template") or {}).get("spec") or {}).get("volumes") or [])
    return any(v.get("name") == manifests.REPLICATION_VOLUME for v in volumes)


def _drop_replication(ns: str, name: str) -> None:
    for api_version, kind, child in (("v1", "ConfigMap", naming.replication_config_map_name(name)),
                                     ("rbac.authorization.k8s.io/v1", "RoleBinding", naming.lease_role_name(name)),
                                     ("rbac.authorization.k8s.io/v1", "Role", naming.lease_role_name(name))):
        if kube.delete(api_version, kind, ns, child):
            log.info("ShardSet %s/%s is in no MirrorSet any more: deleted %s %s", ns, name, kind, child)


def reconcile(owner: Mapping[str, Any]) -> ReconcileResult:
    """Bring a ShardSet's children to the wished state and compute its status (blocking; run in a thread)."""
    result = ReconcileResult()
    meta = owner["metadata"]
    name, ns, gen = meta["name"], meta["namespace"], int(meta.get("generation") or 1)
    problems: list[tuple[str, str]] = []
    previous = owner.get("status") or {}
    try:
        spec = parse_shardset(owner.get("spec") or {})
    except SpecError as exc:
        problems.append(("InvalidSpec", str(exc)))
        desired = int((owner.get("spec") or {}).get("shards") or 0)
        sts = kube.get("apps/v1", "StatefulSet", ns, naming.statefulset_name(name))
        result.status = shardset_status(Observed(gen, desired, sts, None, previous.get("partitionMap"), problems),
                                        previous)
        result.outcome = "invalid"
        return result

    if not _IMAGE_RE.match(spec.image):
        problems.append(("InvalidImage", f"spec.image {spec.image!r} is not a valid image reference"))
    if spec.storage_class and not kube.storage_class_exists(spec.storage_class):
        problems.append(("StorageClassNotFound",
                         f"StorageClass {spec.storage_class!r} (spec.storage.storageClassName) does not exist"))

    keyring: KeyringManifest | None = None
    wrapped: tuple[int, ...] = ()
    kek = _ensure_kek(owner, spec, result, problems)
    try:
        keyring, wrapped = _ensure_keyring(owner, spec, kek, result, problems)
    except ValueError as exc:
        problems.append(("KeyringInvalid", str(exc)))

    pmap = _ensure_partition_map(owner, spec, result, problems)
    shards = pmap.shards  # a refused scale-down keeps the map's (and so the StatefulSet's) shard count
    # The certificate names every shard and the pod IPs seen, before the StatefulSet brings new pods.
    pod_ips = [(p.get("status") or {}).get("podIP") or "" for p in shard_pods(ns, name).values()]
    # A MirrorSet member's pods accept the other members' pods on the replication routes (docs/mirroring.md),
    # and its token service as the operator: they trust its CA, verify its tokens (docs/tokens.md).
    membership = mirror_membership(ns, name)
    PEERS.remember(ns, name, membership)
    tokens = member_tokens(ns, name, membership) if membership.is_member else None
    tlsassets.ensure_tls(owner, spec, shards, pod_ips, result.events, problems,
                         tokens.ca_pem.encode() if tokens else b"")
    peers = membership.peers(ns, name)
    tokens_at = ((membership.namespace, membership.name)
                 if membership.is_member and membership.namespace and membership.name else None)
    tlsassets.ensure_access(owner, spec, [(p.namespace, p.name) for p in peers], tokens_at)

    # The oldest valid PrefetchPolicy naming this ShardSet turns prefetching on; the others report a Conflict.
    prefetch = policy_in_force(ns, name)
    # Likewise the oldest valid ShadowPolicy adds the shadow container and shadow.json.
    shadow = shadow_policy_in_force(ns, name).spec
    # And the oldest valid WeavePlan adds the weaver container and weave.json (docs/weaving.md).
    weave = weave_plan_in_force(ns, name)
    replicas = tuple(pod_identity(p.namespace, p.name) for p in peers)
    # A MirrorSet member's pods verify its token service's tokens and accept its revocation pushes (docs/tokens.md).
    APPLIED.apply(manifests.config_map(owner, spec, prefetch=prefetch.spec,
                                       operator_identities=tlsassets.operator_identities()
                                       + (tokens.identities if tokens else ()), shadow=shadow,
                                       replica_identities=replicas, weave=weave,
                                       tokens_json=tokens.tokens_json if tokens else None))
    APPLIED.apply(manifests.headless_service(owner))
    APPLIED.apply(manifests.client_service(owner))
    APPLIED.apply(manifests.pod_disruption_budget(owner, spec))

    live_sts = kube.get("apps/v1", "StatefulSet", ns, naming.statefulset_name(name))
    _ensure_replication(owner, membership, live_sts, problems)
    blocking = [p for p in problems if p[0] in BLOCKING]
    if blocking:
        # Do not roll pods onto a spec that cannot work; the current pods (if any) keep serving.
        sts = live_sts
    else:
        effective = spec if shards == spec.shards else _with_shards(spec, shards)
        desired_sts = manifests.statefulset(owner, effective, shadow, replication=membership.is_member,
                                            zone=membership.zone(ns, name), weave=weave)
        _keep_immutable_claims(desired_sts, live_sts, problems)
        # Skipped when unchanged: the live StatefulSet just read is then what the apply would have returned.
        sts = APPLIED.apply(desired_sts, always=live_sts is None) or live_sts
        if live_sts is None:
            result.events.append(("Normal", "StatefulSetCreated", f"Created StatefulSet {name} with {shards} shard(s)"))
        elif live_sts["spec"].get("replicas") != shards:
            result.events.append(("Normal", "Scaling",
                                  f"Scaling from {live_sts['spec'].get('replicas')} to {shards} shard(s)"))

    # The status carries what the CRD's status schema declares (epoch and partitions); the full map is in the
    # ConfigMap.
    map_status = {"epoch": pmap.epoch, "partitions": [p.to_dict() for p in pmap.partitions]}
    status = shardset_status(Observed(gen, shards, sts, keyring, map_status, problems, wrapped_versions=wrapped),
                             previous)
    status["selector"] = _selector_string(name)
    if keyring is not None and keyring.primary is not None:
        set_key_version(ns, name, keyring.primary)
    result.status = status
    if problems:
        result.outcome = "degraded"
    if any(p[0] in KEK_PROBLEMS for p in problems):
        result.delay = KEK_RETRY_SECONDS
    return result


# A pass and the deletion handler of one ShardSet never overlap: a pass that was running when the ShardSet was
# deleted would otherwise re-apply the cluster-scoped ClusterRoleBinding the handler just removed.
_PASS_LOCKS: dict[str, threading.Lock] = {}
_PASS_LOCKS_GUARD = threading.Lock()
_DELETED: set[str] = set()  # uids whose deletion handler ran: their passes do nothing any more
DELETE_WAIT_SECONDS = 30.0


def _pass_lock(uid: str) -> threading.Lock:
    with _PASS_LOCKS_GUARD:
        return _PASS_LOCKS.setdefault(uid, threading.Lock())


def _reconcile_unless_deleted(owner: Mapping[str, Any]) -> ReconcileResult:
    uid = owner["metadata"]["uid"]
    with _pass_lock(uid):
        if uid in _DELETED:
            return ReconcileResult(outcome="deleted", delay=1.0)
        return reconcile(owner)


def _with_shards(spec: ShardSetSpec, shards: int) -> ShardSetSpec:
    from dataclasses import replace

    return replace(spec, shards=shards)


def _status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    strip = lambda s: {k: v for k, v in s.items() if k != "conditions"}  # noqa: E731
    if strip(old) != strip(new):
        return True
    return not conditions_equal_ignoring_time(old.get("conditions") or [], new.get("conditions") or [])


def write_status(owner: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Patch the ShardSet's status when it differs (ignoring condition timestamps); True if written."""
    if not _status_changed(owner.get("status") or {}, status):
        return False
    meta = owner["metadata"]
    return kube.patch_status(naming.API_VERSION, KIND, meta["namespace"], meta["name"], status)


# Passes block on the API server (the sync client), so they run in threads: a pool of their own, sized for waiting
# on I/O, not for CPU. In asyncio's default pool (cores + 4 threads: 6 on two cores) each pass's status write queued
# behind every other pass a second time. 1,000 new ShardSets on two shared cores converged 121 s after the last create
# with 6 threads, 90 s with 12, 137-181 s with 32 (more threads contend for the GIL and the API server, and each
# call slows down more than the extra concurrency gains).
PASS_THREADS = 12
_PASSES = concurrent.futures.ThreadPoolExecutor(max_workers=PASS_THREADS, thread_name_prefix="shardset-pass")


def _pass(snap: Mapping[str, Any]) -> ReconcileResult:
    """One pass in one thread: reconcile, then write the status it computed right away."""
    result = _reconcile_unless_deleted(snap)
    if result.status is not None:
        write_status(snap, result.status)
    return result


@kopf.daemon(naming.GROUP, naming.VERSION, PLURAL, cancellation_timeout=10.0)
async def shardset_loop(name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped,
                        **_: Any) -> None:
    """Reconcile one ShardSet whenever something relevant changes, and at least every RESYNC_SECONDS."""
    last_problems: set[str] = set()

    async def one_pass(snap: dict[str, Any]) -> tuple[str, float]:
        nonlocal last_problems
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(_PASSES, contextvars.copy_context().run, _pass, snap)
        if result.status is not None:
            problems = {c["reason"] + ": " + c["message"] for c in result.status["conditions"]
                        if c["type"] == "Degraded" and c["status"] == "True"}
            for p in problems - last_problems:
                result.events.append(("Warning", p.split(":", 1)[0], p.split(": ", 1)[1]))
            last_problems = problems
        post_events(body, result.events)
        return result.outcome, result.delay

    await run_object_loop(KIND, namespace_of(KIND, name, namespace), name, body, stopped, one_pass)


# The event handlers are coroutines: each only sets an asyncio.Event, which a sync handler would do from Kopf's
# thread pool (one thread hop per event, thousands of events for a thousand ShardSets, and Event.set() is not
# thread-safe: a loop busy elsewhere could see the wake-up late).
@kopf.on.event(naming.GROUP, naming.VERSION, PLURAL)
async def shardset_changed(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """Wake the loop when the spec moved past what the status has observed."""
    observed = (body.get("status") or {}).get("observedGeneration")
    if observed != body["metadata"].get("generation"):
        TRIGGERS.fire(KIND, namespace_of(KIND, name, namespace), name)


def _wake_trusting_members(child: Mapping[str, Any]) -> None:
    """A member's ``<name>-ca`` ConfigMap changed: the other members of its MirrorSet rewrite their peers-ca.crt."""
    meta = child.get("metadata") or {}
    labels = meta.get("labels") or {}
    if child.get("kind") != "ConfigMap" or labels.get("app.kubernetes.io/component") != "ca":
        return
    for member in PEERS.trusting(str(meta.get("namespace", "")), str(labels.get("app.kubernetes.io/instance", ""))):
        TRIGGERS.fire(KIND, member.namespace, member.name)


async def _child_changed(body: kopf.Body, event: kopf.RawEvent, **_: Any) -> None:
    APPLIED.observed(body, event.get("type"))
    _wake_trusting_members(body)
    if TRIGGERS.fire_owner(body) is None:
        # cert-manager's Secret has no ownerReference to us, only the labels the Certificate asked for.
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get("app.kubernetes.io/component") == "tls" and labels.get("app.kubernetes.io/instance"):
            TRIGGERS.fire(KIND, meta.get("namespace", ""), labels["app.kubernetes.io/instance"])


CHILD_RESOURCES = (
    ("", "v1", "secrets"),
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("apps", "v1", "statefulsets"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("", "v1", "serviceaccounts"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    # A MirrorSet member's Lease Role and its binding.
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
)
for _group, _version, _plural in CHILD_RESOURCES:
    kopf.on.event(_group, _version, _plural, labels=MANAGED)(_child_changed)

# The spec generation of each MirrorSet last seen (by uid): its status changes every pass, its members rarely.
_MIRRORSET_GENERATIONS: dict[str, Any] = {}


@kopf.on.event(naming.GROUP, naming.VERSION, "mirrorsets")
async def mirrorset_changed(type: str | None, name: str, namespace: str | None, body: kopf.Body,
                            **_: Any) -> None:
    """Wake the members (old and new) of a MirrorSet created, changed or deleted: their pods' peers change."""
    meta = body.get("metadata") or {}
    uid, generation = str(meta.get("uid", "")), meta.get("generation")
    if type != "DELETED" and _MIRRORSET_GENERATIONS.get(uid) == generation:
        return
    if type == "DELETED":
        _MIRRORSET_GENERATIONS.pop(uid, None)
    else:
        _MIRRORSET_GENERATIONS[uid] = generation
    ns = namespace or ""
    members = set(PEERS.members_of(ns, name))
    try:
        members.update(members_of(ns, parse_mirrorset(body.get("spec"))))
    except SpecError:
        pass  # an invalid MirrorSet names no members; the ones it had (above) drop out of it
    for member in members:
        TRIGGERS.fire(KIND, member.namespace, member.name)


@kopf.on.startup()
def watch_only_managed_children(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Let the API server filter the children's watches by our label: the handlers above take nothing else, and
    without the selector every Secret, ConfigMap and Service of the cluster is streamed to this process and
    dropped here (no other handler of the operator watches these resources)."""
    selector = ",".join(f"{k}={v}" for k, v in MANAGED.items())
    for group, version, plural in CHILD_RESOURCES:
        settings.watching.label_selectors[group, version, plural] = selector


@kopf.on.delete(naming.GROUP, naming.VERSION, PLURAL, optional=False)
def shardset_deleted(name: str, namespace: str | None, uid: str, **_: Any) -> None:
    """Orphan the keyring, KEK and CA Secrets so the retained shard volumes stay readable (and a re-created
    ShardSet keeps its CA); remove the cluster-scoped ClusterRoleBinding; everything else is GC'd."""
    namespace = namespace_of(KIND, name, namespace)
    lock = _pass_lock(uid)
    acquired = lock.acquire(timeout=DELETE_WAIT_SECONDS)  # let a pass in flight finish first
    try:
        _DELETED.add(uid)
        tlsassets.delete_cluster_role_binding(namespace, name)
    finally:
        if acquired:
            lock.release()
    for secret_name in (naming.keyring_secret_name(name), naming.kek_secret_name(name),
                        naming.ca_secret_name(name)):
        secret = kube.get("v1", "Secret", namespace, secret_name)
        if secret is None:
            continue
        refs = [r for r in secret["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
        kube.merge_patch("v1", "Secret", namespace, secret_name, {"metadata": {"ownerReferences": refs or None}})
        log.info("ShardSet %s/%s deleted: kept Secret %s for its retained volumes", namespace, name, secret_name)


@kopf.on.startup()
def sweep_orphaned_bindings(**_: Any) -> None:
    """Remove ClusterRoleBindings of ShardSets deleted while no operator ran (best effort)."""
    def exists(namespace: str, name: str) -> bool:
        # Only ShardSets this operator serves are its to judge; a read it may not make counts as "exists".
        if not RUNTIME.clusterwide and not any(fnmatch.fnmatchcase(namespace, p) for p in RUNTIME.namespaces):
            return True
        try:
            return kube.get(naming.API_VERSION, KIND, namespace, name) is not None
        except ApiException:
            return True

    try:
        removed = tlsassets.sweep_cluster_role_bindings(exists)
    except ApiException as exc:
        log.warning("cannot sweep orphaned ClusterRoleBindings: %s", kube.api_error_message(exc))
        return
    for crb in removed:
        log.info("removed ClusterRoleBinding %s: its ShardSet is gone", crb)
