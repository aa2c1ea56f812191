import random
import zlib

import pytest
from chronoshard.shardnode.anomaly.features import (
    CONTEXT_NAMES,
    FEATURE_NAMES,
    SCORED_NAMES,
    FeatureContext,
    count_by_op,
    jumps,
    learn_context,
    reshaped,
    window_features,
)
from chronoshard.shardnode.anomaly.profile import byte_profile
from chronoshard.shardnode.anomaly.types import REVERSION, REWRAP, ROTATION

from tests.support.anomaly_streams import Stream, random_value, text_value


def _seeded(keys: int = 10, identity: str = "app") -> Stream:
    s = Stream()
    for i in range(keys):
        s.put(-100.0, f"k{i}", text_value(s.rng), identity)
    return s


def test_rates_count_creates_overwrites_and_live_deletes_per_second() -> None:
    s = _seeded(5)
    for i in range(3):
        s.put(1.0 + i, f"new{i}", text_value(s.rng))
    for i in range(5):
        s.put(10.0 + i, f"k{i}", text_value(s.rng))
    s.delete(20.0, "k0")
    s.delete(21.0, "never-there")  # deleting nothing destroys nothing
    f = window_features("t", 0.0, 60.0, s.out, FeatureContext(frozenset({"app"})))
    d = f.as_dict()
    assert f.names == FEATURE_NAMES
    assert d["put_rate"] == pytest.approx(8 / 60)
    assert d["overwrite_rate"] == pytest.approx(5 / 60)
    assert d["new_key_rate"] == pytest.approx(3 / 60)
    assert d["delete_rate"] == pytest.approx(1 / 60)
    assert d["delete_share"] == pytest.approx(1 / 9)
    assert f.changes == 9


def test_only_the_window_and_the_table_count() -> None:
    s = _seeded(3)
    s.put(59.9, "k0", text_value(s.rng))
    s.put(60.0, "k1", text_value(s.rng))  # the window is [start, end)
    other = Stream(table="u")
    other.put(5.0, "x", text_value(other.rng))
    d = window_features("t", 0.0, 60.0, [*s.out, *other.out], FeatureContext()).as_dict()
    assert d["overwrite_rate"] == pytest.approx(1 / 60)


def test_rotation_and_reversion_are_context_not_client_writes() -> None:
    s = _seeded(6)
    for i in range(6):
        v, _ = s.values[f"k{i}"]
        s.put(1.0 + i, f"k{i}", v, "operator", ROTATION, REWRAP)
    for i in range(3):
        s.put(30.0 + i, f"k{i}", random_value(s.rng), "shadow", REVERSION)
    f = window_features("t", 0.0, 60.0, s.out, FeatureContext(frozenset({"app"})))
    d = f.as_dict()
    assert f.changes == 0
    assert d["overwrite_rate"] == 0.0 and d["encrypted_rate"] == 0.0 and d["new_identity_rate"] == 0.0
    assert d["rotation_rate"] == pytest.approx(6 / 60)
    assert d["reversion_rate"] == pytest.approx(3 / 60)
    assert {"rotation_rate", "reversion_rate", "new_key_rate"} <= CONTEXT_NAMES
    assert not CONTEXT_NAMES & set(SCORED_NAMES)


def test_encryption_raises_entropy_and_partial_encryption_moves_the_histogram() -> None:
    s = _seeded(8)
    for i in range(4):
        s.put(1.0 + i, f"k{i}", random_value(s.rng, 2064))
    for i in range(4, 8):
        plain = s.values[f"k{i}"][0]
        s.put(10.0 + i, f"k{i}", plain[:1200] + s.rng.randbytes(len(plain) - 1200))
    d = window_features("t", 0.0, 60.0, s.out, FeatureContext(frozenset({"app"}))).as_dict()
    assert d["encrypted_share"] == pytest.approx(0.5)
    assert d["encrypted_rate"] == pytest.approx(4 / 60)
    assert d["distorted_share"] == pytest.approx(1.0)
    assert d["entropy_rise"] > 1.5
    assert d["hist_distance"] > 0.3


def test_ordinary_rewrites_show_no_content_jump() -> None:
    s = _seeded(8)
    for i in range(8):
        s.put(1.0 + i, f"k{i}", text_value(s.rng))
    d = window_features("t", 0.0, 60.0, s.out, FeatureContext(frozenset({"app"}))).as_dict()
    assert d["encrypted_share"] == 0.0 and d["distorted_share"] == 0.0
    assert abs(d["entropy_rise"]) < 0.2 and d["hist_distance"] < 0.1


def test_a_short_compressed_value_grown_long_is_not_encryption() -> None:
    rng = random.Random(3)
    blob = zlib.compress(text_value(rng, 200_000), 9)
    short, long = blob[:512], blob[512 : 512 + 8192]
    assert byte_profile(short).entropy < 7.5 < byte_profile(long).entropy  # only the length differs
    enc, _, _ = jumps(byte_profile(long), byte_profile(short), len(long), len(short))
    assert not enc
    text = text_value(rng, 512)
    enc, dis, _ = jumps(byte_profile(rng.randbytes(512)), byte_profile(text), 512, 512)
    assert enc and dis


def test_top_identity_share_and_new_identities() -> None:
    s = _seeded(10)
    for i in range(6):
        s.put(1.0 + i, f"k{i}", text_value(s.rng), "app")
    for i in range(6, 8):
        s.put(20.0 + i, f"k{i}", text_value(s.rng), "intruder")
    s.put(30.0, "fresh", text_value(s.rng), "other-new")  # a new identity creating a key destroys nothing
    d = window_features("t", 0.0, 60.0, s.out, FeatureContext(frozenset({"app"}))).as_dict()
    assert d["top_identity_share"] == pytest.approx(6 / 8)
    assert d["new_identity_rate"] == pytest.approx(2 / 60)


def test_size_shift_and_size_distribution_against_training() -> None:
    s = _seeded(6)
    context = learn_context([s.put(-50.0, f"k{i}", text_value(s.rng, 2048)) for i in range(6)])
    same = window_features("t", 0.0, 60.0, [s.put(1.0, "k0", text_value(s.rng, 2048))], context).as_dict()
    grown = window_features("t", 60.0, 120.0, [s.put(61.0, "k1", text_value(s.rng, 64 * 1024))], context).as_dict()
    assert same["size_shift"] == 0.0 and same["size_dist_shift"] == pytest.approx(0.0, abs=1e-9)
    assert grown["size_shift"] == pytest.approx(5.0)
    assert grown["size_dist_shift"] == pytest.approx(1.0)


def test_learned_context_and_its_state() -> None:
    s = Stream()
    s.put(0.0, "a", text_value(s.rng), "app")
    s.put(1.0, "a", text_value(s.rng), None)
    s.put(2.0, "b", text_value(s.rng), "shadow", REVERSION)
    ctx = learn_context(s.out)
    assert ctx.identities == frozenset({"app", None})  # the shadow's own writes teach nothing
    assert FeatureContext.from_state(ctx.to_state()) == ctx
    with pytest.raises(ValueError):
        FeatureContext.from_state({"identities": ["a"], "anonymous": False, "size_hist": [1.0]})
    with pytest.raises(ValueError):
        FeatureContext.from_state({"identities": ["a"]})


def test_count_by_op() -> None:
    s = _seeded(2)
    s.put(1.0, "k0", text_value(s.rng))
    s.put(2.0, "n", text_value(s.rng))
    s.delete(3.0, "k1")
    s.delete(4.0, "gone")
    c = count_by_op(s.out[2:])
    assert (c["overwrite"], c["create"], c["delete"], c["noop"]) == (1, 1, 1, 1)


def test_identity_surprise_is_a_known_identity_far_above_its_usual_share() -> None:
    s = _seeded(400)
    ctx = FeatureContext(frozenset({"app", "etl", "report"}), shares=(("app", 0.6), ("etl", 0.35), ("report", 0.05)))
    usual = Stream(seed=5)
    usual.values = dict(s.values)
    for i in range(100):
        who = "app" if i % 10 < 6 else "etl" if i % 10 < 9 else "report"  # the usual shares exactly
        usual.put(1.0 + i * 0.5, f"k{i}", text_value(usual.rng), who)
    ordinary = window_features("t", 0.0, 60.0, usual.out, ctx).as_dict()["identity_surprise"]
    burst = Stream(seed=6)
    burst.values = dict(s.values)
    for i in range(100):
        burst.put(1.0 + i * 0.5, f"k{i}", text_value(burst.rng), "report" if i < 60 else "app")
    surprising = window_features("t", 0.0, 60.0, burst.out, ctx).as_dict()["identity_surprise"]
    assert ordinary < 2.0 < 20.0 < surprising
    # The same identity touching all three keys of a tiny window is no surprise.
    tiny = [burst.put(70.0 + i, f"k{i}", text_value(burst.rng), "app") for i in range(3)]
    assert window_features("t", 60.0, 120.0, tiny, ctx).as_dict()["identity_surprise"] < 1.0


def test_learned_shares_survive_the_state() -> None:
    s = Stream()
    for i in range(10):
        s.put(float(i), f"k{i % 4}", text_value(s.rng), "app" if i % 5 else None)
    ctx = learn_context(s.out)
    assert ctx.share("app") == pytest.approx(5 / 6) and ctx.share(None) == pytest.approx(1 / 6)
    assert ctx.share("nobody") is None
    assert FeatureContext.from_state(ctx.to_state()) == ctx


def test_zeros_over_a_compressed_value_reshape_it_but_are_no_window_distortion() -> None:
    rng = random.Random(8)
    packed = zlib.compress(text_value(rng, 100_000), 9)[:4096]
    zeros = bytes(4096)
    assert reshaped(byte_profile(zeros), byte_profile(packed), 4096, 4096)
    assert not jumps(byte_profile(zeros), byte_profile(packed), 4096, 4096)[1]  # could be a repair: not counted
    other = zlib.compress(text_value(rng, 100_000), 9)[:4096]
    assert not reshaped(byte_profile(other), byte_profile(packed), 4096, 4096)
