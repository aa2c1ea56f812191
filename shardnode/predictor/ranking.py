"""Spending a small hint budget well: read-ahead ranges for runs, and a cutoff that ranks hints by benefit per fetch.

Pure functions and state, no I/O. A *plan* is one backend fetch: a single block, or a range of the next blocks
of a sequential run. Its benefit is the expected number of its blocks that will be read.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

MAX_RANGE_BLOCKS = 32


def tail_threshold(max_waste_share: float) -> float:
    """The lowest use probability of a read-ahead block beyond the first: a block read with probability p wastes
    (1 - p) of a block per p read, so p >= 1 / (1 + share) keeps a range's waste within ``share`` of what it serves."""
    return 1.0 / (1.0 + max(max_waste_share, 0.0))


def range_length(score: float, run_len: float, threshold: float, tail: float | None = None,
                 max_blocks: int = MAX_RANGE_BLOCKS) -> int:
    """How many next blocks of a run one range fetch should cover (0: none).

    The run goes on one more block with probability ``score`` each time, so block i is read with about
    ``score ** i``. The first block is a plain hint (sent at ``threshold``); the others are kept while their
    probability is at least ``tail`` (default ``threshold``). A run earns its read-ahead as it grows (at most
    2 ** run length blocks, as kernels double their read-ahead window).
    """
    if score < threshold or score <= 0.0:
        return 0
    floor = max(threshold, tail if tail is not None else threshold)
    k = max_blocks if score >= 1.0 or floor <= 0.0 else int(math.log(floor) / math.log(score) + 1e-9)
    return max(1, min(k, 2 ** min(int(run_len), 5), max_blocks))


def range_benefit(score: float, blocks: int, skip: int = 0) -> float:
    """Expected blocks read among blocks ``skip + 1 .. blocks`` of a range (block i read with ``score ** i``)."""
    return float(sum(score ** i for i in range(skip + 1, blocks + 1)))


class BudgetRanker:
    """Ranks plans by benefit per fetch across time: only the best ``budget / offered`` share passes.

    A token bucket alone spends its budget on whatever comes first, so a trickle of mediocre hints starves
    the good ones behind them. This keeps the benefits and times of the last ``memory`` plans offered; the
    cutoff is the benefit quantile that the budget (fetches per second) affords at the offered rate.
    """

    def __init__(self, memory: int = 2048, refresh: int = 64) -> None:
        self._benefits: deque[float] = deque(maxlen=memory)
        self._times: deque[float] = deque(maxlen=memory)
        self._refresh = refresh
        self._since = 0
        self._cutoff = 0.0
        self._budget = -1.0

    def offer(self, benefit: float, now: float) -> None:
        """Record a plan that could be sent now."""
        self._benefits.append(benefit)
        self._times.append(now)
        self._since += 1

    def offered_rate(self) -> float:
        """Plans per second over the memory (inf until two distinct times are seen)."""
        if len(self._times) < 2 or self._times[-1] <= self._times[0]:
            return math.inf
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])

    def cutoff(self, budget_per_s: float) -> float:
        """The lowest benefit worth a fetch at this budget."""
        if self._since >= self._refresh or budget_per_s != self._budget:
            self._since, self._budget = 0, budget_per_s
            rate = self.offered_rate()
            share = 1.0 if math.isinf(rate) and len(self._times) < 2 else min(1.0, budget_per_s / rate)
            self._cutoff = 0.0 if share >= 1.0 else float(np.quantile(np.fromiter(self._benefits, float), 1 - share))
        return self._cutoff
