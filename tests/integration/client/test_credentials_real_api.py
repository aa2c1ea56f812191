"""The CLI's and the Python client's credentials on the real kube-apiserver: ``--service-account`` asks the real
TokenRequest API (the token's audience checked with a real TokenReview), and a shard served as a pod serves it
(HTTPS, security.json, TokenReview + SubjectAccessReview) lets a bound ServiceAccount in, refuses an unbound one
403 and no credential 401, tells a kubeconfig user to use --service-account, and never prints a token."""

from __future__ import annotations

import asyncio
import io
import sys

import pytest
from chronoshard.shardnode.client import AsyncClient, ConfigMapMap, Forbidden, Unauthenticated
from chronoshard.shardnode.client.cli import EXIT_REFUSED, main
from chronoshard.shardnode.client.cli_tokens import ServiceAccountToken, TokenRequestFailed
from chronoshard.shardnode.client.credentials import ENV_TOKEN, audience
from chronoshard.shardnode.keyspace.partitioning import initial_map
from kubernetes import client

from .secure_shard import SecureShard

pytestmark = pytest.mark.integration

NAME, TABLE = "orders", "accounts"


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch):
    monkeypatch.delenv(ENV_TOKEN, raising=False)


def make_access(k8s_client, ns: str) -> None:
    """ServiceAccounts reader (bound to a Role on shardsets/data TABLE) and stranger (bound to nothing)."""
    core, rbac = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    for sa in ("reader", "stranger"):
        core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=sa)))
    rbac.create_namespaced_role(ns, {
        "metadata": {"name": "accounts-rw"},
        "rules": [{"apiGroups": ["chronoshard.io"], "resources": ["shardsets/data"], "resourceNames": [TABLE],
                   "verbs": ["get", "list", "update", "delete"]}]})
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "accounts-rw"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "accounts-rw"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]})


def review(k8s_client, token: str, audiences: list[str] | None) -> client.V1TokenReviewStatus:
    body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=audiences))
    return client.AuthenticationV1Api(k8s_client).create_token_review(body).status


async def test_service_account_token_has_the_shardsets_audience(k8s_client, namespace):
    make_access(k8s_client, namespace)
    aud = audience(namespace, NAME)
    source = ServiceAccountToken(k8s_client, namespace, "reader", aud)
    token = await source()
    assert await source() == token and source.requests == 1  # cached in memory
    status = review(k8s_client, token, [aud])
    assert status.authenticated and status.user.username == f"system:serviceaccount:{namespace}:reader"
    assert aud in status.audiences
    assert not review(k8s_client, token, None).authenticated  # not a token for the API server itself
    assert not review(k8s_client, token, [audience(namespace, "payments")]).authenticated
    with pytest.raises(TokenRequestFailed, match="not found"):
        await ServiceAccountToken(k8s_client, namespace, "nobody", aud)()
    assert token not in repr(source)


@pytest.fixture()
def shard(tmp_path, control_plane, k8s_client, namespace):
    make_access(k8s_client, namespace)
    # Node and cache as in a pod: the cache checks the caller, and presents the pod certificate to the node.
    s = SecureShard(tmp_path / "shard", namespace, NAME, control_plane.kubeconfig).start()
    core = client.CoreV1Api(k8s_client)
    for cm, data in ((f"{NAME}-partitions", {"map.json": initial_map(1).to_json()}),
                     (f"{NAME}-ca", {"ca.crt": s.ca_pem})):
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=cm),
                                                                        data=data))
    yield s
    s.stop()


def cli(*argv: str) -> tuple[int, str, str]:
    out, err, bout = io.StringIO(), io.StringIO(), io.BytesIO()
    saved, sys.stderr = sys.stderr, err
    try:
        code = main(list(argv), out=out, stdin=io.BytesIO(), bout=bout)
    finally:
        sys.stderr = saved
    return code, out.getvalue() + bout.getvalue().decode(errors="replace"), err.getvalue()


def test_cli_against_a_secured_shard(shard, control_plane, namespace):
    # --shardset: the map and the CA from the ConfigMaps; the one pod reached through a template (no kubelet).
    base = ["--kubeconfig", str(control_plane.kubeconfig), "-n", namespace, "--shardset", NAME,
            "--pod-url-template", f"127.0.0.1:{shard.port}", "--token-file", "/nonexistent/token"]
    code, out, err = cli(*base, "--service-account", "reader", "put", TABLE, "alice", "--value", "balance 10")
    assert code == 0, err
    code, out, err = cli(*base, "--service-account", "reader", "get", TABLE, "alice")
    assert (code, out) == (0, "balance 10"), err

    code, _, err = cli(*base, "--service-account", "stranger", "get", TABLE, "alice")
    assert code == EXIT_REFUSED and "HTTP 403 forbidden" in err, err
    code, _, err = cli(*base, "--service-account", "reader", "get", "other-table", "alice")
    assert code == EXIT_REFUSED and "403" in err

    # No flag: the kubeconfig's own token goes out, the shard refuses it (not its audience), the CLI says why.
    code, _, err = cli(*base, "get", TABLE, "alice")
    assert code == EXIT_REFUSED and "HTTP 401" in err and "--service-account" in err
    assert "acceptKubeconfigTokens" in err and control_plane.token not in err

    # By URL with no credential anywhere: the request goes out, the 401 names what is missing.
    code, _, err = cli("--url", shard.url, "--ca", str(shard.ca_file), "--token-file", "/nonexistent/token",
                       "get", TABLE, "alice")
    assert code == EXIT_REFUSED and "No credential was sent" in err and "--service-account" in err, err
    assert control_plane.token not in shard.logs()


async def test_python_client_with_a_rotating_token(shard, k8s_client, namespace):
    tokens = ServiceAccountToken(k8s_client, namespace, "reader", audience(namespace, NAME))
    client_ = AsyncClient(ConfigMapMap(NAME, namespace, api_client=k8s_client), [f"127.0.0.1:{shard.port}"],
                          ca=shard.ca_file, token_provider=tokens, token_file="/nonexistent/token")
    async with client_ as c:
        await c.put(TABLE, "bob", b"\x00" * 4096)
        assert await asyncio.gather(*(c.get(TABLE, "bob") for _ in range(20))) == [b"\x00" * 4096] * 20
        assert tokens.requests == 1 and c.transport.fallbacks == 0
    stranger = ServiceAccountToken(k8s_client, namespace, "stranger", audience(namespace, NAME))
    async with AsyncClient(initial_map(1), [shard.url], ca=shard.ca_file, token_provider=stranger) as c:
        with pytest.raises(Forbidden):
            await c.get(TABLE, "bob")
    async with AsyncClient(initial_map(1), [shard.url], ca=shard.ca_file,
                           token_file="/nonexistent/token") as c:
        with pytest.raises(Unauthenticated, match="No credential was sent"):
            await c.get(TABLE, "bob")
    token = await tokens()
    assert token not in shard.logs()
