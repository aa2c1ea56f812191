"""hack/chart-operator.py: the rendered Deployment → the local operator command, as the kubelet would build it."""

from __future__ import annotations

import importlib.util

from .helpers import REPO, by_kind, render

_spec = importlib.util.spec_from_file_location("chart_operator", REPO / "hack" / "chart-operator.py")
chart_operator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chart_operator)


def test_kubelet_variable_expansion() -> None:
    env = {"POD_IP": "10.0.0.7"}
    assert chart_operator.expand_kubelet_vars("http://$(POD_IP):8080", env) == "http://10.0.0.7:8080"
    assert chart_operator.expand_kubelet_vars("$$(POD_IP)", env) == "$(POD_IP)"  # escaped
    assert chart_operator.expand_kubelet_vars("$(UNKNOWN)", env) == "$(UNKNOWN)"  # kept as written


def test_operator_command_is_the_deployments_with_the_pod_ip_filled_in() -> None:
    (deploy,) = by_kind(render("--set", "watchNamespaces={team-a}", "--set", "operator.verbose=true"), "Deployment")
    argv, env, sa = chart_operator.operator_command(deploy, "chronoshard-system", pod_ip="127.0.0.9")
    assert argv[0] == "chronoshard-operator"
    assert "--namespace=team-a" in argv and "--verbose" in argv
    assert "--liveness=http://127.0.0.9:8080/healthz" in argv and "--metrics-host=127.0.0.9" in argv
    assert not [a for a in argv if "$(" in a]
    assert env["POD_IP"] == "127.0.0.9" and env["POD_NAMESPACE"] == "chronoshard-system"
    assert sa == "cs-chronoshard"
    # Each copy is named apart, as two pods of a Deployment would be.
    other = chart_operator.operator_command(deploy, "chronoshard-system")[1]
    assert env["POD_ID"].startswith("cs-chronoshard-local-") and other["POD_ID"] != env["POD_ID"]


def test_token_kubeconfig_signs_in_with_the_token_only() -> None:
    config = chart_operator.token_kubeconfig("https://127.0.0.1:6443", b"CA", "tok", "sa")
    (user,) = config["users"]
    assert user["user"] == {"token": "tok"}
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
