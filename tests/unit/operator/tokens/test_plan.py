"""The token controller's pure decisions: signing-key rotation steps and status.tokenService."""

from __future__ import annotations

import datetime as dt

from chronoshard.operator.tokens import plan
from chronoshard.operator.tokens.manifests import ROTATED_AT_ANNOTATION, ROTATED_REQUEST_ANNOTATION

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
TTL = dt.timedelta(hours=1)


def ann(request: str, at: dt.datetime) -> dict[str, str]:
    return {ROTATED_REQUEST_ANNOTATION: request, ROTATED_AT_ANNOTATION: plan.format_time(at)}


def test_no_request_keeps():
    assert plan.rotation_step(None, {}, False, NOW, TTL) == plan.KEEP


def test_new_request_rotates_once():
    assert plan.rotation_step("r1", {}, False, NOW, TTL) == plan.ROTATE
    # handled: the same value never rotates again
    assert plan.rotation_step("r1", ann("r1", NOW - 2 * TTL), False, NOW, TTL) == plan.KEEP
    assert plan.rotation_step("r2", ann("r1", NOW - 2 * TTL), False, NOW, TTL) == plan.ROTATE


def test_previous_key_is_published_for_valid_ttl_then_dropped():
    assert plan.rotation_step("r1", ann("r1", NOW - TTL / 2), True, NOW, TTL) == plan.KEEP
    assert plan.rotation_step("r1", ann("r1", NOW - TTL), True, NOW, TTL) == plan.DROP_PREVIOUS
    # a second request waits until the first rotation's old key is gone: one rotation at a time
    assert plan.rotation_step("r2", ann("r1", NOW - TTL / 2), True, NOW, TTL) == plan.KEEP
    # a previous key without a readable time is dropped (nothing says it is still needed)
    assert plan.rotation_step("r1", {ROTATED_AT_ANNOTATION: "yesterday"}, True, NOW, TTL) == plan.DROP_PREVIOUS


def test_rotation_annotations_round_trip():
    a = plan.rotation_annotations("r9", NOW)
    assert a[ROTATED_REQUEST_ANNOTATION] == "r9" and plan.parse_time(a[ROTATED_AT_ANNOTATION]) == NOW


def test_status_reports_model_source_over_members():
    risk = {"model": {"trained": True}, "members": [{"store": "a/x", "source": "model"},
                                                    {"store": "b/x", "source": "model"}]}
    st = plan.token_service_status(True, "https://x", ["k1"], risk)
    assert st == {"ready": True, "url": "https://x", "keyIds": ["k1"], "model": {"trained": True, "source": "model"}}
    mixed = {"model": {"trained": False}, "members": [{"source": "model"}, {"source": "rules"}]}
    assert plan.token_service_status(True, "u", [], mixed)["model"] == {"trained": False, "source": "mixed"}
    st = plan.token_service_status(False, "u", [], None, "ShardSet a/x does not exist")
    assert st["model"] == {"trained": False, "source": None} and st["message"] == "ShardSet a/x does not exist"


def test_tokens_issued_from_the_service_status():
    assert plan.tokens_issued(None) is None and plan.tokens_issued({}) is None
    doc = {"tokens": {"tier": {"valid": 3, "temporary": 2, "weird": 9}, "state": {"active": 5}}}
    assert plan.tokens_issued(doc) == {"temporary": 2, "provisional": 0, "valid": 3}
    assert plan.tokens_issued({"tokens": {"tier": {"valid": "x"}}}) == {"temporary": 0, "provisional": 0, "valid": 0}
