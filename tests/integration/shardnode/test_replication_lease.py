"""The primary's Lease against the real kube-apiserver (docs/mirroring.md, "Fencing before promotion"): a real
`chronoshard-node` process, given a primary role document with ``lease``, creates and renews the
coordination.k8s.io/v1 Lease through its kubeconfig (a ServiceAccount allowed only the Lease verbs); once the
operator's takeover holds the Lease it refuses writes (503 lease_lost) and never takes it back, until a role
document of a newer term; when its renewals fail (its RBAC removed) it fences itself after 2/3 of the duration, and
writes resume with the first renewal that succeeds."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.integration.shardnode.procs import Proc, http, http_json, node
from tests.support import rbac
from tests.support.servers import keyring_dir
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

LEASE = "orders-a-0-primary"
POD = "orders-a-0"
FENCED = "chronoshard-operator/fenced-term-1"


@dataclass
class World:
    namespace: str
    kubeconfig: Path
    leases: client.CoordinationV1Api
    rbac: client.RbacAuthorizationV1Api


def lease_rules() -> list[client.V1PolicyRule]:
    return [client.V1PolicyRule(api_groups=["coordination.k8s.io"], resources=["leases"],
                                verbs=["get", "create", "update"])]


@pytest.fixture
def world(control_plane, k8s_client, tmp_path) -> Iterator[World]:
    from chronoshard.devcluster.controlplane import kubeconfig_document

    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    rbac.service_account(core, ns, "shard")
    rbac.bind_role(rb, ns, "shard", lease_rules())
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig_document(control_plane.server, rbac.token(core, ns, "shard", None),
                                                       control_plane.ca_pem, user="shard")))
    yield World(ns, path, client.CoordinationV1Api(k8s_client), rb)
    core.delete_namespace(ns)


def role(world: World, term: int) -> dict[str, Any]:
    return {"term": term, "role": "primary",
            "lease": {"namespace": world.namespace, "name": LEASE, "durationSeconds": 3}}


def lease(world: World) -> Any:
    try:
        return world.leases.read_namespaced_lease(LEASE, world.namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def write(url: str, key: str = "k") -> tuple[int, str | None]:
    """A block write: (status, the error code of a refusal)."""
    status, body = http("PUT", f"{url}/v1/tables/t/blocks/{key}", b"v")
    return status, None if status == 200 else str(json.loads(body)["error"])


def lease_view(url: str) -> dict[str, Any]:
    return dict(http_json("GET", url + "/v1/replication")[1]["lease"])


@pytest.fixture
def primary(world: World, tmp_path: Path) -> Iterator[Proc]:
    env = {**os.environ, "KUBECONFIG": str(world.kubeconfig), "POD_NAME": POD}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = node(tmp_path, keyring_dir(tmp_path), env=env).start()
    yield proc
    proc.stop()


def test_the_primary_holds_its_lease_and_is_fenced_by_a_takeover(world: World, primary: Proc):
    url = primary.url
    assert http_json("PUT", url + "/v1/replication", role(world, 1))[0] == 200
    held = wait_for(lambda: (lambda ls: ls if ls is not None and ls.spec.holder_identity == POD else None)(
        lease(world)), what="the node to create its Lease")
    assert held.spec.lease_duration_seconds == 3 and held.spec.lease_transitions == 0
    wait_for(lambda: write(url)[0] == 200, what="writes under the held Lease")
    view = lease_view(url)
    assert view["held"] and not view["selfFenced"] and view["name"] == LEASE
    assert "chronoshard_node_lease_held 1.0" in http("GET", url + "/metrics")[1].decode()
    first = held.spec.renew_time
    wait_for(lambda: lease(world).spec.renew_time != first, what="a renewal (every duration/3)")

    # The operator takes the Lease over (as for an unreachable primary): the node stops writing, for good.
    taken = lease(world)
    taken.spec.holder_identity = FENCED
    world.leases.replace_namespaced_lease(LEASE, world.namespace, taken)
    wait_for(lambda: write(url) == (503, "lease_lost"), what="the node to find its Lease taken")
    wait_for(lambda: lease_view(url)["holder"] == FENCED, what="the node to report the holder")
    view = lease_view(url)
    assert not view["held"] and view["selfFenced"]
    assert http_json("GET", url + "/v1/replication")[1]["writes"] == {"accepting": False, "reason": "lease_lost"}
    assert lease(world).spec.holder_identity == FENCED  # not taken back
    assert "chronoshard_node_lease_held 0.0" in http("GET", url + "/metrics")[1].decode()
    assert write(url) == (503, "lease_lost")

    # A role document of a newer term (made primary again): the fence of term 1 no longer binds it.
    assert http_json("PUT", url + "/v1/replication", role(world, 2))[0] == 200
    wait_for(lambda: write(url)[0] == 200, what="writes under the newer term")
    again = lease(world)
    assert again.spec.holder_identity == POD and again.spec.lease_transitions == 1


def test_a_primary_that_cannot_renew_fences_itself_until_it_can(world: World, primary: Proc):
    url = primary.url
    assert http_json("PUT", url + "/v1/replication", role(world, 1))[0] == 200
    wait_for(lambda: write(url)[0] == 200, what="writes under the held Lease")
    # Its RBAC removed: every renewal is refused (403) by the API server.
    world.rbac.delete_namespaced_role_binding("shard-role", world.namespace)
    wait_for(lambda: write(url) == (503, "lease_lost"), what="the node to fence itself")
    assert lease_view(url)["selfFenced"] and lease(world).spec.holder_identity == POD
    world.rbac.create_namespaced_role_binding(world.namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="shard-role"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="shard-role"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="shard", namespace=world.namespace)]))
    wait_for(lambda: write(url)[0] == 200, what="writes after a renewal succeeded again")
    assert not lease_view(url)["selfFenced"]


def test_no_lease_no_gate(primary: Proc):
    url = primary.url
    assert http_json("PUT", url + "/v1/replication", {"term": 1, "role": "primary"})[0] == 200
    assert write(url)[0] == 200 and http_json("GET", url + "/v1/replication")[1]["lease"] is None
