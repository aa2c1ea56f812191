import json

import numpy as np
import pytest
from chronoshard.shardnode.unavailability.features import outages
from chronoshard.shardnode.unavailability.model import UnavailabilityModel
from chronoshard.shardnode.unavailability.types import HealthPoint, ModelCorrupt

from .histories import precursor_history


@pytest.fixture(scope="module")
def model() -> UnavailabilityModel:
    m = UnavailabilityModel(seed=1)
    report = m.fit([precursor_history(s) for s in range(4)])
    assert report.trained and report.reason is None
    assert all(report.positives[w] > 0 for w in m.windows)
    return m


@pytest.fixture(scope="module")
def test_copy() -> list[HealthPoint]:
    return precursor_history(99)


def test_the_model_learns_a_precursor(model: UnavailabilityModel, test_copy: list[HealthPoint]) -> None:
    starts = [s for s, _ in outages(test_copy)]
    times = np.array([p.time for p in test_copy])
    up = np.array([p.up for p in test_copy])
    near = np.zeros(len(times), dtype=bool)
    for s in starts:
        near |= (times >= s - 1500) & (times <= s + 400)
    before = np.flatnonzero(up & np.isin(times, [s - d for s in starts for d in (30, 120, 240)]))
    calm = np.flatnonzero(up & ~near & (times > times[0] + 1800))[::20]
    assert len(before) == 3 * len(starts) and len(calm) > 20
    p_before = [model.predict(test_copy, times[i]).probabilities[900.0] for i in before]
    p_calm = [model.predict(test_copy, times[i]).probabilities[900.0] for i in calm]
    assert min(p_before) > 0.7 > max(p_calm)
    r = model.predict(test_copy, starts[0] - 60)
    assert r.source == "model" and any("error rate" in d for d in r.drivers)


def test_risks_are_non_decreasing_in_the_window(model: UnavailabilityModel, test_copy: list[HealthPoint]) -> None:
    risks = model.risk_series(test_copy)
    assert risks.shape == (3, len(test_copy))
    assert (np.diff(risks, axis=0) >= 0).all()
    for i in range(0, len(test_copy), 97):
        p = model.predict(test_copy, test_copy[i].time).probabilities
        assert [p[w] for w in model.windows] == sorted(p.values())
        assert [p[w] for w in model.windows] == pytest.approx(risks[:, i].tolist(), abs=1e-9)


def test_inside_an_outage_the_risk_is_one(model: UnavailabilityModel, test_copy: list[HealthPoint]) -> None:
    start, end = outages(test_copy)[0]
    assert model.predict(test_copy, end).probabilities == {w: 1.0 for w in model.windows}


def test_round_trip_gives_the_same_predictions(model: UnavailabilityModel, test_copy: list[HealthPoint]) -> None:
    back = UnavailabilityModel.from_bytes(model.to_bytes())
    assert back.trained and back.windows == model.windows
    for t in (test_copy[500].time, test_copy[-100].time):
        assert back.predict(test_copy, t) == model.predict(test_copy, t)
    untrained = UnavailabilityModel.from_bytes(UnavailabilityModel().to_bytes())
    assert not untrained.trained


def test_gradient_boosting_round_trips_too(test_copy: list[HealthPoint]) -> None:
    m = UnavailabilityModel(kind="gradient-boosting")
    assert m.fit([precursor_history(s, hours=3.0) for s in range(2)]).trained
    back = UnavailabilityModel.from_bytes(m.to_bytes())
    series = back.risk_series(test_copy)
    assert np.allclose(series, m.risk_series(test_copy))
    for i in range(100, len(test_copy), 211):  # predict's one-row tree walk equals the vectorised one
        p = back.predict(test_copy, test_copy[i].time).probabilities
        assert [p[w] for w in back.windows] == pytest.approx(series[:, i].tolist(), abs=1e-9)


def _tampered(raw: bytes, change) -> bytes:
    doc = json.loads(raw)
    change(doc)
    return json.dumps(doc).encode()


def test_corrupt_bytes_raise_model_corrupt(model: UnavailabilityModel) -> None:
    raw = model.to_bytes()

    def flip_coefficient(d: dict) -> None:
        d["model"]["heads"][0]["scorer"]["coef"][0] += 1.0

    def other_features(d: dict) -> None:
        d["model"]["features"] = d["model"]["features"][:-1]

    cases = [b"", b"not json", raw[: len(raw) // 2], b"[]", b'{"model": {}}', _tampered(raw, flip_coefficient)]
    for bad in cases:
        with pytest.raises(ModelCorrupt):
            UnavailabilityModel.from_bytes(bad)
    # A consistent checksum over a body made for other features is still refused.
    import hashlib
    doc = json.loads(raw)
    other_features(doc)
    doc["sha256"] = hashlib.sha256(json.dumps(doc["model"], sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    with pytest.raises(ModelCorrupt, match="other features"):
        UnavailabilityModel.from_bytes(json.dumps(doc).encode())


def test_untrained_falls_back_to_the_rules(test_copy: list[HealthPoint]) -> None:
    m = UnavailabilityModel()
    report = m.fit([test_copy[:200]])  # no outage in it
    assert not report.trained and "positive" in (report.reason or "")
    r = m.predict(test_copy, test_copy[400].time)
    assert r.source == "rules" and set(r.probabilities) == set(m.windows)
