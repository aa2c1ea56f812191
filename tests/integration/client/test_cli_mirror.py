"""``chronoshard mirror status|switchover|failback`` against the real API server with the MirrorSet CRD.

The MirrorSet controller is not part of these tests: the status is written here through the status subresource,
and for ``--wait`` a stand-in thread does what docs/mirroring.md asks of the controller with the annotations (record
the value it handled, run the operation, set ``lastOperation``). The real controller's handling of the annotations
is tested with the controller.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chronoshard.shardnode.client.cli import main
from chronoshard.shardnode.client.cli_mirror import FAILBACK_ANNOTATION, SWITCHOVER_ANNOTATION
from kubernetes import client

# The MirrorSet status is written here: no MirrorSet controller may run beside.
pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

GROUP, VERSION, PLURAL = "chronoshard.io", "v1alpha1", "mirrorsets"
T0 = "2026-12-07T10:00:00Z"


def _copy(shardset: str, role: str, health: str, applied: int, lag: int, **extra: Any) -> dict[str, Any]:
    return {"shardSet": shardset, "role": role, "health": health, "state": "idle" if role == "primary" else
            "streaming", "appliedLSN": applied, "lastLSN": applied, "lagLSN": lag, "lagSeconds": lag / 100,
            "latencyMs": 3.0, "errorRate": 0.0, "capacity": 0.1, "restarts": 0, **extra}


def status(ns: str, other: str, *, term: int = 3, active: str | None = None,
           operation: dict[str, Any] | None = None) -> dict[str, Any]:
    a, b, c = f"{ns}/orders-a", f"{ns}/orders-b", f"{other}/orders-c"
    st: dict[str, Any] = {
        "phase": "Degraded", "term": term, "activeShardSet": active or a,
        "activeSource": (active or a).split("/")[1],
        "shards": [
            {"shard": 0, "primary": a, "copies": [_copy(a, "primary", "healthy", 120, 0),
                                                  _copy(b, "mirror", "healthy", 118, 2),
                                                  _copy(c, "mirror", "degraded", 90, 30,
                                                        reasons=["latency 310ms > 250ms"])]},
            {"shard": 1, "primary": a, "copies": [_copy(a, "primary", "healthy", 75, 0),
                                                  _copy(b, "mirror", "unavailable", 60, 15,
                                                        reasons=["3 failed probes"]),
                                                  _copy(c, "mirror", "healthy", 75, 0)]}],
        "lastOperation": {"kind": "failover", "from": b, "to": a, "term": term, "startedAt": T0,
                          "finishedAt": "2026-12-07T10:00:04Z", "outcome": "Succeeded",
                          "message": "shard 1 of orders-b unavailable", "heldSeconds": 4.2},
        "lostWrites": [{"shard": 1, "shardSet": b, "fromLSN": 61, "toLSN": 63, "count": 3, "confirmed": False,
                        "term": term, "time": "2026-12-07T10:00:04Z"}],
        "failovers": 1, "lastFailoverTime": T0,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": T0, "reason": "Replicating",
                        "message": "every mirror streams"}],
    }
    if operation is not None:
        st["operation"] = operation
    return st


@pytest.fixture()
def other_namespace(k8s_client) -> Iterator[str]:
    core = client.CoreV1Api(k8s_client)
    name = f"t-other-{os.urandom(4).hex()}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture()
def mirrorset(k8s_client, namespace, other_namespace) -> Iterator[client.CustomObjectsApi]:
    api = client.CustomObjectsApi(k8s_client)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MirrorSet", "metadata": {"name": "orders"},
            "spec": {"sourceRef": {"name": "orders-a"},
                     "mirrors": [{"shardSetRef": {"name": "orders-b"}},
                                 {"shardSetRef": {"name": "orders-c"}, "namespace": other_namespace}],
                     "replication": {"mode": "async"}}}
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    write_status(api, namespace, status(namespace, other_namespace))
    yield api


def write_status(api: client.CustomObjectsApi, ns: str, st: dict[str, Any]) -> None:
    api.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, "orders", {"status": st})


def cli(control_plane, namespace: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--kubeconfig", str(control_plane.kubeconfig), "-n", namespace, *argv], out=out)
    return code, out.getvalue()


def test_status_shows_copies_lost_writes_and_operations(control_plane, namespace, other_namespace, mirrorset,
                                                        capsys):
    code, out = cli(control_plane, namespace, "mirror", "status", "orders")
    assert code == 0
    assert f"MirrorSet {namespace}/orders: Degraded" in out and "Term:            3" in out
    assert f"Active:          {namespace}/orders-a   (source {namespace}/orders-a, async)" in out
    assert "Operation:       none in progress" in out
    assert (f"Last operation:  failover {namespace}/orders-b -> {namespace}/orders-a, term 3: Succeeded at "
            "2026-12-07T10:00:04Z, writes held 4.2s (shard 1 of orders-b unavailable)") in out
    rows = [line.split() for line in out.splitlines()]
    assert ["0", f"{other_namespace}/orders-c", "mirror", "degraded", "streaming", "90", "30", "0.30", "latency",
            "310ms", ">", "250ms"] in rows
    assert ["1", f"{namespace}/orders-b", "mirror", "unavailable", "streaming", "60", "15", "0.15", "3", "failed",
            "probes"] in rows
    assert ["1", f"{namespace}/orders-b", "61", "63", "3", "no", "3", "2026-12-07T10:00:04Z"] in rows
    assert ["Ready", "True", "Replicating", "every", "mirror", "streams"] in rows
    # -o json: the whole status, with the members and the mode.
    code, out = cli(control_plane, namespace, "mirror", "status", "orders", "-o", "json")
    doc = json.loads(out)
    assert code == 0 and doc["members"] == [f"{namespace}/orders-a", f"{namespace}/orders-b",
                                            f"{other_namespace}/orders-c"]
    assert doc["status"]["lostWrites"][0]["count"] == 3 and doc["mode"] == "async"
    assert doc["status"]["shards"][1]["copies"][2]["appliedLSN"] == 75
    # An unknown MirrorSet: exit 3 and says so.
    code, _ = cli(control_plane, namespace, "mirror", "status", "nope")
    assert code == 3 and f"MirrorSet {namespace}/nope not found" in capsys.readouterr().err


def _annotations(api: client.CustomObjectsApi, ns: str) -> dict[str, str]:
    obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "orders")
    return dict(obj["metadata"].get("annotations") or {})


def test_switchover_and_failback_refuse_what_cannot_be_asked(control_plane, namespace, other_namespace, mirrorset,
                                                              capsys):
    code, _ = cli(control_plane, namespace, "mirror", "switchover", "orders", "--to", "orders-x")
    assert code == 1 and "orders-x is not a member of MirrorSet" in capsys.readouterr().err
    code, _ = cli(control_plane, namespace, "mirror", "switchover", "orders", "--to", "orders-a")
    assert code == 1 and f"{namespace}/orders-a is already the active ShardSet" in capsys.readouterr().err
    code, _ = cli(control_plane, namespace, "mirror", "failback", "orders")
    assert code == 1 and "already active on its source" in capsys.readouterr().err
    code, _ = cli(control_plane, namespace, "mirror", "failback", "nope")
    assert code == 3 and "not found" in capsys.readouterr().err
    op = {"kind": "failover", "step": "WaitingForLease", "term": 4, "from": f"{namespace}/orders-a",
          "to": f"{namespace}/orders-b", "reason": "shard 0 unavailable", "startedAt": T0}
    write_status(mirrorset, namespace, status(namespace, other_namespace, operation=op))
    code, _ = cli(control_plane, namespace, "mirror", "switchover", "orders", "--to", f"{other_namespace}/orders-c")
    err = capsys.readouterr().err
    assert code == 1 and "a failover from" in err and "is in progress (step WaitingForLease, term 4)" in err
    assert _annotations(mirrorset, namespace) == {}  # nothing was asked
    code, out = cli(control_plane, namespace, "mirror", "status", "orders")
    assert (f"Operation:       failover {namespace}/orders-a -> {namespace}/orders-b, step WaitingForLease, term 4, "
            f"since {T0} (shard 0 unavailable)") in out


class StandInController:
    """Does with the annotations what docs/mirroring.md asks of the MirrorSet controller, in a thread."""

    def __init__(self, api: client.CustomObjectsApi, ns: str, other: str, outcome: str = "Succeeded") -> None:
        self.api, self.ns, self.other, self.outcome = api, ns, other, outcome
        self.stop = threading.Event()
        self.handled: list[tuple[str, str]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StandInController:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            obj = self.api.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, "orders")
            ann, st = obj["metadata"].get("annotations") or {}, obj.get("status") or {}
            want, fb = ann.get(SWITCHOVER_ANNOTATION), ann.get(FAILBACK_ANNOTATION)
            if want and want != st.get("lastSwitchoverRequest"):
                named = want.split("@", 1)[0]  # as the controller reads it
                target = named if "/" in named else f"{self.ns}/{named}"
                self._finish(st, "switchover", target, {"lastSwitchoverRequest": want})
            elif fb and fb != st.get("lastFailbackRequest"):
                self._finish(st, "failback", f"{self.ns}/orders-a", {"lastFailbackRequest": fb})

    def _finish(self, st: dict[str, Any], kind: str, target: str, handled: dict[str, str]) -> None:
        self.handled.append((kind, target))
        if self.outcome == "Refused":  # as the controller refuses: the value recorded, no operation started
            write_status(self.api, self.ns, handled)
            return
        done = self.outcome == "Succeeded"
        term = st["term"] + 1 if done else st["term"]
        last = {"kind": kind, "from": st["activeShardSet"], "to": target, "term": term, "startedAt": T0,
                "finishedAt": "2026-12-07T10:05:00Z", "outcome": self.outcome,
                "message": "done" if done else "target not caught up within switchoverTimeout", "heldSeconds": 0.4}
        new = status(self.ns, self.other, term=term, active=target if done else st["activeShardSet"])
        kept = {k: st[k] for k in ("lastSwitchoverRequest", "lastFailbackRequest") if k in st}
        write_status(self.api, self.ns, new | {"lastOperation": last} | kept | handled)


def test_switchover_then_failback_with_wait(control_plane, namespace, other_namespace, mirrorset, capsys):
    with StandInController(mirrorset, namespace, other_namespace) as ctl:
        code, out = cli(control_plane, namespace, "mirror", "switchover", "orders", "--to", "orders-b", "--wait",
                        "--timeout", "60")
        assert code == 0, capsys.readouterr().err
        assert f"requested: switchover of MirrorSet {namespace}/orders to {namespace}/orders-b" in out
        assert f"switchover Succeeded: {namespace}/orders-a -> {namespace}/orders-b, term 4 (done)" in out
        first = _annotations(mirrorset, namespace)[SWITCHOVER_ANNOTATION]
        assert first.startswith(f"{namespace}/orders-b@")
        code, out = cli(control_plane, namespace, "mirror", "failback", "orders", "--wait", "-o", "json")
        doc = json.loads(out)
        assert code == 0 and doc["outcome"] == "Succeeded" and doc["status"]["activeShardSet"] == \
            f"{namespace}/orders-a"
        token = _annotations(mirrorset, namespace)[FAILBACK_ANNOTATION]
        assert doc["status"]["lastFailbackRequest"] == token
        # The same member again: a new value (another time after the @), the same target.
        code, out = cli(control_plane, namespace, "mirror", "switchover", "orders", "--to", "orders-b", "--wait")
        assert code == 0 and "term 6" in out
        again = _annotations(mirrorset, namespace)[SWITCHOVER_ANNOTATION]
        assert again != first and again.startswith(f"{namespace}/orders-b@")
        assert ctl.handled == [("switchover", f"{namespace}/orders-b"), ("failback", f"{namespace}/orders-a"),
                               ("switchover", f"{namespace}/orders-b")]


def test_an_aborted_switchover_exits_1_and_an_unanswered_one_4(control_plane, namespace, other_namespace, mirrorset,
                                                               capsys):
    with StandInController(mirrorset, namespace, other_namespace, outcome="Aborted"):
        code, out = cli(control_plane, namespace, "mirror", "switchover", "orders", "--to",
                        f"{other_namespace}/orders-c", "--wait")
    assert code == 1 and "switchover Aborted" in out and "not caught up" in out
    with StandInController(mirrorset, namespace, other_namespace, outcome="Refused"):
        code, out = cli(control_plane, namespace, "mirror", "switchover", "orders", "--to", "orders-b", "--wait")
    assert code == 1 and "switchover Refused: the MirrorSet controller took the request but started no" in out
    # No controller: the request is recorded, the wait runs out (exit 4) and says the switchover goes on.
    code, out = cli(control_plane, namespace, "mirror", "switchover", "orders", "--to", "orders-b", "--wait",
                    "--timeout", "1")
    assert code == 4 and "not finished within 1s" in out
    assert _annotations(mirrorset, namespace)[SWITCHOVER_ANNOTATION].startswith(f"{namespace}/orders-b@")
    # Without --wait the command only asks.
    write_status(mirrorset, namespace, status(namespace, other_namespace, term=4, active=f"{namespace}/orders-b"))
    code, out = cli(control_plane, namespace, "mirror", "failback", "orders")
    assert code == 0 and f"requested: failback of MirrorSet {namespace}/orders to {namespace}/orders-a" in out
    assert FAILBACK_ANNOTATION in _annotations(mirrorset, namespace)


def test_kubectl_plugin_runs_mirror_status(control_plane, namespace, mirrorset):
    env = dict(os.environ, KUBECONFIG=str(control_plane.kubeconfig),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    kubectl = Path(os.environ["CHRONOSHARD_ENVTEST_BIN"]) / "kubectl"

    async def run() -> tuple[int | None, str, str]:
        proc = await asyncio.create_subprocess_exec(str(kubectl), "chronoshard", "mirror", "status", "orders",
                                                    "-n", namespace, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode, out.decode(), err.decode()

    code, out, err = asyncio.run(run())
    assert code == 0, err
    assert f"MirrorSet {namespace}/orders: Degraded" in out
