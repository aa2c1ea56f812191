"""Load the keyring directory (kubelet Secret layout), derive per-table keys, and watch for changes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import frames

log = logging.getLogger(__name__)

MANIFEST = "keyring.json"
KEY_SIZE = 32
STATES = ("primary", "decrypt-only")
TABLE_KEY_INFO = b"chronoshard/table-key/v1/"
# Bounded so a client inventing table names cannot grow memory without limit.
_AEAD_CACHE_MAX = 4096
_T = TypeVar("_T")


class KeyringError(ValueError):
    """The keyring directory could not be loaded; the message never contains key material."""


class MissingKeyVersion(LookupError):
    """A block names a key version this keyring does not hold (retired or not yet loaded)."""

    def __init__(self, version: int, message: str | None = None) -> None:
        super().__init__(message or f"key version {version} is not in the loaded keyring")
        self.version = version


class KeyVersionUnavailable(MissingKeyVersion):
    """A wrapped version is listed but its table key could not be unwrapped now (KEK or blob problem)."""

    def __init__(self, version: int, reason: str) -> None:
        super().__init__(version, f"key version {version} could not be unwrapped: {reason}")


class KeyUnavailable(LookupError):
    """A key version cannot be unwrapped (missing, corrupt, or wrapped under another KEK)."""


class KeyNotHeld(LookupError):
    """The table key is not in memory and the caller asked not to unwrap it here (e.g. on the event loop)."""


class TableKeys(Protocol):
    """The process-wide source of unwrapped table keys for wrapped versions (keyprovider.KeyCache)."""

    def get(self, table: str, version: int, unwrap: bool = True) -> bytes: ...
    def aead(self, table: str, version: int, unwrap: bool = True) -> AESGCM: ...
    def held_aead(self, table: str, version: int) -> AESGCM | None: ...
    def check(self, version: int, blob: bytes | None = None) -> None: ...
    def adopt(self, blobs: dict[int, bytes]) -> None: ...


@dataclass(frozen=True)
class KeyVersion:
    """One listed key version and its state; carries no key bytes."""

    id: int
    state: str
    created: str | None = None
    # Marked by a threat rotation: still decrypts, but must never encrypt again (docs/interfaces.md).
    compromised: bool = False


def derive_table_key(master: bytes, table: str) -> bytes:
    """HKDF-SHA256 table key for ``table`` from one version's 32-byte master key (docs/interfaces.md)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=TABLE_KEY_INFO + table.encode()).derive(master)


class Keyring:
    """An immutable loaded keyring: versions, the primary, and lazily derived per-table AEADs.

    Raw versions keep their version key here; wrapped versions keep only their blob (useless without the
    KEK) and get each table's AEAD from the process-wide ``table_keys`` cache (which unwraps on a miss).
    """

    def __init__(self, generation: int, versions: list[KeyVersion], keys: dict[int, bytes],
                 wrapped: Mapping[int, bytes] | None = None, table_keys: TableKeys | None = None) -> None:
        self.generation = generation
        self.versions = tuple(sorted(versions, key=lambda v: v.id))
        primaries = [v.id for v in self.versions if v.state == "primary"]
        if len(primaries) != 1:
            raise KeyringError(f"exactly one primary version required, found {len(primaries)}")
        self.primary = primaries[0]
        self.compromised = frozenset(v.id for v in self.versions if v.compromised)
        self.wrapped_blobs = dict(wrapped or {})
        self.wrapped = frozenset(self.wrapped_blobs)
        if self.wrapped and table_keys is None:
            raise KeyringError("wrapped versions need a key cache to unwrap table keys")
        self._table_keys = table_keys
        self.__keys = dict(keys)
        # (version, table) -> (AEAD, AAD prefix) for raw versions; the AAD prefix alone for wrapped ones.
        self._openers: dict[tuple[int, str], tuple[AESGCM, bytes]] = {}
        self._prefixes: dict[tuple[int, str], bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show key bytes
        ids = [v.id for v in self.versions]
        return f"Keyring(generation={self.generation}, primary={self.primary}, versions={ids})"

    def has(self, version: int) -> bool:
        """True if ``version`` can decrypt."""
        return version in self.__keys or version in self.wrapped

    def aead(self, version: int, table: str, unwrap: bool = True) -> AESGCM:
        """The AES-256-GCM instance for ``table`` under ``version``; MissingKeyVersion if not held.

        For a wrapped version with ``unwrap=False``, KeyNotHeld instead of a (slow) unwrap on a key-cache miss.
        """
        return self.opener(version, table, unwrap)[0]

    def opener(self, version: int, table: str, unwrap: bool = True) -> tuple[AESGCM, bytes]:
        """``aead(version, table)`` and the AAD prefix of that table's frames (frames.aad_prefix), in one lookup."""
        ident = (version, table)
        cached = self._openers.get(ident)  # raw versions only: wrapped ones never enter it
        if cached is not None:
            return cached
        table_keys = self._table_keys  # never None when there are wrapped versions (__init__ checks)
        if version in self.wrapped and table_keys is not None:
            # The key cache holds the AEAD with its table key, so it alone bounds how many live in memory; a held
            # key is the hot path (no lock, no unwrap), the rest may unwrap.
            aead = table_keys.held_aead(table, version)
            if aead is None:
                try:
                    aead = table_keys.aead(table, version, unwrap=unwrap)
                except KeyUnavailable as exc:
                    raise KeyVersionUnavailable(version, str(exc)) from None
            prefix = self._prefixes.get(ident)
            if prefix is None:
                prefix = self._remember(self._prefixes, (version, table), frames.aad_prefix(version, table))
            return aead, prefix
        master = self.__keys.get(version)
        if master is None:
            raise MissingKeyVersion(version)
        opener = (AESGCM(derive_table_key(master, table)), frames.aad_prefix(version, table))
        return self._remember(self._openers, (version, table), opener)

    def _remember(self, cache: dict[tuple[int, str], _T], ident: tuple[int, str], value: _T) -> _T:
        with self._lock:
            if len(cache) >= _AEAD_CACHE_MAX:
                cache.clear()
            cache[ident] = value
        return value

    def describe(self) -> dict[str, Any]:
        """The `/v1/keys` view of this keyring (no key material)."""
        return {
            "generation": self.generation,
            "primary": self.primary,
            "versions": [{"id": v.id, "state": v.state} for v in self.versions],
            "compromised": sorted(self.compromised),
            "wrapped": sorted(self.wrapped),
        }


def snapshot_dir(directory: Path) -> Path:
    """The directory to read from: the target of kubelet's ``..data`` symlink if present, else ``directory``."""
    data = directory / "..data"
    if data.is_symlink() or data.is_dir():
        return Path(os.path.realpath(data))
    return directory


def _manifest_header(text: str) -> tuple[int, list[Any]]:
    """The manifest's checked top level: (generation, the raw versions list)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyringError(f"{MANIFEST} is not valid JSON (line {exc.lineno})") from None
    if not isinstance(doc, dict):
        raise KeyringError(f"{MANIFEST} must be a JSON object")
    if doc.get("format") != 1:
        raise KeyringError(f"{MANIFEST}: unsupported format {doc.get('format')!r}")
    if doc.get("algorithm", "AES-256-GCM") != "AES-256-GCM":
        raise KeyringError(f"{MANIFEST}: unsupported algorithm {doc.get('algorithm')!r}")
    generation = doc.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise KeyringError(f"{MANIFEST}: generation must be a non-negative integer")
    raw_versions = doc.get("versions")
    if not isinstance(raw_versions, list) or not raw_versions:
        raise KeyringError(f"{MANIFEST}: versions must be a non-empty list")
    return generation, raw_versions


def _manifest_version(item: Any, seen: set[int]) -> KeyVersion:
    """One checked entry of the manifest's versions list (``seen``: the ids before it)."""
    if not isinstance(item, dict):
        raise KeyringError(f"{MANIFEST}: every version must be an object")
    vid, state = item.get("id"), item.get("state")
    if not isinstance(vid, int) or isinstance(vid, bool) or not 0 < vid <= 0xFFFFFFFF:
        raise KeyringError(f"{MANIFEST}: version id {vid!r} must be an integer in 1..2^32-1")
    if vid in seen:
        raise KeyringError(f"{MANIFEST}: version {vid} listed twice")
    if state not in STATES:
        raise KeyringError(f"{MANIFEST}: version {vid} has unknown state {state!r}")
    created = item.get("created")
    compromised = item.get("compromised", False)
    if not isinstance(compromised, bool):
        raise KeyringError(f"{MANIFEST}: version {vid} has a non-boolean compromised mark")
    return KeyVersion(vid, state, created if isinstance(created, str) else None, compromised)


def parse_manifest(text: str) -> tuple[int, list[KeyVersion]]:
    """Validate a keyring.json document; return (generation, versions)."""
    generation, raw_versions = _manifest_header(text)
    versions: list[KeyVersion] = []
    seen: set[int] = set()
    for item in raw_versions:
        version = _manifest_version(item, seen)
        seen.add(version.id)
        versions.append(version)
    if sum(v.state == "primary" for v in versions) != 1:
        raise KeyringError(f"{MANIFEST}: exactly one version must be primary")
    return generation, versions


def load_keyring(directory: Path, table_keys: TableKeys | None = None) -> Keyring:
    """Read one consistent snapshot of the keyring directory; KeyringError on any problem.

    Each version has exactly one of ``v<id>.key`` (raw) or ``v<id>.wrapped`` (under the KEK); every wrapped
    version is unwrapped once through ``table_keys`` (None: no KEK configured) so a wrong KEK fails here.
    """
    base = snapshot_dir(Path(directory))
    try:
        text = (base / MANIFEST).read_text()
    except OSError as exc:
        raise KeyringError(f"cannot read {MANIFEST}: {exc.strerror}") from None
    generation, versions = parse_manifest(text)
    keys: dict[int, bytes] = {}
    wrapped: dict[int, bytes] = {}
    for v in versions:
        raw, blob = base / f"v{v.id}.key", base / f"v{v.id}.wrapped"
        has_raw, has_blob = os.path.lexists(raw), os.path.lexists(blob)
        if has_raw and has_blob:
            raise KeyringError(f"version {v.id} has both v{v.id}.key and v{v.id}.wrapped; exactly one is allowed")
        if has_blob:
            if table_keys is None:
                raise KeyringError(f"version {v.id} is wrapped but no KEK directory is configured (--kek-dir)")
            try:
                wrapped[v.id] = blob.read_bytes()  # from this snapshot, with the manifest
            except OSError as exc:
                raise KeyringError(f"cannot read v{v.id}.wrapped: {exc.strerror}") from None
            try:
                table_keys.check(v.id, wrapped[v.id])
            except KeyUnavailable as exc:
                raise KeyringError(f"version {v.id} is wrapped but cannot be unwrapped: {exc}") from None
            continue
        try:
            material = raw.read_bytes()
        except OSError as exc:
            raise KeyringError(f"cannot read key file for version {v.id} (v{v.id}.key or v{v.id}.wrapped): "
                               f"{exc.strerror}") from None
        if len(material) != KEY_SIZE:
            # Report only the length, never the content.
            raise KeyringError(f"key file for version {v.id} holds {len(material)} bytes, expected {KEY_SIZE}")
        keys[v.id] = material
    return Keyring(generation, versions, keys, wrapped, table_keys)


def fingerprint(directory: Path) -> tuple[Any, ...]:
    """A cheap value that changes whenever the mounted keyring changes (symlink swap or file rewrite)."""
    directory = Path(directory)
    data = directory / "..data"
    target = os.readlink(data) if data.is_symlink() else None
    base = snapshot_dir(directory)
    entries: list[tuple[Any, ...]] = []
    try:
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            try:
                st = entry.stat()
            except OSError:
                continue
            entries.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_size))
    except OSError:
        entries.append(("<unreadable>",))
    return (target, tuple(entries))


class KeyringWatcher:
    """Holds the current keyring; reloads it when the directory changes and keeps the old one on error."""

    def __init__(self, directory: Path, on_reload: Callable[[Keyring | None, str | None], None] | None = None,
                 table_keys: TableKeys | None = None, kek_dir: Path | None = None) -> None:
        self.directory = Path(directory)
        self.table_keys = table_keys  # one per process, kept across reloads
        # A KEK change also triggers a reload, so a KEK that no longer unwraps the keyring is reported.
        self.kek_dir = Path(kek_dir) if kek_dir is not None else None
        self.keyring: Keyring | None = None
        self.load_error: str | None = None
        self._fingerprint: tuple[Any, ...] | None = None
        self._on_reload = on_reload

    def poll(self) -> bool:
        """Reload if the directory changed; return True if a new keyring was installed."""
        fp = fingerprint(self.directory)
        if self.kek_dir is not None:
            fp = (fp, fingerprint(self.kek_dir))
        if fp == self._fingerprint:
            return False
        self._fingerprint = fp
        try:
            ring = load_keyring(self.directory, self.table_keys)
        except KeyringError as exc:
            self.load_error = str(exc)
            if self.keyring is None:
                log.error("keyring load failed: %s", exc)
            else:
                log.error("keyring reload failed, keeping generation %s: %s", self.keyring.generation, exc)
            if self._on_reload:
                self._on_reload(None, self.load_error)
            return False
        if self.table_keys is not None:
            # Before the swap, so reads with the new keyring unwrap from its blobs; versions that left it go.
            self.table_keys.adopt(ring.wrapped_blobs)
        self.keyring = ring
        self.load_error = None
        log.info("keyring loaded: generation %s, primary %s, versions %s, wrapped %s",
                 ring.generation, ring.primary, [v.id for v in ring.versions], sorted(ring.wrapped))
        if self._on_reload:
            self._on_reload(ring, None)
        return True

    def describe(self) -> dict[str, Any]:
        """The `/v1/keys` body: loaded versions and the last load error (null if the last load worked)."""
        if self.keyring is None:
            body: dict[str, Any] = {"generation": None, "primary": None, "versions": [], "wrapped": []}
        else:
            body = self.keyring.describe()
        body["loadError"] = self.load_error
        return body

    async def run(self, interval: float) -> None:
        """Poll forever (cancel to stop); file reads run in a thread so the event loop never blocks."""
        while True:
            try:
                await asyncio.to_thread(self.poll)
            except Exception:  # a watcher crash would freeze the keyring forever; log and keep polling
                log.exception("keyring watcher poll failed")
            await asyncio.sleep(interval)
