"""``chronoshard split|move|merge`` and ``reshard status`` against the real API server with the Reshard CRD.

The Reshard controller is not part of these tests (its own tests drive it): the commands' objects are read back as
created, the status is written here through the status subresource, and for ``--wait`` a stand-in thread finishes
the Reshard as the controller would.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from chronoshard.shardnode.client.cli import main
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, format_id, initial_map
from kubernetes import client

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

GROUP, VERSION, PLURAL = "chronoshard.io", "v1alpha1", "reshards"
T0 = "2026-12-07T10:00:00Z"
# Epoch 4: partition 3 (the top half of partition 2) lives on shard 2 as well.
M = PartitionMap(4, 3, (*initial_map(3).partitions[:2],
                        Partition(2, initial_map(3).partitions[2].start, 0xEFFFFFFFFFFFFFFF, 2),
                        Partition(3, 0xF000000000000000, 2**64 - 1, 2)))


@pytest.fixture()
def orders_map(k8s_client, namespace) -> Iterator[client.CustomObjectsApi]:
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="orders-partitions"), data={"map.json": M.to_json()}))
    yield client.CustomObjectsApi(k8s_client)


def cli(control_plane, namespace: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--kubeconfig", str(control_plane.kubeconfig), "-n", namespace, *argv], out=out)
    return code, out.getvalue(), err.getvalue()


def reshards(api: client.CustomObjectsApi, ns: str) -> list[dict[str, Any]]:
    return sorted(api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"],
                  key=lambda o: o["metadata"]["creationTimestamp"] + o["metadata"]["name"])


def created_name(out: str) -> str:
    line = next(line for line in out.splitlines() if line.endswith(" created"))
    return line.split()[0].split("/", 1)[1]


def test_split_move_merge_create_reshards(control_plane, namespace, orders_map):
    api = orders_map
    code, out, _ = cli(control_plane, namespace, "split", "orders", "1", "--move-upper-to", "2")
    name = created_name(out)
    assert code == 0 and name.startswith("orders-split-")
    obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    # The upper half of the split gets the largest id + 1 (4), which the next step moves; the CRD's defaults apply.
    assert obj["spec"]["shardSetRef"] == {"name": "orders"}
    assert obj["spec"]["steps"] == [{"split": {"partition": 1}}, {"move": {"partition": 4, "toShard": 2}}]
    assert obj["spec"]["gracePeriod"] == "5m" and obj["spec"]["cutoverTimeout"] == "2s"

    p1 = M.partitions[1]
    at = format_id(p1.start + 12345)
    code, out, _ = cli(control_plane, namespace, "split", "orders", "1", "--at", at.upper(), "-o", "json",
                       "--grace-period", "30s")
    doc = json.loads(out)
    assert code == 0 and doc["spec"]["steps"] == [{"split": {"partition": 1, "at": at}}]
    assert doc["spec"]["gracePeriod"] == "30s"

    code, out, _ = cli(control_plane, namespace, "move", "orders", "3", "--to", "0")
    obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, created_name(out))
    assert code == 0 and obj["spec"]["steps"] == [{"move": {"partition": 3, "toShard": 0}}]

    code, out, _ = cli(control_plane, namespace, "merge", "orders", "3", "2")
    obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, created_name(out))
    assert code == 0 and obj["spec"]["steps"] == [{"merge": {"partitions": [2, 3]}}]
    assert len(reshards(api, namespace)) == 4


@pytest.mark.parametrize(("argv", "says"), [
    (["split", "orders", "9"], "no partition 9"),
    (["split", "orders", "1", "--at", format_id(M.partitions[1].start)], "would leave a half"),
    (["split", "orders", "1", "--at", "xyz"], "up to 16 hex digits"),
    (["move", "orders", "3", "--to", "2"], "on shard 2 already"),
    (["move", "orders", "3", "--to", "3"], "shards 0..2"),
    (["merge", "orders", "0", "2"], "not adjacent"),
    (["merge", "orders", "1", "2"], "different shards"),
])
def test_refused_requests_create_nothing(control_plane, namespace, orders_map, argv, says):
    code, out, err = cli(control_plane, namespace, *argv)
    assert code == 1 and says in err and out == ""
    assert reshards(orders_map, namespace) == []


def test_a_shardset_without_a_map_is_not_found(control_plane, namespace, orders_map):
    code, _, err = cli(control_plane, namespace, "move", "billing", "0", "--to", "1")
    assert code == 3 and "billing-partitions" in err


def running_status() -> dict[str, Any]:
    return {"phase": "Running", "observedGeneration": 1, "currentStep": 1, "startEpoch": 4, "epoch": 5,
            "startTime": T0,
            "steps": [{"index": 0, "type": "split", "phase": "Completed", "partitions": [1, 4], "epoch": 5,
                       "splitAt": "7fffffffffffffff"},
                      {"index": 1, "type": "move", "phase": "Copying", "partition": 4, "fromShard": 1, "toShard": 2,
                       "copiedBlocks": 120400, "totalBlocks": 250000, "sourceLsn": 88123, "lagSeconds": 0.4,
                       "cutoverAttempts": 1, "pausedMs": None, "verified": None}],
            "conditions": [{"type": "Progressing", "status": "True", "lastTransitionTime": T0, "reason": "Copying",
                            "message": "step 1: copying partition 4 to shard 2"}]}


def test_status_lists_and_shows_steps_and_progress(control_plane, namespace, orders_map):
    api = orders_map
    code, out, _ = cli(control_plane, namespace, "split", "orders", "1", "--move-upper-to", "2")
    name = created_name(out)
    api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": running_status()})
    code, out, _ = cli(control_plane, namespace, "reshard", "status")
    rows = [line.split() for line in out.splitlines()]
    assert code == 0 and rows[0] == ["NAME", "SHARDSET", "PHASE", "STEP", "AGE"]
    assert rows[1][:4] == [name, "orders", "Running", "2/2"]

    code, out, _ = cli(control_plane, namespace, "reshard", "status", name)
    assert code == 0 and f"Reshard {namespace}/{name}: Running" in out and "Step:            2 of 2" in out
    lines = out.splitlines()
    split_row = next(line for line in lines if line.startswith("0 "))
    move_row = next(line for line in lines if line.startswith("1 "))
    assert "split" in split_row and "Completed" in split_row and "at 7fffffffffffffff" in split_row
    assert "partitions 1, 4" in split_row and "epoch 5" in split_row
    assert "Copying" in move_row and "partition 4 to shard 2" in move_row and "shard 1 -> 2" in move_row
    assert "copied 120400/250000 (48.2%)" in move_row and "lag 0.40s" in move_row
    assert "source LSN 88123" in move_row and "cutover attempts 1" in move_row
    assert any(line.split()[:3] == ["Progressing", "True", "Copying"] for line in lines)

    code, out, _ = cli(control_plane, namespace, "reshard", "status", name, "-o", "json")
    assert code == 0 and json.loads(out)["status"]["steps"][1]["copiedBlocks"] == 120400
    code, _, err = cli(control_plane, namespace, "reshard", "status", "nope")
    assert code == 3 and "nope" in err


def test_wait_follows_the_reshard_to_its_end(control_plane, namespace, orders_map):
    api = orders_map

    def controller(phase: str) -> threading.Thread:
        def finish() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                items = [o for o in reshards(api, namespace) if not o.get("status")]
                if items:
                    st = running_status() | {"phase": phase, "currentStep": 0}
                    st["steps"] = st["steps"][:1]
                    api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL,
                                                              items[0]["metadata"]["name"], {"status": st})
                    return
                time.sleep(0.2)

        t = threading.Thread(target=finish, daemon=True)
        t.start()
        return t

    t = controller("Completed")
    code, out, _ = cli(control_plane, namespace, "split", "orders", "0", "--wait", "--timeout", "60")
    t.join()
    assert code == 0 and ": Completed" in out
    t = controller("RolledBack")
    code, out, _ = cli(control_plane, namespace, "move", "orders", "0", "--to", "1", "--wait", "--timeout", "60")
    t.join()
    assert code == 1 and ": RolledBack" in out
    # Nobody finishes this one: the wait gives up, exit 4, the Reshard stays.
    code, out, _ = cli(control_plane, namespace, "move", "orders", "1", "--to", "0", "--wait", "--timeout", "1")
    assert code == 4 and ": Pending" in out
