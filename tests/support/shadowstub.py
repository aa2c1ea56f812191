"""A small in-memory stand-in for one shard's shadow REST API (the contract's JSON shapes, section C of issue #14),
served by a real aiohttp server, for the cases the real shadow process (shardnode/shadow/server.py) makes slow
or awkward to arrange: several shards with different owners, a stale plan under a name, a run held open, a capture
behind the point. It keeps versions per key and plans by name; no capture, no sealing, no writes to a node.

Anomalies (issue #15's contract): ``incidents`` is what ``GET /v1/anomalies`` lists (None: the route answers 404,
as a shadow from before anomaly detection); an incident's keys are the keys its versions changed (a version
records its ``identity``); a plan request with ``incident`` plans exactly those keys back to their value before
the incident on the incident's shard (empty elsewhere), keys changed after it began by other identities being
conflicts. The what-if's score is a stand-in rule (the share of the batch that overwrites or deletes), not a model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

ROUTED = "X-Chronoshard-Routed"


@dataclass
class Version:
    """One stored version of a key (value None: a delete)."""

    lsn: int
    time: float
    value: bytes | None
    identity: str | None = None


@dataclass
class StubShadow:
    """One shard's shadow: versions by (table, key), plans by name, and a log of the requests it answered."""

    shard: int = 0
    versions: dict[tuple[str, str], list[Version]] = field(default_factory=dict)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    owns: Any = None  # callable (table, key) -> bool: keys another shard owns are answered 421
    epoch: int = 1
    hold_runs: bool = False  # True: a started run stays "running" until finish_runs()
    lsn: int = 0
    partition_map: dict[str, Any] | None = None  # what GET /v1/partitions answers (404 when None)
    captured_until: float | None = None  # set: a point after this time is refused 400 point_ahead (capture lag)
    incidents: list[dict[str, Any]] | None = None  # GET /v1/anomalies (newest first); None answers 404
    detector: dict[str, Any] = field(default_factory=lambda: {
        "model": "isolation-forest", "state": "trained", "trainedWindows": 1440, "trainedAt": 1.0, "reason": None})
    threshold: float = 0.8  # the what-if's alarm threshold

    def write(self, table: str, key: str, value: bytes | None, time: float, identity: str | None = None) -> int:
        """Record a version (value None: deleted) at the next LSN."""
        self.lsn += 1
        self.versions.setdefault((table, key), []).append(Version(self.lsn, time, value, identity))
        return self.lsn

    def add_incident(self, table: str, ident: str, start: float, end: float, identity: str, *,
                     state: str = "closed", severity: float = 0.9, kind: str = "encryption",
                     detected: float | None = None) -> dict[str, Any]:
        """An incident over the versions ``identity`` wrote to ``table`` in [start, end], listed newest first."""
        keys = self.incident_keys(table, start, end, identity)
        inc = {"id": ident, "table": table, "state": state, "kind": kind, "startTime": start, "endTime": end,
               "detectedTime": detected if detected is not None else end + 1.0,
               "firstLsn": min((v.lsn for _, v in keys), default=0),
               "lastLsn": max((v.lsn for _, v in keys), default=0),
               "knownGoodLsn": 0, "knownGoodTime": start - 0.5, "identities": [identity],
               "keys": len({k for k, _ in keys}), "bytes": sum(len(v.value or b"") for _, v in keys),
               "score": 0.97, "severity": severity, "detector": "isolation-forest",
               "drivers": [{"feature": "entropy_rise", "value": 3.2, "usual": 0.01, "weight": 0.6},
                           {"feature": "overwrite_rate", "value": 40.0, "usual": 1.0, "weight": 0.3},
                           {"feature": "identity_share", "value": 1.0, "usual": 0.2, "weight": 0.07},
                           {"feature": "new_key_rate", "value": 0.0, "usual": 0.1, "weight": 0.03}]}
        self.incidents = [inc, *[i for i in self.incidents or [] if i["id"] != ident]]
        self.incidents.sort(key=lambda i: -i["detectedTime"])
        return inc

    def incident_keys(self, table: str, start: float, end: float, identity: str) -> list[tuple[str, Version]]:
        """(key, version) of every version ``identity`` wrote to ``table`` in [start, end]."""
        return [(k, v) for (t, k), vs in sorted(self.versions.items()) if t == table for v in vs
                if start <= v.time <= end and v.identity == identity]

    def finish_runs(self) -> None:
        """Complete every running plan."""
        for p in self.plans.values():
            if p["phase"] == "running":
                self._complete(p)

    @staticmethod
    def _complete(p: dict[str, Any]) -> None:
        keys = p["plan"]["restore"] + p["plan"]["create"] + p["plan"]["delete"]
        skipped = 0 if p["overwrite"] else p["plan"]["conflicts"]
        p.update(phase="completed", done=keys - skipped, skipped=skipped, remaining=0)

    # --- queries ---------------------------------------------------------------------------

    def _at(self, table: str, key: str, lsn: int | None, time: float | None) -> Version | None:
        found = None
        for v in self.versions.get((table, key), []):
            if (lsn is not None and v.lsn <= lsn) or (time is not None and v.time <= time):
                found = v
        return found if found is not None and found.value is not None else None

    def _live(self, table: str, lsn: int | None, time: float | None) -> dict[str, Version]:
        out = {}
        for (t, k) in sorted(self.versions):
            v = self._at(t, k, lsn, time) if t == table else None
            if v is not None:
                out[k] = v
        return out

    def plan_for(self, request: dict[str, Any]) -> dict[str, Any]:
        """The plan of a request: compares the state at the point with now, per key."""
        point_time = parse_time(request["time"])
        counts = {"restore": 0, "create": 0, "delete": 0, "bytes": 0, "conflicts": 0}
        items = []
        selected, before = self._incident_selection(request.get("incident"))
        for (table, key) in sorted(self.versions):
            if selected is not None:
                if (table, key) not in selected:
                    continue
                point_time = before[(table, key)]
            if request.get("tables") and table not in request["tables"]:
                continue
            if request.get("keys") and key not in request["keys"]:
                continue
            rng = request.get("range")
            if rng and not rng["start"] <= key <= rng["end"]:
                continue
            then, now = self._at(table, key, None, point_time), self._at(table, key, self.lsn, None)
            if selected is not None and not request.get("overwriteLater") and self._changed_by_others(
                    table, key, point_time, selected[(table, key)]):
                counts["conflicts"] += 1
                continue
            action = (None if then is None and now is None else "delete" if then is None else
                      "create" if now is None else None if then.value == now.value else "restore")
            if action is None:
                continue
            counts[action] += 1
            counts["bytes"] += len(then.value or b"") if then else 0
            items.append([table, key, action, now.lsn if now else 0, then.lsn if then else 0])
        point_lsn = max((v.lsn for vs in self.versions.values() for v in vs if v.time <= point_time), default=0)
        canon = json.dumps({"items": items, "point": {"lsn": point_lsn, "time": point_time}}, sort_keys=True,
                           separators=(",", ":"))
        return {"name": request["name"], "digest": hashlib.sha256(canon.encode()).hexdigest(), "planLsn": self.lsn,
                "point": {"lsn": point_lsn, "time": point_time}, **counts,
                "sample": [{"table": i[0], "key": i[1], "action": i[2], "expectedLsn": i[3], "targetLsn": i[4]}
                           for i in items[:100]]}

    def _incident_selection(self, ref: Any) -> tuple[dict[tuple[str, str], str] | None, dict[tuple[str, str], float]]:
        """(table, key) → the incident's identity, and the time just before the incident, for a plan of one
        incident; (None, {}) for a plan by keys/range; ({}, {}) on a shard that is not the incident's."""
        if not isinstance(ref, dict):
            return None, {}
        inc = next((i for i in self.incidents or [] if i["id"] == ref.get("id") and i["table"] == ref.get("table")),
                   None)
        if ref.get("shard") != self.shard or inc is None:
            return {}, {}
        keys = self.incident_keys(inc["table"], inc["startTime"], inc["endTime"], inc["identities"][0])
        return ({(inc["table"], k): inc["identities"][0] for k, _ in keys},
                {(inc["table"], k): inc["startTime"] - 1e-6 for k, _ in keys})

    def _changed_by_others(self, table: str, key: str, since: float, identity: str) -> bool:
        return any(v.time > since and v.identity != identity for v in self.versions.get((table, key), []))

    def whatif(self, table: str, changes: list[dict[str, Any]]) -> dict[str, Any]:
        """The what-if of a batch against the current state (the stand-in score of the module docstring)."""
        counts = {"create": 0, "overwrite": 0, "delete": 0, "unchanged": 0}
        size = 0
        for c in changes:
            now = self._at(table, c["key"], self.lsn, None)
            if c["op"] == "delete":
                counts["delete" if now is not None else "unchanged"] += 1
                continue
            value = base64.b64decode(c["value"])
            size += len(value)
            counts["create" if now is None else "unchanged" if now.value == value else "overwrite"] += 1
        risky = (counts["overwrite"] + counts["delete"]) / max(1, len(changes))
        severity = round(risky * min(1.0, len(changes) / 10), 4)
        return {"counts": counts, "bytes": size, "score": round(risky, 4), "severity": severity,
                "wouldAlarm": risky >= self.threshold, "threshold": self.threshold, "detector": "stub-rule",
                "drivers": [{"feature": "overwrite_share", "value": risky, "usual": 0.0, "weight": 1.0}]}

    # --- the app ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application with the contract's routes."""
        app = web.Application(middlewares=[self._log])
        app.router.add_get("/v1/tables/{table}/history/{key}", self._history)
        app.router.add_get("/v1/tables/{table}/at/{key}", self._value_at)
        app.router.add_get("/v1/tables/{table}/diff", self._diff)
        app.router.add_get("/v1/partitions", self._partitions)
        app.router.add_get("/v1/anomalies", self._anomalies)
        app.router.add_get("/v1/tables/{table}/anomalies/{id}/keys", self._anomaly_keys)
        app.router.add_post("/v1/tables/{table}/whatif", self._whatif)
        app.router.add_post("/v1/reversions", self._create)
        app.router.add_get("/v1/reversions/{name}", self._get)
        app.router.add_post("/v1/reversions/{name}/run", self._run)
        app.router.add_delete("/v1/reversions/{name}", self._delete)
        return app

    @web.middleware
    async def _log(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        return await handler(request)

    async def _partitions(self, _request: web.Request) -> web.Response:
        if self.partition_map is None:
            return _error(404, "not_found", "no map")
        return web.json_response(self.partition_map)

    async def _anomalies(self, _request: web.Request) -> web.Response:
        if self.incidents is None:
            return _error(404, "not_found", "no such route (a shadow from before anomaly detection)")
        return web.json_response({"detector": self.detector, "intervalSeconds": 60.0,
                                  "incidents": self.incidents[:50]})

    async def _anomaly_keys(self, request: web.Request) -> web.Response:
        table, ident = request.match_info["table"], request.match_info["id"]
        inc = next((i for i in self.incidents or [] if i["id"] == ident and i["table"] == table), None)
        if inc is None:
            return _error(404, "not_found", f"no incident {ident} on table {table}")
        rows: dict[str, dict[str, Any]] = {}
        for key, v in self.incident_keys(table, inc["startTime"], inc["endTime"], inc["identities"][0]):
            row = rows.setdefault(key, {"key": key, "firstLsn": v.lsn, "lastLsn": v.lsn, "bytes": 0,
                                        "beforeLsn": max((b.lsn for b in self.versions[(table, key)]
                                                          if b.time < inc["startTime"]), default=None)})
            row["lastLsn"], row["bytes"] = v.lsn, row["bytes"] + len(v.value or b"")
        after = request.query.get("after")
        limit = int(request.query.get("limit", 100))
        keys = [r for k, r in sorted(rows.items()) if after is None or k > after]
        return web.json_response({"keys": keys[:limit], "next": keys[limit - 1]["key"] if len(keys) > limit else None})

    async def _whatif(self, request: web.Request) -> web.Response:
        table = request.match_info["table"]
        body = await request.json()
        changes = body.get("changes") if isinstance(body, dict) else None
        if not isinstance(changes, list) or len(changes) > 10_000:
            return _error(400, "invalid_body", "changes must be a list of at most 10000 changes")
        if self.owns is not None:
            wrong = [c["key"] for c in changes if not self.owns(table, c["key"])]
            if wrong:
                return web.json_response({"error": "misdirected", "message": f"{wrong[0]} is not mine",
                                          "epoch": self.epoch}, status=421)
        return web.json_response(self.whatif(table, changes))

    def _misdirected(self, request: web.Request) -> web.Response | None:
        table, key = request.match_info["table"], request.match_info["key"]
        if self.owns is not None and not self.owns(table, key):
            return web.json_response({"error": "misdirected", "message": "not mine", "epoch": self.epoch},
                                     status=421)
        return None

    async def _history(self, request: web.Request) -> web.Response:
        wrong = self._misdirected(request)
        if wrong is not None:
            return wrong
        after = int(request.query.get("after", 0))
        limit = int(request.query.get("limit", 100))
        vs = [v for v in self.versions.get((request.match_info["table"], request.match_info["key"]), [])
              if v.lsn > after]
        page = vs[:limit]
        return web.json_response({"versions": [_version(v) for v in page],
                                  "next": page[-1].lsn if len(vs) > limit else None})

    async def _value_at(self, request: web.Request) -> web.Response:
        wrong = self._misdirected(request)
        if wrong is not None:
            return wrong
        lsn, time = _point(request)
        table, key = request.match_info["table"], request.match_info["key"]
        v = self._at(table, key, lsn, time)
        if v is None:
            return _error(404, "not_found", f"{table}/{key} did not exist then")
        return web.json_response({"key": key, **_version(v), "exact": True})

    async def _diff(self, request: web.Request) -> web.Response:
        table = request.match_info["table"]
        t0, t1 = parse_time(request.query["from"]), parse_time(request.query["to"])
        before, after = self._live(table, None, t0), self._live(table, None, t1)
        entries = []
        for key in sorted(set(before) | set(after)):
            b, a = before.get(key), after.get(key)
            if b is not None and a is not None and b.lsn == a.lsn:
                continue
            change = "created" if b is None else "deleted" if a is None else "changed"
            entries.append({"key": key, "change": change, "sizeBefore": len(b.value or b"") if b else None,
                            "sizeAfter": len(a.value or b"") if a else None, "lsnBefore": b.lsn if b else None,
                            "lsnAfter": a.lsn if a else None})
        start = request.query.get("after")
        entries = [e for e in entries if start is None or e["key"] > start]
        limit = int(request.query.get("limit", 100))
        return web.json_response({"entries": entries[:limit],
                                  "next": entries[limit - 1]["key"] if len(entries) > limit else None})

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict) or not body.get("name") or "time" not in body:
            return _error(400, "invalid_body", "name and time are required")
        name = body["name"]
        if self.captured_until is not None and parse_time(body["time"]) > self.captured_until:
            return _error(400, "point_ahead", "the history has not applied the node's log up to that point")
        existing = self.plans.get(name)
        if existing is not None:
            if existing["request"] != body:
                return _error(409, "conflict", f"plan {name} exists with another body")
            return web.json_response(existing["plan"])
        self.plans[name] = {"request": body, "plan": self.plan_for(body), "phase": "planned", "done": 0,
                            "skipped": 0, "remaining": 0, "overwrite": bool(body.get("overwriteLater"))}
        return web.json_response(self.plans[name]["plan"], status=201)

    def _plan_doc(self, p: dict[str, Any]) -> dict[str, Any]:
        keys = p["plan"]["restore"] + p["plan"]["create"] + p["plan"]["delete"]
        remaining = keys if p["phase"] in ("planned", "running") else 0
        return {**p["plan"], "phase": p["phase"], "done": p["done"], "skipped": p["skipped"],
                "conflicts": p["plan"]["conflicts"], "remaining": remaining - p["done"] if remaining else 0}

    async def _get(self, request: web.Request) -> web.Response:
        p = self.plans.get(request.match_info["name"])
        if p is None:
            return _error(404, "not_found", "no such plan")
        return web.json_response(self._plan_doc(p))

    async def _run(self, request: web.Request) -> web.Response:
        p = self.plans.get(request.match_info["name"])
        if p is None:
            return _error(404, "not_found", "no such plan")
        body = await request.json()
        if body.get("digest") != p["plan"]["digest"]:
            return _error(409, "digest_mismatch", "the digest is not this plan's")
        if p["phase"] == "planned":
            p["phase"] = "running"
            if not self.hold_runs:
                self._complete(p)
        return web.json_response(self._plan_doc(p), status=202)

    async def _delete(self, request: web.Request) -> web.Response:
        if self.plans.pop(request.match_info["name"], None) is None:
            return _error(404, "not_found", "no such plan")
        return web.json_response({"deleted": True})


def parse_time(text: str) -> float:
    """RFC 3339 or unix seconds."""
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _point(request: web.Request) -> tuple[int | None, float | None]:
    if "lsn" in request.query:
        return int(request.query["lsn"]), None
    return None, parse_time(request.query["time"])


def _version(v: Version) -> dict[str, Any]:
    return {"lsn": v.lsn, "time": v.time, "op": "put" if v.value is not None else "delete",
            "size": len(v.value or b""), "keyVersion": 1,
            "value": base64.b64encode(v.value).decode() if v.value is not None else None}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


@asynccontextmanager
async def serve_at(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``app`` at host:port inside the running loop; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


GROUP, VERSION = "chronoshard.io", "v1alpha1"
SHADOW_PORT = 7403  # operator/podcontract.py SHADOW_PORT; the pods' shadows answer there


def create_custom(k8s_client: Any, ns: str, plural: str, name: str, spec: dict[str, Any], kind: str) -> None:
    """Create a chronoshard.io object."""
    from kubernetes import client

    client.CustomObjectsApi(k8s_client).create_namespaced_custom_object(GROUP, VERSION, ns, plural, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec})


@asynccontextmanager
async def stub_shardset(k8s_client: Any, ns: str, stubs: list[StubShadow], mode: str = "confirm",
                        max_blocks: int | None = None, name: str = "orders",
                        anomaly: dict[str, Any] | None = None) -> AsyncIterator[list[str]]:
    """A ShardSet, its ShadowPolicy (``<name>-shadow``) and one pod per shard (in the real API server) whose IP
    serves that shard's stub on the shadow's port: each pod gets its own loopback address, as pods have an IP each.
    Yields the IPs."""
    from kubernetes import client

    create_custom(k8s_client, ns, "shardsets", name, {"shards": len(stubs)}, "ShardSet")
    reversion = {"mode": mode, **({"maxBlocks": max_blocks} if max_blocks else {})}
    create_custom(k8s_client, ns, "shadowpolicies", f"{name}-shadow",
                  {"shardSetRef": {"name": name}, "reversion": reversion, **({"anomaly": anomaly} if anomaly else {})},
                  "ShadowPolicy")
    core = client.CoreV1Api(k8s_client)
    labels = {"app.kubernetes.io/name": "chronoshard", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/component": "shard"}
    base = random.randrange(1, 250)
    ips = []
    async with AsyncExitStack() as stack:
        for i, stub in enumerate(stubs):
            ip = f"127.{base}.{random.randrange(1, 250)}.{i + 1}"
            await stack.enter_async_context(serve_at(stub.app(), ip, SHADOW_PORT))
            core.create_namespaced_pod(ns, client.V1Pod(
                metadata=client.V1ObjectMeta(name=f"{name}-{i}", labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="shadow", image="x",
                                                                     command=["chronoshard-shadow"])])))
            core.patch_namespaced_pod_status(f"{name}-{i}", ns, {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
            ips.append(ip)
        yield ips
