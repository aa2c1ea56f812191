"""The console's forecast splits on a ShardSet's page against the real kube-apiserver: a WeavePlan whose status
(forecasts, a what-if report, a split) the test writes through the status subresource, read through the console
process as a user RBAC lets read WeavePlans (shaped on the ShardSet's detail) and as one it does not (none); then
the page itself in Debian's Chromium."""

from __future__ import annotations

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

USERS = ("planner", "blind")
NOW = "2026-12-07T12:00:00Z"
MIB = 2**20
STATUS: dict[str, Any] = {
    "phase": "Weaving", "observedGeneration": 1, "lastForecastTime": NOW, "weaveCount": 1,
    "partitions": [
        {"id": 2, "shard": 1, "bytes": 400 * MIB, "blocks": 9, "growthBytesPerHour": 9 * MIB, "loadRps": 220.5,
         "forecast": {"probability": 0.83, "predictedTime": "2026-12-07T18:00:00Z", "reason": "size",
                      "model": "linear"}},
        {"id": 0, "shard": 0, "bytes": 10 * MIB, "blocks": 3, "growthBytesPerHour": 0, "loadRps": 1.0,
         "forecast": {"probability": 0.02, "model": "linear"}}],
    "weaves": [{"id": "w-2-1", "partition": 2, "shard": 1, "splitKey": "a3f0000000000000", "confidence": 0.83,
                "predictedTime": "2026-12-07T18:00:00Z", "window": "24h", "snapshots": 4, "bytes": 1200}],
    "whatIf": [{"partition": 2, "splitKey": "a3f0000000000000", "placement": {"lowerHalfShard": 1,
                                                                              "upperHalfShard": 0},
                "shards": [{"shard": 0, "bytesBefore": 10 * MIB, "bytesAfter": 210 * MIB, "loadBefore": 1.0,
                            "loadAfter": 111.25},
                           {"shard": 1, "bytesBefore": 400 * MIB, "bytesAfter": 200 * MIB, "loadBefore": 220.5,
                            "loadAfter": 110.25}],
                "bytesToMove": 200 * MIB, "expectedCutoverPauseMs": 400,
                "forecast": {"probability": 0.83, "predictedTime": "2026-12-07T18:00:00Z",
                             "sizeAtWindowEnd": {"low": 450 * MIB, "point": 520 * MIB, "high": 600 * MIB}}}],
    "splits": [{"partition": 2, "reshard": "growth-2-7", "splitKey": "a3f0000000000000", "time": NOW,
                "phase": "Running"}],
    "conditions": [{"type": "Ready", "status": "True", "reason": "WeaversReporting", "message": "ok",
                    "lastTransitionTime": NOW}],
}


@dataclass
class World:
    namespace: str
    console: Proc
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.console.url


def _can_list(authz: client.AuthorizationV1Api, user: str, ns: str) -> bool:
    review = authz.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, resource_attributes=client.V1ResourceAttributes(group=GROUP, resource="weaveplans", verb="list",
                                                                   namespace=ns))))
    return bool(review.status.allowed)


@pytest.fixture(scope="module")
def world(control_plane, k8s_client, tmp_path_factory) -> Iterator[World]:
    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    root = tmp_path_factory.mktemp("console-weaveplan")
    rbac.service_account(core, ns, "console")
    binding = rbac.bind_cluster_role(rb, "system:auth-delegator", ns, "console")  # TokenReview at sign-in
    for user in USERS:
        rbac.service_account(core, ns, user)
    read = ["get", "list"]
    rbac.bind_role(rb, ns, "planner", [client.V1PolicyRule(api_groups=[GROUP], resources=["shardsets",
                                                                                          "weaveplans"], verbs=read)])
    rbac.bind_role(rb, ns, "blind", [client.V1PolicyRule(api_groups=[GROUP], resources=["shardsets"], verbs=read)])
    wait_for(lambda: _can_list(client.AuthorizationV1Api(k8s_client), f"system:serviceaccount:{ns}:planner", ns),
             what="the RBAC bindings to take effect")
    for name in ("orders", "lonely"):
        create_custom(k8s_client, ns, "shardsets", name, {"shards": 2, "tables": [{"name": "t"}]}, "ShardSet")
    create_custom(k8s_client, ns, "weaveplans", "growth", {"shardSetRef": {"name": "orders"}, "mode": "split"},
                  "WeavePlan")
    client.CustomObjectsApi(k8s_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, "weaveplans", "growth", {"status": STATUS})
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


def test_the_shardset_detail_carries_its_weaveplan_for_a_user_who_may_read_it(world):
    ns, s = world.namespace, signed_in(world, "planner")
    status, doc = get(s, world, f"/namespaces/{ns}/shardsets/orders")
    assert status == 200, doc
    plan = doc["weavePlan"]
    assert (plan["name"], plan["phase"], plan["mode"], plan["lastForecastTime"]) == ("growth", "Weaving", "split", NOW)
    assert [(p["id"], p["probability"]) for p in plan["partitions"]] == [(2, 0.83), (0, 0.02)]
    assert plan["whatIf"] == STATUS["whatIf"] and plan["splits"] == STATUS["splits"]
    _, lonely = get(s, world, f"/namespaces/{ns}/shardsets/lonely")
    assert lonely["weavePlan"] is None


def test_a_user_without_rbac_on_weaveplans_sees_none(world):
    ns, s = world.namespace, signed_in(world, "blind")
    status, doc = get(s, world, f"/namespaces/{ns}/shardsets/orders")
    assert status == 200 and doc["weavePlan"] is None


def test_the_forecast_splits_in_a_browser(world):
    ns = world.namespace
    with chromium() as browser, screenshots_on_failure(browser):
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.goto(world.url + "/")
        field = page.get_by_label("Kubernetes bearer token")
        field.fill(world.tokens["planner"])
        field.press("Enter")
        page.get_by_text(f"system:serviceaccount:{ns}:planner").wait_for()
        page.goto(f"{world.url}/#/ns/{ns}/shardsets/orders")
        region = page.get_by_role("region", name="Forecast splits")
        region.wait_for()
        text = region.inner_text()
        assert "growth" in text and "Weaving" in text and "split" in text
        assert "Partition 2 split at a3f0000000000000: probability 0.83" in text
        assert "size at the window's end 520.0 MiB (80%: 450.0 MiB to 600.0 MiB)" in text
        assert "upper half on shard 0; 200.0 MiB to move, expected cutover pause 400 ms" in text
        whatif = page.get_by_role("table", name="What-if: partition 2 split")
        assert whatif.get_by_role("columnheader").all_inner_texts() == [
            "Shard", "Bytes before", "Bytes after", "Load before", "Load after"]
        row = whatif.get_by_role("row").filter(has_text="400.0 MiB").inner_text()
        assert "200.0 MiB" in row and "220.5 /s" in row and "110.3 /s" in row
        likely = page.get_by_role("table", name="Partitions most likely to split").get_by_role("row").nth(1)
        assert "0.83" in likely.inner_text()
        started = page.get_by_role("table", name="Splits this plan started").inner_text()
        assert "growth-2-7" in started and "Running" in started
        screenshot(page, "weaveplan")
        page.goto(f"{world.url}/#/ns/{ns}/shardsets/lonely")
        page.get_by_text("No WeavePlan forecasts this ShardSet's splits").wait_for()


def test_no_token_is_in_the_console_log(world):
    text = Path(world.console.log_path).read_text(errors="replace")
    assert f"signed in: system:serviceaccount:{world.namespace}:planner" in text
    assert not [u for u, t in world.tokens.items() if t in text]
