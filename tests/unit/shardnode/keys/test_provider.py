"""Wrapped key versions, the embedded KEK provider and the key cache, with real `cryptography`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chronoshard.shardnode.keys.keyring import derive_table_key
from chronoshard.shardnode.keys.provider import (
    EmbeddedKeyProvider,
    FixedLatencyProvider,
    KeyCache,
    KeyUnavailable,
    unwrap_key,
    wrap_key,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.integration.client.shards import publish

KEK = os.urandom(32)
MASTER = os.urandom(32)


@pytest.mark.parametrize("alg", ["A256GCM", "A256KW"])
def test_wrap_unwrap_round_trip(alg: str) -> None:
    blob = wrap_key(KEK, MASTER, 7, alg)
    assert MASTER not in blob
    assert unwrap_key(KEK, blob, 7) == MASTER


@pytest.mark.parametrize("alg", ["A256GCM", "A256KW"])
def test_wrong_kek_version_or_damage_is_refused_without_key_bytes(alg: str) -> None:
    blob = wrap_key(KEK, MASTER, 7, alg)
    bad = [
        (os.urandom(32), blob, 7),  # another KEK
        (KEK, blob, 8),  # asked for another version
        (KEK, blob[:-1] + bytes([blob[-1] ^ 1]), 7),  # flipped bit
        (KEK, blob[:20], 7),  # truncated
        (KEK, b"garbage", 7),
    ]
    for kek, b, v in bad:
        with pytest.raises(KeyUnavailable) as info:
            unwrap_key(kek, b, v)
        assert MASTER.hex() not in str(info.value) and KEK.hex() not in str(info.value)


def test_gcm_binds_the_version_into_the_tag() -> None:
    blob = bytearray(wrap_key(KEK, MASTER, 7))
    blob[5:9] = (8).to_bytes(4, "big")  # relabel the blob as version 8
    with pytest.raises(KeyUnavailable):
        unwrap_key(KEK, bytes(blob), 8)


def test_bad_inputs_to_wrap() -> None:
    with pytest.raises(ValueError):
        wrap_key(KEK[:16], MASTER, 1)
    with pytest.raises(ValueError):
        wrap_key(KEK, MASTER[:31], 1)
    with pytest.raises(ValueError):
        wrap_key(KEK, MASTER, 0)
    with pytest.raises(ValueError):
        wrap_key(KEK, MASTER, 1, "ROT13")


def test_embedded_provider_reads_kubelet_layout_and_follows_kek_rotation(tmp_path: Path) -> None:
    publish(tmp_path / "kek", {"kek.key": KEK})
    publish(tmp_path / "keyring", {"v1.wrapped": wrap_key(KEK, MASTER, 1)})
    p = EmbeddedKeyProvider(tmp_path / "kek", tmp_path / "keyring")
    assert p.unwrap("orders", 1) == derive_table_key(MASTER, "orders")
    assert p.unwrap("orders", 1) != p.unwrap("users", 1)
    assert KEK.hex() not in repr(p)
    with pytest.raises(KeyUnavailable, match="version 2"):
        p.unwrap("orders", 2)
    # The KEK Secret is rotated and the keyring rewrapped: the provider follows without a restart.
    kek2 = os.urandom(32)
    publish(tmp_path / "kek", {"kek.key": kek2})
    with pytest.raises(KeyUnavailable, match="does not unwrap"):
        p.unwrap("orders", 1)
    publish(tmp_path / "keyring", {"v1.wrapped": wrap_key(kek2, MASTER, 1, "A256KW")})
    assert p.unwrap("orders", 1) == derive_table_key(MASTER, "orders")


def test_embedded_provider_missing_or_short_kek(tmp_path: Path) -> None:
    publish(tmp_path / "keyring", {"v1.wrapped": wrap_key(KEK, MASTER, 1)})
    p = EmbeddedKeyProvider(tmp_path / "kek", tmp_path / "keyring")
    with pytest.raises(KeyUnavailable, match="cannot read the KEK"):
        p.unwrap("t", 1)
    publish(tmp_path / "kek", {"kek.key": KEK[:10]})
    with pytest.raises(KeyUnavailable, match="10 bytes"):
        p.unwrap("t", 1)


class CountingProvider:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def unwrap(self, table: str, version: int, blob: bytes | None = None) -> bytes:
        self.calls.append((table, version))
        return derive_table_key(MASTER, f"{table}/{version}")


def test_key_cache_hits_misses_and_capacity() -> None:
    prov = CountingProvider()
    kc = KeyCache(prov, capacity=2)
    k = kc.get("a", 1)
    assert kc.get("a", 1) == k and prov.calls == [("a", 1)]
    kc.get("b", 1)
    kc.get("c", 1)  # evicts one of a, b
    assert len([t for t in ("a", "b", "c") if (t, 1) in kc]) == 2
    assert (kc.hits, kc.misses) == (1, 3)
    assert "key" not in repr(kc).lower().replace("keycache", "")


def test_prefetched_key_is_kept_and_counted_when_used() -> None:
    prov = CountingProvider()
    kc = KeyCache(prov, capacity=3)
    kc.get("a", 1)
    kc.get("b", 1)
    assert kc.prefetch("p", 1, score=0.9) is True
    assert kc.prefetch("p", 1, score=0.9) is False  # already held: no second unwrap
    kc.get("c", 1)  # the cache is full: an unscored key goes, the prefetched one stays
    assert ("p", 1) in kc
    calls = len(prov.calls)
    kc.get("p", 1)
    assert len(prov.calls) == calls and kc.prefetch_used == 1


def test_fixed_latency_provider_delegates() -> None:
    inner = CountingProvider()
    p = FixedLatencyProvider(inner, 0.001)
    assert p.unwrap("t", 3) == derive_table_key(MASTER, "t/3")
    assert p.calls == 1 and inner.calls == [("t", 3)]


class SlowProvider(CountingProvider):
    """Blocks every unwrap until released, so tests can line threads up."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.release = threading.Event()
        self.entered = threading.Event()

    def unwrap(self, table: str, version: int, blob: bytes | None = None) -> bytes:
        self.entered.set()
        assert self.release.wait(10)
        return super().unwrap(table, version, blob)

    def check(self, version: int, blob: bytes | None = None) -> None:
        pass


def test_concurrent_misses_share_one_unwrap_and_prefetch_skips_inflight() -> None:
    from concurrent.futures import ThreadPoolExecutor

    prov = SlowProvider()
    kc = KeyCache(prov, capacity=4)
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(kc.get, "a", 1) for _ in range(4)]
        assert prov.entered.wait(10)
        assert kc.prefetch("a", 1, 0.9) is False  # being unwrapped by a reader: no second unwrap
        prov.release.set()
        keys = {f.result(10) for f in futs}
    assert len(keys) == 1 and prov.calls == [("a", 1)]
    assert (kc.hits, kc.misses) == (0, 4)  # all four readers waited for the unwrap


def test_unwrap_false_resize_retain_stats_and_hook() -> None:
    from chronoshard.shardnode.keys.provider import KeyNotHeld

    seen: list[tuple[str, float]] = []
    kc = KeyCache(CountingProvider(), capacity=4, on_unwrap=lambda path, s: seen.append((path, s)))
    with pytest.raises(KeyNotHeld):
        kc.get("a", 1, unwrap=False)
    for t, v in (("a", 1), ("b", 1), ("c", 2)):
        kc.get(t, v)
    kc.prefetch("d", 2, 0.5)
    assert [p for p, _ in seen] == ["demand", "demand", "demand", "prefetch"] and all(s >= 0 for _, s in seen)
    assert kc.get("a", 1, unwrap=False) == kc.get("a", 1)
    kc.retain([2])
    assert ("a", 1) not in kc and ("b", 1) not in kc and ("c", 2) in kc and ("d", 2) in kc
    kc.resize(1)
    assert kc.held == 1
    with pytest.raises(ValueError):
        kc.resize(0)
    assert kc.stats() == {"capacity": 1, "held": 1, "hits": 2, "misses": 3, "prefetched": 1, "prefetchUsed": 0}
    # once a keyring is adopted, a key of a version outside it is served but not kept
    kc.resize(4)
    kc.adopt({2: b"blob"})
    assert kc.get("x", 1) and ("x", 1) not in kc
    kc.get("x", 2)
    assert ("x", 2) in kc


def test_key_cache_keeps_the_aead_with_its_key_and_drops_them_together() -> None:
    from chronoshard.shardnode.keys.provider import KeyNotHeld

    prov = CountingProvider()
    kc = KeyCache(prov, capacity=2)
    aead = kc.aead("a", 1)
    assert kc.aead("a", 1) is aead and kc.aead("a", 1, unwrap=False) is aead  # built once, per unwrap
    nonce = os.urandom(12)
    assert aead.decrypt(nonce, AESGCM(kc.get("a", 1)).encrypt(nonce, b"x", b""), b"") == b"x"
    assert prov.calls == [("a", 1)] and (kc.hits, kc.misses) == (3, 1)  # aead and get share the counters
    kc.get("b", 1)
    kc.get("c", 1)  # full: evicts a or b, with its AEAD
    gone = next(t for t in ("a", "b") if (t, 1) not in kc)
    with pytest.raises(KeyNotHeld):
        kc.aead(gone, 1, unwrap=False)
    if gone == "a":
        assert kc.aead("a", 1) is not aead  # unwrapped again: a new AEAD, not the evicted one
    kc.retain([2])  # the version left the keyring: every key and AEAD of it goes
    assert kc.held == 0
    for t in ("a", "b", "c"):
        with pytest.raises(KeyNotHeld):
            kc.aead(t, 1, unwrap=False)
    kc.get("d", 2)
    kc.resize(1)
    kc.aead("e", 2)  # capacity 1: d and its AEAD go
    with pytest.raises(KeyNotHeld):
        kc.aead("d", 2, unwrap=False)


def test_key_cache_serves_but_does_not_keep_an_aead_outside_the_keyring() -> None:
    kc = KeyCache(CountingProvider(), capacity=4)
    kc.adopt({2: b"blob"})
    assert kc.aead("x", 1) is not kc.aead("x", 1)  # version 1 left the keyring: usable now, never kept
    assert kc.held == 0


def test_embedded_check_unwraps_the_version_key_without_keeping_it(tmp_path: Path) -> None:
    publish(tmp_path / "kek", {"kek.key": KEK})
    publish(tmp_path / "keyring", {"v1.wrapped": wrap_key(KEK, MASTER, 1), "v2.wrapped": b"junk"})
    p = EmbeddedKeyProvider(tmp_path / "kek", tmp_path / "keyring")
    p.check(1)
    for v, msg in ((2, "not a chronoshard wrapped key"), (3, "no wrapped key for version 3")):
        with pytest.raises(KeyUnavailable, match=msg):
            p.check(v)
    slow = FixedLatencyProvider(p, 0.0)
    slow.check(1)
    assert slow.calls == 0


def test_held_aead_is_the_lock_free_hit_path_and_every_hit_is_counted() -> None:
    from chronoshard.shardnode.keys.provider import READ_BUFFER

    prov = CountingProvider()
    kc = KeyCache(prov, capacity=4)
    assert kc.held_aead("a", 1) is None and prov.calls == [] and kc.misses == 0  # never unwraps, not a miss
    aead = kc.aead("a", 1)
    reads = 3 * READ_BUFFER + 5
    assert all(kc.held_aead("a", 1) is aead for _ in range(reads))
    assert len(kc._reads) < READ_BUFFER  # drained into the policy as it filled, not kept
    assert kc.hits == reads and kc.stats()["hits"] == reads and prov.calls == [("a", 1)]


def test_buffered_hits_reach_the_policy_before_it_chooses_a_victim() -> None:
    """A key read only through the lock-free path still counts as used when an eviction is decided."""
    prov = CountingProvider()
    kc = KeyCache(prov, capacity=3)
    kc.get("a", 1)
    kc.get("b", 1)
    assert kc.prefetch("p", 1, score=0.9) is True
    kc.held_aead("p", 1)  # buffered: the prefetched key is used
    assert kc.prefetch_used == 1
    kc.held_aead("p", 1)
    assert kc.prefetch_used == 1 and kc.hits == 2  # used once, hit twice


def test_a_hot_key_read_lock_free_outlives_cold_ones() -> None:
    kc = KeyCache(CountingProvider(), capacity=4)
    kc.get("hot", 1)
    for i in range(40):
        for _ in range(20):
            assert kc.held_aead("hot", 1) is not None
        kc.get(f"cold-{i}", 1)  # a stream of keys read once each: the hot one must stay
    assert ("hot", 1) in kc
