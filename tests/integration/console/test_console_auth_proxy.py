"""The console's auth-proxy sign-in and its sign-in failure limit, as a real process over HTTPS against the real
kube-apiserver (envtest).

The proxy is a client certificate of a proxy CA (CN ``front-proxy``) sending ``X-Remote-User``/``X-Remote-Group``.
Users are plain user names with RBAC: ``alice`` may approve through her group ``recoverers``, ``bob`` may only
read. The console (ServiceAccount ``console``) has no right on Reversions at all, only ``impersonate`` on users
and groups: an approval that goes through was decided by the API server with alice's RBAC (impersonation), and
bob's is refused by it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from chronoshard.devcluster.controlplane import kubeconfig_document
from chronoshard.operator import certs
from kubernetes import client

from tests.integration.console.test_console_server import DIGEST, NAME, _allowed, _rbac, _shardset_objects
from tests.integration.shardnode.procs import free_port
from tests.support import rbac, tls_files
from tests.support.shadowstub import GROUP, VERSION
from tests.support.waiting import wait_for, wait_for_async

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

FAILURES = 3  # the console's --sign-in-failures-per-minute here


@dataclass
class World:
    namespace: str
    url: str
    root: Path
    ca_file: Path  # the console's serving CA
    certs: dict[str, tuple[Path, Path]]  # name -> (cert, key) of client certificates
    tokens: dict[str, str]
    custom: client.CustomObjectsApi
    secrets: list[str] = field(default_factory=list)  # every credential text used, for the log check


def _write_pair(root: Path, name: str, pair: certs.KeyPair) -> tuple[Path, Path]:
    cert, key = root / f"{name}.crt", root / f"{name}.key"
    cert.write_bytes(pair.cert)
    key.write_bytes(pair.key)
    key.chmod(0o600)
    return cert, key


def _bind_user_role(rb: client.RbacAuthorizationV1Api, ns: str, role: str, kind: str, name: str) -> None:
    rb.create_namespaced_role_binding(ns, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name=f"{role}-{kind.lower()}-{name}"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=role),
        subjects=[client.RbacV1Subject(kind=kind, name=name, api_group="rbac.authorization.k8s.io")]))


def _impersonation_rbac(rb: client.RbacAuthorizationV1Api, ns: str) -> tuple[str, str]:
    """The chart's impersonate ClusterRole for the console; its name and the binding's."""
    role = f"console-impersonate-{ns}"
    rb.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=role), rules=[
        client.V1PolicyRule(api_groups=[""], resources=["users", "groups"], verbs=["impersonate"])]))
    return role, rbac.bind_cluster_role(rb, role, ns, "console")


def _users_rbac(core: client.CoreV1Api, rb: client.RbacAuthorizationV1Api, ns: str) -> None:
    # _rbac made the Roles reader-role and approver-role (for ServiceAccounts); bind them to people here.
    _bind_user_role(rb, ns, "approver-role", "Group", "recoverers")
    _bind_user_role(rb, ns, "reader-role", "User", "alice")
    _bind_user_role(rb, ns, "reader-role", "User", "bob")
    authz = client.AuthorizationV1Api(core.api_client)

    def effective() -> bool:
        review = authz.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user="alice", groups=["recoverers"], resource_attributes=client.V1ResourceAttributes(
                group="chronoshard.io", resource="reversions", verb="patch", namespace=ns, name="undo"))))
        return bool(review.status.allowed) and _allowed(
            authz, f"system:serviceaccount:{ns}:console", verb="impersonate", resource="users", name="alice") \
            and _allowed(authz, "bob", group="chronoshard.io", resource="reversions", verb="get", namespace=ns)

    wait_for(effective, what="the RBAC bindings to take effect")


async def _ready(url: str, ca_file: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        async def ready() -> bool:
            try:
                async with s.get(url + "/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for_async(ready, what="the console to serve HTTPS")


@pytest.fixture(scope="module")
def world(control_plane, k8s_client, tmp_path_factory) -> Iterator[World]:
    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    root = tmp_path_factory.mktemp("console-proxy")
    delegator = _rbac(core, rb, ns)
    role, binding = _impersonation_rbac(rb, ns)
    _users_rbac(core, rb, ns)
    ca = certs.new_ca(ns, NAME, tls_files.now())
    tls_dir = tls_files.write_tls_dir(root / "tls", certs.issue_shard_certificate(
        ca, ns, NAME, 1, ["127.0.0.1"], tls_files.now()), ca)
    _shardset_objects(k8s_client, core, ns, ca)
    proxy_ca, stranger_ca = certs.new_ca(ns, "proxy", tls_files.now()), certs.new_ca(ns, "elsewhere", tls_files.now())
    (root / "proxy-ca.crt").write_bytes(proxy_ca.cert)
    hour = timedelta(hours=1)
    pairs = {"proxy": certs.issue(proxy_ca, "front-proxy", tls_files.now(), hour, server=False),
             "proxy-ca-other-cn": certs.issue(proxy_ca, "intruder", tls_files.now(), hour, server=False),
             # Trusted by the console's TLS handshake (its own ca.crt) but not the proxy CA's.
             "console-ca": certs.issue(ca, "front-proxy", tls_files.now(), hour, server=False),
             "unknown-ca": certs.issue(stranger_ca, "front-proxy", tls_files.now(), hour, server=False)}
    client_certs = {name: _write_pair(root, name, pair) for name, pair in pairs.items()}
    kubeconfig = root / "console-kubeconfig"
    console_token = rbac.token(core, ns, "console", None, 3600)
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_document(
        control_plane.server, console_token, control_plane.ca_pem, user="console")))
    port = free_port()
    log = open(root / "console.log", "ab")  # the process writes it until the end
    proc = subprocess.Popen([
        sys.executable, "-m", "chronoshard.shardnode.console.main", "--host", "127.0.0.1", "--port", str(port),
        "--kubeconfig", str(kubeconfig), "--service-account", f"{ns}/console", "--tls-dir", str(tls_dir),
        "--auth-proxy-ca", str(root / "proxy-ca.crt"), "--auth-proxy-allowed-names", "front-proxy",
        "--sign-in-failures-per-minute", str(FAILURES), "--log-level", "DEBUG"], stdout=log, stderr=log)
    url = f"https://127.0.0.1:{port}"
    try:
        asyncio.run(_ready(url, root / "tls" / "ca.crt"))
        tokens = {u: rbac.token(core, ns, u, None) for u in ("reader", "stranger")}
        yield World(ns, url, root, root / "tls" / "ca.crt", client_certs, tokens, client.CustomObjectsApi(k8s_client),
                    [*tokens.values(), console_token, *(p.key.decode() for p in pairs.values())])
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        for b in (delegator, binding):
            rb.delete_cluster_role_binding(b)
        rb.delete_cluster_role(role)
        core.delete_namespace(ns)


class Client:
    """A browser behind the proxy (``cert``: the client certificate it connects with, ``source``: its address)."""

    def __init__(self, world: World, cert: str | None, source: str = "127.0.0.1") -> None:
        ctx = ssl.create_default_context(cafile=str(world.ca_file))
        if cert is not None:
            ctx.load_cert_chain(*world.certs[cert])
        self.world, self.csrf = world, None
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, local_addr=(source, 0)),
                                             cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def call(self, method: str, path: str, doc: Any = None, *, user: str | None = None,
                   groups: tuple[str, ...] = ()) -> tuple[int, Any, dict[str, str]]:
        headers = [("X-Remote-User", user)] if user is not None else []
        headers += [("X-Remote-Group", g) for g in groups]
        if self.csrf is not None:
            headers.append(("X-CSRF-Token", self.csrf))
        async with self.session.request(method, self.world.url + path, json=doc, headers=headers) as r:
            body = await r.read()
            try:
                return r.status, json.loads(body), dict(r.headers)
            except ValueError:
                return r.status, body, dict(r.headers)

    async def sign_in(self, token: str | None = None, **who: Any) -> tuple[int, Any]:
        status, doc, _ = await self.call("POST", "/api/v1/session", {"token": token} if token else {}, **who)
        if status == 200:
            self.csrf = doc["csrfToken"]
            self.world.secrets.extend([self.csrf, *(c.value for c in self.session.cookie_jar)])
        return status, doc


@contextlib.asynccontextmanager
async def browser(world: World, cert: str | None, source: str = "127.0.0.1") -> AsyncIterator[Client]:
    c = Client(world, cert, source)
    try:
        yield c
    finally:
        await c.session.close()


def approved(world: World) -> Any:
    obj = world.custom.get_namespaced_custom_object(GROUP, VERSION, world.namespace, "reversions", "undo")
    return obj["spec"].get("approve")


async def test_a_proxied_user_reads_and_approves_by_impersonation_and_one_without_the_right_gets_403(world):
    ns, alice, bob = world.namespace, {"user": "alice", "groups": ("recoverers",)}, {"user": "bob"}
    path = f"/api/v1/namespaces/{ns}/reversions/undo"
    async with browser(world, "proxy") as b:
        status, doc = await b.sign_in(**bob)
        assert (status, doc["user"], doc["groups"]) == (200, "bob", []), doc
        status, doc, _ = await b.call("GET", path, **bob)
        assert (status, doc["canApprove"]) == (200, False), doc
        status, doc, _ = await b.call("POST", path + "/approve", {"digest": DIGEST}, **bob)
        assert (status, doc["error"]) == (403, "forbidden"), doc  # the API server's answer for bob
        assert approved(world) is None
    async with browser(world, "proxy") as a:
        # Before signing in, the 401 tells the page the proxy vouches for this request (it then POSTs {}).
        status, doc, _ = await a.call("GET", "/api/v1/session", **alice)
        assert (status, doc.get("authProxy")) == (401, True), doc
        status, doc = await a.sign_in(**alice)
        assert (status, doc["user"], doc["groups"]) == (200, "alice", ["recoverers"]), doc
        status, doc, _ = await a.call("GET", f"/api/v1/shardsets?namespace={ns}", **alice)
        assert status == 200 and [i["name"] for i in doc["items"]] == [NAME], doc
        status, doc, _ = await a.call("GET", path, **alice)
        assert (status, doc["canApprove"]) == (200, True), doc
        # The session holds only while the proxy names the same user (and groups) with it.
        assert (await a.call("GET", "/api/v1/session", user="bob"))[0] == 401
        assert (await a.call("GET", "/api/v1/session", user="alice"))[0] == 401  # without her group
        assert (await a.call("GET", "/api/v1/session"))[0] == 401
        cookie = {c.key: c.value for c in a.session.cookie_jar}
        async with browser(world, None) as thief:  # the cookie and headers, without the proxy's certificate
            thief.session.cookie_jar.update_cookies(cookie)
            thief.csrf = a.csrf
            status, doc, _ = await thief.call("POST", path + "/approve", {"digest": DIGEST}, **alice)
            assert (status, doc["error"]) == (401, "unauthenticated"), doc
        assert approved(world) is None
        status, doc, _ = await a.call("POST", path + "/approve", {"digest": DIGEST}, **alice)
        assert status == 200 and doc["spec"]["approve"] == DIGEST, doc
        assert approved(world) == DIGEST


@pytest.mark.parametrize("cert", [None, "console-ca", "proxy-ca-other-cn"])
async def test_identity_headers_without_the_proxys_certificate_are_no_identity(world, cert):
    # A source address of its own: these refused sign-ins count against it, not against the other tests.
    async with browser(world, cert, source=f"127.0.1.{[None, 'console-ca', 'proxy-ca-other-cn'].index(cert) + 1}"
                       ) as c:
        status, doc = await c.sign_in(user="alice", groups=("recoverers", "system:masters"))
        assert (status, doc["error"]) == (401, "unauthenticated"), doc
        status, doc, _ = await c.call("GET", "/api/v1/session", user="alice")
        assert (status, doc.get("authProxy")) == (401, False), doc
        assert not list(c.session.cookie_jar)


async def test_a_certificate_of_an_unknown_ca_fails_the_handshake(world):
    async with browser(world, "unknown-ca", source="127.0.2.1") as c:
        with pytest.raises(aiohttp.ClientError):
            await c.sign_in(user="alice")


async def test_failed_sign_ins_are_limited_per_address_and_successes_do_not_count(world):
    async with browser(world, None, source="127.0.3.1") as c, browser(world, None, source="127.0.3.2") as other:
        for _ in range(3):  # successes in between count for nothing
            assert (await c.sign_in(world.tokens["reader"]))[0] == 200
        for _ in range(FAILURES):
            assert (await c.sign_in(world.tokens["stranger"] + "x"))[0] == 401
        status, doc, headers = await c.call("POST", "/api/v1/session", {"token": world.tokens["stranger"] + "x"})
        assert (status, doc["error"]) == (429, "too_many_failures"), doc
        assert 0 < int(headers["Retry-After"]) <= 60
        # Past the limit this address gets no TokenReview at all, a valid token included...
        assert (await c.sign_in(world.tokens["reader"]))[0] == 429
        # ...while another address still signs in.
        status, doc = await other.sign_in(world.tokens["reader"])
        assert status == 200 and doc["user"] == f"system:serviceaccount:{world.namespace}:reader", doc


async def test_no_credential_is_in_the_console_log(world):
    # Run last (file order): every token, cookie, CSRF token and client key used above is in world.secrets.
    log = (world.root / "console.log").read_text(errors="replace")
    assert "signed in: alice (auth proxy)" in log and "signed in: system:serviceaccount:" in log
    leaked = [i for i, s in enumerate(world.secrets) if s and s in log]
    assert not leaked, f"credentials {leaked} of {len(world.secrets)} appear in the console's log"
