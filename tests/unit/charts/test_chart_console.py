"""The recovery console in the chart: off by default; when on, one restricted pod running chronoshard-console as
its own ServiceAccount, which may review tokens and rights, find the shard pods and read their shadows, and request
tokens of itself only; HTTPS from a TLS Secret, or plain HTTP (port-forward only) without one."""

from __future__ import annotations

from .helpers import CHART, by_kind, helm, render


def _console(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith("-console")]


def test_the_console_is_off_by_default() -> None:
    docs = render()
    assert not [d for d in docs if d["metadata"]["name"].endswith(("-console", "-console-token"))]


def test_the_console_runs_as_its_own_restricted_service_account() -> None:
    docs = render("--set", "console.enabled=true")
    (deploy,) = _console(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["chronoshard-console"]
    assert "--insecure" in container["args"] and not any(a.startswith("--tls-dir") for a in container["args"])
    assert pod["serviceAccountName"] == deploy["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CHRONOSHARD_CONSOLE_SERVICE_ACCOUNT"] == f"chronoshard-system/{deploy['metadata']['name']}"
    # Its selector is its own: never the operator's pods.
    assert deploy["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "chronoshard-console"
    (svc,) = _console(docs, "Service")
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


def test_the_console_may_review_find_and_read_and_nothing_more() -> None:
    docs = render("--set", "console.enabled=true")
    (role,) = _console(docs, "ClusterRole")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("authentication.k8s.io",), ("tokenreviews",)): {"create"},
        (("authorization.k8s.io",), ("subjectaccessreviews",)): {"create"},
        (("",), ("pods", "configmaps")): {"get", "list"},
        (("chronoshard.io",), ("shardsets/data",)): {"get", "list"},
    }
    (token_role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-console-token")]
    (rule,) = token_role["rules"]
    assert rule["resources"] == ["serviceaccounts/token"] and rule["verbs"] == ["create"]
    assert rule["resourceNames"] == [_console(docs, "Deployment")[0]["metadata"]["name"]]


def test_https_comes_from_the_named_tls_secret() -> None:
    docs = render("--set", "console.enabled=true", "--set", "console.tlsSecretName=console-tls")
    (deploy,) = _console(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--tls-dir=/etc/chronoshard/console-tls" in container["args"] and "--insecure" not in container["args"]
    assert pod["volumes"] == [{"name": "tls", "secret": {"secretName": "console-tls"}}]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_with_network_policies_the_console_reaches_only_the_api_dns_and_the_shadows() -> None:
    docs = render("--set", "console.enabled=true", "--set", "networkPolicy.enabled=true")
    (policy,) = _console(docs, "NetworkPolicy")
    shard_rule = policy["spec"]["egress"][-1]
    assert [p["port"] for p in shard_rule["ports"]] == [7403]
    assert shard_rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "shard"


def test_the_auth_proxy_mounts_its_ca_passes_the_flags_and_only_then_may_impersonate() -> None:
    docs = render("--set", "console.enabled=true", "--set", "console.tlsSecretName=console-tls",
                  "--set", "console.authProxy.enabled=true", "--set", "console.authProxy.caConfigMap=front-proxy-ca",
                  "--set", "console.authProxy.allowedNames={front-proxy,aggregator}")
    (deploy,) = _console(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {"--auth-proxy-ca=/etc/chronoshard/console-proxy-ca/ca.crt",
            "--auth-proxy-allowed-names=front-proxy,aggregator", "--auth-proxy-user-header=X-Remote-User",
            "--auth-proxy-group-header=X-Remote-Group"} <= set(container["args"])
    assert {"name": "proxy-ca", "configMap": {"name": "front-proxy-ca"}} in pod["volumes"]
    assert {"name": "proxy-ca", "mountPath": "/etc/chronoshard/console-proxy-ca", "readOnly": True} in \
        container["volumeMounts"]
    (role,) = _console(docs, "ClusterRole")
    assert {"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]} in role["rules"]
    # Without the mode: no impersonation right, no flag.
    (role,) = _console(render("--set", "console.enabled=true", "--set", "console.tlsSecretName=console-tls"),
                       "ClusterRole")
    assert not [r for r in role["rules"] if "impersonate" in r["verbs"]]


def test_the_auth_proxy_is_refused_without_tls_or_a_ca() -> None:
    for extra in (["--set", "console.authProxy.caConfigMap=ca"], ["--set", "console.tlsSecretName=console-tls"]):
        out = helm("template", "cs", str(CHART), "--set", "console.enabled=true",
                   "--set", "console.authProxy.enabled=true", *extra, check=False)
        assert out.returncode != 0 and "console.authProxy needs" in out.stderr
