"""The reversion planner (pure): items per key, counts, the digest over the canonical document."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from chronoshard.shardnode.shadow.reversion import (
    CREATE,
    DELETE,
    RESTORE,
    Digester,
    PlanCounts,
    PlanItem,
    Point,
    canonical_document,
    count,
    digest,
    item_for,
    plan_items,
)
from hypothesis import given
from hypothesis import strategies as st


@dataclass(frozen=True)
class V:
    table: str
    key: str
    lsn: int
    size: int
    value: bytes | None


def v(key: str, lsn: int, value: bytes | None = b"x", table: str = "t") -> V:
    return V(table, key, lsn, len(value or b""), value)


def test_each_action_and_no_op():
    assert item_for(v("a", 5), None) == PlanItem("t", "a", DELETE, 5, 0, 0)
    assert item_for(None, v("a", 3, b"abc")) == PlanItem("t", "a", CREATE, 0, 3, 3)
    assert item_for(v("a", 9, b"new"), v("a", 3, b"old!")) == PlanItem("t", "a", RESTORE, 9, 3, 4)
    assert item_for(v("a", 3), v("a", 3)) is None  # unchanged since the point
    assert item_for(v("a", 9, b"same"), v("a", 3, b"same")) is None  # rewrapped or rewritten identically
    assert item_for(v("a", 9, None), v("a", 3, None)).action == RESTORE  # content unknown: LSNs decide
    assert item_for(None, None) is None


def test_merge_of_two_states_in_key_order_across_tables():
    now = [v("a", 10), v("b", 2), v("d", 11, b"d2"), v("a", 12, table="u")]
    then = [v("b", 2), v("c", 4, b"cc"), v("d", 5, b"d1"), v("z", 6, table="u")]
    items = list(plan_items(now, then))
    assert [(i.table, i.key, i.action) for i in items] == [
        ("t", "a", DELETE), ("t", "c", CREATE), ("t", "d", RESTORE), ("u", "a", DELETE), ("u", "z", CREATE)]
    assert count(items) == PlanCounts(restore=1, create=2, delete=2, bytes=2 + 2 + 1)
    assert count(items).total == 5


def test_digest_is_sha256_of_the_canonical_document():
    items = [PlanItem("t", "ünï", RESTORE, 9, 3, 4), PlanItem("t", "b", DELETE, 5, 0, 0)]
    point = Point(3, 1700000000.25)
    doc = canonical_document(items, point)
    assert json.loads(doc) == {"items": [["t", "ünï", "restore", 9, 3], ["t", "b", "delete", 5, 0]],
                               "point": {"lsn": 3, "time": 1700000000.25}}
    assert b" " not in doc and "ünï".encode() in doc  # compact, UTF-8, not escaped
    assert digest(items, point) == hashlib.sha256(doc).hexdigest()
    assert digest([], Point(1, None)) == hashlib.sha256(b'{"items":[],"point":{"lsn":1,"time":null}}').hexdigest()


def test_digest_changes_with_any_item_field_the_order_or_the_point():
    base = [PlanItem("t", "a", RESTORE, 9, 3, 4), PlanItem("t", "b", CREATE, 0, 4, 1)]
    d0 = digest(base, Point(3, None))
    variants = [
        [PlanItem("t", "a", RESTORE, 8, 3, 4), base[1]],  # expected LSN
        [PlanItem("t", "a", RESTORE, 9, 2, 4), base[1]],  # target LSN
        [PlanItem("t", "a", DELETE, 9, 0, 0), base[1]],
        list(reversed(base)),
        base[:1],
    ]
    assert all(digest(items, Point(3, None)) != d0 for items in variants)
    assert digest(base, Point(4, None)) != d0 and digest(base, Point(3, 1.0)) != d0
    # the size is not part of what is approved: it follows from the target version
    assert digest([PlanItem("t", "a", RESTORE, 9, 3, 99), base[1]], Point(3, None)) == d0


keys = st.text(alphabet="abcdef", min_size=1, max_size=3)
states = st.dictionaries(keys, st.tuples(st.integers(1, 50), st.sampled_from([b"x", b"y", None])), max_size=20)


@given(states, states)
def test_applying_the_plan_to_now_gives_the_point(now_d, then_d):
    now = [v(k, lsn, val) for k, (lsn, val) in sorted(now_d.items())]
    then = [v(k, lsn, val) for k, (lsn, val) in sorted(then_d.items())]
    items = list(plan_items(now, then))
    state = {x.key: x for x in now}
    for item in items:
        assert item.expected_lsn == (state[item.key].lsn if item.key in state else 0)
        if item.action == DELETE:
            del state[item.key]
        else:
            state[item.key] = next(x for x in then if x.key == item.key)
    by_then = {x.key: x for x in then}
    assert set(state) == set(by_then)
    for key, x in state.items():
        assert x.lsn == by_then[key].lsn or (x.value is not None and x.value == by_then[key].value)
    digester = Digester()
    for item in items:
        digester.add(item)
    assert digester.hexdigest(Point(1, None)) == hashlib.sha256(canonical_document(items, Point(1, None))).hexdigest()
