"""Woven pages: rows round-trip through the zstd page codec, across page boundaries, and damage is detected."""

from __future__ import annotations

import os
import random

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


def test_fold_rewrites_only_the_pages_the_changes_fall_in():
    rng = random.Random(5)
    full = [Row("t", f"k{i:06}", i, 1.0, "put", 1, b"c" * 16, rng.randbytes(40)) for i in range(0, 4000, 2)]
    full_pages = pages.encode_pages(full)
    assert len(full_pages) == 4
    # Changes only in the second page's key range (keys 1024..2046 step 2): an update, an insert between, a delete.
    diff = [Row("t", "k001100", 9001, 2.0, "put", 2, b"d" * 16, b"new"),
            Row("t", "k001101", 9002, 2.0, "put", 2, b"e" * 16, b"inserted"),
            Row("t", "k001200", 9003, 2.0, "delete", None, None, None)]
    folded, delta, versions = pages.fold(full_pages, diff)
    assert folded[0] is full_pages[0] and folded[2] is full_pages[2] and folded[3] is full_pages[3]
    want = {(r.tbl, r.key): r for r in full}
    want[("t", "k001100")] = diff[0]
    want[("t", "k001101")] = diff[1]
    del want[("t", "k001200")]
    got = [r for p in folded for r in pages.decode_page(p)]
    assert got == [want[k] for k in sorted(want)]
    assert delta == 0 and versions == {1: -2, 2: 2}


def test_fold_places_keys_before_the_first_and_after_the_last_page_and_into_nothing():
    full = [Row("t", f"m{i:04}", i, 1.0, "put", 1, b"c", b"v") for i in range(600)]
    early, late = Row("t", "a", 1, 1.0, "put", 1, b"c", b"v"), Row("u", "z", 2, 1.0, "put", 1, b"c", b"v")
    folded, delta, _ = pages.fold(pages.encode_pages(full), [early, late])
    assert [r for p in folded for r in pages.decode_page(p)] == [early, *full, late] and delta == 2
    fresh, n, versions = pages.fold([], [early, Row("t", "gone", 3, 1.0, "delete", None, None, None)])
    assert [r for p in fresh for r in pages.decode_page(p)] == [early] and n == 1 and versions == {1: 1}
