"""Anomaly detection in the shadow: the captured changes of each table, window by window, scored as they arrive;
incidents with their impact; the model trained in the background on the table's own windows (docs/anomalies.md).

The history store hands every applied batch's observations to ``observe`` (the applying thread). ``close_due``
(a worker thread, every second or so) closes each window no change can still reach (windows.py): its features
are computed, scored by the table's model (or by the rules until the model is trained, or if it is corrupt), and
stored with the capture position. A window at or above the threshold opens an incident, or extends the open one;
the impact analysis runs again over the incident's changes each time, and the first window under the threshold
closes it. ``retrain`` fits each table's model again on its stored windows and stores it (it survives restarts).

Memory: the changes of the windows not yet closed, of the table's last ``MARGIN_WINDOWS`` windows and of an open
incident; each bounded (``MAX_PENDING``, ``MAX_INCIDENT_CHANGES``): past the bound an incident's impact is marked
``truncated`` (its keys are a subset) rather than the process growing without end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chronoshard.shardnode.anomaly import features
from chronoshard.shardnode.anomaly.detector import (
    SUSTAIN_WINDOWS,
    Detector,
    WindowDetector,
    fit_detector,
    load_detector,
)
from chronoshard.shardnode.anomaly.impact import analyse
from chronoshard.shardnode.anomaly.profile import byte_profile
from chronoshard.shardnode.anomaly.rules import RuleDetector
from chronoshard.shardnode.anomaly.types import ChangeObservation, Driver, Incident, Score, WindowFeatures
from chronoshard.shardnode.anomaly.whatif import what_if

from .anomalystore import MIN_WINDOW_RETENTION_SECONDS, AnomalyStore, StoredWindow
from .config import AnomalySettings
from .observations import PrevVersion, observation
from .windows import due_windows, watermark, window_start

log = logging.getLogger(__name__)

GRACE_SECONDS = 2.0  # how late a change of a window may reach the shadow after the window ended
# Windows before an incident whose changes the impact analysis looks at: a slow drip's first bad changes lie up to
# the detector's sustained-count span before its alarm. Bounded in changes too (MAX_MARGIN_CHANGES).
MARGIN_WINDOWS = SUSTAIN_WINDOWS + 5
MAX_MARGIN_CHANGES = 200_000
MAX_IDENTITIES = 1000  # identities whose usual share of a table's changes is kept (the most active)
MAX_PENDING = 500_000  # changes held per table for windows not closed yet
MAX_INCIDENT_CHANGES = 2_000_000
RETRAIN_EVERY_WINDOWS = 30
# An incident still open after this many windows is closed (and reported, so it can be reverted) and a new one
# begins if the next window is anomalous too: a false alarm on a new kind of traffic cannot hold one open forever.
MAX_INCIDENT_WINDOWS = 60


@dataclass(frozen=True)
class ProposedChange:
    """One change of a what-if batch: ``op`` put or delete, the key, the value of a put."""

    op: str
    key: str
    value: bytes | None


@dataclass
class _OpenIncident:
    first_window: float
    windows: list[tuple[WindowFeatures, Score]] = field(default_factory=list)
    changes: list[ChangeObservation] = field(default_factory=list)
    detected: float = 0.0
    truncated: bool = False
    id: str | None = None


@dataclass
class _Table:
    closed_through: float
    pending: dict[float, list[ChangeObservation]] = field(default_factory=dict)
    pending_count: int = 0
    dropped: int = 0  # changes past MAX_PENDING (not scored)
    late: int = 0  # changes whose window had closed (not scored)
    recent: deque[tuple[float, list[ChangeObservation]]] = field(default_factory=lambda: deque(maxlen=MARGIN_WINDOWS))
    recent_count: int = 0
    # The features of the last closed windows: a detector scores sustained counts over them (a slow drip).
    history: deque[WindowFeatures] = field(default_factory=lambda: deque(maxlen=SUSTAIN_WINDOWS))
    incident: _OpenIncident | None = None
    model: Detector = field(default_factory=RuleDetector)  # the rules until a model is fit
    state: str = "training"  # training (the rules, too few windows) | trained | fallback (the model is corrupt)
    reason: str | None = None
    trained_at: float | None = None
    trained_windows: int = 0
    since_training: int = 0
    last_score: float | None = None
    identities: set[str | None] = field(default_factory=set)
    sizes: list[int] = field(default_factory=lambda: [0] * features.SIZE_BINS)
    by_identity: Counter[str | None] = field(default_factory=Counter)  # overwrites and deletes of live values


class Detection:
    """The detection of one shadow process (thread-safe: one lock around the per-table state)."""

    def __init__(self, store: AnomalyStore, settings: Callable[[], AnomalySettings], *,
                 current: Callable[[str, str], PrevVersion | None] | None = None,
                 table_keys: Callable[[str], int] = lambda table: 0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.settings, self.clock = store, settings, clock
        # The key's current version, for the what-if (None: absent); given by the server over the history.
        self.current = current
        self.table_keys = table_keys  # the table's keys, for an incident's severity (0: unknown)
        self._lock = threading.Lock()
        self._tables: dict[str, _Table] = {}
        self._newest_time: float | None = None
        # Tables seen before a restart go on from the window after their last closed one.
        self._replay_from: int | None = None
        for table, (closed_through, lsn) in store.progress().items():
            t = self._tables[table] = _Table(closed_through=closed_through)
            t.history.extend(_window_features(table, w) for w in store.windows(table, limit=SUSTAIN_WINDOWS))
            self._load_model(table, t)
            self._replay_from = lsn if self._replay_from is None else min(self._replay_from, lsn)

    def replay(self, stored: Callable[[int, int], Sequence[ChangeObservation]]) -> int:
        """After a restart: observe again the stored changes of the windows not closed before it (``stored(after
        LSN, limit)``, the history's ``observations_after``); returns how many."""
        if self._replay_from is None:
            return 0
        batch = stored(self._replay_from, MAX_PENDING)
        self.observe(batch)
        return len(batch)

    # ---- feeding -------------------------------------------------------------------------------------
    def observe(self, batch: Sequence[ChangeObservation]) -> None:
        """Take the observations of one applied batch (LSN order)."""
        interval = self.settings().interval_seconds
        with self._lock:
            for o in batch:
                t = self._table(o.table, o.time)
                start = window_start(o.time, interval)
                if start < t.closed_through:
                    t.late += 1  # its window is closed (a replayed change, or a node clock step): not scored
                    continue
                if t.pending_count >= MAX_PENDING:
                    t.dropped += 1
                    continue
                t.pending.setdefault(start, []).append(o)
                t.pending_count += 1
                if self._newest_time is None or o.time > self._newest_time:
                    self._newest_time = o.time

    def _table(self, table: str, first_time: float) -> _Table:
        t = self._tables.get(table)
        if t is None:
            t = self._tables[table] = _Table(closed_through=window_start(first_time, self.settings().interval_seconds))
        return t

    # ---- models ---------------------------------------------------------------------------------------
    def _load_model(self, table: str, t: _Table) -> None:
        stored = self.store.load_model(table)
        if stored is None:
            return
        state = stored.state or {}
        try:
            if not stored.intact or not isinstance(state.get("context"), dict):
                raise ValueError("its checksum does not match")
            t.identities, t.sizes, t.by_identity = _context_from_state(state["context"])
        except ValueError as exc:
            self._fallback(table, t, str(exc))
            return
        if state.get("detector") is None:  # stored while the rules still decided: nothing more to load
            t.model = RuleDetector.fit(self._training(table))
            return
        model, problem = load_detector(state["detector"], self._training(table))
        if problem is not None:
            self._fallback(table, t, problem)
            t.model = model
            return
        t.model, t.state, t.trained_at, t.trained_windows = model, "trained", stored.trained_at, stored.windows

    def _fallback(self, table: str, t: _Table, problem: str) -> None:
        """The one log line of a corrupt model; the rules score until the next retraining replaces it."""
        t.model, t.state = RuleDetector.fit(self._training(table)), "fallback"
        t.reason = f"the stored model of table {table} is unusable ({problem}); the rules score until it is retrained"
        log.error("anomaly: %s", t.reason)

    def _training(self, table: str) -> list[WindowFeatures]:
        """The table's stored quiet windows within the training window, oldest first."""
        since = self.clock() - self.settings().training_window_seconds
        return [_window_features(table, w) for w in self.store.windows(table, since, None, 100_000)
                if w.incident is None]

    def retrain(self) -> list[str]:
        """Fit each table's model on its stored windows within the training window and store it; the tables done."""
        settings = self.settings()
        now = self.clock()
        done = []
        with self._lock:
            due = [(name, t) for name, t in self._tables.items()
                   if t.since_training >= RETRAIN_EVERY_WINDOWS or (t.state != "trained" and t.since_training > 0)]
        for name, t in due:
            clean = self._training(name)
            fitted = fit_detector(clean, settings.model)
            trained = isinstance(fitted, WindowDetector)
            with self._lock:
                t.since_training = 0
                t.model = fitted
                if trained:
                    t.state, t.reason, t.trained_at, t.trained_windows = "trained", None, now, len(clean)
                context = _context_state(t)
            self.store.save_model(name, {"detector": fitted.to_state() if isinstance(fitted, WindowDetector)
                                         else None, "context": context}, now, len(clean))
            done.append(name)
        self.store.trim_windows(now - max(settings.training_window_seconds, MIN_WINDOW_RETENTION_SECONDS))
        return done

    def describe(self) -> dict[str, Any]:
        """The detector's state for ``GET /v1/anomalies``: overall (the worst table's) and per table."""
        s = self.settings()
        with self._lock:
            tables = {name: {"state": t.state, "trainedAt": t.trained_at, "trainedWindows": t.trained_windows,
                             "reason": t.reason, "closedThrough": t.closed_through, "droppedChanges": t.dropped,
                             "lateChanges": t.late,
                             "lastScore": t.last_score}
                      for name, t in sorted(self._tables.items())}
            states = [t.state for t in self._tables.values()]
            trained_at = [t.trained_at for t in self._tables.values() if t.trained_at is not None]
            windows = [t.trained_windows for t in self._tables.values()]
            reasons = [t.reason for t in self._tables.values() if t.reason]
        worst = next((w for w in ("fallback", "training") if w in states), "trained" if states else "training")
        return {"detector": {"model": s.model, "state": worst, "trainedWindows": min(windows, default=0),
                             "trainedAt": min(trained_at, default=None), "reason": reasons[0] if reasons else None,
                             "tables": tables},
                "intervalSeconds": s.interval_seconds, "threshold": s.threshold,
                "severityThreshold": s.severity_threshold}

    # ---- closing windows ------------------------------------------------------------------------------
    def close_due(self, caught_up: bool, lsn: int) -> list[dict[str, Any]]:
        """Close every complete window of every table; returns the incidents opened, extended or closed (JSON)."""
        settings = self.settings()
        now = self.clock()
        events: list[dict[str, Any]] = []
        stored: list[StoredWindow] = []
        progress: dict[str, tuple[float, int]] = {}
        with self._lock:
            mark = watermark(now, caught_up, self._newest_time, GRACE_SECONDS)
            for name, t in self._tables.items():
                starts = due_windows(t.closed_through, mark, settings.interval_seconds)
                for start in starts:
                    changes = t.pending.pop(start, [])
                    t.pending_count -= len(changes)
                    row, event = self._close(name, t, start, start + settings.interval_seconds, changes, settings,
                                             now)
                    stored.append(row)
                    if event is not None:
                        events.append(event)
                if starts:
                    t.closed_through = starts[-1] + settings.interval_seconds
                    # Replayed from after a restart: everything after it that is not in a closed window. Changes
                    # of windows still open may lie below the capture's position (it runs ahead of the clock).
                    held = [o.lsn for changes in t.pending.values() for o in changes]
                    progress[name] = (t.closed_through, min(lsn, min(held) - 1) if held else lsn)
        if stored:
            self.store.add_windows(stored, progress)
        for event in events:
            self.store.put_incident(event["body"], event["keys"], now)
        return [e["body"] for e in events]

    def _close(self, table: str, t: _Table, start: float, end: float, changes: list[ChangeObservation],
               settings: AnomalySettings, now: float) -> tuple[StoredWindow, dict[str, Any] | None]:
        ctx = _context(t)
        wf = features.window_features(table, start, end, changes, ctx)
        sc = t.model.score(wf, list(t.history))
        t.history.append(wf)
        t.last_score = sc.score
        anomalous = sc.score >= settings.threshold
        event = None
        if anomalous:
            inc = t.incident
            if inc is None:
                inc = t.incident = _OpenIncident(first_window=start, detected=now)
                for _, margin in t.recent:
                    inc.changes.extend(margin)
            inc.windows.append((wf, sc))
            room = MAX_INCIDENT_CHANGES - len(inc.changes)
            inc.changes.extend(changes[:max(0, room)])
            inc.truncated = inc.truncated or room < len(changes)
            full = len(inc.windows) >= MAX_INCIDENT_WINDOWS
            event = self._impact(table, inc, "closed" if full else "open", settings, ctx)
            if full:
                t.incident = None
        else:
            if t.incident is not None:
                event = self._impact(table, t.incident, "closed", settings, ctx)
                t.incident = None
            self._learn(t, changes)
        if len(t.recent) == t.recent.maxlen:
            t.recent_count -= len(t.recent[0][1])
        t.recent.append((start, changes))
        t.recent_count += len(changes)
        while t.recent_count > MAX_MARGIN_CHANGES and len(t.recent) > 1:
            t.recent_count -= len(t.recent.popleft()[1])
        t.since_training += 1
        incident_id = event["body"]["id"] if event is not None and anomalous else None
        return StoredWindow(table, start, end, wf.as_dict(), sc.score, sc.detector, _drivers_json(sc.drivers),
                            incident_id), event

    def _learn(self, t: _Table, changes: list[ChangeObservation]) -> None:
        """What a quiet window teaches the features' context: its identities and overwrite sizes."""
        for o in changes:
            if not features.is_client(o):
                continue
            t.identities.add(o.identity)
            if o.op == "put" and o.existed:
                t.sizes[features.size_bin(o.size)] += 1
            if o.existed and o.op in ("put", "delete"):
                t.by_identity[o.identity] += 1
        if len(t.by_identity) > MAX_IDENTITIES:
            t.by_identity = Counter(dict(t.by_identity.most_common(MAX_IDENTITIES)))

    def _impact(self, table: str, inc: _OpenIncident, state: str, settings: AnomalySettings,
                ctx: features.FeatureContext) -> dict[str, Any] | None:
        try:
            result = analyse(table, inc.windows, inc.changes, ctx, table_keys=self.table_keys(table))
        except ValueError:  # no client change in the windows (an empty window can score high: quiet is unusual)
            return None
        inc.id = inc.id or result.id
        return {"body": incident_json(result, inc.id, state, inc.detected, inc.truncated,
                                      settings.severity_threshold),
                "keys": result.keys}

    # ---- what-if --------------------------------------------------------------------------------------
    def what_if(self, table: str, proposed: Sequence[ProposedChange], identity: str | None) -> dict[str, Any]:
        """What ``proposed`` would change in ``table`` and the score and severity it would get, now (blocking)."""
        settings = self.settings()
        now = self.clock()
        obs = []
        for i, c in enumerate(proposed):
            prev = self.current(table, c.key) if self.current is not None else None
            value = c.value or b""
            obs.append(observation(-(i + 1), now, table, c.key, c.op, len(value), identity,
                                   byte_profile(value) if c.op == "put" else None, prev))
        with self._lock:
            t = self._tables.get(table)
            start = window_start(now, settings.interval_seconds)
            pending = list(t.pending.get(start, [])) if t is not None else []
            ctx = _context(t) if t is not None else features.FeatureContext()
            model: Detector = t.model if t is not None else RuleDetector()
            recent = list(t.history) if t is not None else []
        r = what_if(obs, pending, table=table, window_start=start, window_end=start + settings.interval_seconds,
                    context=ctx, detector=model, table_keys=self.table_keys(table), recent=recent)
        return {"counts": {"create": r.creates, "overwrite": r.overwrites, "delete": r.deletes,
                           "unchanged": r.unchanged},
                "bytes": r.bytes, "score": r.score, "severity": r.severity, "kind": r.kind,
                "detector": r.detector, "threshold": settings.threshold,
                "wouldAlarm": r.score >= settings.threshold, "drivers": _drivers_json(r.drivers)}


def _drivers_json(drivers: Sequence[Driver]) -> list[dict[str, Any]]:
    return [{"feature": d.feature, "value": d.value, "usual": d.usual, "weight": d.weight} for d in drivers]


def _context(t: _Table) -> features.FeatureContext:
    """The features' context from what the quiet windows taught: identities seen, overwrite sizes' shares, each
    identity's share of the overwrites and deletes."""
    total = sum(t.sizes)
    hist = tuple(c / total for c in t.sizes) if total else (0.0,) * features.SIZE_BINS
    n = sum(t.by_identity.values())
    shares = tuple(sorted(((i, c / n) for i, c in t.by_identity.items()), key=lambda p: (p[0] is None, p[0] or "")))
    return features.FeatureContext(frozenset(t.identities), hist, shares if n else ())


def _context_state(t: _Table) -> dict[str, Any]:
    return {"identities": sorted(i for i in t.identities if i is not None), "anonymous": None in t.identities,
            "sizes": list(t.sizes), "byIdentity": [[i, c] for i, c in t.by_identity.items()]}


def _context_from_state(state: dict[str, Any]) -> tuple[set[str | None], list[int], Counter[str | None]]:
    """What ``_context_state`` wrote; ValueError when malformed."""
    try:
        ids: set[str | None] = {str(i) for i in state["identities"]}
        if state["anonymous"]:
            ids.add(None)
        sizes = [int(c) for c in state["sizes"]]
        by_identity: Counter[str | None] = Counter({None if i is None else str(i): int(c)
                                                    for i, c in state.get("byIdentity", [])})
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed context: {exc}") from None
    if len(sizes) != features.SIZE_BINS or min(sizes) < 0 or min(by_identity.values(), default=0) < 0:
        raise ValueError("malformed context: counts")
    return ids, sizes, by_identity


def _window_features(table: str, w: StoredWindow) -> WindowFeatures:
    names = features.FEATURE_NAMES
    return WindowFeatures(table, w.start, w.end, names, tuple(float(w.features.get(n, 0.0)) for n in names), 0)


def incident_json(inc: Incident, ident: str, state: str, detected: float, truncated: bool,
                  severity_threshold: float) -> dict[str, Any]:
    """An incident as ``GET /v1/anomalies`` lists it (its keys are listed by the keys route)."""
    return {"id": ident, "table": inc.tables[0] if inc.tables else "", "state": state, "kind": inc.kind,
            "startTime": inc.start_time, "endTime": inc.end_time, "detectedTime": detected,
            "firstLsn": inc.first_lsn, "lastLsn": inc.last_lsn, "knownGoodLsn": inc.known_good_lsn,
            "knownGoodTime": inc.known_good_time, "identities": list(inc.identities), "keys": len(inc.keys),
            "bytes": inc.bytes, "score": inc.score, "severity": inc.severity,
            "revert": inc.severity >= severity_threshold, "truncated": truncated,
            "drivers": _drivers_json(inc.drivers)}
