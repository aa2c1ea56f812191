"""Integrity verifier: full and sampled scans find tampering; the digest compares shard contents."""

from chronoshard.shardnode.node.store import connect
from chronoshard.shardnode.node.verify import Digest, run_verify

from tests.support.stores import flip_frame_bit, open_store, ring


async def _store_with(tmp_path, n, keyring):
    s, holder = open_store(tmp_path, keyring)
    for i in range(n):
        await s.put("t", f"k{i}", f"v{i}".encode())
    return s, holder


async def test_full_verify_passes_on_clean_store(tmp_path):
    s, holder = await _store_with(tmp_path, 20, ring(1, (1,)))
    s.close()
    rep = run_verify(connect(tmp_path / "blocks.sqlite3"), holder.keyring)
    j = rep.to_json()
    assert j["passed"] and j["scanned"] == 20 and j["ok"] == 20 and j["digest"]["blocks"] == 20


async def test_flipped_bit_and_bad_checksum_and_missing_version_are_reported(tmp_path):
    s, holder = await _store_with(tmp_path, 10, ring(1, (1,)))
    holder.keyring = ring(2, (1, 2), generation=2)
    await s.put("t", "new", b"on-v2")
    s.close()
    conn = connect(tmp_path / "blocks.sqlite3")
    flip_frame_bit(conn, "t", "k3", 30 * 8)
    conn.execute("UPDATE blocks SET checksum = zeroblob(16) WHERE key = 'k5'")
    rep = run_verify(conn, ring(2, (2,), generation=3))  # version 1 gone: 8 blocks undecryptable
    j = rep.to_json()
    assert not j["passed"] and j["scanned"] == 11 and j["ok"] == 1
    reasons = {p["key"]: p["reason"] for p in j["problems"]}
    assert reasons["k3"] == "missing-key" and j["missingKey"] == 10
    rep = run_verify(conn, holder.keyring)
    reasons = {p["key"]: p["reason"] for p in rep.to_json()["problems"]}
    assert reasons == {"k3": "tag", "k5": "checksum"} and rep.corrupt == 2 and rep.ok == 9


async def test_sampled_verify_checks_only_the_sample_but_digests_everything(tmp_path):
    s, holder = await _store_with(tmp_path, 30, ring(1, (1,)))
    s.close()
    conn = connect(tmp_path / "blocks.sqlite3")
    rep = run_verify(conn, holder.keyring, sample=7)
    assert rep.mode == "sample" and rep.scanned == 7 and rep.digest["blocks"] == 30
    assert rep.digest["root"] == run_verify(conn, holder.keyring).digest["root"]


async def test_digest_is_independent_of_key_version_but_not_of_content(tmp_path):
    a, ha = await _store_with(tmp_path / "a", 15, ring(1, (1,)))
    b, hb = await _store_with(tmp_path / "b", 15, ring(4, (4,)))
    c, hc = await _store_with(tmp_path / "c", 15, ring(1, (1,)))
    await c.put("t", "k7", b"different")
    for s in (a, b, c):
        s.close()
    da = run_verify(connect(tmp_path / "a" / "blocks.sqlite3"), ha.keyring).digest
    db = run_verify(connect(tmp_path / "b" / "blocks.sqlite3"), hb.keyring).digest
    dc = run_verify(connect(tmp_path / "c" / "blocks.sqlite3"), hc.keyring).digest
    assert da["root"] == db["root"] and da["root"] != dc["root"]
    differing = [k for k in da["buckets"] if da["buckets"][k] != dc["buckets"].get(k)]
    assert len(differing) == 1  # the changed block's keyspace bucket, and only that one


def test_empty_digest_is_stable():
    assert Digest().result()["root"] == Digest().result()["root"]
    assert Digest().result()["blocks"] == 0


async def test_sampled_verify_finds_a_tampered_block_when_it_is_sampled(tmp_path):
    s, holder = await _store_with(tmp_path, 12, ring(1, (1,)))
    s.close()
    conn = connect(tmp_path / "blocks.sqlite3")
    flip_frame_bit(conn, "t", "k4", 200)
    rep = run_verify(conn, holder.keyring, sample=12)  # the whole store, in random order
    assert rep.scanned == 12 and rep.corrupt == 1 and rep.problems[0]["key"] == "k4"


async def test_verify_stops_when_asked(tmp_path):
    import pytest
    from chronoshard.shardnode.node.verify import VerifyCancelled

    s, holder = await _store_with(tmp_path, 300, ring(1, (1,)))
    s.close()
    calls = []

    def stop_on_second_check():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(VerifyCancelled):
        run_verify(connect(tmp_path / "blocks.sqlite3"), holder.keyring, should_stop=stop_on_second_check)
    assert len(calls) == 2  # checked every 256 blocks, not per block
