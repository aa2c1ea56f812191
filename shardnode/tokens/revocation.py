"""Revocation push: ``PUT /v1/tokens/revocations`` to every node and cache of every member, at once and in
parallel; a target that did not take it is retried with backoff (its pending revocations in one body) until it
does. Nodes also pull ``GET /v1/revocations`` (the registry's list), which bounds a lost push.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .config import ServiceConfig
from .peers import Peers

log = logging.getLogger("chronoshard.tokens")

PATH = "/v1/tokens/revocations"
PUSH_TIMEOUT = 2.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0


@dataclass(frozen=True)
class Target:
    """One node or cache."""

    url: str
    server_name: str | None


def targets(cfg: ServiceConfig) -> list[Target]:
    """Every node and cache of every member."""
    out: list[Target] = []
    for copy in cfg.copies():
        out.append(Target(copy.node, copy.server_name))
        if copy.cache:
            out.append(Target(copy.cache, copy.server_name))
    return out


def next_backoff(previous: float) -> float:
    """Doubling, from 0.5 s up to 30 s."""
    return BACKOFF_FIRST if previous <= 0 else min(BACKOFF_MAX, previous * 2)


@dataclass
class Pending:
    """What a target still has to take, and when to try again."""

    entries: dict[str, float] = field(default_factory=dict)  # token id -> expiresAt
    backoff: float = 0.0
    due: float = 0.0


@dataclass(frozen=True)
class PushResult:
    """How many targets took it now, how many are left to retry, and how long the push took."""

    pushed: int
    pending: int
    seconds: float


class Pusher:
    """Pushes revocations; ``observe`` gets each push's duration (the metric)."""

    def __init__(self, peers: Peers, config: Callable[[], ServiceConfig | None],
                 observe: Callable[[float], None] = lambda s: None) -> None:
        self.peers, self.config, self.observe = peers, config, observe
        self.pending: dict[Target, Pending] = {}
        self.last_push: dict[str, Any] | None = None
        self._wake = asyncio.Event()

    async def _send(self, target: Target, entries: dict[str, float]) -> bool:
        body = {"revocations": [{"tokenId": k, "expiresAt": v} for k, v in entries.items()]}
        try:
            status, _ = await self.peers.request("PUT", target.url + PATH, target.server_name, PUSH_TIMEOUT, body)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
        return 200 <= status < 300

    async def push(self, token_id: str, expires_at: float) -> PushResult:
        """Push one revocation to every target now; the ones that fail are retried in the background."""
        cfg = self.config()
        started = time.monotonic()
        all_targets = targets(cfg) if cfg is not None else []
        results = await asyncio.gather(*(self._send(t, {token_id: expires_at}) for t in all_targets))
        now = time.monotonic()
        for target, ok in zip(all_targets, results, strict=True):
            if ok:
                continue
            p = self.pending.setdefault(target, Pending())
            p.entries[token_id] = expires_at
            p.backoff = next_backoff(p.backoff)
            p.due = now + p.backoff
        took = time.monotonic() - started
        self.observe(took)
        result = PushResult(sum(results), len(all_targets) - sum(results), took)
        self.last_push = {"tokenId": token_id, "at": time.time(), "pushedTo": result.pushed,
                          "pending": result.pending, "seconds": round(took, 4)}
        if result.pending:
            self._wake.set()
        return result

    def pending_targets(self) -> int:
        """Targets with revocations still to deliver."""
        return sum(1 for p in self.pending.values() if p.entries)

    async def retry_once(self, now: float | None = None) -> None:
        """Retry every target whose backoff has passed (expired entries are dropped first)."""
        now = time.monotonic() if now is None else now
        wall = time.time()
        due = [(t, p) for t, p in self.pending.items() if p.entries and p.due <= now]
        for _, p in due:
            p.entries = {k: v for k, v in p.entries.items() if v > wall}
        results = await asyncio.gather(*(self._send(t, p.entries) for t, p in due if p.entries))
        for (target, p), ok in zip([d for d in due if d[1].entries], results, strict=True):
            if ok:
                del self.pending[target]
            else:
                p.backoff = next_backoff(p.backoff)
                p.due = time.monotonic() + p.backoff
        for target in [t for t, p in self.pending.items() if not p.entries]:
            del self.pending[target]

    async def run(self, stop: asyncio.Event) -> None:
        """The retry loop (a background task until ``stop``)."""
        while not stop.is_set():
            waits = [p.due for p in self.pending.values() if p.entries]
            timeout = max(0.05, min(waits) - time.monotonic()) if waits else 5.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            try:
                await self.retry_once()
            except Exception:  # a bug in one round must not end the retries
                log.exception("revocation retry round failed")


def drop_targets(pusher: Pusher, keep: Sequence[Target]) -> None:
    """Forget pending pushes to targets that left the config (a pod that is gone)."""
    wanted = set(keep)
    for target in [t for t in pusher.pending if t not in wanted]:
        del pusher.pending[target]
