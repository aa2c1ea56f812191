"""The calls to every shard pod's shadow (port 7403) that plan, run, watch and delete a Reversion's per-shard
plans: over HTTPS with the ShardSet's client context and the operator's identity, as the KeyRotation asks nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from .. import podtls
from ..podcontract import SHADOW

TIMEOUT = aiohttp.ClientTimeout(total=10)
PLANS_PATH = "/v1/reversions"


@dataclass(frozen=True)
class Answer:
    """What one shard's shadow answered: the HTTP status and JSON body, or (status None) why it was not reached."""

    shard: int
    status: int | None
    body: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        """``shard 1: HTTP 409 digest_mismatch: ...`` for conditions (never a body beyond the error fields)."""
        if self.status is None:
            return f"shard {self.shard}: {self.error}"
        code, message = self.body.get("error"), self.body.get("message")
        detail = ": ".join(str(x) for x in (code, message) if x)
        return f"shard {self.shard}: HTTP {self.status}" + (f" {detail}" if detail else "")


def plan_path(name: str) -> str:
    """The path of one plan on a shadow."""
    return f"{PLANS_PATH}/{quote(name, safe='')}"


async def _call(session: aiohttp.ClientSession, shard: int, pod: Mapping[str, Any], method: str, path: str,
                body: Mapping[str, Any] | None = None) -> Answer:
    at = podtls.endpoint(pod, shard, SHADOW, path)
    if at is None:
        return Answer(shard, None, error="pod has no IP yet")
    try:
        async with session.request(method, at.url, server_hostname=at.server_hostname,
                                   json=dict(body) if body is not None else None) as resp:
            try:
                doc = await resp.json(content_type=None)
            except ValueError:
                doc = None
            return Answer(shard, resp.status, doc if isinstance(doc, dict) else {})
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Answer(shard, None, error=type(exc).__name__)


async def _each(pods: Mapping[int, Mapping[str, Any]],
                one: Callable[[aiohttp.ClientSession, int, Mapping[str, Any]], Awaitable[Answer]]
                ) -> dict[int, Answer]:
    if not pods:
        return {}
    async with await podtls.session(pods, TIMEOUT) as session:
        shards = sorted(pods)
        answers = await asyncio.gather(*(one(session, s, pods[s]) for s in shards))
        return dict(zip(shards, answers, strict=True))


async def create_plans(pods: Mapping[int, Mapping[str, Any]], request: Mapping[str, Any]) -> dict[int, Answer]:
    """``POST /v1/reversions`` on every shard (idempotent: the same body gives back the stored plan)."""
    return await _each(pods, lambda s, shard, pod: _call(s, shard, pod, "POST", PLANS_PATH, request))


async def get_plans(pods: Mapping[int, Mapping[str, Any]], name: str) -> dict[int, Answer]:
    """``GET /v1/reversions/{name}`` on every shard: the plan and its run's progress."""
    return await _each(pods, lambda s, shard, pod: _call(s, shard, pod, "GET", plan_path(name)))


async def run_plans(pods: Mapping[int, Mapping[str, Any]], name: str, digests: Mapping[int, str]
                    ) -> dict[int, Answer]:
    """``POST /v1/reversions/{name}/run`` with each shard's own digest (the shadow refuses another: 409)."""
    return await _each(pods, lambda s, shard, pod: _call(s, shard, pod, "POST", plan_path(name) + "/run",
                                                          {"digest": digests[shard]}))


async def delete_plans(pods: Mapping[int, Mapping[str, Any]], name: str) -> dict[int, Answer]:
    """``DELETE /v1/reversions/{name}`` on every shard (404 counts as deleted)."""
    return await _each(pods, lambda s, shard, pod: _call(s, shard, pod, "DELETE", plan_path(name)))
