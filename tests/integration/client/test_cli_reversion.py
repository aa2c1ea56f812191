"""``kubectl chronoshard restore`` and ``approve`` through real kubectl (the plugin found on PATH) against the real
API server, with the Reversion controller's passes running meanwhile and the shards' shadows stood in for by
tests/support/shadowstub.py (real HTTP at each pod's IP on port 7403; the real shadow process is exercised in
tests/integration/operator/test_reversion_real_shadow.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime
from pathlib import Path

import pytest
from chronoshard.operator import kube
from chronoshard.operator.reversion import controller
from kubernetes import client

from tests.support.shadowstub import GROUP, VERSION, StubShadow, stub_shardset

pytestmark = pytest.mark.integration

POINT = "2026-11-30T09:00:00Z"
_POINT_S = datetime.fromisoformat(POINT.replace("Z", "+00:00")).timestamp()


@pytest.fixture()
def api(k8s_client):
    previous = kube._api
    kube.set_api_client(k8s_client)
    yield client.CustomObjectsApi(k8s_client)
    kube.set_api_client(previous)


async def _controller(api: client.CustomObjectsApi, ns: str, stop: asyncio.Event) -> None:
    """The daemon's work for every Reversion of the namespace: a pass from the stored object, status written."""
    while not stop.is_set():
        listing = await asyncio.to_thread(api.list_namespaced_custom_object, GROUP, VERSION, ns, "reversions")
        for body in listing["items"]:
            st = await controller.step(body)
            await asyncio.to_thread(controller.write_status, body, st.status)
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except TimeoutError:
            pass


async def _kubectl(control_plane, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    env = dict(os.environ, KUBECONFIG=str(control_plane.kubeconfig),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    kubectl = Path(os.environ["CHRONOSHARD_ENVTEST_BIN"]) / "kubectl"
    proc = await asyncio.create_subprocess_exec(str(kubectl), "chronoshard", *args, env=env,
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_restore_prints_the_plan_and_approve_runs_exactly_that_digest(k8s_client, control_plane, api, namespace):
    s0, s1 = StubShadow(shard=0), StubShadow(shard=1)
    s0.write("orders", "a", b"good", _POINT_S - 60)
    s0.write("orders", "a", b"bad", _POINT_S + 60)
    s1.write("orders", "b", b"oops", _POINT_S + 60)

    async def scenario() -> None:
        async with stub_shardset(k8s_client, namespace, [s0, s1]):
            stop = asyncio.Event()
            loop_task = asyncio.create_task(_controller(api, namespace, stop))
            try:
                code, out, err = await _kubectl(control_plane, "restore", "undo", "-n", namespace, "--shardset",
                                                "orders", "--table", "orders", "--start", "a", "--end", "z",
                                                "--time", POINT)
                assert code == 0, err
                assert f"Reversion {namespace}/undo: AwaitingApproval" in out
                assert "Plan:          2 key(s): restore 1, create 0, delete 1 (4 bytes)" in out
                obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "undo")
                digest = obj["status"]["digest"]
                assert f"Digest:        {digest}" in out and f"kubectl chronoshard approve undo -n {namespace}" in out
                assert obj["spec"]["range"] == {"start": "a", "end": "z"} and "approve" not in obj["spec"]
                # Running restore again with the same flags shows the same Reversion; other flags are refused.
                again = await _kubectl(control_plane, "-n", namespace, "-o", "json", "restore", "undo", "--shardset",
                                       "orders", "--table", "orders", "--start", "a", "--end", "z", "--time", POINT)
                assert again[0] == 0 and json.loads(again[1])["digest"] == digest
                other = await _kubectl(control_plane, "-n", namespace, "restore", "undo", "--shardset", "orders",
                                       "--table", "orders", "--key", "a", "--time", POINT)
                assert other[0] == 1 and "exists with another spec" in other[2]

                # Saying no approves nothing.
                code, out, err = await _kubectl(control_plane, "approve", "undo", "-n", namespace, stdin=b"n\n")
                assert code == 1 and f"Approve digest {digest}" in out and "not approved" in err
                obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "undo")
                assert "approve" not in obj["spec"] and obj["status"]["phase"] == "AwaitingApproval"

                code, out, err = await _kubectl(control_plane, "approve", "undo", "-n", namespace, "--yes",
                                                "--wait", "60")
                assert code == 0, err
                assert f"approved: Reversion undo runs digest {digest[:12]}" in out
                assert f"Reversion {namespace}/undo: Completed" in out and "Progress:      2/2" in out
                obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "undo")
                assert obj["spec"]["approve"] == digest == obj["status"]["approvedDigest"]
                assert [p["phase"] for s in (s0, s1) for p in s.plans.values()] == ["completed", "completed"]

                # Nothing left to approve, and an unknown name is "not found".
                code, _, err = await _kubectl(control_plane, "approve", "undo", "-n", namespace, "--yes")
                assert code == 1 and "is Completed" in err
                code, _, err = await _kubectl(control_plane, "approve", "nope", "-n", namespace, "--yes")
                assert code == 3 and "not found" in err
                # kubectl get shows the columns.
                listing = await asyncio.to_thread(control_plane.kubectl, "get", "rev", "-n", namespace,
                                                  "--no-headers")
                assert listing.stdout.split()[:6] == ["undo", "orders", "Completed", "2", "2/2", digest[:12]]
            finally:
                stop.set()
                await loop_task

    asyncio.run(scenario())


def test_restore_refuses_keys_with_a_range_and_needs_a_shardset(control_plane, namespace):
    async def scenario() -> None:
        code, _, err = await _kubectl(control_plane, "restore", "x", "-n", namespace, "--shardset", "orders",
                                      "--table", "orders", "--key", "a", "--start", "a", "--end", "b", "--time", POINT)
        assert code == 1 and "not both" in err
        code, _, err = await _kubectl(control_plane, "restore", "x", "-n", namespace, "--table", "orders",
                                      "--time", POINT)
        assert code == 2 and "--shardset" in err

    asyncio.run(scenario())
