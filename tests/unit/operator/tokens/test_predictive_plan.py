"""Predictive switchover decisions of the MirrorSet controller (operator/mirrorset/plan.py), case by case."""

from __future__ import annotations

import pytest
from chronoshard.operator.mirrorset import plan
from chronoshard.operator.mirrorset.plan import Candidate, Member

A = Member("shop", "orders", "zone-a")
B = Member("dr", "orders", "zone-b")
C = Member("shop", "orders-c", "zone-a")


def doc(*members: dict) -> dict:
    return {"members": list(members), "threshold": 0.7}


def test_member_risk_is_the_shortest_window_whatever_the_order():
    d = doc({"store": "shop/orders", "risk": {"1800": 0.9, "300": 0.2, "900": 0.5}},
            {"store": "dr/orders", "risk": {"900": 0.4}})
    assert plan.member_risks(d) == {"shop/orders": 0.2, "dr/orders": 0.4}


@pytest.mark.parametrize("risk", [None, {}, {"x": 0.3}, {"300": "high"}, {"300": 1.5}, {"300": True}, [0.3]])
def test_unreadable_risks_are_left_out(risk):
    assert plan.member_risks(doc({"store": "shop/orders", "risk": risk})) == {}


def test_no_document_means_no_risks():
    assert plan.member_risks(None) == {} and plan.copy_risks(None) == {}
    assert plan.member_risks({"members": [{"risk": {"300": 0.1}}, "x"]}) == {}


def test_copy_risks_per_store_and_shard():
    d = doc({"store": "shop/orders", "risk": {"300": 0.1},
             "copies": [{"shard": 0, "risk": {"300": 0.8, "900": 0.9}}, {"shard": "1", "risk": {"300": 0.1}},
                        {"shard": 2, "risk": None}]})
    assert plan.copy_risks(d) == {("shop/orders", 0): 0.8}
    # the service names copies <store>#<index>
    d = doc({"store": "shop/orders", "copies": [{"copy": "shop/orders#1", "risk": {"300": 0.6}},
                                                 {"copy": "dr/orders#0", "risk": {"300": 0.6}},
                                                 {"copy": "shop/orders#x", "risk": {"300": 0.6}}]})
    assert plan.copy_risks(d) == {("shop/orders", 1): 0.6}


@pytest.mark.parametrize(("risk", "before", "after"), [
    (None, 3, 0),      # service not reached: start over
    (0.5, 1, 0),       # below
    (0.7, 1, 0),       # equal is not above
    (0.71, 0, 1),
    (0.9, 1, 2),
    (0.9, 5, 6),
])
def test_consecutive_count(risk, before, after):
    assert plan.risk_count(risk, 0.7, before) == after


@pytest.mark.parametrize(("policy", "above", "operation", "due"), [
    ("predictive", 2, False, True),
    ("predictive", 3, False, True),
    ("predictive", 1, False, False),   # one probe is not a trend
    ("predictive", 0, False, False),
    ("predictive", 2, True, False),    # an operation runs
    ("automatic", 5, False, False),    # only predictive acts on a prediction
    ("manual", 5, False, False),
])
def test_switchover_due(policy, above, operation, due):
    assert plan.predictive_switchover_due(policy, above, operation) is due


def test_target_skips_unhealthy_and_members_predicted_to_fail():
    cands = [Candidate(B, True, 100), Candidate(C, True, 90)]
    assert plan.predictive_target(cands, {"dr/orders": 0.2}, 0.7, "zone-a") == B
    assert plan.predictive_target(cands, {"dr/orders": 0.8}, 0.7, "zone-a") == C
    assert plan.predictive_target(cands, {"dr/orders": 0.8, "shop/orders-c": 0.9}, 0.7, "zone-a") is None
    assert plan.predictive_target([Candidate(B, False, 100)], {}, 0.7, "zone-a") is None
