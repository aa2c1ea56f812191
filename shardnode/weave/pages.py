"""The rows of a woven snapshot and their pages (pure): a page is the zstd frame of rows packed back to back, in
(tbl, key) order. Layout of one row, big-endian (docs/weaving.md, "Woven store"):

``u32 len, tbl (UTF-8) | u32 len, key (UTF-8) | i64 lsn | f64 time | u8 len, op (ASCII) | i64 key_version (-1: none)
| u32 len, checksum (0xFFFFFFFF: none) | u32 len, frame (0xFFFFFFFF: none)``

Frames are the shadow's sealed history frames as stored: nothing here decrypts.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import zstandard

PAGE_ROWS = 512  # rows per page: a state read decompresses whole pages
PAGE_RAW_BYTES = 1 << 20  # or fewer, once the packed rows reach this
LEVEL = 1  # the frames are ciphertext: a higher level buys little and costs every rewrite
NONE_LEN = 0xFFFFFFFF
_U32 = struct.Struct(">I")
_FIXED = struct.Struct(">qd")
_I64 = struct.Struct(">q")


class Row(NamedTuple):
    """One version of a key in a woven snapshot, as the shadow stored it (a delete has no frame)."""

    tbl: str
    key: str
    lsn: int
    time: float
    op: str
    key_version: int | None
    checksum: bytes | None
    frame: bytes | None


def _blob(b: bytes | None) -> bytes:
    return _U32.pack(NONE_LEN) if b is None else _U32.pack(len(b)) + b


def pack_row(r: Row) -> bytes:
    """One row's bytes."""
    tbl, key, op = r.tbl.encode(), r.key.encode(), r.op.encode()
    return b"".join((_U32.pack(len(tbl)), tbl, _U32.pack(len(key)), key, _FIXED.pack(r.lsn, r.time),
                     bytes((len(op),)), op, _I64.pack(-1 if r.key_version is None else r.key_version),
                     _blob(r.checksum), _blob(r.frame)))


def _take_blob(buf: bytes, at: int) -> tuple[bytes | None, int]:
    (n,) = _U32.unpack_from(buf, at)
    at += 4
    if n == NONE_LEN:
        return None, at
    return bytes(buf[at:at + n]), at + n


def unpack_rows(buf: bytes) -> Iterator[Row]:
    """The rows of a page's decompressed bytes; ValueError if they are cut short."""
    at = 0
    try:
        while at < len(buf):
            tbl, at = _take_blob(buf, at)
            key, at = _take_blob(buf, at)
            lsn, t = _FIXED.unpack_from(buf, at)
            at += _FIXED.size
            n = buf[at]
            op = buf[at + 1:at + 1 + n].decode()
            at += 1 + n
            (kv,) = _I64.unpack_from(buf, at)
            at += 8
            checksum, at = _take_blob(buf, at)
            frame, at = _take_blob(buf, at)
            if tbl is None or key is None or at > len(buf):
                raise ValueError("woven page row is cut short")
            yield Row(tbl.decode(), key.decode(), lsn, t, op, None if kv < 0 else kv, checksum, frame)
    except (struct.error, IndexError) as exc:
        raise ValueError(f"woven page is damaged: {exc}") from None


def encode_pages(rows: Sequence[Row]) -> list[bytes]:
    """Rows (already in (tbl, key) order) as zstd-compressed pages."""
    cctx = zstandard.ZstdCompressor(level=LEVEL)
    pages: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for r in rows:
        packed = pack_row(r)
        chunk.append(packed)
        size += len(packed)
        if len(chunk) >= PAGE_ROWS or size >= PAGE_RAW_BYTES:
            pages.append(cctx.compress(b"".join(chunk)))
            chunk, size = [], 0
    if chunk:
        pages.append(cctx.compress(b"".join(chunk)))
    return pages


def decode_page(data: bytes) -> list[Row]:
    """A page's rows."""
    return list(unpack_rows(zstandard.ZstdDecompressor().decompress(data)))


def _key(r: Row) -> tuple[str, str]:
    return (r.tbl, r.key)


def _versions(rows: Iterable[Row], sign: int, into: dict[int, int]) -> None:
    for r in rows:
        if r.key_version is not None:
            into[r.key_version] = into.get(r.key_version, 0) + sign


def fold(full_pages: Sequence[bytes], diff: Sequence[Row]) -> tuple[list[bytes], int, dict[int, int]]:
    """A full point's pages with a differential applied (a delete removes its key): only the pages the changed keys
    fall in are decoded and re-encoded, the others are kept as they are. Returns the new pages, the change in row
    count and the change in rows per key version."""
    if not full_pages:
        rows = [r for r in diff if r.op != "delete"]
        delta: dict[int, int] = {}
        _versions(rows, 1, delta)
        return encode_pages(rows), len(rows), delta
    # A page's first key places the changes; decoding every page for it would defeat the purpose, so only the
    # first row is read, from a streaming decompression of the page's start.
    firsts = [_key(_first_row(page)) for page in full_pages]
    touched: dict[int, list[Row]] = {}
    for r in diff:
        i = max(bisect.bisect_right(firsts, _key(r)) - 1, 0)
        touched.setdefault(i, []).append(r)
    out: list[bytes] = []
    count = 0
    versions: dict[int, int] = {}
    for i, page in enumerate(full_pages):
        changes = touched.get(i)
        if changes is None:
            out.append(page)
            continue
        old = decode_page(page)
        merged = {_key(r): r for r in old}
        for r in changes:
            if r.op == "delete":
                merged.pop(_key(r), None)
            else:
                merged[_key(r)] = r
        new = [merged[k] for k in sorted(merged)]
        _versions(old, -1, versions)
        _versions(new, 1, versions)
        count += len(new) - len(old)
        out += encode_pages(new)
    return out, count, {v: n for v, n in versions.items() if n}


def _first_row(page: bytes) -> Row:
    reader = zstandard.ZstdDecompressor().stream_reader(page)
    head = reader.read(1 << 16)
    while True:
        try:
            return next(unpack_rows(head))
        except (ValueError, StopIteration):
            more = reader.read(1 << 16)
            if not more:
                raise ValueError("woven page is empty or damaged") from None
            head += more
