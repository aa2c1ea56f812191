"""GET 4 KiB through the cache: HTTPS + token authentication + RBAC authorization versus plain HTTP without auth.

    python -m tests.bench.bench_auth_read [--requests 4000] [--concurrency 16] [--keys 200] [--rounds 3]
                                          [--steady-seconds 25]

All set-ups run in the same invocation as a pod runs them: real ``chronoshard-node`` + ``chronoshard-cache``
processes on 127.0.0.1, the secured pair with ``--tls-dir`` and ``--security-config`` checking a real
ServiceAccount token (from the TokenRequest API, audience ``chronoshard.io/NS/NAME``) with TokenReview and each
table decision with SubjectAccessReview on a real kube-apiserver (devcluster's control plane, RBAC on). The
client is the chronoshard ``AsyncClient`` (one pooled session: one TLS handshake per connection). Values
are written once through the cache, read once to warm it (and the connection pool), then read ``--requests``
times per round (rounds alternate the set-ups, swapping the order; the best of each is reported). The secured
pair runs at the pods' log level (INFO: one audit line per request); a second one at WARNING shows what the
audit line costs. The authorization cache's hit ratio is the change of the secured cache's
``chronoshard_auth_cache_lookups_total`` over ``--steady-seconds`` of reads after the rounds (longer than the
caches' 10 s TTL, so expiries count as misses).
Bounded: a request count per round and a time limit per round. Needs CHRONOSHARD_ENVTEST_BIN (hack/envtest.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from chronoshard.shardnode.client import AsyncClient
from chronoshard.shardnode.client.cli_tokens import ServiceAccountToken
from chronoshard.shardnode.client.credentials import audience
from chronoshard.shardnode.keyspace.partitioning import initial_map

from tests.integration.client.secure_shard import SecureShard

TIME_LIMIT = 60.0
NAMESPACE, NAME, TABLE = "bench", "orders", "bench"
GOAL_RATIO, GOAL_HIT = 0.7, 0.99
PLAIN, SECURE = "plain HTTP, no auth", "HTTPS + token + RBAC (pod log level)"
QUIET = "HTTPS + token + RBAC, no audit lines"


async def timed_reads(client: AsyncClient, keys: list[str], requests: int, concurrency: int) -> dict[str, float]:
    """``requests`` GETs with ``concurrency`` in flight: req/s and latency percentiles (ms)."""
    lat: list[float] = []
    counter = iter(range(requests))
    deadline = time.monotonic() + TIME_LIMIT

    async def worker() -> None:
        for i in counter:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            await client.get(TABLE, keys[i % len(keys)])
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100)
    return {"rps": len(lat) / wall, "p50": q[49] * 1e3, "p99": q[98] * 1e3, "n": len(lat)}


async def steady_reads(client: AsyncClient, keys: list[str], seconds: float, concurrency: int) -> int:
    """GETs with ``concurrency`` in flight for ``seconds``; how many were made."""
    deadline = time.monotonic() + seconds
    done = 0

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.monotonic() < deadline:
            await client.get(TABLE, keys[i % len(keys)])
            i += concurrency
            done += 1

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done


def lookups(metrics_text: str) -> dict[tuple[str, str], float]:
    """(cache, result) -> count, from a /metrics answer."""
    out: dict[tuple[str, str], float] = {}
    for m in re.finditer(r'^chronoshard_auth_cache_lookups_total\{([^}]*)\} (\S+)$', metrics_text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = (labels["cache"], labels["result"])
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def setup_api(api: Any) -> None:
    """Namespace, a ServiceAccount and its Role on shardsets/data TABLE (get, update)."""
    from kubernetes import client

    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    core.create_namespaced_service_account(NAMESPACE, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="reader")))
    rbac.create_namespaced_role(NAMESPACE, {
        "metadata": {"name": "bench-rw"},
        "rules": [{"apiGroups": ["chronoshard.io"], "resources": ["shardsets/data"], "resourceNames": [TABLE],
                   "verbs": ["get", "update"]}]})
    rbac.create_namespaced_role_binding(NAMESPACE, {
        "metadata": {"name": "bench-rw"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bench-rw"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NAMESPACE}]})


async def prepare(shard: SecureShard, tokens: ServiceAccountToken | None, keys: list[str],
                  concurrency: int) -> AsyncClient:
    """A client for ``shard``'s cache; every key written once and read once (the cache holds them)."""
    kw: dict[str, Any] = {"token_provider": tokens, "ca": shard.ca_file} if tokens else {}
    client = AsyncClient(initial_map(1), [shard.cache_url], token_file="/nonexistent/token", **kw)
    value = os.urandom(4096)
    for k in keys:
        await client.put(TABLE, k, value)
    for k in keys:
        assert await client.get(TABLE, k) == value
    # Open the pool's connections (and do their handshakes) before anything is timed.
    await timed_reads(client, keys, concurrency * 8, concurrency)
    return client


async def bench(args: argparse.Namespace, root: Path) -> None:
    from chronoshard.devcluster.controlplane import ControlPlane
    from kubernetes import config

    cp = ControlPlane(state_dir=root / "controlplane", controller_manager=False).start()
    shards: list[SecureShard] = []
    try:
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        setup_api(api)
        tokens = ServiceAccountToken(api, NAMESPACE, "reader", audience(NAMESPACE, NAME))
        # The pods' log level (INFO): the secured pair writes its audit line per request, as in a pod; a
        # second secured pair at WARNING (no audit lines) shows what the audit line costs.
        plain = SecureShard(root / "plain", NAMESPACE, NAME, None, secure=False, log_level="INFO").start()
        shards.append(plain)
        secure = SecureShard(root / "secure", NAMESPACE, NAME, cp.kubeconfig, log_level="INFO").start()
        shards.append(secure)
        quiet = SecureShard(root / "quiet", NAMESPACE, NAME, cp.kubeconfig, log_level="WARNING").start()
        shards.append(quiet)
        keys = [f"k-{i:05d}" for i in range(args.keys)]
        clients = {PLAIN: await prepare(plain, None, keys, args.concurrency),
                   SECURE: await prepare(secure, tokens, keys, args.concurrency),
                   QUIET: await prepare(quiet, tokens, keys, args.concurrency)}
        best: dict[str, dict[str, float]] = {}
        for rnd in range(args.rounds):
            # Alternate which set-up goes first, so a slow moment of the shared machine hits both alike.
            for label, client in sorted(clients.items(), reverse=rnd % 2 == 1):
                r = await timed_reads(client, keys, args.requests, args.concurrency)
                print(f"round {rnd + 1} {label:36s} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                      f"p99 {r['p99']:6.2f} ms  ({r['n']:.0f} GETs)", flush=True)
                if label not in best or r["rps"] > best[label]["rps"]:
                    best[label] = r
        # Steady state longer than the caches' 10 s TTL, so entries expire and are reviewed again meanwhile.
        before = lookups(secure.metrics(secure.cache_url))
        steady = await steady_reads(clients[SECURE], keys, args.steady_seconds, args.concurrency)
        after = lookups(secure.metrics(secure.cache_url))
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        hits = sum(v for (_, res), v in delta.items() if res == "hit")
        misses = sum(v for (_, res), v in delta.items() if res == "miss")
        for client in clients.values():
            await client.close()
        plain_r = best[PLAIN]
        hit_ratio = hits / (hits + misses) if hits + misses else float("nan")
        print(f"\nGET 4 KiB through the cache, {args.concurrency} in flight, best of {args.rounds} rounds:")
        for label, r in best.items():
            print(f"  {label:36s} {r['rps']:8.0f} req/s  p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms  "
                  f"{r['rps'] / plain_r['rps']:.2f}x")
        print(f"  ratio secured/plain (as pods log)    {best[SECURE]['rps'] / plain_r['rps']:.2f}x  "
              f"(goal >= {GOAL_RATIO}x)")
        print(f"  auth cache hit ratio     {hit_ratio:.4%}  ({hits:.0f} hits, {misses:.0f} misses in "
              f"{args.steady_seconds:g} s of steady reads, {steady:.0f} GETs; goal >= {GOAL_HIT:.0%})")
        print("    by cache:", ", ".join(f"{c} {r} {v:.0f}" for (c, r), v in sorted(delta.items())))
        print(f"  TokenRequests made       {tokens.requests}")
    finally:
        for s in shards:
            s.stop()
        cp.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--keys", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steady-seconds", type=float, default=25.0, help="the hit-ratio phase (> the 10 s TTL)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
