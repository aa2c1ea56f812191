"""Concurrent misses of one key share one review; an error reaches every waiter; a caller going away cancels
nobody else's wait."""

from __future__ import annotations

import asyncio

import pytest
from chronoshard.shardnode.auth.singleflight import SingleFlight


async def test_concurrent_calls_share_one_run_per_key():
    flight: SingleFlight[str, int] = SingleFlight()
    runs: list[str] = []
    gate = asyncio.Event()

    async def work(key: str) -> int:
        runs.append(key)
        await gate.wait()
        return len(runs)

    calls = [asyncio.ensure_future(flight.run(k, lambda k=k: work(k))) for k in ["a"] * 16 + ["b"] * 4]
    await asyncio.sleep(0)
    assert len(flight) == 2
    gate.set()
    results = await asyncio.gather(*calls)
    assert sorted(runs) == ["a", "b"] and len(set(results[:16])) == 1 and len(flight) == 0
    # Once done, the next miss runs the work again (the cache, not the flight, keeps answers).
    assert await flight.run("a", lambda: work("a")) == 3


async def test_an_error_reaches_every_waiter():
    flight: SingleFlight[str, int] = SingleFlight()

    async def fail() -> int:
        await asyncio.sleep(0.01)
        raise RuntimeError("api server down")

    results = await asyncio.gather(*(flight.run("k", fail) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results) and len(flight) == 0


async def test_a_cancelled_caller_does_not_cancel_the_others():
    flight: SingleFlight[str, str] = SingleFlight()
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "ok"

    first = asyncio.ensure_future(flight.run("k", work))
    second = asyncio.ensure_future(flight.run("k", work))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == "ok"
