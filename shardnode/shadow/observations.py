"""What the history store tells its observers about each applied change (pure): the key's previous version as the
history held it, how a change came about, and the ``ChangeObservation`` built from both."""

from __future__ import annotations

from dataclasses import dataclass

from chronoshard.shardnode.anomaly.profile import decode_profile
from chronoshard.shardnode.anomaly.types import CLIENT, DELETE, REVERSION, REWRAP, ROTATION, ChangeObservation

# The identity a Reversion's writes carry (the shadow sets X-Chronoshard-On-Behalf-Of to it, with the plan's name).
REVERSION_IDENTITY_PREFIX = "chronoshard:reversion:"


@dataclass(frozen=True)
class PrevVersion:
    """A key's latest version before a change: its LSN, op, plaintext size and stored profile (None: unknown)."""

    lsn: int
    op: str
    size: int | None
    profile: bytes | None

    @property
    def live(self) -> bool:
        """True unless it is a delete (a tombstone)."""
        return self.op != DELETE


def origin_of(op: str, identity: str | None) -> str:
    """ROTATION for a rewrap, REVERSION for a write a Reversion made, else CLIENT."""
    if op == REWRAP:
        return ROTATION
    if identity is not None and identity.startswith(REVERSION_IDENTITY_PREFIX):
        return REVERSION
    return CLIENT


def observation(lsn: int, time: float, table: str, key: str, op: str, size: int, identity: str | None,
                profile: bytes | None, prev: PrevVersion | None) -> ChangeObservation:
    """The observation of one change over ``prev`` (None: the history holds no earlier version of the key).
    ``prev_lsn`` is the previous version's LSN whatever its op (a delete too); ``existed`` says if it was live."""
    existed = prev is not None and prev.live
    return ChangeObservation(
        lsn=lsn, time=time, table=table, key=key, op=op, size=size,
        prev_size=prev.size if prev is not None and existed else None,
        existed=existed, identity=identity,
        profile=decode_profile(profile),
        prev_profile=decode_profile(prev.profile) if prev is not None and existed else None,
        origin=origin_of(op, identity),
        prev_lsn=None if prev is None else prev.lsn)
