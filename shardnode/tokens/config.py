"""``tokens-service.json`` (docs/tokens.md, "Process, flags and tokens-service.json"): parsed, and re-read when the
mounted file changes (the last good one stays in force when a new one does not parse)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tiers import Operation

log = logging.getLogger("chronoshard.tokens")

MODEL_KINDS = ("gradient-boosting", "logistic-regression", "rules")


class ServiceConfigError(ValueError):
    """tokens-service.json is not what the contract says."""


@dataclass(frozen=True)
class ShardCopy:
    """One shard of one member: its node's and cache's URLs and the name their certificate holds."""

    store: str
    index: int
    node: str
    cache: str | None
    server_name: str | None

    @property
    def copy_id(self) -> str:
        """The copy's name in the history and in ``GET /v1/risk``: ``<store>#<index>``."""
        return f"{self.store}#{self.index}"


@dataclass(frozen=True)
class Member:
    """A member ShardSet of the MirrorSet."""

    store: str
    role: str
    shards: tuple[ShardCopy, ...]


@dataclass(frozen=True)
class ServiceConfig:
    """The parsed file; durations in seconds."""

    mirror_set: str
    active_store: str
    members: tuple[Member, ...]
    operation: Operation | None = None
    valid_ttl: float = 3600.0
    temporary_ttl: float = 300.0
    provisional_ttl: float = 900.0
    threshold: float = 0.7
    windows: tuple[float, ...] = (300.0, 900.0, 1800.0)
    model: str = "gradient-boosting"
    probe_interval: float = 10.0
    failure_threshold: int = 3
    failover_policy: str = "predictive"

    @property
    def namespace(self) -> str:
        """The MirrorSet's namespace."""
        return self.mirror_set.split("/", 1)[0]

    def member(self, store: str) -> Member | None:
        """The member named ``store``."""
        return next((m for m in self.members if m.store == store), None)

    def ttl(self, tier: str) -> float:
        """The lifetime of a token of ``tier``."""
        return {"valid": self.valid_ttl, "temporary": self.temporary_ttl}.get(tier, self.provisional_ttl)

    def copies(self) -> list[ShardCopy]:
        """Every shard copy of every member."""
        return [s for m in self.members for s in m.shards]


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or value.count("/") != 1 or not all(value.split("/")):
        raise ServiceConfigError(f"{what} must be <namespace>/<name>")
    return value


def _seconds(doc: dict[str, Any], key: str, default: float) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ServiceConfigError(f"{key} must be a positive number of seconds")
    return float(value)


def _shard(store: str, doc: Any) -> ShardCopy:
    if not isinstance(doc, dict):
        raise ServiceConfigError("members[].shards[] must be objects")
    index, node, cache, server = doc.get("index"), doc.get("node"), doc.get("cache"), doc.get("serverName")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ServiceConfigError("members[].shards[].index must be a shard index")
    if not isinstance(node, str) or not node.startswith(("http://", "https://")):
        raise ServiceConfigError("members[].shards[].node must be a URL")
    if cache is not None and (not isinstance(cache, str) or not cache.startswith(("http://", "https://"))):
        raise ServiceConfigError("members[].shards[].cache must be a URL or null")
    if server is not None and not isinstance(server, str):
        raise ServiceConfigError("members[].shards[].serverName must be a string")
    return ShardCopy(store, index, node.rstrip("/"), cache.rstrip("/") if cache else None, server or None)


def _member(doc: Any) -> Member:
    if not isinstance(doc, dict):
        raise ServiceConfigError("members[] must be objects")
    store = _name(doc.get("store"), "members[].store")
    shards = doc.get("shards", [])
    if not isinstance(shards, list):
        raise ServiceConfigError("members[].shards must be a list")
    return Member(store, str(doc.get("role", "mirror")), tuple(_shard(store, s) for s in shards))


def _operation(doc: Any) -> Operation | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ServiceConfigError("operation must be an object or null")
    term = doc.get("term", 0)
    return Operation(kind=str(doc.get("kind", "failover")), source=_name(doc.get("from"), "operation.from"),
                     target=_name(doc.get("to"), "operation.to"),
                     term=term if isinstance(term, int) and not isinstance(term, bool) else 0)


def _prediction(doc: dict[str, Any]) -> tuple[float, tuple[float, ...], str]:
    threshold = doc.get("unavailabilityThreshold", 0.7)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise ServiceConfigError("prediction.unavailabilityThreshold must be within 0..1")
    windows = doc.get("windows", [300, 900, 1800])
    if (not isinstance(windows, list) or not windows
            or not all(isinstance(w, int | float) and not isinstance(w, bool) and w > 0 for w in windows)):
        raise ServiceConfigError("prediction.windows must be a list of positive seconds")
    model = doc.get("model", "gradient-boosting")
    if model not in MODEL_KINDS:
        raise ServiceConfigError(f"prediction.model must be one of {', '.join(MODEL_KINDS)}")
    return float(threshold), tuple(sorted(float(w) for w in windows)), str(model)


def _obj(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise ServiceConfigError(f"{key} must be an object")
    return value


def parse_service_config(doc: Any) -> ServiceConfig:
    """Validate a tokens-service.json document."""
    if not isinstance(doc, dict):
        raise ServiceConfigError("tokens-service.json must be a JSON object")
    members = doc.get("members")
    if not isinstance(members, list) or not members:
        raise ServiceConfigError("members must be a non-empty list")
    parsed = tuple(_member(m) for m in members)
    active = _name(doc.get("activeStore"), "activeStore")
    if active not in {m.store for m in parsed}:
        raise ServiceConfigError("activeStore must be one of the members")
    tokens, health = _obj(doc, "tokens"), _obj(doc, "health")
    threshold, windows, model = _prediction(_obj(doc, "prediction"))
    failures = health.get("failureThreshold", 3)
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
        raise ServiceConfigError("health.failureThreshold must be a positive integer")
    return ServiceConfig(
        mirror_set=_name(doc.get("mirrorSet"), "mirrorSet"), active_store=active, members=parsed,
        operation=_operation(doc.get("operation")),
        valid_ttl=_seconds(tokens, "validTTL", 3600), temporary_ttl=_seconds(tokens, "temporaryTTL", 300),
        provisional_ttl=_seconds(tokens, "provisionalTTL", 900), threshold=threshold, windows=windows, model=model,
        probe_interval=_seconds(health, "probeInterval", 10), failure_threshold=failures,
        failover_policy=str(doc.get("failoverPolicy", "predictive")))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows the ConfigMap's ..data symlink: a swap changes the inode
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ConfigFile:
    """The mounted file, re-read by ``poll()`` when it changed; ``current`` is the last good one (None before)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: ServiceConfig | None = None
        self.error: str | None = None
        self._stamp: tuple[int, int, int] | None = None
        self.poll()

    def poll(self) -> bool:
        """Re-read the file if it changed; True when a new good config is in force."""
        stamp = _stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            cfg = parse_service_config(json.loads(self.path.read_text()))
        except (OSError, ValueError) as exc:
            self.error = str(exc)
            log.error("tokens-service.json not usable, keeping the last good one: %s", exc)
            return False
        self.current, self.error = cfg, None
        return True
