"""Candidate generation and features: the stream of accesses -> (candidate block, feature vector) rows.

A deterministic state machine over the access sequence, no I/O. Three sources of candidates:
block runs (the block right after the one just read, and the one after that), and successor
statistics (blocks that followed this one before). Every candidate gets the same feature vector so
one scorer ranks them all.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .access import Access, offset_key

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
            st.streams.move_to_end(next1)
            while len(st.streams) > s.max_streams:
                st.streams.popitem(last=False)

        # Request rate of the table over the last window (ring-trimmed list of times).
        st.recent_times.append(a.time)
        cut = a.time - s.rate_window_s
        if st.recent_times[0] < cut:
            st.recent_times = [t for t in st.recent_times if t >= cut]
        rate = len(st.recent_times) / s.rate_window_s

        # Per-client share of accesses that continued a run (the last 64), a per-client pattern signal.
        runs = st.client_runs.setdefault(a.client, [])
        st.client_runs.move_to_end(a.client)
        while len(st.client_runs) > s.max_clients:
            st.client_runs.popitem(last=False)
        runs.append(1 if run_len > 0 else 0)
        if len(runs) > 64:
            del runs[0]
        client_run_frac = sum(runs) / len(runs)

        freq, _ = st.key_stats.get(a.key, (0, a.time))
        st.key_stats[a.key] = (freq + 1, a.time)
        st.key_stats.move_to_end(a.key)
        while len(st.key_stats) > s.max_keys:
            st.key_stats.popitem(last=False)

        prev = st.last_key_by_client.get(a.client)
        if prev is not None and prev != a.key:
            succ = st.successors.get(prev)
            if succ is None:
                succ = st.successors[prev] = Counter()
            succ[a.key] += 1
            if len(succ) > s.successors_per_key:
                # Keep only the strongest successors: the table stays bounded per key.
                for k, _ in succ.most_common()[s.successors_per_key:]:
                    del succ[k]
            st.successors.move_to_end(prev)
            while len(st.successors) > s.max_keys:
                st.successors.popitem(last=False)
        st.last_key_by_client[a.client] = a.key
        st.last_key_by_client.move_to_end(a.client)
        while len(st.last_key_by_client) > s.max_clients:
            st.last_key_by_client.popitem(last=False)

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
