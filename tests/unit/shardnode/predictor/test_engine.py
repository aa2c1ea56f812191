"""The engine learns planted patterns, backs off when they stop, and refuses broken model files."""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path

import pytest
from chronoshard.shardnode.predictor.config import PredictorConfig
from chronoshard.shardnode.predictor.engine import Predictor
from chronoshard.shardnode.predictor.modelstore import MODEL_FILE

from tests.support.access_patterns import CHAIN, STEP, broken_phase, chain_phase, feed, scan_phase


def cfg(**kw: object) -> PredictorConfig:
    base = replace(PredictorConfig(), enabled=True, horizon_s=0.5, min_train_accesses=500, feedback_window=50)
    return replace(base, **kw)


def trained(tmp_path: Path, phase=chain_phase, seed: int = 1, **kw: object) -> tuple[Predictor, random.Random, float]:
    rng = random.Random(seed)
    p = Predictor(tmp_path, cfg(**kw))
    acc, t = phase(rng, 1000.0, 3000)
    assert p.observe(acc, now=t) == []  # no model yet: nothing is hinted
    p.train_now()
    return p, rng, t


@pytest.mark.parametrize("model", ["stats", "gbm", "logreg"])
def test_learns_successor_chain_and_prefetches_it(tmp_path: Path, model: str) -> None:
    p, rng, t = trained(tmp_path, model=model)
    acc, t = chain_phase(rng, t, 600)
    hinted_before: set[str] = set()
    covered = total = 0
    for i, a in enumerate(acc):
        if i and a.key in CHAIN[1:] and acc[i - 1].key == CHAIN[CHAIN.index(a.key) - 1]:
            total += 1
            covered += a.key in hinted_before
        hinted_before = {k for h in p.observe([a], now=a.time) for k in h.keys()}
    assert total > 300
    assert covered / total > 0.8, (covered, total)
    st = p.status()
    assert st["precision"] > 0.8 and st["hintsUsed"] + st["hintsWasted"] <= st["hintsSent"]
    assert st["wastedBytes"] == 4096 * st["hintsWasted"]


def test_learns_periodic_scan_and_prefetches_next_blocks(tmp_path: Path) -> None:
    p, rng, t = trained(tmp_path, phase=scan_phase, model="auto")
    acc, t = scan_phase(rng, t, 820)
    hinted: set[str] = set()
    covered = 0
    for a in acc:
        covered += a.key in hinted
        hinted |= {k for h in p.observe([a], now=a.time) for k in h.keys()}
    # 20 scans of 40 blocks: all but the first couple of blocks of each scan should have been hinted.
    assert covered >= 20 * 34, covered
    assert p.status()["precision"] > 0.8


def test_feedback_cuts_hints_after_the_pattern_stops_and_recovers(tmp_path: Path) -> None:
    counts = {}
    for fb in (True, False):
        p, rng, t = trained(tmp_path / str(fb), model="gbm", feedback_enabled=fb)
        on, t = chain_phase(rng, t, 1200)
        off, t = broken_phase(rng, t, 1200)
        back, t = chain_phase(rng, t, 1200)
        counts[fb] = (len(feed(p, on)), len(feed(p, off[:600])), len(feed(p, off[600:])), len(feed(p, back)))
    with_fb, without = counts[True], counts[False]
    # Without feedback the stale chain keeps producing hints; with it they are cut to a fraction.
    assert with_fb[2] < 0.3 * without[2], counts
    # When the pattern returns, hints come back to the level of the first phase.
    assert with_fb[3] > 0.8 * with_fb[0], counts


def test_missing_model_means_no_prefetching_and_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = Predictor(tmp_path, cfg(model="stats"))
    with caplog.at_level(logging.WARNING):
        assert p.load() is False
    assert "no model file" in caplog.text and "prefetching disabled" in caplog.text
    acc, _ = chain_phase(random.Random(2), 1000.0, 400)
    assert feed(p, acc) == []
    assert p.status()["model"] is None and "no model file" in p.status()["modelError"]


@pytest.mark.parametrize("damage", ["garbage", "flip", "truncate"])
def test_corrupt_model_means_no_prefetching_and_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                           damage: str) -> None:
    p, rng, t = trained(tmp_path, model="stats")
    path = tmp_path / MODEL_FILE
    data = path.read_bytes()
    if damage == "garbage":
        data = b"not a model"
    elif damage == "flip":
        data = data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
    else:
        data = data[: len(data) // 2]
    path.write_bytes(data)
    fresh = Predictor(tmp_path, cfg(model="stats"))
    with caplog.at_level(logging.WARNING):
        assert fresh.load() is False
    assert "corrupt" in caplog.text and "prefetching disabled" in caplog.text
    acc, _ = chain_phase(rng, t, 400)
    assert feed(fresh, acc) == []


def test_model_survives_a_restart(tmp_path: Path) -> None:
    p, rng, t = trained(tmp_path, model="gbm")
    p.close()
    again = Predictor(tmp_path, cfg(model="gbm"))
    assert again.load() is True
    acc, _ = chain_phase(rng, t, 300)
    assert len(feed(again, acc)) > 100


def test_no_training_while_prefetching_is_disabled(tmp_path: Path) -> None:
    p = Predictor(tmp_path, cfg(model="stats", enabled=False))
    acc, t = chain_phase(random.Random(6), 1000.0, 1000)
    assert feed(p, acc, batch=50) == []
    assert p.maybe_train(now=t) is None
    p.apply_config(cfg(model="stats"))
    fut = p.maybe_train(now=t)
    assert fut is not None and fut.result(timeout=60)["model"] == "stats"
    p.close()


def test_background_training_does_not_block_observe(tmp_path: Path) -> None:
    p = Predictor(tmp_path, cfg(model="auto", retrain_interval_s=3600))
    rng = random.Random(3)
    acc, t = chain_phase(rng, 1000.0, 3000)
    p.observe(acc, now=t)
    fut = p.maybe_train(now=t)
    assert fut is not None
    assert p.maybe_train(now=t) is None  # one training at a time
    more, t = chain_phase(rng, t, 200)
    feed(p, more)  # keeps consuming while the model trains
    info = fut.result(timeout=60)
    assert info["model"] in ("stats", "gbm", "logreg") and p.scorer is not None
    assert (tmp_path / MODEL_FILE).exists()
    assert p.maybe_train(now=t + 1) is None  # not due again before the retrain interval
    p.close()


def test_forecast_is_exported_per_table(tmp_path: Path) -> None:
    p = Predictor(tmp_path, cfg(model="stats", forecast_window_s=10.0, forecast_windows=3))
    acc, t = chain_phase(random.Random(4), 1000.0, 1000)  # 10 requests/s for 100 s
    p.observe(acc, now=t)
    fc = p.status(now=t)["forecast"]["t"]
    assert len(fc) == 3 and all(abs(r - 1 / STEP) < 1.5 for r in fc), fc
    assert p.status(now=t)["forecast"]["*"] == fc  # one table: the shard's total is the same
    text = p.metrics.registry.get_sample_value(
        "chronoshard_predictor_forecast_requests_per_second", {"table": "t", "window": "1"})
    assert text is not None and abs(text - 1 / STEP) < 1.5
