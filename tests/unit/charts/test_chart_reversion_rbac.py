"""The chart lets the operator run Reversions: list/watch/patch reversions (Kopf's watch and finalizer), create
them (a ShadowPolicy's reversion by policy) and patch reversions/status, cluster-wide (ClusterRole) and per watched
namespace (Roles); nothing more on them (no update, no delete)."""

from __future__ import annotations

from .helpers import by_kind, render


def _verbs(rules: list[dict], resource: str) -> set[str]:
    return {v for r in rules if "chronoshard.io" in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}


def test_cluster_role_allows_reversions_and_their_status() -> None:
    (role,) = by_kind(render(), "ClusterRole")
    assert _verbs(role["rules"], "reversions") == {"list", "watch", "patch", "create"}
    assert _verbs(role["rules"], "reversions/status") == {"patch"}


def test_each_watched_namespace_role_allows_reversions_and_their_status() -> None:
    docs = render("--set", "watchNamespaces={team-a,team-b}")
    roles = [r for r in by_kind(docs, "Role") if any("reversions" in rule["resources"] for rule in r["rules"])]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert _verbs(role["rules"], "reversions") == {"list", "watch", "patch", "create"}
        assert _verbs(role["rules"], "reversions/status") == {"patch"}
