"""Time-travel answers (pure): the values a query returns, how a point in time resolves against the tiers, and
how two states of a key compare in a diff."""

from __future__ import annotations

from dataclasses import dataclass

from .tiers import COLD_BUCKET_SECONDS, DELETE, floor_to

CREATED, CHANGED, DELETED = "created", "changed", "deleted"
# A version a reshard logged (docs/resharding.md): a block moved in (a put of an unchanged value) or moved away
# (a delete on this shard only). Stored in the history's ``frames.origin``.
MOVED_IN, MOVED_AWAY = "move", "moved_away"
MOVED_IN_CHANGE = "moved_in"  # a diff line of a key a reshard moved in
# The node change log's origins (shardnode/node/changelog.py) and what the history stores for each.
STORED_ORIGIN = {"move_in": MOVED_IN, "purge": MOVED_AWAY}


@dataclass(frozen=True)
class Version:
    """One version of a key: a put, delete, rewrap or seed at ``lsn``; ``value`` the plaintext (None for a
    delete, or when values were not asked for). ``exact`` is False where compaction dropped versions around it."""

    table: str
    key: str
    lsn: int
    time: float
    op: str
    size: int
    key_version: int | None
    value: bytes | None
    exact: bool = True
    checksum: bytes | None = None  # XXH3-128 of the plaintext (the node's checksum); None for a delete
    identity: str | None = None  # who the node recorded as making the change (None: seed, rewrap, or unknown)
    profile: bytes | None = None  # the plaintext's stored byte profile (anomaly/profile.py); None for a delete
    origin: str | None = None  # MOVED_IN / MOVED_AWAY for a reshard's versions (docs/resharding.md), else None

    @property
    def deleted(self) -> bool:
        """True for a delete (a tombstone), a moved-away key's too: it is no longer on this shard."""
        return self.op == DELETE

    @property
    def moved_away(self) -> bool:
        """True where the key left this shard in a reshard (not deleted: it lives on another shard)."""
        return self.origin == MOVED_AWAY


@dataclass(frozen=True)
class DiffEntry:
    """A key whose state differs between two points (None: absent at that point)."""

    key: str
    change: str  # created | changed | deleted
    size_before: int | None
    size_after: int | None
    lsn_before: int | None
    lsn_after: int | None


@dataclass(frozen=True)
class Point:
    """A resolved point in the history: the LSN a query reads at, its time when one was given (for a time in a
    compacted tier: the boundary it was rounded down to), and whether the state there is exact."""

    lsn: int
    time: float | None
    exact: bool


@dataclass(frozen=True)
class Exactness:
    """What the store knows about where its history is complete.

    ``exact_from``: the lowest LSN from which every change is kept (after the first seed, and after the last
    compaction out of hot); ``cursor``: the highest applied; ``gaps``: (after, upto) LSN ranges a re-seed jumped
    over (the state strictly inside is unknown); horizons of the last compaction, for rounding times."""

    exact_from: int
    cursor: int
    gaps: tuple[tuple[int, int], ...] = ()
    warm_before: float | None = None
    cold_before: float | None = None
    interval: float | None = None


def is_exact(lsn: int, ex: Exactness) -> bool:
    """True if the state at ``lsn`` is the state the node had then (every change up to it is kept)."""
    if lsn < ex.exact_from or lsn > ex.cursor:
        return False
    return not any(after < lsn < upto for after, upto in ex.gaps)


def granularity_at(t: float, ex: Exactness) -> float | None:
    """The bucket size the tiers keep at time ``t``: None in hot (every change), the interval in warm, an hour
    in cold."""
    if ex.warm_before is None or ex.interval is None or t >= ex.warm_before:
        return None
    if ex.cold_before is not None and t < ex.cold_before:
        return COLD_BUCKET_SECONDS
    return ex.interval


def lookup_time(t: float, ex: Exactness) -> tuple[float, bool]:
    """The time a query at ``t`` reads at, and whether that read includes changes at exactly that time:
    ``t`` itself in hot; in warm/cold the bucket boundary at or before ``t`` (the state just before it), the
    last point the compacted tiers still hold exactly as it was."""
    g = granularity_at(t, ex)
    if g is None:
        return t, True
    return floor_to(t, g), False


def classify(before: Version | None, after: Version | None) -> str | None:
    """How a key's state moved between two points: created, deleted, changed (other content: the plaintext
    checksums differ, so a rewrap or a write of the same bytes is no change), or None; a key a reshard moved in or
    away (its last version there says so) is ``moved_in`` / ``moved_away``, not created or deleted."""
    live_before = before is not None and not before.deleted
    live_after = after is not None and not after.deleted
    if before is not None and after is not None and live_before and live_after:
        return CHANGED if before.checksum != after.checksum else None
    if live_after:
        return MOVED_IN_CHANGE if after is not None and after.origin == MOVED_IN else CREATED
    if live_before:
        return MOVED_AWAY if after is not None and after.moved_away else DELETED
    return None


def diff_entry(key: str, before: Version | None, after: Version | None, change: str) -> DiffEntry:
    """The diff line of a key (sizes and LSNs of the live versions on each side)."""
    b = before if before is not None and not before.deleted else None
    a = after if after is not None and not after.deleted else None
    return DiffEntry(key, change, b.size if b else None, a.size if a else None, b.lsn if b else None,
                     a.lsn if a else None)
