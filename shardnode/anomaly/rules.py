"""The rule-based detector: fixed, documented rules used before a table has ``MIN_WINDOWS`` windows of history and
whenever its learned model is corrupt. Same ``Score`` shape, detector name "rules".

The rules, each on one window's client changes (counts are per window of the features' span):

- mass delete: deletes >= max(``MIN_MASS``, ``FACTOR`` x the usual deletes per window);
- mass overwrite: overwrites >= max(``MIN_MASS``, ``FACTOR`` x the usual overwrites per window);
- encryption: overwrites whose entropy jumped to ciphertext-like >= max(``MIN_ENCRYPTED``, ``FACTOR`` x usual), or
  overwrites whose byte histogram moved past the distortion distance >= max(``MIN_DISTORTED``, ``FACTOR`` x usual)
  (the distortion floor is high: ordinary records change shape between versions, a handful per window is normal);
- new identity bulk: keys overwritten or deleted by identities unseen in training >= max(``MIN_NEW_IDENTITY``,
  ``FACTOR`` x usual) (a table with no identity learned yet has no "new" one: features.py counts none).

"Usual" is the median of whatever windows the table has (none: the absolute minimum alone). A rule at its limit
scores 0.8 (the default threshold), below it 0.8 x the ratio, above it 0.8 + 0.1 per doubling, at most 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .types import Driver, Score, WindowFeatures

MIN_MASS = 200.0
FACTOR = 10.0
MIN_ENCRYPTED = 3.0
MIN_DISTORTED = 50.0  # ordinary records change shape between versions: a few distorted ones are common
MIN_NEW_IDENTITY = 20.0
_RULE_FEATURES = ("delete_rate", "overwrite_rate", "encrypted_rate", "distorted_rate", "new_identity_rate")


class RuleDetector:
    """Fixed rules against the usual counts of the windows seen so far (any number, even none)."""

    name = "rules"

    def __init__(self, usual: dict[str, float] | None = None) -> None:
        self.usual = dict(usual or {})

    @classmethod
    def fit(cls, windows: Sequence[WindowFeatures]) -> RuleDetector:
        """Rules with the median per-window count of each rule's feature over ``windows`` as the usual."""
        usual: dict[str, float] = {}
        for name in _RULE_FEATURES:
            counts = sorted(w.as_dict()[name] * (w.end - w.start) for w in windows)
            usual[name] = counts[len(counts) // 2] if counts else 0.0
        return cls(usual)

    def limits(self) -> dict[str, float]:
        """The count per window at which each rule fires."""
        return {
            "delete_rate": max(MIN_MASS, FACTOR * self.usual.get("delete_rate", 0.0)),
            "overwrite_rate": max(MIN_MASS, FACTOR * self.usual.get("overwrite_rate", 0.0)),
            "encrypted_rate": max(MIN_ENCRYPTED, FACTOR * self.usual.get("encrypted_rate", 0.0)),
            "distorted_rate": max(MIN_DISTORTED, FACTOR * self.usual.get("distorted_rate", 0.0)),
            "new_identity_rate": max(MIN_NEW_IDENTITY, FACTOR * self.usual.get("new_identity_rate", 0.0)),
        }

    def score(self, features: WindowFeatures, recent: Sequence[WindowFeatures] = ()) -> Score:
        """The strongest rule's score and the rules that moved (weights summing to 1); each rule judges one window,
        so ``recent`` is accepted for the common interface and not used."""
        values = features.as_dict()
        span = max(features.end - features.start, 1e-9)
        ratios: list[tuple[float, str, float]] = []
        for name, limit in self.limits().items():
            count = values.get(name, 0.0) * span
            ratios.append((count / limit, name, count))
        best = max(q for q, _, _ in ratios)
        score = 0.8 * best if best < 1 else min(1.0, 0.8 + 0.1 * math.log2(best))
        moved = sorted((r for r in ratios if r[0] >= 0.25), key=lambda r: -r[0])
        total = sum(q for q, _, _ in moved)
        drivers = tuple(
            Driver(name, values.get(name, 0.0), self.usual.get(name, 0.0) / span, q / total) for q, name, _ in moved
        )
        return Score(score, self.name, drivers)
