"""A change stream of one table with injected incidents and legitimate heavy work, for the incidents benchmark.

The ordinary traffic replays a write pattern: the CloudPhysics trace's writes (key from ``lbn``, value size from
``size``, time scaled by a factor and the trace looped as often as needed) or a synthetic pattern (diurnal Poisson
arrivals with bursts and Zipf keys), so results are not tied to one trace. Values are real bytes profiled with
``byte_profile``: JSON-like records, packed binary records and already-compressed media (each key keeps its kind;
a rare legitimate overwrite switches it), written by several identities, with a few legitimate deletes.

Into the test period it injects, seeded, at random times: mass delete, mass overwrite (zeroed, truncated, other
format or plausible content), encryption (ransomware), partial encryption, a slow drip of corruption (a few keys a
minute for an hour) and a bulk update from a new identity, each by one identity (a compromised ordinary one, or a
new one); ten minutes after each, a Reversion (origin REVERSION, the shadow's identity) restores its keys. And
legitimate heavy work that must not alarm: a backfill of many new keys, a key rotation (rewraps of every key) and a
Reversion run.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import json
import math
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from chronoshard.shardnode.anomaly.profile import byte_profile
from chronoshard.shardnode.anomaly.types import (
    CLIENT,
    DELETE,
    PUT,
    REVERSION,
    REWRAP,
    ROTATION,
    ByteProfile,
    ChangeObservation,
)

TABLE = "orders"
IDENTITIES = ("app-web", "app-api", "svc-etl", "svc-report")
ID_WEIGHTS = (0.5, 0.3, 0.15, 0.05)
SHADOW_ID = "shadow"
CLASSES = ("json", "bin", "media")
CLASS_WEIGHTS = (0.6, 0.3, 0.1)
BAD_KINDS = (
    "mass-delete",
    "mass-overwrite",
    "encryption",
    "partial-encryption",
    "corruption-drip",
    "new-identity-bulk",
)
LEGIT_KINDS = ("backfill", "rotation", "reversion")
DELETE_SHARE = 0.01  # legitimate deletes per ordinary write
SWITCH_SHARE = 0.0002  # legitimate overwrites that change a key's kind (a text value replaced by a compressed one)
POOL = 8
BODY = 72 * 1024


@dataclass
class Truth:
    """One injected event: bad incidents carry the keys they changed and their first/last bad change."""

    kind: str
    bad: bool
    planned: float
    identity: str | None = None
    keys: set[str] = field(default_factory=set)
    first_time: float = math.inf
    last_time: float = -math.inf
    saved: dict[str, object] = field(default_factory=dict)  # each key's version before the incident, to restore

    def hit(self, key: str, t: float) -> None:
        self.keys.add(key)
        self.first_time = min(self.first_time, t)
        self.last_time = max(self.last_time, t)


@dataclass
class Stream:
    """The generated stream: observations in time order, the event truths, and the period boundaries."""

    observations: list[ChangeObservation]
    truths: list[Truth]
    t0: float
    train_start: float
    test_start: float
    end: float
    live_keys_at_test: int


# -- write patterns ---------------------------------------------------------------------------------------------


def trace_writes(path: Path) -> list[tuple[float, str, int]]:
    """The trace's writes as (seconds from its start, key, size)."""
    rows: list[tuple[float, str, int]] = []
    with path.open() as f:
        for r in csv.DictReader(f):
            if r["op"].lower() == "2a":
                rows.append((float(r["time"]), f"b{r['lbn']}", int(r["size"])))
    if not rows:
        raise ValueError(f"no writes in {path}")
    t0 = rows[0][0]
    return [(t - t0, k, s) for t, k, s in rows]


def synthetic_writes(
    seed: int, hours: float = 2.0, rate: float = 8.0, keys: int = 40_000
) -> list[tuple[float, str, int]]:
    """A synthetic pattern: Poisson arrivals at a rate varying over the day with 30-s bursts at 6x every ~10 min,
    Zipf(0.9) keys and log-normal sizes (median 2 KiB, 512-byte multiples)."""
    rng = random.Random(seed)
    cum = []
    acc = 0.0
    for i in range(keys):
        acc += 1 / (i + 1) ** 0.9
        cum.append(acc)
    out: list[tuple[float, str, int]] = []
    t, end = 0.0, hours * 3600
    burst_until = -1.0
    while t < end:
        base = rate * (1 + 0.5 * math.sin(2 * math.pi * t / 86400))
        if t > burst_until and rng.random() < 1 / (600 * base):
            burst_until = t + 30
        lam = base * (6 if t < burst_until else 1)
        t += rng.expovariate(lam)
        k = rng.choices(range(keys), cum_weights=cum)[0]
        size = max(512, int(round(rng.lognormvariate(math.log(2048), 0.9) / 512)) * 512)
        out.append((t, f"s{k}", min(size, 65536)))
    return out


# -- values -----------------------------------------------------------------------------------------------------


class Values:
    """Pools of real value bodies per kind and the profiles of their prefixes and damaged variants (cached)."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.bodies: dict[str, list[bytes]] = {c: [self._body(c, rng) for _ in range(POOL)] for c in CLASSES}
        self.cache: dict[tuple[object, ...], ByteProfile] = {}

    @staticmethod
    def _json(rng: random.Random, n: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        names = ("ada", "bob", "carol", "dave", "erin", "frank")
        while size < n:
            rec = {
                "id": rng.randrange(10**7),
                "customer": f"{rng.choice(names)}{rng.randrange(1000)}",
                "qty": rng.randrange(50),
                "price": round(rng.random() * 100, 2),
                "status": rng.choice(("new", "paid", "shipped", "returned")),
            }
            b = json.dumps(rec).encode() + b"\n"
            parts.append(b)
            size += len(b)
        return b"".join(parts)[:n]

    def _body(self, cls: str, rng: random.Random) -> bytes:
        if cls == "json":
            return self._json(rng, BODY)
        if cls == "bin":
            out = bytearray()
            while len(out) < BODY:
                out += struct.pack(
                    "<IIHHd", rng.randrange(1000), rng.randrange(100_000), rng.randrange(10), 0, rng.random()
                )
            return bytes(out[:BODY])
        raw = b""
        while len(raw) < BODY:
            raw += zlib.compress(self._json(rng, 4 * BODY), 9)
        return raw[:BODY]

    def profile(self, variant: tuple[object, ...]) -> ByteProfile:
        """The profile of a value described by ``variant`` (its first item names how it was made)."""
        p = self.cache.get(variant)
        if p is None:
            p = byte_profile(self._bytes(variant))
            self.cache[variant] = p
        return p

    def _bytes(self, v: tuple[object, ...]) -> bytes:
        how = v[0]
        if how == "plain":
            _, cls, idx, size = v
            body = self.bodies[str(cls)][int(idx)]  # type: ignore[call-overload]
            return body[: int(size)]  # type: ignore[call-overload]
        rng = random.Random(zlib.crc32(repr(v).encode()))
        if how == "random":
            return rng.randbytes(int(v[1]))  # type: ignore[call-overload]
        if how == "zeros":
            return bytes(int(v[1]))  # type: ignore[call-overload]
        if how == "junk":
            return b'{"x":null}'[: int(v[1])]  # type: ignore[call-overload]
        if how in ("partial", "corrupt"):
            _, cls, idx, size, frac = v
            plain = self.bodies[str(cls)][int(idx)][: int(size)]  # type: ignore[call-overload]
            k = int(len(plain) * float(frac))  # type: ignore[arg-type]
            at = 0 if how == "corrupt" else len(plain) - k
            return plain[:at] + rng.randbytes(k) + plain[at + k :]
        raise ValueError(f"unknown value variant {v!r}")


# -- the stream -------------------------------------------------------------------------------------------------


@dataclass
class _Key:
    cls: str
    variant: tuple[object, ...]
    size: int
    lsn: int


class _Table:
    """Live keys with O(1) random choice, and the observation each change makes."""

    def __init__(self, values: Values) -> None:
        self.values = values
        self.live: dict[str, _Key] = {}
        self.order: list[str] = []
        self.pos: dict[str, int] = {}
        self.kind_of: dict[str, str] = {}
        self.lsn = 0
        self.out: list[ChangeObservation] = []

    def kind(self, key: str, rng: random.Random) -> str:
        k = self.kind_of.get(key)
        if k is None:
            k = rng.choices(CLASSES, weights=CLASS_WEIGHTS)[0]
            self.kind_of[key] = k
        return k

    def random_live(self, rng: random.Random) -> str | None:
        return self.order[rng.randrange(len(self.order))] if self.order else None

    def _add(self, key: str) -> None:
        self.pos[key] = len(self.order)
        self.order.append(key)

    def _remove(self, key: str) -> None:
        i = self.pos.pop(key)
        last = self.order.pop()
        if last != key:
            self.order[i] = last
            self.pos[last] = i

    def put(
        self, t: float, key: str, size: int, cls: str, variant: tuple[object, ...], identity: str | None, origin: str
    ) -> ChangeObservation:
        self.lsn += 1
        prev = self.live.get(key)
        prof = self.values.profile(variant)
        o = ChangeObservation(
            self.lsn, t, TABLE, key, PUT, size, prev.size if prev else None, prev is not None, identity, prof,
            self.values.profile(prev.variant) if prev else None, origin, prev.lsn if prev else None,
        )  # fmt: skip
        if prev is None:
            self._add(key)
        self.live[key] = _Key(cls, variant, size, self.lsn)
        self.out.append(o)
        return o

    def delete(self, t: float, key: str, identity: str | None, origin: str = CLIENT) -> ChangeObservation | None:
        prev = self.live.pop(key, None)
        if prev is None:
            return None
        self._remove(key)
        self.lsn += 1
        o = ChangeObservation(
            self.lsn, t, TABLE, key, DELETE, 0, prev.size, True, identity, None, self.values.profile(prev.variant),
            origin, prev.lsn,
        )  # fmt: skip
        self.out.append(o)
        return o

    def rewrap(self, t: float, key: str) -> None:
        cur = self.live.get(key)
        if cur is None:
            return
        self.lsn += 1
        prof = self.values.profile(cur.variant)
        self.out.append(
            ChangeObservation(
                self.lsn, t, TABLE, key, REWRAP, cur.size, cur.size, True, "operator", prof, prof, ROTATION, cur.lsn
            )  # fmt: skip
        )
        cur.lsn = self.lsn


def _plain(rng: random.Random, cls: str, size: int) -> tuple[object, ...]:
    return ("plain", cls, rng.randrange(POOL), max(1, size))


def _schedule(rng: random.Random, start: float, end: float, bad_each: int) -> list[tuple[float, str]]:
    kinds = [k for k in BAD_KINDS for _ in range(bad_each)] + list(LEGIT_KINDS)
    rng.shuffle(kinds)
    slot = (end - start) / len(kinds)
    # Each event starts in its own slot, early enough that an hour-long drip and the restore after it fit.
    return [(start + i * slot + rng.uniform(0.05, 0.25) * slot, k) for i, k in enumerate(kinds)]


def generate(
    writes: list[tuple[float, str, int]],
    *,
    seed: int,
    time_factor: float = 1.0,
    warmup_hours: float = 2.0,
    train_hours: float = 8.0,
    test_hours: float = 24.0,
    bad_each: int = 2,
) -> Stream:
    """The stream: ordinary traffic looped from ``writes`` over warm-up, training and test periods, with the
    events of the test period injected (``bad_each`` of each bad kind, one of each legitimate kind)."""
    rng = random.Random(seed)
    values = Values(seed)
    table = _Table(values)
    period = (max(t for t, _, _ in writes) + 1.0) * time_factor
    train_start = warmup_hours * 3600
    test_start = train_start + train_hours * 3600
    end = test_start + test_hours * 3600
    events = _schedule(rng, test_start, end - 1800, bad_each)
    actions = _event_actions(events, rng)
    truths = [a for a in actions if isinstance(a, Truth)]
    timed = sorted((a for a in actions if not isinstance(a, Truth)), key=lambda a: a[0])
    live_at_test = 0
    ai = 0
    id_cum = list(itertools.accumulate(ID_WEIGHTS))
    for t, key, size in _looped(writes, period, time_factor, end):
        while ai < len(timed) and timed[ai][0] <= t:
            _run_action(table, timed[ai], rng)
            ai += 1
        if not live_at_test and t >= test_start:
            live_at_test = len(table.live)
        ident = IDENTITIES[bisect.bisect(id_cum, rng.random() * id_cum[-1])]
        if rng.random() < DELETE_SHARE and table.order:
            victim = table.random_live(rng)
            if victim is not None:
                table.delete(t, victim, ident)
            continue
        cls = table.kind(key, rng)
        if key in table.live and rng.random() < SWITCH_SHARE:
            cls = "media" if cls != "media" else "json"
            table.kind_of[key] = cls
        table.put(t, key, size, cls, _plain(rng, cls, size), ident, CLIENT)
    return Stream(table.out, truths, 0.0, train_start, test_start, end, live_at_test)


def _looped(
    writes: list[tuple[float, str, int]], period: float, factor: float, end: float
) -> Iterator[tuple[float, str, int]]:
    n = 0
    while True:
        base = n * period
        for t, k, s in writes:
            at = base + t * factor
            if at >= end:
                return
            yield at, k, s
        n += 1


# An action: (time, what, truth, payload); "what" tells _run_action how to change the table.
Action = tuple[float, str, Truth, dict[str, object]]


def _event_actions(events: list[tuple[float, str]], rng: random.Random) -> list[Action | Truth]:
    out: list[Action | Truth] = []
    fresh = 0
    for start, kind in events:
        bad = kind in BAD_KINDS
        ident = f"intruder-{rng.randrange(10**6)}" if kind == "new-identity-bulk" else rng.choice(IDENTITIES)
        truth = Truth(kind, bad, start, ident if bad else None)
        out.append(truth)
        if kind == "corruption-drip":
            per_min = rng.uniform(3, 6)
            times = _spread(rng, start, 3600.0, int(per_min * 60))
        elif kind == "backfill":
            times = _spread(rng, start, rng.uniform(600, 1800), rng.randrange(10_000, 40_000))
        elif kind == "rotation":
            times = [start]  # expanded when run: every live key, over 30 minutes
        elif kind == "reversion":
            times = _spread(rng, start, rng.uniform(120, 300), rng.randrange(1000, 5000))
        elif kind == "new-identity-bulk":
            times = _spread(rng, start, rng.uniform(60, 300), rng.randrange(300, 2000))
        else:
            times = _spread(rng, start, rng.uniform(60, 300 if kind.startswith("mass") else 600),
                            rng.randrange(1000, 5000))  # fmt: skip
        variant = rng.choice(("zeros", "junk", "other", "plausible")) if kind == "mass-overwrite" else ""
        for t in times:
            payload: dict[str, object] = {"variant": variant}
            if kind == "backfill":
                fresh += 1
                payload["key"] = f"bf{id(truth) % 997}-{fresh}"
            out.append((t, kind, truth, payload))
        if bad:  # the Reversion that restores the incident's keys ten minutes after its last change
            out.append((times[-1] + 600, "restore", truth, {}))
    return out


def _spread(rng: random.Random, start: float, duration: float, n: int) -> list[float]:
    return sorted(start + rng.uniform(0, duration) for _ in range(max(1, n)))


def _run_action(table: _Table, action: Action, rng: random.Random) -> None:
    t, what, truth, payload = action
    saved = truth.saved
    if what == "restore":
        keys = list(saved)
        for i, key in enumerate(keys):
            old = saved[key]
            assert old is None or isinstance(old, _Key)
            at = t + 60 * i / max(1, len(keys))
            if old is None:
                table.delete(at, key, SHADOW_ID, REVERSION)
            else:
                table.put(at, key, old.size, old.cls, old.variant, SHADOW_ID, REVERSION)
        return
    if what == "backfill":
        key = str(payload["key"])
        cls = table.kind(key, rng)
        size = 512 * rng.randrange(1, 9)
        table.put(t, key, size, cls, _plain(rng, cls, size), "svc-etl", CLIENT)
        return
    if what == "rotation":
        keys = list(table.order)
        for i, key in enumerate(keys):
            table.rewrap(t + 1800 * i / max(1, len(keys)), key)
        return
    victim = _fresh_victim(table, truth, rng)
    if victim is None:
        return
    key = victim
    cur = table.live[key]
    if what == "reversion":
        table.put(t, key, cur.size, cur.cls, _plain(rng, cur.cls, cur.size), SHADOW_ID, REVERSION)
        return
    saved.setdefault(key, _Key(cur.cls, cur.variant, cur.size, cur.lsn))
    truth.hit(key, t)
    ident = truth.identity
    if what == "mass-delete":
        table.delete(t, key, ident)
        return
    size, variant = _bad_value(what, cur, str(payload["variant"]), rng)
    table.put(t, key, size, cur.cls, variant, ident, CLIENT)


def _bad_value(what: str, cur: _Key, how: str, rng: random.Random) -> tuple[int, tuple[object, ...]]:
    """The size and value an incident writes over ``cur``."""
    size = cur.size
    if what == "mass-overwrite":
        if how == "zeros":
            return size, ("zeros", size)
        if how == "junk":
            size = rng.randrange(2, 11)
            return size, ("junk", size)
        if how == "other":
            return size, _plain(rng, "bin" if cur.cls == "json" else "json", size)
        return size, _plain(rng, cur.cls, size)
    if what == "encryption":
        return size + 16, ("random", size + 16)
    if what in ("partial-encryption", "corruption-drip"):
        if cur.variant[0] != "plain":
            return size, ("random", size)
        if what == "partial-encryption":
            return size, ("partial", cur.cls, cur.variant[2], size, rng.choice((0.3, 0.45, 0.6)))
        return size, ("corrupt", cur.cls, cur.variant[2], size, rng.choice((0.5, 0.75, 1.0)))
    return size, _plain(rng, cur.cls, size)  # a bulk update from a new identity: plausible values


def _fresh_victim(table: _Table, truth: Truth, rng: random.Random) -> str | None:
    for _ in range(50):
        key = table.random_live(rng)
        if key is None:
            return None
        if key not in truth.keys:
            return key
    return None
