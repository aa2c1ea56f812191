"""The shadow's anomaly routes (docs/anomalies.md): the detector's state and the incidents (operator), a table's
timeline and an incident's keys (RBAC ``list`` on the table), and the what-if of a proposed batch (RBAC ``get``).

The handlers are closures over ``services``, the way to the process's detection from a request, so this module
needs nothing of server.py (which lists these routes beside its own).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.keyspace.partitioning import keyspace_id
from chronoshard.shardnode.serving.http_common import ApiError, check_key, json_body, table_param
from chronoshard.shardnode.serving.routing import Misdirection, misdirected_response
from chronoshard.shardnode.serving.scaffold import TABLE_PATH, Partitioning, Route

from . import query
from .anomalystore import AnomalyStore
from .detection import Detection, ProposedChange

MAX_WHATIF_CHANGES = 10_000
MAX_INCIDENTS_LISTED = 50


class Services(Protocol):
    """What the handlers use of the process (server.Shadow has these)."""

    @property
    def detector(self) -> Detection: ...
    @property
    def anomaly_store(self) -> AnomalyStore: ...
    async def read(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any: ...


@dataclass(frozen=True)
class AnomalyRoutes:
    """Builds the routes over the process found by ``services(request)``."""

    services: Callable[[web.Request], Services]
    partitioning: Partitioning | None
    identity: Callable[[web.Request], str | None]

    def routes(self) -> list[Route]:
        """The anomaly routes and who may call each."""
        return [Route("GET", "/v1/anomalies", self.overview, Access.ADMIN),
                Route("GET", TABLE_PATH + "/anomalies", self.timeline, Access.DATA_LIST),
                Route("GET", TABLE_PATH + "/anomalies/{id}/keys", self.incident_keys, Access.DATA_LIST),
                Route("POST", TABLE_PATH + "/whatif", self.what_if, Access.DATA_GET)]

    async def overview(self, request: web.Request) -> web.Response:
        """GET /v1/anomalies: the detector's state per table and the newest incidents of every table."""
        sv = self.services(request)
        incidents = await sv.read(sv.anomaly_store.incidents, None, MAX_INCIDENTS_LISTED)
        return web.json_response({**sv.detector.describe(), "incidents": incidents})

    async def timeline(self, request: web.Request) -> web.Response:
        """GET /v1/tables/{table}/anomalies?from=&to=: the table's windows (scores, features) and incidents."""
        sv = self.services(request)
        table = table_param(request)
        start = query.parse_time(request.query["from"], "from") if "from" in request.query else None
        end = query.parse_time(request.query["to"], "to") if "to" in request.query else None
        if start is not None and end is not None and start > end:
            raise ApiError(400, "invalid_parameter", "from must not be after to")
        limit = query.limit(request, default=1000)
        windows = await sv.read(sv.anomaly_store.windows, table, start, end, limit)
        incidents = await sv.read(sv.anomaly_store.incidents, table, MAX_INCIDENTS_LISTED)
        return web.json_response({"windows": [w.to_json() for w in windows], "incidents": incidents})

    async def incident_keys(self, request: web.Request) -> web.Response:
        """GET /v1/tables/{table}/anomalies/{id}/keys?after=&limit=: an incident's keys in key order."""
        sv = self.services(request)
        table, ident = table_param(request), request.match_info["id"]
        body = await sv.read(sv.anomaly_store.incident, ident)
        if body is None or body.get("table") != table:
            raise ApiError(404, "not_found", f"no incident {ident} of table {table}")
        after, limit = query.key_query(request, "after"), query.limit(request, default=1000)
        keys = await sv.read(sv.anomaly_store.incident_keys, ident, after, limit)
        return web.json_response({"keys": [{"key": k.key, "firstLsn": k.first_lsn, "lastLsn": k.last_lsn,
                                            "beforeLsn": k.before_lsn, "bytes": k.bytes} for k in keys],
                                  "next": keys[-1].key if len(keys) == limit else None})

    async def what_if(self, request: web.Request) -> web.Response:
        """POST /v1/tables/{table}/whatif {"changes": [...], "identity"?}: what the batch would change and the
        anomaly score and severity it would get, without applying it."""
        sv = self.services(request)
        table = table_param(request)
        doc = await json_body(request)
        changes = parse_changes(doc)
        refusal = self._misdirected(table, [c.key for c in changes])
        if refusal is not None:
            return refusal
        identity = doc.get("identity", self.identity(request))
        if identity is not None and (not isinstance(identity, str) or not 0 < len(identity) <= 256):
            raise ApiError(400, "invalid_body", "identity must be a string of 1 to 256 characters")
        # The what-if reads the history (the keys' current versions) and scores: both off the event loop.
        result = await asyncio.get_running_loop().run_in_executor(
            None, sv.detector.what_if, table, changes, identity)
        return web.json_response(result)

    def _misdirected(self, table: str, keys: list[str]) -> web.Response | None:
        """421 with the owner for the first key another shard owns (as a single-key route answers), else None."""
        if self.partitioning is None:
            return None
        pmap = self.partitioning.source.require()
        for key in keys:
            owner = pmap.owner_of(keyspace_id(table, key)).shard
            if owner != self.partitioning.shard_index:
                return misdirected_response(Misdirection(table, key, owner, pmap.epoch))
        return None


def parse_changes(doc: dict[str, Any]) -> list[ProposedChange]:
    """The proposed changes of a what-if body (400 naming the first bad one)."""
    unknown = set(doc) - {"changes", "identity"}
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown fields: {sorted(unknown)}")
    raw = doc.get("changes")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_WHATIF_CHANGES:
        raise ApiError(400, "invalid_body", f"changes must be a non-empty array of at most {MAX_WHATIF_CHANGES}")
    out: list[ProposedChange] = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or c.get("op") not in ("put", "delete"):
            raise ApiError(400, "invalid_body", f"changes[{i}].op must be put or delete")
        allowed = {"op", "key", "value", "text"} if c["op"] == "put" else {"op", "key"}
        if set(c) - allowed:
            raise ApiError(400, "invalid_body", f"changes[{i}]: unknown fields {sorted(set(c) - allowed)}")
        key = check_key(c.get("key"))
        value: bytes | None = None
        if c["op"] == "put":
            if ("value" in c) == ("text" in c):
                raise ApiError(400, "invalid_body", f"changes[{i}]: give value (base64) or text")
            if "text" in c:
                if not isinstance(c["text"], str):
                    raise ApiError(400, "invalid_body", f"changes[{i}].text must be a string")
                value = c["text"].encode()
            else:
                try:
                    value = base64.b64decode(c["value"], validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise ApiError(400, "invalid_body", f"changes[{i}].value must be base64") from None
        out.append(ProposedChange(c["op"], key, value))
    return out
