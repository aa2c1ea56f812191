"""Status rows, member summaries, phase and conditions from samples and verdicts."""

from __future__ import annotations

from chronoshard.operator.mirrorset import status
from chronoshard.operator.mirrorset.health import DEGRADED, HEALTHY, UNAVAILABLE, CopyHealth, Sample
from chronoshard.operator.mirrorset.plan import Member

A = Member("ns", "a")
B = Member("ns", "b")
PRIMARY = {"role": "primary", "state": "idle", "appliedLsn": 12, "lastLsn": 12}
MIRROR = {"role": "mirror", "state": "streaming", "appliedLsn": 11, "lastLsn": 11,
          "source": {"lagLsn": 1, "lagSeconds": 0.25}}
HEALTH = {"restarts": 2, "capacity": {"fraction": 0.01}, "requests": {"errorRate": 0.001}}


def test_rows_carry_figures_and_keep_last_reported_lsns_of_a_copy_that_stopped_answering():
    samples = {(A.key, 0): Sample(A.key, 0, replication=None, error="TimeoutError"),
               (B.key, 0): Sample(B.key, 0, replication=MIRROR, health=HEALTH, latency_ms=4.2)}
    verdicts = {(A.key, 0): CopyHealth(UNAVAILABLE, ("probe failed: TimeoutError",), 3),
                (B.key, 0): CopyHealth(HEALTHY)}
    previous = {(A.key, 0): {"shardSet": A.key, "appliedLSN": 12, "lastLSN": 12, "latencyMs": 1.0}}
    rows = status.shard_rows([A, B], 1, A, samples, verdicts, previous)
    a, b = rows[0]["copies"]
    assert rows[0]["primary"] == A.key
    assert a == {"shardSet": A.key, "role": "unknown", "health": UNAVAILABLE,
                 "reasons": ["probe failed: TimeoutError"], "appliedLSN": 12, "lastLSN": 12}
    assert b == {"shardSet": B.key, "role": "mirror", "health": HEALTHY, "reasons": [], "state": "streaming",
                 "appliedLSN": 11, "lastLSN": 11, "lagLSN": 1, "lagSeconds": 0.25, "latencyMs": 4.2,
                 "errorRate": 0.001, "capacity": 0.01, "restarts": 2}
    assert status.unavailable_shards(rows, A) == [0] and status.unavailable_shards(rows, B) == []
    summary = status.mirror_summaries([A, B], A, rows)
    assert summary == [{"name": "b", "namespace": "ns", "healthy": True, "lagSeconds": 0.25, "appliedLSN": 11}]


def _rows(health_b: str) -> list[dict]:
    return [{"shard": 0, "primary": A.key, "copies": [
        {"shardSet": A.key, "role": "primary", "health": HEALTHY, "reasons": [], "state": "idle"},
        {"shardSet": B.key, "role": "mirror", "health": health_b,
         "reasons": [] if health_b == HEALTHY else ["lag 40.0s > 30s"], "state": "streaming"}]}]


def test_phase_follows_operation_then_health():
    assert status.phase_of({"kind": "failover"}, _rows(HEALTHY), False) == "FailingOver"
    assert status.phase_of({"kind": "failback"}, _rows(HEALTHY), False) == "SwitchingOver"
    assert status.phase_of(None, _rows(HEALTHY), False) == "Replicating"
    assert status.phase_of(None, _rows(DEGRADED), False) == "Degraded"
    assert status.phase_of(None, _rows(HEALTHY), True) == "Degraded"
    assert status.phase_of(None, [], False) == "Pending"


def test_conditions_say_why():
    conds = {c["type"]: c for c in status.conditions({}, 3, phase="Degraded", active=A, rows=_rows(DEGRADED),
                                                     sync_degraded=[0], manual_hint=None, now="t")}
    assert conds["Ready"]["status"] == "False"
    assert conds["Degraded"]["message"] == "ns/b[0]: degraded (lag 40.0s > 30s)"
    assert conds["SyncDegraded"]["status"] == "True" and "[0]" in conds["SyncDegraded"]["message"]
    assert conds["Replicating"]["status"] == "True"
    ok = {c["type"]: c for c in status.conditions({}, 3, phase="Replicating", active=A, rows=_rows(HEALTHY),
                                                  sync_degraded=[], manual_hint=None, now="t")}
    assert (ok["Ready"]["status"], ok["Degraded"]["status"], ok["SyncDegraded"]["status"]) == ("True", "False",
                                                                                               "False")
    hint = {c["type"]: c for c in status.conditions({}, 3, phase="Degraded", active=A, rows=_rows(HEALTHY),
                                                    sync_degraded=[], manual_hint="switch by hand", now="t")}
    assert hint["Degraded"]["status"] == "True" and hint["Degraded"]["message"] == "switch by hand"
