"""The operator's own ServiceAccount identity: which account it is, the token kept per audience and renewed at a
third of its life, security.json's operatorIdentities, and the bearer sent on HTTPS requests only (real aiohttp
servers). The real TokenRequest/TokenReview path is tested in tests/integration/operator/test_shardset_tls.py."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from chronoshard.operator import podtls, satoken
from chronoshard.operator.satoken import OperatorTokens, ServiceAccountRef
from kubernetes.client.exceptions import ApiException

from tests.support.servers import serve
from tests.support.tls_files import new_ca, shard_pair, write_tls_dir

REF = ServiceAccountRef("chronoshard-system", "cs-chronoshard")


def _jwt(claims: dict) -> str:
    def part(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_parse_ref_and_username():
    assert satoken.parse_ref("ops/op") == ServiceAccountRef("ops", "op")
    assert satoken.parse_ref("system:serviceaccount:ops:op") == ServiceAccountRef("ops", "op")
    for bad in ("", "ops", "ops/", "/op", "a/b/c", "system:serviceaccount:ops", "ops/o p"):
        assert satoken.parse_ref(bad) is None, bad
    assert REF.username == "system:serviceaccount:chronoshard-system:cs-chronoshard"


def test_own_service_account_from_the_setting_then_the_mounted_token(tmp_path: Path):
    assert satoken.own_service_account({satoken.ENV: "ops/op"}, tmp_path) == ServiceAccountRef("ops", "op")
    assert satoken.own_service_account({satoken.ENV: "nonsense"}, tmp_path) is None
    assert satoken.own_service_account({}, tmp_path) is None, "no setting, no mounted token: unknown"
    (tmp_path / "token").write_text(_jwt({"sub": "system:serviceaccount:chronoshard-system:cs-chronoshard"}) + "\n")
    assert satoken.own_service_account({}, tmp_path) == REF
    (tmp_path / "token").write_text("not-a-jwt")
    assert satoken.own_service_account({}, tmp_path) is None


def test_operator_identities_name_the_certificate_and_the_account():
    assert satoken.operator_identities(None) == ("chronoshard:operator",)
    assert satoken.operator_identities(REF) == ("chronoshard:operator", REF.username)


class Requests:
    """Records what the operator asked TokenRequest for, answers with numbered tokens (or refuses)."""

    def __init__(self, now: list[datetime]) -> None:
        self.now, self.calls, self.refuse = now, [], False

    def __call__(self, ref: ServiceAccountRef, aud: str, seconds: int) -> tuple[str, datetime]:
        self.calls.append((ref, aud, seconds))
        if self.refuse:
            raise ApiException(status=403, reason="Forbidden")
        return f"token-{len(self.calls)}", self.now[0] + timedelta(seconds=seconds)


def test_tokens_are_kept_per_audience_and_renewed_at_a_third(caplog):
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    req = Requests(now)
    tokens = OperatorTokens(REF, req, clock=lambda: now[0])
    assert tokens.token("chronoshard.io/shop/a") == "token-1"
    assert tokens.token("chronoshard.io/shop/a") == "token-1"
    assert tokens.token("chronoshard.io/shop/b") == "token-2", "one token per ShardSet audience"
    assert req.calls[0] == (REF, "chronoshard.io/shop/a", satoken.TOKEN_SECONDS)
    now[0] += timedelta(seconds=satoken.TOKEN_SECONDS * 2 // 3 - 5)
    assert tokens.token("chronoshard.io/shop/a") == "token-1"
    now[0] += timedelta(seconds=10)
    assert tokens.token("chronoshard.io/shop/a") == "token-3", "renewed with a third of its life left"
    # Refused: the token still valid serves, one warning (no token in it), None once it has expired.
    req.refuse = True
    now[0] += timedelta(seconds=satoken.TOKEN_SECONDS * 2 // 3 + 5)
    assert tokens.token("chronoshard.io/shop/a") == "token-3"
    assert tokens.token("chronoshard.io/shop/a") == "token-3"
    now[0] += timedelta(seconds=satoken.TOKEN_SECONDS)
    assert tokens.token("chronoshard.io/shop/a") is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "chronoshard.operator.satoken"]
    assert len(warnings) == 1 and "403" in warnings[0] and "token-" not in warnings[0]
    assert "token-3" not in repr(tokens._tokens)
    assert OperatorTokens(None, req).token("chronoshard.io/shop/a") is None, "no identity, no token"


@pytest.fixture()
def pod_tls(tmp_path: Path):
    ca = new_ca()
    d = tmp_path / "tls"
    write_tls_dir(d, shard_pair(ca, shards=1), ca)
    return ca, d


async def test_bearer_goes_on_https_requests_only(pod_tls):
    from chronoshard.shardnode.serving import tls

    ca, d = pod_tls
    seen: list[str | None] = []

    async def whoami(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({})

    def app() -> web.Application:
        a = web.Application()
        a.router.add_get("/v1/keys", whoami)
        return a

    secure_app = app()
    async with serve(secure_app, tls.install(secure_app, d)) as https_url, serve(app()) as http_url:
        ctx = podtls.client_context(ca.cert, None)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                         middlewares=(podtls.bearer_middleware("op-token"),)) as s:
            async with s.get(f"{https_url}/v1/keys", server_hostname="localhost") as r:
                assert r.status == 200
            async with s.get(f"{http_url}/v1/keys") as r:
                assert r.status == 200
    assert seen == ["Bearer op-token", None], "a pod still on plain HTTP never sees the token"
