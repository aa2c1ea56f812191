"""Read the MirrorSets of the cluster and find the one a ShardSet belongs to (API I/O only), and remember each
member's peers so a change of one member's CA can wake the others.

Shared by the ShardSet controller (member pods), the KeyRotation controller (a mirror's rotation is refused) and
the MirrorSet controller. The decision itself is ``mirrorselect.select_mirrorset`` (pure).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kubernetes.client.exceptions import ApiException

from . import kube, naming
from .mirrorselect import MemberRef, MirrorMembership, select_mirrorset
from .settings import RUNTIME

KIND = "MirrorSet"
log = logging.getLogger(__name__)


def list_mirrorsets() -> list[dict[str, Any]]:
    """Every MirrorSet the operator may read: cluster-wide, or in each watched namespace (glob patterns cannot be
    listed, so a namespaced operator sees the MirrorSets of the namespaces it names exactly). [] without the CRD."""
    try:
        if RUNTIME.clusterwide:
            return kube.list_all_namespaces(naming.API_VERSION, KIND)
        out: list[dict[str, Any]] = []
        for ns in RUNTIME.namespaces:
            if not any(c in ns for c in "*?["):
                out += kube.list_objects(naming.API_VERSION, KIND, ns)
        return out
    except ApiException as exc:
        if exc.status == 404:  # CRD not installed (e.g. only shardsets.yaml applied): no mirroring
            return []
        raise


def mirror_membership(namespace: str, shardset: str) -> MirrorMembership:
    """The MirrorSet ``namespace/shardset`` belongs to (as source or mirror) with its members; empty when none."""
    return select_mirrorset(list_mirrorsets(), namespace, shardset)


class PeerRegistry:
    """Each member ShardSet's peers as its last pass saw them (passes run in threads, watch events on the loop):
    lets the watch of a member's CA ConfigMap wake the members that trust that CA."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peers: dict[MemberRef, tuple[MemberRef, ...]] = {}
        self._mirrorset: dict[MemberRef, tuple[str, str]] = {}

    def remember(self, namespace: str, shardset: str, membership: MirrorMembership) -> None:
        """Record the peers (and MirrorSet) of ``namespace/shardset``; forget it when it is no member."""
        me = MemberRef(namespace, shardset)
        with self._lock:
            if membership.is_member and membership.namespace is not None and membership.name is not None:
                self._peers[me] = membership.peers(namespace, shardset)
                self._mirrorset[me] = (membership.namespace, membership.name)
            else:
                self._peers.pop(me, None)
                self._mirrorset.pop(me, None)

    def trusting(self, namespace: str, shardset: str) -> tuple[MemberRef, ...]:
        """The members whose pods trust ``namespace/shardset``'s CA (those listing it as a peer)."""
        me = MemberRef(namespace, shardset)
        with self._lock:
            return tuple(sorted(m for m, peers in self._peers.items() if me in peers))

    def members_of(self, namespace: str, name: str) -> tuple[MemberRef, ...]:
        """The ShardSets whose last pass found them in MirrorSet ``namespace/name``."""
        with self._lock:
            return tuple(sorted(m for m, ms in self._mirrorset.items() if ms == (namespace, name)))


PEERS = PeerRegistry()
