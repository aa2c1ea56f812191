"""Condition helpers."""

from chronoshard.operator.conditions import conditions_equal_ignoring_time, get_condition, set_condition


def test_set_condition_adds_and_updates_and_keeps_time_on_same_status():
    c = set_condition([], "Ready", False, "Starting", "m1", 1, now="t1")
    assert c == [{"type": "Ready", "status": "False", "reason": "Starting", "message": "m1",
                  "lastTransitionTime": "t1", "observedGeneration": 1}]
    c2 = set_condition(c, "Ready", False, "Still", "m2", 2, now="t2")
    assert get_condition(c2, "Ready")["lastTransitionTime"] == "t1"
    assert get_condition(c2, "Ready")["reason"] == "Still"
    c3 = set_condition(c2, "Ready", True, "Up", "m3", 2, now="t3")
    assert get_condition(c3, "Ready")["lastTransitionTime"] == "t3"
    assert set_condition(c3, "Other", "Unknown", "R", "m", None, now="t4")[1]["status"] == "Unknown"


def test_equality_ignores_only_time():
    a = set_condition([], "Ready", True, "R", "m", 1, now="t1")
    b = set_condition([], "Ready", True, "R", "m", 1, now="t9")
    assert conditions_equal_ignoring_time(a, b)
    assert not conditions_equal_ignoring_time(a, set_condition([], "Ready", True, "R", "other", 1, now="t1"))


def test_status_changed_ignores_update_time_and_transition_times_only():
    from chronoshard.operator.conditions import status_changed

    cond = {"type": "Ready", "status": "True", "reason": "Ok", "message": "", "lastTransitionTime": "t1"}
    old = {"phase": "Idle", "lastUpdateTime": "a", "conditions": [cond]}
    assert not status_changed(old, {"phase": "Idle", "lastUpdateTime": "b",
                                    "conditions": [{**cond, "lastTransitionTime": "t2"}]})
    assert status_changed(old, {"phase": "Weaving", "conditions": [cond]})
    assert status_changed(old, {"phase": "Idle", "conditions": [{**cond, "status": "False"}]})
    assert status_changed(old, {"phase": "Idle", "conditions": [cond], "weaves": []})  # a new field is a change
