"""Key-encryption keys: table key versions stored wrapped, a provider that unwraps them, and a key cache.

A KeyProvider turns (table, version) into the 32-byte table key. The embedded provider holds a KEK
from its own Secret (`kek.key`, 32 bytes) and the key versions wrapped under it (`v<id>.wrapped`
in the keyring directory); a KMS-backed provider only has to implement `unwrap`. Unwrapping is the
slow path, so the cache keeps a few unwrapped keys and evicts by recency, frequency and the
predictor's prefetch score. Key bytes never appear in an error, a log line or a repr.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Hashable, Mapping
from pathlib import Path
from typing import Any, Protocol

from chronoshard.shardnode.eviction import ScoredPolicy
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from .keyring import KEY_SIZE, KeyNotHeld, KeyUnavailable, derive_table_key, snapshot_dir

log = logging.getLogger(__name__)

__all__ = ["EmbeddedKeyProvider", "FixedLatencyProvider", "KeyCache", "KeyNotHeld", "KeyProvider", "KeyUnavailable",
           "MAX_KEY_CACHE", "key_cache_size_setting", "unwrap_key", "wrap_key"]

KEK_FILE = "kek.key"
_MAGIC = b"CSWK"
ALG_GCM, ALG_KW = 1, 2
ALGORITHMS = {"A256GCM": ALG_GCM, "A256KW": ALG_KW}
_AAD = b"chronoshard/wrapped-key/v1/"


class KeyProvider(Protocol):
    """Source of unwrapped table keys (the embedded KEK file today, a KMS later).

    ``unwrap`` returns the 32-byte table key; ``check`` unwraps the version key once and discards it (used when a
    keyring loads, so a wrong KEK is caught then). ``blob`` is the wrapped version as the loaded keyring read it
    (None: the provider finds it itself). Both raise KeyUnavailable, never with key bytes in the message.
    """

    def unwrap(self, table: str, version: int, blob: bytes | None = None) -> bytes: ...
    def check(self, version: int, blob: bytes | None = None) -> None: ...


def _check_key(name: str, key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"{name} must be {KEY_SIZE} bytes, got {len(key)}")


def wrap_key(kek: bytes, key: bytes, version: int, algorithm: str = "A256GCM") -> bytes:
    """Wrap one 32-byte key version under the KEK; the blob records the algorithm and the version id.

    A256GCM (default) authenticates the version id as associated data, so a blob cannot be moved to
    another version; A256KW (RFC 3394) is there for KMSs that only speak key wrap.
    """
    _check_key("KEK", kek)
    _check_key("key", key)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}")
    if not 0 < version <= 0xFFFFFFFF:
        raise ValueError("version must be in 1..2^32-1")
    header = _MAGIC + struct.pack(">BI", ALGORITHMS[algorithm], version)
    if algorithm == "A256GCM":
        nonce = os.urandom(12)
        return header + nonce + AESGCM(kek).encrypt(nonce, key, _AAD + header)
    return header + aes_key_wrap(kek, key)


def unwrap_key(kek: bytes, blob: bytes, version: int) -> bytes:
    """Unwrap a blob made by `wrap_key` for `version`; KeyUnavailable if it is not exactly that."""
    _check_key("KEK", kek)
    if len(blob) < 9 or blob[:4] != _MAGIC:
        raise KeyUnavailable(f"wrapped key for version {version} is not a chronoshard wrapped key")
    alg, blob_version = struct.unpack(">BI", blob[4:9])
    if blob_version != version:
        raise KeyUnavailable(f"wrapped key file for version {version} holds version {blob_version}")
    header, body = blob[:9], blob[9:]
    try:
        if alg == ALG_GCM:
            key = AESGCM(kek).decrypt(body[:12], body[12:], _AAD + header)
        elif alg == ALG_KW:
            key = aes_key_unwrap(kek, body)
        else:
            raise KeyUnavailable(f"wrapped key for version {version} uses unknown algorithm {alg}")
    except (InvalidTag, InvalidUnwrap, ValueError):
        raise KeyUnavailable(f"wrapped key for version {version} does not unwrap under this KEK") from None
    if len(key) != KEY_SIZE:
        raise KeyUnavailable(f"wrapped key for version {version} has the wrong length")
    return key


class EmbeddedKeyProvider:
    """KEK from its own mounted Secret (`kek.key`); wrapped versions from the keyring dir (`v<id>.wrapped`)."""

    def __init__(self, kek_dir: Path, keyring_dir: Path) -> None:
        self.kek_dir, self.keyring_dir = Path(kek_dir), Path(keyring_dir)

    def __repr__(self) -> str:
        return f"EmbeddedKeyProvider(kek_dir={str(self.kek_dir)!r}, keyring_dir={str(self.keyring_dir)!r})"

    def _kek(self) -> bytes:
        # Read per unwrap from the current ..data snapshot: a KEK rotation needs no restart.
        try:
            kek = (snapshot_dir(self.kek_dir) / KEK_FILE).read_bytes()
        except OSError as exc:
            raise KeyUnavailable(f"cannot read the KEK file: {exc.strerror}") from None
        if len(kek) != KEY_SIZE:
            raise KeyUnavailable(f"the KEK file holds {len(kek)} bytes, expected {KEY_SIZE}")
        return kek

    def _version_key(self, version: int, blob: bytes | None) -> bytes:
        if blob is None:
            try:
                blob = (snapshot_dir(self.keyring_dir) / f"v{version}.wrapped").read_bytes()
            except OSError as exc:
                raise KeyUnavailable(f"no wrapped key for version {version}: {exc.strerror}") from None
        return unwrap_key(self._kek(), blob, version)

    def unwrap(self, table: str, version: int, blob: bytes | None = None) -> bytes:
        """The table key of `table` under key version `version`."""
        return derive_table_key(self._version_key(version, blob), table)

    def check(self, version: int, blob: bytes | None = None) -> None:
        """KeyUnavailable unless `version`'s blob unwraps under the current KEK."""
        self._version_key(version, blob)


class FixedLatencyProvider:
    """Adds a fixed delay to every unwrap: stands for a KMS round trip in benchmarks."""

    def __init__(self, inner: KeyProvider, latency_s: float) -> None:
        self.inner, self.latency_s = inner, latency_s
        self.calls = 0

    def unwrap(self, table: str, version: int, blob: bytes | None = None) -> bytes:
        """Sleep, then delegate."""
        self.calls += 1
        time.sleep(self.latency_s)
        return self.inner.unwrap(table, version, blob)

    def check(self, version: int, blob: bytes | None = None) -> None:
        """Sleep, then delegate (a KMS would need a round trip here too); not counted in ``calls``."""
        time.sleep(self.latency_s)
        self.inner.check(version, blob)


MAX_KEY_CACHE = 65536  # the largest keyCacheSize a node.json or cache.json may set
# Hits on held keys are buffered and given to the eviction policy in batches of about this many (see KeyCache).
READ_BUFFER = 256
# A key read n times between two drains is one request to the policy repeated min(n, this) times: enough for
# the frequency its experts count (S3-FIFO caps it at 3), without a policy request per block read.
TOUCHES_PER_DRAIN = 4


def key_cache_size_setting(settings: Mapping[str, Any], current: int) -> int:
    """``keyCacheSize`` from a settings document if present and valid (1..MAX_KEY_CACHE), else ``current``."""
    if "keyCacheSize" not in settings:
        return current
    size = settings["keyCacheSize"]
    if isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_KEY_CACHE:
        return size
    log.error("config keyCacheSize=%r ignored: must be an integer in 1..%d", size, MAX_KEY_CACHE)
    return current


class KeyCache:
    """A few unwrapped table keys, each with its AES-GCM instance, evicted by the scored policy (recency, frequency,
    prefetch score): a key and its AEAD enter and leave together, so the capacity bounds both.

    Thread-safe: the node reads from several threads and the cache unwraps in worker threads. Concurrent
    misses for one key share one unwrap. ``on_unwrap(path, seconds)`` ("demand" or "prefetch") observes
    the slow path's latency. ``adopt`` pins the wrapped blobs of the keyring in force, so a later bad
    keyring update (refused at load) cannot break unwraps for the one still in force.

    A hit is the hot path (every block a reader opens): ``held_aead`` reads the key table without the lock and
    appends the key to a read buffer; the buffer is drained into the policy under the lock every READ_BUFFER
    hits and before anything the policy decides (an insert, an eviction, stats), as Caffeine's read buffers do.
    Running the policy per hit cost three times the decrypt of a 4 KiB block (tests/bench/bench_node_crypto.py).
    """

    def __init__(self, provider: KeyProvider, capacity: int = 64,
                 on_unwrap: Callable[[str, float], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.provider, self.capacity, self.on_unwrap = provider, capacity, on_unwrap
        # ident -> (table key, its AEAD): built once per unwrap, not per block (an AESGCM costs about 1 µs)
        self._keys: dict[Hashable, tuple[bytes, AESGCM]] = {}
        self._policy = ScoredPolicy()
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, threading.Event] = {}
        self._blobs: dict[int, bytes] = {}  # wrapped version blobs of the keyring in force (not secret)
        self._hits = self.misses = self.prefetched = self._prefetch_used = 0
        self._unused_prefetch: set[Hashable] = set()
        # Hits not yet given to the policy; deque.append and popleft are atomic, so readers need no lock.
        self._reads: deque[Hashable] = deque()

    def __repr__(self) -> str:  # never the keys themselves
        return f"KeyCache(capacity={self.capacity}, held={len(self._keys)})"

    @property
    def held(self) -> int:
        """Table keys in memory now."""
        return len(self._keys)

    @property
    def hits(self) -> int:
        """Reads that found their table key in memory."""
        with self._lock:
            self._drain()
            return self._hits

    @property
    def prefetch_used(self) -> int:
        """Prefetched table keys that a read used afterwards."""
        with self._lock:
            self._drain()
            return self._prefetch_used

    def held_aead(self, table: str, version: int) -> AESGCM | None:
        """The table key's AEAD if it is in memory, else None (never unwraps): the lock-free hit path."""
        ident = (table, version)
        held = self._keys.get(ident)  # one dict read: atomic under the GIL
        if held is None:
            return None
        reads = self._reads
        reads.append(ident)
        # A reader that finds the lock taken leaves the drain to the holder or to the next reader.
        if len(reads) >= READ_BUFFER and self._lock.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._lock.release()
        return held[1]

    def _drain(self) -> None:
        # under the lock: hand the buffered hits to the policy, each key in the order of its last read
        reads = self._reads
        n = len(reads)
        if not n:
            return
        counts: dict[Hashable, int] = {}
        for _ in range(n):  # only what is there now: readers may append meanwhile
            ident = reads.popleft()
            counts[ident] = counts.pop(ident, 0) + 1  # re-inserted: the dict ends in last-read order
        self._hits += n
        for ident, times in counts.items():
            if ident in self._keys:
                for _ in range(min(times, TOUCHES_PER_DRAIN)):
                    self._hit(ident)

    def _evict_to(self, capacity: int) -> None:
        self._drain()  # the victim is chosen on every read so far
        while len(self._keys) > capacity:
            victim = self._policy.victim()
            self._policy.remove(victim)
            self._keys.pop(victim, None)
            self._unused_prefetch.discard(victim)

    def _put(self, ident: tuple[str, int], key: bytes, score: float) -> tuple[bytes, AESGCM]:
        held = (key, AESGCM(key))
        with self._lock:
            if ident in self._keys or (self._blobs and ident[1] not in self._blobs):
                # Held already, or its version left the keyring while it was being unwrapped: not kept.
                return self._keys.get(ident, held)
            self._evict_to(self.capacity - 1)
            self._keys[ident] = held
            self._policy.insert(ident, KEY_SIZE, prefetch_score=score)
            if score > 0:
                self._unused_prefetch.add(ident)
        return held

    def _hit(self, ident: Hashable) -> None:
        # under the lock
        self._policy.touch(ident)
        if ident in self._unused_prefetch:
            self._unused_prefetch.discard(ident)
            self._prefetch_used += 1

    def _unwrap(self, ident: tuple[str, int], path: str) -> bytes:
        t0 = time.perf_counter()
        key = self.provider.unwrap(ident[0], ident[1], self._blobs.get(ident[1]))
        if self.on_unwrap is not None:
            self.on_unwrap(path, time.perf_counter() - t0)
        return key

    def _claim(self, ident: tuple[str, int]) -> threading.Event | None:
        # under the lock: None if another thread is already unwrapping ``ident``, else our claim on it
        if ident in self._inflight:
            return None
        done = self._inflight[ident] = threading.Event()
        return done

    def _release(self, ident: tuple[str, int], done: threading.Event) -> None:
        with self._lock:
            self._inflight.pop(ident, None)
        done.set()

    def get(self, table: str, version: int, unwrap: bool = True) -> bytes:
        """The table key: from memory, else unwrapped now (the slow path; KeyNotHeld if ``unwrap`` is False)."""
        return self._held(table, version, unwrap)[0]

    def aead(self, table: str, version: int, unwrap: bool = True) -> AESGCM:
        """The AES-GCM instance of the table key, kept with it (same hits, misses and unwraps as ``get``)."""
        aead = self.held_aead(table, version)
        return aead if aead is not None else self._held(table, version, unwrap)[1]

    def _held(self, table: str, version: int, unwrap: bool) -> tuple[bytes, AESGCM]:
        ident = (table, version)
        counted = False
        while True:
            with self._lock:
                self._drain()
                held = self._keys.get(ident)
                if held is not None:
                    if not counted:
                        self._hits += 1
                    self._hit(ident)
                    return held
                if not unwrap:
                    raise KeyNotHeld(f"table key of {table!r} under version {version} is not held")
                if not counted:
                    self.misses += 1
                    counted = True
                claim = self._claim(ident)
                in_flight = self._inflight[ident]  # our claim, or another thread's unwrap of the same key
            if claim is None:
                in_flight.wait()
                continue  # held now, or the other unwrap failed and this thread tries itself
            try:
                key = self._unwrap(ident, "demand")
                return self._put(ident, key, 0.0)
            finally:
                self._release(ident, claim)

    def prefetch(self, table: str, version: int, score: float) -> bool:
        """Unwrap ahead of need (call from a worker); False if already held or being unwrapped."""
        ident = (table, version)
        with self._lock:
            if ident in self._keys:
                return False
            claim = self._claim(ident)
        if claim is None:
            return False
        try:
            key = self._unwrap(ident, "prefetch")
            self._put(ident, key, score)
        finally:
            self._release(ident, claim)
        with self._lock:
            self.prefetched += 1
        return True

    def check(self, version: int, blob: bytes | None = None) -> None:
        """KeyUnavailable unless ``version`` unwraps (keyring load); nothing is kept."""
        self.provider.check(version, blob)

    def adopt(self, blobs: dict[int, bytes]) -> None:
        """A keyring with these wrapped versions is now in force: unwrap from its blobs, forget other versions."""
        with self._lock:
            self._blobs = dict(blobs)
        self.retain(blobs)

    def retain(self, versions: Collection[int]) -> None:
        """Drop the table keys of every version not in ``versions`` (they left the keyring)."""
        keep = set(versions)
        with self._lock:
            self._drain()
            for ident in [i for i in self._keys if i[1] not in keep]:  # type: ignore[index]
                self._policy.remove(ident)
                self._keys.pop(ident, None)
                self._unused_prefetch.discard(ident)

    def resize(self, capacity: int) -> None:
        """A new capacity (live setting); evicts down to it at once."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        with self._lock:
            self.capacity = capacity
            self._evict_to(capacity)

    def stats(self) -> dict[str, Any]:
        """Counters for `/v1/cache` and metrics (no key material)."""
        with self._lock:
            self._drain()
            return {"capacity": self.capacity, "held": len(self._keys), "hits": self._hits, "misses": self.misses,
                    "prefetched": self.prefetched, "prefetchUsed": self._prefetch_used}

    def __contains__(self, ident: object) -> bool:
        return ident in self._keys
