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


TOKEN_RULE = {"apiGroups": [""], "resources": ["serviceaccounts/token"], "resourceNames": ["cs-chronoshard"],
              "verbs": ["create"]}


def token_role(docs: list[dict]) -> dict:
    """The one Role that lets the operator request tokens of its own ServiceAccount, bound to that account."""
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "cs-chronoshard-token"]
    assert role["metadata"]["namespace"] == "chronoshard-system" and role["rules"] == [TOKEN_RULE]
    (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] == "cs-chronoshard-token"]
    assert binding["metadata"]["namespace"] == "chronoshard-system"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "cs-chronoshard-token"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cs-chronoshard",
                                    "namespace": "chronoshard-system"}]
    return role


def test_operator_may_request_tokens_of_its_own_service_account_only() -> None:
    for docs in (render(), render("--set", "watchNamespaces={team-a,team-b}")):
        token_role(docs)
        (deploy,) = by_kind(docs, "Deployment")
        env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["CHRONOSHARD_OPERATOR_SERVICE_ACCOUNT"] == "chronoshard-system/cs-chronoshard"
        # No other rule anywhere mentions tokens.
        for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
            for rule in role["rules"]:
                if "serviceaccounts/token" in rule["resources"]:
                    assert rule == TOKEN_RULE
    docs = render("--set", "serviceAccount.name=ops-bot")
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "cs-chronoshard-token"]
    assert role["rules"][0]["resourceNames"] == ["ops-bot"]


def test_clusterwide_rbac_is_a_cluster_role_with_peering_and_namespaces() -> None:
    docs = render()
    # The only Role: the operator's own token (namespace-scoped on purpose), checked above.
    assert by_kind(docs, "Role") == [token_role(docs)]
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
    roles = [r for r in by_kind(docs, "Role") if r is not token_role(docs)]
    assert len(roles) == len(by_kind(docs, "Role")) - 1
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
    policies = by_kind(hardened, "NetworkPolicy")
    assert len(policies) == 2  # the operator's and the console's (on in the hardened values)
    assert all(p["spec"]["policyTypes"] == ["Ingress", "Egress"] for p in policies)
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


# ---- who reaches the shard pods: the README's example and the operator's egress ----------------------------
def _readme_shardset() -> dict:
    """The ShardSet of the chart README's "Who reaches the shard pods" section."""
    import re

    import yaml

    text = (CHART / "README.md").read_text()
    section = text.split("## Who reaches the shard pods", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return dict(yaml.safe_load(block))


def test_readme_access_example_lets_in_the_app_and_prometheus_only() -> None:
    from chronoshard.operator.podcontract import PORTS
    from chronoshard.operator.shardset import manifests
    from chronoshard.operator.spec.shardset import parse_shardset

    doc = _readme_shardset()
    assert doc["kind"] == "ShardSet"
    spec = parse_shardset(doc["spec"])  # valid as the CRD schema sees it
    owner = {**doc, "metadata": {**doc["metadata"], "uid": "u1"}}
    operator_peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "chronoshard-system"}},
                     "podSelector": {"matchLabels": {"app.kubernetes.io/name": "chronoshard-operator"}}}
    policy = manifests.network_policy(owner, spec, operator_peer)
    by_ports = {tuple(p["port"] for p in rule["ports"]): rule["from"] for rule in policy["spec"]["ingress"]}
    every = tuple(sorted(PORTS.values()))
    clients = (PORTS["cache"], PORTS["shadow"], PORTS["weaver"])
    assert set(by_ports) == {every, clients} and len(policy["spec"]["ingress"]) == 3
    app = doc["spec"]["access"]["clients"]
    assert by_ports[clients] == app
    assert app[0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "shop-frontend"}
    monitoring = [r["from"] for r in policy["spec"]["ingress"] if r["from"] == doc["spec"]["access"]["monitoring"]]
    assert monitoring and monitoring[0][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    own, operator = policy["spec"]["ingress"][0]["from"]
    assert operator == operator_peer and policy["spec"]["ingress"][0]["ports"] == [
        {"port": p, "protocol": "TCP"} for p in every]


def test_operator_network_policy_reaches_the_shard_pods_and_they_admit_it() -> None:
    """The chart's egress rule selects the labels the operator gives shard pods, on their three ports; and the
    operator pods carry the label the ShardSets' policies admit."""
    from chronoshard.operator import naming
    from chronoshard.operator.podcontract import PORTS
    from chronoshard.operator.shardset import tlsassets

    docs = render("--values", str(CHART / "ci" / "hardened-values.yaml"))
    (policy,) = [p for p in by_kind(docs, "NetworkPolicy") if not p["metadata"]["name"].endswith("-console")]
    shard_labels = naming.common_labels("orders", "shard")
    to_shards = [r for r in policy["spec"]["egress"] if r.get("to")]
    assert len(to_shards) == 1
    (peer,) = to_shards[0]["to"]
    assert peer["namespaceSelector"] == {}
    assert peer["podSelector"]["matchLabels"].items() <= shard_labels.items()
    assert sorted(p["port"] for p in to_shards[0]["ports"]) == sorted(PORTS.values())
    (deploy,) = [d for d in by_kind(docs, "Deployment") if not d["metadata"]["name"].endswith("-console")]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert tlsassets.OPERATOR_NAME_LABEL.items() <= pod_labels.items()
    env = {e["name"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "POD_NAMESPACE" in env, "the ShardSets' policies admit the operator in its own namespace only"
