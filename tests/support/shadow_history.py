"""Test helper: a real HistoryStore on disk, and node changes / snapshot blocks built from real node frames."""

from __future__ import annotations

from pathlib import Path

from chronoshard.shardnode.keys.crypto import seal_block
from chronoshard.shardnode.keys.keyring import Keyring
from chronoshard.shardnode.serving.changestream import SnapshotBlock, StreamChange
from chronoshard.shardnode.shadow.codec import Compressor
from chronoshard.shardnode.shadow.history import HistoryStore

from tests.support.stores import Holder, ring


def put(keyring: Keyring, lsn: int, time: float, table: str, key: str, value: bytes,
        version: int | None = None) -> StreamChange:
    """A put as the node's change stream carries it: the node's own frame and checksum."""
    frame, cs, v = seal_block(keyring, table, key, value, version=version)
    return StreamChange(lsn=lsn, time=time, table=table, key=key, op="put", key_version=v, size=len(value),
                        frame=frame, checksum=cs)


def rewrap(keyring: Keyring, lsn: int, time: float, table: str, key: str, value: bytes,
           version: int | None = None) -> StreamChange:
    """A node rewrap of a block holding ``value``: a new frame under ``version``, same content."""
    frame, cs, v = seal_block(keyring, table, key, value, version=version)
    return StreamChange(lsn=lsn, time=time, table=table, key=key, op="rewrap", key_version=v, size=len(value),
                        frame=frame, checksum=cs)


def delete(lsn: int, time: float, table: str, key: str) -> StreamChange:
    """A delete as the stream carries it (no frame)."""
    return StreamChange(lsn=lsn, time=time, table=table, key=key, op="delete", key_version=None, size=0,
                        frame=None, checksum=None)


def block(keyring: Keyring, lsn: int, table: str, key: str, value: bytes) -> SnapshotBlock:
    """A block of the node's /v1/snapshot."""
    frame, cs, v = seal_block(keyring, table, key, value)
    return SnapshotBlock(table=table, key=key, key_version=v, size=len(value), checksum=cs, frame=frame, lsn=lsn)


def open_history(tmp: Path, keyring: Keyring | None = None) -> tuple[HistoryStore, Holder]:
    """A HistoryStore in ``tmp`` with a mutable keyring holder (default: version 1 primary)."""
    holder = Holder(keyring if keyring is not None else ring(1, (1,)))
    return HistoryStore(tmp, holder, Compressor()), holder
