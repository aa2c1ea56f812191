"""The shapes every part of anomaly detection shares: one observed change, one window's features, a score with the
features that drove it, and an incident (what an anomaly touched). Pure data: no I/O, no model.

The shadow turns each change it captures into a ``ChangeObservation`` (it has the new plaintext in memory while it
reseals the version, and the previous version's ``ByteProfile`` from its history), groups them per table into
windows of the policy's interval, scores each window's ``WindowFeatures`` and, for a window at or above the
threshold, runs the impact analysis that yields an ``Incident``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The operations of a change as the node logs them.
PUT, DELETE, REWRAP = "put", "delete", "rewrap"
# How a change came about, so our own maintenance is never an anomaly: an ordinary client write, a key rotation's
# rewrap, or a write of a Reversion run (made by the shadow's own identity).
CLIENT, ROTATION, REVERSION = "client", "rotation", "reversion"
# A reshard moved the block in or away (docs/resharding.md): its value did not change, it is not a client's change.
MOVE = "move"

HIST_BINS = 16  # byte histogram bins (byte >> 4): enough to tell text, binary and ciphertext apart


@dataclass(frozen=True)
class ByteProfile:
    """What a value's bytes look like: Shannon entropy over the 256 byte values (bits per byte, 0..8) and the share
    of bytes in each of ``HIST_BINS`` bins (byte >> 4; sums to 1, all zero for an empty value)."""

    entropy: float
    hist: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.hist) != HIST_BINS:
            raise ValueError(f"a byte profile has {HIST_BINS} bins, not {len(self.hist)}")


@dataclass(frozen=True)
class ChangeObservation:
    """One captured change as the detector sees it.

    ``identity`` is the user the node authenticated for the write (None when the node ran without authentication
    or the change predates identities). ``existed``: the key had a live value before this change (a put over it is
    an overwrite). ``profile``/``prev_profile``: the new and the previous plaintext's profiles (None for a delete,
    for a new key, or when unknown). ``origin``: CLIENT, ROTATION or REVERSION. ``prev_lsn``: the LSN of the key's
    latest version before this change, whatever its op (a delete too; None when the history holds none).
    """

    lsn: int
    time: float
    table: str
    key: str
    op: str
    size: int
    prev_size: int | None
    existed: bool
    identity: str | None
    profile: ByteProfile | None
    prev_profile: ByteProfile | None
    origin: str = CLIENT
    prev_lsn: int | None = None


@dataclass(frozen=True)
class WindowFeatures:
    """The features of one table's changes in one window [start, end): ``values`` in the order of ``names``."""

    table: str
    start: float
    end: float
    names: tuple[str, ...]
    values: tuple[float, ...]
    changes: int  # client changes counted (rotation and reversion changes are not features, only context)

    def as_dict(self) -> dict[str, float]:
        """``{name: value}``."""
        return dict(zip(self.names, self.values, strict=True))


@dataclass(frozen=True)
class Driver:
    """A feature that pushed a score up: its value, what is usual for it, and its share of the explanation (0..1)."""

    feature: str
    value: float
    usual: float
    weight: float


@dataclass(frozen=True)
class Score:
    """A window's calibrated anomaly score in [0, 1] (``threshold`` means the same on every table), the detector
    that gave it ("isolation-forest", "rules", ...) and the features that drove it, strongest first."""

    score: float
    detector: str
    drivers: tuple[Driver, ...] = ()


@dataclass(frozen=True)
class AffectedKey:
    """A key an incident changed: its first and last bad change, and what it held before the first."""

    table: str
    key: str
    first_lsn: int
    last_lsn: int
    before_lsn: int | None  # the key's last change before the incident (None: it did not exist then)
    bytes: int  # plaintext bytes the incident wrote to or deleted from this key


@dataclass(frozen=True)
class Incident:
    """An anomaly's impact: when, which tables, keys, bytes and identities, the last known-good point, and a
    severity in [0, 1] with the drivers that explain it. ``kind`` names the pattern recognised
    (mass-delete, mass-overwrite, encryption, corruption-drip, new-identity-bulk, other)."""

    id: str
    start_time: float
    end_time: float
    first_lsn: int
    last_lsn: int
    known_good_lsn: int  # the last LSN before the first bad change: reverting to it undoes the incident
    known_good_time: float
    tables: tuple[str, ...]
    identities: tuple[str | None, ...]
    keys: tuple[AffectedKey, ...]
    bytes: int
    score: float
    severity: float
    kind: str
    drivers: tuple[Driver, ...] = field(default_factory=tuple)
