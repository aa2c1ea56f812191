"""Self-describing compression of history values: zstd, optionally with a trained dictionary per table (pure).

Blob layout (docs/shadow-format.md): ``codec id (u8)`` then, for codec 2 only, ``dictionary id (u32, big-endian)``,
then the payload: the raw bytes (codec 0) or one zstd frame (codecs 1 and 2).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Mapping

import xxhash
import zstandard

__all__ = ["CODEC_NONE", "CODEC_ZSTD", "CODEC_ZSTD_DICT", "CodecError", "Compressor", "dictionary_id",
           "train_dictionary"]

CODEC_NONE = 0
CODEC_ZSTD = 1
CODEC_ZSTD_DICT = 2
CODECS = ("none", "zstd")
DEFAULT_MAX_SIZE = 64 << 20
_DICT_ID = struct.Struct(">I")
MIN_LEVEL, MAX_LEVEL = 1, 22


class CodecError(ValueError):
    """Bytes that cannot be decoded (unknown codec or dictionary, truncated or corrupt); never holds the data."""


def dictionary_id(dict_bytes: bytes) -> int:
    """The 32-bit id a dictionary is named by in blobs: the low half of its XXH3-64 (stable across processes)."""
    return xxhash.xxh3_64_intdigest(dict_bytes) & 0xFFFFFFFF


def train_dictionary(samples: Iterable[bytes], size: int) -> bytes:
    """Train a zstd dictionary of at most ``size`` bytes from sample values; CodecError if zstd cannot."""
    items: list[bytes | bytearray | memoryview] = [bytes(s) for s in samples if s]
    if size < 256:
        raise CodecError("dictionary size must be at least 256 bytes")
    if not items:
        raise CodecError("cannot train a dictionary without non-empty samples")
    try:
        return bytes(zstandard.train_dictionary(size, items).as_bytes())
    except zstandard.ZstdError as exc:
        # zstd refuses too few or too uniform samples; the caller keeps compressing without a dictionary.
        raise CodecError(f"dictionary training failed: {exc}") from None


class Compressor:
    """Compress per table; the last dictionary added for a table compresses, every one added can decompress.

    Thread-safe: zstd contexts are per thread (a context must not be used by two threads at once).
    """

    def __init__(self, level: int = 3, dictionaries: Mapping[str, bytes] | None = None, *, codec: str = "zstd",
                 max_size: int = DEFAULT_MAX_SIZE) -> None:
        if not isinstance(level, int) or isinstance(level, bool) or not MIN_LEVEL <= level <= MAX_LEVEL:
            raise ValueError(f"compression level must be an integer in {MIN_LEVEL}..{MAX_LEVEL}")
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}")
        if max_size <= 0:
            raise ValueError("max_size must be positive")
        self.level = level
        self.codec = codec
        self.max_size = max_size
        self._current: dict[str, int] = {}
        self._dicts: dict[tuple[str, int], zstandard.ZstdCompressionDict] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        for table, dict_bytes in (dictionaries or {}).items():
            self.add_dictionary(table, dict_bytes)

    train_dictionary = staticmethod(train_dictionary)

    def add_dictionary(self, table: str, dict_bytes: bytes) -> int:
        """Register a dictionary for ``table`` (it compresses from now on); return its id."""
        if not dict_bytes:
            raise CodecError("empty dictionary")
        did = dictionary_id(dict_bytes)
        with self._lock:
            known = self._dicts.get((table, did))
            if known is not None and known.as_bytes() != dict_bytes:
                raise CodecError(f"dictionary id {did:#010x} of table {table!r} already names another dictionary")
            if known is None:
                zdict = zstandard.ZstdCompressionDict(bytes(dict_bytes), dict_type=zstandard.DICT_TYPE_AUTO)
                self._dicts[(table, did)] = zdict
            self._current[table] = did
        return did

    def dictionary(self, table: str) -> int | None:
        """The id of the dictionary that compresses ``table`` now, or None."""
        return self._current.get(table)

    def compress(self, table: str, data: bytes, *, checksum: bool = True) -> bytes:
        """Compress ``data`` for ``table``; falls back to codec 0 when compression would not shrink it.

        ``checksum=False`` leaves out zstd's 4-byte content checksum, for callers that authenticate the blob
        and check the plaintext themselves (sealing.py).
        """
        if len(data) > self.max_size:
            raise CodecError(f"value of {len(data)} bytes exceeds the {self.max_size}-byte limit")
        if self.codec == "none" or not data:
            return bytes((CODEC_NONE,)) + data
        did = self._current.get(table)
        if did is None:
            head = bytes((CODEC_ZSTD,))
        else:
            head = bytes((CODEC_ZSTD_DICT,)) + _DICT_ID.pack(did)
        frame = self._cctx(table, did, checksum).compress(data)
        if len(head) + len(frame) >= 1 + len(data):
            return bytes((CODEC_NONE,)) + data
        return head + frame

    def decompress(self, table: str, blob: bytes) -> bytes:
        """The bytes ``compress`` was given; CodecError for an unknown codec or dictionary or a corrupt blob."""
        if not blob:
            raise CodecError("empty blob (no codec id)")
        codec = blob[0]
        if codec == CODEC_NONE:
            return bytes(blob[1:])
        if codec == CODEC_ZSTD:
            return self._inflate(table, None, blob, 1)
        if codec == CODEC_ZSTD_DICT:
            if len(blob) < 1 + _DICT_ID.size:
                raise CodecError("blob truncated inside its dictionary id")
            (did,) = _DICT_ID.unpack_from(blob, 1)
            if (table, did) not in self._dicts:
                raise CodecError(f"unknown dictionary id {did:#010x} for table {table!r}")
            return self._inflate(table, did, blob, 1 + _DICT_ID.size)
        raise CodecError(f"unknown codec id {codec}")

    def _inflate(self, table: str, did: int | None, blob: bytes, offset: int) -> bytes:
        """Decompress the single zstd frame at ``offset``, refusing one that claims more than max_size."""
        frame = memoryview(blob)[offset:]
        try:
            size = zstandard.frame_content_size(frame)
        except zstandard.ZstdError:
            raise CodecError("corrupt zstd frame header") from None
        # compress() always records the size; a missing or huge one is corruption (and would allocate blindly).
        if size < 0 or size > self.max_size:
            raise CodecError("zstd frame has no valid content size")
        try:
            out = self._dctx(table, did).decompress(frame, max_output_size=max(size, 1), allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise CodecError(f"corrupt zstd frame: {exc}") from None
        if len(out) != size:
            raise CodecError("zstd frame decoded to another size than its header records")
        return bytes(out)

    def _contexts(self) -> dict[tuple[object, ...], object]:
        """This thread's zstd contexts, keyed by (kind, table, dictionary id, options)."""
        cache: dict[tuple[object, ...], object] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        return cache

    def _cctx(self, table: str, did: int | None, checksum: bool) -> zstandard.ZstdCompressor:
        key = ("c", table if did is not None else None, did, checksum)
        cache = self._contexts()
        ctx = cache.get(key)
        if not isinstance(ctx, zstandard.ZstdCompressor):
            zdict = self._dicts[(table, did)] if did is not None else None
            # The dictionary id is in our header already; zstd's own copy would cost up to 4 bytes per value.
            ctx = zstandard.ZstdCompressor(level=self.level, dict_data=zdict, write_checksum=checksum,
                                           write_content_size=True, write_dict_id=False)
            cache[key] = ctx
        return ctx

    def _dctx(self, table: str, did: int | None) -> zstandard.ZstdDecompressor:
        key = ("d", table if did is not None else None, did)
        cache = self._contexts()
        ctx = cache.get(key)
        if not isinstance(ctx, zstandard.ZstdDecompressor):
            zdict = self._dicts[(table, did)] if did is not None else None
            ctx = zstandard.ZstdDecompressor(dict_data=zdict)
            cache[key] = ctx
        return ctx
