"""Columnar segments of history metadata (warm and cold tiers): compact, versioned, checked (pure).

A segment is a 56-byte header and the zstd-compressed body. The body holds the rows column by column: LSNs as
deltas in runs, times as microsecond delta-of-delta, (table, key) through a sorted front-coded dictionary, op and
key version in runs, sizes as varints. Byte layout: docs/shadow-format.md.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Sequence
from functools import partial
from itertools import accumulate, chain, compress, repeat
from typing import NamedTuple

import xxhash
import zstandard

from .codec import CodecError

__all__ = ["FORMAT_VERSION", "MAGIC", "MetaRow", "SegmentInfo", "decode_segment", "encode_segment",
           "segment_info"]

MAGIC = b"CSMS"
FORMAT_VERSION = 1
BODY_RAW, BODY_ZSTD = 0, 1
# magic | format | body codec | flags (0) | rows u32 | body length u32 | LSN min/max u64 | time min/max µs i64
_HEADER = struct.Struct(">4sBBHIIQQqq")
_CHECK = struct.Struct(">Q")
HEADER_SIZE = _HEADER.size + _CHECK.size
MAX_LSN = (1 << 63) - 1
MAX_SIZE = (1 << 63) - 1
MAX_TIME_US = 1 << 62  # ±146,000 years: far beyond any clock, and keeps every delta-of-delta within 10 bytes
MAX_KEY_VERSION = 0xFFFFFFFF
MAX_ROWS = 0xFFFFFFFF
DEFAULT_LEVEL = 9
DEFAULT_MAX_BODY = 1 << 30
_MAX_SHIFT = 63  # a varint of more than 10 bytes is corrupt: no field needs more than 70 bits


class MetaRow(NamedTuple):
    """One history version's metadata; ``key_version`` is None for deletes, ``time`` unix seconds (µs kept)."""

    lsn: int
    time: float
    table: str
    key: str
    op: str
    key_version: int | None
    size: int
    stored_size: int


class SegmentInfo(NamedTuple):
    """What a segment's header says about it (read without decompressing; decode_segment verifies it)."""

    rows: int
    min_lsn: int
    max_lsn: int
    min_time: float
    max_time: float


# --- varints ---------------------------------------------------------------------------------------------------

def _slow_uvarint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


# Every value below 2^14 (one or two bytes) precomputed: most deltas, sizes and indexes hit this table; values
# below 2^28 are a continued low half (_CONT) and a small high half, so they cost two lookups, not a loop.
_SMALL = tuple(_slow_uvarint(v) for v in range(1 << 14))
_CONT = tuple(bytes(((v & 0x7F) | 0x80, (v >> 7) | 0x80)) for v in range(1 << 14))
_SMALL_LIMIT = len(_SMALL)
_MID_LIMIT = 1 << 28


def _uvarints(values: Iterable[int]) -> bytes:
    """LEB128 of non-negative ints, concatenated."""
    small, cont, limit, mid = _SMALL, _CONT, _SMALL_LIMIT, _MID_LIMIT
    return b"".join([small[v] if v < limit else cont[v & 0x3FFF] + small[v >> 14] if v < mid else _slow_uvarint(v)
                     for v in values])


def _zigzag(values: Iterable[int]) -> list[int]:
    return [v << 1 if v >= 0 else (~v << 1) | 1 for v in values]


def _unzigzag(values: Iterable[int]) -> list[int]:
    return [~(z >> 1) if z & 1 else z >> 1 for z in values]


def _read_uvarints(buf: bytes, count: int) -> list[int]:
    """Exactly ``count`` varints filling ``buf``; CodecError otherwise."""
    if len(buf) == count and (not buf or max(buf) < 0x80):
        return list(buf)  # every value fits one byte: the common case for runs, ops and small deltas
    out: list[int] = []
    append = out.append
    acc = shift = 0
    for b in buf:
        if b < 0x80:
            if shift:
                append(acc | (b << shift))
                acc = shift = 0
            else:
                append(b)
        else:
            acc |= (b & 0x7F) << shift
            shift += 7
            if shift > _MAX_SHIFT:
                raise CodecError("varint longer than 10 bytes")
    if shift:
        raise CodecError("truncated varint")
    if len(out) != count:
        raise CodecError(f"column holds {len(out)} values, expected {count}")
    return out


class _Reader:
    """Sequential reader of the body's length-prefixed sections."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def uvarint(self) -> int:
        acc = shift = 0
        body = self.body
        while True:
            if self.pos >= len(body):
                raise CodecError("segment body ends inside a varint")
            b = body[self.pos]
            self.pos += 1
            acc |= (b & 0x7F) << shift
            if b < 0x80:
                return acc
            shift += 7
            if shift > _MAX_SHIFT:
                raise CodecError("varint longer than 10 bytes")

    def section(self) -> bytes:
        n = self.uvarint()
        end = self.pos + n
        if end > len(self.body):
            raise CodecError("segment body ends inside a column")
        out = self.body[self.pos:end]
        self.pos = end
        return out

    def ints(self, count: int) -> list[int]:
        return _read_uvarints(self.section(), count)


def _section(data: bytes) -> bytes:
    n = len(data)
    return (_SMALL[n] if n < _SMALL_LIMIT else _slow_uvarint(n)) + data


# --- runs ------------------------------------------------------------------------------------------------------

def _runs(values: Sequence[int]) -> list[bytes]:
    """(count, values column, lengths column) sections of run-length encoded non-negative ints."""
    n = len(values)
    # Where a run starts, found in C (compress over map(int.__ne__)) rather than a Python loop per row.
    starts = [0, *compress(range(1, n), map(int.__ne__, values[1:], values))] if n else []
    vals = [values[i] for i in starts]
    lens = [b - a for a, b in zip(starts, [*starts[1:], n], strict=False)]
    return [_section(_uvarints((len(vals),))), _section(_uvarints(vals)), _section(_uvarints(lens))]


def _read_runs(r: _Reader, total: int) -> list[int]:
    count = _read_uvarints(r.section(), 1)[0]
    vals = r.ints(count)
    lens = r.ints(count)
    # Checked before expanding, so a forged run length cannot allocate without bound.
    if sum(lens) != total or 0 in lens:
        raise CodecError("run lengths do not add up to the row count")
    return list(chain.from_iterable(map(repeat, vals, lens)))


# --- strings ---------------------------------------------------------------------------------------------------

def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _utf8(s: str, what: str) -> bytes:
    # Called once per distinct value, so it is also where non-strings are refused.
    if type(s) is not str:
        raise CodecError(f"{what} must be a string")
    try:
        return s.encode()
    except UnicodeEncodeError:
        raise CodecError(f"{what} is not encodable as UTF-8") from None


def _strings(items: Sequence[str], what: str) -> list[bytes]:
    """A small string list: count, lengths, bytes."""
    raw = [_utf8(s, what) for s in items]
    return [_section(_uvarints((len(raw),))), _section(_uvarints(map(len, raw))), _section(b"".join(raw))]


def _read_strings(r: _Reader) -> list[str]:
    count = _read_uvarints(r.section(), 1)[0]
    lens = r.ints(count)
    blob = r.section()
    if sum(lens) != len(blob):
        raise CodecError("string lengths do not match their bytes")
    out, pos = [], 0
    for n in lens:
        out.append(_decode_utf8(blob[pos:pos + n]))
        pos += n
    return out


def _decode_utf8(b: bytes) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        raise CodecError("string is not valid UTF-8") from None


def _front_coded(keys: Sequence[bytes]) -> list[bytes]:
    """Sorted keys as (shared prefix length with the previous, suffix length) columns and the suffix bytes."""
    prefixes, suffixes = [], []
    prev = b""
    for k in keys:
        p = _common_prefix(prev, k)
        prefixes.append(p)
        suffixes.append(k[p:])
        prev = k
    return [_section(_uvarints(prefixes)), _section(_uvarints(map(len, suffixes))), _section(b"".join(suffixes))]


def _read_front_coded(r: _Reader, count: int) -> list[bytes]:
    prefixes = r.ints(count)
    lens = r.ints(count)
    blob = r.section()
    if sum(lens) != len(blob):
        raise CodecError("key suffix lengths do not match their bytes")
    out: list[bytes] = []
    prev, pos = b"", 0
    for p, n in zip(prefixes, lens, strict=True):
        if p > len(prev):
            raise CodecError("key prefix longer than the previous key")
        prev = prev[:p] + blob[pos:pos + n]
        pos += n
        out.append(prev)
    return out


# --- encode ----------------------------------------------------------------------------------------------------

def _check_range(values: Sequence[int], lo: int, hi: int, what: str) -> None:
    if values and (min(values) < lo or max(values) > hi):
        raise CodecError(f"{what} out of range {lo}..{hi}")


def _ints(values: Sequence[object], what: str) -> list[int]:
    # array('q') checks every element is an integer of 64 bits in C; a row-by-row type() test costs far more.
    try:
        array("q", values)  # type: ignore[type-var]
    except (TypeError, OverflowError):
        raise CodecError(f"{what} must be 64-bit integers") from None
    return list(values)  # type: ignore[arg-type]  # checked just above


def _micros(times: Sequence[object]) -> list[int]:
    try:
        array("d", times)  # type: ignore[type-var]  # numbers only (no strings, no None)
        out = [round(t * 1_000_000) for t in times]  # type: ignore[operator]
    except (TypeError, ValueError, OverflowError):
        raise CodecError("time must be finite numbers (unix seconds)") from None
    _check_range(out, -MAX_TIME_US, MAX_TIME_US, "time (µs)")
    return out


def _lsn_sections(lsns: list[int]) -> list[bytes]:
    deltas = [b - a for a, b in zip(lsns, lsns[1:], strict=False)]
    return [_section(_uvarints((lsns[0],)))] + _runs(_zigzag(deltas))


TIME_DELTA, TIME_DELTA_OF_DELTA, TIME_RISING = 0, 1, 2


def _time_sections(us: list[int]) -> list[bytes]:
    """A mode, then the times as zigzag deltas, zigzag deltas of deltas, or (never falling) unsigned deltas.

    Delta-of-delta wins on regular series (snapshots, batch jobs). On a Poisson write process the gaps are
    independent and it only adds a sign: plain deltas are smaller, unsigned ones when the clock never steps back.
    Chosen by total significant bits, which tracks the compressed size better than the varint byte count.
    """
    deltas = [b - a for a, b in zip(us, us[1:], strict=False)]
    first = _zigzag(us[:1])
    candidates = [(TIME_DELTA_OF_DELTA, first + _zigzag(deltas[:1] + [b - a for a, b in
                                                              zip(deltas, deltas[1:], strict=False)])),
                  (TIME_DELTA, first + _zigzag(deltas))]
    if not deltas or min(deltas) >= 0:
        candidates.append((TIME_RISING, first + deltas))
    mode, values = min(candidates, key=lambda c: sum(map(int.bit_length, c[1])))
    return [_section(_SMALL[mode]), _section(_uvarints(values))]


def _key_sections(tables: Sequence[str], keys: Sequence[str]) -> list[bytes]:
    pairs = list(zip(tables, keys, strict=True))
    try:
        entries = sorted(set(pairs))
    except TypeError:
        raise CodecError("table and key must be strings") from None
    table_names = sorted({t for t, _ in entries})
    table_pos = {t: i for i, t in enumerate(table_names)}
    entry_pos = {e: i for i, e in enumerate(entries)}
    return (_strings(table_names, "table") + [_section(_uvarints((len(entries),)))]
            + _runs([table_pos[t] for t, _ in entries])
            + _front_coded([_utf8(k, "key") for _, k in entries])
            + [_section(_uvarints([entry_pos[p] for p in pairs]))])


def _op_sections(ops: Sequence[str], versions: Sequence[int | None]) -> list[bytes]:
    try:
        names = sorted(set(ops))
    except TypeError:
        raise CodecError("op must be strings") from None
    pos = {o: i for i, o in enumerate(names)}
    kv = [0 if v is None else v for v in versions]
    kv = _ints(kv, "key_version")
    if 0 in versions:
        raise CodecError("key_version 0 is invalid (None means no key version)")
    _check_range(kv, 0, MAX_KEY_VERSION, "key_version")
    return _strings(names, "op") + _runs([pos[o] for o in ops]) + _runs(kv)


def _size_sections(sizes: list[int], stored: list[int]) -> list[bytes]:
    # The stored size follows the plaintext size; its difference is the smaller number to write.
    extra = [s - z for s, z in zip(stored, sizes, strict=True)]
    return [_section(_uvarints(sizes)), _section(_uvarints(_zigzag(extra)))]


def encode_segment(rows: Sequence[MetaRow], *, level: int = DEFAULT_LEVEL) -> bytes:
    """Encode rows (any order, kept) into one self-checking segment; CodecError if a row holds invalid values."""
    n = len(rows)
    if n > MAX_ROWS:
        raise CodecError(f"a segment holds at most {MAX_ROWS} rows")
    if n == 0:
        return _frame(b"", 0, (0, 0, 0, 0), level)
    lsn_c, time_c, table_c, key_c, op_c, kv_c, size_c, stored_c = zip(*rows, strict=True)
    lsns = _ints(lsn_c, "lsn")
    _check_range(lsns, 0, MAX_LSN, "lsn")
    us = _micros(time_c)
    sizes, stored = _ints(size_c, "size"), _ints(stored_c, "stored_size")
    _check_range(sizes, 0, MAX_SIZE, "size")
    _check_range(stored, 0, MAX_SIZE, "stored_size")
    body = b"".join(chain(_lsn_sections(lsns), _time_sections(us), _key_sections(table_c, key_c),
                          _op_sections(op_c, kv_c), _size_sections(sizes, stored)))
    return _frame(body, n, (min(lsns), max(lsns), min(us), max(us)), level)


def _frame(body: bytes, rows: int, bounds: tuple[int, int, int, int], level: int) -> bytes:
    if len(body) > 0xFFFFFFFF:
        raise CodecError("segment body over 4 GiB; use fewer rows per segment")
    packed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(body)
    codec, payload = (BODY_ZSTD, packed) if len(packed) < len(body) else (BODY_RAW, body)
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, codec, 0, rows, len(body), *bounds)
    # One checksum over the header and the stored payload: any flipped bit is refused before zstd reads a byte
    # (a check of the decompressed body alone would let flips zstd ignores through, and feed it forged input).
    return head + _CHECK.pack(xxhash.xxh3_64_intdigest(head + payload)) + payload


# --- decode ----------------------------------------------------------------------------------------------------

def _header(blob: bytes) -> tuple[int, int, int, tuple[int, int, int, int], int]:
    if len(blob) < HEADER_SIZE:
        raise CodecError(f"segment shorter than its {HEADER_SIZE}-byte header")
    magic, version, codec, flags, rows, body_len, lo, hi, tlo, thi = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CodecError("not a metadata segment (bad magic)")
    if version != FORMAT_VERSION:
        raise CodecError(f"unsupported segment format version {version}")
    if codec not in (BODY_RAW, BODY_ZSTD) or flags:
        raise CodecError(f"unsupported segment body codec {codec} / flags {flags}")
    (check,) = _CHECK.unpack_from(blob, _HEADER.size)
    return codec, rows, body_len, (lo, hi, tlo, thi), check


def segment_info(blob: bytes) -> SegmentInfo:
    """Row count and LSN/time bounds from the header alone (for picking segments without decoding them)."""
    _, rows, _, (lo, hi, tlo, thi), _ = _header(blob)
    return SegmentInfo(rows, lo, hi, tlo / 1_000_000, thi / 1_000_000)


def _body(blob: bytes, max_body: int) -> tuple[bytes, int, tuple[int, int, int, int]]:
    codec, rows, body_len, bounds, check = _header(blob)
    payload = memoryview(blob)[HEADER_SIZE:]
    if xxhash.xxh3_64_intdigest(bytes(blob[:_HEADER.size]) + payload) != check:
        raise CodecError("segment checksum mismatch (corrupt or truncated)")
    if body_len > max_body:
        raise CodecError(f"segment body of {body_len} bytes exceeds the {max_body}-byte limit")
    if codec == BODY_RAW:
        body = bytes(payload)
    else:
        try:
            if zstandard.frame_content_size(payload) != body_len:
                raise CodecError("compressed body size does not match the header")
            body = zstandard.ZstdDecompressor().decompress(payload, max_output_size=max(body_len, 1),
                                                           allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise CodecError(f"corrupt segment body: {exc}") from None
    if len(body) != body_len:
        raise CodecError("segment body length does not match the header")
    return body, rows, bounds


def _decode_lsns(r: _Reader, n: int) -> list[int]:
    first = _read_uvarints(r.section(), 1)[0]
    return list(accumulate(chain((first,), _unzigzag(_read_runs(r, n - 1)))))


def _decode_times(r: _Reader, n: int) -> list[int]:
    mode = _read_uvarints(r.section(), 1)[0]
    raw = r.ints(n)
    if mode == TIME_RISING:
        return list(accumulate(chain(_unzigzag(raw[:1]), raw[1:])))
    values = _unzigzag(raw)
    if mode == TIME_DELTA:
        return list(accumulate(values))
    if mode == TIME_DELTA_OF_DELTA:
        return list(accumulate(chain(values[:1], accumulate(values[1:]))))
    raise CodecError(f"unknown time encoding {mode}")


def _pick(items: Sequence[str], idx: list[int], what: str) -> Sequence[str]:
    """items[i] for every i in idx (map over __getitem__ runs in C, not a Python loop per row)."""
    if idx and max(idx) >= len(items):
        raise CodecError(f"{what} index out of range")
    return list(map(items.__getitem__, idx))


def _decode_keys(r: _Reader, n: int) -> tuple[Sequence[str], Sequence[str]]:
    tables = _read_strings(r)
    count = _read_uvarints(r.section(), 1)[0]
    table_idx = _read_runs(r, count)
    keys = _read_front_coded(r, count)
    entry_tables = _pick(tables, table_idx, "table")
    entry_keys = [_decode_utf8(k) for k in keys]
    idx = r.ints(n)
    return _pick(entry_tables, idx, "key"), _pick(entry_keys, idx, "key")


def _decode_ops(r: _Reader, n: int) -> tuple[Sequence[str], list[int | None]]:
    names = _read_strings(r)
    ops = _pick(names, _read_runs(r, n), "op")
    versions: list[int | None] = [v or None for v in _read_runs(r, n)]
    return ops, versions


def decode_segment(blob: bytes, *, max_body: int = DEFAULT_MAX_BODY) -> list[MetaRow]:
    """The rows ``encode_segment`` was given (times to the microsecond); CodecError if corrupt or truncated."""
    body, n, bounds = _body(blob, max_body)
    if n == 0:
        if body:
            raise CodecError("empty segment with a body")
        return []
    r = _Reader(body)
    lsns = _decode_lsns(r, n)
    us = _decode_times(r, n)
    tables, keys = _decode_keys(r, n)
    ops, versions = _decode_ops(r, n)
    sizes = r.ints(n)
    stored = [z + s for z, s in zip(_unzigzag(r.ints(n)), sizes, strict=True)]
    if r.pos != len(body):
        raise CodecError("segment body has trailing bytes")
    if (min(lsns), max(lsns), min(us), max(us)) != bounds:
        raise CodecError("segment bounds do not match its rows")
    times = [t / 1_000_000 for t in us]
    return list(map(_ROW, zip(lsns, times, tables, keys, ops, versions, sizes, stored, strict=True)))


# tuple.__new__ straight from map: a NamedTuple's own __new__ is a Python function, a third of decode time.
_ROW = partial(tuple.__new__, MetaRow)
