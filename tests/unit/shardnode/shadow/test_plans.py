"""Plans and their progress on a real SQLite file: whole plans, in-flight marks that survive a crash, conflict
marks from the capture."""

from __future__ import annotations

import sqlite3

import pytest
from chronoshard.shardnode.shadow.plans import Outcome, PlanStore
from chronoshard.shardnode.shadow.reversion import CREATE, DELETE, RESTORE, PlanCounts, PlanItem, Point, count

ITEMS = [PlanItem("t", "a", RESTORE, 9, 3, 4), PlanItem("t", "b", CREATE, 0, 4, 2),
         PlanItem("t", "c", DELETE, 7, 0, 0)]


def make(store: PlanStore, name: str = "p", plan_lsn: int = 10) -> None:
    store.create(name, {"name": name}, "d" * 64, plan_lsn, Point(3, 1.5), count(ITEMS), ITEMS)


def test_a_plan_is_stored_whole(tmp_path):
    store = PlanStore(tmp_path / "shadow.sqlite3")
    make(store)
    plan = store.get("p")
    assert plan is not None and (plan.phase, plan.plan_lsn, plan.point) == ("planned", 10, Point(3, 1.5))
    assert plan.counts == PlanCounts(restore=1, create=1, delete=1, bytes=6)
    assert store.items("p") == ITEMS and store.items("p", after=0, limit=1) == ITEMS[1:2]
    def broken():
        yield ITEMS[0]
        raise RuntimeError("the history read failed half way")

    with pytest.raises(RuntimeError):
        store.create("q", {}, "x", 1, Point(1, None), count(ITEMS), broken())
    with pytest.raises(sqlite3.IntegrityError):
        make(store)  # the name is taken
    assert store.get("q") is None  # nothing of a failed plan is left
    assert store.delete("p") and store.get("p") is None and store.items("p") == []
    assert not store.delete("p")


def test_in_flight_items_are_recognisable_after_a_crash(tmp_path):
    path = tmp_path / "shadow.sqlite3"
    store = PlanStore(path)
    make(store)
    store.set_phase("p", "running")
    batch, cursor = store.next_batch("p", 2)
    assert cursor == 0 and [(seq, resumed) for seq, _, resumed in batch] == [(0, False), (1, False)]
    store.close()  # the process dies after sending, before recording the outcomes
    store = PlanStore(path)
    assert store.any_active
    batch, _ = store.next_batch("p", 2)
    assert [(seq, resumed) for seq, _, resumed in batch] == [(0, True), (1, True)]
    store.finish_batch("p", [Outcome(0, "done", 11), Outcome(1, "conflict")])
    batch, cursor = store.next_batch("p", 2)
    assert cursor == 2 and [(seq, resumed) for seq, _, resumed in batch] == [(2, False)]
    store.finish_batch("p", [Outcome(2, "missing", error="gone")])
    plan = store.get("p")
    assert plan is not None and (plan.done, plan.skipped, plan.conflicts, plan.last_error) == (1, 2, 1, "gone")
    assert store.next_batch("p", 2)[0] == []
    store.set_phase("p", "completed")
    assert not store.any_active and store.get("p").finished is not None  # type: ignore[union-attr]


def test_later_writes_count_pending_items_of_plans_made_before_them_but_not_our_own(tmp_path):
    store = PlanStore(tmp_path / "shadow.sqlite3")
    make(store, "p", plan_lsn=10)
    make(store, "late", plan_lsn=50)
    store.note_writes([("t", "a", 12), ("t", "b", 13), ("t", "zz", 14)])
    assert store.later_writes("p") == 2 and store.later_writes("late") == 0  # "late" was planned after them
    # The run writes a at LSN 12's successor: its own write, seen by the capture first, is no conflict.
    store.note_writes([("t", "c", 20)])
    assert store.later_writes("p") == 3
    store.next_batch("p", 3)
    store.finish_batch("p", [Outcome(0, "conflict"), Outcome(1, "conflict"), Outcome(2, "done", 20)])
    assert store.later_writes("p") == 0  # carried out: counted in the run's conflicts instead
    assert store.get("p").conflicts == 2  # type: ignore[union-attr]
    store.set_phase("p", "completed")
    store.set_phase("late", "completed")
    store.note_writes([("t", "a", 99)])  # no active plan: nothing to mark
    assert store.later_writes("late") == 0
