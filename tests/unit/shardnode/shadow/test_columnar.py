"""Columnar metadata segments: exact round trips, header bounds, and corrupt input refused with CodecError."""

import random
import struct

import pytest
from chronoshard.shardnode.shadow import columnar
from chronoshard.shardnode.shadow.codec import CodecError
from chronoshard.shardnode.shadow.columnar import MetaRow, decode_segment, encode_segment, segment_info
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

OPS = ["put", "delete", "rewrap", "seed"]

tables = st.one_of(st.sampled_from(["users", "orders", "évènements", "表"]), st.text(max_size=12))
keys = st.one_of(st.text(max_size=40), st.builds(lambda n: f"user/{n:08d}", st.integers(0, 10**6)))
ops = st.one_of(st.sampled_from(OPS), st.text(min_size=1, max_size=8))
key_versions = st.one_of(st.none(), st.integers(1, columnar.MAX_KEY_VERSION))
sizes = st.one_of(st.integers(0, 1 << 20), st.integers(0, columnar.MAX_SIZE))
# Whole microseconds within ±71 years of the epoch come back as the very same float.
exact_times = st.integers(-(1 << 51), 1 << 51).map(lambda us: us / 1_000_000)
any_times = st.one_of(exact_times, st.floats(-1e12, 1e12, allow_nan=False),
                      st.integers(-columnar.MAX_TIME_US, columnar.MAX_TIME_US).map(lambda us: us / 1_000_000))


def _row(lsn, time, table, key, op, kv, size, stored):
    return MetaRow(lsn, time, table, key, op, None if op == "delete" and kv is None else kv, size, stored)


rows_any = st.lists(st.builds(_row, st.integers(0, columnar.MAX_LSN), any_times, tables, keys, ops, key_versions,
                              sizes, sizes), max_size=120)


@st.composite
def rows_log(draw):
    """Rows as a change log writes them: LSNs rising (with gaps up to 2^40), times jittering back and forth."""
    n = draw(st.integers(1, 200))
    lsn = draw(st.integers(0, 1 << 50))
    us = draw(st.integers(0, 1 << 50))
    names = draw(st.lists(keys, min_size=1, max_size=30))
    out = []
    for _ in range(n):
        lsn += draw(st.one_of(st.just(1), st.integers(1, 1 << 40)))
        us += draw(st.one_of(st.integers(0, 5000), st.integers(-(1 << 30), 1 << 30)))  # clocks step back too
        op = draw(st.sampled_from(OPS))
        size = 0 if op == "delete" else draw(st.integers(0, 1 << 22))
        out.append(MetaRow(lsn, us / 1_000_000, draw(st.sampled_from(["a", "b"])), draw(st.sampled_from(names)), op,
                           None if op == "delete" else draw(st.integers(1, 5)), size,
                           0 if op == "delete" else draw(st.integers(35, (1 << 22) + 100))))
    return out


def _quantised(rows):
    return [r._replace(time=round(r.time * 1_000_000) / 1_000_000) for r in rows]


@given(rows_any)
@settings(max_examples=300, deadline=None)
def test_round_trip_arbitrary_valid_rows(rows):
    assert decode_segment(encode_segment(rows)) == _quantised(rows)


@given(rows_log())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_round_trip_change_log_rows_exactly(rows):
    blob = encode_segment(rows)
    out = decode_segment(blob)
    assert out == rows  # µs-exact times come back identical, not just close
    assert all(type(r.time) is float and type(r.lsn) is int for r in out)


@given(st.lists(exact_times, min_size=1, max_size=50))
@settings(max_examples=200, deadline=None)
def test_microsecond_times_are_exact(times):
    rows = [MetaRow(i, t, "t", "k", "put", 1, 1, 36) for i, t in enumerate(times)]
    assert [r.time for r in decode_segment(encode_segment(rows))] == times


def test_sub_microsecond_time_rounds_to_the_microsecond():
    row = MetaRow(1, 1_700_000_000.1234567, "t", "k", "put", 1, 5, 40)
    assert decode_segment(encode_segment([row]))[0].time == 1_700_000_000.123457


def test_segment_info_from_the_header():
    rows = [MetaRow(900, 20.5, "t", "k", "put", 1, 1, 40), MetaRow(7, 10.25, "t", "j", "delete", None, 0, 0),
            MetaRow(5000, 30.0, "u", "k", "rewrap", 2, 1, 40)]
    info = segment_info(encode_segment(rows))
    assert info == columnar.SegmentInfo(3, 7, 5000, 10.25, 30.0)


def test_empty_segment():
    blob = encode_segment([])
    assert decode_segment(blob) == [] and segment_info(blob).rows == 0


def test_realistic_rows_are_small():
    rnd = random.Random(4)
    rows, us = [], 1_700_000_000_000_000
    for i in range(5000):
        us += int(rnd.expovariate(1 / 20000))
        op = rnd.choices(["put", "delete", "rewrap"], [80, 15, 5])[0]
        size = 0 if op == "delete" else int(rnd.lognormvariate(7, 1))
        rows.append(MetaRow(10_000 + i, us / 1e6, "orders", f"order/{rnd.randrange(2000):06d}", op,
                            None if op == "delete" else 3, size, 0 if op == "delete" else size // 2 + 52))
    blob = encode_segment(rows)
    assert decode_segment(blob) == rows
    assert len(blob) < 10 * len(rows)  # a SQLite row of the same fields takes ~50 bytes


def _sample_segment():
    rows = [MetaRow(100 + i, 1_700_000_000 + i * 0.01, "t", f"k{i % 7}", OPS[i % 3], None if i % 3 == 1 else 2,
                    0 if i % 3 == 1 else 100 + i, 0 if i % 3 == 1 else 60 + i) for i in range(60)]
    return rows, encode_segment(rows, level=3)


def test_every_single_bit_flip_is_refused():
    _, blob = _sample_segment()
    for i in range(len(blob) * 8):
        bad = bytearray(blob)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(CodecError):
            decode_segment(bytes(bad))


def test_every_truncation_and_extension_is_refused():
    _, blob = _sample_segment()
    for cut in range(len(blob)):
        with pytest.raises(CodecError):
            decode_segment(blob[:cut])
    with pytest.raises(CodecError):
        decode_segment(blob + b"\x00")


def test_wrong_magic_version_and_oversized_body_are_named():
    _, blob = _sample_segment()
    with pytest.raises(CodecError, match="magic"):
        decode_segment(b"XXXX" + blob[4:])
    with pytest.raises(CodecError, match="format version 9"):
        decode_segment(blob[:4] + b"\x09" + blob[5:])
    with pytest.raises(CodecError, match="limit"):
        decode_segment(blob, max_body=10)


def _forged(body, rows, bounds=(0, 0, 0, 0)):
    """A segment whose header and checksum are right around a hand-made body (as a buggy writer could make)."""
    return columnar._frame(body, rows, bounds, 1)


@given(st.binary(max_size=300), st.integers(0, 50))
@settings(max_examples=400, deadline=None)
def test_authentic_but_malformed_bodies_are_codec_errors(body, rows):
    try:
        out = decode_segment(_forged(body, rows))
    except CodecError:
        return
    assert len(out) == rows  # decodable only if the body really holds `rows` rows


def test_forged_run_length_cannot_allocate_without_bound():
    row = MetaRow(1, 1.0, "t", "k", "put", 1, 1, 1)
    body = columnar._body(encode_segment([row, row._replace(lsn=2)]), 1 << 20)[0]
    r = columnar._Reader(body)
    first = r.section()
    for _ in range(3):  # the LSN delta runs: count, values, lengths
        r.section()
    # One run of delta +1 (zigzag 2) claiming 2^60 rows instead of 1.
    huge = (columnar._section(first) + columnar._section(b"\x01") + columnar._section(b"\x02")
            + columnar._section(columnar._slow_uvarint(1 << 60)) + body[r.pos:])
    with pytest.raises(CodecError, match="run lengths"):
        decode_segment(_forged(huge, 2, (1, 2, 1_000_000, 1_000_000)))


def test_bounds_in_the_header_are_checked_against_the_rows():
    rows, blob = _sample_segment()
    body = columnar._body(blob, 1 << 20)[0]
    info = segment_info(blob)
    lie = (info.min_lsn, info.max_lsn + 1, round(info.min_time * 1e6), round(info.max_time * 1e6))
    with pytest.raises(CodecError, match="bounds"):
        decode_segment(_forged(body, len(rows), lie))


@pytest.mark.parametrize("field, value", [
    ("lsn", -1), ("lsn", 1 << 63), ("lsn", 1.5), ("lsn", "7"),
    ("time", float("nan")), ("time", float("inf")), ("time", "now"), ("time", None), ("time", 1e300),
    ("table", None), ("table", 3), ("key", b"bytes"), ("key", "\ud800"), ("op", None), ("op", 1),
    ("key_version", 0), ("key_version", -1), ("key_version", 1 << 32), ("key_version", "1"),
    ("size", -1), ("size", 1 << 63), ("stored_size", 2.0),
])
def test_invalid_values_are_refused_on_encode(field, value):
    good = MetaRow(1, 1.0, "t", "k", "put", 1, 10, 40)
    with pytest.raises(CodecError):
        encode_segment([good, good._replace(**{field: value})])


def test_header_layout():
    rows, blob = _sample_segment()
    magic, version, codec, flags, n, body_len = struct.unpack_from(">4sBBHII", blob)
    assert (magic, version, codec, flags, n) == (b"CSMS", 1, columnar.BODY_ZSTD, 0, len(rows))
    assert len(columnar._body(blob, 1 << 20)[0]) == body_len
    assert columnar.HEADER_SIZE == 56


def _time_mode(rows):
    r = columnar._Reader(columnar._body(encode_segment(rows), 1 << 30)[0])
    for _ in range(4):  # first LSN and the LSN delta runs
        r.section()
    return r.section()[0]


def test_time_encoding_follows_the_series():
    regular = [MetaRow(i, 1_700_000_000 + i * 60.0, "t", "k", "put", 1, 1, 40) for i in range(500)]
    rnd = random.Random(7)
    us, poisson = 1_700_000_000_000_000, []
    for i in range(500):
        us += int(rnd.expovariate(1 / 5000))
        poisson.append(MetaRow(i, us / 1e6, "t", "k", "put", 1, 1, 40))
    assert _time_mode(regular) == columnar.TIME_DELTA_OF_DELTA
    assert _time_mode(poisson) == columnar.TIME_RISING
    jitter = _quantised([r._replace(time=r.time - (0.004 if i % 2 else 0)) for i, r in enumerate(poisson)])
    assert _time_mode(jitter) == columnar.TIME_DELTA
    for rows in (regular, poisson, jitter):
        assert decode_segment(encode_segment(rows)) == rows


def test_unknown_time_mode_is_refused():
    rows, blob = _sample_segment()
    body = columnar._body(blob, 1 << 20)[0]
    r = columnar._Reader(body)
    for _ in range(4):
        r.section()
    mode_at = r.pos + 1  # past the section's length byte
    forged = body[:mode_at] + b"\x05" + body[mode_at + 1:]
    info = segment_info(blob)
    bounds = (info.min_lsn, info.max_lsn, round(info.min_time * 1e6), round(info.max_time * 1e6))
    with pytest.raises(CodecError, match="unknown time encoding 5"):
        decode_segment(_forged(forged, len(rows), bounds))
