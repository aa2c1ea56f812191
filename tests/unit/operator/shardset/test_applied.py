"""When the ShardSet controller skips a server-side apply: only for a manifest it already applied to a child the
watch has since reported at exactly the version that apply returned."""

from __future__ import annotations

from typing import Any

import pytest
from chronoshard.operator.shardset import applied as applied_mod
from chronoshard.operator.shardset.applied import AppliedChildren


def cm(data: str = "a", rv: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "x-config", "namespace": "ns"}
    if rv is not None:
        meta["resourceVersion"] = rv
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": data}}


@pytest.fixture()
def sent(monkeypatch) -> list[dict[str, Any]]:
    """Every manifest handed to kube.apply; the server answers with resourceVersion 1, 2, 3, ..."""
    calls: list[dict[str, Any]] = []

    def fake_apply(obj, force: bool = True):
        calls.append(obj)
        return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(len(calls))}}

    monkeypatch.setattr(applied_mod.kube, "apply", fake_apply)
    return calls


def test_without_a_watch_report_every_apply_is_sent(sent):
    cache = AppliedChildren()
    assert cache.apply(cm()) is not None
    assert cache.apply(cm()) is not None  # passes driven by hand, or before the watch has caught up
    assert len(sent) == 2


def test_unchanged_manifest_on_an_untouched_child_is_skipped(sent):
    cache = AppliedChildren()
    cache.apply(cm())
    cache.observed(cm(rv="1"), "MODIFIED")  # the watch reports our own apply
    assert cache.apply(cm()) is None
    assert len(sent) == 1


def test_changed_manifest_is_sent(sent):
    cache = AppliedChildren()
    cache.apply(cm("a"))
    cache.observed(cm("a", rv="1"), "ADDED")
    assert cache.apply(cm("b")) is not None
    assert len(sent) == 2


def test_child_changed_by_someone_else_is_applied_again(sent):
    cache = AppliedChildren()
    cache.apply(cm())
    cache.observed(cm("edited", rv="7"), "MODIFIED")
    assert cache.apply(cm()) is not None
    assert len(sent) == 2


def test_deleted_child_is_applied_again(sent):
    cache = AppliedChildren()
    cache.apply(cm())
    cache.observed(cm(rv="1"), "MODIFIED")
    cache.observed(cm(rv="1"), "DELETED")
    assert cache.apply(cm()) is not None
    assert len(sent) == 2


def test_always_sends(sent):
    cache = AppliedChildren()
    cache.apply(cm())
    cache.observed(cm(rv="1"), None)  # Kopf's initial listing has no event type
    assert cache.apply(cm(), always=True) is not None
    assert len(sent) == 2
