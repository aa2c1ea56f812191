"""The mirror side's metrics, read from the replication state at scrape time (no SQLite read)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .role import MIRROR
from .state import ReplicationState

STATES = ("idle", "seeding", "rewinding", "streaming", "error", "stopped")


class MirrorCollector:
    """chronoshard_node_replication_*: the role and term, the replicator's state, and a mirror's applied LSN, lag,
    seeds, errors and whether its source answers."""

    def __init__(self, state: ReplicationState) -> None:
        self.state = state

    def describe(self) -> list[Metric]:
        """Names only (registering reads no state)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Current values."""
        st = self.state
        yield GaugeMetricFamily("chronoshard_node_replication_term", "The term of the role document in force",
                                value=st.role.term)
        role = GaugeMetricFamily("chronoshard_node_replication_role", "1 for the node's role", labels=["role"])
        role.add_metric([st.role.role], 1)
        yield role
        state = GaugeMetricFamily("chronoshard_node_replication_state", "1 for the replicator's state",
                                  labels=["state"])
        for name in STATES:
            state.add_metric([name], 1 if st.state == name else 0)
        yield state
        yield CounterMetricFamily("chronoshard_node_replication_seeds", "Seeds from the source's snapshot since "
                                  "the process started", value=st.seeds)
        yield CounterMetricFamily("chronoshard_node_replication_errors", "Replicator errors (each retried after a "
                                  "backoff)", value=st.errors)
        if st.role.role != MIRROR:
            return
        src = st.describe_source(st.applied)
        assert src is not None
        yield GaugeMetricFamily("chronoshard_node_replication_applied_lsn", "The source LSN this mirror has applied",
                                value=st.applied)
        yield GaugeMetricFamily("chronoshard_node_replication_lag_lsn", "Source changes not applied yet",
                                value=src["lagLsn"])
        yield GaugeMetricFamily("chronoshard_node_replication_lag_seconds", "Age of the oldest source change not "
                                "applied yet (0 when caught up)", value=src["lagSeconds"])
        yield GaugeMetricFamily("chronoshard_node_replication_source_reachable", "1 while the source answered last",
                                value=1 if src["reachable"] else 0)
