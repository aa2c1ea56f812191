"""A reshard's changes in the history (docs/resharding.md, "Shadows"), on a real SQLite history file: a block moved in
(node origin ``move_in``) is a version with origin ``move``, a purge (origin ``purge``) records the key moved away
(absent here, not deleted; its earlier history stays queryable), neither is a client change to the anomaly
detection, and a file made before gains the column."""

from __future__ import annotations

import dataclasses
import sqlite3

from chronoshard.shardnode.anomaly.features import is_client
from chronoshard.shardnode.anomaly.types import CLIENT, MOVE, ChangeObservation
from chronoshard.shardnode.serving.changestream import StreamChange
from chronoshard.shardnode.shadow.timetravel import MOVED_AWAY, MOVED_IN

from tests.support.shadow_history import delete, open_history, put, ring

R = ring(1, (1,))


def origin(change: StreamChange, value: str) -> StreamChange:
    """The change as a node that logs origins sends it."""
    return dataclasses.replace(change, origin=value)


def test_moved_in_is_a_version_with_origin_move_and_not_a_client_change(tmp_path):
    h, _ = open_history(tmp_path)
    seen: list[ChangeObservation] = []
    h.add_observer(seen.extend)
    h.apply([origin(put(R, 1, 10.0, "t", "a", b"moved value"), "move_in"), put(R, 2, 11.0, "t", "b", b"client")])
    (a,) = h.history("t", "a")
    assert (a.op, a.origin) == ("put", MOVED_IN)
    assert h.value_at("t", "a").value == b"moved value"
    assert h.history("t", "b")[0].origin is None
    assert [(o.key, o.origin) for o in seen] == [("a", MOVE), ("b", CLIENT)]
    assert [is_client(o) for o in seen] == [False, True]
    (entry,) = [e for e in h.diff("t", from_lsn=0, to_lsn=1)]
    assert (entry.key, entry.change) == ("a", "moved_in")


def test_purge_records_moved_away_and_keeps_the_history(tmp_path):
    h, _ = open_history(tmp_path)
    seen: list[ChangeObservation] = []
    h.add_observer(seen.extend)
    h.apply([put(R, 1, 10.0, "t", "a", b"v1"), put(R, 2, 11.0, "t", "a", b"v2"), put(R, 3, 12.0, "t", "b", b"w")])
    h.apply([origin(delete(4, 13.0, "t", "a"), "purge"), delete(5, 14.0, "t", "b")])
    v1, v2, gone = h.history("t", "a")
    assert [v1.value, v2.value] == [b"v1", b"v2"]  # the history before the move stays here
    assert (gone.op, gone.origin, gone.moved_away) == ("delete", MOVED_AWAY, True)
    assert h.value_at("t", "a", lsn=3).value == b"v2"
    assert h.value_at("t", "a") is None and h.moved_away_at("t", "a") == 4  # absent here, moved away at 4
    assert h.moved_away_at("t", "a", lsn=3) is None and h.moved_away_at("t", "b") is None
    deleted = h.history("t", "b")[-1]
    assert (deleted.origin, deleted.moved_away) == (None, False)
    changes = {e.key: e.change for e in h.diff("t", from_lsn=3, to_lsn=5)}
    assert changes == {"a": "moved_away", "b": "deleted"}
    assert [(o.key, o.origin, is_client(o)) for o in seen[-2:]] == [("a", MOVE, False), ("b", CLIENT, True)]
    # What a restarted detector replays says the same.
    replayed = h.observations_after(3, 10)
    assert [(o.key, o.origin) for o in replayed] == [("a", MOVE), ("b", CLIENT)]


def test_a_history_file_from_before_gains_the_origin_column(tmp_path):
    h, _ = open_history(tmp_path)
    h.apply([put(R, 1, 10.0, "t", "a", b"v")])
    path = tmp_path / "shadow.sqlite3"
    h.close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE frames DROP COLUMN origin")
    conn.commit()
    conn.close()
    h, _ = open_history(tmp_path)
    assert "origin" in {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(frames)")}
    assert h.history("t", "a")[0].origin is None
    h.apply([origin(delete(2, 11.0, "t", "a"), "purge")])
    assert h.history("t", "a")[-1].moved_away
