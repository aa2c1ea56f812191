"""e2e: a PrefetchPolicy on the local cluster turns the shard's predictor on and reports what it measured.

The shard pod really runs chronoshard-node, -cache and -predictor; the policy's status is aggregated by the
operator from the predictor's ``/v1/status`` and the cache's ``/metrics``.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.waiting import wait_for

from .conftest import LocalCluster, http_get, is_ready, pod_tls

pytestmark = pytest.mark.e2e

GROUP_VERSION = "chronoshard.io/v1alpha1"
BLOCK = b"x" * 512  # one predictor block step (blockBytes 512): key N+1 follows a read of key N
WARM = 2400  # the predictor trains once its log holds 2000 accesses (minTrainAccesses)
SCAN = 40


# Pod IP -> the client context the test reaches that pod with (the pods' own identity: every endpoint).
TLS: dict[str, ssl.SSLContext] = {}


def key(i: int) -> str:
    return f"b{i:06d}"


# One kept-alive connection to the node per writer thread: a TLS handshake (client certificate) per write made
# the 2,440 warm-up writes the longest part of the test.
_CONNECTIONS = threading.local()


def put(ip: str, table: str, i: int) -> int:
    # Straight to the node, so the cache holds nothing it did not read or prefetch.
    path = f"/v1/tables/{table}/blocks/{key(i)}"
    headers = {"Content-Type": "application/octet-stream"}
    for attempt in (1, 2):
        conn = getattr(_CONNECTIONS, ip, None)
        if conn is None:
            conn = http.client.HTTPSConnection(ip, 7400, timeout=10, context=TLS[ip])
            setattr(_CONNECTIONS, ip, conn)
        try:
            conn.request("PUT", path, body=BLOCK, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            conn.close()  # the server closed an idle kept-alive connection: once more on a new one
            setattr(_CONNECTIONS, ip, None)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def batch_get(ip: str, table: str, keys: list[str]) -> int:
    req = urllib.request.Request(f"https://{ip}:7401/v1/tables/{table}/blocks:batchGet",
                                 data=json.dumps({"keys": keys}).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-Client-Id": "scanner"})
    with urllib.request.urlopen(req, timeout=10, context=TLS[ip]) as resp:
        return resp.status


def predictor_status(ip: str) -> dict:
    code, body = http_get(f"https://{ip}:7402/v1/status", context=TLS[ip])
    return json.loads(body) if code == 200 else {}


def test_policy_turns_on_prefetching_and_reports_shard_figures(local_cluster: LocalCluster, e2e_namespace: str):
    ns, table = e2e_namespace, "t"
    local_cluster.apply(
        {"apiVersion": GROUP_VERSION, "kind": "ShardSet", "metadata": {"name": "pf", "namespace": ns},
         "spec": {"shards": 1, "tables": [{"name": table}], "cache": {"size": "16Mi"}}},
        {"apiVersion": GROUP_VERSION, "kind": "PrefetchPolicy", "metadata": {"name": "scan", "namespace": ns},
         "spec": {"shardSetRef": {"name": "pf"}, "model": "successor", "horizon": "20s", "scoreThreshold": 0.3,
                  "feedback": {"window": "1m", "targetPrecision": 0.5}}},
    )
    pod = wait_for(
        lambda: (p := local_cluster.get("pod", "pf-0", ns)) and is_ready(p) and p,
        timeout=120, interval=0.5, what="shard 0 Ready",
    )
    ip = pod["status"]["podIP"]
    TLS[ip] = pod_tls(local_cluster, ns, "pf")
    # The operator's config reached the running predictor (hot reload, no restart).
    wait_for(
        lambda: predictor_status(ip).get("enabled") is True,
        timeout=60, interval=0.5, what="predictor enabled by the policy",
    )

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: put(ip, table, i), range(WARM + SCAN)))
    assert set(codes) == {200}

    # Warm-up: one client scans the first WARM blocks in order; the predictor learns that reads continue runs.
    for start in range(0, WARM, 100):
        assert batch_get(ip, table, [key(i) for i in range(start, start + 100)]) == 200
    wait_for(
        lambda: predictor_status(ip).get("model") == "stats",
        timeout=60, interval=0.5, what="the predictor's first model",
    )

    # The scan goes on at a reading pace, so the predictor's hints can arrive before the reads.
    for i in range(WARM, WARM + SCAN):
        code, _ = http_get(f"https://{ip}:7401/v1/tables/{table}/blocks/{key(i)}", context=TLS[ip])
        assert code == 200
        time.sleep(0.25)  # a few reads per predictor poll (1 s), so hints can beat the reads
    direct = predictor_status(ip)
    assert direct["hintsSent"] > 0, direct

    def reported() -> dict | None:
        st = (local_cluster.get("prefetchpolicy", "scan", ns) or {}).get("status") or {}
        return st if st.get("phase") == "Active" and st.get("shardsReporting") == 1 and st.get("hintsSent", 0) > 0 \
            and "precision" in st and "hitRatio" in st else None

    st = wait_for(reported, timeout=45, interval=0.5, what="the policy's status to carry the shard's figures")
    assert st["reporting"] == "1/1" and st["shardsExpected"] == 1 and st["activeModel"] == "stats"
    assert 0 < st["hitRatio"] <= 1 and 0 <= st["precision"] <= 1
    assert st["hintsSent"] <= predictor_status(ip)["hintsSent"]
    assert st["shards"][0]["shard"] == 0 and st["shards"][0]["reporting"] is True
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "ShardsReporting"
    print(f"policy status: hitRatio={st['hitRatio']} precision={st['precision']} recall={st.get('recall')} "
          f"hints sent/used/wasted={st['hintsSent']}/{st['hintsUsed']}/{st['hintsWasted']}")


def cache_status(ip: str) -> dict:
    code, body = http_get(f"https://{ip}:7401/v1/cache", context=TLS[ip])
    return json.loads(body) if code == 200 else {}


def test_key_prefetch_settings_reach_the_cache_and_predictor_and_key_cache_figures_come_back(
        local_cluster: LocalCluster, e2e_namespace: str):
    ns, tables = e2e_namespace, ["ka", "kb", "kc"]
    local_cluster.apply(
        {"apiVersion": GROUP_VERSION, "kind": "ShardSet", "metadata": {"name": "kp", "namespace": ns},
         "spec": {"shards": 1, "tables": [{"name": t} for t in tables], "cache": {"size": "16Mi"}}},
        {"apiVersion": GROUP_VERSION, "kind": "PrefetchPolicy", "metadata": {"name": "keys", "namespace": ns},
         "spec": {"shardSetRef": {"name": "kp"}, "keyPrefetch": {"enabled": True, "keyCacheSize": 7}}},
    )
    pod = wait_for(
        lambda: (p := local_cluster.get("pod", "kp-0", ns)) and is_ready(p) and p,
        timeout=120, interval=0.5, what="shard 0 Ready",
    )
    ip = pod["status"]["podIP"]
    TLS[ip] = pod_tls(local_cluster, ns, "kp")
    # keyCacheSize went through cache.json into the running cache (live reload); the keyring is wrapped
    # (the ShardSet's default keyEncryption), so the key cache is in use.
    key_cache = wait_for(
        lambda: (kc := cache_status(ip).get("keyCache")) and kc["capacity"] == 7 and kc,
        timeout=60, interval=0.5, what="cache key cache sized by the policy",
    )
    assert key_cache["wrapped"] is True
    wait_for(
        lambda: (predictor_status(ip).get("keyHints") or {}).get("enabled") is True,
        timeout=60, interval=0.5, what="predictor key hints enabled by the policy",
    )

    # Every block the cache decrypts looks its table's key up in the key cache (a block already in the cache
    # needs no key): the first block of each table misses, the next ones hit.
    for t in tables:
        for i in range(3):
            assert put(ip, t, i) == 200
            assert http_get(f"https://{ip}:7401/v1/tables/{t}/blocks/{key(i)}", context=TLS[ip])[0] == 200
    direct = cache_status(ip)["keyCache"]
    assert direct["misses"] >= 1 and direct["hits"] >= 1, direct

    def reported() -> dict | None:
        st = (local_cluster.get("prefetchpolicy", "keys", ns) or {}).get("status") or {}
        kc = st.get("keyCache") or {}
        return st if st.get("phase") == "Active" and "hitRatio" in kc else None

    st = wait_for(reported, timeout=45, interval=0.5, what="the policy's status to carry the key cache figures")
    assert 0 < st["keyCache"]["hitRatio"] < 1
    assert st["keyCache"]["prefetched"] >= 0 and st["keyCache"]["prefetchUsed"] <= st["keyCache"]["prefetched"]
    print(f"policy keyCache: {st['keyCache']}; cache keyCache: {cache_status(ip)['keyCache']}")
