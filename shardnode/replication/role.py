"""The node's replication role document (docs/mirroring.md, "The role document"): parsing, validation and the
transition rules between two documents. Pure: no I/O, no SQL.

A document is kept as its normalised JSON (``Role.doc``), so the stored form, the answer and the comparison for
idempotence are one and the same value.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

PRIMARY, MIRROR, FENCED = "primary", "mirror", "fenced"
ROLES = (PRIMARY, MIRROR, FENCED)
MODES = ("sync", "async")
MAX_LSN = (1 << 63) - 1
CONSUMER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
SHARDSET_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
URL_RE = re.compile(r"https?://[^\s/]+")  # scheme and authority only: the node's base URL

DEFAULT_DOC: dict[str, Any] = {"term": 0, "role": PRIMARY}

_COMMON = {"term", "role", "healthSampleSeconds"}
_FIELDS = {
    PRIMARY: _COMMON | {"mode", "mirrors", "maxLagSeconds", "syncTimeoutSeconds", "holdTimeoutSeconds", "lease",
                        "lsnFloor"},
    MIRROR: _COMMON | {"mode", "source", "consumer", "divergeLsn"},
    FENCED: _COMMON | {"primaryShardSet"},
}


class RoleInvalid(ValueError):
    """The document is malformed (answered 400 invalid_body)."""


class StaleTerm(Exception):
    """The document's term is lower than the stored one (409 stale_term)."""

    def __init__(self, term: int, current: int) -> None:
        super().__init__(f"term {term} is lower than the node's term {current}")
        self.term, self.current = term, current


class TermConflict(Exception):
    """Another document with the same term is in force (409 term_conflict)."""

    def __init__(self, term: int) -> None:
        super().__init__(f"term {term} already holds another role document")
        self.term = term


@dataclass(frozen=True)
class Role:
    """A validated role document."""

    doc: dict[str, Any]

    @property
    def term(self) -> int:
        """The MirrorSet term this document belongs to."""
        return int(self.doc["term"])

    @property
    def role(self) -> str:
        """primary, mirror or fenced."""
        return str(self.doc["role"])

    @property
    def source_url(self) -> str | None:
        """The primary node's base URL (mirror only)."""
        src = self.doc.get("source")
        return str(src["url"]) if isinstance(src, dict) else None

    @property
    def server_name(self) -> str | None:
        """The name to check the source's certificate against (mirror only, optional)."""
        src = self.doc.get("source")
        return src.get("serverName") if isinstance(src, dict) else None

    @property
    def source_shardset(self) -> str | None:
        """``namespace/name`` of the ShardSet this mirror follows."""
        src = self.doc.get("source")
        return src.get("shardSet") if isinstance(src, dict) else None

    @property
    def consumer(self) -> str | None:
        """The slot name this mirror uses on its source."""
        c = self.doc.get("consumer")
        return str(c) if c is not None else None

    @property
    def diverge_lsn(self) -> int | None:
        """The new primary's promotedAtLsn when rejoining (mirror only)."""
        d = self.doc.get("divergeLsn")
        return int(d) if d is not None else None

    @property
    def lsn_floor(self) -> int:
        """Every LSN this primary assigns is above this (primary only)."""
        return int(self.doc.get("lsnFloor") or 0)

    @property
    def mirrors(self) -> tuple[str, ...]:
        """The consumer slots of this primary's mirrors."""
        return tuple(self.doc.get("mirrors") or ())

    @property
    def primary_shardset(self) -> str | None:
        """Where writes go instead (fenced only)."""
        p = self.doc.get("primaryShardSet")
        return str(p) if p is not None else None


DEFAULT = Role(dict(DEFAULT_DOC))


def _int(doc: dict[str, Any], name: str, *, required: bool = False, nullable: bool = False,
         low: int = 0) -> None:
    if name not in doc:
        if required:
            raise RoleInvalid(f"{name} is required")
        return
    value = doc[name]
    if value is None and nullable:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_LSN:
        raise RoleInvalid(f"{name} must be an integer between {low} and {MAX_LSN}")


def _seconds(doc: dict[str, Any], name: str) -> None:
    value = doc.get(name)
    if name in doc and (not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 86400):
        raise RoleInvalid(f"{name} must be a number of seconds between 0 (excluded) and 86400")


def _text(value: Any, name: str, pattern: re.Pattern[str] | None = None) -> None:
    if not isinstance(value, str) or not value or len(value) > 512:
        raise RoleInvalid(f"{name} must be a non-empty string")
    if pattern is not None and not pattern.fullmatch(value):
        raise RoleInvalid(f"{name} is not valid: {value!r}")


def _mode(doc: dict[str, Any]) -> None:
    if "mode" in doc and doc["mode"] not in MODES:
        raise RoleInvalid("mode must be sync or async")


def _primary(doc: dict[str, Any]) -> None:
    _mode(doc)
    mirrors = doc.get("mirrors", [])
    if not isinstance(mirrors, list) or len(mirrors) > 16:
        raise RoleInvalid("mirrors must be a list of at most 16 consumer names")
    for m in mirrors:
        _text(m, "mirrors[]", CONSUMER_RE)
    for name in ("maxLagSeconds", "syncTimeoutSeconds", "holdTimeoutSeconds"):
        _seconds(doc, name)
    _int(doc, "lsnFloor")
    lease = doc.get("lease")
    if lease is not None:
        if not isinstance(lease, dict) or set(lease) - {"namespace", "name", "durationSeconds"}:
            raise RoleInvalid("lease must be {namespace, name, durationSeconds}")
        _text(lease.get("namespace"), "lease.namespace")
        _text(lease.get("name"), "lease.name")
        _seconds(lease, "durationSeconds")


def _mirror(doc: dict[str, Any]) -> None:
    _mode(doc)
    src = doc.get("source")
    if not isinstance(src, dict) or set(src) - {"url", "serverName", "shardSet"}:
        raise RoleInvalid("source must be {url, serverName, shardSet}")
    _text(src.get("url"), "source.url", URL_RE)
    if "serverName" in src and src["serverName"] is not None:
        _text(src["serverName"], "source.serverName")
    if "shardSet" in src:
        _text(src["shardSet"], "source.shardSet", SHARDSET_RE)
    _text(doc.get("consumer"), "consumer", CONSUMER_RE)
    _int(doc, "divergeLsn", nullable=True)


def _fenced(doc: dict[str, Any]) -> None:
    p = doc.get("primaryShardSet")
    if p is not None:
        _text(p, "primaryShardSet", SHARDSET_RE)


_CHECKS = {PRIMARY: _primary, MIRROR: _mirror, FENCED: _fenced}


def parse_role(doc: Any) -> Role:
    """Validate a role document; RoleInvalid with a message naming the field."""
    if not isinstance(doc, dict):
        raise RoleInvalid("the body must be a JSON object")
    role = doc.get("role")
    if role not in ROLES:
        raise RoleInvalid("role must be primary, mirror or fenced")
    unknown = set(doc) - _FIELDS[role]
    if unknown:
        raise RoleInvalid(f"unknown fields for role {role}: {sorted(unknown)}")
    _int(doc, "term", required=True)
    _seconds(doc, "healthSampleSeconds")
    _CHECKS[role](doc)
    return Role(dict(doc))


class Change(enum.Enum):
    """What applying a new document means for the node."""

    SAME = "same"  # the stored document again: nothing happens
    UPDATE = "update"  # same role, other settings (nothing to stop or start but the settings)
    PROMOTE = "promote"  # mirror or fenced -> primary: stop replicating, lift the next LSN
    FENCE = "fence"  # -> fenced: refuse writes, drain the writer queue, answer the demotion token
    FOLLOW = "follow"  # -> mirror (first time, rejoin, a new source): stream, rewinding past divergeLsn first


def _same_source(a: Role, b: Role) -> bool:
    """Two mirror documents of one term following the same primary through the same slot (they may differ in the
    source's address, the mode, the sampling and divergeLsn, which only matters when following begins)."""
    return a.source_shardset == b.source_shardset and a.consumer == b.consumer


def _follows_fence(fenced: Role, mirror: Role) -> bool:
    """A mirror document that follows the primary its fence named (or the fence named none)."""
    named = fenced.primary_shardset
    return named is None or named == mirror.source_shardset


def transition(current: Role, new: Role) -> Change:
    """The rule between the stored document and a new one; StaleTerm or TermConflict when it is refused."""
    if new.term < current.term:
        raise StaleTerm(new.term, current.term)
    if new.doc == current.doc:
        return Change.SAME
    if new.term == current.term:
        if current.role == PRIMARY and new.role == PRIMARY:
            return Change.UPDATE  # mirrors or timeouts changed
        if current.role == MIRROR and new.role == MIRROR and _same_source(current, new):
            return Change.UPDATE  # the source's pod moved, or the mode or sampling changed: the stream goes on
        if current.role == FENCED and new.role == MIRROR and _follows_fence(current, new):
            return Change.FOLLOW  # a switchover's last step: the fenced old primary follows the new one, same term
        raise TermConflict(new.term)
    if new.role == PRIMARY:
        return Change.UPDATE if current.role == PRIMARY else Change.PROMOTE
    if new.role == FENCED:
        return Change.FENCE
    return Change.FOLLOW


def next_lsn_base(applied_lsn: int, lsn_floor: int) -> int:
    """The sequence value a promoted node continues from (its next LSN is this + 1): never an LSN the old primary
    may have given to another write."""
    return max(applied_lsn, lsn_floor)


def write_refusal(role: Role) -> str | None:
    """Why client writes are refused by the role alone (None: a primary accepts them)."""
    if role.role == PRIMARY:
        return None
    return "fenced" if role.role == FENCED else "not_primary"
