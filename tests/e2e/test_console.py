"""The recovery console in a real browser against a real cluster (issue #16).

The local cluster runs a ShardSet with a ShadowPolicy in ``confirm`` mode; an application writes JSON records with
one ServiceAccount and an intruder overwrites keys with random bytes with another, so the policy proposes a
Reversion (as in test_anomaly.py). A real ``chronoshard-console`` process serves the UI against the cluster's
kubeconfig, and Debian's Chromium (Playwright, ``executable_path``) signs in with ServiceAccount tokens:

- ``recoverer`` may read the custom resources and the table's data and patch Reversions: it sees the ShardSet, the
  table's timeline and the incident, its impact, an attacked key's old value by moving the time slider, approves
  the Reversion, watches it complete and sees the restored value;
- ``auditor`` may read the same but not patch: it sees the data and no Approve button, and its approve request is
  refused, as is the recoverer's own request without the CSRF token.

Screenshots of the main views go to build/console-screenshots/.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chronoshard.devcluster.controlplane import free_port
from chronoshard.shardnode.client import Client, Endpoint
from chronoshard.shardnode.client.discovery import pod_dns_name
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

from tests.e2e.conftest import LocalCluster, data_client_args, http_get, shadowed_shardset
from tests.support.browser import VIEWPORT, chromium, screenshot, screenshots_on_failure
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

NS = "console-e2e"
NAME = "ledger"
POLICY = f"{NAME}-shadow"
TABLE = "orders"
APP_KEYS = [f"order-{i:03}" for i in range(20)]  # the application keeps writing these
VICTIMS = [f"order-{i:03}" for i in range(20, 44)]  # the intruder overwrites these
RBAC = "rbac.authorization.k8s.io/v1"
READ_KINDS = ["shardsets", "shadowpolicies", "reversions", "keyrotations"]


@dataclass
class Env:
    cluster: LocalCluster
    url: str  # the console's
    log: Path  # the console's log

    def client(self, account: str) -> Client:
        cm = self.cluster.get("configmap", f"{NAME}-partitions", NS)
        assert cm is not None
        pmap = PartitionMap.from_json(cm["data"]["map.json"])
        ip = self.cluster.pods(NS, f"app.kubernetes.io/instance={NAME}")[0]["status"]["podIP"]
        return Client(pmap, [Endpoint(f"{ip}:7401", "https", pod_dns_name(NAME, 0, NS))], timeout=10,
                      **data_client_args(self.cluster, NS, NAME, [TABLE], account=account))

    def token(self, account: str) -> str:
        return self.cluster.kubectl("create", "token", account, "-n", NS, "--duration", "1h").stdout.strip()

    def reversion(self, name: str) -> dict[str, Any]:
        return self.cluster.get("reversion", name, NS) or {}

    def policy_status(self) -> dict[str, Any]:
        return (self.cluster.get("shadowpolicy", POLICY, NS) or {}).get("status") or {}


def users(cluster: LocalCluster) -> None:
    """The console's own ServiceAccount (reads the shards' data for users it has checked), and two people:
    ``recoverer`` (read everything, patch Reversions) and ``auditor`` (read everything, patch nothing)."""
    objs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n, "namespace": NS}}
        for n in ("console", "recoverer", "auditor")]
    objs += [
        {"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": f"{NS}-reader"},
         "rules": [{"apiGroups": ["chronoshard.io"], "resources": READ_KINDS, "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": RBAC, "kind": "ClusterRoleBinding", "metadata": {"name": f"{NS}-reader"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{NS}-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": n, "namespace": NS} for n in ("recoverer", "auditor")]},
        {"apiVersion": RBAC, "kind": "Role", "metadata": {"name": "table-reader", "namespace": NS},
         "rules": [{"apiGroups": ["chronoshard.io"], "resources": ["shardsets/data"], "resourceNames": [TABLE],
                    "verbs": ["get", "list"]}]},
        {"apiVersion": RBAC, "kind": "RoleBinding", "metadata": {"name": "table-reader", "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "table-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": n, "namespace": NS}
                      for n in ("console", "recoverer", "auditor")]},
        {"apiVersion": RBAC, "kind": "Role", "metadata": {"name": "approver", "namespace": NS},
         "rules": [{"apiGroups": ["chronoshard.io"], "resources": ["reversions"], "verbs": ["patch"]}]},
        {"apiVersion": RBAC, "kind": "RoleBinding", "metadata": {"name": "approver", "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "approver"},
         "subjects": [{"kind": "ServiceAccount", "name": "recoverer", "namespace": NS}]},
    ]
    cluster.apply(*objs)


class Console:
    """``chronoshard-console`` (this checkout's) as a process, on plain HTTP on localhost, against the cluster."""

    def __init__(self, cluster: LocalCluster, state: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = state / "console.log"
        # The console script when the venv has it (hack/test.sh installs it), else the same entry point by module.
        script = Path(sys.executable).with_name("chronoshard-console")
        argv = [str(script)] if script.exists() else [sys.executable, "-m", "chronoshard.shardnode.console.main"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--kubeconfig", str(cluster.kubeconfig), "--insecure", "--host", "127.0.0.1",
                 "--port", str(self.port), "--service-account", f"{NS}/console"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> bool:
        assert self.proc.poll() is None, "the console exited:\n" + self.log.read_text()[-3000:]
        try:
            return http_get(self.url + "/healthz")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with shadowed_shardset("chronoshard-console-e2e-", NS, NAME, POLICY, {
            "tables": [TABLE], "snapshot": {"interval": "30s"}, "anomaly": {"interval": "2s"},
            "reversion": {"mode": "confirm"}}) as shadowed:
        users(shadowed.cluster)
        console = Console(shadowed.cluster, shadowed.state)
        try:
            wait_for(console.ready, timeout=60, interval=0.3, what="the console answering /healthz")
            yield Env(shadowed.cluster, console.url, console.log)
        finally:
            console.stop()


def record(rng: random.Random) -> bytes:
    """An ordinary application value: a JSON record (UTF-8 text)."""
    return json.dumps({"customer": rng.choice(["ada", "grace", "alan", "edsger"]), "amount": rng.randint(1, 999),
                       "status": rng.choice(["paid", "shipped", "open"])}).encode()


class AppWriter(threading.Thread):
    """The application: keeps overwriting its own keys (the ordinary traffic the detector learns)."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client, self.rng, self.stop = client, random.Random(5), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.client.put(TABLE, self.rng.choice(APP_KEYS), record(self.rng))
            except Exception:  # an unacknowledged write does not matter here
                time.sleep(0.1)
            time.sleep(0.05)


@pytest.fixture(scope="module")
def incident(env: Env) -> dict[str, Any]:
    """An intruder's overwrite of VICTIMS, detected, with its Reversion awaiting approval: the policy's row, the
    values before the attack (``before``) and the Reversion."""
    rng = random.Random(3)
    app, intruder = env.client("e2e-data"), env.client("e2e-intruder")
    before = {key: record(rng) for key in VICTIMS}
    for key, value in before.items():
        app.put(TABLE, key, value)
    writer = AppWriter(app)
    writer.start()
    try:
        time.sleep(12)  # quiet windows of ordinary traffic before the incident
        for key in VICTIMS:
            intruder.put(TABLE, key, rng.randbytes(300))
        time.sleep(6)  # the incident closes once a quiet window follows it

        def proposed() -> dict[str, Any]:
            for row in env.policy_status().get("anomalies") or []:
                if row.get("reversion"):
                    return row
            return {}

        row = wait_for(proposed, timeout=120, interval=1, what="an incident with a proposed Reversion")
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    rev = wait_for(lambda: (env.reversion(row["reversion"]).get("status") or {}).get("phase") == "AwaitingApproval"
                   and env.reversion(row["reversion"]), timeout=120, interval=1, what="the Reversion's plan")
    return {"row": row, "before": before, "reversion": rev}


def sign_in(page: Any, env: Env, account: str) -> None:
    page.goto(env.url + "/")
    field = page.get_by_label("Kubernetes bearer token")
    field.fill(env.token(account))
    field.press("Enter")  # the keyboard submits the form
    page.get_by_text(f"system:serviceaccount:{NS}:{account}").wait_for()


def post_approve(page: Any, name: str, digest: str, csrf: str) -> dict[str, Any]:
    """A hand-made approve request from the signed-in page (same origin, its cookie) with ``csrf``: "session" (the
    session's CSRF token), "forged" (a made-up one) or "none" (no header)."""
    return page.evaluate(
        """async ([path, digest, csrf]) => {
          const headers = {"Content-Type": "application/json"};
          if (csrf === "session") {
            const s = await (await fetch("/api/v1/session", {credentials: "same-origin"})).json();
            headers["X-CSRF-Token"] = s.csrfToken;
          } else if (csrf === "forged") {
            headers["X-CSRF-Token"] = "0".repeat(43);
          }
          const r = await fetch(path, {method: "POST", credentials: "same-origin", headers,
                                       body: JSON.stringify({digest})});
          let body = null;
          try { body = await r.json(); } catch (e) {}
          return {status: r.status, body};
        }""", [f"/api/v1/namespaces/{NS}/reversions/{name}/approve", digest, csrf])


def test_an_incident_is_found_inspected_and_reverted_in_the_browser(env: Env, incident: dict[str, Any]) -> None:
    row, before, rev = incident["row"], incident["before"], incident["reversion"]
    name, digest = row["reversion"], rev["status"]["digest"]
    victim = VICTIMS[3]
    with chromium() as browser, screenshots_on_failure(browser):
        # --- the auditor first, while the Reversion still awaits approval -----------------------------------
        auditor = browser.new_context(viewport=VIEWPORT).new_page()
        sign_in(auditor, env, "auditor")
        auditor.goto(f"{env.url}/#/ns/{NS}/shardsets/{NAME}")
        auditor.get_by_role("link", name=f"Impact of incident {row['id']}").wait_for()
        auditor.goto(f"{env.url}/#/ns/{NS}/reversions/{name}")
        auditor.locator("#digest", has_text=digest).wait_for()
        assert auditor.locator("#no-approve").is_visible()
        assert auditor.get_by_role("button", name="Approve this plan").count() == 0
        screenshot(auditor, "08-reversion-as-auditor-no-approve")
        refused = post_approve(auditor, name, digest, csrf="session")
        assert refused["status"] == 403, refused
        auditor.goto(f"{env.url}/#/ns/{NS}/shardsets/{NAME}/tables/{TABLE}/keys/{victim}")
        auditor.locator("pre.value").wait_for()  # the data RBAC lets the auditor read

        # --- the recoverer --------------------------------------------------------------------------------
        page = browser.new_context(viewport=VIEWPORT).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(env.url + "/")
        field = page.get_by_label("Kubernetes bearer token")
        field.wait_for()
        assert page.evaluate("document.activeElement.id") == "token"  # the keyboard starts in the token field
        assert not page.get_by_role("button", name="Sign out").is_visible()  # nobody is signed in yet
        field.fill("not-a-token-" + "x" * 40)
        field.press("Enter")
        page.get_by_text("The token was not accepted.").wait_for()
        screenshot(page, "01-sign-in")
        sign_in(page, env, "recoverer")
        for csrf in ("none", "forged"):
            forged = post_approve(page, name, digest, csrf=csrf)
            assert forged["status"] == 403 and (forged["body"] or {}).get("error") == "csrf", (csrf, forged)
        status = env.reversion(name)["status"]
        assert status["phase"] == "AwaitingApproval" and not env.reversion(name)["spec"].get("approve")

        page.get_by_role("link", name=NAME, exact=True).wait_for()
        screenshot(page, "02-shardsets")
        page.get_by_role("link", name=NAME, exact=True).click()
        page.get_by_role("heading", name=f"ShardSet {NS}/{NAME}").wait_for()
        page.get_by_role("link", name=f"Impact of incident {row['id']}").wait_for()
        screenshot(page, "03-shardset")

        page.get_by_role("link", name=f"Timeline of {TABLE}").click()
        page.locator(".chart canvas").first.wait_for()  # uPlot drew the score
        incident_link = page.get_by_role("link", name=f"Impact of incident {row['id']}")
        incident_link.wait_for()
        screenshot(page, "04-timeline")
        page.get_by_role("button", name=f"Incident {row['id']} on the chart").click()  # the shaded window
        page.get_by_role("heading", name=f"Impact of incident {row['id']}").wait_for()
        page.go_back()
        incident_link = page.get_by_role("link", name=f"Impact of incident {row['id']}")
        incident_link.focus()
        page.keyboard.press("Enter")

        page.get_by_role("heading", name=f"Impact of incident {row['id']}").wait_for()
        page.get_by_text(f"system:serviceaccount:{NS}:e2e-intruder").first.wait_for()
        key_link = page.get_by_role("link", name=f"History of key {victim}", exact=True)
        key_link.wait_for()
        screenshot(page, "05-incident-impact")
        page.get_by_role("link", name="Diff from the known-good point to the incident's end").click()
        page.get_by_role("cell", name=victim, exact=True).wait_for()
        screenshot(page, "05b-diff")
        page.go_back()
        # The table's state at the known-good point (the policy's second-rounded time, before the attack): the
        # victim holds the application's record there, not the intruder's 300 bytes.
        page.goto(f"{env.url}/#/ns/{NS}/shardsets/{NAME}/tables/{TABLE}/state?time={row['knownGoodTime']}")
        victim_row = page.get_by_role("row").filter(has=page.get_by_role("link", name=victim, exact=True))
        victim_row.wait_for()
        assert victim_row.get_by_role("cell").nth(2).inner_text() == f"{len(before[victim])} B"
        screenshot(page, "05c-state-at-known-good-point")
        page.go_back()
        key_link.click()

        # The newest version is the intruder's random bytes (a hex dump); Home takes the slider to the start of
        # the key's history, the application's record.
        page.locator("pre.value.hex").wait_for()
        slider = page.get_by_label("Value at time")
        slider.focus()
        page.keyboard.press("Home")
        old = page.locator("pre.value:not(.hex)")
        old.wait_for()
        assert old.inner_text() == before[victim].decode()
        page.get_by_role("link", name="Download the value").wait_for()
        screenshot(page, "06-key-old-value")

        page.goto(f"{env.url}/#/ns/{NS}/reversions/{name}")
        page.locator("#digest", has_text=digest).wait_for()
        approve = page.get_by_role("button", name="Approve this plan")
        approve.wait_for()
        screenshot(page, "07-reversion-awaiting-approval")
        approve.focus()
        page.keyboard.press("Enter")
        page.locator("#phase", has_text="Completed").wait_for(timeout=180_000)
        screenshot(page, "09-reversion-completed")
        assert env.reversion(name)["spec"]["approve"] == digest

        page.goto(f"{env.url}/#/ns/{NS}/shardsets/{NAME}/tables/{TABLE}/keys/{victim}")
        restored = page.locator("pre.value:not(.hex)")
        restored.wait_for()
        assert restored.inner_text() == before[victim].decode()
        screenshot(page, "10-key-restored")
        page.get_by_role("button", name="Sign out").click()
        page.get_by_label("Kubernetes bearer token").wait_for()
        gone = page.evaluate("async () => (await fetch('/api/v1/session', {credentials: 'same-origin'})).status")
        assert gone == 401
        assert not errors, errors  # no script error in the page along the way
