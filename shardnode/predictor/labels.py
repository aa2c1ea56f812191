"""Training labels: was a candidate block requested within the horizon after it was proposed?"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

from .access import Access


def label_candidates(
    accesses: Sequence[Access],
    origin: Sequence[int],
    cand_keys: Sequence[tuple[str, str]],
    horizon_s: float,
) -> np.ndarray:
    """1 where candidate j (proposed after access origin[j]) is requested within horizon_s, else 0."""
    index: dict[tuple[str, str], list[int]] = {}
    for i, a in enumerate(accesses):
        index.setdefault((a.table, a.key), []).append(i)
    out = np.zeros(len(origin), dtype=np.int8)
    for j, (i, tk) in enumerate(zip(origin, cand_keys, strict=True)):
        hits = index.get(tk)
        if not hits:
            continue
        pos = bisect_right(hits, i)
        if pos < len(hits) and accesses[hits[pos]].time - accesses[i].time <= horizon_s:
            out[j] = 1
    return out


def resolvable(accesses: Sequence[Access], origin: Sequence[int], horizon_s: float,
               now: float | None = None) -> np.ndarray:
    """True where a candidate's horizon has ended (by `now`, default the last access), so its label is final."""
    if not accesses:
        return np.zeros(len(origin), dtype=bool)
    end = accesses[-1].time if now is None else max(now, accesses[-1].time)
    return np.array([accesses[i].time + horizon_s <= end for i in origin], dtype=bool)
