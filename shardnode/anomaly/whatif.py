"""What-if: the score and severity a proposed batch of writes and deletes would get, without applying it.

The batch's observations join the current window's (as if they arrived now), the window's features are scored by
the table's detector (``score`` is pure: nothing is learned or remembered), and the impact analysis of that window
restricted to the batch gives its severity. Nothing here changes any state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from .detector import Detector
from .features import FeatureContext, count_by_op, is_client, window_features
from .impact import analyse
from .types import DELETE, PUT, ChangeObservation, Driver, WindowFeatures


@dataclass(frozen=True)
class WhatIf:
    """A batch's effect: counts by what each change would do, the bytes written or deleted, and the score,
    severity, incident kind and drivers the window would get with it."""

    creates: int
    overwrites: int
    deletes: int
    unchanged: int
    bytes: int
    score: float
    severity: float
    kind: str
    detector: str
    drivers: tuple[Driver, ...]


def _unchanged(o: ChangeObservation) -> bool:
    # A delete of nothing, or a put with the previous version's size and byte profile (the shadow, which holds
    # both values, may leave byte-identical writes out of the batch instead and add them to this count).
    if o.op == DELETE:
        return not o.existed
    return o.op == PUT and o.existed and o.size == o.prev_size and o.profile is not None and o.profile == o.prev_profile


def what_if(
    batch: Sequence[ChangeObservation],
    current: Sequence[ChangeObservation],
    *,
    table: str,
    window_start: float,
    window_end: float,
    context: FeatureContext,
    detector: Detector,
    table_keys: int = 0,
    recent: Sequence[WindowFeatures] = (),
) -> WhatIf:
    """Score ``batch`` (``table``'s proposed changes) as if it arrived now in the window [window_start,
    window_end) that already holds ``current`` (``recent``: the table's windows before it, oldest first); pure."""
    last = max(window_start, window_end - 1e-6)
    moved = [dataclasses.replace(o, time=min(max(o.time, window_start), last)) for o in batch if o.table == table]
    effective = [o for o in moved if not _unchanged(o)]
    counts = count_by_op(effective)
    nbytes = sum(o.size if o.op == PUT else (o.prev_size or 0) for o in effective if is_client(o))
    features = window_features(table, window_start, window_end, [*current, *effective], context)
    s = detector.score(features, recent)
    severity, kind = 0.0, "other"
    if any(is_client(o) and (o.op == PUT or o.existed) for o in effective):
        incident = analyse(table, [(features, s)], effective, context, table_keys=table_keys)
        severity, kind = incident.severity, incident.kind
    return WhatIf(
        creates=counts["create"],
        overwrites=counts["overwrite"],
        deletes=counts["delete"],
        unchanged=len(moved) - len(effective),
        bytes=nbytes,
        score=s.score,
        severity=severity,
        kind=kind,
        detector=s.detector,
        drivers=s.drivers,
    )
