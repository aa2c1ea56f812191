"""The Helm chart, checked with the real pinned tools: helm lint/template, kube-score, kubeconform (CRD schemas)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .helpers import (
    CHART,
    KUBE_SCORE_SKIPS,
    REPO,
    by_kind,
    helm,
    kube_score_args,
    render,
    render_text,
    tools_bin,
)

VALUE_FILES = sorted((CHART / "ci").glob("*-values.yaml"))


@pytest.mark.parametrize("values", [None, *VALUE_FILES], ids=lambda v: v.name if v else "defaults")
def test_helm_lint_strict(values) -> None:
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("replicaCount=2", "replicaCount"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("replicas=1", "replicas"),  # unknown key: a typo must not be ignored
        ("watchNamespaces={Team_A}", "watchNamespaces"),
        ("operator.metricsPort=70000", "metricsPort"),
        ("image.digest=latest", "digest"),
    ],
)
def test_values_schema_rejects_bad_values_with_a_clear_message(setting, message) -> None:
    result = helm("template", "cs", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "values don't meet the specifications of the schema" in result.stderr


def test_deployment_is_one_recreated_replica_with_restricted_security() -> None:
    (deploy,) = by_kind(render(), "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsUser"] == 65532  # the image's user
    assert container["image"] == "ghcr.io/chronoshard/chronoshard:" + (REPO / "VERSION").read_text().strip()
    assert container["command"] == ["chronoshard-operator"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probe in container
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert container["resources"]["limits"]["memory"] == container["resources"]["requests"]["memory"]


def test_operator_args_follow_the_values() -> None:
    def args(*extra: str) -> list[str]:
        (deploy,) = by_kind(render(*extra), "Deployment")
        return deploy["spec"]["template"]["spec"]["containers"][0]["args"]

    default = args()
    assert "--all-namespaces" in default and "--peering=chronoshard" in default
    assert "--liveness=http://$(POD_IP):8080/healthz" in default
    assert "--metrics-host=$(POD_IP)" in default and "--metrics-port=9090" in default
    namespaced = args("--set", "watchNamespaces={team-a,team-b}")
    assert "--namespace=team-a" in namespaced and "--namespace=team-b" in namespaced
    assert "--all-namespaces" not in namespaced
    standalone = args("--set", "operator.peering.enabled=false", "--set", "operator.verbose=true")
    assert "--standalone" in standalone and "--verbose" in standalone
    assert not [a for a in standalone if a.startswith("--peering")]


def test_digest_wins_over_tag() -> None:
    digest = "sha256:" + "ab" * 32
    (deploy,) = by_kind(render("--set", f"image.digest={digest}", "--set", "image.tag=9.9.9"), "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/chronoshard/chronoshard@{digest}"


def test_clusterwide_rbac_is_a_cluster_role_with_peering_and_namespaces() -> None:
    docs = render()
    assert not by_kind(docs, "Role")
    (role,) = by_kind(docs, "ClusterRole")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"clusterkopfpeerings", "shardsets", "statefulsets"} <= resources
    # Kopf needs namespaces only for glob patterns, which watchNamespaces (DNS labels) cannot hold.
    assert "namespaces" not in resources
    assert "kopfpeerings" not in resources
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cs-chronoshard",
                                    "namespace": "chronoshard-system"}]
    (peering,) = by_kind(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "chronoshard"


def test_namespaced_rbac_is_a_role_per_watched_namespace() -> None:
    docs = render("--set", "watchNamespaces={team-a,team-b}")
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        assert {"kopfpeerings", "shardsets", "secrets"} <= resources
        assert "namespaces" not in resources and "clusterkopfpeerings" not in resources
    (cluster_role,) = by_kind(docs, "ClusterRole")
    # Cluster-wide only cluster-scoped things: reads, plus the shard pods' auth-delegator bindings (and `bind`
    # on that one role); no access to other namespaces' objects.
    resources = sorted(r for rule in cluster_role["rules"] for r in rule["resources"])
    assert resources == ["clusterrolebindings", "clusterroles", "customresourcedefinitions", "namespaces",
                         "storageclasses"]
    for rule in cluster_role["rules"]:
        if rule["resources"] == ["clusterrolebindings"]:
            assert set(rule["verbs"]) == {"create", "list", "patch", "delete"}
        elif rule["resources"] == ["clusterroles"]:
            assert rule["verbs"] == ["bind"] and rule["resourceNames"] == ["system:auth-delegator"]
        else:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}
    assert sorted(p["metadata"]["namespace"] for p in by_kind(docs, "KopfPeering")) == ["team-a", "team-b"]
    assert not by_kind(docs, "ClusterKopfPeering")


def test_no_rule_grants_wildcards_or_escalation() -> None:
    for docs in (render(), render("--set", "watchNamespaces={team-a}")):
        for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"]
                assert not {"escalate", "impersonate"} & set(rule["verbs"])
                if "bind" in rule["verbs"]:
                    # The one exception: binding the shard pods to system:auth-delegator, that role only.
                    assert rule == {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                                    "resourceNames": ["system:auth-delegator"], "verbs": ["bind"]}


def test_optional_objects_appear_only_when_enabled() -> None:
    default = render()
    assert not by_kind(default, "ServiceMonitor") and not by_kind(default, "NetworkPolicy")
    assert not by_kind(default, "ConfigMap")
    hardened = render("--values", str(CHART / "ci" / "hardened-values.yaml"))
    (monitor,) = by_kind(hardened, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (policy,) = by_kind(hardened, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (dashboard,) = by_kind(hardened, "ConfigMap")
    assert dashboard["data"]["chronoshard-operator.json"].strip() == (
        CHART / "dashboards" / "chronoshard-operator.json").read_text().strip()
    result = helm("template", "cs", str(CHART), "--set", "metrics.serviceMonitor.enabled=true",
                  "--set", "metrics.service.enabled=false", check=False)
    assert result.returncode != 0 and "needs metrics.service.enabled" in result.stderr


def test_notes_tell_what_to_apply_next() -> None:
    notes = helm("install", "cs", str(CHART), "--dry-run=client", "--namespace", "ops").stdout
    assert "kubectl apply --server-side -f crds/samples/shardset.yaml" in notes
    assert "kubectl describe shardset" in notes


def _kube_score(manifests: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(tools_bin() / "kube-score"), "score", "--output-format", "ci", *kube_score_args(), "-"],
        input=manifests, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("values", VALUE_FILES, ids=lambda v: v.name)
def test_kube_score_passes_with_documented_skips_only(values) -> None:
    result = _kube_score(render_text("--values", str(values)))
    problems = [line for line in result.stdout.splitlines() if line.startswith(("[CRITICAL]", "[WARNING]"))]
    assert result.returncode == 0 and not problems, "\n".join(problems) or result.stderr


def test_kube_score_still_catches_a_weakened_pod() -> None:
    weakened = render_text("--values", str(CHART / "ci" / "hardened-values.yaml")).replace(
        "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")
    result = _kube_score(weakened)
    assert result.returncode != 0
    assert "writable root filesystem" in result.stdout


def test_every_skipped_kube_score_check_is_explained_in_the_chart_readme() -> None:
    readme = (CHART / "README.md").read_text()
    for check in KUBE_SCORE_SKIPS:
        assert f"`{check}`" in readme, f"kube-score skip {check} not explained in charts/chronoshard/README.md"


def test_samples_validate_against_the_crd_schemas_with_kubeconform(tmp_path) -> None:
    location = subprocess.run(
        [sys.executable, str(REPO / "hack" / "kube-jsonschemas.py"), "--out", str(tmp_path), "--crds",
         str(CHART / "crds")], capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    kubeconform = [str(tools_bin() / "kubeconform"), "-strict", "-summary", "-schema-location", location]
    ok = subprocess.run([*kubeconform, str(REPO / "crds" / "samples")], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Invalid: 0, Errors: 0" in ok.stdout
    sample = (REPO / "crds" / "samples" / "shardset.yaml").read_text()
    typo = subprocess.run([*kubeconform, "-"], input=sample.replace("keyAlgorithm:", "keyAlgoritm:"),
                          capture_output=True, text=True, timeout=60)
    assert typo.returncode != 0 and "keyAlgoritm" in typo.stdout
