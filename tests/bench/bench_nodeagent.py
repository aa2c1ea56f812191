"""How much the process node agent adds to starting pods: N pods to Ready on the local cluster, against the
same N processes started directly and polled until they answer (the floor: Python start-up + bind).

    python -m tests.bench.bench_nodeagent --pods 20

No data set: the workload is the pod start itself. The pods run tests/e2e/probe_server.py with an HTTP
readiness probe (period 1 s, as the ShardSet's shards use 2 s), so the agent's time includes binding,
volumes, the shim, probing and the status write that makes the pod Ready in the API.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.e2e.conftest import PROBE_SERVER, dev, is_ready, start_cluster

BOUND_SECONDS = 300  # every wait below is bounded


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def baseline(n: int) -> float:
    """Seconds until n directly started probe servers (own loopback IPs) all answer /readyz."""
    start = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, str(PROBE_SERVER), "--host", f"127.250.0.{i + 2}", "--port", "8080"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(n)
    ]
    try:
        pending = {f"http://127.250.0.{i + 2}:8080/readyz" for i in range(n)}
        while pending and time.monotonic() - start < BOUND_SECONDS:
            pending = {u for u in pending if not answers(u)}
            time.sleep(0.02)
        if pending:
            raise SystemExit(f"baseline: {len(pending)} servers never answered")
        return time.monotonic() - start
    finally:
        for p in procs:
            p.kill()
            p.wait()


def agent_run(cluster, n: int, ns: str) -> float:
    """Seconds from creating n pods to all of them Ready in the API."""
    pods = [{
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"bench-{i}", "namespace": ns, "labels": {"b": ns}},
        "spec": {"containers": [{
            "name": "web", "image": "none", "command": ["python", str(PROBE_SERVER)],
            "args": ["--host", "$(POD_IP)", "--port", "8080"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1},
        }]},
    } for i in range(n)]
    cluster.kubectl("create", "namespace", ns)
    start = time.monotonic()
    cluster.apply(*pods)
    while time.monotonic() - start < BOUND_SECONDS:
        ready = [p for p in cluster.pods(ns, f"b={ns}") if is_ready(p)]
        if len(ready) == n:
            return time.monotonic() - start
        time.sleep(0.2)
    raise SystemExit(f"agent: pods not Ready within {BOUND_SECONDS}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not 1 <= args.pods <= 200:
        parser.error("--pods must be between 1 and 200")
    state = Path(tempfile.mkdtemp(prefix="chronoshard-bench-agent-"))
    cluster = start_cluster(state, "--no-operator")
    rows = []
    try:
        for r in range(args.rounds):
            base = baseline(args.pods)
            agent = agent_run(cluster, args.pods, f"bench-{r}")
            rows.append((base, agent))
    finally:
        dev(state, "down", "--purge")
    print(f"{args.pods} pods, {args.rounds} rounds (seconds until all answer / all Ready)")
    print(f"{'round':>5} {'direct processes':>17} {'node agent':>11} {'ratio':>6}")
    for i, (base, agent) in enumerate(rows):
        print(f"{i:>5} {base:>17.2f} {agent:>11.2f} {agent / base:>6.2f}")
    print(json.dumps({"pods": args.pods, "rounds": [{"direct_s": b, "agent_s": a} for b, a in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
