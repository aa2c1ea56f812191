"""Predictive reversion end to end on the local cluster: a real operator, a ShardSet whose pod runs the shadow, an
application writing through the cache with its ServiceAccount token, and an intruder (another ServiceAccount)
overwriting half of the table with random bytes.

In ``confirm`` mode the ShadowPolicy proposes a Reversion naming exactly the overwritten keys; approved with its
digest, it puts every one of them back as it was before the incident, leaves the one key the application wrote
again after the incident with the application's value, and keeps every unrelated write. In ``auto`` mode the same
happens without approval.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from chronoshard.shardnode.client import Client, Endpoint
from chronoshard.shardnode.client.discovery import pod_dns_name
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

from tests.e2e.conftest import LocalCluster, Operator, data_client_args, pod_tls, shadowed_shardset
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

NS = "anomaly-e2e"
NAME = "vault"
POLICY = f"{NAME}-shadow"
TABLE = "orders"
APP_KEYS = [f"order-{i:03}" for i in range(30)]  # the application keeps writing these
VICTIMS = [f"order-{i:03}" for i in range(30, 60)]  # the intruder overwrites these


@dataclass
class Env:
    cluster: LocalCluster
    operator: Operator

    def client(self, account: str) -> Client:
        cm = self.cluster.get("configmap", f"{NAME}-partitions", NS)
        assert cm is not None
        pmap = PartitionMap.from_json(cm["data"]["map.json"])
        pods = self.cluster.pods(NS, f"app.kubernetes.io/instance={NAME}")
        ip = pods[0]["status"]["podIP"]
        return Client(pmap, [Endpoint(f"{ip}:7401", "https", pod_dns_name(NAME, 0, NS))], timeout=10,
                      **data_client_args(self.cluster, NS, NAME, [TABLE], account=account))

    def policy(self) -> dict[str, Any]:
        return self.cluster.get("shadowpolicy", POLICY, NS) or {}

    def shadow_anomalies(self) -> Any:
        """The shadow's own report (the pod identity), for a failure's message."""
        import urllib.request

        pods = self.cluster.pods(NS, f"app.kubernetes.io/instance={NAME}")
        url = f"https://{pods[0]['status']['podIP']}:7403/v1/anomalies"
        try:
            with urllib.request.urlopen(url, timeout=10, context=pod_tls(self.cluster, NS, NAME)) as resp:
                return json.loads(resp.read())
        except OSError as exc:
            return repr(exc)

    def explain(self) -> str:
        return json.dumps({"policyStatus": self.policy().get("status"), "shadow": self.shadow_anomalies()})[:6000]


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with shadowed_shardset("chronoshard-anomaly-e2e-", NS, NAME, POLICY, {
            "tables": [TABLE], "snapshot": {"interval": "30s"}, "anomaly": {"interval": "2s"},
            "reversion": {"mode": "confirm"}}) as shadowed:
        yield Env(shadowed.cluster, shadowed.operator)


def record(rng: random.Random) -> bytes:
    """An ordinary application value: a JSON record."""
    return json.dumps({"customer": rng.choice(["ada", "grace", "alan", "edsger"]), "amount": rng.randint(1, 999),
                       "status": rng.choice(["paid", "shipped", "open"]), "note": "x" * rng.randint(10, 80)}).encode()


class AppWriter(threading.Thread):
    """The application: keeps overwriting its own keys with records; remembers what it last wrote."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client, self.rng = client, random.Random(11)
        self.last: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.deadline = time.monotonic() + 900

    def run(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            key, value = self.rng.choice(APP_KEYS), record(self.rng)
            try:
                self.client.put(TABLE, key, value)
            except Exception:  # an unacknowledged write is not remembered (it may or may not have landed)
                time.sleep(0.1)
                continue
            self.last[key] = value
            time.sleep(0.05)


def incident_with_reversion(env: Env, known: set[str]) -> dict[str, Any]:
    """The newest incident of the policy's status that has a Reversion and is not one of ``known``."""
    for row in (env.policy().get("status") or {}).get("anomalies") or []:
        if row.get("reversion") and row["id"] not in known:
            return row
    return {}


def reversion(env: Env, name: str) -> dict[str, Any]:
    return env.cluster.get("reversion", name, NS) or {}


def attack(env: Env, intruder: Client, rng: random.Random) -> None:
    """The intruder's overwrite, as a burst (eight at a time): on a loaded machine one-by-one writes could spread
    over several windows thinly enough to look like something else."""
    values = {key: rng.randbytes(300) for key in VICTIMS}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: intruder.put(TABLE, key, values[key]), VICTIMS))


def test_an_intruders_overwrite_is_proposed_for_reversion_and_undone_exactly(env: Env) -> None:
    rng = random.Random(7)
    app, intruder = env.client("e2e-data"), env.client("e2e-intruder")
    before = {key: record(rng) for key in VICTIMS}
    for key, value in before.items():
        app.put(TABLE, key, value)
    writer = AppWriter(app)
    writer.start()
    try:
        time.sleep(12)  # quiet windows of ordinary traffic before the incident
        attack(env, intruder, rng)
        time.sleep(6)  # the incident closes once a quiet window follows it
        rewritten = VICTIMS[0]
        later = record(rng)
        app.put(TABLE, rewritten, later)  # the application writes one victim again: a conflict, kept

        try:
            row = wait_for(lambda: incident_with_reversion(env, set()), timeout=120, interval=1,
                           what="an incident with a proposed Reversion in the ShadowPolicy's status")
        except AssertionError:
            raise AssertionError(env.explain()) from None
        assert row["table"] == TABLE and row["identities"] == [f"system:serviceaccount:{NS}:e2e-intruder"]
        assert row["keys"] == len(VICTIMS) and row["action"] == "proposed"
        rev = wait_for(lambda: (reversion(env, row["reversion"]).get("status") or {}).get("phase") ==
                       "AwaitingApproval" and reversion(env, row["reversion"]), timeout=120, interval=1,
                       what="the proposed Reversion's plan")
        assert rev["spec"]["incident"]["id"] == row["id"] and rev["spec"]["tables"] == [TABLE]
        plan = rev["status"]["plan"]
        # The application's later write is left out of the plan (an excluded conflict) when the shadow had it
        # when planning; when it came after, the plan names the key and the run skips it as a conflict.
        assert plan["restore"] in (len(VICTIMS) - 1, len(VICTIMS)) and plan["create"] == 0 and plan["delete"] == 0

        env.cluster.kubectl("patch", "reversion", row["reversion"], "-n", NS, "--type", "merge", "-p",
                            json.dumps({"spec": {"approve": rev["status"]["digest"]}}))
        wait_for(lambda: (reversion(env, row["reversion"]).get("status") or {}).get("phase") == "Completed",
                 timeout=120, interval=1, what="the approved Reversion to complete")
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    for key in VICTIMS:
        want = later if key == rewritten else before[key]
        assert app.get(TABLE, key) == want, key
    for key, value in writer.last.items():
        assert app.get(TABLE, key) == value, f"an unrelated write to {key} was lost"


def test_in_auto_mode_the_reversion_runs_without_approval(env: Env) -> None:
    rng = random.Random(9)
    app, intruder = env.client("e2e-data"), env.client("e2e-intruder")
    known = {r["id"] for r in (env.policy().get("status") or {}).get("anomalies") or []}
    env.cluster.kubectl("patch", "shadowpolicy", POLICY, "-n", NS, "--type", "merge", "-p",
                        json.dumps({"spec": {"reversion": {"mode": "auto"}}}))
    before = {key: app.get(TABLE, key) for key in VICTIMS}
    time.sleep(8)  # the new mode reaches the pod's shadow.json; quiet windows pass
    attack(env, intruder, rng)
    row = wait_for(lambda: incident_with_reversion(env, known), timeout=120, interval=1,
                   what="a second incident with its Reversion")
    assert row["action"] == "reverting"
    done = wait_for(lambda: (reversion(env, row["reversion"]).get("status") or {}).get("phase") == "Completed"
                    and reversion(env, row["reversion"]), timeout=120, interval=1,
                    what="the Reversion to run on its own")
    assert done["status"].get("autoApproved") is True and not done["spec"].get("approve")
    wait_for(lambda: all(app.get(TABLE, key) == before[key] for key in VICTIMS), timeout=60, interval=1,
             what="every overwritten key back as it was (each incident's Reversion runs on its own)")
