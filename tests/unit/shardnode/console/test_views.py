"""The console's JSON shapes, from Kubernetes objects and shadow answers."""

from __future__ import annotations

import base64

import pytest
from chronoshard.shardnode.console import views


def obj(name, spec=None, status=None, ns="shop"):
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec or {}, "status": status or {}}


def test_a_shardset_summary_names_its_rotations_and_policy():
    ss = obj("orders", {"shards": 3, "tables": [{"name": "t1"}, {"name": "t2"}]},
             {"phase": "Ready", "shards": {"desired": 3, "ready": 2}, "keyVersion": 2,
              "keyVersions": [{"id": 1, "state": "retiring"}, {"id": 2, "state": "primary"}]})
    rots = [obj("r2", {"shardSetRef": {"name": "orders"}}, {"phase": "Rewrapping"}),
            obj("r1", {"shardSetRef": {"name": "orders"}})]
    view = views.shardset_view(ss, rots, obj("orders-shadow"))
    assert view == {"namespace": "shop", "name": "orders", "shards": 3, "readyShards": 2, "phase": "Ready",
                    "tables": ["t1", "t2"],
                    "keyVersions": {"current": 2, "versions": [{"id": 1, "state": "retiring"},
                                                               {"id": 2, "state": "primary"}]},
                    "rotations": [{"name": "r1", "phase": "Pending"}, {"name": "r2", "phase": "Rewrapping"}],
                    "shadowPolicy": "orders-shadow"}
    assert views.shardset_view(obj("x"), [], None)["shadowPolicy"] is None


def test_refers_to_matches_the_shardset_ref_only():
    assert views.refers_to(obj("a", {"shardSetRef": {"name": "orders"}}), "orders")
    assert not views.refers_to(obj("a", {"shardSetRef": {"name": "other"}}), "orders")
    assert not views.refers_to(obj("a"), "orders")


def test_the_detail_carries_the_policys_anomalies_and_the_reversions():
    policy = obj("p", {"shardSetRef": {"name": "orders"}},
                 {"anomalies": [{"id": "t.1", "shard": 0}], "detector": {"state": "trained"}})
    rev = obj("undo", {"incident": {"policy": "p", "id": "t.1"}},
              {"phase": "AwaitingApproval", "digest": "ab" * 32, "plan": {"keys": 7}, "progress": {"done": 0}})
    d = views.shardset_detail(obj("orders"), [], policy, [rev])
    assert d["anomalies"] == [{"id": "t.1", "shard": 0}] and d["detector"] == {"state": "trained"}
    assert d["reversions"] == [{"name": "undo", "phase": "AwaitingApproval", "digest": "ab" * 32, "keys": 7,
                                "progress": {"done": 0}, "incident": {"policy": "p", "id": "t.1"}}]


@pytest.mark.parametrize(("phase", "digest", "may", "can"), [
    ("AwaitingApproval", "d", True, True), ("AwaitingApproval", "d", False, False),
    ("Running", "d", True, False), ("AwaitingApproval", None, True, False)])
def test_can_approve_needs_the_phase_a_digest_and_rbac(phase, digest, may, can):
    rev = obj("undo", {"tables": ["t"]}, {"phase": phase, "digest": digest})
    assert views.reversion_view(rev, may)["canApprove"] is can


def test_a_text_value_is_text_and_a_binary_one_a_hex_dump():
    text = views.value_view({"lsn": 3, "time": 1.5, "size": 5, "value": base64.b64encode(b"hello").decode()}, "u")
    assert (text["text"], text["hex"], text["truncated"], text["download"]) == ("hello", None, False, "u")
    binary = views.value_view({"lsn": 4, "value": base64.b64encode(b"\xff\x00AB").decode()}, "u")
    assert binary["text"] is None and binary["hex"] == "00000000  ff 00 41 42" + " " * 36 + "  ..AB"
    assert binary["size"] == 4


def test_only_the_first_4_kib_is_shown_even_when_a_character_is_cut():
    raw = "é".encode() * 3000  # 6000 bytes; 4096 falls on a character boundary
    odd = b"a" + raw  # now 4096 cuts an "é" in half
    for data in (raw, odd):
        v = views.value_view({"value": base64.b64encode(data).decode()}, "u")
        assert v["truncated"] and v["text"] is not None and data.startswith(v["text"].encode())
        assert 4093 <= len(v["text"].encode()) <= 4096
    big = views.value_view({"value": base64.b64encode(bytes(5000)).decode()}, "u")
    assert big["truncated"] and big["hex"].count("\n") == 4096 // 16 - 1


def test_a_delete_has_no_bytes():
    assert views.value_bytes({"op": "delete", "value": None}) == b""


def test_the_timeline_merges_shards_in_time_order():
    merged = views.merge_timeline({
        1: {"windows": [{"start": 10, "end": 20, "score": 0.5, "features": {}, "incident": None}],
            "incidents": [{"id": "b", "startTime": 12}]},
        0: {"windows": [{"start": 0, "end": 10, "score": 0.1, "features": {}, "incident": None},
                        {"start": 10, "end": 20, "score": 3.0, "features": {"x": 1}, "incident": "a"}],
            "incidents": [{"id": "a", "startTime": 11}]}}, 2.5)
    assert merged["threshold"] == 2.5
    assert [(w["shard"], w["start"]) for w in merged["windows"]] == [(0, 0), (0, 10), (1, 10)]
    assert [(i["id"], i["shard"]) for i in merged["incidents"]] == [("a", 0), ("b", 1)]


def test_the_state_is_merged_in_key_order_and_paged():
    per = {0: {"entries": [{"key": "a", "lsn": 1, "size": 1}, {"key": "d", "lsn": 2, "size": 1}], "next": None},
           1: {"entries": [{"key": "b", "lsn": 5, "size": 2}, {"key": "c", "lsn": 6, "size": 2}], "next": "c"}}
    page = views.merge_state(per, 3)
    assert [(e["key"], e["shard"]) for e in page["entries"]] == [("a", 0), ("b", 1), ("c", 1)]
    assert page["next"] == "c"
    whole = views.merge_state({0: per[0], 1: {**per[1], "next": None}}, 10)
    assert [e["key"] for e in whole["entries"]] == ["a", "b", "c", "d"] and whole["next"] is None


def test_the_threshold_comes_from_the_policy_when_it_states_one():
    assert views.detector_threshold(None, "t") is None
    assert views.detector_threshold(obj("p", {"anomaly": {"threshold": 4}}), "t") == 4.0
    assert views.detector_threshold(obj("p", {}, {"detector": {"states": {"t": {"threshold": 2.5}}}}), "t") == 2.5


@pytest.mark.parametrize("text", ["1796238815.5", "2026-11-30T09:00:00Z", "2026-11-30T09:00:00+01:00"])
def test_points_in_time_are_rfc3339_or_unix_seconds(text):
    assert views.point(text, "time") == text


@pytest.mark.parametrize("text", ["yesterday", "nan", "inf", ""])
def test_other_points_are_refused(text):
    with pytest.raises(ValueError):
        views.point(text, "time")


@pytest.mark.parametrize("data", [b"abc\x00def", b"\x1b[31mred", b"tab\tand\nnewline\x7f"])
def test_utf8_with_control_bytes_is_shown_as_hex(data):
    v = views.value_view({"value": base64.b64encode(data).decode()}, "u")
    assert v["text"] is None and v["hex"].startswith("00000000  ")
