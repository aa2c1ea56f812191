"""The primary's Lease (docs/mirroring.md, "Fencing before promotion"): with ``lease`` in its role document a
primary node creates or renews the coordination.k8s.io/v1 Lease every ``durationSeconds/3`` through the API server
connection the auth layer uses (in-cluster, else $KUBECONFIG); it refuses client writes (503 ``lease_lost``)

- while no renewal has succeeded for 2/3 of the duration (and before the first one), until one succeeds;
- once it found the Lease held by another holder, until a new role document arrives (the operator took it over
  for another primary: this node never takes it back by itself).

``plan`` (what to do with the Lease as read) and ``LeaseStatus`` (whether writes are refused now) are pure; the
HTTP calls are ``LeaseClient``; ``LeaseKeeper`` runs the loop and is the write gate.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from chronoshard.shardnode.auth.apiserver import ApiServerConnection, load_connection
from chronoshard.shardnode.serving.http_common import ApiError

from .role import PRIMARY, Role

log = logging.getLogger(__name__)

MICROTIME = "%Y-%m-%dT%H:%M:%S.%fZ"
# The holder the operator writes into a dead primary's Lease when it takes it over for term T (operator/mirrorset/
# leases.py; the data plane does not import the operator): a fence for that term and the ones before it.
FENCED_HOLDER_PREFIX = "chronoshard-operator/fenced-term-"
TIMEOUT_S = 5.0
ROLE_POLL_SECONDS = 0.25  # how soon a new role document (a promotion) gets its first renewal
RETRY_SECONDS = 1.0  # after a failed renewal (sooner than duration/3 when that is longer): the grace is short


@dataclass(frozen=True)
class LeaseSpec:
    """The ``lease`` of a primary's role document."""

    namespace: str
    name: str
    duration: float

    @property
    def interval(self) -> float:
        """Seconds between renewals."""
        return self.duration / 3

    @property
    def grace(self) -> float:
        """Seconds without a successful renewal after which the node fences itself."""
        return self.duration * 2 / 3


def lease_spec(role: Role) -> LeaseSpec | None:
    """The Lease a role document asks this node to hold (None: no lease, no gate)."""
    lease = role.doc.get("lease")
    if role.role != PRIMARY or not isinstance(lease, dict):
        return None
    return LeaseSpec(str(lease["namespace"]), str(lease["name"]), float(lease.get("durationSeconds") or 15))


def holder_identity(spec: LeaseSpec, env: dict[str, str] | None = None) -> str:
    """This node's holderIdentity: $POD_NAME, else ``<shardset>-<i>`` from the Lease's name
    ``<shardset>-<i>-primary``."""
    pod = (os.environ if env is None else env).get("POD_NAME")
    return pod or spec.name.removesuffix("-primary")


# ---- pure: what to do with the Lease as read ------------------------------------------------------------
class Action(enum.Enum):
    """The step a renewal pass takes."""

    CREATE = "create"  # no Lease: create it, held by this node
    RENEW = "renew"  # held by this node: move renewTime
    ACQUIRE = "acquire"  # no holder, or the operator's fence of an older term: take it (a transition)
    LOST = "lost"  # held by another (or fenced for this term): write nothing, refuse writes


def microtime(wall: float) -> str:
    """A Kubernetes MicroTime."""
    return datetime.fromtimestamp(wall, UTC).strftime(MICROTIME)


def _fenced_term(holder: str) -> int | None:
    if not holder.startswith(FENCED_HOLDER_PREFIX):
        return None
    rest = holder.removeprefix(FENCED_HOLDER_PREFIX)
    return int(rest) if rest.isdigit() else None


def plan(lease: dict[str, Any] | None, me: str, term: int) -> Action:
    """What a pass under a role document of ``term`` does with ``lease`` (the object read, None if absent).

    The operator's fence of an older term is released by the role document of a newer one (this node was made
    primary again, e.g. a failback); the fence of this term or a later one is another holder."""
    if lease is None:
        return Action.CREATE
    holder = (lease.get("spec") or {}).get("holderIdentity")
    if holder == me:
        return Action.RENEW
    if not holder:
        return Action.ACQUIRE
    fenced = _fenced_term(str(holder))
    return Action.ACQUIRE if fenced is not None and fenced < term else Action.LOST


def desired(lease: dict[str, Any] | None, spec: LeaseSpec, me: str, wall: float) -> dict[str, Any]:
    """The Lease object to write for CREATE, RENEW or ACQUIRE (keeps resourceVersion for the optimistic update)."""
    now = microtime(wall)
    old = (lease or {}).get("spec") or {}
    renewing = old.get("holderIdentity") == me
    transitions = int(old.get("leaseTransitions") or 0) + (0 if renewing or lease is None else 1)
    meta: dict[str, Any] = {"name": spec.name, "namespace": spec.namespace}
    if lease is not None:
        meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": me, "leaseDurationSeconds": max(1, round(spec.duration)),
                     "acquireTime": old.get("acquireTime") if renewing else now, "renewTime": now,
                     "leaseTransitions": transitions}}


@dataclass
class LeaseStatus:
    """What the node knows of its Lease: the last successful renewal (monotonic and wall clock) and the role
    document under which it found the Lease held by another."""

    renewed: float | None = None
    renewed_at: float | None = None
    lost_under: dict[str, Any] | None = None
    holder: str | None = None  # the holder seen at the last read
    errors: int = field(default=0)

    def refusal(self, spec: LeaseSpec, role: Role, now: float) -> str | None:
        """Why writes are refused now (None: they are not)."""
        if self.lost_under is not None and self.lost_under == role.doc:
            return f"the lease {spec.namespace}/{spec.name} is held by another node"
        if self.renewed is None:
            return f"the lease {spec.namespace}/{spec.name} has not been acquired yet"
        if now - self.renewed > spec.grace:
            return f"the lease {spec.namespace}/{spec.name} was not renewed for {now - self.renewed:.1f} s"
        return None


# ---- I/O: the Lease API -----------------------------------------------------------------------------------
class LeaseError(Exception):
    """A Lease call failed (network, an error status); the message holds no credential and no body."""


class LeaseClient:
    """GET, POST and PUT of one Lease with a pooled aiohttp session over ``connection``."""

    def __init__(self, connection: ApiServerConnection) -> None:
        self.connection = connection
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.connection.ssl_context),
                                                  timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        return self._session

    async def _call(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any] | None]:
        headers = {"Content-Type": "application/json"}
        auth = await asyncio.to_thread(self.connection.authorization)  # refreshes an in-cluster token file
        if auth is not None:
            headers["Authorization"] = auth
        try:
            async with self._client().request(method, self.connection.host + path, json=body,
                                              headers=headers) as resp:
                doc = await resp.json(content_type=None) if resp.status < 300 else None
                return resp.status, doc
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LeaseError(f"API server not reachable: {type(exc).__name__}") from None

    @staticmethod
    def _path(namespace: str, name: str | None = None) -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        return base if name is None else f"{base}/{name}"

    async def get(self, spec: LeaseSpec) -> dict[str, Any] | None:
        """The Lease, None if it does not exist."""
        status, doc = await self._call("GET", self._path(spec.namespace, spec.name), None)
        if status == 404:
            return None
        if status != 200 or doc is None:
            raise LeaseError(f"API server answered {status} to GET lease {spec.namespace}/{spec.name}")
        return doc

    async def write(self, lease: dict[str, Any] | None, body: dict[str, Any]) -> bool:
        """Create (``lease`` None) or update it; False when someone else wrote first (409: read again)."""
        meta = body["metadata"]
        if lease is None:
            status, _ = await self._call("POST", self._path(meta["namespace"]), body)
        else:
            status, _ = await self._call("PUT", self._path(meta["namespace"], meta["name"]), body)
        if status == 409:
            return False
        if status not in (200, 201):
            raise LeaseError(f"API server answered {status} writing lease {meta['namespace']}/{meta['name']}")
        return True

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()


# ---- the loop and the gate ------------------------------------------------------------------------------
class LeaseKeeper:
    """Keeps the Lease of the role document in force (``role()``) and refuses writes by it (``gate``)."""

    def __init__(self, role: Callable[[], Role], connect: Callable[[], ApiServerConnection] = load_connection,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.role, self.connect, self.clock, self.wall = role, connect, clock, wall
        self.status = LeaseStatus()
        self.client: LeaseClient | None = None

    def gate(self) -> None:
        """A write gate (ReplicationState.write_gates): 503 lease_lost while the Lease does not allow writes."""
        role = self.role()
        spec = lease_spec(role)
        if spec is None:
            return
        reason = self.status.refusal(spec, role, self.clock())
        if reason is not None:
            raise ApiError(503, "lease_lost", f"{reason}; this node refuses writes", role=role.role, term=role.term)

    def describe(self) -> dict[str, Any]:
        """``lease`` of ``GET /v1/replication``: None without a lease, else held, renewedAt, selfFenced."""
        role = self.role()
        spec = lease_spec(role)
        if spec is None:
            return {"lease": None}
        s = self.status
        refused = s.refusal(spec, role, self.clock()) is not None
        return {"lease": {"namespace": spec.namespace, "name": spec.name, "held": not refused, "holder": s.holder,
                          "renewedAt": s.renewed_at, "selfFenced": refused}}

    async def renew_once(self, spec: LeaseSpec, role: Role) -> None:
        """One pass: read the Lease, then create, renew or acquire it, or note it lost (raises LeaseError)."""
        if self.client is None:
            self.client = LeaseClient(await asyncio.to_thread(self.connect))
        me = holder_identity(spec)
        # The grace counts from before the read: the API server's renewTime is no earlier than this.
        started = self.clock()
        for _ in range(2):  # a 409 (another write in between) reads once more
            lease = await self.client.get(spec)
            action = plan(lease, me, role.term)
            self.status.holder = (lease or {}).get("spec", {}).get("holderIdentity")
            if action is Action.LOST:
                if self.status.lost_under != role.doc:
                    log.error("lease %s/%s is held by %r, not %r: refusing writes until a new role document",
                              spec.namespace, spec.name, self.status.holder, me)
                self.status.lost_under, self.status.renewed = role.doc, None
                return
            if self.status.lost_under == role.doc:
                return  # lost under this document: never taken back without a new one
            if await self.client.write(lease, desired(lease, spec, me, self.wall())):
                if action is Action.ACQUIRE:
                    log.info("lease %s/%s acquired by %s", spec.namespace, spec.name, me)
                self.status.renewed, self.status.renewed_at, self.status.holder = started, self.wall(), me
                return
        raise LeaseError("the lease kept changing while renewing it")

    async def run(self) -> None:
        """Renew every duration/3 while a lease is configured (a new role document renews at once)."""
        doc: dict[str, Any] | None = None
        held_spec: LeaseSpec | None = None
        next_at = 0.0
        while True:
            role = self.role()
            spec = lease_spec(role)
            if spec != held_spec:
                # Another Lease (or none): what was known of the previous one allows nothing under this one.
                self.status, held_spec = LeaseStatus(), spec
            if spec is None:
                doc = None
            elif role.doc != doc or self.clock() >= next_at:
                doc = role.doc
                started = self.clock()
                ok = await self._pass(spec, role)
                next_at = started + (spec.interval if ok else min(spec.interval, RETRY_SECONDS))
            await asyncio.sleep(min(ROLE_POLL_SECONDS, spec.interval) if spec else ROLE_POLL_SECONDS)

    async def _pass(self, spec: LeaseSpec, role: Role) -> bool:
        try:
            await self.renew_once(spec, role)
            self.status.errors = 0
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # LeaseError, or no API server connection at all
            self.status.errors += 1
            if self.status.errors == 1 or self.status.errors % 20 == 0:
                log.warning("lease %s/%s not renewed (%s)", spec.namespace, spec.name,
                            exc if isinstance(exc, LeaseError) else type(exc).__name__)
            return False

    async def close(self) -> None:
        """Close the API session."""
        if self.client is not None:
            await self.client.close()
