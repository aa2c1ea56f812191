"""``GET /v1/digest``: the node's Merkle-style digest (shardnode/node/verify.py ``Digest``) at an LSN, from one
read transaction. A mirror asked for LSN S holds its replicator at S (applies nothing past it) until the read
transaction has begun, so the digest is of exactly the state at S, comparable with the primary's at S.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from chronoshard.shardnode.serving.http_common import ApiError

from . import apply
from .role import MIRROR
from .state import DigestLike, ReplicationState

KEYSPACE_OFFSET = apply.KEYSPACE_OFFSET


def digest_in_txn(conn: sqlite3.Connection, digest: DigestLike, mirror: bool, at: int | None,
                  started: Callable[[], None]) -> dict[str, Any] | int:
    """The digest of the blocks in one read transaction; its LSN is the mirror's cursor or the node's last LSN.
    Returns the LSN instead of a digest when it is not ``at``. ``started`` runs once the snapshot is fixed."""
    conn.execute("BEGIN")
    try:
        lsn = (apply.cursor(conn) or 0) if mirror else apply.last_lsn(conn)  # the first read fixes the snapshot
        started()
        if at is not None and lsn != at:
            return lsn
        for ks, t, k, cs in conn.execute("SELECT keyspace, tbl, key, checksum FROM blocks "
                                         "ORDER BY keyspace, tbl, key"):
            digest.add(ks + KEYSPACE_OFFSET, t, k, bytes(cs))
    finally:
        conn.execute("COMMIT")
    return {"lsn": lsn} | digest.result()


def _lsn_mismatch(at: int, lsn: int) -> ApiError:
    if lsn > at:
        return ApiError(409, "lsn_passed", f"already applied past LSN {at} (at {lsn})", appliedLsn=lsn)
    return ApiError(409, "lsn_not_reached", f"LSN {at} was not applied in time (at {lsn})", appliedLsn=lsn)


async def digest_at(state: ReplicationState, at: int | None, wait_seconds: float) -> dict[str, Any]:
    """The digest at ``at`` (None: now); 409 lsn_passed / lsn_not_reached when this node cannot answer at ``at``."""
    store = state.store
    if store is None:
        raise ApiError(503, "not_ready", "store is not open yet")
    mirror = state.role.role == MIRROR
    loop = asyncio.get_running_loop()
    released = threading.Event()
    if mirror and at is not None:
        state.add_hold(at)

    def release() -> None:
        if not released.is_set():
            released.set()
            if mirror and at is not None:
                loop.call_soon_threadsafe(state.release_hold, at)

    try:
        if at is not None:  # only a mirror waits: nothing but a client write moves a primary's LSN
            applied = await state.wait_applied(at, wait_seconds if mirror else 0.0)
            if applied != at:
                raise _lsn_mismatch(at, applied)
        digest = state.new_digest()
        out = await store.read(lambda c: digest_in_txn(c, digest, mirror, at, release))
    finally:
        release()
    if isinstance(out, int):
        assert at is not None
        raise _lsn_mismatch(at, out)
    return out
