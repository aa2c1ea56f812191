"""Woven pages: rows round-trip through the zstd page codec, across page boundaries, and damage is detected."""

from __future__ import annotations

import os

import pytest
import zstandard
from chronoshard.shardnode.weave import pages
from chronoshard.shardnode.weave.pages import Row


def rows(n: int) -> list[Row]:
    out = [Row("t", f"k{i:05}", i + 1, 1000.5 + i, "put", 1 + i % 3, os.urandom(16), os.urandom(50 + i % 7))
           for i in range(n)]
    out.append(Row("t", "z-deleted", 9999, 2000.0, "delete", None, None, None))
    out.append(Row("tábla", "ключ/é", (1 << 62), 0.0, "seed", 0, b"", b""))
    return out


def test_round_trip_across_pages():
    given = rows(pages.PAGE_ROWS * 2 + 17)
    encoded = pages.encode_pages(given)
    assert len(encoded) == 3
    assert [r for p in encoded for r in pages.decode_page(p)] == given


def test_compresses_what_compresses():
    plain = [Row("orders", f"key-{i:06}", i, 1.0, "put", 1, b"\0" * 16, b"A" * 200) for i in range(400)]
    raw = sum(len(pages.pack_row(r)) for r in plain)
    assert sum(len(p) for p in pages.encode_pages(plain)) < raw / 5


def test_no_rows_no_pages():
    assert pages.encode_pages([]) == []


def test_a_cut_page_is_refused():
    packed = b"".join(pages.pack_row(r) for r in rows(3))
    cut = zstandard.ZstdCompressor().compress(packed[:-5])
    with pytest.raises(ValueError, match="damaged|cut short"):
        pages.decode_page(cut)
