"""The token service's figures: PredictiveTokenRequest p99 over HTTPS, offline verification, revocation propagation.

    python -m tests.bench.bench_tokens --data /work/shared/data [--requests 2000] [--concurrency 1] [--rounds 3]
                                       [--nodes 8] [--revocations 30] [--verifications 5000]

Real processes on 127.0.0.1, as pods run them: ``chronoshard-tokens`` with TLS and the auth layer (the caller's
ServiceAccount token reviewed by TokenReview, the requested scope by SubjectAccessReview, on a real kube-apiserver:
devcluster's control plane), and member nodes (``chronoshard-node`` + ``chronoshard-cache`` with TLS and auth) it
samples and pushes revocations to. The requests are for real block ids: the logical block numbers of the
CloudPhysics block-I/O trace (``--data``/cache/cloudPhysicsIO/cloudPhysicsIO.txt), in trace order, one
``dataBlockId`` each.

1. PredictiveTokenRequest: ``POST /v1/tokens`` with ``--concurrency`` in flight, p50/p99; **baseline in the same run**:
   ``GET`` of a 4 KiB block from the member's node through the same auth layer (same client, same TLS session pool,
   same token and RBAC path), rounds alternating which goes first. Goal p99 <= 10 ms.
2. Offline verification: ``tokenformat.decode_verified`` of issued tokens beside a raw Ed25519 verify of the same
   signing input and signature (the floor), and the nodes' whole per-request check with its cache off
   (``TieredTokenAuthenticator.verify_header``: parse, verify, expiry, revocation). Goal <= 1 ms. And what it adds
   per request where it matters: the node GET of 4 KiB with a tiered token beside the same GET with the
   ServiceAccount token (TokenReview and SubjectAccessReview, cached as in production), rounds alternating.
3. Revocation propagation: ``DELETE /v1/tokens/{id}`` until every one of ``--nodes`` nodes lists the id in its
   ``GET /v1/tokens/revocations`` (polled every 10 ms: faster polling of 8 nodes loaded them more than the
   pushes); beside the baseline of the bench client itself PUTting the revocation to every node in parallel.
   Goal <= 1 s.
Needs CHRONOSHARD_ENVTEST_BIN (hack/envtest.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from chronoshard.operator import certs
from chronoshard.shardnode.auth import tokenformat
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.integration.client.secure_shard import SecureShard, security_json
from tests.integration.client.shards import BIN, free_port
from tests.integration.shardnode.test_tokens_service import TOKENS, TokenServiceProc

NAMESPACE, NAME, TABLE = "bench", "orders", "bench"
GOAL_REQUEST_P99_MS, GOAL_VERIFY_MS, GOAL_PROPAGATION_S = 10.0, 1.0, 1.0
TIME_LIMIT = 120.0


def trace_block_ids(data: Path, n: int) -> list[str]:
    """The first ``n`` distinct block ids (lbn) of the CloudPhysics trace, in trace order."""
    path = data / "cache" / "cloudPhysicsIO" / "cloudPhysicsIO.txt"
    seen: dict[str, None] = {}
    with path.open() as f:
        for line in f:
            lbn = line.strip()
            if lbn:
                seen.setdefault(lbn, None)
            if len(seen) >= n:
                break
    return list(seen)


def pct(values: list[float], q: int) -> float:
    """The q-th percentile (nearest of statistics.quantiles' 100 cuts)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def timed(calls: list[Any], concurrency: int) -> dict[str, float]:
    """Run the coroutine factories ``concurrency`` at a time: latency percentiles (ms) and rate."""
    lat: list[float] = []
    it = iter(calls)
    deadline = time.monotonic() + TIME_LIMIT

    async def worker() -> None:
        for make in it:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            await make()
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"p50": pct(lat, 50) * 1e3, "p99": pct(lat, 99) * 1e3, "rps": len(lat) / wall, "n": len(lat)}


def setup_api(api: Any) -> None:
    """Namespace, ServiceAccount ``app`` with shardsets/data get/update on TABLE."""
    from kubernetes import client

    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    core.create_namespaced_service_account(NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="app")))
    rbac.create_namespaced_role(NAMESPACE, {"metadata": {"name": "rw"}, "rules": [
        {"apiGroups": ["chronoshard.io"], "resources": ["shardsets/data"], "resourceNames": [TABLE],
         "verbs": ["get", "list", "update"]},
        {"apiGroups": ["chronoshard.io"], "resources": ["shardsets"], "resourceNames": [NAME], "verbs": ["get"]}]})
    rbac.create_namespaced_role_binding(NAMESPACE, {
        "metadata": {"name": "rw"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                 "name": "rw"},
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": NAMESPACE}]})


def sa_token(api: Any, audience: str) -> str:
    from kubernetes import client

    spec = client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=3600)
    tr = client.CoreV1Api(api).create_namespaced_service_account_token(
        "app", NAMESPACE, client.AuthenticationV1TokenRequest(spec=spec))
    return str(tr.status.token)


def extra_nodes(member: SecureShard, n: int) -> list[str]:
    """``n`` more nodes of the member's ShardSet (its certificate, security.json and tokens.json), each on its own
    data directory: revocation targets."""
    urls = []
    for i in range(n):
        port = free_port()
        data = member.root / f"data-{i}"
        data.mkdir(exist_ok=True)
        proc = member._spawn([str(BIN / "chronoshard-node"), "--port", str(port), "--data-dir", str(data),
                              "--keyring-dir", str(member.keyring), "--partition-map",
                              str(member.partitions / "map.json"), "--shard-index", "0", "--host", "127.0.0.1"],
                             f"node-{i}.log")
        url = f"https://127.0.0.1:{port}"
        member.wait_ready(url, proc)
        urls.append(url)
    return urls


async def request_vs_get(args: argparse.Namespace, session: aiohttp.ClientSession, svc_url: str, node_url: str,
                         token: str, node_token: str, blocks: list[str]) -> dict[str, dict[str, float]]:
    auth = {"Authorization": f"Bearer {token}"}
    node_auth = {"Authorization": f"Bearer {node_token}"}
    value = os.urandom(4096)
    async with session.put(f"{node_url}/v1/tables/{TABLE}/blocks/b0", data=value, headers=node_auth) as r:
        assert r.status in (200, 201, 204), await r.text()
    async with session.post(svc_url + "/v1/tokens", json={"dataBlockId": f"{TABLE}/b0", "verbs": ["get"]},
                            headers=auth) as r:
        assert r.status == 201, await r.text()
        tiered_auth = {"Authorization": f"Bearer {(await r.json())['token']}"}

    async def issue(i: int) -> None:
        doc = {"dataBlockId": f"{TABLE}/{blocks[i % len(blocks)]}", "verbs": ["get"]}
        async with session.post(svc_url + "/v1/tokens", json=doc, headers=auth) as r:
            assert r.status == 201, await r.text()
            await r.read()

    async def get(_: int, headers: dict[str, str] = node_auth) -> None:
        async with session.get(f"{node_url}/v1/tables/{TABLE}/blocks/b0", headers=headers) as r:
            assert r.status == 200, await r.text()
            assert len(await r.read()) == 4096

    async def get_tiered(i: int) -> None:
        await get(i, tiered_auth)

    # warm: connections, TLS sessions, the token and decision caches
    await timed([lambda i=i: issue(i) for i in range(args.concurrency * 4)], args.concurrency)
    await timed([lambda i=i: get(i) for i in range(args.concurrency * 4)], args.concurrency)
    await timed([lambda i=i: get_tiered(i) for i in range(args.concurrency * 4)], args.concurrency)
    best: dict[str, dict[str, float]] = {}
    labels = {"PredictiveTokenRequest (POST /v1/tokens)": issue, "baseline: node GET 4 KiB, same auth": get,
              "node GET 4 KiB with a tiered token": get_tiered}
    for rnd in range(args.rounds):
        for label, fn in sorted(labels.items(), reverse=rnd % 2 == 1):
            r = await timed([lambda i=i, fn=fn: fn(i) for i in range(args.requests)], args.concurrency)
            print(f"round {rnd + 1} {label:44s} p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  "
                  f"{r['rps']:7.0f}/s ({r['n']:.0f})", flush=True)
            if label not in best or r["p99"] < best[label]["p99"]:
                best[label] = r
    return best


def verification(tokens: list[str], keys: dict[str, Ed25519PublicKey], issuer: str,
                 tokens_json: Path) -> dict[str, float]:
    """Per-token time of decode_verified vs a raw Ed25519 verify of the same bytes, and of the node's whole check
    (TieredTokenAuthenticator.verify_header over ``tokens_json``, its cache off) (µs)."""
    from chronoshard.shardnode.auth.tiered import TieredTokenAuthenticator, TokensFile

    check = TieredTokenAuthenticator(TokensFile(tokens_json), f"{NAMESPACE}/{NAME}", cache_size=0)
    now = time.time()
    raw: list[tuple[Ed25519PublicKey, bytes, bytes]] = []
    for tok in tokens:
        head, payload, sig = tok.split(".")
        kid = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]
        raw.append((keys[kid], f"{head}.{payload}".encode(), base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))))
    full, floor, node = [], [], []
    for _ in range(3):
        for tok, (key, msg, sig) in zip(tokens, raw, strict=True):
            t0 = time.perf_counter()
            tokenformat.decode_verified(tok, keys, now, issuer=issuer)
            t1 = time.perf_counter()
            key.verify(sig, msg)
            t2 = time.perf_counter()
            assert check.verify_header(f"Bearer {tok}") is not None
            t3 = time.perf_counter()
            full.append(t1 - t0)
            floor.append(t2 - t1)
            node.append(t3 - t2)
    return {"p50": pct(full, 50) * 1e6, "p99": pct(full, 99) * 1e6, "raw_p50": pct(floor, 50) * 1e6,
            "raw_p99": pct(floor, 99) * 1e6, "node_p50": pct(node, 50) * 1e6, "node_p99": pct(node, 99) * 1e6,
            "n": len(full)}


async def propagation(args: argparse.Namespace, session: aiohttp.ClientSession, op: aiohttp.ClientSession,
                      svc_url: str, token: str, nodes: list[str]) -> dict[str, list[float]]:
    auth = {"Authorization": f"Bearer {token}"}

    async def listed(url: str, jti: str) -> bool:
        async with op.get(url + "/v1/tokens/revocations") as r:
            body = await r.json()
            return jti in {e["tokenId"] for e in body["revocations"]}

    async def everywhere(jti: str, t0: float) -> float:
        pending = set(nodes)
        while pending:
            done = await asyncio.gather(*(listed(u, jti) for u in pending))
            pending = {u for u, ok in zip(list(pending), done, strict=True) if not ok}
            if pending:
                await asyncio.sleep(0.01)
            if time.perf_counter() - t0 > 30:
                raise TimeoutError(f"revocation {jti} not on {len(pending)} nodes after 30 s")
        return time.perf_counter() - t0

    service, direct, pushed = [], [], []
    for i in range(args.revocations):
        async with session.post(svc_url + "/v1/tokens", json={"table": TABLE}, headers=auth) as r:
            issued = await r.json()
        t0 = time.perf_counter()
        async with session.delete(f"{svc_url}/v1/tokens/{issued['tokenId']}", headers=auth) as r:
            body = await r.json()
            assert body["pushedTo"] >= len(nodes) and body["pending"] == 0, body
        pushed.append(time.perf_counter() - t0)
        service.append(await everywhere(issued["tokenId"], t0))
        # baseline: the bench client puts a revocation to every node itself, in parallel
        fake = f"direct-{i}-{os.urandom(4).hex()}"
        t0 = time.perf_counter()
        doc = {"revocations": [{"tokenId": fake, "expiresAt": time.time() + 600}]}

        async def put(url: str, doc: dict[str, Any] = doc) -> None:
            async with op.put(url + "/v1/tokens/revocations", json=doc) as r:
                assert r.status < 300, await r.text()

        await asyncio.gather(*(put(u) for u in nodes))
        direct.append(await everywhere(fake, t0))
    return {"service": service, "answered": pushed, "direct": direct}


async def bench(args: argparse.Namespace, root: Path) -> None:
    from chronoshard.devcluster.controlplane import ControlPlane
    from kubernetes import config

    cp = ControlPlane(state_dir=root / "controlplane", controller_manager=False).start()
    member: SecureShard | None = None
    svc: TokenServiceProc | None = None
    try:
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        setup_api(api)
        member = SecureShard(root / "member", NAMESPACE, NAME, cp.kubeconfig, log_level="WARNING")
        svc = TokenServiceProc(root / "svc", member, cp.kubeconfig)
        doc = security_json(NAMESPACE, NAME)
        doc["operatorIdentities"] = [*doc["operatorIdentities"], certs.pod_identity(NAMESPACE, TOKENS)]
        (member.root / "security.json").write_text(json.dumps(doc))
        (member.root / "tokens.json").write_text(json.dumps(svc.tokens_json()))
        member.start()
        nodes = [member.node_url, *extra_nodes(member, args.nodes - 1)]
        shards = [{"index": i, "node": u, "cache": member.cache_url if i == 0 else None} for i, u in enumerate(nodes)]
        svc.write_config(members=[{"store": f"{NAMESPACE}/{NAME}", "role": "source", "shards": shards}],
                         health={"probeInterval": 2})
        svc.start()
        ctx = member.ssl_context()
        op_ctx: ssl.SSLContext = member.operator_ssl_context()
        token = sa_token(api, f"chronoshard.io/{NAMESPACE}/{TOKENS}")
        node_token = sa_token(api, f"chronoshard.io/{NAMESPACE}/{NAME}")
        blocks = trace_block_ids(Path(args.data), max(args.requests, args.verifications))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=64)) as session, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=op_ctx, limit=64)) as op:
            for _ in range(300):  # the service has sampled the member: tokens are valid
                async with op.get(svc.url + "/v1/status") as r:
                    if (await r.json())["recommendedTier"] == "valid":
                        break
                await asyncio.sleep(0.1)
            best = await request_vs_get(args, session, svc.url, member.node_url, token, node_token, blocks)
            issued = []
            for i in range(min(args.verifications, 500)):
                async with session.post(svc.url + "/v1/tokens", headers={"Authorization": f"Bearer {token}"},
                                        json={"dataBlockId": f"{TABLE}/{blocks[i]}"}) as r:
                    issued.append((await r.json())["token"])
            async with session.get(svc.url + "/v1/keys", headers={"Authorization": f"Bearer {token}"}) as r:
                keys = tokenformat.public_keys_from_json((await r.json())["keys"])
            tokens = (issued * (args.verifications // len(issued) + 1))[:args.verifications]
            ver = verification(tokens, keys, tokenformat.issuer_for(f"{NAMESPACE}/orders-ms"),
                               member.root / "tokens.json")
            prop = await propagation(args, session, op, svc.url, token, nodes)
        print(f"\nThe token service, {args.concurrency} in flight, best p99 of {args.rounds} rounds of "
              f"{args.requests} (block ids from the CloudPhysics trace):")
        for label, r in best.items():
            print(f"  {label:44s} p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  {r['rps']:7.0f}/s")
        req = best["PredictiveTokenRequest (POST /v1/tokens)"]
        print(f"  PredictiveTokenRequest p99 {req['p99']:.2f} ms (goal <= {GOAL_REQUEST_P99_MS:g} ms)")
        print(f"\nOffline verification of {ver['n']:.0f} tokens: decode_verified p50 {ver['p50']:.1f} µs, "
              f"p99 {ver['p99']:.1f} µs (goal <= {GOAL_VERIFY_MS * 1000:g} µs); raw Ed25519 verify p50 "
              f"{ver['raw_p50']:.1f} µs, p99 {ver['raw_p99']:.1f} µs; the node's whole check (verify_header, "
              f"cache off) p50 {ver['node_p50']:.1f} µs, p99 {ver['node_p99']:.1f} µs")
        tiered, base = best["node GET 4 KiB with a tiered token"], best["baseline: node GET 4 KiB, same auth"]
        print(f"  a node GET with a tiered token p50 {tiered['p50']:.2f} ms vs {base['p50']:.2f} ms with the "
              f"ServiceAccount token (TokenReview/SubjectAccessReview cached): {tiered['p50'] / base['p50']:.2f}x")
        s, d, a = prop["service"], prop["direct"], prop["answered"]
        print(f"\nRevocation to {len(nodes)} nodes, {len(s)} revocations: on every node after p50 "
              f"{pct(s, 50) * 1e3:.1f} ms, p99 {pct(s, 99) * 1e3:.1f} ms, max {max(s) * 1e3:.1f} ms "
              f"(goal <= {GOAL_PROPAGATION_S * 1e3:g} ms); DELETE answered after p50 {pct(a, 50) * 1e3:.1f} ms; "
              f"baseline (the bench PUTs to every node itself) p50 {pct(d, 50) * 1e3:.1f} ms, "
              f"p99 {pct(d, 99) * 1e3:.1f} ms")
    finally:
        if svc is not None:
            svc.stop()
        if member is not None:
            member.stop()
        cp.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the shared data directory (its cache/cloudPhysicsIO trace)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight (1: the service time itself)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--nodes", type=int, default=8, help="revocation targets (nodes of the member)")
    p.add_argument("--revocations", type=int, default=30)
    p.add_argument("--verifications", type=int, default=5000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
