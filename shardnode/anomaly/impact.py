"""Impact analysis: which changes of an anomalous run of windows are the incident's, and how bad it is.

The drivers of the windows' scores say what kind of evidence to look for in each change: a delete of a live
value, a content jump against the key's previous version (entropy to ciphertext-like, a byte-histogram distance
past ``DISTORTED``, a size change by 2x or more), an identity unseen in training; only when no such specific
driver is present (a plain rate burst) does every overwrite/delete count. When one identity made most of the
suspicious changes the incident is that identity's alone, so keys other identities changed meanwhile stay out.
Suspicious changes just before the first window or after the last (a margin the caller may pass) join while they
follow each other closely, so an incident that began late in an unflagged window is still covered from its first
bad change. A value that already looked like ciphertext (compressed media) shows encryption only by its byte
histogram turning uniform (a chi-square test). When nothing but the pace of one usual writer stood out (a plain
burst), only its changes where its pace is far above its usual one count: its ordinary writes around stay out.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .calibration import binom_sf
from .features import MIN_SHARE, PLAIN_BITS, FeatureContext, is_client, random_entropy, reshaped
from .types import DELETE, PUT, AffectedKey, ByteProfile, ChangeObservation, Driver, Incident, Score, WindowFeatures

DELETE_DRIVERS = frozenset({"delete_rate", "delete_share"})
CONTENT_DRIVERS = frozenset(
    {
        "encrypted_rate_sustained",
        "distorted_rate_sustained",
        "encrypted_share",
        "encrypted_rate",
        "distorted_share",
        "distorted_rate",
        "entropy_rise",
        "hist_distance",
    }
)
SIZE_DRIVERS = frozenset({"size_shift", "size_dist_shift"})
IDENTITY_DRIVERS = frozenset({"new_identity_rate", "new_identity_rate_sustained"})
SURPRISE = "identity_surprise"
MIN_DRIVER_WEIGHT = 0.1  # a driver with less of the explanation does not choose the evidence
CULPRIT_SHARE = 0.5  # one identity made at least this share of the suspicious changes: it alone is attributed
DRIP_PER_MINUTE = 10.0  # content changes slower than this over the incident make a "corruption-drip"
OPAQUE_SHARE = 0.8  # the culprit's visible overwrites that must be suspicious before its opaque ones join
RESIZE = 1.0  # |log2(size / prev_size)| at or above this is a size jump
# A value that already looked like ciphertext (compressed media) still tells encryption apart by how evenly its bytes
# fill the histogram's bins: compressed data is measurably uneven, ciphertext is uniform. Pearson's chi-square of
# the 16 bins against uniform (15 degrees of freedom): at or below UNIFORM_CHI2 (p >= 0.001) the bytes are uniform;
# at or above UNEVEN_CHI2 (p <= 1e-6) they are not; the test needs MIN_CHI2_SIZE bytes (>= 5 expected per bin).
UNIFORM_CHI2 = 37.70
UNEVEN_CHI2 = 56.49
MIN_CHI2_SIZE = 256
# A plain rate burst by one identity (no per-change evidence): its changes join only where the identity's own pace
# is far above its usual one, so its ordinary writes before and after the burst stay out. BURST_SPAN seconds either
# side of a change hold more of the culprit's changes than its usual pace gives with probability BURST_P.
BURST_SPAN = 5.0
BURST_P = 1e-3
# How destructive each kind is, for severity: lost or unreadable data is worse than replaced data.
DESTRUCTIVENESS = {
    "mass-delete": 1.0,
    "encryption": 1.0,
    "corruption-drip": 0.9,
    "mass-overwrite": 0.7,
    "new-identity-bulk": 0.6,
    "other": 0.5,
}


@dataclass(frozen=True)
class Evidence:
    """What one change shows on its own."""

    delete: bool
    content: bool  # the bytes jumped: entropy to ciphertext-like, or the histogram moved past DISTORTED
    resize: bool  # the size changed by 2x or more (ordinary on some tables: evidence only when a size driver rose)
    opaque: bool  # an overwrite of a value that already looked like ciphertext: its bytes cannot tell
    new_identity: bool
    destructive: bool


def uniformity_chi2(profile: ByteProfile, size: int) -> float:
    """Pearson's chi-square of a value's byte histogram (``size`` bytes) against uniform bins."""
    bins = len(profile.hist)
    return size * bins * sum((h - 1.0 / bins) ** 2 for h in profile.hist)


def became_uniform(profile: ByteProfile, prev: ByteProfile, size: int, prev_size: int) -> bool:
    """An uneven (compressed-like) value was replaced by one whose bytes are uniform (ciphertext-like)."""
    if min(size, prev_size) < MIN_CHI2_SIZE:
        return False
    return uniformity_chi2(profile, size) <= UNIFORM_CHI2 and uniformity_chi2(prev, prev_size) >= UNEVEN_CHI2


def evidence(o: ChangeObservation, context: FeatureContext) -> Evidence:
    """The per-change evidence of ``o`` (a client change)."""
    delete = o.op == DELETE and o.existed
    overwrite = o.op == PUT and o.existed
    content = resize = opaque = False
    if overwrite:
        if o.profile is not None and o.prev_profile is not None:
            content = reshaped(o.profile, o.prev_profile, o.size, o.prev_size or o.size)
            opaque = not content and o.prev_profile.entropy - random_entropy(o.prev_size or o.size) >= PLAIN_BITS - 8
            if opaque and became_uniform(o.profile, o.prev_profile, o.size, o.prev_size or o.size):
                content, opaque = True, False
        if o.prev_size:
            resize = abs(math.log2(max(o.size, 1) / o.prev_size)) >= RESIZE
    return Evidence(delete, content, resize, opaque, o.identity not in context.identities, delete or overwrite)


def severity_of(score: float, kind: str, keys: int, table_keys: int, nbytes: int) -> tuple[float, dict[str, float]]:
    """Severity in [0, 1] and its parts: ``score x destructiveness x (0.5 + 0.5 x breadth)``, breadth being the
    larger of the share of the table's keys touched (10% counts fully), the key count (10,000 counts fully) and the
    bytes (1 GB counts fully), each on a log scale but the share."""
    share = keys / table_keys if table_keys > 0 else 0.0
    breadth = max(min(1.0, share / 0.1), min(1.0, math.log10(1 + keys) / 4), min(1.0, math.log10(1 + nbytes) / 9))
    destructive = DESTRUCTIVENESS.get(kind, DESTRUCTIVENESS["other"])
    sev = max(0.0, min(1.0, score * destructive * (0.5 + 0.5 * breadth)))
    return sev, {"score": score, "destructiveness": destructive, "breadth": breadth, "key_share": share}


def merged_drivers(scored: Sequence[tuple[WindowFeatures, Score]]) -> tuple[Driver, ...]:
    """The drivers of several windows as one explanation: weights summed by score, the value and usual of the
    window where the feature weighed most, weights summing to 1, strongest first."""
    weight: dict[str, float] = {}
    best: dict[str, tuple[float, Driver]] = {}
    for _, s in scored:
        for d in s.drivers:
            w = d.weight * s.score
            weight[d.feature] = weight.get(d.feature, 0.0) + w
            if d.feature not in best or w > best[d.feature][0]:
                best[d.feature] = (w, d)
    total = sum(weight.values())
    if total <= 0:
        return ()
    return tuple(
        Driver(f, best[f][1].value, best[f][1].usual, w / total)
        for f, w in sorted(weight.items(), key=lambda t: -t[1])
        if w > 0
    )


def _kind(selected: Sequence[tuple[ChangeObservation, Evidence]], mode: str, minutes: float) -> str:
    if mode == "identity":
        return "new-identity-bulk"
    if mode == "weak":
        return "mass-overwrite" if any(o.op == PUT for o, _ in selected) else "mass-delete"
    deletes = sum(e.delete for _, e in selected)
    if deletes * 2 >= len(selected):
        return "mass-delete"
    content = len(selected) - deletes
    return "corruption-drip" if content / max(minutes, 1.0) < DRIP_PER_MINUTE and minutes >= 5 else "encryption"


class _Matcher:
    """Which changes are suspicious given the chosen drivers, and whose."""

    def __init__(self, ev: dict[int, Evidence], chosen: set[str]) -> None:
        self.ev = ev
        self.delete = bool(chosen & DELETE_DRIVERS)
        self.content = bool(chosen & CONTENT_DRIVERS)
        self.resize = bool(chosen & SIZE_DRIVERS)
        self.identity = bool(chosen & IDENTITY_DRIVERS)
        strong = self.delete or self.content or self.resize
        self.mode = "strong" if strong else "identity" if self.identity else "weak"
        self.repairs: set[int] = set()  # LSNs that overwrite a suspicious change of another identity
        self.culprit: tuple[bool, str | None] = (False, None)

    def suspicious(self, o: ChangeObservation) -> bool:
        if o.lsn in self.repairs:
            return False
        e = self.ev[o.lsn]
        if self.mode == "strong":
            return (
                (self.delete and e.delete)
                or (self.content and e.content)
                or (self.resize and e.resize)
                or (self.identity and e.new_identity and e.destructive)
            )
        if self.mode == "identity":
            return e.new_identity
        return e.destructive

    def find_repairs(self, obs: Sequence[ChangeObservation]) -> None:
        """Mark the changes that write over another identity's suspicious version: someone replacing damaged
        values (their bytes jump back), not the incident."""
        if self.mode != "strong":  # only a change whose bytes show damage can be repaired
            return
        author: dict[int, str | None] = {}
        for o in sorted(obs, key=lambda o: o.lsn):
            if o.prev_lsn is not None and o.prev_lsn in author and author[o.prev_lsn] != o.identity:
                self.repairs.add(o.lsn)
            elif self.suspicious(o):
                author[o.lsn] = o.identity

    def belongs(self, o: ChangeObservation) -> bool:
        return self.suspicious(o) and (not self.culprit[0] or o.identity == self.culprit[1])


def _extend(
    selected: list[ChangeObservation],
    obs: Sequence[ChangeObservation],
    start: float,
    end: float,
    match: _Matcher,
    max_gap: float,
) -> list[ChangeObservation]:
    """``selected`` with the margin's matching changes that follow each other within ``max_gap`` of it."""
    head: list[ChangeObservation] = []
    edge = selected[0].time
    for o in reversed([o for o in obs if o.time < start and match.belongs(o)]):
        if edge - o.time > max_gap:
            break
        head.append(o)
        edge = o.time
    tail: list[ChangeObservation] = []
    edge = selected[-1].time
    for o in (o for o in obs if o.time >= end and match.belongs(o)):
        if o.time - edge > max_gap:
            break
        tail.append(o)
        edge = o.time
    return [*reversed(head), *selected, *tail]


def _add_opaque(
    selected: list[ChangeObservation], obs: Sequence[ChangeObservation], match: _Matcher
) -> list[ChangeObservation]:
    """An encrypting culprit's overwrites of values that already looked like ciphertext show nothing in their
    bytes; they join when nearly all of the culprit's other overwrites over the incident's span are suspicious
    (it was busy attacking, not doing its own work)."""
    if not (match.content and match.culprit[0]) or not selected:
        return selected
    lo, hi = selected[0].time, selected[-1].time
    own = [o for o in obs if lo <= o.time <= hi and o.identity == match.culprit[1] and match.ev[o.lsn].destructive]
    chosen = {o.lsn for o in selected}
    visible = [o for o in own if not match.ev[o.lsn].opaque]
    if not visible or sum(o.lsn in chosen for o in visible) < OPAQUE_SHARE * len(visible):
        return selected
    extra = [o for o in own if match.ev[o.lsn].opaque and o.lsn not in chosen and o.lsn not in match.repairs]
    return sorted([*selected, *extra], key=lambda o: (o.time, o.lsn))


def poisson_isf(mu: float, p: float) -> int:
    """The smallest count ``k`` with P(X >= k) <= ``p`` for X ~ Poisson(``mu``)."""
    pmf = math.exp(-mu)
    below = 0.0
    k = 0
    while 1.0 - below > p and k < 100_000:
        below += pmf
        k += 1
        pmf *= mu / k
    return k


def usual_pace(obs: Sequence[ChangeObservation], identity: str | None, start: float, span: float) -> float | None:
    """``identity``'s usual destructive changes per second before ``start``: the median over the margin's windows
    (robust to a burst that began in the margin); None without a whole margin window."""
    first = min((o.time for o in obs), default=start)
    n = int((start - first) // span)
    if n < 3:
        return None
    counts = [0] * n
    for o in obs:
        if o.time < start and o.identity == identity and o.existed:
            i = int((start - o.time) // span)
            if i < n:
                counts[i] += 1
    counts.sort()
    return counts[n // 2] / span


def _burst(culprit: Sequence[ChangeObservation], start: float, end: float, pace: float) -> list[ChangeObservation]:
    """The burst in ``culprit`` (one identity's matching changes, in time order): its changes with more neighbours
    within BURST_SPAN than the identity's usual ``pace`` explains (BURST_P), from the first to the last dense one
    in [``start``, ``end``) and on either side while they stay dense; [] when none in it is dense."""
    need = poisson_isf(max(pace, 1e-3) * 2 * BURST_SPAN, BURST_P)
    times = [o.time for o in culprit]
    dense = [
        bisect.bisect_right(times, t + BURST_SPAN) - bisect.bisect_left(times, t - BURST_SPAN) - 1 >= need
        for t in times
    ]
    inside = [i for i, t in enumerate(times) if start <= t < end and dense[i]]
    if not inside:
        return []
    lo, hi = inside[0], inside[-1]
    while lo > 0 and dense[lo - 1]:
        lo -= 1
    while hi + 1 < len(times) and dense[hi + 1]:
        hi += 1
    return list(culprit[lo : hi + 1])


def _what(drivers: Sequence[Driver]) -> set[str]:
    """The drivers that say what kind of change to look for: those with at least MIN_DRIVER_WEIGHT of the
    explanation once the identity surprise (which says who, not what) is left out; else the strongest."""
    what = [d for d in drivers if d.feature != SURPRISE]
    total = sum(d.weight for d in what)
    if total <= 0:
        return set()
    return {d.feature for d in what if d.weight / total >= MIN_DRIVER_WEIGHT} or {what[0].feature}


def _most_surprising(core: Sequence[ChangeObservation], ev: dict[int, Evidence], context: FeatureContext) -> str | None:
    keys: dict[str | None, set[str]] = {}
    for o in core:
        if ev[o.lsn].destructive:
            keys.setdefault(o.identity, set()).add(o.key)
    n = len({k for ks in keys.values() for k in ks})
    best: tuple[float, str | None] = (-1.0, None)
    for identity, ks in keys.items():
        usual = context.share(identity)
        p = binom_sf(len(ks), n, max(usual, MIN_SHARE)) if usual is not None else 1e-300
        best = max(best, (-math.log10(max(p, 1e-300)), identity), key=lambda t: t[0])
    return best[1]


def analyse(
    table: str,
    scored: Sequence[tuple[WindowFeatures, Score]],
    observations: Iterable[ChangeObservation],
    context: FeatureContext,
    *,
    table_keys: int = 0,
    before_lsn: Callable[[str, int], int | None] | None = None,
) -> Incident:
    """The incident of ``table``'s anomalous windows ``scored`` (consecutive, each with its score), from the
    ``observations`` of those windows and of any margin around them. ``table_keys``: the table's live keys (for
    severity); ``before_lsn(key, lsn)``: the key's last change before ``lsn`` (default: the observation's
    ``prev_lsn``). ValueError when there are no windows or no client change in them."""
    if not scored:
        raise ValueError("an incident needs at least one window")
    start = min(w.start for w, _ in scored)
    end = max(w.end for w, _ in scored)
    span = max((w.end - w.start for w, _ in scored), default=60.0)
    obs = sorted((o for o in observations if o.table == table and is_client(o)), key=lambda o: (o.time, o.lsn))
    core = [o for o in obs if start <= o.time < end]
    if not core:
        raise ValueError("no client change in the incident's windows")
    drivers = merged_drivers(scored)
    chosen = _what(drivers)
    ev = {o.lsn: evidence(o, context) for o in obs}
    match = _Matcher(ev, chosen)
    match.find_repairs(obs)
    hits = [o for o in core if match.suspicious(o)]
    if not hits:  # the model saw something no single change shows: every destructive change is the suspect
        match.mode = "weak"
        hits = [o for o in core if ev[o.lsn].destructive] or core
    surprising = any(d.feature == SURPRISE and d.weight >= MIN_DRIVER_WEIGHT for d in drivers)
    by_id = Counter(o.identity for o in hits)
    top, n = by_id.most_common(1)[0]
    if surprising:  # the window said who: the identity furthest above its usual share of the destroyed keys
        match.culprit = (True, _most_surprising(core, ev, context))
    elif n >= CULPRIT_SHARE * len(hits):
        match.culprit = (True, top)
    selected = [o for o in core if match.belongs(o)] or hits
    pace = usual_pace(obs, match.culprit[1], start, span) if match.mode == "weak" and match.culprit[0] else None
    burst = _burst([o for o in obs if match.belongs(o)], start, end, pace) if pace is not None else []
    selected = burst or _extend(selected, obs, start, end, match, 2 * span)
    selected = _add_opaque(selected, obs, match)
    mode = match.mode
    return _incident(table, scored, obs, selected, ev, drivers, mode, table_keys, before_lsn)


def _incident(
    table: str,
    scored: Sequence[tuple[WindowFeatures, Score]],
    obs: Sequence[ChangeObservation],
    selected: Sequence[ChangeObservation],
    ev: dict[int, Evidence],
    drivers: tuple[Driver, ...],
    mode: str,
    table_keys: int,
    before_lsn: Callable[[str, int], int | None] | None,
) -> Incident:
    keys: dict[str, list[ChangeObservation]] = {}
    for o in sorted(selected, key=lambda o: o.lsn):
        keys.setdefault(o.key, []).append(o)
    affected = []
    total_bytes = 0
    for key, changes in keys.items():
        first = changes[0]
        prev = before_lsn(key, first.lsn) if before_lsn is not None else first.prev_lsn
        nbytes = sum(o.size if o.op == PUT else (o.prev_size or 0) for o in changes)
        total_bytes += nbytes
        affected.append(AffectedKey(table, key, first.lsn, changes[-1].lsn, prev, nbytes))
    affected.sort(key=lambda a: (a.first_lsn, a.key))
    first_lsn = min(o.lsn for o in selected)
    last_lsn = max(o.lsn for o in selected)
    first_time = min(o.time for o in selected)
    last_time = max(o.time for o in selected)
    earlier = [o for o in obs if o.lsn < first_lsn]
    good_time = max((o.time for o in earlier), default=first_time)
    kind = _kind([(o, ev[o.lsn]) for o in selected], mode, (last_time - first_time) / 60.0)
    score = max(s.score for _, s in scored)
    severity, _ = severity_of(score, kind, len(affected), table_keys, total_bytes)
    return Incident(
        id=f"{table}.{first_lsn}",
        start_time=first_time,
        end_time=last_time,
        first_lsn=first_lsn,
        last_lsn=last_lsn,
        known_good_lsn=first_lsn - 1,
        known_good_time=good_time,
        tables=(table,),
        identities=tuple(sorted({o.identity for o in selected}, key=lambda i: (i is None, i or ""))),
        keys=tuple(affected),
        bytes=total_bytes,
        score=score,
        severity=severity,
        kind=kind,
        drivers=drivers,
    )
