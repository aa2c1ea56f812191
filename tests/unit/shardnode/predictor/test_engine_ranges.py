"""The engine sends a run's read-ahead as one hint per fetch (a range), counts it once against the request budget,
and the predictor process posts it in the cache's range form."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

from chronoshard.shardnode.cache.server import MAX_READ_AHEAD
from chronoshard.shardnode.predictor.config import PredictorConfig
from chronoshard.shardnode.predictor.engine import Hint, Predictor
from chronoshard.shardnode.predictor.main import PredictorService
from chronoshard.shardnode.predictor.ranking import MAX_RANGE_BLOCKS

from tests.support.access_patterns import scan_phase
from tests.support.servers import node_and_cache


def trained_on_scans(tmp_path: Path, **kw: object) -> tuple[Predictor, random.Random, float]:
    # A horizon of 100 reads: a scan's next blocks are all read within it, so runs earn long ranges.
    cfg = replace(PredictorConfig(), **{"enabled": True, "model": "stats", "horizon_s": 10.0,
                                        "min_train_accesses": 500, "feedback_window": 50, **kw})
    rng = random.Random(3)
    p = Predictor(tmp_path, cfg)
    acc, t = scan_phase(rng, 1000.0, 3000)
    p.observe(acc, now=t)
    p.train_now()
    return p, rng, t


def number(key: str) -> int:
    return int(key.removeprefix("blk-"))


def sent_total(p: Predictor) -> float:
    return sum(s.value for m in p.metrics.hints_sent.collect() for s in m.samples if s.name.endswith("_total"))


def test_a_scan_gets_read_ahead_ranges_one_hint_each(tmp_path: Path) -> None:
    p, rng, t = trained_on_scans(tmp_path)
    acc, _ = scan_phase(rng, t + 20, 820)
    hints: list[Hint] = []
    hinted: set[str] = set()
    covered = 0
    for a in acc:
        covered += a.key in hinted
        new = p.observe([a], now=a.time)
        hints += new
        hinted |= {k for h in new for k in h.keys()}
    ranges = [h for h in hints if h.read_ahead]
    assert ranges, "no read-ahead range was sent"
    for h in ranges:
        keys, scores = h.keys(), [h.score, *(s for _, s in h.read_ahead)]
        assert len(keys) <= MAX_RANGE_BLOCKS
        assert [number(k) - number(keys[0]) for k in keys] == [8 * i for i in range(len(keys))]  # 4 KiB steps
        assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), scores
    blocks = sum(len(h.keys()) for h in hints)
    # Fewer fetches than blocks, and each block counted once as hinted.
    assert len(hints) < 0.7 * blocks, (len(hints), blocks)
    assert sent_total(p) == blocks == p.status()["hintsSent"]
    assert covered >= 20 * 34, covered
    assert p.status()["precision"] > 0.8


def test_a_range_ends_where_the_run_would_leave_the_horizon(tmp_path: Path) -> None:
    # Reads every 0.1 s and a 0.5 s horizon: a sixth block would be read too late to count, whatever the score.
    p, rng, t = trained_on_scans(tmp_path, horizon_s=0.5)
    acc, _ = scan_phase(rng, t + 20, 410)
    hints = [h for a in acc for h in p.observe([a], now=a.time)]
    assert any(h.read_ahead for h in hints)
    assert max(len(h.keys()) for h in hints) <= 5
    assert p.status()["precision"] > 0.8 and p.feedback.threshold <= 1.0  # never paused for waste


def test_the_request_budget_counts_a_range_as_one_fetch(tmp_path: Path) -> None:
    p, rng, t = trained_on_scans(tmp_path, hints_per_second=1.0)
    acc, _ = scan_phase(rng, t + 20, 410)  # about 41 s of reads at 10 per second
    hints = [h for a in acc for h in p.observe([a], now=a.time)]
    seconds = acc[-1].time - acc[0].time
    assert len(hints) <= seconds + 2  # the bucket: 1 fetch per second plus its burst of 1
    # Counted per block the budget would have allowed at most that many blocks.
    assert sum(len(h.keys()) for h in hints) > 2 * (seconds + 2)


def test_hint_json_is_the_per_block_form_without_read_ahead() -> None:
    assert Hint("t", "k1", 0.91234567, 4096).to_json() == {"table": "t", "key": "k1", "score": 0.912346}
    ranged = Hint("t", "k1", 0.9, 4096, (("k2", 0.81), ("k3", 0.729)))
    assert ranged.to_json() == {"table": "t", "key": "k1", "score": 0.9,
                                "readAhead": [{"key": "k2", "score": 0.81}, {"key": "k3", "score": 0.729}]}
    assert ranged.keys() == ["k1", "k2", "k3"]


def test_the_engines_longest_range_is_one_the_cache_accepts() -> None:
    assert MAX_RANGE_BLOCKS - 1 == MAX_READ_AHEAD


async def test_the_service_posts_a_range_the_cache_fetches_in_one_request(tmp_path: Path) -> None:
    # No change-log tail: its invalidations, racing the range fetch, would rightly keep the range out of the cache.
    async with node_and_cache(tmp_path, budget_bytes=1 << 20, follow_changes=False) as (node, cache, session, _, _):
        for i in range(4):
            await session.put(f"{node}/v1/tables/t/blocks/r{i}", data=bytes([i]) * 8)
        svc = PredictorService(cache, tmp_path / "predictor", None)
        svc._session = session  # the service's own session opens on start-up, with the poll loop
        try:
            await svc._send([Hint("t", "r0", 0.9, 8, (("r1", 0.8), ("r2", 0.7), ("r3", 0.6)))])
            for _ in range(500):
                doc = await (await session.get(f"{cache}/v1/cache")).json()
                if doc["entries"] == 4:
                    break
                await asyncio.sleep(0.01)
            assert doc["entries"] == 4
            text = await (await session.get(f"{cache}/metrics")).text()
            assert "chronoshard_cache_prefetches_issued_total 1.0" in text
            assert svc.predictor.metrics.cache_errors.labels("prefetch")._value.get() == 0
        finally:
            svc._session = None
            svc.predictor.close()
