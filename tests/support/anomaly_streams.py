"""Small synthetic change streams for the anomaly unit tests: values with believable bytes, observations made from
them, and ordinary windows of features (seeded, so reproducible)."""

from __future__ import annotations

import itertools
import json
import random

from chronoshard.shardnode.anomaly.features import FEATURE_NAMES
from chronoshard.shardnode.anomaly.profile import byte_profile
from chronoshard.shardnode.anomaly.types import CLIENT, DELETE, PUT, ChangeObservation, WindowFeatures


def text_value(rng: random.Random, size: int = 2048) -> bytes:
    """JSON-like records, ``size`` bytes."""
    out = b""
    while len(out) < size:
        rec = {"id": rng.randrange(10**6), "name": f"user{rng.randrange(1000)}", "qty": rng.randrange(40)}
        out += json.dumps(rec).encode() + b"\n"
    return out[:size]


def random_value(rng: random.Random, size: int = 2048) -> bytes:
    """Ciphertext-like bytes."""
    return rng.randbytes(size)


class Stream:
    """Builds observations of one table with real profiles and a running LSN, remembering each key's value."""

    def __init__(self, table: str = "t", seed: int = 0) -> None:
        self.table = table
        self.rng = random.Random(seed)
        self.lsn = itertools.count(1)
        self.values: dict[str, tuple[bytes, int]] = {}  # key -> (value, lsn)
        self.out: list[ChangeObservation] = []

    def put(self, t: float, key: str, value: bytes, identity: str | None = "app", origin: str = CLIENT,
            op: str = PUT) -> ChangeObservation:  # fmt: skip
        prev = self.values.get(key)
        lsn = next(self.lsn)
        o = ChangeObservation(
            lsn, t, self.table, key, op, len(value), len(prev[0]) if prev else None, prev is not None, identity,
            byte_profile(value), byte_profile(prev[0]) if prev else None, origin, prev[1] if prev else None,
        )  # fmt: skip
        self.values[key] = (value, lsn)
        self.out.append(o)
        return o

    def delete(self, t: float, key: str, identity: str | None = "app") -> ChangeObservation:
        prev = self.values.pop(key, None)
        lsn = next(self.lsn)
        o = ChangeObservation(
            lsn, t, self.table, key, DELETE, 0, len(prev[0]) if prev else None, prev is not None, identity, None,
            byte_profile(prev[0]) if prev else None, CLIENT, prev[1] if prev else None,
        )  # fmt: skip
        self.out.append(o)
        return o


def ordinary_windows(
    n: int, seed: int = 0, rate: float = 2.0, table: str = "t", span: float = 60.0, start: float = 0.0
) -> list[WindowFeatures]:
    """``n`` consecutive windows of ordinary traffic around ``rate`` overwrites a second: Poisson-ish counts, a
    few deletes, now and then one legitimate content jump, two identities sharing the work."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ow = max(0.0, rng.gauss(rate, rate * 0.2))
        dl = rng.choice((0, 0, 1, 1, 2)) / span
        d = dict.fromkeys(FEATURE_NAMES, 0.0)
        d.update(
            put_rate=ow + rate * 0.3, overwrite_rate=ow, delete_rate=dl, new_key_rate=rate * 0.3,
            delete_share=dl / (ow + rate * 0.3 + dl) if ow + dl > 0 else 0.0,
            size_shift=abs(rng.gauss(0.1, 0.03)), size_dist_shift=abs(rng.gauss(0.1, 0.02)),
            entropy_rise=rng.gauss(0, 0.01), hist_distance=abs(rng.gauss(0.02, 0.005)),
            top_identity_share=rng.uniform(0.5, 0.7),
            encrypted_rate=(1 / span) if rng.random() < 0.01 else 0.0,
            distorted_rate=(1 / span) if rng.random() < 0.02 else 0.0,
        )  # fmt: skip
        out.append(features_of(d, table, start + i * span, start + (i + 1) * span))
    return out


def features_of(values: dict[str, float], table: str = "t", start: float = 0.0, end: float = 60.0) -> WindowFeatures:
    """A window with these feature values (the others 0)."""
    d = dict.fromkeys(FEATURE_NAMES, 0.0)
    d.update(values)
    return WindowFeatures(table, start, end, FEATURE_NAMES, tuple(d[n] for n in FEATURE_NAMES), 100)
