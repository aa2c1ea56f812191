import math
import random

import pytest
from chronoshard.shardnode.anomaly.features import FeatureContext, window_features
from chronoshard.shardnode.anomaly.impact import (
    UNEVEN_CHI2,
    UNIFORM_CHI2,
    analyse,
    became_uniform,
    merged_drivers,
    poisson_isf,
    severity_of,
    uniformity_chi2,
    usual_pace,
)
from chronoshard.shardnode.anomaly.profile import byte_profile
from chronoshard.shardnode.anomaly.types import Driver, Score, WindowFeatures

from tests.support.anomaly_streams import Stream, random_value, text_value

CTX = FeatureContext(frozenset({"app", "etl"}))


def _table(keys: int = 200) -> Stream:
    s = Stream(seed=4)
    for i in range(keys):
        s.put(-500.0 + i, f"k{i}", text_value(s.rng, 1024), "app" if i % 2 else "etl")
    return s


def _background(s: Stream, start: float, end: float, per_second: float = 1.0, who: str = "app") -> None:
    t = start
    while t < end:
        s.put(t, f"k{s.rng.randrange(150, 200)}", text_value(s.rng, 1024), who)
        t += 1 / per_second


def _window(s: Stream, start: float, end: float, *drivers: tuple[str, float]) -> tuple[WindowFeatures, Score]:
    f = window_features("t", start, end, s.out, CTX)
    return f, Score(0.95, "test", tuple(Driver(n, f.as_dict().get(n, 0.0), 0.0, w) for n, w in drivers))


def test_a_mass_delete_by_one_identity_is_exactly_its_deletes() -> None:
    s = _table()
    before = {f"k{i}": s.values[f"k{i}"] for i in range(80)}
    _background(s, 0.0, 30.0, who="app")
    s.delete(30.0, "k190", "app")  # an ordinary delete by someone else meanwhile
    _background(s, 30.5, 50.0, who="app")
    last_good = s.out[-1]
    victims = []
    for i in range(80):  # starts before the flagged window
        victims.append(s.delete(50.0 + i * 0.75, f"k{i}", "etl"))
        _background(s, 50.1 + i * 0.75, 50.2 + i * 0.75, who="app")
    _background(s, 110.0, 120.0, who="app")
    inc = analyse("t", [_window(s, 60.0, 120.0, ("delete_share", 0.8), ("delete_rate", 0.2))], s.out, CTX,
                  table_keys=200)  # fmt: skip
    assert {k.key for k in inc.keys} == {f"k{i}" for i in range(80)}
    assert inc.kind == "mass-delete" and inc.identities == ("etl",)
    assert inc.first_lsn == victims[0].lsn and inc.last_lsn == victims[-1].lsn
    assert inc.id == f"t.{victims[0].lsn}"
    assert inc.known_good_lsn == victims[0].lsn - 1 and inc.known_good_time == last_good.time
    assert inc.start_time == 50.0
    for k in inc.keys:
        value, lsn = before[k.key]
        assert (k.before_lsn, k.first_lsn, k.bytes) == (lsn, k.last_lsn, len(value))
    assert inc.bytes == sum(len(v) for v, _ in before.values())
    assert 0.0 < inc.severity <= 1.0


def test_encryption_leaves_out_other_identities_and_repairs_of_damaged_keys() -> None:
    s = _table()
    _background(s, 0.0, 60.0, per_second=0.5, who="app")
    for i in range(30):
        s.put(5.0 + i, f"k{i}", random_value(s.rng, 1040), "etl")
    for i in range(30, 50):
        s.put(5.5 + i, f"k{i}", text_value(s.rng, 1024), "app")  # ordinary work in the same window
    for i in range(3):
        s.put(50.0 + i, f"k{i}", text_value(s.rng, 1024), "app")  # someone writes over a damaged value
    inc = analyse("t", [_window(s, 0.0, 60.0, ("encrypted_rate", 0.6), ("distorted_rate", 0.4))], s.out, CTX)
    assert {k.key for k in inc.keys} == {f"k{i}" for i in range(30)}
    assert inc.kind == "encryption" and inc.identities == ("etl",)


def test_a_drip_is_followed_back_through_the_margin() -> None:
    s = _table()
    bad: set[str] = set()
    for minute in range(20):
        _background(s, minute * 60.0, minute * 60.0 + 60, per_second=0.3, who="app")
        for j in range(2):
            key = f"k{minute * 2 + j}"
            plain = s.values[key][0]
            s.put(minute * 60.0 + 20 + 20 * j, key, plain[:300] + s.rng.randbytes(len(plain) - 300), "app")
            bad.add(key)
    flagged = [_window(s, m * 60.0, m * 60.0 + 60, ("distorted_rate_sustained", 1.0)) for m in (17, 18, 19)]
    inc = analyse("t", flagged, s.out, CTX)
    assert {k.key for k in inc.keys} == bad
    assert inc.kind == "corruption-drip" and inc.identities == ("app",)
    assert inc.start_time == 20.0


def test_before_lsn_lookup_is_used_when_given() -> None:
    s = _table()
    for i in range(5):
        s.delete(1.0 + i, f"k{i}", "etl")
    inc = analyse("t", [_window(s, 0.0, 60.0, ("delete_rate", 1.0))], s.out, CTX, before_lsn=lambda key, lsn: 7)
    assert {k.before_lsn for k in inc.keys} == {7}


def test_severity_grows_with_breadth_and_destructiveness() -> None:
    small, _ = severity_of(0.9, "mass-overwrite", 10, 10_000, 10_000)
    wide, _ = severity_of(0.9, "mass-overwrite", 2_000, 10_000, 2_000_000)
    deleted, parts = severity_of(0.9, "mass-delete", 2_000, 10_000, 2_000_000)
    assert 0 < small < wide < deleted <= 1
    assert parts["key_share"] == pytest.approx(0.2) and parts["breadth"] == 1.0
    assert severity_of(0.0, "mass-delete", 10**6, 10**6, 10**12)[0] == 0.0


def test_merged_drivers_sum_to_one() -> None:
    f = window_features("t", 0.0, 60.0, [], CTX)
    d = merged_drivers([(f, Score(1.0, "x", (Driver("a", 1, 0, 0.5), Driver("b", 1, 0, 0.5)))),
                        (f, Score(0.5, "x", (Driver("a", 2, 0, 1.0),)))])  # fmt: skip
    assert [x.feature for x in d] == ["a", "b"]
    assert sum(x.weight for x in d) == pytest.approx(1.0)
    assert d[0].weight == pytest.approx(1.0 / 1.5)


def test_no_window_or_no_change_is_an_error() -> None:
    s = _table(5)
    with pytest.raises(ValueError):
        analyse("t", [], s.out, CTX)
    with pytest.raises(ValueError):
        analyse("t", [_window(s, 1000.0, 1060.0, ("delete_rate", 1.0))], s.out, CTX)


def test_an_identity_far_above_its_share_is_the_culprit_even_when_others_are_busy() -> None:
    s = _table()
    ctx = FeatureContext(frozenset({"app", "etl", "report"}), shares=(("app", 0.6), ("etl", 0.35), ("report", 0.05)))
    for i in range(120):  # ordinary overwrites by app and etl, more of them than the deletes
        s.put(0.2 + i * 0.4, f"k{80 + i % 70}", text_value(s.rng, 1024), "app" if i % 3 else "etl")
        if i < 60:
            s.delete(0.3 + i * 0.4, f"k{i}", "report")
    f = window_features("t", 0.0, 60.0, s.out, ctx)
    drivers = (Driver("identity_surprise", 90.0, 1.0, 0.95), Driver("delete_share", 0.3, 0.0, 0.05))
    inc = analyse("t", [(f, Score(1.0, "test", drivers))], s.out, ctx)
    assert {k.key for k in inc.keys} == {f"k{i}" for i in range(60)}
    assert inc.identities == ("report",) and inc.kind == "mass-delete"


def _uneven(rng: random.Random, size: int = 4096) -> bytes:
    """Compressed-media-like bytes: near 8 bits of entropy but the low byte values half again as frequent."""
    return bytes(rng.choices(range(256), weights=[1.5 if b < 64 else 1.0 for b in range(256)], k=size))


def test_chi_square_tells_compressed_from_ciphertext() -> None:
    rng = random.Random(7)
    media, other, cipher = _uneven(rng), _uneven(rng), random_value(rng, 4096)
    pm, po, pc = byte_profile(media), byte_profile(other), byte_profile(cipher)
    assert pm.entropy > 7.9  # the entropy alone cannot tell: both look like ciphertext
    assert uniformity_chi2(pm, 4096) >= UNEVEN_CHI2 and uniformity_chi2(pc, 4096) <= UNIFORM_CHI2
    assert became_uniform(pc, pm, 4096, 4096)
    assert not became_uniform(po, pm, 4096, 4096)  # media over media
    assert not became_uniform(byte_profile(random_value(rng, 4096)), pc, 4096, 4096)  # ciphertext over ciphertext
    assert not became_uniform(byte_profile(cipher[:100]), byte_profile(media[:100]), 100, 100)  # too short to test


def test_encryption_over_compressed_values_is_attributed_but_not_media_rewrites() -> None:
    s = _table()
    for i in range(100, 150):  # media keys
        s.put(-100.0 + i * 0.1, f"k{i}", _uneven(s.rng), "app")
    _background(s, 0.0, 60.0, per_second=0.5, who="app")
    for i in range(40):  # the culprit encrypts text keys and media keys alike
        s.put(60.0 + i, f"k{i}", random_value(s.rng, 1040), "etl")
        s.put(60.5 + i, f"k{100 + i}", random_value(s.rng, 4096), "etl")
    s.put(101.0, "k145", _uneven(s.rng), "app")  # an ordinary media rewrite meanwhile
    s.put(102.0, "k146", _uneven(s.rng), "etl")  # and one by the culprit: its bytes cannot tell, so it stays out
    recent = [o for o in s.out if o.time >= 0]  # the media keys were written long before
    inc = analyse("t", [_window(s, 60.0, 120.0, ("encrypted_share", 1.0))], recent, CTX)
    got = {k.key for k in inc.keys}
    assert got == {f"k{i}" for i in range(40)} | {f"k{100 + i}" for i in range(40)}, sorted(got)
    assert inc.kind == "encryption"


def test_poisson_isf_is_the_smallest_rare_count() -> None:
    for mu in (0.5, 4.0, 30.0):
        k = poisson_isf(mu, 1e-3)
        pmf = [math.exp(-mu) * mu**i / math.factorial(i) for i in range(k + 1)]
        assert 1 - sum(pmf[:k]) <= 1e-3 < 1 - sum(pmf[: k - 1])


def test_a_burst_by_a_usual_writer_keeps_its_ordinary_writes_out() -> None:
    s = _table()
    ctx = FeatureContext(frozenset({"app", "etl"}), shares=(("app", 0.85), ("etl", 0.15)))
    ordinary = set()
    for i in range(400):  # etl's ordinary pace, one overwrite every 3 s, through the margin and after the burst
        if not 600.0 <= i * 3.0 < 640.0:
            ordinary.add(s.put(i * 3.0, f"k{150 + i % 50}", text_value(s.rng, 1024), "etl").key)
    burst = {f"k{i}" for i in range(120)}
    for i in range(120):  # plausible content at 3 a second: nothing in the bytes, only the pace tells
        s.put(600.0 + i / 3, f"k{i}", text_value(s.rng, 1024), "etl")
    f = window_features("t", 600.0, 660.0, s.out, ctx)
    inc = analyse("t", [(f, Score(0.9, "test", (Driver("identity_surprise", 20.0, 1.0, 1.0),)))], s.out, ctx)
    assert {k.key for k in inc.keys} == burst
    assert inc.identities == ("etl",) and inc.kind == "mass-overwrite"
    assert usual_pace(s.out, "etl", 600.0, 60.0) == pytest.approx(1 / 3)
    assert usual_pace([o for o in s.out if o.time >= 0], "etl", 100.0, 60.0) is None  # under three windows
