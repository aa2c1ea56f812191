"""`helm install`/`upgrade` of the chart into a real kube-apiserver, then the chart's operator at work.

There is no container runtime here, so the Deployment's pod cannot run. Instead the operator runs as a
local process with exactly the command, args and environment the rendered Deployment declares, and
with a token of the chart's ServiceAccount, so the API server enforces the chart's RBAC. The audit log
of that ServiceAccount's calls is then compared with the chart's rules; the sample ShardSet is checked
for its children, and the GitOps properties (idempotent apply, untouched spec, no drift) are checked.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.waiting import wait_for

from .conftest import (
    CHART,
    RELEASE_NS,
    REPO,
    audit_calls,
    free_port,
    manifest_docs,
    operator_from_release,
    rule_allows,
    run_helm,
)

pytestmark = pytest.mark.integration

RELEASE = "cs"
SAMPLE = REPO / "crds" / "samples" / "shardset.yaml"
SAMPLE_NS = "gitops-demo"
SA_USER = f"system:serviceaccount:{RELEASE_NS}:{RELEASE}-chronoshard"

# Rules the chart grants that the audited run below may not exercise, each with the reason it exists.
# A rule that is neither used nor listed here fails test_every_rule_is_used_or_deliberately_extra.
OTHER_KINDS = ["keyrotations", "shadowpolicies", "mirrorsets", "weaveplans", "reversions", "reshards"]
DELIBERATE_EXTRA: dict[tuple[str, str, str], str] = {
    **{(verb, "chronoshard.io", kind): "controller of this kind: watched and patched once its handlers are "
       "registered (the samples of every kind are applied below, so a registered one is exercised)"
       for kind in OTHER_KINDS for verb in ("list", "watch", "patch")},
    **{("patch", "chronoshard.io", f"{kind}/status"): "status of that kind's controller" for kind in OTHER_KINDS},
    ("get", "chronoshard.io", "shardsets"): "a KeyRotation reads its ShardSet when a rotation runs",
    ("create", "chronoshard.io", "reversions"): "a ShadowPolicy proposes a Reversion for a closed anomaly incident "
    "at or above its severityThreshold (none happens in this run)",
    ("create", "chronoshard.io", "reshards"): "a ShardSet with spec.partitioning.rebalance creates its rebalance "
    "Reshard on a scale (none happens in this run)",
    ("get", "chronoshard.io", "reshards"): "a ShardSet with spec.partitioning.rebalance reads its rebalance Reshard",
    ("patch", "", "secrets"): "a KeyRotation adds and retires key versions in the keyring Secret",
    ("list", "", "pods"): "a KeyRotation lists a ShardSet's pods to ask each node for its key versions",
    ("create", "cert-manager.io", "certificates"): "a ShardSet with spec.tls.issuerRef (cert-manager)",
    ("patch", "cert-manager.io", "certificates"): "a ShardSet with spec.tls.issuerRef (cert-manager)",
    ("delete", "rbac.authorization.k8s.io", "clusterrolebindings"): "a deleted ShardSet's auth-delegator binding, "
    "and bindings of ShardSets deleted while no operator ran (swept at start)",
    ("bind", "rbac.authorization.k8s.io", "clusterroles"): "authorizes creating the auth-delegator binding; "
    "checked by the API server's RBAC escalation rule, not audited as a request of its own",
    **{("delete", group, kind): "a ShardSet that left its MirrorSet loses its replication ConfigMap and Lease "
       "Role/RoleBinding" for group, kind in (("", "configmaps"), ("rbac.authorization.k8s.io", "roles"),
                                               ("rbac.authorization.k8s.io", "rolebindings"))},
    **{(verb, "coordination.k8s.io", "leases"): "a MirrorSet member's Role <shardset>-lease grants these to its pods, "
       "and RBAC lets the operator grant only what it holds; the MirrorSet controller reads and takes over Leases "
       "only in a failover" for verb in ("get", "create", "update", "patch")},
    ("create", "", "serviceaccounts/token"): "the operator's own token for the pods of a ShardSet under cert-manager "
    "(no client certificate to sign); its own ServiceAccount only: test_operator_may_request_only_its_own_token",
}


# Each check runs kubectl or helm (a process), so poll less often than the in-process tests do.
KUBECTL_POLL = 0.3


@pytest.fixture(scope="module")
def release(audited_plane, helm_env) -> dict[str, Any]:
    """The chart installed cluster-wide; ports chosen free so parallel sessions on this machine don't clash."""
    health, metrics = free_port(), free_port()
    run_helm(audited_plane, helm_env, "install", RELEASE, str(CHART), "--namespace", RELEASE_NS,
             "--create-namespace", "--set", f"operator.healthPort={health}",
             "--set", f"operator.metricsPort={metrics}")
    return {"health": health, "metrics": metrics, "docs": manifest_docs(audited_plane, helm_env, RELEASE, RELEASE_NS)}


@pytest.fixture(scope="module")
def operator(audited_plane, release, tmp_path_factory):
    proc = operator_from_release(audited_plane, release["docs"], RELEASE_NS, tmp_path_factory.mktemp("operator"))
    proc.start()
    yield proc
    proc.stop()


def _get(plane, *args: str) -> dict | None:
    result = plane.kubectl("get", "-o", "json", *args, check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


@pytest.fixture(scope="module")
def reconciled_sample(audited_plane, operator) -> dict:
    """The sample ShardSet applied server-side (as a GitOps tool would) and reconciled by the chart's operator."""
    audited_plane.kubectl("create", "namespace", SAMPLE_NS)
    audited_plane.kubectl("apply", "--server-side", "--namespace", SAMPLE_NS, "-f", str(SAMPLE))
    # A ShardSet naming a StorageClass: the operator checks that it exists (a cluster-scoped read).
    audited_plane.kubectl("apply", "--server-side", "--namespace", SAMPLE_NS, "-f", "-", input=yaml.safe_dump(
        {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet", "metadata": {"name": "with-class"},
         "spec": {"shards": 1, "storage": {"size": "1Gi", "storageClassName": "no-such-class"}}}))
    # The other kinds' samples too, so the audit covers whichever of their controllers are registered.
    for other in sorted((REPO / "crds" / "samples").glob("*.yaml")):
        if other != SAMPLE:
            audited_plane.kubectl("apply", "--server-side", "--namespace", SAMPLE_NS, "-f", str(other), check=False)

    def reconciled() -> dict | None:
        obj = _get(audited_plane, "shardset", "orders", "--namespace", SAMPLE_NS)
        sts = _get(audited_plane, "statefulset", "orders", "--namespace", SAMPLE_NS)
        status = (obj or {}).get("status") or {}
        # The sample ShadowPolicy targets this ShardSet: its shadow container is in the StatefulSet once the
        # operator has seen the policy (it may reconcile the ShardSet before that).
        containers = [c["name"] for c in (sts or {}).get("spec", {}).get("template", {}).get("spec", {}).get(
            "containers", [])]
        if sts and status.get("observedGeneration") == obj["metadata"]["generation"] and "shadow" in containers:
            return obj
        return None

    def with_class_handled() -> bool:
        obj = _get(audited_plane, "shardset", "with-class", "--namespace", SAMPLE_NS) or {}
        return (obj.get("status") or {}).get("observedGeneration") == 1

    def settled() -> bool:
        # The follow-up reactions are done when the ShardSet's status was written from the StatefulSet as it
        # is now and the operator's events for it are posted.
        obj = _get(audited_plane, "shardset", "orders", "--namespace", SAMPLE_NS) or {}
        sts = _get(audited_plane, "statefulset", "orders", "--namespace", SAMPLE_NS) or {}
        sts_status, status = sts.get("status") or {}, obj.get("status") or {}
        # The Progressing condition names the StatefulSet's counts: it was written from this StatefulSet status.
        ready, updated = int(sts_status.get("readyReplicas") or 0), int(sts_status.get("updatedReplicas") or 0)
        what = "Rolling out" if sts_status.get("replicas") else "Creating"
        counts = f"{what}: {ready}/{sts['spec']['replicas']} shards ready, {updated} updated"
        progressing = [c for c in status.get("conditions") or [] if c["type"] == "Progressing"]
        return bool(progressing) and progressing[0]["message"] == counts and bool(
            json.loads(audited_plane.kubectl(
                "get", "events", "--namespace", SAMPLE_NS, "-o", "json",
                "--field-selector", "involvedObject.kind=ShardSet,involvedObject.name=orders").stdout)["items"])

    def policy_reported() -> bool:
        obj = _get(audited_plane, "prefetchpolicy", "orders-prefetch", "--namespace", SAMPLE_NS) or {}
        return bool((obj.get("status") or {}).get("phase"))

    try:
        wait_for(reconciled, timeout=90, interval=KUBECTL_POLL, what="the sample ShardSet to be reconciled")
        wait_for(with_class_handled, timeout=60, interval=KUBECTL_POLL,
                 what="the ShardSet with a StorageClass to be handled")
        wait_for(policy_reported, timeout=60, interval=KUBECTL_POLL, what="the sample PrefetchPolicy's status")
        # Before the GitOps checks, which compare resourceVersions and look for the events.
        wait_for(settled, timeout=60, interval=KUBECTL_POLL, what="the status from the current StatefulSet, events")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{operator.tail()}") from None
    return _get(audited_plane, "shardset", "orders", "--namespace", SAMPLE_NS)


def test_install_creates_crds_rbac_deployment_and_peering(audited_plane, helm_env, release) -> None:
    status = json.loads(run_helm(audited_plane, helm_env, "status", RELEASE, "-n", RELEASE_NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    crds = {d["metadata"]["name"] for d in yaml.safe_load_all((CHART / "crds" / "shardsets.yaml").read_text())}
    for crd in [*crds, "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]:
        audited_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{crd}")
    assert _get(audited_plane, "clusterkopfpeering", "chronoshard")
    deploy = _get(audited_plane, "deployment", f"{RELEASE}-chronoshard", "-n", RELEASE_NS)
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    assert _get(audited_plane, "clusterrolebinding", f"{RELEASE}-chronoshard")


def test_chart_operator_reconciles_the_sample_shardset(audited_plane, reconciled_sample) -> None:
    ns = ("--namespace", SAMPLE_NS)
    for kind, name in [("secret", "orders-keyring"), ("configmap", "orders-config"),
                       ("configmap", "orders-partitions"), ("service", "orders"),
                       ("service", "orders-headless"), ("poddisruptionbudget", "orders")]:
        obj = _get(audited_plane, kind, name, *ns)
        assert obj, f"{kind}/{name} missing"
        owners = obj["metadata"].get("ownerReferences") or []
        if kind != "secret":  # the keyring outlives its ShardSet on purpose (retained volumes)
            assert [o["uid"] for o in owners] == [reconciled_sample["metadata"]["uid"]]
    sts = _get(audited_plane, "statefulset", "orders", *ns)
    assert sts["spec"]["replicas"] == 3
    # node, cache and predictor always; shadow and weaver because the sample ShadowPolicy and WeavePlan target it.
    assert [c["name"] for c in sts["spec"]["template"]["spec"]["containers"]] == [
        "node", "cache", "predictor", "shadow", "weaver"]


def test_gitops_second_server_side_apply_is_a_no_op(audited_plane, reconciled_sample) -> None:
    before = _get(audited_plane, "shardset", "orders", "--namespace", SAMPLE_NS)
    out = audited_plane.kubectl("apply", "--server-side", "--namespace", SAMPLE_NS, "-f", str(SAMPLE)).stdout
    assert "serverside-applied" in out
    after = _get(audited_plane, "shardset", "orders", "--namespace", SAMPLE_NS)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]


def test_operator_never_rewrites_the_users_spec(audited_plane, reconciled_sample) -> None:
    applied = yaml.safe_load(SAMPLE.read_text())["spec"]
    live = _get(audited_plane, "shardset", "orders", "--namespace", SAMPLE_NS, "--show-managed-fields")
    assert live["spec"] == applied
    managers = {entry["manager"] for entry in live["metadata"]["managedFields"]}
    assert "kubectl" in managers and len(managers) > 1  # the operator wrote too (metadata, status)
    # Field ownership: only the applier (kubectl) owns anything under spec.
    for entry in live["metadata"]["managedFields"]:
        if entry["manager"] != "kubectl" and entry.get("subresource") != "status":
            assert "f:spec" not in (entry.get("fieldsV1") or {}), f"{entry['manager']} owns spec fields"


def test_kubectl_diff_shows_no_drift_after_reconcile(audited_plane, reconciled_sample) -> None:
    result = audited_plane.kubectl("diff", "--server-side", "--namespace", SAMPLE_NS, "-f", str(SAMPLE), check=False)
    # kubectl diff: exit 0 = no differences, 1 = differences, >1 = error.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_operator_exports_its_metrics_where_the_chart_points_prometheus(release, operator, reconciled_sample) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    # The metrics Service targets the container port named "metrics"; the operator serves it at $(POD_IP).
    (service,) = [d for d in release["docs"] if d["kind"] == "Service"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    with urllib.request.urlopen(f"http://127.0.0.1:{release['metrics']}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    reconciles = sum(v for (name, labels), v in samples.items()
                     if name == "chronoshard_operator_reconciles_total" and ("kind", "ShardSet") in labels)
    assert reconciles >= 1
    assert samples[("chronoshard_operator_managed_objects", (("kind", "ShardSet"),))] >= 1


def test_kubectl_describe_tells_what_happened(audited_plane, reconciled_sample) -> None:
    out = audited_plane.kubectl("describe", "shardset", "orders", "--namespace", SAMPLE_NS).stdout
    assert "Conditions:" in out and "Observed Generation:" in out
    events = json.loads(audited_plane.kubectl(
        "get", "events", "--namespace", SAMPLE_NS, "-o", "json",
        "--field-selector", "involvedObject.kind=ShardSet,involvedObject.name=orders").stdout)["items"]
    assert events, "the operator posted no events for the sample ShardSet"
    assert all(e["message"] for e in events)
    assert "Events:" in out and events[0]["reason"] in out


def _chart_rules(docs: list[dict]) -> list[dict]:
    return [rule for d in docs if d["kind"] in ("ClusterRole", "Role") for rule in d["rules"]]


def test_every_audited_call_is_allowed_by_the_chart_rules(audited_plane, release, reconciled_sample) -> None:
    calls = audit_calls(audited_plane, SA_USER)
    assert calls, "no audited calls: the operator did not run as the chart's ServiceAccount"
    forbidden = [c for c in calls if c["decision"] == "forbid" or c["code"] == 403]
    assert not forbidden, "forbidden calls (add them to the chart's RBAC):\n" + "\n".join(
        f"{c['verb']} {c['group'] or 'core'}/{c['resource']} {c['uri']}" for c in forbidden)
    rules = _chart_rules(release["docs"])
    uncovered = {(c["verb"], c["group"], c["resource"]) for c in calls
                 if not any(rule_allows(r, c["verb"], c["group"], c["resource"]) for r in rules)}
    assert not uncovered, uncovered


def test_every_rule_is_used_or_deliberately_extra(audited_plane, release, reconciled_sample) -> None:
    calls = audit_calls(audited_plane, SA_USER)
    used = {(c["verb"], c["group"], c["resource"]) for c in calls}
    # A server-side apply that creates its object is audited as patch (201) but authorized as create too.
    used |= {("create", c["group"], c["resource"]) for c in calls if c["verb"] == "patch" and c["code"] == 201}
    granted = {(verb, group, resource) for rule in _chart_rules(release["docs"])
               for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}
    unused = sorted(granted - used - set(DELIBERATE_EXTRA))
    assert not unused, f"RBAC rules nobody uses (remove them, or list them with a reason): {unused}"
    # The list of extras must not hide grants the chart no longer makes.
    assert set(DELIBERATE_EXTRA) <= granted, sorted(set(DELIBERATE_EXTRA) - granted)


def test_helm_upgrade_changes_the_operator_and_it_still_reconciles(
        audited_plane, helm_env, release, operator, reconciled_sample) -> None:
    run_helm(audited_plane, helm_env, "upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--reuse-values",
             "--set", "operator.verbose=true", "--set", "operator.priority=10")
    status = json.loads(run_helm(audited_plane, helm_env, "status", RELEASE, "-n", RELEASE_NS, "-o", "json").stdout)
    assert status["version"] == 2 and status["info"]["status"] == "deployed"
    docs = manifest_docs(audited_plane, helm_env, RELEASE, RELEASE_NS)
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--verbose" in args and "--priority=10" in args
    # Recreate: the old copy stops before the new one starts.
    operator.stop()
    upgraded = operator_from_release(audited_plane, docs, RELEASE_NS, Path(operator.log.parent))
    upgraded.start()
    try:
        assert "--priority=10" in upgraded.argv
        audited_plane.kubectl("apply", "--server-side", "--namespace", SAMPLE_NS, "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet", "metadata": {"name": "after-upgrade"},
             "spec": {"shards": 1}}))
        wait_for(lambda: _get(audited_plane, "statefulset", "after-upgrade", "--namespace", SAMPLE_NS),
                 timeout=90, interval=KUBECTL_POLL, what="the upgraded operator to reconcile a new ShardSet")
    finally:
        upgraded.stop()


def test_operator_pod_is_admitted_under_restricted_pod_security(audited_plane, release) -> None:
    ns = "psa-restricted"
    audited_plane.kubectl("create", "namespace", ns)
    audited_plane.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
                          "pod-security.kubernetes.io/enforce-version=latest")
    (deploy,) = [d for d in release["docs"] if d["kind"] == "Deployment"]
    spec = deploy["spec"]["template"]["spec"]
    # The pod's ServiceAccount must exist in the namespace it is admitted to.
    audited_plane.kubectl("create", "serviceaccount", spec["serviceAccountName"], "--namespace", ns)

    def server_dry_run(pod_spec: dict) -> subprocess.CompletedProcess:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator", "namespace": ns}, "spec": pod_spec}
        return audited_plane.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)

    admitted = server_dry_run(spec)
    assert admitted.returncode == 0, admitted.stderr
    # The same admission rejects a pod that lets its container escalate privileges.
    weakened = json.loads(json.dumps(spec))
    weakened["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    rejected = server_dry_run(weakened)
    assert rejected.returncode != 0 and "violates PodSecurity" in rejected.stderr


def test_bad_values_fail_the_install_and_change_nothing(audited_plane, helm_env) -> None:
    result = run_helm(audited_plane, helm_env, "install", "bad", str(CHART), "--namespace", "bad-values",
                      "--create-namespace", "--set", "replicaCount=3", check=False)
    assert result.returncode != 0 and "replicaCount" in result.stderr
    listed = json.loads(run_helm(audited_plane, helm_env, "list", "--all-namespaces", "-o", "json").stdout)
    assert "bad" not in {r["name"] for r in listed}
    assert not _get(audited_plane, "namespace", "bad-values")


def test_operator_may_request_only_its_own_token(audited_plane, release) -> None:
    """The chart's RBAC, as the API server decides it: the operator may ask TokenRequest for its own account in
    its own namespace, and for no other account (the token it sends to shard pods under cert-manager)."""
    def can_i(name: str, namespace: str) -> str:
        return audited_plane.kubectl("auth", "can-i", "create", f"serviceaccounts/{name}", "--subresource=token",
                                     "--as", SA_USER, "-n", namespace, check=False).stdout.strip()

    own = SA_USER.rsplit(":", 1)[1]
    wait_for(lambda: can_i(own, RELEASE_NS) == "yes", timeout=30, interval=KUBECTL_POLL,
             what="the token Role to take effect")
    assert can_i("default", RELEASE_NS) == "no"
    assert can_i(own, SAMPLE_NS) == "no"
    (deploy,) = [d for d in release["docs"] if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CHRONOSHARD_OPERATOR_SERVICE_ACCOUNT"] == f"{RELEASE_NS}/{own}"
