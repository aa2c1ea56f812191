"""``POST /v1/replication/repair``: replace a mirror's blocks in some digest buckets with the primary's.

The buckets' keyspace ranges are read from the source in one snapshot (``GET /v1/snapshot?keyspace=``) at its LSN
S2; the mirror deletes its blocks in those ranges and writes the snapshot's, and persists the skip set (ranges,
S2) in ``meta`` in the same transaction as the delete: changes up to S2 in those ranges, streamed later, are
already in the snapshot and only logged (apply.py). The replicator is paused meanwhile (``apply_lock``). A crash
half way leaves those ranges short of blocks: the next digest names them again and a repair again fixes them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from chronoshard.shardnode.serving.changestream import ChangeStreamError, SnapshotBlock
from chronoshard.shardnode.serving.http_common import ApiError

from . import apply
from .role import MIRROR
from .state import ReplicationState, close_stream

log = logging.getLogger(__name__)
CHUNK = 256


def bucket_ranges(buckets: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The keyspace ranges of the buckets, adjacent ones merged, in order."""
    out: list[list[int]] = []
    for b in sorted(set(buckets)):
        lo, hi = apply.bucket_range(b)
        if out and out[-1][1] + 1 == lo:
            out[-1][1] = hi
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def parse_buckets(doc: Any) -> list[int]:
    """``{"buckets": ["0a", ...]}``: two hex digits each (the digest's bucket names); 400 otherwise."""
    if not isinstance(doc, dict) or set(doc) != {"buckets"} or not isinstance(doc["buckets"], list) \
            or not doc["buckets"] or len(doc["buckets"]) > 256:
        raise ApiError(400, "invalid_body", 'the body must be {"buckets": ["0a", ...]} with 1-256 buckets')
    out = []
    for b in doc["buckets"]:
        if not isinstance(b, str) or len(b) != 2 or any(ch not in "0123456789abcdef" for ch in b):
            raise ApiError(400, "invalid_body", "a bucket is two lowercase hex digits, as the digest names it")
        out.append(int(b, 16))
    return out


async def repair(state: ReplicationState, buckets: Sequence[int]) -> dict[str, Any]:
    """Replace the mirror's blocks in ``buckets`` from one snapshot of the source; the answer counts them."""
    replicator, store = state.replicator, state.store
    if state.role.role != MIRROR or replicator is None or store is None:
        raise ApiError(409, "not_mirror", "only a mirror repairs from its primary")
    ranges = bucket_ranges(buckets)
    async with state.apply_lock:
        if state.seeding:
            raise ApiError(409, "mirror_seeding", "this mirror is being seeded")
        blocks = replicator.client().snapshot(keyspace=ranges)
        try:
            first = await anext(blocks)
            if not isinstance(first, int) or first < state.applied:
                raise ApiError(502, "bad_snapshot", "the source's snapshot is older than this mirror's cursor")
            removed = await store.write(lambda c: apply.repair_begin(c, ranges, first))
            written, chunk = 0, []
            async for item in blocks:
                if isinstance(item, SnapshotBlock):
                    chunk.append(item)
                if len(chunk) >= CHUNK:
                    batch, chunk = chunk, []
                    written += await store.write(lambda c, b=batch: apply.seed_blocks(c, b))  # type: ignore[misc]
            if chunk:
                written += await store.write(lambda c: apply.seed_blocks(c, chunk))
            await store.write(apply.repair_finish)
        except ChangeStreamError as exc:
            raise ApiError(502, "source_unavailable", f"the source answered {exc.status}") from None
        finally:
            await close_stream(blocks)
    log.info("repaired %d buckets from the source's snapshot at LSN %d: %d blocks removed, %d written",
             len(set(buckets)), first, removed, written)
    return {"lsn": first, "buckets": [f"{b:02x}" for b in sorted(set(buckets))], "removed": removed,
            "written": written}
