"""The rows of a woven snapshot and their pages (pure): a page is the zstd frame of rows packed back to back, in
(tbl, key) order. Layout of one row, big-endian (docs/weaving.md, "Woven store"):

``u32 len, tbl (UTF-8) | u32 len, key (UTF-8) | i64 lsn | f64 time | u8 len, op (ASCII) | i64 key_version (-1: none)
| u32 len, checksum (0xFFFFFFFF: none) | u32 len, frame (0xFFFFFFFF: none)``

Frames are the shadow's sealed history frames as stored: nothing here decrypts.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import zstandard

PAGE_ROWS = 512  # rows per page: a state read decompresses whole pages
PAGE_RAW_BYTES = 1 << 20  # or fewer, once the packed rows reach this
LEVEL = 3
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
