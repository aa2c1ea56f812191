"""Tiered tokens end to end on the local cluster (#18): a MirrorSet of two ShardSets comes up with its token service
(operator/tokens/), a client gets a valid token from it and writes; the source's node of shard 0 is frozen
(SIGSTOP) so the source looks failing; the client's token is replaced by a temporary one; a write with it is
queued (202) on the healthy copy and lands exactly once after the failover; once the mirror is promoted the
client ends on a valid token for it, and the old tokens are refused where they no longer apply.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.e2e.test_mirror import DST, MIRRORSET, MS, NS, SRC, TABLE, Env, mirror_env
from tests.support.waiting import wait_for

# The cluster with two ShardSets and a MirrorSet takes minutes to come up on a loaded machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SCOPE = {"table": TABLE, "verbs": ["get", "list", "update", "delete"]}
TOKENS_MIRRORSET = {**MIRRORSET, "spec": {**MIRRORSET["spec"], "tokens": {"temporaryTTL": "2m"}}}


def _ctx(pem: str) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=pem)


def request(method: str, url: str, token: str, ctx: ssl.SSLContext, server_name: str, body: Any = None,
            raw: bytes | None = None) -> tuple[int, dict[str, Any] | bytes]:
    """One HTTPS call by IP with ``server_name`` checked, the bearer ``token``; (status, JSON or bytes)."""
    host = url.split("/")[2]
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Host": host, "Content-Type": "application/json"})
    handler = urllib.request.HTTPSHandler(context=_sni(ctx, server_name))
    try:
        with urllib.request.build_opener(handler).open(req, timeout=10) as resp:
            payload = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read(), exc.code
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


def _sni(ctx: ssl.SSLContext, server_name: str) -> ssl.SSLContext:
    """Verify the peer against ``server_name`` although we dial its IP."""
    wrap = ctx.wrap_socket

    def wrap_socket(sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_hostname"] = server_name
        return wrap(sock, *args, **kwargs)

    ctx.wrap_socket = wrap_socket  # type: ignore[method-assign]
    return ctx


class Tokens:
    """The MirrorSet's token service, reached at its pod IP (as the CLI does)."""

    def __init__(self, env: Env, sa_token: str) -> None:
        self.env, self.sa_token = env, sa_token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        pods = self.env.cluster.pods(NS, f"app.kubernetes.io/instance={MS}-tokens")
        ip = pods[0]["status"]["podIP"]
        ca = self.env.cluster.get("configmap", f"{MS}-tokens-ca", NS)["data"]["ca.crt"]
        return request(method, f"https://{ip}:7405{path}", self.sa_token, _ctx(ca), f"{MS}-tokens.{NS}.svc", body)


def member_ca(env: Env) -> str:
    return "".join(env.cluster.get("configmap", f"{n}-ca", NS)["data"]["ca.crt"] for n in (SRC, DST))


def shard0_key(env: Env, prefix: str) -> str:
    """A key shard 0 owns (calls go to its cache directly: nothing depends on a cache forwarding)."""
    from chronoshard.shardnode.keyspace.partitioning import PartitionMap

    pmap = PartitionMap.from_json(env.cluster.get("configmap", f"{SRC}-partitions", NS)["data"]["map.json"])
    return next(k for k in (f"{prefix}-{i}" for i in range(1000)) if pmap.shard_of(TABLE, k) == 0)


def cache_put(env: Env, shardset: str, key: str, value: bytes, token: str) -> tuple[int, Any]:
    """PUT through shard 0's cache of ``shardset`` (keys from ``shard0_key``)."""
    pod = env.pod(shardset, 0)
    return request("PUT", f"https://{pod['status']['podIP']}:7401/v1/tables/{TABLE}/blocks/{key}", token,
                   _ctx(member_ca(env)), f"{shardset}-0.{shardset}-headless.{NS}.svc", raw=value)


def cache_get(env: Env, shardset: str, key: str, token: str) -> tuple[int, Any]:
    pod = env.pod(shardset, 0)
    return request("GET", f"https://{pod['status']['podIP']}:7401/v1/tables/{TABLE}/blocks/{key}", token,
                   _ctx(member_ca(env)), f"{shardset}-0.{shardset}-headless.{NS}.svc")


def cache_get_path(env: Env, shardset: str, path: str, token: str) -> tuple[int, Any]:
    pod = env.pod(shardset, 0)
    return request("GET", f"https://{pod['status']['podIP']}:7401{path}", token, _ctx(member_ca(env)),
                   f"{shardset}-0.{shardset}-headless.{NS}.svc")


def sa_token_for_service(env: Env) -> str:
    from chronoshard.shardnode.client.credentials import audience
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(env.cluster.kubeconfig))
    body = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
        audiences=[audience(NS, f"{MS}-tokens")], expiration_seconds=3600))
    return str(client.CoreV1Api(api).create_namespaced_service_account_token("e2e-data", NS, body).status.token)


def test_tiered_tokens_through_a_failover():
    with mirror_env(TOKENS_MIRRORSET) as env:
        # The token service comes up; every member's config carries its public key.
        wait_for(lambda: ((env.status().get("tokenService") or {}).get("ready")), timeout=180, interval=1,
                 what="the token service ready")
        kid = env.status()["tokenService"]["keyIds"][0]
        for name in (SRC, DST):
            doc = json.loads(env.cluster.get("configmap", f"{name}-config", NS)["data"]["tokens.json"])
            assert [k["kid"] for k in doc["keys"]] == [kid]
        svc = Tokens(env, sa_token_for_service(env))
        keys = {k: shard0_key(env, k) for k in ("k-valid", "k-queued", "k-after", "k-old")}

        # A valid token for the active source: writes are applied there, refused on the mirror.
        status, issued = wait_for(lambda: (lambda r: r if r[0] == 201 and r[1]["tier"] == "valid" else None)(
            svc.call("POST", "/v1/tokens", SCOPE)), timeout=60, interval=1, what="a valid token")
        assert issued["store"] == f"{NS}/{SRC}"
        valid = issued["token"]
        last: list[Any] = []

        def put_ok() -> Any:
            last[:] = [cache_put(env, SRC, keys["k-valid"], b"v1", valid)]
            return last[0] if last[0][0] in (200, 201) else None

        try:
            wait_for(put_ok, timeout=30, interval=1, what="a write with it")
        except Exception as exc:
            raise AssertionError(f"write with the valid token: {last}") from exc
        assert cache_get(env, SRC, keys["k-valid"], valid) == (200, b"v1")
        code, body = cache_put(env, DST, keys["k-valid"], b"nope", valid)
        assert code == 403 and body.get("reason", body.get("error")) in ("wrong_store", "forbidden"), body

        # The source's node of shard 0 freezes: the service hands the client a temporary token.
        node = env.node_pid(SRC, 0)
        os.kill(node, signal.SIGSTOP)
        try:
            def replacement() -> Any:
                code, st = svc.call("GET", f"/v1/tokens/{issued['tokenId']}")
                rep = (st or {}).get("replacement") if code == 200 else None
                if rep and rep["tier"] in ("temporary", "provisional"):
                    return rep
                code, fresh = svc.call("POST", "/v1/tokens", SCOPE)
                return fresh if code == 201 and fresh["tier"] in ("temporary", "provisional") else None

            held = wait_for(replacement, timeout=90, interval=0.5, what="a temporary or provisional token")
            queued_ids: list[str] = []
            if held["tier"] == "temporary":
                # Writes with it are queued on a healthy copy (the mirror), not applied there: three to one key.
                for value in (b"q1", b"q2", b"q3"):
                    code, queued = cache_put(env, DST, keys["k-queued"], value, held["token"])
                    assert code == 202 and queued.get("queued"), (code, queued)
                    queued_ids.append(queued["queued"])
            # The operator fails over: the mirror is promoted.
            wait_for(lambda: env.status().get("activeShardSet") == f"{NS}/{DST}" and not env.status().get("operation"),
                     timeout=120, interval=1, what="the failover to the mirror")
            # The client ends on a valid token for the promoted member.
            status, final = wait_for(lambda: (lambda r: r if r[0] == 201 and r[1]["tier"] == "valid" else None)(
                svc.call("POST", "/v1/tokens", SCOPE)), timeout=120, interval=1,
                what="a valid token for the promoted member")
            assert final["store"] == f"{NS}/{DST}"
            if held["tier"] == "temporary":
                # The queued writes landed on the new primary exactly once each, in the order they were queued.
                def applied() -> Any:
                    rows = [cache_get_path(env, DST, f"/v1/queue/{q}", final["token"]) for q in queued_ids]
                    return rows if all(c == 200 and r.get("state") == "applied" for c, r in rows) else None

                rows = wait_for(applied, timeout=90, interval=1, what="the queued writes applied")
                lsns = [r[1]["lsn"] for r in rows]
                assert lsns == sorted(lsns) and len(set(lsns)) == 3, rows
                assert cache_get(env, DST, keys["k-queued"], final["token"]) == (200, b"q3")
            code, _ = cache_put(env, DST, keys["k-after"], b"a1", final["token"])
            assert code in (200, 201)
            # The old valid token named the old store: refused on the new primary.
            code, body = cache_put(env, DST, keys["k-old"], b"x", valid)
            assert code == 403, body
            # The MirrorSet's status counts the registry's tokens per tier.
            issued_counts = wait_for(lambda: (lambda t: t if t.get("valid", 0) >= 2 else None)(
                env.status().get("tokensIssued") or {}), timeout=60, interval=1, what="status.tokensIssued")
            assert issued_counts["temporary"] + issued_counts["provisional"] >= 1, issued_counts
        finally:
            os.kill(node, signal.SIGCONT)

