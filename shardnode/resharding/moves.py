"""The target side of a move, pure parts (docs/resharding.md, "How a move works"): the move document of
``PUT /v1/moves/{name}``, the consumer slot's name, which streamed changes a move applies, and the content digest of
keyspace ranges that the source and the target compare."""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from chronoshard.shardnode.keyspace.partitioning import format_id, keyspace_id
from chronoshard.shardnode.serving.changestream import StreamChange

from .fences import Range, in_ranges, merge_ranges, parse_ranges

# A move's name leaves room for the slot prefix within a consumer name's 63 characters.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,57}")
SLOT_PREFIX = "move."
COPYING, CATCHING_UP, FAILED = "copying", "catching_up", "failed"
PHASES = (COPYING, CATCHING_UP, FAILED)
PURGE = "purge"  # shardnode/node/changelog.py: a source's purge of a range it no longer owns
BUCKET_BITS = 8


class MoveInvalid(ValueError):
    """A move document that is not as documented."""


@dataclass(frozen=True)
class MoveSpec:
    """What a ``PUT /v1/moves/{name}`` asks: pull ``ranges`` (partition ``partition``) from the node at
    ``source_url`` (shard ``source_shard``; ``server_name``: the name its certificate is checked against)."""

    source_url: str
    source_shard: int
    partition: int
    ranges: tuple[Range, ...]
    server_name: str | None = None

    def to_doc(self) -> dict[str, Any]:
        """The canonical body (compared to tell a resumed move from a different one with the same name)."""
        src: dict[str, Any] = {"url": self.source_url, "shard": self.source_shard}
        if self.server_name is not None:
            src["serverName"] = self.server_name
        return {"source": src, "partition": self.partition,
                "ranges": [[format_id(lo), format_id(hi)] for lo, hi in self.ranges]}


def _nonneg_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MoveInvalid(f"{what} must be a non-negative integer")
    return value


def parse_move(doc: Any) -> MoveSpec:
    """A move document ``{"source": {"url", "shard"[, "serverName"]}, "partition", "ranges"}``; MoveInvalid."""
    if not isinstance(doc, dict) or set(doc) - {"source", "partition", "ranges"}:
        raise MoveInvalid("a move is {source, partition, ranges}")
    src = doc.get("source")
    if not isinstance(src, dict) or set(src) - {"url", "shard", "serverName"}:
        raise MoveInvalid("source must be {url, shard[, serverName]}")
    url = src.get("url")
    if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", url):
        raise MoveInvalid("source.url must be an http(s) URL")
    server_name = src.get("serverName")
    if server_name is not None and (not isinstance(server_name, str) or not server_name or len(server_name) > 253):
        raise MoveInvalid("source.serverName must be a host name")
    try:
        ranges = parse_ranges(doc.get("ranges"))
    except ValueError as exc:
        raise MoveInvalid(str(exc)) from None
    return MoveSpec(url.rstrip("/"), _nonneg_int(src.get("shard"), "source.shard"),
                    _nonneg_int(doc.get("partition"), "partition"), tuple(merge_ranges(ranges)), server_name)


def slot_name(name: str) -> str:
    """The consumer slot the target holds on the source for move ``name``."""
    return SLOT_PREFIX + name


def wanted(changes: Iterable[StreamChange], ranges: Sequence[Range]) -> list[StreamChange]:
    """The streamed changes a move applies: those of keys in its ranges, except the source's purges (a purge only
    ever deletes a range the source no longer owns, i.e. one that has already moved here)."""
    return [c for c in changes if c.origin != PURGE and in_ranges(keyspace_id(c.table, c.key), ranges)]


def lag_seconds(caught_up: bool, read_time: float | None, now: float) -> float | None:
    """How far the target is behind the source: 0 once it has applied everything the source had logged when last
    asked, else the age of the newest source change it has read (about the oldest it has not applied; None
    before it read one)."""
    if caught_up:
        return 0.0
    return None if read_time is None else max(0.0, now - read_time)


# ---- content digest -----------------------------------------------------------------------------------------
def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class ContentDigest:
    """The digest of a range's content: every block's (table, key, key version, checksum, frame) in (keyspace id,
    table, key) order, hashed into 256 keyspace buckets and the buckets into one digest. LSNs are left out: a moved
    block has other LSNs on the target by design. Unequal buckets name where two copies differ."""

    def __init__(self) -> None:
        self._buckets: dict[int, Any] = {}
        self.blocks = 0

    def add(self, kid: int, table: str, key: str, key_version: int, checksum: bytes, frame: bytes) -> None:
        """Add one block; callers add in (keyspace id, table, key) order."""
        b = kid >> (64 - BUCKET_BITS)
        h = self._buckets.get(b)
        if h is None:
            h = self._buckets[b] = hashlib.sha256()
        h.update(_field(table.encode()) + _field(key.encode()) + struct.pack(">q", key_version) + _field(checksum)
                 + _field(frame))
        self.blocks += 1

    def result(self) -> dict[str, Any]:
        """``{"blocks", "digest", "buckets": {"<2 hex>": "<sha256 hex>"}}`` (only non-empty buckets)."""
        root = hashlib.sha256()
        for b in range(1 << BUCKET_BITS):
            h = self._buckets.get(b)
            root.update(h.digest() if h else b"\x00" * 32)
        return {"blocks": self.blocks, "digest": root.hexdigest(),
                "buckets": {f"{b:02x}": h.hexdigest() for b, h in sorted(self._buckets.items())}}


def differing_buckets(a: dict[str, str], b: dict[str, str]) -> int:
    """How many buckets two digests' ``buckets`` disagree on (present in one only counts)."""
    return sum(1 for k in set(a) | set(b) if a.get(k) != b.get(k))
