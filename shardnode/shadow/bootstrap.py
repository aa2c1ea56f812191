"""`chronoshard-shadow bootstrap`: build a node data directory from a shadow's backup in object storage.

Every live key at the point in time is opened with the source's keyring (history frames, sealing.open_version) and
written with the node's own store code (node.store.put_in_txn, sealed under the node keyring's primary), so the
result is byte-for-byte a node's format. The store is built in ``<data-dir>/.bootstrap-tmp`` and its one file is
renamed into place at the end: the rename is the commit point, a crash before it leaves nothing a node would open
(the next run discards the leftover), and a data dir that already holds a bootstrapped store is left as it is.
Exit codes: 0 done (or already done), 2 refused (bad settings, or a data dir holding other data), 1 failed.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..keys.crypto import IntegrityError
from ..keys.keyring import Keyring, KeyringError, MissingKeyVersion, load_keyring
from ..keys.provider import EmbeddedKeyProvider, KeyCache
from ..node import store as node_store
from . import backup
from .codec import CodecError, Compressor
from .config import ColdSettings, SettingsError, parse_settings
from .objectstore import ObjectStore, ObjectStoreError
from .sealing import open_version

log = logging.getLogger("chronoshard.shadow.bootstrap")

TMP_DIR = ".bootstrap-tmp"
META_KEY = "bootstrap"  # meta-table row recording where the store came from (the "done" marker)
IGNORED = {"lost+found", TMP_DIR}  # a fresh ext4 volume has lost+found
BATCH = 500  # blocks per store transaction
IN_FLIGHT = 2  # batches queued to the writer at once (bounds the plaintext held in memory)


class BootstrapRefused(RuntimeError):
    """The settings are wrong, or the data dir holds data this command must not touch."""


@dataclass(frozen=True)
class BootstrapSettings:
    """bootstrap.json, checked."""

    cold: ColdSettings
    namespace: str
    name: str
    shard: int
    point_in_time: float | None
    tables: tuple[str, ...] | None

    def object_prefix(self) -> str:
        """Where the source shard's backup is: the cold prefix, then the shard ordinal (as the shadow writes it)."""
        return "/".join(p for p in (self.cold.prefix, str(self.shard)) if p)

    def describe(self) -> dict[str, Any]:
        """What the marker records (no credential)."""
        return {"endpoint": self.cold.endpoint, "bucket": self.cold.bucket, "prefix": self.object_prefix(),
                "source": {"namespace": self.namespace, "name": self.name}, "shard": self.shard,
                "pointInTime": self.point_in_time, "tables": list(self.tables) if self.tables else None}


def parse_time(raw: Any) -> float | None:
    """RFC 3339 (with an offset or Z) as unix seconds; None stays None."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise BootstrapRefused("pointInTime must be an RFC 3339 string or null")
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BootstrapRefused("pointInTime must be RFC 3339, e.g. 2026-12-02T10:00:00Z") from None
    if parsed.tzinfo is None:
        raise BootstrapRefused("pointInTime needs an offset (Z or +hh:mm)")
    return parsed.timestamp()


def shard_from_pod_name(pod_name: str | None) -> int | None:
    """The StatefulSet ordinal at the end of a pod name (``orders-3`` → 3)."""
    m = re.fullmatch(r".+-(\d+)", pod_name or "")
    return int(m.group(1)) if m else None


def parse_bootstrap(doc: Any, pod_name: str | None = None) -> BootstrapSettings:
    """bootstrap.json → BootstrapSettings; BootstrapRefused naming the field otherwise.

    The cold settings are under ``cold`` (or ``coldStorage``), shaped as shadow.json's ``cold``; the shard is
    ``shards.index``, else the ordinal of ``$POD_NAME``.
    """
    if not isinstance(doc, dict):
        raise BootstrapRefused("bootstrap.json must be a JSON object")
    unknown = set(doc) - {"cold", "coldStorage", "source", "shards", "pointInTime", "tables"}
    if unknown:
        raise BootstrapRefused(f"bootstrap.json: unknown fields {sorted(unknown)}")
    raw_cold = doc.get("cold", doc.get("coldStorage"))
    if raw_cold is None:
        raise BootstrapRefused("bootstrap.json: cold (the object storage settings) is required")
    try:
        cold = parse_settings({"cold": raw_cold}).cold
    except SettingsError as exc:
        raise BootstrapRefused(str(exc)) from None
    assert cold is not None
    source = doc.get("source")
    if not isinstance(source, dict) or not all(isinstance(source.get(k), str) and source[k]
                                               for k in ("namespace", "name")):
        raise BootstrapRefused("source must be {\"namespace\": ..., \"name\": ...}")
    shards = doc.get("shards")
    shard = shards.get("index") if isinstance(shards, dict) else shard_from_pod_name(pod_name)
    if isinstance(shard, bool) or not isinstance(shard, int) or shard < 0:
        raise BootstrapRefused("shards.index must be a shard ordinal (or $POD_NAME must end in one)")
    tables = doc.get("tables")
    if tables is not None and (not isinstance(tables, list) or not all(isinstance(t, str) for t in tables)):
        raise BootstrapRefused("tables must be null or a list of table names")
    return BootstrapSettings(cold, source["namespace"], source["name"], shard, parse_time(doc.get("pointInTime")),
                             tuple(tables) if tables else None)


# ---- the data dir ----------------------------------------------------------------------------------
def existing_marker(data_dir: Path) -> dict[str, Any] | None:
    """The bootstrap marker of a store already in ``data_dir``; BootstrapRefused if the dir holds other data."""
    entries = sorted(p.name for p in data_dir.iterdir() if p.name not in IGNORED) if data_dir.exists() else []
    if not entries:
        return None
    db = data_dir / node_store.DB_NAME
    if db.exists():
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            marker = node_store.get_meta(conn, META_KEY)
        except sqlite3.Error:
            marker = None
        finally:
            conn.close()
        if isinstance(marker, dict):
            return marker
    raise BootstrapRefused(f"data dir {data_dir} is not empty ({', '.join(entries[:5])}) and was not "
                           "bootstrapped; refusing to touch it")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_store(tmp: Path, keyring: Callable[[], Keyring | None], items: Iterable[tuple[str, str, bytes]],
                marker: dict[str, Any], batch: int = BATCH) -> int:
    """Write (table, key, plaintext) blocks into a node store in ``tmp`` with the node's code; returns the count."""
    store = node_store.Store(tmp, keyring, readers=1)
    count = 0
    in_flight: collections.deque[concurrent.futures.Future[None]] = collections.deque()

    def put_all(group: list[tuple[str, str, bytes]]) -> Callable[[sqlite3.Connection], None]:
        def job(conn: sqlite3.Connection) -> None:
            ring = store.current_keyring()
            for table, key, value in group:
                node_store.put_in_txn(conn, ring, table, key, value)
        return job

    try:
        pending: list[tuple[str, str, bytes]] = []
        for item in items:
            pending.append(item)
            count += 1
            if len(pending) >= batch:
                # The writer seals and commits one batch while this thread opens the next.
                in_flight.append(store.submit(put_all(pending)))
                pending = []
                while len(in_flight) > IN_FLIGHT:
                    in_flight.popleft().result()
        if pending:
            in_flight.append(store.submit(put_all(pending)))
        while in_flight:
            in_flight.popleft().result()  # every block committed (or the first error raised) ...
        # ... before the marker, which alone says the store is complete.
        store.submit(lambda conn: node_store.set_meta(conn, META_KEY, marker)).result()
    finally:
        store.close()
    # One file to rename: fold the WAL back into the database (the node turns WAL on again when it opens it).
    conn = sqlite3.connect(tmp / node_store.DB_NAME)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    with open(tmp / node_store.DB_NAME, "rb") as f:
        os.fsync(f.fileno())
    return count


def plaintexts(versions: Iterable[backup.RestoredVersion], keyring: Keyring, compressor: Compressor,
               tables: Sequence[str] | None) -> Iterator[tuple[str, str, bytes]]:
    """Open each restored history version with the source keyring (plaintext stays in memory, in this process)."""
    for v in versions:
        if tables is not None and v.table not in tables:
            continue
        yield v.table, v.key, open_version(keyring, v.table, v.key, v.lsn, v.frame, compressor)


def bootstrap(settings: BootstrapSettings, data_dir: Path, source_keyring: Keyring,
              node_keyring: Keyring | None = None, store: ObjectStore | None = None) -> dict[str, Any]:
    """Build ``data_dir`` from the backup (see the module docstring); returns a summary (no key, no value)."""
    marker = existing_marker(data_dir)
    if marker is not None:
        log.info("data dir %s was already bootstrapped from %s; nothing to do", data_dir, marker.get("prefix"))
        return {"status": "already-bootstrapped", **marker}
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / TMP_DIR
    if tmp.exists():
        log.info("discarding the leftover %s of an interrupted bootstrap", tmp)
        shutil.rmtree(tmp)
    tmp.mkdir()
    own = store is None
    cold = ColdSettings(**{**settings.cold.__dict__, "prefix": settings.object_prefix()})
    objects = store or ObjectStore(cold)
    started = time.monotonic()
    try:
        manifest = backup.read_manifest(objects)
        if manifest is None:
            raise BootstrapRefused(f"no backup under {settings.object_prefix()!r} in bucket {cold.bucket!r}")
        compressor = Compressor(dictionaries=None)
        for table, dict_bytes in backup.load_dictionaries(objects, manifest):
            compressor.add_dictionary(table, dict_bytes)
        # The backup is the hourly cold tier: a point reads at the hour boundary at or before it, where every
        # key's state is exact (the same point the shadow's own time-travel answers give).
        before = backup.cold_point(settings.point_in_time) if settings.point_in_time is not None else None
        versions = backup.restore_point(objects, before=before, manifest=manifest, spool_dir=tmp)
        info = {**settings.describe(), "effectivePoint": before, "manifest": manifest.generation,
                "lastLsn": manifest.last_lsn, "completed": time.time()}
        ring = node_keyring or source_keyring
        count = write_store(tmp, lambda: ring, plaintexts(versions, source_keyring, compressor, settings.tables),
                            info)
    finally:
        if own:
            objects.close()
    # The commit point: one rename of one file; then the temp dir (LOCK, spool) goes.
    os.replace(tmp / node_store.DB_NAME, data_dir / node_store.DB_NAME)
    _fsync_dir(data_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    summary = {"status": "bootstrapped", "blocks": count, "seconds": round(time.monotonic() - started, 3), **info}
    log.info("bootstrapped %s: %d blocks from manifest %d in %.1fs", data_dir, count, manifest.generation,
             summary["seconds"])
    return summary


# ---- command line ----------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    """Flags of ``chronoshard-shadow bootstrap``."""
    p = argparse.ArgumentParser(prog="chronoshard-shadow bootstrap",
                                description="build a node data dir from a shadow's backup in object storage")
    p.add_argument("--settings", required=True, help="bootstrap.json")
    p.add_argument("--data-dir", required=True, help="the node's (empty) data directory")
    p.add_argument("--keyring-dir", default="/etc/chronoshard/keyring", help="the source's keyring (opens history)")
    p.add_argument("--kek-dir", default=None, help="the KEK for a wrapped source keyring")
    p.add_argument("--node-keyring-dir", default=None,
                   help="keyring the blocks are sealed with (default: the source's)")
    p.add_argument("--node-kek-dir", default=None, help="the KEK for a wrapped node keyring")
    p.add_argument("--objectstore-dir", default=None,
                   help="the object-storage credentials (overrides bootstrap.json's cold.credentialsDir)")
    return p


def _load_ring(keyring_dir: str, kek_dir: str | None) -> Keyring:
    table_keys = KeyCache(EmbeddedKeyProvider(Path(kek_dir), Path(keyring_dir))) if kek_dir else None
    return load_keyring(Path(keyring_dir), table_keys)


def main(argv: list[str] | None = None) -> int:
    """Entry point (``argv`` may start with the word ``bootstrap``); returns the exit code."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["bootstrap"]:
        args_in = args_in[1:]
    args = parser().parse_args(args_in)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        doc = json.loads(Path(args.settings).read_text())
        settings = parse_bootstrap(doc, os.environ.get("POD_NAME"))
        if args.objectstore_dir:
            settings = dataclasses.replace(settings, cold=dataclasses.replace(
                settings.cold, credentials_dir=args.objectstore_dir))
        source = _load_ring(args.keyring_dir, args.kek_dir)
        node = _load_ring(args.node_keyring_dir, args.node_kek_dir) if args.node_keyring_dir else None
        summary = bootstrap(settings, Path(args.data_dir), source, node)
    except (BootstrapRefused, KeyringError, json.JSONDecodeError, OSError) as exc:
        log.error("bootstrap refused: %s", exc)
        return 2
    except (ObjectStoreError, backup.BackupError, IntegrityError, MissingKeyVersion, CodecError) as exc:
        log.error("bootstrap failed: %s", exc)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
