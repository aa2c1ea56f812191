"""The chart lets the operator run Reshards: list/watch/patch reshards (Kopf's watch and finalizer), patch their
status, create and get them (a ShardSet's rebalance on scale), cluster-wide (ClusterRole) and per watched namespace
(Roles); nothing more (no update, no delete)."""

from __future__ import annotations

from .helpers import by_kind, render

VERBS = {"list", "watch", "patch", "create", "get"}


def _verbs(rules: list[dict], resource: str) -> set[str]:
    return {v for r in rules if "chronoshard.io" in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}


def test_cluster_role_allows_reshards_and_their_status() -> None:
    (role,) = by_kind(render(), "ClusterRole")
    assert _verbs(role["rules"], "reshards") == VERBS
    assert _verbs(role["rules"], "reshards/status") == {"patch"}


def test_each_watched_namespace_role_allows_reshards() -> None:
    docs = render("--set", "watchNamespaces={team-a,team-b}")
    roles = [r for r in by_kind(docs, "Role") if any("reshards" in rule["resources"] for rule in r["rules"])]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert _verbs(role["rules"], "reshards") == VERBS
        assert _verbs(role["rules"], "reshards/status") == {"patch"}
