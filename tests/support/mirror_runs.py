"""Randomized fault runs against a real primary/mirror pair of `chronoshard-node` processes.

Each run: one writer per key writes sequential values to the primary while it also reads its own keys back from the
mirror with read-your-writes (``X-Chronoshard-Min-Lsn``); a fault hits (kill -9 of the primary, SIGSTOP of the
primary, kill -9 of the mirror, or a planned switchover); the driver moves the roles as the MirrorSet controller
does (promote the mirror above the old primary's last LSN, rejoin the old primary as a mirror from the divergence
point, or fence -> token -> catch up -> promote); the writers find the new primary and, before their next write,
read their key back from it. At the end of the run every key is read from the primary and the history is checked
(``tests/support/histories.py``): in ``sync`` mode nothing acknowledged may be lost and no read may be stale; in
``async`` mode every acknowledged write that was lost must lie in the LSNs the rejoined node reported as discarded.

Used by ``tests/integration/shardnode/test_mirror_faults.py`` (a few runs) and ``tests/bench/bench_mirror_faults.py``
(the soak: a thousand runs, bounded in count and time).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.shardnode.procs import Proc, free_port, node
from tests.support.histories import Read, Report, Write, check, seq_of, value_of

FAULTS = ("kill-primary", "stop-primary", "kill-mirror", "switchover")
TABLE = "t"
REQUEST_TIMEOUT = 3.0
SYNC_TIMEOUT = 2.0


def consumer_of(name: str) -> str:
    """The slot a member named ``name`` uses on the primary (``mirror.<ns>.<name>``)."""
    return f"mirror.ns.{name}"


@dataclass
class Member:
    """One node process of the pair, restartable on the same port and data directory."""

    name: str
    proc: Proc

    @property
    def url(self) -> str:
        """The node's base URL."""
        return self.proc.url


@dataclass
class RunResult:
    """One run's fault, its checked history, and what the driver measured."""

    fault: str
    report: Report
    lost_unreported: list[Write]
    discarded: list[int]
    held_seconds: float | None = None
    failover_seconds: float | None = None


@dataclass
class Clients:
    """The writers' shared view: which member is primary (the driver publishes it) and the history so far."""

    primary: Member
    mirror: Member
    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    stop: bool = False


class Pair:
    """The two members, the term, and the role moves the MirrorSet controller would make."""

    def __init__(self, base: Path, keyring: Path, mode: str) -> None:
        self.mode = mode
        self.term = 1
        self.members = [self._member(base, keyring, n) for n in ("a", "b")]
        self.primary, self.mirror = self.members
        self.session: aiohttp.ClientSession | None = None

    @staticmethod
    def _member(base: Path, keyring: Path, name: str) -> Member:
        d = base / name
        d.mkdir(parents=True, exist_ok=True)
        return Member(name, node(d, keyring, port=free_port(), config={"trimIntervalSeconds": 1}))

    # ---- HTTP ---------------------------------------------------------------------------------------
    async def _json(self, method: str, url: str, doc: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.request(method, url, json=doc,
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.json(content_type=None)

    async def role(self, m: Member, doc: dict[str, Any]) -> dict[str, Any]:
        """PUT a role document; fails loudly on anything but 200."""
        status, body = await self._json("PUT", m.url + "/v1/replication", doc)
        if status != 200:
            raise AssertionError(f"PUT role on {m.name}: {status} {body}")
        return dict(body)

    async def state(self, m: Member) -> dict[str, Any]:
        """GET /v1/replication."""
        status, body = await self._json("GET", m.url + "/v1/replication")
        if status != 200:
            raise AssertionError(f"GET replication on {m.name}: {status} {body}")
        return dict(body)

    def primary_doc(self, mirrors: bool, floor: int = 0) -> dict[str, Any]:
        """The primary's role document (no mirror listed: async, the degraded state after a failover)."""
        doc: dict[str, Any] = {"term": self.term, "role": "primary", "mode": self.mode if mirrors else "async",
                               "mirrors": [consumer_of(self.mirror.name)] if mirrors else [],
                               "syncTimeoutSeconds": SYNC_TIMEOUT, "maxLagSeconds": 30, "holdTimeoutSeconds": 2}
        if floor:
            doc["lsnFloor"] = floor
        return doc

    def mirror_doc(self, diverge: int | None) -> dict[str, Any]:
        """The mirror's role document, following the current primary."""
        return {"term": self.term, "role": "mirror", "mode": self.mode,
                "source": {"url": self.primary.url, "shardSet": f"ns/{self.primary.name}"},
                "consumer": consumer_of(self.mirror.name), "divergeLsn": diverge}

    async def wait_caught_up(self, timeout: float = 60.0) -> None:
        """Until the mirror streams and has applied the primary's last LSN."""
        deadline = time.monotonic() + timeout
        target = (await self.state(self.primary))["lastLsn"]
        while True:
            st = await self.state(self.mirror)
            if st["state"] == "streaming" and st["appliedLsn"] >= target:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"mirror {self.mirror.name} did not catch up to {target}: {st}")
            await asyncio.sleep(0.05)

    async def setup(self) -> None:
        """Start both processes; the first member is primary, the second its mirror."""
        for m in self.members:
            await asyncio.to_thread(m.proc.start)
        self.session = aiohttp.ClientSession()
        await self.role(self.primary, self.primary_doc(mirrors=True))
        await self.role(self.mirror, self.mirror_doc(None))
        await self.wait_caught_up()

    async def close(self) -> None:
        """Stop both processes."""
        if self.session is not None:
            await self.session.close()
        for m in self.members:
            m.proc.stop()

    # ---- role moves ---------------------------------------------------------------------------------
    async def promote_mirror(self, floor: int, next_term: bool = True) -> int:
        """Make the mirror primary (at the next term unless a fence already raised it; async, no mirror yet);
        return its promotedAtLsn."""
        self.term += 1 if next_term else 0
        old, new = self.primary, self.mirror
        self.primary, self.mirror = new, old
        body = await self.role(new, self.primary_doc(mirrors=False, floor=floor))
        return int(body["promotedAtLsn"])

    async def rejoin(self, diverge: int) -> list[int]:
        """The old primary follows the new one from ``diverge``; then sync again. Returns its discarded LSNs."""
        await self.role(self.mirror, self.mirror_doc(diverge))
        await self.wait_caught_up()
        st = await self.state(self.mirror)
        await self.role(self.primary, self.primary_doc(mirrors=True))
        return list(st.get("discardedLsns") or [])


# ---- the clients -----------------------------------------------------------------------------------
async def _request(session: aiohttp.ClientSession, method: str, url: str, data: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with session.request(method, url, data=data, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as resp:
        return resp.status, await resp.read()


async def _read_primary(session: aiohttp.ClientSession, clients: Clients, key: str) -> bool:
    """Read ``key`` from the primary into the history; False when it could not be read."""
    start = time.monotonic()
    try:
        status, body = await _request(session, "GET", f"{clients.primary.url}/v1/tables/{TABLE}/blocks/{key}")
    except (aiohttp.ClientError, TimeoutError):
        return False
    if status not in (200, 404):
        return False
    clients.reads.append(Read(key, start, time.monotonic(), seq_of(key, body if status == 200 else None)))
    return True


async def _read_mirror(session: aiohttp.ClientSession, clients: Clients, key: str, min_lsn: int,
                       term: int) -> None:
    """A read-your-writes read from the mirror (the write's LSN and term); on lsn_not_reached the primary
    answers instead."""
    start = time.monotonic()
    headers = {"X-Chronoshard-Min-Lsn": str(min_lsn), "X-Chronoshard-Min-Term": str(term),
               "X-Chronoshard-Wait-Ms": "500"}
    try:
        status, body = await _request(session, "GET", f"{clients.mirror.url}/v1/tables/{TABLE}/blocks/{key}",
                                      headers=headers)
    except (aiohttp.ClientError, TimeoutError):
        return
    if status in (200, 404):
        clients.reads.append(Read(key, start, time.monotonic(), seq_of(key, body if status == 200 else None)))
    elif status == 409:
        await _read_primary(session, clients, key)


async def writer(session: aiohttp.ClientSession, clients: Clients, key: str, rng: random.Random) -> None:
    """Sequential writes of ``key``; after an unanswered or refused write, read the key back from the primary
    (as a client does before going on) until that read succeeds."""
    seq, unsure = 0, False
    while not clients.stop:
        if unsure:
            if not await _read_primary(session, clients, key):
                await asyncio.sleep(0.05)
                continue
            unsure = False
        seq += 1
        start = time.monotonic()
        try:
            status, body = await _request(session, "PUT", f"{clients.primary.url}/v1/tables/{TABLE}/blocks/{key}",
                                          data=value_of(key, seq))
        except (aiohttp.ClientError, TimeoutError):
            status, body = 0, b""
        if status == 200:
            ack = json.loads(body)
            last_lsn = int(ack["lsn"])
            clients.writes.append(Write(key, seq, start, time.monotonic(), "ok", last_lsn))
            if rng.random() < 0.3:
                await _read_mirror(session, clients, key, last_lsn, int(ack["term"]))
        else:
            clients.writes.append(Write(key, seq, start, time.monotonic(), "unknown"))
            unsure = True
            await asyncio.sleep(0.02)


# ---- one run ---------------------------------------------------------------------------------------
async def _fault(pair: Pair, fault: str, rng: random.Random, clients: Clients) -> tuple[list[int], float | None,
                                                                                      float]:
    """Inject ``fault`` and move the roles; returns (discarded LSNs, held seconds, failover seconds)."""
    t0 = time.monotonic()
    if fault == "kill-mirror":
        pair.mirror.proc.kill()
        await asyncio.sleep(rng.uniform(0.1, 0.5))
        await asyncio.to_thread(pair.mirror.proc.start)
        await pair.wait_caught_up()
        return [], None, time.monotonic() - t0
    if fault == "switchover":
        pair.term += 1
        fenced = await pair.role(pair.primary, {"term": pair.term, "role": "fenced",
                                                "primaryShardSet": f"ns/{pair.mirror.name}"})
        token = int(fenced["lastLsn"])
        while (await pair.state(pair.mirror))["appliedLsn"] < token:
            await asyncio.sleep(0.005)
        promoted = await pair.promote_mirror(token, next_term=False)
        clients.primary, clients.mirror = pair.primary, pair.mirror
        held = time.monotonic() - t0
        return await pair.rejoin(promoted), held, held
    old = pair.primary
    floor = (await pair.state(old))["lastLsn"]
    if fault == "kill-primary":
        old.proc.kill()
    else:
        assert old.proc.p is not None
        os.kill(old.proc.p.pid, signal.SIGSTOP)
        await asyncio.sleep(rng.uniform(0.0, 0.5))
    promoted = await pair.promote_mirror(floor)
    clients.primary, clients.mirror = pair.primary, pair.mirror
    took = time.monotonic() - t0
    if fault == "kill-primary":
        await asyncio.to_thread(old.proc.start)
    else:
        assert old.proc.p is not None
        os.kill(old.proc.p.pid, signal.SIGCONT)
    return await pair.rejoin(promoted), None, took


async def _final_state(pair: Pair, keys: list[str]) -> dict[str, int | None]:
    assert pair.session is not None
    out: dict[str, int | None] = {}
    for key in keys:
        status, body = await _request(pair.session, "GET", f"{pair.primary.url}/v1/tables/{TABLE}/blocks/{key}")
        if status not in (200, 404):
            raise AssertionError(f"final read of {key}: {status} {body[:200]!r}")
        out[key] = seq_of(key, body if status == 200 else None)
    return out


async def run_once(pair: Pair, run: int, rng: random.Random, fault: str, keys: int = 6) -> RunResult:
    """One randomized run: writers, a fault, the role moves, the check."""
    assert pair.session is not None
    clients = Clients(pair.primary, pair.mirror)
    names = [f"r{run}-k{i}" for i in range(keys)]
    tasks = [asyncio.create_task(writer(pair.session, clients, k, random.Random(rng.random()))) for k in names]
    try:
        await asyncio.sleep(rng.uniform(0.2, 0.8))
        discarded, held, took = await _fault(pair, fault, rng, clients)
        await asyncio.sleep(rng.uniform(0.2, 0.5))
    finally:
        clients.stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
    final = await _final_state(pair, names)
    report = check(clients.writes, clients.reads, final)
    # A stale read right after a failover is how a lost acknowledged write shows once a later write replaced it.
    lost = report.lost + [w for r, must in report.stale for w in clients.writes
                          if w.key == r.key and w.seq == must and w.outcome == "ok"]
    dropped = set(discarded)
    unreported = [w for w in lost if w.lsn not in dropped]
    return RunResult(fault, report, unreported, discarded, held, took)
