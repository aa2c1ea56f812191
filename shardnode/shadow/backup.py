"""The cold tier in object storage: immutable segment objects plus versioned manifests (docs/object-storage.md).

Layout under the store's prefix:

- ``segments/<firstLsn>-<lastLsn>-<digest>.seg``: one exported batch of history versions (B1's columnar metadata
  segment + the sealed history frames). The name carries the LSN range and the first 16 hex digits of the
  content's SHA-256, so a retried upload of the same batch writes the same object and no object is ever replaced
  by other bytes.
- ``dictionaries/<table>/<id>.zdict``: the zstd dictionaries the frames were compressed with.
- ``manifests/<generation>.json``: the list of segments and dictionaries that make up the backup. Written last,
  one new object per export (never rewritten), so an upload interrupted at any point leaves the previous manifest
  and everything it lists untouched; a reader trusts only what the newest readable manifest lists.

Layout functions are pure; ``export_batch``, ``read_manifest``, ``restore_point`` and ``prune`` do the I/O.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import tempfile
import time as _time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .columnar import MetaRow, decode_segment, encode_segment, segment_info
from .objectstore import ObjectNotFound, ObjectStore, ObjectStoreError
from .tiers import COLD_BUCKET_SECONDS, floor_to

log = logging.getLogger(__name__)

FORMAT = 1
SEGMENT_MAGIC = b"CSBK"
_SEG_HEAD = struct.Struct(">4sBI")  # magic, format, metadata length
_LEN = struct.Struct(">I")
SEGMENTS, MANIFESTS, DICTIONARIES = "segments/", "manifests/", "dictionaries/"
_SEGMENT_RE = re.compile(r"segments/(\d{20})-(\d{20})-([0-9a-f]{16})\.seg")
_MANIFEST_RE = re.compile(r"manifests/(\d{12})\.json")
NO_FRAME_OPS = frozenset({"delete"})


class BackupError(ValueError):
    """A segment or manifest is malformed, or does not match what the manifest says of it."""


class ManifestConflict(BackupError):
    """Another writer committed the same manifest generation first."""


# ---- the input of an export ------------------------------------------------------------------
@dataclass(frozen=True)
class ExportBatch:
    """What the history store hands to the cold tier: versions (metadata + sealed frame, None for deletes)."""

    rows: Sequence[MetaRow]
    frames: Sequence[bytes | None]
    dictionaries: Sequence[tuple[str, bytes]] = ()  # (table, zstd dictionary) the frames may name

    def __post_init__(self) -> None:
        if not self.rows:
            raise BackupError("an export batch needs at least one version")
        if len(self.rows) != len(self.frames):
            raise BackupError("an export batch needs one frame (or None) per row")
        for row, frame in zip(self.rows, self.frames, strict=True):
            # A delete has no content; a rewrap may come without a frame (its content is the previous version's).
            if row.op in NO_FRAME_OPS and frame is not None:
                raise BackupError(f"version {row.lsn} is a delete but has a frame")
            if frame is None and row.op not in NO_FRAME_OPS and row.op != "rewrap":
                raise BackupError(f"version {row.lsn} ({row.op}) has no frame")

    @property
    def first_lsn(self) -> int:
        """The lowest LSN in the batch."""
        return min(r.lsn for r in self.rows)

    @property
    def last_lsn(self) -> int:
        """The highest LSN in the batch."""
        return max(r.lsn for r in self.rows)


# ---- segments (pure) ---------------------------------------------------------------------------
def encode_segment_object(rows: Sequence[MetaRow], frames: Sequence[bytes | None]) -> bytes:
    """A segment object: header, the columnar metadata, then one length-prefixed frame per row (0: none)."""
    meta = encode_segment(list(rows))
    parts = [_SEG_HEAD.pack(SEGMENT_MAGIC, FORMAT, len(meta)), meta]
    for frame in frames:
        parts.append(_LEN.pack(len(frame) if frame else 0))
        if frame:
            parts.append(frame)
    return b"".join(parts)


def _split_segment(blob: bytes) -> tuple[bytes, int]:
    """The metadata bytes of a segment object and the offset of its first frame."""
    if len(blob) < _SEG_HEAD.size:
        raise BackupError("segment shorter than its header")
    magic, fmt, meta_len = _SEG_HEAD.unpack_from(blob)
    if magic != SEGMENT_MAGIC or fmt != FORMAT:
        raise BackupError("not a segment object of a known format")
    pos = _SEG_HEAD.size + meta_len
    if pos > len(blob):
        raise BackupError("segment truncated inside its metadata")
    return blob[_SEG_HEAD.size:pos], pos


def _frames(blob: bytes, pos: int, count: int) -> list[bytes | None]:
    frames: list[bytes | None] = []
    for _ in range(count):
        if pos + _LEN.size > len(blob):
            raise BackupError("segment truncated inside its frames")
        (n,) = _LEN.unpack_from(blob, pos)
        pos += _LEN.size
        if pos + n > len(blob):
            raise BackupError("segment truncated inside a frame")
        frames.append(bytes(blob[pos:pos + n]) if n else None)
        pos += n
    if pos != len(blob):
        raise BackupError("segment has bytes after its last frame")
    return frames


def decode_segment_object(blob: bytes) -> tuple[list[MetaRow], list[bytes | None]]:
    """Rows and frames of a segment object; BackupError if it is malformed or truncated."""
    meta, pos = _split_segment(blob)
    try:
        rows = decode_segment(meta)
    except Exception as exc:  # the codec's own error types; any of them means the same here
        raise BackupError(f"segment metadata does not decode: {exc}") from None
    return rows, _frames(blob, pos, len(rows))


def segment_frames(blob: bytes) -> list[bytes | None]:
    """Only the frames of a segment object (its row count read from the metadata header, nothing decoded)."""
    meta, pos = _split_segment(blob)
    try:
        rows = segment_info(meta).rows
    except Exception as exc:
        raise BackupError(f"segment metadata header does not decode: {exc}") from None
    return _frames(blob, pos, rows)


def segment_name(first_lsn: int, last_lsn: int, content: bytes) -> str:
    """The object name of a segment: LSN range and a content digest."""
    return f"{SEGMENTS}{first_lsn:020d}-{last_lsn:020d}-{hashlib.sha256(content).hexdigest()[:16]}.seg"


def parse_segment_name(name: str) -> tuple[int, int]:
    """The (first, last) LSN a segment name carries; BackupError if it is not a segment name."""
    m = _SEGMENT_RE.fullmatch(name)
    if not m:
        raise BackupError(f"not a segment name: {name!r}")
    return int(m.group(1)), int(m.group(2))


def manifest_name(generation: int) -> str:
    """The object name of manifest ``generation``."""
    return f"{MANIFESTS}{generation:012d}.json"


def dictionary_name(table: str, dict_id: int) -> str:
    """The object name of a table's zstd dictionary."""
    return f"{DICTIONARIES}{table}/{dict_id:08x}.zdict"


# ---- manifests (pure) -------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentEntry:
    """One segment as the manifest lists it."""

    name: str
    first_lsn: int
    last_lsn: int
    first_time: float
    last_time: float
    rows: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """JSON form in the manifest."""
        return {"name": self.name, "firstLsn": self.first_lsn, "lastLsn": self.last_lsn,
                "firstTime": self.first_time, "lastTime": self.last_time, "rows": self.rows,
                "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class DictionaryEntry:
    """One zstd dictionary as the manifest lists it."""

    table: str
    id: int
    name: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A committed backup: its generation and everything a reader may use."""

    generation: int
    created: float
    segments: tuple[SegmentEntry, ...] = ()
    dictionaries: tuple[DictionaryEntry, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def last_lsn(self) -> int:
        """The highest LSN any listed segment holds (0 for an empty backup)."""
        return max((s.last_lsn for s in self.segments), default=0)

    @property
    def time_range(self) -> tuple[float, float] | None:
        """(oldest, newest) version time the backup holds."""
        if not self.segments:
            return None
        return min(s.first_time for s in self.segments), max(s.last_time for s in self.segments)

    def to_json(self) -> dict[str, Any]:
        """The manifest object's JSON."""
        return {"format": FORMAT, "generation": self.generation, "created": self.created, "labels": self.labels,
                "segments": [s.to_json() for s in self.segments],
                "dictionaries": [{"table": d.table, "id": d.id, "name": d.name, "sha256": d.sha256}
                                 for d in self.dictionaries]}


def encode_manifest(manifest: Manifest) -> bytes:
    """Canonical JSON bytes of a manifest."""
    return json.dumps(manifest.to_json(), sort_keys=True, separators=(",", ":")).encode()


def decode_manifest(blob: bytes) -> Manifest:
    """A manifest from its JSON; BackupError if it is not one of a known format."""
    try:
        doc = json.loads(blob)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise BackupError("manifest of an unknown format")
        segments = tuple(SegmentEntry(s["name"], int(s["firstLsn"]), int(s["lastLsn"]), float(s["firstTime"]),
                                      float(s["lastTime"]), int(s["rows"]), int(s["bytes"]), str(s["sha256"]))
                         for s in doc["segments"])
        dicts = tuple(DictionaryEntry(str(d["table"]), int(d["id"]), str(d["name"]), str(d["sha256"]))
                      for d in doc["dictionaries"])
        labels = {str(k): str(v) for k, v in (doc.get("labels") or {}).items()}
        manifest = Manifest(int(doc["generation"]), float(doc["created"]), segments, dicts, labels)
    except BackupError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"manifest does not parse: {exc}") from None
    for s in segments:
        if parse_segment_name(s.name) != (s.first_lsn, s.last_lsn):
            raise BackupError(f"manifest entry {s.name!r} disagrees with its name")
    return manifest


def next_manifest(previous: Manifest | None, segment: SegmentEntry, dictionaries: Iterable[DictionaryEntry],
                  labels: dict[str, str], now: float) -> Manifest:
    """The manifest after adding one segment (and any new dictionaries) to ``previous``."""
    segs = {s.name: s for s in (previous.segments if previous else ())}
    segs[segment.name] = segment
    dicts = {(d.table, d.id): d for d in (previous.dictionaries if previous else ())}
    for d in dictionaries:
        dicts.setdefault((d.table, d.id), d)
    merged = {**(previous.labels if previous else {}), **labels}
    return Manifest(generation=(previous.generation if previous else 0) + 1, created=now,
                    segments=tuple(sorted(segs.values(), key=lambda s: (s.first_lsn, s.last_lsn, s.name))),
                    dictionaries=tuple(sorted(dicts.values(), key=lambda d: (d.table, d.id))), labels=merged)


# ---- the state at a point (pure) --------------------------------------------------------------
@dataclass(frozen=True)
class RestoredVersion:
    """A key's state at the point: the sealed history frame to open at ``lsn`` (B1's open_version)."""

    table: str
    key: str
    lsn: int  # the LSN the frame was sealed for (the last write of the content)
    time: float
    key_version: int
    size: int
    frame: bytes


@dataclass
class _Pick:
    last_delete: int = -1  # the newest delete at the point
    framed: tuple[int, float, int, int, int, int] | None = None  # lsn, time, key_version, size, segment, row


def _visible(row: MetaRow, time: float | None, lsn: int | None, before: float | None) -> bool:
    return ((time is None or row.time <= time) and (lsn is None or row.lsn <= lsn)
            and (before is None or row.time < before))


def cold_point(t: float) -> float:
    """The point a restore at ``t`` reads the hourly cold tier at: the hour boundary at or before ``t``, exclusive
    (the state just before it) - the last point at which every key's state is exactly known (as timetravel does)."""
    return floor_to(t, COLD_BUCKET_SECONDS)


class StateBuilder:
    """Folds versions (in any order) into each key's state at a point (pure): versions with time ≤ ``time``,
    LSN ≤ ``lsn`` and time < ``before``, for each bound given.

    A key is live when its newest framed version is newer than its newest delete; a rewrap without a frame
    changes nothing (its content is the framed version before it).
    """

    def __init__(self, *, time: float | None = None, lsn: int | None = None, before: float | None = None) -> None:
        self.time, self.lsn, self.before = time, lsn, before
        self._keys: dict[tuple[str, str], _Pick] = {}

    def add(self, segment: int, rows: Sequence[MetaRow], has_frame: Sequence[bool]) -> None:
        """Fold the rows of segment number ``segment``."""
        for i, (row, framed) in enumerate(zip(rows, has_frame, strict=True)):
            if not _visible(row, self.time, self.lsn, self.before):
                continue
            pick = self._keys.setdefault((row.table, row.key), _Pick())
            if row.op in NO_FRAME_OPS:
                pick.last_delete = max(pick.last_delete, row.lsn)
            elif framed and (pick.framed is None or row.lsn > pick.framed[0]):
                pick.framed = (row.lsn, row.time, int(row.key_version or 0), row.size, segment, i)

    def live(self) -> dict[tuple[str, str], tuple[int, float, int, int, int, int]]:
        """(table, key) → (lsn, time, key_version, size, segment, row) of the frame holding each live key's value."""
        return {k: p.framed for k, p in self._keys.items()
                if p.framed is not None and p.framed[0] > p.last_delete}


# ---- I/O ---------------------------------------------------------------------------------------
def list_manifests(store: ObjectStore) -> list[int]:
    """Committed manifest generations, newest first."""
    gens = []
    for info in store.list(MANIFESTS):
        m = _MANIFEST_RE.fullmatch(info.name)
        if m:
            gens.append(int(m.group(1)))
    return sorted(gens, reverse=True)


def read_manifest(store: ObjectStore) -> Manifest | None:
    """The newest manifest that reads back whole (None for an empty backup).

    A newest manifest that fails its checksum or does not parse is skipped with a warning: the one before it
    still lists a complete, consistent backup.
    """
    for gen in list_manifests(store):
        try:
            manifest = decode_manifest(store.get(manifest_name(gen)))
        except (BackupError, ObjectStoreError) as exc:
            log.warning("backup manifest %d unreadable (%s); using the previous one", gen, exc)
            continue
        if manifest.generation != gen:
            log.warning("backup manifest %d names generation %d; skipped", gen, manifest.generation)
            continue
        return manifest
    return None


def upload_segment(store: ObjectStore, batch: ExportBatch) -> tuple[SegmentEntry, list[DictionaryEntry]]:
    """Upload a batch's segment and dictionaries (not yet part of the backup until a manifest lists them)."""
    from .codec import dictionary_id  # B1's id, so the manifest names a dictionary as the frames do

    dicts = []
    for table, dict_bytes in batch.dictionaries:
        did = dictionary_id(dict_bytes)
        d = DictionaryEntry(table, did, dictionary_name(table, did), hashlib.sha256(dict_bytes).hexdigest())
        if not store.exists(d.name):
            store.put(d.name, dict_bytes)
        dicts.append(d)
    content = encode_segment_object(batch.rows, batch.frames)
    name = segment_name(batch.first_lsn, batch.last_lsn, content)
    store.put(name, content)
    times = [r.time for r in batch.rows]
    entry = SegmentEntry(name, batch.first_lsn, batch.last_lsn, min(times), max(times), len(batch.rows),
                         len(content), hashlib.sha256(content).hexdigest())
    return entry, dicts


def commit_manifest(store: ObjectStore, previous: Manifest | None, segment: SegmentEntry,
                    dictionaries: Iterable[DictionaryEntry], labels: dict[str, str] | None = None,
                    now: float | None = None) -> Manifest:
    """Write the next manifest generation (only if no writer wrote it first: ManifestConflict otherwise)."""
    manifest = next_manifest(previous, segment, dictionaries, labels or {}, _time.time() if now is None else now)
    try:
        store.put(manifest_name(manifest.generation), encode_manifest(manifest), if_absent=True,
                  content_type="application/json")
    except ObjectStoreError as exc:
        if exc.code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            raise ManifestConflict(f"manifest generation {manifest.generation} was written by another writer") \
                from None
        raise
    return manifest


def export_batch(store: ObjectStore, batch: ExportBatch, labels: dict[str, str] | None = None) -> Manifest:
    """Add a batch to the backup: segment and dictionaries first, then a new manifest (write-then-manifest)."""
    previous = read_manifest(store)
    segment, dicts = upload_segment(store, batch)
    return commit_manifest(store, previous, segment, dicts, labels)


def load_dictionaries(store: ObjectStore, manifest: Manifest) -> list[tuple[str, bytes]]:
    """The (table, dictionary) pairs a manifest lists, checked against the manifest's digests."""
    out = []
    for d in manifest.dictionaries:
        blob = store.get(d.name)
        if hashlib.sha256(blob).hexdigest() != d.sha256:
            raise BackupError(f"dictionary {d.name!r} does not match the manifest")
        out.append((d.table, blob))
    return out


def _fetch_segment(store: ObjectStore, entry: SegmentEntry) -> bytes:
    try:
        blob = store.get(entry.name)
    except ObjectNotFound:
        raise BackupError(f"segment {entry.name!r} listed by the manifest is missing") from None
    if hashlib.sha256(blob).hexdigest() != entry.sha256 or len(blob) != entry.bytes:
        raise BackupError(f"segment {entry.name!r} does not match the manifest")
    return blob


def restore_point(store: ObjectStore, *, time: float | None = None, lsn: int | None = None,
                  before: float | None = None, manifest: Manifest | None = None,
                  spool_dir: Path | None = None) -> Iterator[RestoredVersion]:
    """Every live key's state at the point (newest version with time ≤ ``time``, LSN ≤ ``lsn``, time < ``before``).

    Yielded segment by segment (keys in order within one); each key once.

    Each segment is downloaded once: its metadata is folded into the state, its bytes spooled to a temporary
    file, and the winning frames are read back from the spool, so memory holds metadata, not the data.
    """
    manifest = manifest if manifest is not None else read_manifest(store)
    if manifest is None:
        return
    state = StateBuilder(time=time, lsn=lsn, before=before)
    with tempfile.TemporaryDirectory(prefix="chronoshard-restore-", dir=spool_dir) as spool:
        paths = []
        for i, entry in enumerate(manifest.segments):
            blob = _fetch_segment(store, entry)
            rows, frames = decode_segment_object(blob)
            state.add(i, rows, [f is not None for f in frames])
            path = Path(spool) / f"{i}.seg"
            path.write_bytes(blob)
            paths.append(path)
        live = state.live()
        by_segment: dict[int, list[tuple[str, str]]] = {}
        for k, pick in live.items():
            by_segment.setdefault(pick[4], []).append(k)
        # One segment's bytes at a time: only its share of the live state is in memory.
        for seg in sorted(by_segment):
            frames = segment_frames(paths[seg].read_bytes())
            for k in sorted(by_segment[seg]):
                f_lsn, f_time, kv, size, _, row = live[k]
                frame = frames[row]
                if frame is None:  # a pick is only ever a framed row; a spool file changed under us
                    raise BackupError(f"segment {manifest.segments[seg].name!r} changed while restoring")
                yield RestoredVersion(k[0], k[1], f_lsn, f_time, kv, size, frame)


def prune(store: ObjectStore, keep: int = 3) -> list[str]:
    """Delete manifests older than the newest ``keep`` and objects none of the kept ones lists; returns names.

    Call only from the backup's single writer, between exports: a segment uploaded but not yet committed by a
    concurrent export would look unlisted.
    """
    gens = list_manifests(store)
    kept: list[Manifest] = []
    for gen in gens[:keep]:
        try:
            kept.append(decode_manifest(store.get(manifest_name(gen))))
        except (BackupError, ObjectStoreError):
            continue
    if not kept:
        return []
    listed = {s.name for m in kept for s in m.segments} | {d.name for m in kept for d in m.dictionaries}
    gone = [manifest_name(g) for g in gens[keep:]]
    for prefix in (SEGMENTS, DICTIONARIES):
        gone += [o.name for o in store.list(prefix) if o.name not in listed]
    for name in gone:
        store.delete(name)
    return gone
