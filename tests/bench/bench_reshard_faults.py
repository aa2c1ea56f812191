"""Every move phase × every kill, on the local cluster with the operator: the long version of tests/e2e/test_reshard.py.

    python -m tests.bench.bench_reshard_faults [--runs 12] [--time-limit 1800]

One local cluster, one 3-shard ShardSet (no rebalance: the moves are asked for by hand), the application of the e2e
test (3,000 prefilled blocks, 12 writers one per key, 4 readers, through the Python client). Each run moves one
partition to another shard with a one-step Reshard (``gracePeriod: 1s``) and kills one process — the operator, the
move's source node or its target node (SIGKILL) — the first time the Reshard's status shows the move in the run's
phase (Copying, CatchingUp, Verifying, CuttingOver). The runs go through every (kill, phase) pair in turn, at most
``--runs`` of them and within ``--time-limit`` seconds. After each run: the Reshard Completed, every acknowledged write
readable with its last value and no stale read, zero failed reads, the map covering the keyspace once and every key
held by exactly its owner. Printed per run, and the totals: kills that landed (a phase can pass between two looks at
the status, then the run counts as not landed), violations, failed calls, the cutover's write pause from the status.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

from tests.e2e.test_reshard import (
    MOVE_PHASES,
    NS,
    App,
    Chaos,
    Env,
    Kill,
    check_layout,
    final_state,
    reshard_env,
    wait_done,
)
from tests.support.histories import check
from tests.support.waiting import wait_for

KINDS = ("operator", "source", "target")


def start_move(env: Env, run: int, partition: int, to: int, names: list[str]) -> str:
    name = f"faults-{run}"
    env.cluster.apply({"apiVersion": "chronoshard.io/v1alpha1", "kind": "Reshard",
                       "metadata": {"name": name, "namespace": NS},
                       "spec": {"shardSetRef": {"name": "orders"}, "gracePeriod": "1s",
                                "steps": [{"move": {"partition": partition, "toShard": to}}]}})
    names.append(name)
    return name


def one_run(env: Env, run: int, kind: str, phase: str, partition: int, to: int) -> dict[str, object]:
    app = App(env, prefix=f"r{run}")
    app.prefill = []  # the blocks prefilled by the first run stay; each run writes its own keys
    app.start()
    wait_for(lambda: app.history.acks > 50, timeout=60, what="writes before the move")
    names: list[str] = []
    plan = [Kill(kind, 0, (phase,))]
    chaos = Chaos(env, plan, names)
    chaos.start()
    try:
        name = start_move(env, run, partition, to, names)
        obj = wait_done(env, name, timeout=180)
        acked = app.history.acks
        wait_for(lambda: app.history.acks > acked + 20, timeout=60, what="writes after the move")
    finally:
        chaos.stop()
        h = app.stop()
    report = check(h.writes, h.reads, final_state(env, app.keys))
    check_layout(env, 3, every_shard_owns=False)  # moves by hand leave a shard without a partition
    row = obj["status"]["steps"][0]
    return {"run": run, "kill": kind, "phase": phase, "landed": plan[0].step is not None, "ok": report.ok,
            "history": report.summary(), "failedReads": len(h.failed_reads), "failedWrites": len(h.failed_writes),
            "pausedMs": row.get("pausedMs"), "cutoverAttempts": row.get("cutoverAttempts")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=len(KINDS) * len(MOVE_PHASES))
    ap.add_argument("--time-limit", type=float, default=1800.0)
    args = ap.parse_args()
    deadline = time.monotonic() + args.time_limit
    results: list[dict[str, object]] = []
    with reshard_env(rebalance=False) as env:
        prefill = App(env, prefix="seed")
        prefill.start()
        assert prefill.prefilled.wait(120), "prefill"
        prefill.stop()
        pairs = itertools.islice(itertools.cycle(itertools.product(KINDS, MOVE_PHASES)), args.runs)
        for run, (kind, phase) in enumerate(pairs):
            if time.monotonic() >= deadline:
                print(f"time limit: {run} runs done")
                break
            # Partition 0 goes round the three shards: 0 -> 1 -> 2 -> 0 ...
            result = one_run(env, run, kind, phase, partition=0, to=(run + 1) % 3)
            print(json.dumps(result), flush=True)
            results.append(result)
    landed = [r for r in results if r["landed"]]
    bad = [r for r in results if not r["ok"] or r["failedReads"]]
    paused = sorted(float(str(r["pausedMs"])) for r in results if r["pausedMs"] is not None)
    print(f"{len(results)} runs, {len(landed)} kills landed in their phase, {len(bad)} with a violation or a failed "
          f"read; failed writes {sum(int(str(r['failedWrites'])) for r in results)}; cutover write pause (status) "
          f"max {max(paused, default=float('nan')):.0f} ms")


if __name__ == "__main__":
    main()
