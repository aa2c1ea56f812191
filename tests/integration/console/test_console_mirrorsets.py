"""The console's MirrorSet view against the real kube-apiserver: a MirrorSet whose status the test writes through
the status subresource, read through the console process as a user RBAC lets read MirrorSets (shown, and named on
its members' ShardSet pages) and as one it does not (none listed, 403 on the object, no MirrorSet on the ShardSet);
then the page itself in Debian's Chromium."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from chronoshard.devcluster.controlplane import kubeconfig_document
from kubernetes import client

from tests.integration.shardnode.procs import Proc, free_port
from tests.support import rbac
from tests.support.browser import VIEWPORT, chromium, screenshot, screenshots_on_failure
from tests.support.shadowstub import GROUP, VERSION, create_custom
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

USERS = ("watcher", "blind")
NOW = "2026-12-07T12:00:00Z"
STATUS: dict[str, Any] = {
    "term": 3, "activeShardSet": "{ns}/orders-a", "activeSource": "orders-a", "phase": "SwitchingOver",
    "conditions": [{"type": "Ready", "status": "False", "reason": "Operation", "message": "CatchingUp",
                    "lastTransitionTime": NOW}],
    "shards": [{"shard": 0, "primary": "{ns}/orders-a", "copies": [
        {"shardSet": "{ns}/orders-b", "role": "mirror", "health": "degraded", "reasons": ["lag 7.5s > 5s"],
         "state": "streaming", "appliedLSN": 90, "lagLSN": 10, "lagSeconds": 7.5},
        {"shardSet": "{ns}/orders-a", "role": "primary", "health": "healthy", "reasons": [], "state": "idle",
         "appliedLSN": 100}]}],
    "operation": {"kind": "switchover", "step": "CatchingUp", "term": 4, "from": "{ns}/orders-a",
                  "to": "{ns}/orders-b", "reason": "requested", "startedAt": NOW},
    "lastOperation": {"kind": "failover", "from": "{ns}/orders-b", "to": "{ns}/orders-a", "term": 3,
                      "outcome": "Succeeded", "heldSeconds": 9.5, "startedAt": NOW, "finishedAt": NOW},
    "lostWrites": [{"shard": 0, "shardSet": "{ns}/orders-b", "fromLSN": 40, "toLSN": 43, "count": 3,
                    "confirmed": False, "term": 3, "time": NOW}],
}


@dataclass
class World:
    namespace: str
    console: Proc
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.console.url


def _status(ns: str) -> dict[str, Any]:
    return json.loads(json.dumps(STATUS).replace("{ns}", ns))


def _can_list(authz: client.AuthorizationV1Api, user: str, ns: str) -> bool:
    review = authz.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, resource_attributes=client.V1ResourceAttributes(group=GROUP, resource="mirrorsets", verb="list",
                                                                   namespace=ns))))
    return bool(review.status.allowed)


@pytest.fixture(scope="module")
def world(control_plane, k8s_client, tmp_path_factory) -> Iterator[World]:
    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    root = tmp_path_factory.mktemp("console-mirrorsets")
    rbac.service_account(core, ns, "console")
    binding = rbac.bind_cluster_role(rb, "system:auth-delegator", ns, "console")  # TokenReview at sign-in
    for user in USERS:
        rbac.service_account(core, ns, user)
    read = ["get", "list"]
    rbac.bind_role(rb, ns, "watcher", [client.V1PolicyRule(api_groups=[GROUP], resources=["shardsets",
                                                                                          "mirrorsets"], verbs=read)])
    rbac.bind_role(rb, ns, "blind", [client.V1PolicyRule(api_groups=[GROUP], resources=["shardsets"], verbs=read)])
    wait_for(lambda: _can_list(client.AuthorizationV1Api(k8s_client), f"system:serviceaccount:{ns}:watcher", ns),
             what="the RBAC bindings to take effect")
    for name in ("orders-a", "orders-b", "lonely"):
        create_custom(k8s_client, ns, "shardsets", name, {"shards": 1, "tables": [{"name": "t"}]}, "ShardSet")
    create_custom(k8s_client, ns, "mirrorsets", "orders",
                  {"sourceRef": {"name": "orders-a"}, "mirrors": [{"shardSetRef": {"name": "orders-b"}}],
                   "replication": {"mode": "async"}}, "MirrorSet")
    client.CustomObjectsApi(k8s_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, "mirrorsets", "orders", {"status": _status(ns)})
    kubeconfig = root / "console-kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_document(
        control_plane.server, rbac.token(core, ns, "console", None), control_plane.ca_pem, user="console")))
    port = free_port()
    console = Proc([sys.executable, "-m", "chronoshard.shardnode.console.main", "--insecure", "--host", "127.0.0.1",
                    "--port", str(port), "--kubeconfig", str(kubeconfig), "--service-account", f"{ns}/console",
                    "--log-level", "DEBUG"], port, root / "console.log")
    console.start()
    yield World(ns, console, {u: rbac.token(core, ns, u, None) for u in USERS})
    console.stop()
    rb.delete_cluster_role_binding(binding)
    core.delete_namespace(ns)


def signed_in(world: World, user: str) -> requests.Session:
    s = requests.Session()
    r = s.post(world.url + "/api/v1/session", json={"token": world.tokens[user]}, timeout=30)
    assert r.status_code == 200, r.text
    return s


def get(s: requests.Session, world: World, path: str) -> tuple[int, Any]:
    r = s.get(world.url + "/api/v1" + path, timeout=30)
    return r.status_code, r.json()


def test_a_user_allowed_to_read_mirrorsets_sees_the_status_shaped_for_the_page(world):
    ns, s = world.namespace, signed_in(world, "watcher")
    status, doc = get(s, world, f"/mirrorsets?namespace={ns}")
    assert status == 200, doc
    [item] = doc["items"]
    assert (item["name"], item["term"], item["phase"], item["mode"]) == ("orders", 3, "SwitchingOver", "async")
    assert item["members"] == [f"{ns}/orders-a", f"{ns}/orders-b"]
    assert (item["lostWrites"], item["unconfirmedLostWrites"]) == (1, 1)
    status, view = get(s, world, f"/namespaces/{ns}/mirrorsets/orders")
    assert status == 200, view
    copies = view["shards"][0]["copies"]
    assert [(c["shardSet"], c["role"], c["health"]) for c in copies] == [
        (f"{ns}/orders-a", "primary", "healthy"), (f"{ns}/orders-b", "mirror", "degraded")]
    assert copies[1]["reasons"] == ["lag 7.5s > 5s"] and copies[1]["appliedLSN"] == 90
    assert view["operation"]["step"] == "CatchingUp" and view["lastOperation"]["heldSeconds"] == 9.5
    assert view["lostWrites"][0]["confirmed"] is False and view["conditions"][0]["type"] == "Ready"
    assert get(s, world, f"/namespaces/{ns}/mirrorsets/nope")[0] == 404


def test_the_shardset_pages_name_the_mirrorset_of_each_member(world):
    ns, s = world.namespace, signed_in(world, "watcher")
    _, b = get(s, world, f"/namespaces/{ns}/shardsets/orders-b")
    assert b["mirrorSet"] == {"namespace": ns, "name": "orders", "role": "mirror", "active": False,
                              "phase": "SwitchingOver", "term": 3}
    _, listed = get(s, world, f"/shardsets?namespace={ns}")
    by_name = {i["name"]: i["mirrorSet"] for i in listed["items"]}
    assert by_name["orders-a"]["role"] == "source" and by_name["orders-a"]["active"] is True
    assert by_name["lonely"] is None


def test_a_user_without_rbac_on_mirrorsets_sees_none(world):
    ns, s = world.namespace, signed_in(world, "blind")
    assert get(s, world, f"/mirrorsets?namespace={ns}") == (200, {"items": []})
    assert get(s, world, "/mirrorsets") == (200, {"items": []})
    status, doc = get(s, world, f"/namespaces/{ns}/mirrorsets/orders")
    assert (status, doc["error"]) == (403, "forbidden")
    status, b = get(s, world, f"/namespaces/{ns}/shardsets/orders-b")
    assert status == 200 and b["mirrorSet"] is None


def test_the_mirrorset_page_in_a_browser(world):
    ns = world.namespace
    with chromium() as browser, screenshots_on_failure(browser):
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.goto(world.url + "/")
        field = page.get_by_label("Kubernetes bearer token")
        field.fill(world.tokens["watcher"])
        field.press("Enter")
        page.get_by_text(f"system:serviceaccount:{ns}:watcher").wait_for()
        page.goto(f"{world.url}/#/ns/{ns}/shardsets/orders-b")
        page.get_by_role("link", name=f"MirrorSet {ns}/orders").click()
        page.get_by_role("heading", name=f"MirrorSet {ns}/orders", level=1).wait_for()
        copies = page.get_by_role("table", name="Shard 0: copies")
        copies.wait_for()
        headers = copies.get_by_role("columnheader").all_inner_texts()
        assert headers == ["ShardSet", "Role", "Health", "Replication state", "Applied LSN", "Lag"]
        mirror_row = copies.get_by_role("row").filter(has_text=f"{ns}/orders-b").inner_text()
        assert "degraded: lag 7.5s > 5s" in mirror_row and "streaming" in mirror_row and "90" in mirror_row
        lost = page.get_by_role("table", name="Writes an async failover lost").get_by_role("row").nth(1)
        assert "not confirmed" in lost.inner_text() and "after 40 up to 43" in lost.inner_text()
        assert "9.5 s" in page.get_by_role("region", name="Last operation").inner_text()
        assert "CatchingUp" in page.get_by_role("region", name="Operation in progress").inner_text()
        assert "mirror switchover orders" in page.get_by_role("region", name="Switching over").inner_text()
        screenshot(page, "mirrorset")


def test_no_token_is_in_the_console_log(world):
    text = Path(world.console.log_path).read_text(errors="replace")
    assert f"signed in: system:serviceaccount:{world.namespace}:watcher" in text  # the log the tests made
    assert not [u for u, t in world.tokens.items() if t in text]
