"""The shadow's detection over a real anomaly store: windows closed as they complete, an incident opened by an
encrypting overwrite and closed by the next quiet window, its keys exactly the attacked ones, the model stored and
found again after a restart, a corrupt model replaced by the rules with one log line, the what-if."""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from chronoshard.shardnode.anomaly.detector import MIN_WINDOWS
from chronoshard.shardnode.anomaly.profile import byte_profile
from chronoshard.shardnode.anomaly.types import ChangeObservation
from chronoshard.shardnode.shadow.anomalystore import AnomalyStore
from chronoshard.shardnode.shadow.config import AnomalySettings
from chronoshard.shardnode.shadow.detection import GRACE_SECONDS, MAX_INCIDENT_WINDOWS, Detection, ProposedChange
from chronoshard.shardnode.shadow.observations import PrevVersion

INTERVAL = 60.0
T0 = 1_700_000_040.0  # a window boundary


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Feed:
    """Writes to table "t" as the history would report them, with each key's last value remembered."""

    def __init__(self, det: Detection, clock: Clock, seed: int = 7) -> None:
        self.det, self.clock = det, clock
        self.window = T0  # the start of the window being written
        self.rng = random.Random(seed)
        self.values: dict[str, tuple[int, bytes]] = {}
        self.lsn = 0

    def text(self) -> bytes:
        words = ["order", "paid", "shipped", "customer", "amount", "sku", "note", "ok"]
        return json.dumps({w: self.rng.choice(words) for w in self.rng.sample(words, 5)}).encode() * 3

    def put(self, key: str, value: bytes, identity: str | None, at: float) -> ChangeObservation:
        self.lsn += 1
        prev = self.values.get(key)
        o = ChangeObservation(
            lsn=self.lsn, time=at, table="t", key=key, op="put", size=len(value),
            prev_size=len(prev[1]) if prev else None, existed=prev is not None, identity=identity,
            profile=byte_profile(value), prev_profile=byte_profile(prev[1]) if prev else None,
            prev_lsn=prev[0] if prev else None)
        self.values[key] = (self.lsn, value)
        return o

    def current(self, table: str, key: str) -> PrevVersion | None:
        """The key's current version, as the server answers the what-if from the history."""
        known = self.values.get(key)
        return None if known is None else PrevVersion(known[0], "put", len(known[1]), byte_profile(known[1]))

    def close(self) -> list[dict[str, object]]:
        """End the window: the clock moves past its end and its grace, and it is closed."""
        self.window += INTERVAL
        self.clock.now = self.window + GRACE_SECONDS + 0.5
        return self.det.close_due(True, self.lsn)

    def quiet_window(self, keys: int = 20) -> list[ChangeObservation]:
        obs = [self.put(f"k{self.rng.randrange(200):03}", self.text(), "app", self.window + i * INTERVAL / (keys + 1))
               for i in range(keys)]
        self.det.observe(obs)
        self.close()
        return obs


def settings() -> AnomalySettings:
    return AnomalySettings(interval_seconds=INTERVAL, training_window_seconds=7 * 86400.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AnomalyStore]:
    s = AnomalyStore(tmp_path / "shadow.sqlite3")
    yield s
    s.close()


def seed_keys(feed: Feed) -> None:
    """Every key of the table exists before the tests overwrite them."""
    feed.det.observe([feed.put(f"k{i:03}", feed.text(), "app", feed.window + i * 0.1) for i in range(200)])
    feed.close()


def test_an_encrypting_overwrite_opens_an_incident_naming_exactly_its_keys_and_a_quiet_window_closes_it(
        store: AnomalyStore) -> None:
    clock = Clock()
    det = Detection(store, settings, clock=clock)
    feed = Feed(det, clock)
    seed_keys(feed)
    for _ in range(5):
        feed.quiet_window()
    assert store.incidents() == []

    start = feed.window
    attacked = [f"k{i:03}" for i in range(100, 150)]
    legit = [feed.put(f"k{i:03}", feed.text(), "app", start + 1 + i * 0.01) for i in range(10)]
    bad = [feed.put(k, os.urandom(300), "intruder", start + 5 + i * 0.5) for i, k in enumerate(attacked)]
    known_good = bad[0].lsn - 1
    det.observe(sorted(legit + bad, key=lambda o: o.lsn))
    opened = feed.close()

    assert len(opened) == 1
    inc = opened[0]
    assert inc["state"] == "open" and inc["table"] == "t" and inc["identities"] == ["intruder"]
    assert inc["keys"] == len(attacked) and inc["score"] >= 0.8
    assert inc["knownGoodLsn"] <= known_good and inc["firstLsn"] == bad[0].lsn
    keys = store.incident_keys(inc["id"], None, 1000)
    assert sorted(k.key for k in keys) == attacked
    assert all(k.before_lsn is not None and k.before_lsn < k.first_lsn for k in keys)

    feed.quiet_window()
    assert [i["state"] for i in store.incidents()] == ["closed"]
    windows = store.windows("t")
    assert [w.incident for w in windows].count(inc["id"]) == 1  # only the anomalous window names it
    assert det.describe()["detector"]["tables"]["t"]["lastScore"] < 0.8


def test_the_model_is_trained_stored_and_found_again_after_a_restart(store: AnomalyStore) -> None:
    clock = Clock()
    det = Detection(store, settings, clock=clock)
    feed = Feed(det, clock)
    seed_keys(feed)
    for _ in range(MIN_WINDOWS + 2):
        feed.quiet_window()
    assert det.retrain() == ["t"]
    assert det.describe()["detector"]["state"] == "trained"

    again = Detection(store, settings, clock=clock, current=feed.current)
    det.current = feed.current
    state = again.describe()["detector"]
    assert state["state"] == "trained" and state["tables"]["t"]["trainedWindows"] >= MIN_WINDOWS
    # The restarted detector scores a batch exactly as the one before it did.
    batch = [ProposedChange("put", f"k{i:03}", os.urandom(300)) for i in range(30)]
    before, after = det.what_if("t", batch, "app"), again.what_if("t", batch, "app")
    assert after["detector"] == before["detector"] != "rules"
    assert after["score"] == pytest.approx(before["score"])


def test_a_corrupt_model_falls_back_to_the_rules_with_one_log_line(store: AnomalyStore, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    det = Detection(store, settings, clock=clock)
    feed = Feed(det, clock)
    seed_keys(feed)
    for _ in range(MIN_WINDOWS + 2):
        feed.quiet_window()
    det.retrain()
    with sqlite3.connect(tmp_path / "shadow.sqlite3") as conn:
        conn.execute("UPDATE anomaly_models SET state = replace(state, '1', '2')")
    caplog.set_level(logging.ERROR, "chronoshard.shardnode.shadow.detection")
    again = Detection(store, settings, clock=clock, current=feed.current)
    state = again.describe()["detector"]
    assert state["state"] == "fallback" and "unusable" in state["reason"]
    assert len([r for r in caplog.records if "unusable" in r.getMessage()]) == 1
    # The rules still catch an encrypting overwrite.
    result = again.what_if("t", [ProposedChange("put", f"k{i:03}", os.urandom(300)) for i in range(50)], "x")
    assert result["detector"] == "rules" and result["wouldAlarm"]


def test_what_if_counts_the_batch_and_scores_it_without_changing_anything(store: AnomalyStore) -> None:
    clock = Clock()
    current = {"a": PrevVersion(3, "put", 10, byte_profile(b"0123456789"))}
    det = Detection(store, settings, clock=clock, current=lambda table, key: current.get(key))
    calm = det.what_if("t", [ProposedChange("put", "a", b"0123456789"), ProposedChange("put", "b", b"hello"),
                             ProposedChange("delete", "zz", None)], "app")
    assert calm["counts"] == {"create": 1, "overwrite": 0, "delete": 0, "unchanged": 2}
    assert calm["bytes"] == 5 and not calm["wouldAlarm"]
    current.update({f"k{i}": PrevVersion(i, "put", 200, byte_profile(b"plain text " * 20)) for i in range(100)})
    wiped = det.what_if("t", [ProposedChange("delete", f"k{i}", None) for i in range(100)] +
                        [ProposedChange("put", "a", os.urandom(64))], "app")
    assert wiped["counts"]["delete"] == 100 and wiped["counts"]["overwrite"] == 1
    assert wiped["bytes"] == 100 * 200 + 64
    assert store.windows("t") == [] and store.incidents() == []


def test_an_incident_open_for_too_many_windows_is_closed_and_a_new_one_begins(store: AnomalyStore) -> None:
    clock = Clock()
    det = Detection(store, settings, clock=clock)
    feed = Feed(det, clock)
    seed_keys(feed)
    feed.quiet_window()
    for _ in range(MAX_INCIDENT_WINDOWS + 1):
        det.observe([feed.put(f"k{i:03}", os.urandom(300), "intruder", feed.window + 1 + i * 0.1)
                     for i in range(20)])
        feed.close()
    incidents = store.incidents()
    assert [i["state"] for i in incidents] == ["open", "closed"]  # newest first
    first = incidents[1]
    assert sum(1 for w in store.windows("t") if w.incident == first["id"]) == MAX_INCIDENT_WINDOWS


def test_each_identitys_usual_share_is_learned_and_kept_across_a_restart(store: AnomalyStore) -> None:
    clock = Clock()
    det = Detection(store, settings, clock=clock)
    feed = Feed(det, clock)
    seed_keys(feed)

    def window(cron_keys: int, detector: Detection) -> float:
        obs = [feed.put(f"k{feed.rng.randrange(200):03}", feed.text(), "app", feed.window + i * 0.5)
               for i in range(19)]
        obs += [feed.put(f"k{i:03}", feed.text(), "cron", feed.window + 30 + i * 0.01) for i in range(cron_keys)]
        detector.observe(sorted(obs, key=lambda o: o.lsn))
        feed.det = detector
        feed.close()
        return store.windows("t")[-1].features["identity_surprise"]

    usual = max(window(1, det) for _ in range(10))  # cron's usual: one key in twenty
    surprise = window(120, det)  # cron touching most of a window's keys
    assert surprise > 5 * max(usual, 0.5), (usual, surprise)
    det.retrain()  # stores the context with the shares
    again = Detection(store, settings, clock=clock)
    assert window(120, again) > 5 * max(usual, 0.5)


def test_a_restart_replays_the_changes_of_the_window_it_had_not_closed(store: AnomalyStore) -> None:
    clock = Clock()
    det = Detection(store, settings, clock=clock)
    feed = Feed(det, clock)
    seed_keys(feed)
    feed.quiet_window()
    closed_lsn = feed.lsn
    # An encrypting overwrite lands, then the process dies before its window closes.
    bad = [feed.put(f"k{i:03}", os.urandom(300), "intruder", feed.window + 1 + i * 0.1) for i in range(40)]
    det.observe(bad)
    stored = {o.lsn: o for o in bad}

    def observations_after(after: int, limit: int) -> list[ChangeObservation]:
        return [stored[lsn] for lsn in sorted(stored) if lsn > after][:limit]

    again = Detection(store, settings, clock=clock)
    assert again.replay(observations_after) == len(bad)
    assert min(o.lsn for o in bad) > closed_lsn
    feed.det = again
    opened = feed.close()
    assert len(opened) == 1 and opened[0]["keys"] == len(bad)


def test_the_stored_progress_never_skips_changes_of_a_window_still_open(store: AnomalyStore) -> None:
    clock = Clock()
    det = Detection(store, settings, clock=clock)
    feed = Feed(det, clock)
    seed_keys(feed)
    feed.quiet_window()
    # Changes of the next window are applied (the capture's position is past them) before the last one closes.
    early = [feed.put(f"k{i:03}", os.urandom(300), "intruder", feed.window + INTERVAL + 1 + i * 0.1)
             for i in range(30)]
    det.observe(early)
    feed.close()  # closes the current (empty) window; the early changes' window is still open
    (closed_through, lsn), = store.progress().values()
    assert lsn < min(o.lsn for o in early), "a restart would not replay the open window's changes"
    assert closed_through <= early[0].time
