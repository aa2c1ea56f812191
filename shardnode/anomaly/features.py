"""The features of one table's changes in one window, computed from its ``ChangeObservation``s.

Only client changes are features: our own rewraps (op ``rewrap`` or origin ROTATION) and reversion writes (origin
REVERSION) are counted as context (``rotation_rate``, ``reversion_rate``) so a key rotation or a Reversion run is
never mistaken for a burst of client writes. What a feature needs from the past (the identities seen, their
usual shares of the overwritten/deleted keys and the value sizes written during training) travels in a
``FeatureContext`` (``learn_context`` of the training observations) the caller keeps beside the detector.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .calibration import binom_sf
from .profile import hist_distance
from .types import CLIENT, DELETE, PUT, REVERSION, REWRAP, ByteProfile, ChangeObservation, WindowFeatures

FEATURE_NAMES: tuple[str, ...] = (
    "put_rate",  # client puts per second (creates and overwrites)
    "overwrite_rate",  # puts over a live value per second
    "delete_rate",  # deletes of a live value per second
    "delete_share",  # deletes among the window's client changes (a burst of traffic keeps it, a mass delete not)
    "new_key_rate",  # puts creating a key per second
    "size_shift",  # mean |log2(size / prev_size)| of overwrites
    "size_dist_shift",  # Jensen-Shannon distance of the window's overwrite sizes against the training sizes
    "entropy_rise",  # mean (entropy - previous entropy) of overwrites, bits per byte
    "encrypted_share",  # share of overwrites whose entropy rose to >= ENCRYPTED_BITS from < PLAIN_BITS
    "encrypted_rate",  # the same overwrites per second (a slow drip shows in the count, not the share)
    "hist_distance",  # mean byte-histogram distance of overwrites to the key's previous version
    "distorted_share",  # share of overwrites whose bytes jumped (see ``jumps``: partial encryption, corruption)
    "distorted_rate",  # the same overwrites per second
    "top_identity_share",  # share of the window's overwritten/deleted keys that its top identity touched
    "new_identity_rate",  # overwritten/deleted keys per second by identities unseen in training
    "identity_surprise",  # -log10 P(an identity touched this many of the window's overwritten/deleted keys | its
    # usual share): a known identity suddenly doing far more than its share (a compromised service account)
    "rotation_rate",  # context: rewraps per second (never scored)
    "reversion_rate",  # context: reversion writes per second (never scored)
)
# Creating keys destroys nothing and rotations/reversions are ours: these are reported, never scored (a backfill
# or a rotation must not alarm).
# The top identity's share is reported but not scored: in a window of three keys one identity touching all is
# ordinary, so its rarity depends on the window's size; identity_surprise scores the same thing with it accounted.
CONTEXT_NAMES: frozenset[str] = frozenset(
    {"put_rate", "new_key_rate", "rotation_rate", "reversion_rate", "top_identity_share"}
)
SCORED_NAMES: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n not in CONTEXT_NAMES)
RATE_NAMES: frozenset[str] = frozenset(n for n in FEATURE_NAMES if n.endswith("_rate"))

# Entropy thresholds for long values; for a value of n bytes each is lowered by 8 - random_entropy(n).
ENCRYPTED_BITS = 7.5  # ciphertext and random bytes sit near 8 bits per byte
PLAIN_BITS = 7.0  # "from well below": compressed media already near 8 bits is not a rise
DISTORTED = 0.3  # histogram distance above which a version no longer looks like its predecessor
ENTROPY_JUMP = 0.5  # an entropy change this large (bits per byte) too: a broad histogram hides partial encryption


def random_entropy(size: int) -> float:
    """About the entropy (bits per byte) that ``size`` random bytes show: short values cannot reach 8, so a short
    compressed value looks less random than a long one (Miller-Madow: log2(m) - (m - 1) / (2 n ln 2))."""
    if size <= 1:
        return 0.0
    m = min(256, size)
    return max(0.0, math.log2(m) - (m - 1) / (2 * size * math.log(2)))


def jumps(profile: ByteProfile, prev: ByteProfile, size: int, prev_size: int) -> tuple[bool, bool, float]:
    """How a version's bytes changed against its predecessor's: (encrypted: entropy rose to near that of random
    bytes of its size from well below; distorted: the predecessor was well below random and the histogram distance
    passed DISTORTED or the entropy moved by ENTROPY_JUMP; the distance). Entropies are measured against that of
    random bytes of the value's size, so a short compressed value does not look plain."""
    d = hist_distance(profile, prev)
    gap = profile.entropy - random_entropy(size)
    prev_gap = prev.entropy - random_entropy(prev_size)
    plain_before = prev_gap < PLAIN_BITS - 8
    encrypted = gap >= ENCRYPTED_BITS - 8 and plain_before
    # Only a value that was plain can be damaged in a way its bytes show; writing plain bytes over ciphertext-like
    # ones is a repair (or a format change) and counts for nothing.
    moved = abs(gap - prev_gap) >= ENTROPY_JUMP
    return encrypted, plain_before and (d > DISTORTED or moved), d


MIN_SHARE = 0.001  # an identity's usual share is never taken below this (a rare writer is not a never-writer)


def reshaped(profile: ByteProfile, prev: ByteProfile, size: int, prev_size: int) -> bool:
    """The bytes changed shape in either direction: histogram distance past DISTORTED, or entropy (against random
    bytes of the size) moved by ENTROPY_JUMP with one side well below random. Unlike ``jumps`` this counts plain
    bytes written over ciphertext-like ones too (zeros over a compressed value): the impact analysis tells a repair
    from damage by who wrote the version it replaces, which a window's features cannot."""
    gap = profile.entropy - random_entropy(size)
    prev_gap = prev.entropy - random_entropy(prev_size)
    moved = abs(gap - prev_gap) >= ENTROPY_JUMP and min(gap, prev_gap) < PLAIN_BITS - 8
    return moved or hist_distance(profile, prev) > DISTORTED


SIZE_BINS = 24  # log2 size bins: 1 B .. 8 MiB and above


def size_bin(size: int) -> int:
    """The log2 bin of a value size."""
    return min(SIZE_BINS - 1, max(0, int(math.log2(size)) if size > 0 else 0))


@dataclass(frozen=True)
class FeatureContext:
    """What the features need from the training history: identities that wrote then, the share of overwrites
    per log2 size bin (all zero until sizes are known) and each identity's share of the overwritten/deleted keys."""

    identities: frozenset[str | None] = frozenset()
    size_hist: tuple[float, ...] = (0.0,) * SIZE_BINS
    shares: tuple[tuple[str | None, float], ...] = ()

    def share(self, identity: str | None) -> float | None:
        """The identity's usual share of overwritten/deleted keys (None: not learned)."""
        return next((s for i, s in self.shares if i == identity), None)

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "identities": sorted(i for i in self.identities if i is not None),
            "anonymous": None in self.identities,
            "size_hist": list(self.size_hist),
            "shares": [[i, s] for i, s in self.shares],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> FeatureContext:
        """The context ``to_state`` wrote; ValueError on anything malformed."""
        try:
            ids: set[str | None] = {str(i) for i in state["identities"]}
            if state["anonymous"]:
                ids.add(None)
            hist = tuple(float(h) for h in state["size_hist"])
            shares = tuple((None if i is None else str(i), float(v)) for i, v in state.get("shares", ()))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed feature context: {e}") from e
        if len(hist) != SIZE_BINS or any(not math.isfinite(h) or h < 0 for h in hist):
            raise ValueError("malformed feature context: size histogram")
        if any(not 0 <= v <= 1 for _, v in shares):
            raise ValueError("malformed feature context: identity shares")
        return cls(frozenset(ids), hist, shares)


def is_client(o: ChangeObservation) -> bool:
    """A change a client made (not a rewrap of a rotation, not a write of a Reversion)."""
    return o.origin == CLIENT and o.op != REWRAP


def learn_context(observations: Iterable[ChangeObservation]) -> FeatureContext:
    """The context of a training history: its client identities and its overwrite size distribution."""
    ids: set[str | None] = set()
    counts = [0] * SIZE_BINS
    by_id: Counter[str | None] = Counter()
    for o in observations:
        if not is_client(o):
            continue
        ids.add(o.identity)
        if o.op == PUT and o.existed:
            counts[size_bin(o.size)] += 1
        if o.existed and o.op in (PUT, DELETE):
            by_id[o.identity] += 1
    total = sum(counts)
    hist = tuple(c / total for c in counts) if total else (0.0,) * SIZE_BINS
    n = sum(by_id.values())
    shares = tuple(sorted(((i, c / n) for i, c in by_id.items()), key=lambda t: (t[0] is None, t[0] or "")))
    return FeatureContext(frozenset(ids), hist, shares)


def _js(p: Sequence[float], q: Sequence[float]) -> float:
    js = 0.0
    for a, b in zip(p, q, strict=True):
        m = (a + b) / 2
        if a > 0:
            js += 0.5 * a * math.log2(a / m)
        if b > 0:
            js += 0.5 * b * math.log2(b / m)
    return math.sqrt(max(0.0, min(1.0, js)))


def _identity_surprise(touched: Mapping[str | None, set[str]], n: int, context: FeatureContext) -> float:
    """-log10 of the chance that the most surprising known identity touched as many of the ``n`` keys as it did."""
    surprise = 0.0
    for i, keys in touched.items():
        usual = context.share(i)
        if usual is not None and len(keys) > 1:
            p = binom_sf(len(keys), n, max(usual, MIN_SHARE))
            surprise = max(surprise, -math.log10(max(p, 1e-300)))
    return surprise


def window_features(
    table: str, start: float, end: float, observations: Iterable[ChangeObservation], context: FeatureContext
) -> WindowFeatures:
    """The features of ``table``'s changes with ``start <= time < end`` among ``observations``."""
    span = max(end - start, 1e-9)
    puts = overwrites = deletes = creates = rewraps = reverts = 0
    size_shift = entropy_rise = hdist = 0.0
    profiled = encrypted = distorted = 0
    sizes = [0] * SIZE_BINS
    touched: dict[str | None, set[str]] = {}
    for o in observations:
        if o.table != table or not start <= o.time < end:
            continue
        if not is_client(o):
            if o.origin == REVERSION:
                reverts += 1
            else:
                rewraps += 1
            continue
        if o.op == PUT:
            puts += 1
            if not o.existed:
                creates += 1
                continue
            overwrites += 1
            sizes[size_bin(o.size)] += 1
            if o.prev_size:
                size_shift += abs(math.log2(max(o.size, 1) / o.prev_size))
            if o.profile is not None and o.prev_profile is not None:
                profiled += 1
                entropy_rise += o.profile.entropy - o.prev_profile.entropy
                enc, dis, d = jumps(o.profile, o.prev_profile, o.size, o.prev_size or o.size)
                hdist += d
                encrypted += enc
                distorted += dis
        elif o.op == DELETE:
            if not o.existed:
                continue  # deleting nothing destroys nothing
            deletes += 1
        else:
            continue
        touched.setdefault(o.identity, set()).add(o.key)
    destroyed = {k for keys in touched.values() for k in keys}
    top = max((len(k) for k in touched.values()), default=0)
    # Before any identity was learned every identity would be "new": a table's first windows count none.
    new_id_keys = {k for i, keys in touched.items() if context.identities and i not in context.identities for k in keys}
    surprise = _identity_surprise(touched, len(destroyed), context)
    size_total = sum(sizes)
    size_dist = (
        _js([s / size_total for s in sizes], context.size_hist) if size_total and any(context.size_hist) else 0.0
    )
    values = {
        "put_rate": puts / span,
        "overwrite_rate": overwrites / span,
        "delete_rate": deletes / span,
        "delete_share": deletes / (puts + deletes) if puts + deletes else 0.0,
        "new_key_rate": creates / span,
        "size_shift": size_shift / overwrites if overwrites else 0.0,
        "size_dist_shift": size_dist,
        "entropy_rise": entropy_rise / profiled if profiled else 0.0,
        "encrypted_share": encrypted / profiled if profiled else 0.0,
        "encrypted_rate": encrypted / span,
        "hist_distance": hdist / profiled if profiled else 0.0,
        "distorted_share": distorted / profiled if profiled else 0.0,
        "distorted_rate": distorted / span,
        "top_identity_share": top / len(destroyed) if destroyed else 0.0,
        "new_identity_rate": len(new_id_keys) / span,
        "identity_surprise": surprise,
        "rotation_rate": rewraps / span,
        "reversion_rate": reverts / span,
    }
    return WindowFeatures(table, start, end, FEATURE_NAMES, tuple(values[n] for n in FEATURE_NAMES), puts + deletes)


def count_by_op(observations: Iterable[ChangeObservation]) -> Counter[str]:
    """Client changes by what they did: create, overwrite, delete (of a live value) or noop (delete of nothing)."""
    out: Counter[str] = Counter()
    for o in observations:
        if not is_client(o):
            continue
        if o.op == PUT:
            out["overwrite" if o.existed else "create"] += 1
        elif o.op == DELETE:
            out["delete" if o.existed else "noop"] += 1
    return out
