"""A bounded version of the mirror fault soak (tests/bench/bench_mirror_faults.py): randomized runs of every fault
against a real primary/mirror pair of node processes, each history checked: in sync mode no acknowledged write is
lost and no read-your-writes read is stale; in async mode every lost acknowledged write is among the LSNs the
rejoined old primary reported as discarded."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from tests.support.kubelet_dir import write_keyring
from tests.support.mirror_runs import FAULTS, Pair, run_once


@pytest.fixture
def keyring(tmp_path):
    d = tmp_path / "keyring"
    write_keyring(d, 1, {1: ("primary", os.urandom(32))})
    return d


async def soak(tmp_path, keyring, mode: str, runs: int, seed: int) -> list:
    pair = Pair(tmp_path / "pair", keyring, mode)
    await pair.setup()
    try:
        rng = random.Random(seed)
        return [await run_once(pair, i, rng, FAULTS[i % len(FAULTS)]) for i in range(runs)]
    finally:
        await pair.close()


def test_sync_mode_loses_no_acknowledged_write_and_serves_no_stale_read(tmp_path, keyring):
    results = asyncio.run(soak(tmp_path, keyring, "sync", runs=8, seed=17))
    for r in results:
        assert r.report.ok, f"{r.fault}: {r.report.summary()}"
        assert r.report.acknowledged > 0, f"{r.fault}: no write was acknowledged in the run"
    assert {r.fault for r in results} == set(FAULTS)


def test_async_mode_loses_only_what_the_old_primary_reported_discarded(tmp_path, keyring):
    results = asyncio.run(soak(tmp_path, keyring, "async", runs=8, seed=5))
    for r in results:
        assert not r.lost_unreported, f"{r.fault}: lost and not reported: {r.lost_unreported}"
        assert not (r.report.impossible or r.report.phantom), r.report.summary()
