"""MirrorSet failover and switchover on the local cluster: client-visible unavailability per round.

    python -m tests.bench.bench_mirror_failover [--rounds 10] [--mode sync|async] [--time-limit 1800]

One local cluster (real control plane, the operator process, pods as processes), two ShardSets of two shards and a
MirrorSet (probeInterval 1s, failureThreshold 2, leaseDuration 6s), set up by ``tests/e2e/test_mirror.py``'s
``mirror_env``. Then rounds alternating, while the e2e module's writers (one per key, read-your-writes) run:

* **switchover**: ``chronoshard mirror switchover --to <the other member> --wait`` through the CLI;
* **failover**: SIGSTOP of the active primary's node of shard 0; after the operator's failover, SIGCONT, and the
  round ends once the old primary rejoined as a mirror (every copy streaming).

Per round: the client-visible unavailability (the longest time one key went without an acknowledged write, from the
fault on: ``longest_gap``), the failed write calls, the new ``status.lostWrites`` count, ``lastOperation
.heldSeconds`` and the history check (``tests/support/histories.py``; in async mode a lost acknowledged write is
a violation only outside the LSN range ``lostWrites`` reported for its shard). Printed per kind beside the goals:
failover unavailability <= 15 s (baseline: a Lease expiry alone, leaseDuration, plus detection,
failureThreshold x probeInterval), switchover writes held <= 2 s and no failed call. Bounded by --rounds and
--time-limit (no round starts after it).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import signal
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.e2e.test_mirror import (
    DST,
    MIRRORSET,
    MS,
    NS,
    SRC,
    TABLE,
    App,
    Env,
    History,
    copies_streaming,
    final_state,
    longest_gap,
    mirror_env,
)
from tests.support.histories import Report, Write, check, lost_within
from tests.support.waiting import wait_for

LEASE_S, PROBE_S, THRESHOLD = 6.0, 1.0, 2  # as in MIRRORSET's spec
FAILOVER_GOAL_S, HELD_GOAL_S = 15.0, 2.0


@dataclass
class RoundResult:
    """One round's figures."""

    kind: str
    unavailability: float
    held: float | None
    failed_calls: int
    lost_writes: int  # the counts of the lostWrites entries this round's operation added
    violations: int
    summary: str


def mirrorset_spec(mode: str) -> dict[str, Any]:
    """The e2e MirrorSet with replication ``mode``."""
    ms: dict[str, Any] = copy.deepcopy(MIRRORSET)
    ms["spec"]["replication"] = {"mode": "sync", "syncTimeout": "5s"} if mode == "sync" else {"mode": "async"}
    return ms


def active_member(env: Env) -> str:
    """The active ShardSet's name."""
    return str(env.status()["activeShardSet"]).split("/", 1)[1]


def violations(mode: str, report: Report, ranges: dict[int, tuple[int, int]]) -> int:
    """History violations: everything the checker found in sync mode; in async mode a lost acknowledged write only
    outside its shard's reported lostWrites range, and a stale read only when what it missed was not such a loss."""
    if mode == "sync":
        return len(report.lost) + len(report.stale) + len(report.impossible) + len(report.phantom)
    unaccounted = lost_within(report, ranges)
    excused = {(w.key, w.seq) for w in report.lost if w not in unaccounted}
    stale = [r for r, must in report.stale if (r.key, must) not in excused]
    return len(unaccounted) + len(stale) + len(report.impossible) + len(report.phantom)


def with_shards(env: Env, writes: list[Write]) -> list[Write]:
    """The writes with their key's shard (the partition map), for matching losses to lostWrites per shard."""
    from chronoshard.shardnode.client.sync import Client

    with Client.for_mirrorset(MS, NS, kubeconfig=str(env.cluster.kubeconfig), ca=env.ca_dir / "ca.crt",
                              token=env.token) as client:
        pmap = client.partition_map()
    return [dataclasses.replace(w, shard=pmap.shard_of(TABLE, w.key)) for w in writes]


def new_lost_writes(status: dict[str, Any], term: int) -> list[dict[str, Any]]:
    """The lostWrites entries of operations at a term above ``term``."""
    return [e for e in status.get("lostWrites") or [] if int(e.get("term", 0)) > term]


def start_app(env: Env, prefix: str) -> App:
    """The e2e writers, started and past their first acknowledged writes."""
    app = App(env, prefix)
    app.start()
    wait_for(lambda: len(app.history.acks) > 50, timeout=60, what="writes acknowledged before the fault")
    return app


def more_writes(app: App) -> None:
    """Wait until the writers have acknowledged more writes (they go on after the operation)."""
    acked = len(app.history.acks)
    wait_for(lambda: len(app.history.acks) > acked + 50, timeout=60, what="writes after the operation")


def switchover(env: Env, prefix: str) -> tuple[History, float, list[str]]:
    """A planned switchover to the other member through the CLI; the writers' history, its start and the keys."""
    active = active_member(env)
    other = DST if active == SRC else SRC
    app = start_app(env, prefix)
    t0 = time.monotonic()
    try:
        done = env.cli("mirror", "switchover", MS, "--to", other, "--wait", "--timeout", "120")
        if done.returncode != 0:
            raise RuntimeError(f"switchover CLI failed ({done.returncode}): {done.stdout}{done.stderr}")
        more_writes(app)
    finally:
        h = app.stop()
    wait_for(lambda: copies_streaming(env, other), timeout=180, interval=1, what="the old primary following")
    return h, t0, app.keys


def failover(env: Env, prefix: str) -> tuple[History, float, list[str]]:
    """SIGSTOP of the active primary's node of shard 0, SIGCONT after the failover, until it rejoined as a mirror."""
    active = active_member(env)
    other = DST if active == SRC else SRC
    failovers = env.status().get("failovers", 0)
    app = start_app(env, prefix)
    pid = env.node_pid(active, 0)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: env.status().get("failovers", 0) > failovers and not env.status().get("operation"),
                 timeout=120, interval=0.5, what="the operator's failover to finish")
        more_writes(app)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # the kubelet's liveness probe restarted the frozen container meanwhile
        try:
            wait_for(lambda: copies_streaming(env, other), timeout=180, interval=1,
                     what="the frozen old primary back as a mirror")
        finally:
            h = app.stop()
    return h, t0, app.keys


def run_round(env: Env, mode: str, i: int) -> RoundResult:
    """Round ``i``: a switchover when even, a failover when odd."""
    kind = "switchover" if i % 2 == 0 else "failover"
    term = int(env.status()["term"])
    h, t0, keys = (switchover if kind == "switchover" else failover)(env, f"r{i}")
    # Shards known, a loss can be matched to its shard's lostWrites range (async mode).
    writes = with_shards(env, h.writes)
    report = check(writes, h.reads, final_state(env, keys))
    st = env.status()
    last = st.get("lastOperation") or {}
    if last.get("kind") != kind or last.get("outcome") != "Succeeded" or int(st["term"]) <= term:
        raise RuntimeError(f"round {i}: expected a {kind} that succeeded, status says {last}")
    lost = new_lost_writes(st, term)
    ranges = {int(e["shard"]): (int(e["fromLSN"]), int(e["toLSN"])) for e in lost}
    bad = violations(mode, report, ranges)
    held = last.get("heldSeconds")
    return RoundResult(kind, longest_gap(h.writes, t0), None if held is None else float(held), h.failed_calls,
                       sum(int(e.get("count") or 0) for e in lost), bad, report.summary())


def pct(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 1)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def report(mode: str, results: list[RoundResult]) -> None:
    """Per kind: rounds, unavailability p50/p99/max, held seconds p50/max, failed calls, violations, the goals."""
    print(f"\n== MirrorSet {mode}: {len(results)} rounds ==")
    baseline = LEASE_S + THRESHOLD * PROBE_S
    for kind in ("switchover", "failover"):
        rs = [r for r in results if r.kind == kind]
        if not rs:
            continue
        un = [r.unavailability for r in rs]
        held = [r.held for r in rs if r.held is not None]
        print(f"{kind}: rounds {len(rs)}; unavailability p50 {statistics.median(un):.2f} s, p99 {pct(un, 0.99):.2f} s,"
              f" max {max(un):.2f} s; heldSeconds p50 {statistics.median(held) if held else float('nan'):.2f} s, max "
              f"{max(held, default=float('nan')):.2f} s; failed calls {sum(r.failed_calls for r in rs)}; lostWrites "
              f"{sum(r.lost_writes for r in rs)}; violations {sum(r.violations for r in rs)}")
        if kind == "failover":
            print(f"  goal: unavailability <= {FAILOVER_GOAL_S:.0f} s -> max {max(un):.2f} s "
                  f"({'met' if max(un) <= FAILOVER_GOAL_S else 'MISSED'}); baseline to beat: Lease expiry alone "
                  f"{LEASE_S:.0f} s + detection {THRESHOLD} x {PROBE_S:.0f} s = {baseline:.0f} s")
        else:
            ok = max(held, default=math.inf) <= HELD_GOAL_S and sum(r.failed_calls for r in rs) == 0
            print(f"  goal: held <= {HELD_GOAL_S:.0f} s and 0 failed calls -> {'met' if ok else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="rounds, alternating switchover and failover")
    ap.add_argument("--mode", choices=("sync", "async"), default="sync")
    ap.add_argument("--time-limit", type=float, default=1800.0, help="seconds; no round starts after it")
    args = ap.parse_args()
    results: list[RoundResult] = []
    started = time.monotonic()
    with mirror_env(mirrorset_spec(args.mode)) as env:
        print(f"cluster ready in {time.monotonic() - started:.0f} s", flush=True)
        begin = time.monotonic()
        for i in range(args.rounds):
            if time.monotonic() - begin > args.time_limit:
                print(f"time limit reached after {i} rounds")
                break
            try:
                r = run_round(env, args.mode, i)
            except Exception as exc:  # report what was measured, then the round that broke
                print(f"round {i} failed: {type(exc).__name__}: {exc}", flush=True)
                break
            results.append(r)
            print(f"round {i} {r.kind}: unavailability {r.unavailability:.2f} s, held {r.held} s, failed calls "
                  f"{r.failed_calls}, lostWrites {r.lost_writes}, violations {r.violations}; {r.summary}", flush=True)
        report(args.mode, results)


if __name__ == "__main__":
    main()
