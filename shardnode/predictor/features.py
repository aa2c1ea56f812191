"""Candidate generation and features: the stream of accesses -> (candidate block, feature vector) rows.

A deterministic state machine over the access sequence, no I/O. Three sources of candidates:
block runs (the block right after the one just read, and the one after that), and successor
statistics (blocks that followed this one before). Every candidate gets the same feature vector so
one scorer ranks them all.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from .access import Access, offset_key

V = TypeVar("V")

KIND_SEQ1, KIND_SEQ2, KIND_SUCC = 0, 1, 2
KINDS = ("seq1", "seq2", "succ")
FEATURE_NAMES = (
    "kind_seq1",
    "kind_seq2",
    "kind_succ",
    "run_len",
    "log2_size",
    "write",
    "succ_count",
    "succ_ratio",
    "key_freq",
    "cand_seen",
    "cand_age_log",
    "gap_log",
    "active_streams",
    "table_rate_log",
    "hour_sin",
    "hour_cos",
    "weekday",
    "client_run_frac",
)
N_FEATURES = len(FEATURE_NAMES)
_MAX_RUN = 64.0


@dataclass(slots=True)
class Candidate:
    """A block that may be requested soon, with the features it was scored on."""

    table: str
    key: str
    size: int
    kind: int
    features: np.ndarray


@dataclass(slots=True)
class _Stream:
    run_len: int
    last_time: float


@dataclass
class _TableState:
    # Expected next key of each recent block run -> that run; bounded so interleaved runs are kept.
    streams: OrderedDict[str, _Stream] = field(default_factory=OrderedDict)
    successors: OrderedDict[str, Counter[str]] = field(default_factory=OrderedDict)
    last_key_by_client: OrderedDict[str, str] = field(default_factory=OrderedDict)
    key_stats: OrderedDict[str, tuple[int, float]] = field(default_factory=OrderedDict)
    recent_times: list[float] = field(default_factory=list)
    client_runs: OrderedDict[str, list[int]] = field(default_factory=OrderedDict)


@dataclass(frozen=True)
class GeneratorSettings:
    """Bounds and block geometry of the candidate generator."""

    # Keys count blocks of this many bytes: a read of S bytes at key N ends at N + S/block_bytes.
    block_bytes: int = 512
    max_streams: int = 32
    max_keys: int = 200_000
    # Clients come and go (a job id per run, peer addresses): only the most recent ones are remembered.
    max_clients: int = 65_536
    successors_per_key: int = 4
    successor_candidates: int = 2
    rate_window_s: float = 10.0


def replay_candidates(gen: CandidateGenerator, accesses: list[Access],
                      keep: Callable[[Access], bool] = lambda a: True
                      ) -> tuple[list[int], list[tuple[str, str]], list[np.ndarray]]:
    """Replay ``accesses`` (those ``keep`` accepts, asked in order) through ``gen``, for training: per candidate,
    the index of the access that proposed it, its (table, key) and its features."""
    origin: list[int] = []
    keys: list[tuple[str, str]] = []
    feats: list[np.ndarray] = []
    for i, a in enumerate(accesses):
        if not keep(a):
            continue
        for c in gen.observe(a):
            origin.append(i)
            keys.append((c.table, c.key))
            feats.append(c.features)
    return origin, keys, feats


def _keep_recent(entries: OrderedDict[str, V], key: str, limit: int) -> None:
    """Mark ``key`` most recent and drop the oldest entries beyond ``limit``."""
    entries.move_to_end(key)
    while len(entries) > limit:
        entries.popitem(last=False)


def _table_rate(st: _TableState, now: float, window_s: float) -> float:
    """Record a request at ``now``; the table's request rate over the last window (per second)."""
    st.recent_times.append(now)
    cut = now - window_s
    if st.recent_times[0] < cut:
        st.recent_times = [t for t in st.recent_times if t >= cut]
    return len(st.recent_times) / window_s


def _client_run_fraction(st: _TableState, client: str, continued_run: bool, max_clients: int) -> float:
    """Record whether this access continued a run; the client's share of such accesses (its last 64),
    a per-client pattern signal."""
    runs = st.client_runs.setdefault(client, [])
    _keep_recent(st.client_runs, client, max_clients)
    runs.append(1 if continued_run else 0)
    if len(runs) > 64:
        del runs[0]
    return sum(runs) / len(runs)


def _count_key(st: _TableState, key: str, now: float, max_keys: int) -> int:
    """Count an access to ``key``; how often it was accessed before."""
    freq, _ = st.key_stats.get(key, (0, now))
    st.key_stats[key] = (freq + 1, now)
    _keep_recent(st.key_stats, key, max_keys)
    return freq


def _learn_successor(st: _TableState, client: str, key: str, s: GeneratorSettings) -> None:
    """Count ``key`` as a successor of the client's previous key (the strongest few per key are kept)."""
    prev = st.last_key_by_client.get(client)
    if prev is not None and prev != key:
        succ = st.successors.get(prev)
        if succ is None:
            succ = st.successors[prev] = Counter()
        succ[key] += 1
        if len(succ) > s.successors_per_key:
            # Keep only the strongest successors: the table stays bounded per key.
            for k, _ in succ.most_common()[s.successors_per_key:]:
                del succ[k]
        _keep_recent(st.successors, prev, s.max_keys)
    st.last_key_by_client[client] = key
    _keep_recent(st.last_key_by_client, client, s.max_clients)


class CandidateGenerator:
    """Feeds on accesses in order and proposes candidates after each one (pure state machine)."""

    def __init__(self, settings: GeneratorSettings | None = None) -> None:
        self.settings = settings or GeneratorSettings()
        self._tables: dict[str, _TableState] = {}

    def _table(self, name: str) -> _TableState:
        st = self._tables.get(name)
        if st is None:
            st = self._tables[name] = _TableState()
        return st

    def observe(self, a: Access) -> list[Candidate]:
        """Record one access and return the candidates it suggests."""
        s = self.settings
        st = self._table(a.table)
        stream = st.streams.pop(a.key, None)
        run_len = stream.run_len + 1 if stream is not None else 0
        gap = a.time - stream.last_time if stream is not None else -1.0
        blocks = max(1, -(-a.size // s.block_bytes)) if a.size > 0 else 1
        next1 = offset_key(a.key, blocks)
        next2 = offset_key(a.key, 2 * blocks)
        if next1 is not None:
            st.streams[next1] = _Stream(run_len, a.time)
            _keep_recent(st.streams, next1, s.max_streams)
        rate = _table_rate(st, a.time, s.rate_window_s)
        client_run_frac = _client_run_fraction(st, a.client, run_len > 0, s.max_clients)
        freq = _count_key(st, a.key, a.time, s.max_keys)
        _learn_successor(st, a.client, a.key, s)
        hour = (a.time % 86400.0) / 3600.0
        common = (
            min(run_len, _MAX_RUN),
            math.log2(a.size + 1),
            1.0 if a.write else 0.0,
            freq + 1.0,
            gap if gap < 0 else math.log1p(gap * 1000.0),
            len(st.streams),
            math.log1p(rate),
            math.sin(2 * math.pi * hour / 24.0),
            math.cos(2 * math.pi * hour / 24.0),
            float(int(a.time // 86400 + 4) % 7),  # 1970-01-01 was a Thursday (weekday 3; +4 makes Sunday 0)
            client_run_frac,
        )
        out: list[Candidate] = []
        seen: set[str] = set()

        def add(key: str | None, kind: int, succ_count: float, succ_ratio: float) -> None:
            if key is None or key in seen or key == a.key:
                return
            seen.add(key)
            cstat = st.key_stats.get(key)
            cand_seen = float(cstat[0]) if cstat else 0.0
            cand_age = math.log1p(a.time - cstat[1]) if cstat else -1.0
            run, lsize, write, kfreq, gap_f, active, rate_f, hs, hc, wd, crf = common
            vec = np.array(
                [kind == KIND_SEQ1, kind == KIND_SEQ2, kind == KIND_SUCC, run, lsize, write, succ_count,
                 succ_ratio, kfreq, cand_seen, cand_age, gap_f, active, rate_f, hs, hc, wd, crf],
                dtype=np.float64,
            )
            out.append(Candidate(a.table, key, a.size, kind, vec))

        succ = st.successors.get(a.key)
        total = sum(succ.values()) if succ else 0
        for k, c in succ.most_common(s.successor_candidates) if succ else []:
            if k != next1:
                add(k, KIND_SUCC, float(c), c / total)
        seq_count = float(succ[next1]) if succ and next1 is not None else 0.0
        add(next1, KIND_SEQ1, seq_count, seq_count / total if total else 0.0)
        add(next2, KIND_SEQ2, 0.0, 0.0)
        return out
