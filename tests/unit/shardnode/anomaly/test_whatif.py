import dataclasses
import itertools

import pytest
from chronoshard.shardnode.anomaly.detector import WindowDetector
from chronoshard.shardnode.anomaly.features import FeatureContext, learn_context, window_features
from chronoshard.shardnode.anomaly.types import ChangeObservation
from chronoshard.shardnode.anomaly.whatif import what_if

from tests.support.anomaly_streams import Stream, random_value, text_value


@pytest.fixture(scope="module")
def trained() -> tuple[Stream, WindowDetector, FeatureContext]:
    """A table of 300 keys with two hours of ordinary overwrites by two identities (~1/s), and its detector."""
    s = Stream(seed=11)
    for i in range(300):
        s.put(-1000.0 + i, f"k{i}", text_value(s.rng, 512), "app")
    t = 0.0
    while t < 7200:
        s.put(t, f"k{s.rng.randrange(300)}", text_value(s.rng, 512), s.rng.choice(("app", "etl")))
        t += s.rng.expovariate(1.0)
    ctx = learn_context(s.out)
    windows = [window_features("t", m * 60.0, m * 60.0 + 60, s.out, ctx) for m in range(120)]
    return s, WindowDetector.fit(windows), ctx


def _proposed(s: Stream, keys: list[str], value: bytes | None, who: str = "app") -> list[ChangeObservation]:
    """The batch as the shadow would describe it, built on a copy so the stream itself is not changed."""
    probe = Stream(seed=99)
    probe.values = dict(s.values)
    probe.lsn = itertools.count(10**6)
    return [probe.delete(7250.0, k, who) if value is None else probe.put(7250.0, k, value, who) for k in keys]


def test_a_bulk_encryption_batch_would_alarm_and_is_counted(trained: tuple) -> None:
    s, det, ctx = trained
    current = [o for o in s.out if o.time >= 7200 - 60]  # whatever the current window already holds
    batch = _proposed(s, [f"k{i}" for i in range(100)], random_value(s.rng, 528))
    batch += _proposed(s, ["brand-new"], text_value(s.rng, 512))
    state = det.to_state()
    r = what_if(batch, current, table="t", window_start=7200.0, window_end=7260.0, context=ctx, detector=det,
                table_keys=300)  # fmt: skip
    assert (r.creates, r.overwrites, r.deletes, r.unchanged) == (1, 100, 0, 0)
    assert r.bytes == 100 * 528 + 512
    assert r.score >= 0.8 and r.kind == "encryption" and r.severity > 0.5
    assert r.drivers and sum(d.weight for d in r.drivers) == pytest.approx(1.0)
    assert det.to_state() == state  # nothing learned


def test_a_small_ordinary_batch_stays_quiet(trained: tuple) -> None:
    s, det, ctx = trained
    batch = _proposed(s, ["k1", "k2", "k3"], text_value(s.rng, 512))
    r = what_if(batch, [], table="t", window_start=7200.0, window_end=7260.0, context=ctx, detector=det)
    assert r.overwrites == 3 and r.score < 0.8


def test_deletes_of_nothing_and_identical_rewrites_are_unchanged(trained: tuple) -> None:
    s, det, ctx = trained
    same = s.values["k5"][0]
    batch = _proposed(s, ["no-such-key"], None) + _proposed(s, ["k5"], same) + _proposed(s, ["k6"], None)
    r = what_if(batch, [], table="t", window_start=7200.0, window_end=7260.0, context=ctx, detector=det)
    assert (r.unchanged, r.deletes, r.overwrites, r.creates) == (2, 1, 0, 0)
    assert r.bytes == len(s.values["k6"][0])


def test_the_batch_lands_in_the_window_and_other_tables_are_ignored(trained: tuple) -> None:
    s, det, ctx = trained
    late = [dataclasses.replace(o, time=99_999.0) for o in _proposed(s, [f"k{i}" for i in range(100)], None)]
    other = [dataclasses.replace(o, table="u") for o in late]
    r = what_if(late + other, [], table="t", window_start=7200.0, window_end=7260.0, context=ctx, detector=det)
    assert r.deletes == 100 and r.score >= 0.8 and r.kind == "mass-delete"
