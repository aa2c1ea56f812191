"""The MirrorSet controller's passes against the real API server and real `chronoshard-node` processes standing in
for the member pods: each node listens on a pod-like loopback IP at port 7400 (127.0.0.0/8 is all loopback on
Linux), and a Pod object with that IP (Ready) stands for it, so the controller finds and reaches it exactly as it
reaches a shard pod. The nodes renew their Leases in the same API server (their $KUBECONFIG).

Covered: the first pass's roles (source primary at term 1, the mirror streaming from it), a planned switchover
by annotation that loses no acknowledged write, and a failover after kill -9 of the primary node that waits for
its Lease to expire, takes it over and promotes the mirror; status fields and events of each."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chronoshard.operator import kube, naming
from chronoshard.operator.mirrorset import controller
from chronoshard.operator.podcontract import NODE_PORT
from kubernetes import client

from tests.integration.shardnode.procs import BIN, INSECURE, Proc, http, http_json
from tests.support.kubelet_dir import write_keyring
from tests.support.shadowstub import GROUP, VERSION, create_custom
from tests.support.waiting import WaitTimeout, wait_for, wait_for_async

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

TABLE = "orders"


@pytest.fixture()
def api(k8s_client):
    previous = kube._api
    kube.set_api_client(k8s_client)
    yield client.CustomObjectsApi(k8s_client)
    kube.set_api_client(previous)


def _ip() -> str:
    return f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.{random.randrange(2, 250)}"


def _node(tmp: Path, name: str, ip: str, keyring: Path, kubeconfig: Path) -> Proc:
    root = tmp / name
    root.mkdir(parents=True, exist_ok=True)
    argv = [str(BIN / "chronoshard-node"), "--host", ip, "--port", str(NODE_PORT), "--data-dir", str(root / "data"),
            "--keyring-dir", str(keyring), *INSECURE]
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = Proc(argv, NODE_PORT, root / "node.log", env)
    proc.url = f"http://{ip}:{NODE_PORT}"
    return proc


def _pod(k8s_client: Any, ns: str, shardset: str, ip: str, shard: int = 0) -> None:
    """Shard ``shard``'s pod of ``shardset`` as the API server shows a running one: the node container (plain
    HTTP), its IP, Ready."""
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name=f"{shardset}-{shard}", labels=naming.selector_labels(shardset)),
        spec=client.V1PodSpec(containers=[client.V1Container(name="node", image="x", command=["chronoshard-node"])])))
    core.patch_namespaced_pod_status(f"{shardset}-{shard}", ns, {"status": {
        "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})


class Cluster:
    """Two member ShardSets a (source) and b (mirror) of ``shards`` shards, each shard a node process and a pod;
    nodes are named ``orders-a`` (shard 0) and ``orders-a/1`` (shard 1) and so on."""

    def __init__(self, k8s_client: Any, api: Any, ns: str, tmp: Path, kubeconfig: Path, spec: dict[str, Any],
                 shards: int = 1, members: tuple[str, ...] = ("orders-a", "orders-b")):
        self.api, self.ns = api, ns
        keyring = tmp / "keyring"  # the same key material on both (the controller's key copy keeps it so)
        write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
        names = [n if i == 0 else f"{n}/{i}" for n in members for i in range(shards)]
        self.ips: dict[str, str] = {}
        for n in names:
            while (ip := _ip()) in self.ips.values():
                pass
            self.ips[n] = ip
        self.nodes = {n: _node(tmp, n.replace("/", "-"), ip, keyring, kubeconfig) for n, ip in self.ips.items()}
        for name in members:
            create_custom(k8s_client, ns, "shardsets", name, {"shards": shards}, "ShardSet")
        for n, ip in self.ips.items():
            shardset, _, index = n.partition("/")
            _pod(k8s_client, ns, shardset, ip, int(index or 0))
        create_custom(k8s_client, ns, "mirrorsets", "orders", {
            "sourceRef": {"name": members[0]},
            "mirrors": [{"shardSetRef": {"name": m}, "zone": f"z-{m[-1]}"} for m in members[1:]], **spec}, "MirrorSet")
        self.events: list[tuple[str, str, str]] = []

    def start(self) -> Cluster:
        for n in self.nodes.values():  # all launched, then all waited for: the cold starts overlap
            n.launch()
        for n in self.nodes.values():
            n.wait_ready()
        return self

    def stop(self) -> None:
        for n in self.nodes.values():
            n.stop()

    def url(self, shardset: str) -> str:
        return self.nodes[shardset].url

    def body(self) -> dict[str, Any]:
        return dict(self.api.get_namespaced_custom_object(GROUP, VERSION, self.ns, "mirrorsets", "orders"))

    async def one_pass(self) -> dict[str, Any]:
        """One controller pass on the live object, its status written as the daemon writes it."""
        body = self.body()
        status, events, _ = await controller.step(body)
        controller.write_status(body, status)
        self.events.extend(events)
        return status

    async def crashed_pass(self) -> None:
        """A pass whose status write never happened (the operator died after acting): its actions stand, the
        status does not move, so the next pass repeats the step."""
        await controller.step(self.body())

    async def passes_until(self, done: Any, what: str, timeout: float = 60.0) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []

        async def check() -> dict[str, Any] | None:
            status = await self.one_pass()
            seen[:] = [status]
            return status if done(status) else None

        try:
            return await wait_for_async(check, timeout, interval=0.2, what=what)
        except WaitTimeout as exc:  # say where it stood: the operation, the conditions, the last events
            last = seen[0] if seen else {}
            raise WaitTimeout(f"{exc}; operation {last.get('operation')}, conditions {last.get('conditions')}, "
                              f"events {self.events[-12:]}") from None

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]

    def annotate(self, key: str, value: str) -> None:
        self.api.patch_namespaced_custom_object(GROUP, VERSION, self.ns, "mirrorsets", "orders",
                                                {"metadata": {"annotations": {key: value}}})


def role(url: str) -> dict[str, Any]:
    status, body = http_json("GET", f"{url}/v1/replication")
    assert status == 200, body
    return dict(body)


def put(url: str, key: str, value: bytes) -> tuple[int, dict[str, Any]]:
    status, body = http("PUT", f"{url}/v1/tables/{TABLE}/blocks/{key}", value)
    return status, json.loads(body or b"{}")


def value(url: str, key: str) -> bytes | None:
    status, body = http("GET", f"{url}/v1/tables/{TABLE}/blocks/{key}")
    return body if status == 200 else None


def writable(url: str) -> bool:
    """The node accepts client writes (a new primary first acquires its Lease)."""
    return bool((role(url).get("writes") or {}).get("accepting"))


def caught_up(c: Cluster, primary: str, mirror: str) -> bool:
    last = role(c.url(primary))["lastLsn"]
    r = role(c.url(mirror))
    return r.get("state") == "streaming" and r.get("appliedLsn", -1) >= last


@pytest.fixture()
def cluster(k8s_client, api, namespace, tmp_path, control_plane) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(spec: dict[str, Any], shards: int = 1, members: tuple[str, ...] = ("orders-a", "orders-b")) -> Cluster:
        c = Cluster(k8s_client, api, namespace, tmp_path, Path(control_plane.kubeconfig), spec, shards, members)
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.stop()


BASE_SPEC = {"replication": {"mode": "async", "maxLag": "30s"},
             "health": {"probeInterval": "1s", "failureThreshold": 2, "latencyThresholdMs": 5000},
             "failover": {"policy": "automatic", "leaseDuration": "3s", "switchoverTimeout": "20s"}}


async def test_first_pass_roles_and_a_switchover_by_annotation_loses_nothing(cluster):
    c = cluster(BASE_SPEC)
    first = await c.one_pass()
    assert (first["term"], first["activeShardSet"], first["activeSource"]) == (1, f"{c.ns}/orders-a", "orders-a")
    a, b = role(c.url("orders-a")), role(c.url("orders-b"))
    assert (a["role"], a["term"], b["role"], b["term"]) == ("primary", 1, "mirror", 1)
    assert b["source"]["shardSet"] == f"{c.ns}/orders-a"
    assert "Initialized" in c.reasons() and "RoleApplied" in c.reasons()
    wait_for(lambda: writable(c.url("orders-a")), what="the primary to acquire its Lease")

    acked = {}
    for i in range(40):
        status, body = put(c.url("orders-a"), f"k{i}", b"value %d" % i)
        assert status == 200, body
        acked[f"k{i}"] = b"value %d" % i
    wait_for(lambda: caught_up(c, "orders-a", "orders-b"), what="the mirror to apply every write")
    steady = await c.passes_until(lambda s: s["phase"] == "Replicating", "phase Replicating")
    copies = {x["shardSet"]: x for x in steady["shards"][0]["copies"]}
    assert copies[f"{c.ns}/orders-a"]["role"] == "primary" and copies[f"{c.ns}/orders-b"]["health"] == "healthy"
    assert copies[f"{c.ns}/orders-b"]["appliedLSN"] == copies[f"{c.ns}/orders-a"]["lastLSN"]
    assert steady["mirrors"][0]["healthy"] is True
    ready = next(x for x in steady["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "True", steady["conditions"]
    before = len(c.events)
    await c.one_pass()
    assert "RoleApplied" not in c.reasons()[before:]  # nothing changed: no node is told anything again

    c.annotate("chronoshard.io/switchover-to", "orders-b")
    done = await c.passes_until(lambda s: (s.get("lastOperation") or {}).get("outcome") is not None,
                                "the switchover to finish")
    last = done["lastOperation"]
    assert (last["kind"], last["outcome"], last["term"]) == ("switchover", "Succeeded", 2), last
    assert (done["term"], done["activeShardSet"], done["activeSource"]) == (2, f"{c.ns}/orders-b", "orders-b")
    assert done.get("lostWrites", []) == [] and done["lastSwitchoverRequest"] == "orders-b"
    assert "operation" not in c.body()["status"] and done.get("failovers", 0) == 0
    for reason in ("SwitchoverStarted", "Fenced", "CatchingUp", "Verifying", "Promoted", "SwitchedOver"):
        assert reason in c.reasons(), (reason, c.reasons())

    # Every acknowledged write is on the new primary; the old one refuses writes, the new one takes them.
    assert {k: value(c.url("orders-b"), k) for k in acked} == acked
    wait_for(lambda: writable(c.url("orders-b")), what="the new primary to acquire its Lease")
    status, body = put(c.url("orders-b"), "after", b"y")
    assert status == 200, body
    # The old primary was told to follow the new one at the same term (its fencing named it).
    assert "RejoinPending" not in c.reasons(), c.events
    a = role(c.url("orders-a"))
    assert (a["role"], a["term"], a["source"]["shardSet"]) == ("mirror", 2, f"{c.ns}/orders-b"), a
    status, refused = put(c.url("orders-a"), "after", b"x")
    assert (status, refused.get("error")) == (503, "not_primary"), refused
    wait_for(lambda: role(c.url("orders-a"))["appliedLsn"] >= body["lsn"], what="the old primary to follow")
    assert value(c.url("orders-a"), "after") == b"y"

    # The same annotation value again is not a new request.
    before = len(c.events)
    again = await c.one_pass()
    assert again["term"] == 2 and "SwitchoverStarted" not in c.reasons()[before:]


async def test_failover_after_kill_9_waits_for_the_lease_and_promotes_the_mirror(cluster, k8s_client):
    c = cluster(BASE_SPEC)
    await c.one_pass()
    wait_for(lambda: writable(c.url("orders-a")), what="the primary to acquire its Lease")
    for i in range(25):
        status, body = put(c.url("orders-a"), f"k{i}", b"v%d" % i)
        assert status == 200, body
    wait_for(lambda: caught_up(c, "orders-a", "orders-b"), what="the mirror to apply every write")
    last_lsn = role(c.url("orders-a"))["lastLsn"]
    await c.passes_until(lambda s: s["phase"] == "Replicating", "phase Replicating")

    coordination = client.CoordinationV1Api(k8s_client)
    lease = coordination.read_namespaced_lease("orders-a-0-primary", c.ns)
    assert lease.spec.holder_identity and not lease.spec.holder_identity.startswith("chronoshard-operator/")

    c.nodes["orders-a"].kill()
    done = await c.passes_until(lambda s: (s.get("lastOperation") or {}).get("outcome") is not None,
                                "the failover to finish")
    last = done["lastOperation"]
    assert (last["kind"], last["outcome"], last["term"]) == ("failover", "Succeeded", 2), last
    assert (done["term"], done["activeShardSet"], done["failovers"]) == (2, f"{c.ns}/orders-b", 1)
    assert done["lastFailoverTime"] and last["heldSeconds"] >= 0
    assert done.get("lostWrites", []) == []  # the mirror had applied every acknowledged write before the kill
    reasons = c.reasons()
    for reason in ("FailoverStarted", "WaitingForLease", "CatchingUp", "Promoted", "FailedOver"):
        assert reason in reasons, (reason, reasons)
    assert "Verifying" not in reasons  # a dead primary has no digest to compare

    taken = coordination.read_namespaced_lease("orders-a-0-primary", c.ns)
    assert taken.spec.holder_identity == "chronoshard-operator/fenced-term-2"
    b = role(c.url("orders-b"))
    assert (b["role"], b["term"]) == ("primary", 2)
    assert b["lastLsn"] >= last_lsn
    assert {f"k{i}": value(c.url("orders-b"), f"k{i}") for i in range(25)} == {f"k{i}": b"v%d" % i
                                                                                 for i in range(25)}
    wait_for(lambda: writable(c.url("orders-b")), what="the new primary to acquire its Lease")
    status, body = put(c.url("orders-b"), "new", b"after failover")
    assert status == 200 and body["lsn"] > last_lsn, body  # LSNs continue above the old primary's
    copies = {x["shardSet"]: x for x in done["shards"][0]["copies"]}
    assert copies[f"{c.ns}/orders-a"]["health"] == "unavailable"


async def test_async_failover_reports_the_lost_writes_and_the_rejoined_old_primary_confirms_them(cluster):
    c = cluster(BASE_SPEC)
    await c.one_pass()
    wait_for(lambda: writable(c.url("orders-a")), what="the primary to acquire its Lease")
    for i in range(10):
        assert put(c.url("orders-a"), f"k{i}", b"kept %d" % i)[0] == 200
    wait_for(lambda: caught_up(c, "orders-a", "orders-b"), what="the mirror to apply the first writes")
    promoted_at = role(c.url("orders-b"))["appliedLsn"]

    # The mirror stops taking anything in (SIGSTOP); the primary acknowledges three more writes (async).
    mirror = c.nodes["orders-b"].p
    assert mirror is not None
    os.kill(mirror.pid, signal.SIGSTOP)
    try:
        lost = [put(c.url("orders-a"), f"lost{i}", b"only on a")[1]["lsn"] for i in range(3)]
        assert lost == [promoted_at + 1, promoted_at + 2, promoted_at + 3]
        # One pass records the primary's last LSN in the status (what the operator knows of it when it dies).
        seen = await c.one_pass()
        copies = {x["shardSet"]: x for x in seen["shards"][0]["copies"]}
        assert copies[f"{c.ns}/orders-a"]["lastLSN"] == lost[-1]
        c.nodes["orders-a"].kill()
    finally:
        os.kill(mirror.pid, signal.SIGCONT)

    done = await c.passes_until(lambda s: (s.get("lastOperation") or {}).get("outcome") is not None,
                                "the failover to finish")
    assert (done["lastOperation"]["kind"], done["activeShardSet"]) == ("failover", f"{c.ns}/orders-b")
    # The mirror may still have applied what its last long-poll had received before it was stopped.
    promoted = role(c.url("orders-b"))["promotedAtLsn"]
    assert promoted_at <= promoted < lost[-1]
    gone = [lsn for lsn in lost if lsn > promoted]
    entry = done["lostWrites"][0]
    assert {k: entry[k] for k in ("shard", "shardSet", "fromLSN", "toLSN", "count", "confirmed", "term")} == {
        "shard": 0, "shardSet": f"{c.ns}/orders-a", "fromLSN": gone[0], "toLSN": lost[-1], "count": len(gone),
        "confirmed": False, "term": 2}
    assert "WritesLost" in c.reasons()

    # The old primary comes back on its volume: it is told to follow the new primary, rewinds its changes past
    # the promotion point and reports them; the operator confirms the loss.
    c.nodes["orders-a"].start()
    confirmed = await c.passes_until(lambda s: (s.get("lostWrites") or [{}])[0].get("confirmed") is True,
                                     "the rejoined old primary to report its discarded changes")
    assert confirmed["lostWrites"][0]["count"] == len(gone) and "LostWritesConfirmed" in c.reasons()
    a = role(c.url("orders-a"))
    assert (a["role"], a["term"], sorted(a["discardedLsns"])) == ("mirror", 2, gone)
    # The new primary's LSNs continue above the lost range (lsnFloor); the old primary applies them.
    wait_for(lambda: writable(c.url("orders-b")), what="the new primary to acquire its Lease")
    status, body = put(c.url("orders-b"), "after", b"from b")
    assert status == 200 and body["lsn"] > lost[-1], body
    wait_for(lambda: role(c.url("orders-a"))["appliedLsn"] >= body["lsn"], what="the old primary to follow")
    assert value(c.url("orders-a"), "after") == b"from b"
    assert value(c.url("orders-a"), "lost2") is None and value(c.url("orders-a"), "k3") == b"kept 3"


async def test_a_switchover_whose_target_does_not_catch_up_aborts_and_the_old_primary_writes_again(cluster):
    # failureThreshold high: the target stays "degraded" (not unavailable, which aborts at once) until the timeout.
    c = cluster({**BASE_SPEC, "health": {**BASE_SPEC["health"], "failureThreshold": 50},
                 "failover": {"policy": "manual", "switchoverTimeout": "2s", "leaseDuration": "3s"}})
    await c.one_pass()
    wait_for(lambda: writable(c.url("orders-a")), what="the primary to acquire its Lease")
    assert put(c.url("orders-a"), "before", b"1")[0] == 200
    wait_for(lambda: caught_up(c, "orders-a", "orders-b"), what="the mirror to apply the first write")

    target = c.nodes["orders-b"].p
    assert target is not None
    os.kill(target.pid, signal.SIGSTOP)  # the target answers nothing and applies nothing
    try:
        c.annotate("chronoshard.io/switchover-to", f"{c.ns}/orders-b")
        done = await c.passes_until(lambda s: (s.get("lastOperation") or {}).get("outcome") is not None,
                                    "the switchover to end")
    finally:
        os.kill(target.pid, signal.SIGCONT)
    last = done["lastOperation"]
    assert (last["kind"], last["outcome"], last["term"]) == ("switchover", "Aborted", 3), last
    assert "within switchoverTimeout" in last["message"]
    assert (done["term"], done["activeShardSet"]) == (3, f"{c.ns}/orders-a")
    assert done.get("lostWrites", []) == [] and done.get("failovers", 0) == 0
    assert "Fenced" in c.reasons() and "OperationAborted" in c.reasons() and "Promoted" not in c.reasons()
    a = role(c.url("orders-a"))
    assert (a["role"], a["term"]) == ("primary", 3)
    wait_for(lambda: writable(c.url("orders-a")), what="the old primary to take writes again")
    status, body = put(c.url("orders-a"), "after", b"2")
    assert status == 200, body

    # The next passes give the mirror term 3; it follows the same primary and gets the write.
    await c.passes_until(lambda s: s["phase"] == "Replicating" and role(c.url("orders-b"))["term"] == 3,
                         "the mirror at term 3")
    wait_for(lambda: role(c.url("orders-b"))["appliedLsn"] >= body["lsn"], what="the mirror to follow")
    assert value(c.url("orders-b"), "after") == b"2"


async def test_manual_policy_never_fails_over_but_a_switchover_request_promotes_past_a_dead_primary(cluster):
    c = cluster({**BASE_SPEC, "failover": {"policy": "manual", "leaseDuration": "3s"}})
    await c.one_pass()
    wait_for(lambda: writable(c.url("orders-a")), what="the primary to acquire its Lease")
    status, body = put(c.url("orders-a"), "k", b"v")
    assert status == 200, body
    wait_for(lambda: caught_up(c, "orders-a", "orders-b"), what="the mirror to apply the write")
    c.nodes["orders-a"].kill()

    stuck = await c.passes_until(
        lambda s: any(x["health"] == "unavailable" for x in s["shards"][0]["copies"]), "the primary unavailable")
    for _ in range(3):
        stuck = await c.one_pass()
    assert (stuck["term"], stuck["phase"], stuck.get("failovers", 0)) == (1, "Degraded", 0)
    assert "operation" not in c.body()["status"] and "FailoverStarted" not in c.reasons()
    degraded = next(x for x in stuck["conditions"] if x["type"] == "Degraded")
    assert "failover policy is manual" in degraded["message"]
    assert "chronoshard.io/switchover-to" in degraded["message"]

    c.annotate("chronoshard.io/switchover-to", "orders-b")
    done = await c.passes_until(lambda s: (s.get("lastOperation") or {}).get("outcome") is not None,
                                "the switchover to finish")
    assert (done["lastOperation"]["outcome"], done["activeShardSet"], done["term"]) == (
        "Succeeded", f"{c.ns}/orders-b", 2)
    assert "WaitingForLease" in c.reasons() and "Verifying" in c.reasons()
    wait_for(lambda: writable(c.url("orders-b")), what="the new primary to acquire its Lease")
    assert value(c.url("orders-b"), "k") == b"v"


async def test_a_corrupted_mirror_fails_verification_the_switchover_aborts_and_the_repair_restores_it(
        cluster, tmp_path):
    c = cluster({**BASE_SPEC, "failover": {"policy": "manual", "leaseDuration": "3s"},
                 "consistency": {"interval": "1s"}})
    await c.one_pass()
    wait_for(lambda: writable(c.url("orders-a")), what="the primary to acquire its Lease")
    for i in range(40):
        assert put(c.url("orders-a"), f"k{i}", os.urandom(24))[0] == 200
    wait_for(lambda: caught_up(c, "orders-a", "orders-b"), what="the mirror to apply every write")
    clean = await c.passes_until(lambda s: _condition(s, "Consistent")["status"] == "True", "a clean check")
    assert {x["shardSet"]: x for x in clean["shards"][0]["copies"]}[f"{c.ns}/orders-b"]["consistentAt"]["lsn"] > 0

    # k7 on the mirror gets k1's frame behind the node's back (stopped, straight into its SQLite file).
    c.nodes["orders-b"].stop()
    db = sqlite3.connect(tmp_path / "orders-b" / "data" / "blocks.sqlite3")
    with db:
        frame, checksum = db.execute("SELECT frame, checksum FROM blocks WHERE key = 'k1'").fetchone()
        db.execute("UPDATE blocks SET frame = ?, checksum = ? WHERE key = 'k7'", (frame, checksum))
    db.close()
    c.nodes["orders-b"].start()
    wait_for(lambda: caught_up(c, "orders-a", "orders-b"), what="the mirror back")

    c.annotate("chronoshard.io/switchover-to", "orders-b")
    done = await c.passes_until(lambda s: (s.get("lastOperation") or {}).get("outcome") is not None,
                                "the switchover to end")
    assert (done["lastOperation"]["outcome"], done["term"], done["activeShardSet"]) == (
        "Aborted", 3, f"{c.ns}/orders-a")
    assert "digest mismatch" in done["lastOperation"]["message"]
    assert _condition(done, "Consistent")["status"] == "False" and "Promoted" not in c.reasons()
    wait_for(lambda: writable(c.url("orders-a")), what="the old primary to take writes again")

    # The target's differing bucket was repaired; the next consistency checks find the copies equal.
    repaired = await c.passes_until(lambda s: _condition(s, "Consistent")["status"] == "True", "a clean check")
    assert repaired["term"] == 3
    wait_for(lambda: value(c.url("orders-b"), "k7") == value(c.url("orders-a"), "k7"), what="k7 repaired")


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((x for x in status.get("conditions") or [] if x["type"] == type_), {})


async def test_automatic_failback_once_the_restarted_source_has_caught_up(cluster):
    c = cluster({**BASE_SPEC, "failover": {"policy": "automatic", "failback": "automatic", "leaseDuration": "3s"}})
    await c.one_pass()
    wait_for(lambda: writable(c.url("orders-a")), what="the primary to acquire its Lease")
    assert put(c.url("orders-a"), "before", b"a")[0] == 200
    wait_for(lambda: caught_up(c, "orders-a", "orders-b"), what="the mirror to apply the write")
    c.nodes["orders-a"].kill()
    over = await c.passes_until(lambda s: (s.get("lastOperation") or {}).get("kind") == "failover",
                                "the failover")
    assert over["activeShardSet"] == f"{c.ns}/orders-b"
    wait_for(lambda: writable(c.url("orders-b")), what="the new primary to acquire its Lease")
    status, body = put(c.url("orders-b"), "during", b"b")
    assert status == 200, body

    c.nodes["orders-a"].start()
    back = await c.passes_until(lambda s: (s.get("lastOperation") or {}).get("kind") == "failback",
                                "the automatic failback")
    last = back["lastOperation"]
    assert (last["outcome"], last["from"], last["to"], last["term"]) == (
        "Succeeded", f"{c.ns}/orders-b", f"{c.ns}/orders-a", 3), last
    assert (back["term"], back["activeShardSet"], back["failovers"]) == (3, f"{c.ns}/orders-a", 1)
    assert "FailbackStarted" in c.reasons() and "FailedBack" in c.reasons()
    wait_for(lambda: writable(c.url("orders-a")), what="the source to acquire its Lease again")
    assert value(c.url("orders-a"), "during") == b"b" and value(c.url("orders-a"), "before") == b"a"
    b = role(c.url("orders-b"))
    assert (b["role"], b["term"], b["source"]["shardSet"]) == ("mirror", 3, f"{c.ns}/orders-a")


async def test_sync_mode_runs_a_primary_async_while_no_mirror_copy_is_healthy(cluster):
    c = cluster({**BASE_SPEC, "replication": {"mode": "sync", "syncTimeout": "5s"}})
    await c.one_pass()
    wait_for(lambda: writable(c.url("orders-a")), what="the primary to acquire its Lease")
    assert role(c.url("orders-a"))["mode"] == "sync"
    status, body = put(c.url("orders-a"), "acked", b"on both")  # answered once the mirror acknowledged it
    assert status == 200, body
    assert role(c.url("orders-b"))["appliedLsn"] >= body["lsn"]

    c.nodes["orders-b"].kill()
    degraded = await c.passes_until(lambda s: _condition(s, "SyncDegraded").get("status") == "True",
                                    "SyncDegraded")
    assert "[0]" in _condition(degraded, "SyncDegraded")["message"] and degraded["phase"] == "Degraded"
    assert role(c.url("orders-a"))["mode"] == "async"
    status, body = put(c.url("orders-a"), "alone", b"no mirror")  # not held for syncTimeout
    assert status == 200, body

    c.nodes["orders-b"].start()
    back = await c.passes_until(lambda s: _condition(s, "SyncDegraded").get("status") == "False"
                                and role(c.url("orders-a"))["mode"] == "sync", "sync again")
    assert back["term"] == 1
    wait_for(lambda: role(c.url("orders-b"))["appliedLsn"] >= body["lsn"], what="the mirror to catch up")

    # A switchover promotes in sync mode at once: the fenced old primary follows in the same pass.
    c.annotate("chronoshard.io/switchover-to", "orders-b")
    await c.passes_until(lambda s: (s.get("lastOperation") or {}).get("outcome") == "Succeeded", "the switchover")
    assert role(c.url("orders-b"))["mode"] == "sync"
    wait_for(lambda: writable(c.url("orders-b")), what="the new primary to acquire its Lease")
    status, body = put(c.url("orders-b"), "after", b"acked by a")
    assert status == 200, body
    assert role(c.url("orders-a"))["appliedLsn"] >= body["lsn"]


async def test_every_step_of_a_switchover_survives_a_crash_before_its_status_write(cluster):
    c = cluster({**BASE_SPEC, "failover": {"policy": "manual", "leaseDuration": "3s"}})
    await c.one_pass()
    wait_for(lambda: writable(c.url("orders-a")), what="the primary to acquire its Lease")
    acked = {f"k{i}": b"v%d" % i for i in range(20)}
    for k, v in acked.items():
        assert put(c.url("orders-a"), k, v)[0] == 200
    wait_for(lambda: caught_up(c, "orders-a", "orders-b"), what="the mirror to apply every write")
    c.annotate("chronoshard.io/switchover-to", "orders-b")

    steps: list[str] = []

    async def crash_then_pass() -> dict[str, Any] | None:
        await c.crashed_pass()  # acts (fences, promotes, ...) and "dies" before writing the status
        status = await c.one_pass()  # the restarted operator: the same step again, from the status
        steps.append(str((status.get("operation") or {}).get("step")))
        return status if (status.get("lastOperation") or {}).get("outcome") else None

    done = await wait_for_async(crash_then_pass, 60.0, interval=0.2, what="the switchover through crashes")
    last = done["lastOperation"]
    assert (last["outcome"], last["term"], done["activeShardSet"]) == ("Succeeded", 2, f"{c.ns}/orders-b"), last
    assert done.get("lostWrites", []) == []
    assert {"CatchingUp", "Verifying"} <= set(steps), steps
    assert (role(c.url("orders-b"))["role"], role(c.url("orders-a"))["role"]) == ("primary", "mirror")
    wait_for(lambda: writable(c.url("orders-b")), what="the new primary to acquire its Lease")
    assert {k: value(c.url("orders-b"), k) for k in acked} == acked


async def test_one_dead_shard_moves_the_whole_mirrorset_the_live_shard_with_its_demotion_token(cluster):
    c = cluster(BASE_SPEC, shards=2)
    await c.one_pass()
    for shard in ("orders-a", "orders-a/1"):
        wait_for(lambda shard=shard: writable(c.url(shard)), what=f"{shard} to acquire its Lease")
    for i in range(10):
        for shard in ("orders-a", "orders-a/1"):
            assert put(c.url(shard), f"{shard.replace('/', '_')}-k{i}", b"v%d" % i)[0] == 200
    wait_for(lambda: caught_up(c, "orders-a", "orders-b") and caught_up(c, "orders-a/1", "orders-b/1"),
             what="both mirror shards to apply every write")
    await c.passes_until(lambda s: s["phase"] == "Replicating", "phase Replicating")

    c.nodes["orders-a/1"].kill()  # shard 1 dies; shard 0 of orders-a is alive and is switched over with it
    done = await c.passes_until(lambda s: (s.get("lastOperation") or {}).get("outcome") is not None,
                                "the failover")
    assert (done["lastOperation"]["kind"], done["activeShardSet"], done["term"]) == (
        "failover", f"{c.ns}/orders-b", 2)
    assert done.get("lostWrites", []) == []
    assert [r["primary"] for r in done["shards"]] == [f"{c.ns}/orders-b"] * 2
    fenced = [m for _, r, m in c.events if r == "Fenced"]
    assert len(fenced) == 1 and fenced[0].startswith(f"{c.ns}/orders-a[0] fenced at term 2"), fenced
    assert "WaitingForLease" in c.reasons()
    assert [role(c.url(n))["role"] for n in ("orders-b", "orders-b/1", "orders-a")] == ["primary", "primary",
                                                                                      "mirror"]
    assert role(c.url("orders-a"))["source"]["shardSet"] == f"{c.ns}/orders-b"
    for i in range(10):
        assert value(c.url("orders-b"), f"orders-a-k{i}") == b"v%d" % i
        assert value(c.url("orders-b/1"), f"orders-a_1-k{i}") == b"v%d" % i


async def test_a_spec_that_drops_the_active_member_is_refused_and_nothing_is_told_to_any_node(k8s_client, api,
                                                                                               namespace):
    for name in ("orders-a", "orders-c"):
        create_custom(k8s_client, namespace, "shardsets", name, {"shards": 1}, "ShardSet")
    create_custom(k8s_client, namespace, "mirrorsets", "orders", {
        "sourceRef": {"name": "orders-a"}, "mirrors": [{"shardSetRef": {"name": "orders-c"}}]}, "MirrorSet")
    # As if orders-b had been active (after a failover) and was then taken out of the spec.
    api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "mirrorsets", "orders", {
        "status": {"term": 4, "activeShardSet": f"{namespace}/orders-b", "activeSource": "orders-b"}})
    body = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "mirrorsets", "orders")
    status, events, _ = await controller.step(body)
    assert (status["phase"], status["term"], status["activeShardSet"]) == ("Failed", 4, f"{namespace}/orders-b")
    ready = next(x for x in status["conditions"] if x["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ActiveMemberRemoved")
    assert events == [] and "shards" not in status


async def test_a_failover_whose_target_dies_before_its_promotion_starts_over_towards_the_other_mirror(cluster):
    c = cluster({**BASE_SPEC, "failover": {"policy": "automatic", "leaseDuration": "6s"}},
                members=("orders-a", "orders-b", "orders-c"))
    await c.one_pass()
    wait_for(lambda: writable(c.url("orders-a")), what="the primary to acquire its Lease")
    status, body = put(c.url("orders-a"), "k", b"v")
    assert status == 200, body
    wait_for(lambda: caught_up(c, "orders-a", "orders-b") and caught_up(c, "orders-a", "orders-c"),
             what="both mirrors to apply the write")
    c.nodes["orders-a"].kill()
    # Both mirrors are equally caught up: the first listed (orders-b) is the target; it dies while the operator
    # waits for the dead primary's Lease.
    waiting = await c.passes_until(lambda s: (s.get("operation") or {}).get("step") == "WaitingForLease",
                                   "the failover waiting for the Lease")
    assert waiting["operation"]["to"] == f"{c.ns}/orders-b"
    c.nodes["orders-b"].kill()
    done = await c.passes_until(lambda s: (s.get("lastOperation") or {}).get("outcome") == "Succeeded",
                                "a failover towards orders-c")
    assert (done["activeShardSet"], done["term"], done["failovers"]) == (f"{c.ns}/orders-c", 4, 1)
    aborted = [m for _, r, m in c.events if r == "OperationAborted"]
    assert len(aborted) == 1 and f"the target {c.ns}/orders-b became unavailable" in aborted[0], aborted
    c_role = role(c.url("orders-c"))
    assert (c_role["role"], c_role["term"]) == ("primary", 4)
    wait_for(lambda: writable(c.url("orders-c")), what="orders-c to acquire its Lease")
    assert value(c.url("orders-c"), "k") == b"v"
