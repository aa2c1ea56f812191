"""The table-key pipeline learns a planted table chain, hints keys, backs off when the chain stops, keeps its model."""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import replace
from pathlib import Path

import pytest
from chronoshard.shardnode.predictor.access import Access
from chronoshard.shardnode.predictor.config import (
    ConfigError,
    ConfigFile,
    KeyPrefetchConfig,
    PredictorConfig,
    parse_config,
)
from chronoshard.shardnode.predictor.keys import KeyPredictor
from chronoshard.shardnode.predictor.main import KEY_POLL_S, poll_interval
from chronoshard.shardnode.predictor.modelstore import KEY_MODEL_FILE, MODEL_FILE

# Names without a numeric suffix, so only the learned successor statistics (not "next number") can predict.
CHAIN = ("orders", "lines", "stock")
STEP = 0.1


def cfg(enabled: bool = True, threshold: float = 0.3, rate: float = 1000.0, **kw: object) -> PredictorConfig:
    base = replace(PredictorConfig(), enabled=True, model="stats", horizon_s=0.5, min_train_accesses=300,
                   feedback_window=50, key_prefetch=KeyPrefetchConfig(enabled, threshold, rate))
    return replace(base, **kw)


def chain_phase(rng: random.Random, t: float, n: int, chains: tuple[tuple[str, ...], ...] = (CHAIN,),
                job: list[int] | None = None) -> tuple[list[Access], float]:
    """Jobs (a new client each run) read a chain of tables in order, 1-2 reads per table; one random table between."""
    job = job if job is not None else [0]
    out: list[Access] = []
    while len(out) < n:
        job[0] += 1
        for table in rng.choice(chains):
            for k in range(rng.randint(1, 2)):
                out.append(Access(time=t, table=table, key=f"blk-{k}", size=4096, client=f"job{job[0]}"))
                t += STEP
        out.append(Access(time=t, table=f"n{rng.randrange(500)}", key="blk-0", size=4096, client="noise"))
        t += STEP
    return out[:n], t


def broken_phase(rng: random.Random, t: float, n: int, job: list[int]) -> tuple[list[Access], float]:
    """The chain stops: jobs read its first table and then tables at random."""
    out: list[Access] = []
    while len(out) < n:
        job[0] += 1
        for table in ("orders", f"n{rng.randrange(500)}", f"n{rng.randrange(500)}"):
            out.append(Access(time=t, table=table, key="blk-0", size=4096, client=f"job{job[0]}"))
            t += STEP
    return out[:n], t


def feed(p: KeyPredictor, accesses: list[Access]) -> list:
    """One access per poll (a fast poll); every key hint."""
    hints = []
    for a in accesses:
        hints.extend(p.observe([a], now=a.time))
    return hints


def trained(tmp_path: Path, **kw: object) -> tuple[KeyPredictor, random.Random, float, list[int]]:
    rng, job = random.Random(1), [0]
    p = KeyPredictor(tmp_path, cfg(**kw))
    acc, t = chain_phase(rng, 1000.0, 1500, job=job)
    assert p.observe(acc, now=t) == []  # no model yet: no key hints
    p.train_now()
    return p, rng, t, job


def test_reading_the_first_table_of_a_chain_hints_the_next_after_training(tmp_path: Path) -> None:
    p, rng, t, job = trained(tmp_path)
    first = Access(time=t, table="orders", key="blk-0", size=4096, client="fresh")
    hints = p.observe([first], now=t)
    assert [h.table for h in hints] == ["lines"] and hints[0].score >= 0.3
    assert hints[0].to_json() == {"table": "lines", "score": round(hints[0].score, 6)}
    # Reading `orders` again within the horizon sends no second hint for `lines` (it is pending).
    again = Access(time=t + 0.05, table="orders", key="blk-1", size=4096, client="other")
    assert p.observe([again], now=t + 0.05) == []
    read_t2 = Access(time=t + 0.1, table="lines", key="blk-0", size=4096, client="fresh")
    assert [h.table for h in p.observe([read_t2], now=t + 0.1)] == ["stock"]
    st = p.status()
    assert st["enabled"] and st["sent"] == 2 and st["used"] == 1 and st["model"] == "stats"
    assert p.metrics.registry.get_sample_value("chronoshard_predictor_key_hints_sent_total") == 2
    assert p.metrics.registry.get_sample_value("chronoshard_predictor_key_hints_used_total") == 1
    assert p.metrics.registry.get_sample_value("chronoshard_predictor_key_hints_dropped_total",
                                               {"reason": "duplicate"}) == 1
    # Over a longer run the chain is covered and the hints are mostly right.
    acc, _ = chain_phase(rng, t + 1, 600, job=job)
    sent = feed(p, acc)
    st = p.status()
    assert len(sent) > 150 and st["precision"] > 0.8, st
    assert st["wasted"] == p.metrics.registry.get_sample_value("chronoshard_predictor_key_hints_wasted_total")


@pytest.mark.parametrize("which", ["keyPrefetch", "prefetching"])
def test_disabled_means_no_key_hints_and_no_training(tmp_path: Path, which: str) -> None:
    kw = {"enabled": False} if which == "keyPrefetch" else {"enabled": True}
    c = cfg(**kw) if which == "keyPrefetch" else replace(cfg(), enabled=False)
    p = KeyPredictor(tmp_path, c)
    acc, t = chain_phase(random.Random(2), 1000.0, 1500)
    assert feed(p, acc) == []
    assert p.maybe_train(now=t) is None and p.status()["enabled"] is False
    p.train_now()  # even with a model, disabled sends nothing
    more, _ = chain_phase(random.Random(3), t, 300)
    assert feed(p, more) == [] and p.status()["sent"] == 0
    p.apply_config(cfg())  # the policy turns it on: hints flow at once
    more, _ = chain_phase(random.Random(3), t + 100, 300)
    assert len(feed(p, more)) > 50
    p.close()


def test_key_hints_fall_after_the_chain_stops(tmp_path: Path) -> None:
    counts = {}
    for fb in (True, False):
        p, rng, t, job = trained(tmp_path / str(fb), feedback_enabled=fb)
        on, t = chain_phase(rng, t, 900, job=job)
        off, t = broken_phase(rng, t, 1800, job)
        counts[fb] = (len(feed(p, on)), len(feed(p, off[:900])), len(feed(p, off[900:])))
        if fb:
            st = p.status()
            assert st["wasted"] > 0 and (st["threshold"] > 0.3 or st["budgetFactor"] < 1.0), st
    with_fb, without = counts[True], counts[False]
    assert with_fb[0] > 150 and without[2] > 100, counts
    # Without feedback the stale chain keeps producing key hints; with it they are cut to a fraction.
    assert with_fb[2] < 0.3 * without[2], counts


def test_rate_limit_is_respected(tmp_path: Path) -> None:
    # Names end in a letter: no "next number" guesses, only the learned successors.
    chains = tuple((f"a{i}x", f"b{i}x") for i in range(40))
    rng, job = random.Random(4), [0]
    p = KeyPredictor(tmp_path, cfg(rate=5.0))
    acc, t = chain_phase(rng, 1000.0, 3000, chains=chains, job=job)
    p.observe(acc, now=t)
    p.train_now()
    # 40 tables that each predict their successor, read within 1 s: at most the burst (5) plus 5/s are sent.
    burst = [Access(time=t + i * 0.025, table=f"a{i}x", key="blk-0", size=4096, client=f"c{i}") for i in range(40)]
    hints = feed(p, burst)
    assert 5 <= len(hints) <= 5 + 5 * 1.0 + 1, len(hints)
    dropped = p.metrics.registry.get_sample_value("chronoshard_predictor_key_hints_dropped_total", {"reason": "rate"})
    assert dropped is not None and dropped + len(hints) >= 35
    # Without the limit, nearly every one of them is hinted.
    q = KeyPredictor(tmp_path / "free", cfg(rate=1000.0))
    q.observe(acc, now=t)
    q.train_now()
    assert len(feed(q, burst)) >= 35


def test_key_model_survives_a_restart(tmp_path: Path) -> None:
    p, _, t, _ = trained(tmp_path)
    p.close()
    assert (tmp_path / KEY_MODEL_FILE).exists() and not (tmp_path / MODEL_FILE).exists()
    again = KeyPredictor(tmp_path, cfg())
    assert again.load() is True
    # No history seen since the restart: the saved successor statistics alone predict `lines`.
    hints = again.observe([Access(time=t + 5, table="orders", key="blk-0", size=4096, client="x")], now=t + 5)
    assert [h.table for h in hints] == ["lines"]
    # Replaying accesses the saved statistics already hold (the cache's log from cursor 0) is harmless.
    old, _ = chain_phase(random.Random(1), 1000.0, 200)
    again.observe(old, now=t + 6)


@pytest.mark.parametrize("damage", ["missing", "garbage", "flip", "truncate", "block-model"])
def test_missing_or_corrupt_key_model_means_no_key_hints_and_a_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    p, rng, t, job = trained(tmp_path)
    path = tmp_path / KEY_MODEL_FILE
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"not a model")
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # a valid file of the block model under the key model's name
        from chronoshard.shardnode.predictor.modelstore import save_model
        from chronoshard.shardnode.predictor.scorers import StatsScorer
        save_model(tmp_path, StatsScorer(), {}, KEY_MODEL_FILE)
    fresh = KeyPredictor(tmp_path, cfg())
    with caplog.at_level(logging.WARNING):
        assert fresh.load() is False
    assert "key prefetching disabled until a new key model is trained" in caplog.text
    assert ("no model file" if damage == "missing" else "corrupt" if damage != "block-model"
            else "no table-key model") in caplog.text
    acc, t = chain_phase(rng, t, 400, job=job)
    assert feed(fresh, acc) == [] and fresh.status()["modelError"]
    fresh.train_now()  # retrained: hints come back
    acc, _ = chain_phase(rng, t, 300, job=job)
    assert len(feed(fresh, acc)) > 50


def test_backlog_is_never_hinted(tmp_path: Path) -> None:
    p, rng, t, job = trained(tmp_path)
    acc, _ = chain_phase(rng, t, 300, job=job)
    # The accesses are older than the horizon when they are read: hints for them would be too late.
    assert feed_at(p, acc, acc[-1].time + 10) == []


def feed_at(p: KeyPredictor, accesses: list[Access], now: float) -> list:
    return p.observe(accesses, now=now)


def test_key_prefetch_config_defaults_and_errors() -> None:
    assert parse_config({}).key_prefetch == KeyPrefetchConfig(False, 0.3, 50.0)
    assert PredictorConfig().key_prefetch.enabled is False  # no file: no key hints either
    c = parse_config({"keyPrefetch": {"enabled": True, "scoreThreshold": 0.6, "maxKeysPerSecond": 12.5,
                                      "kekSecretRef": {"name": "ignored"}}})
    assert c.key_prefetch == KeyPrefetchConfig(True, 0.6, 12.5)
    for bad, field in (({"keyPrefetch": []}, "keyPrefetch"), ({"keyPrefetch": {"enabled": "yes"}}, "enabled"),
                       ({"keyPrefetch": {"scoreThreshold": 1.5}}, "scoreThreshold"),
                       ({"keyPrefetch": {"scoreThreshold": True}}, "scoreThreshold"),
                       ({"keyPrefetch": {"maxKeysPerSecond": 0}}, "maxKeysPerSecond"),
                       ({"keyPrefetch": {"maxKeysPerSecond": -3}}, "maxKeysPerSecond"),
                       ({"keyPrefetch": {"maxKeysPerSecond": "50"}}, "maxKeysPerSecond")):
        with pytest.raises(ConfigError, match=field):
            parse_config(bad)


def test_bad_key_prefetch_file_keeps_the_previous_settings(tmp_path: Path) -> None:
    path = tmp_path / "predictor.json"
    path.write_text(json.dumps({"keyPrefetch": {"enabled": True, "maxKeysPerSecond": 20}}))
    cf = ConfigFile(path)
    assert cf.reload() is True and cf.config.key_prefetch.max_keys_per_second == 20.0
    path.write_text(json.dumps({"keyPrefetch": {"enabled": True, "maxKeysPerSecond": 0}}))
    os.utime(path, ns=(1, 1))
    assert cf.reload() is False and cf.config.key_prefetch.max_keys_per_second == 20.0
    assert "keyPrefetch.maxKeysPerSecond" in (cf.error or "")


def test_key_prefetching_polls_the_access_log_at_least_every_100_ms() -> None:
    on = parse_config({"pollIntervalSeconds": 1, "keyPrefetch": {"enabled": True}})
    assert poll_interval(on) == KEY_POLL_S == 0.1
    assert poll_interval(replace(on, poll_interval_s=0.05)) == 0.05  # a faster configured poll stays
    assert poll_interval(parse_config({"pollIntervalSeconds": 1})) == 1.0  # blocks only: as configured
    assert poll_interval(replace(on, enabled=False)) == 1.0
