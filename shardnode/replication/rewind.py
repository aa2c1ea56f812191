"""Rejoining as a mirror past the divergence point (docs/mirroring.md, "to mirror from primary/fenced").

An old primary's log may hold changes after the new primary's ``promotedAtLsn`` (``divergeLsn``) that the new
primary never had. Every key those changes touched is replaced by the new primary's current block
(``POST /v1/tables/{t}/frames:batchGet``; absent there: deleted here), the local changes after ``divergeLsn`` are
dropped and reported as ``discardedLsns``, and the stream continues from ``divergeLsn``: what the new primary
changed since is then streamed over it like any other change. When this node's log no longer reaches
``divergeLsn``, or the new primary cannot start a slot there, ``RewindImpossible`` asks for a full re-seed.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from chronoshard.shardnode.keys import frames
from chronoshard.shardnode.serving.changestream import ChangeStreamClient, ChangeStreamError

from . import apply
from .state import StoreLike

BATCH_KEYS = 1000  # frames:batchGet takes at most this many keys


class RewindImpossible(Exception):
    """Rewinding cannot reach the divergence point; ``discarded``: the local LSNs a re-seed drops."""

    def __init__(self, reason: str, discarded: Sequence[int] = ()) -> None:
        super().__init__(reason)
        self.discarded = list(discarded)


def parse_frame(table: str, doc: dict[str, Any]) -> apply.PrimaryBlock | None:
    """One entry of a ``frames:batchGet`` answer (None: the primary has no such block)."""
    if not doc.get("found"):
        if doc.get("error"):
            raise ChangeStreamError(502, {"error": "frame_unavailable", "message": "the source refused a key"})
        return None
    frame = base64.b64decode(doc["frame"], validate=True)
    # The frame is header | ciphertext | tag and GCM adds no padding: the plaintext size follows from its length.
    return apply.PrimaryBlock(table, str(doc["key"]), int(doc["keyVersion"]), len(frame) - frames.MIN_FRAME_SIZE,
                              bytes.fromhex(doc["checksum"]), frame, int(doc["lsn"]))


async def fetch_current(client: ChangeStreamClient, keys: Sequence[tuple[str, str]]
                        ) -> dict[tuple[str, str], apply.PrimaryBlock | None]:
    """The new primary's current blocks of ``keys`` (None for the ones it does not hold)."""
    by_table: dict[str, list[str]] = defaultdict(list)
    for table, key in keys:
        by_table[table].append(key)
    out: dict[tuple[str, str], apply.PrimaryBlock | None] = {}
    for table, names in by_table.items():
        for i in range(0, len(names), BATCH_KEYS):
            for entry in await client.batch_frames(table, names[i:i + BATCH_KEYS]):
                out[(table, str(entry["key"]))] = parse_frame(table, entry)
    return out


async def _slot_at(client: ChangeStreamClient, consumer: str, diverge: int, discarded: Sequence[int]) -> None:
    try:
        slot = await client.register(consumer, start_lsn=diverge)
        if slot.get("state") == "behind" or int(slot.get("ackedLsn") or 0) != diverge:
            await client.register(consumer, start_lsn=diverge, reset=True)
    except ChangeStreamError as exc:
        if exc.status == 409:
            raise RewindImpossible("the new primary's log does not reach divergeLsn", discarded) from None
        raise


async def rewind_to(store: StoreLike, client: ChangeStreamClient, consumer: str, diverge: int) -> list[int]:
    """Rewind this node to ``diverge`` against the new primary; returns the discarded LSNs."""
    tail = await store.read(lambda c: apply.local_tail(c, diverge))
    if not tail.complete:  # the LSNs still held after divergeLsn are reported; older trimmed ones are unknown
        raise RewindImpossible("the local change log no longer reaches divergeLsn", tail.lsns)
    await _slot_at(client, consumer, diverge, tail.lsns)
    current = await fetch_current(client, tail.keys)
    await store.write(lambda c: apply.rewind(c, diverge, tail.keys, current, tail.lsns))
    return list(tail.lsns)
