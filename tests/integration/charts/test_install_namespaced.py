"""The chart in namespaced mode (watchNamespaces): Roles only in the watched namespaces, enforced for real,
and Kopf peering: a second copy of the operator makes both pause instead of acting twice."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.support.waiting import wait_for

from .conftest import CHART, audit_calls, free_port, manifest_docs, operator_from_release, run_helm
from .test_install import KUBECTL_POLL

pytestmark = pytest.mark.integration

RELEASE, RELEASE_NS = "nsop", "chronoshard-ns"
WATCHED, UNWATCHED = "team-a", "team-b"
SA_USER = f"system:serviceaccount:{RELEASE_NS}:{RELEASE}-chronoshard"


def shardset(name: str) -> str:
    return yaml.safe_dump({"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
                           "metadata": {"name": name}, "spec": {"shards": 1}})


def reconciled(plane, namespace: str, name: str) -> bool:
    result = plane.kubectl("get", "statefulset", name, "--namespace", namespace, "-o", "json", check=False)
    return result.returncode == 0 and bool(json.loads(result.stdout))


@pytest.fixture(scope="module")
def release_docs(audited_plane, helm_env) -> list[dict]:
    for ns in (WATCHED, UNWATCHED):
        audited_plane.kubectl("create", "namespace", ns)
    run_helm(audited_plane, helm_env, "install", RELEASE, str(CHART), "--namespace", RELEASE_NS,
             "--create-namespace", "--set", f"watchNamespaces={{{WATCHED}}}",
             "--set", f"operator.healthPort={free_port()}", "--set", f"operator.metricsPort={free_port()}")
    return manifest_docs(audited_plane, helm_env, RELEASE, RELEASE_NS)


@pytest.fixture(scope="module")
def operator(audited_plane, release_docs, tmp_path_factory):
    proc = operator_from_release(audited_plane, release_docs, RELEASE_NS, tmp_path_factory.mktemp("nsop"))
    assert f"--namespace={WATCHED}" in proc.argv
    proc.start()
    yield proc
    proc.stop()


def test_namespaced_operator_serves_only_its_namespace_with_its_roles(audited_plane, operator) -> None:
    audited_plane.kubectl("apply", "--server-side", "-n", WATCHED, "-f", "-", input=shardset("mine"))
    audited_plane.kubectl("apply", "--server-side", "-n", UNWATCHED, "-f", "-", input=shardset("not-mine"))
    try:
        wait_for(lambda: reconciled(audited_plane, WATCHED, "mine"), timeout=90, interval=KUBECTL_POLL,
                 what="watched ShardSet")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{operator.tail()}") from None
    # No waiting for "not-mine": the audit log below proves the operator cannot see it (every namespaced call
    # stayed in the watched namespace, and no cluster-wide call touched ShardSets).
    assert not reconciled(audited_plane, UNWATCHED, "not-mine")
    calls = audit_calls(audited_plane, SA_USER)
    forbidden = [c for c in calls if c["code"] == 403 or c["decision"] == "forbid"]
    assert calls and not forbidden, forbidden
    # Every namespaced call stayed in the watched namespace (cluster-scoped ones: the CRD scan only).
    assert {c["namespace"] for c in calls if c["namespace"]} == {WATCHED}
    # (and the start-up sweep of the shard pods' auth-delegator ClusterRoleBindings, deleting none it cannot judge)
    assert {c["resource"] for c in calls if not c["namespace"]} == {"customresourcedefinitions", "namespaces",
                                                                      "clusterrolebindings"}


def pauses(copy) -> int:
    """How often this operator copy has paused for a peer of the same priority (Kopf logs each pause)."""
    text = copy.log.read_text(errors="replace") if copy.log.exists() else ""
    return text.count("Pausing all operators, including self")


def test_a_second_copy_pauses_both_instead_of_acting_twice(audited_plane, release_docs, operator,
                                                           tmp_path_factory) -> None:
    second = operator_from_release(audited_plane, release_docs, RELEASE_NS, tmp_path_factory.mktemp("nsop2"))
    # Its own ports (a second pod has its own IP; on one machine the ports must differ instead).
    health, metrics = free_port(), free_port()
    second.argv = [a.replace(f":{operator.health_url.rsplit(':', 1)[1].split('/')[0]}/", f":{health}/")
                   if a.startswith("--liveness=") else f"--metrics-port={metrics}" if a.startswith("--metrics-port=")
                   else a for a in second.argv]
    second.health_url = f"http://127.0.0.1:{health}/healthz"
    paused_before = pauses(operator)
    second.start()
    try:
        # Both copies see each other in the KopfPeering object and freeze (same priority); each logs it.
        wait_for(lambda: pauses(operator) > paused_before and pauses(second) > 0, timeout=60, interval=KUBECTL_POLL,
                 what="both operator copies to pause for each other")
        audited_plane.kubectl("apply", "--server-side", "-n", WATCHED, "-f", "-", input=shardset("during-peering"))
        time.sleep(10)  # what is tested: neither acts while both run (a paused copy gives no per-object signal)
        assert not reconciled(audited_plane, WATCHED, "during-peering"), "an operator acted while another copy ran"
    finally:
        second.stop()
    # The second copy left the peering object on SIGTERM: the first resumes and catches up.
    wait_for(lambda: reconciled(audited_plane, WATCHED, "during-peering"), timeout=120, interval=KUBECTL_POLL,
             what="the remaining copy to resume after its peer left")
