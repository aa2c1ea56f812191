"""The console server as a real process against the real kube-apiserver (envtest) and a real shard (a node and its
shadow, the shadow serving TLS with the ShardSet's CA and authenticating every call with TokenReview and
SubjectAccessReview): sign-in with real ServiceAccount tokens, the CSRF check, RBAC on tables decided for the
signed-in user, the approval patched with the user's own token, and no credential in the console's logs.

Users are ServiceAccounts with real TokenRequest tokens: ``reader`` (reads the custom resources and table ``t``),
``approver`` (the same and may patch Reversions), ``stranger`` (no RBAC at all). The console runs as ServiceAccount
``console`` (system:auth-delegator; pods and ConfigMaps; its own tokens; ``get``/``list`` on every table's data).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from chronoshard.devcluster.controlplane import kubeconfig_document
from chronoshard.operator import certs
from chronoshard.shardnode.auth.apiserver import ApiServer, load_connection
from chronoshard.shardnode.auth.config import parse_security_config
from chronoshard.shardnode.keyspace.partitioning import initial_map
from chronoshard.shardnode.node.server import NodeConfig
from chronoshard.shardnode.node.server import create_app as create_node
from chronoshard.shardnode.serving import tls
from chronoshard.shardnode.serving.scaffold import secure_app
from chronoshard.shardnode.shadow.server import SHADOW
from chronoshard.shardnode.shadow.server import create_app as create_shadow
from kubernetes import client

from tests.integration.shardnode.procs import Proc, free_port
from tests.support import rbac, tls_files
from tests.support.servers import keyring_dir, serve
from tests.support.shadow import shadow_config
from tests.support.shadowstub import GROUP, VERSION, create_custom
from tests.support.waiting import wait_for, wait_for_async

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

NAME = "orders"
DIGEST = "d" * 64
USERS = ("reader", "approver", "stranger")
CR_PLURALS = ["shardsets", "shadowpolicies", "reversions", "keyrotations"]


@dataclass
class World:
    namespace: str
    console: Proc
    tokens: dict[str, str]
    tls_dir: Path
    shard_kubeconfig: Path
    shadow_port: int
    custom: client.CustomObjectsApi
    secrets: list[str] = field(default_factory=list)  # every credential text, for the log check

    @property
    def url(self) -> str:
        return self.console.url


def _rule(groups: list[str], resources: list[str], verbs: list[str],
          names: list[str] | None = None) -> client.V1PolicyRule:
    return client.V1PolicyRule(api_groups=groups, resources=resources, verbs=verbs, resource_names=names)


def _allowed(authz: client.AuthorizationV1Api, user: str, **attrs: Any) -> bool:
    review = authz.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, resource_attributes=client.V1ResourceAttributes(**attrs))))
    return bool(review.status.allowed)


def _rbac(core: client.CoreV1Api, rb: client.RbacAuthorizationV1Api, ns: str) -> str:
    """The console's and the users' ServiceAccounts and roles; the console's auth-delegator binding's name."""
    rbac.service_account(core, ns, "console")
    binding = rbac.bind_cluster_role(rb, "system:auth-delegator", ns, "console")
    rbac.bind_role(rb, ns, "console", [
        _rule([""], ["pods", "configmaps"], ["get", "list"]),
        _rule([""], ["serviceaccounts/token"], ["create"], ["console"]),
        _rule(["chronoshard.io"], ["shardsets/data"], ["get", "list"])])
    crs = _rule(["chronoshard.io"], CR_PLURALS, ["get", "list"])
    table_t = _rule(["chronoshard.io"], ["shardsets/data"], ["get", "list"], ["t"])
    for user in USERS:
        rbac.service_account(core, ns, user)
    rbac.bind_role(rb, ns, "reader", [crs, table_t])
    rbac.bind_role(rb, ns, "approver", [crs, table_t, _rule(["chronoshard.io"], ["reversions"], ["patch"])])
    authz = client.AuthorizationV1Api(core.api_client)
    sa = f"system:serviceaccount:{ns}:"
    wait_for(lambda: _allowed(authz, sa + "approver", group="chronoshard.io", resource="reversions",
                              verb="patch", namespace=ns, name="undo")
             and _allowed(authz, sa + "console", group="chronoshard.io", resource="shardsets",
                          subresource="data", verb="list", namespace=ns, name="u")
             and _allowed(authz, sa + "reader", group="chronoshard.io", resource="shardsets",
                          subresource="data", verb="get", namespace=ns, name="t"),
             what="the RBAC bindings to take effect")
    return binding


def _shardset_objects(k8s: Any, core: client.CoreV1Api, ns: str, ca: certs.KeyPair) -> None:
    """The ShardSet, its policy, a Reversion awaiting approval, the CA and partition ConfigMaps and shard 0's pod
    (its IP the loopback, where the test serves the shadow)."""
    create_custom(k8s, ns, "shardsets", NAME, {"shards": 1, "tables": [{"name": "t"}, {"name": "u"}]}, "ShardSet")
    create_custom(k8s, ns, "shadowpolicies", f"{NAME}-shadow", {"shardSetRef": {"name": NAME}}, "ShadowPolicy")
    create_custom(k8s, ns, "reversions", "undo", {"shardSetRef": {"name": NAME}, "tables": ["t"],
                                                  "pointInTime": "2026-11-30T09:00:00Z"}, "Reversion")
    client.CustomObjectsApi(k8s).patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, "reversions", "undo",
        {"status": {"phase": "AwaitingApproval", "digest": DIGEST, "plan": {"keys": 1}}})
    core.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=f"{NAME}-ca"), data={"ca.crt": ca.cert.decode()}))
    core.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=f"{NAME}-partitions"), data={"map.json": initial_map(1).to_json()}))
    labels = {"app.kubernetes.io/name": "chronoshard", "app.kubernetes.io/instance": NAME,
              "app.kubernetes.io/component": "shard"}
    core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name=f"{NAME}-0", labels=labels),
        spec=client.V1PodSpec(containers=[client.V1Container(name="shadow", image="x")])))
    core.patch_namespaced_pod_status(f"{NAME}-0", ns, {"status": {"podIP": "127.0.0.1",
                                                                  "podIPs": [{"ip": "127.0.0.1"}]}})


@pytest.fixture(scope="module")
def world(control_plane, k8s_client, tmp_path_factory) -> Iterator[World]:
    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    root = tmp_path_factory.mktemp("console")
    binding = _rbac(core, rb, ns)
    deleg = rbac.delegator(control_plane, core, rb, ns, root)  # the shadow's own reviews
    ca = certs.new_ca(ns, NAME, tls_files.now())
    pod = certs.issue_shard_certificate(ca, ns, NAME, 1, ["127.0.0.1"], tls_files.now())
    tls_dir = tls_files.write_tls_dir(root / "tls", pod, ca)
    _shardset_objects(k8s_client, core, ns, ca)
    console_token = rbac.token(core, ns, "console", None)
    kubeconfig = root / "console-kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_document(control_plane.server, console_token,
                                                             control_plane.ca_pem, user="console")))
    tokens = {u: rbac.token(core, ns, u, None) for u in USERS}
    shadow_port, port = free_port(), free_port()
    console = Proc([sys.executable, "-m", "chronoshard.shardnode.console.main", "--insecure", "--host", "127.0.0.1",
                    "--port", str(port), "--kubeconfig", str(kubeconfig), "--service-account", f"{ns}/console",
                    "--shadow-port", str(shadow_port), "--log-level", "DEBUG"], port, root / "console.log")
    console.start()
    w = World(ns, console, tokens, tls_dir, deleg.kubeconfig, shadow_port, client.CustomObjectsApi(k8s_client))
    w.secrets = [*tokens.values(), console_token, deleg.token]
    yield w
    console.stop()
    rb.delete_cluster_role_binding(binding)
    rb.delete_cluster_role_binding(deleg.binding)
    core.delete_namespace(ns)


# ---- talking to the console as a browser would ------------------------------------------------------------
class Browser:
    """One browser: a cookie jar, and the CSRF token once signed in."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf: str | None = None

    async def call(self, method: str, path: str, doc: Any = None, *, csrf: str | None = "session"
                   ) -> tuple[int, Any]:
        headers = {}
        if csrf is not None:
            value = self.csrf if csrf == "session" else csrf
            if value is not None:
                headers["X-CSRF-Token"] = value
        async with self.session.request(method, self.world.url + path, json=doc, headers=headers) as r:
            body = await r.read()
            try:
                return r.status, json.loads(body)
            except ValueError:
                return r.status, body

    async def sign_in(self, token: str) -> tuple[int, Any]:
        status, doc = await self.call("POST", "/api/v1/session", {"token": token}, csrf=None)
        if status == 200:
            self.csrf = doc["csrfToken"]
            self.world.secrets.append(self.csrf)
            self.world.secrets.extend(c.value for c in self.session.cookie_jar)
        return status, doc

    async def close(self) -> None:
        await self.session.close()


@contextlib.asynccontextmanager
async def browser(world: World, user: str | None = None) -> AsyncIterator[Browser]:
    b = Browser(world)
    try:
        if user is not None:
            status, doc = await b.sign_in(world.tokens[user])
            assert status == 200, doc
        yield b
    finally:
        await b.close()


@contextlib.asynccontextmanager
async def shard(world: World, tmp: Path, settings: dict[str, Any] | None = None) -> AsyncIterator[str]:
    """A node (open, in-process) and its shadow on the pod's address, secured as a pod's: TLS with the ShardSet's
    certificate, TokenReview/SubjectAccessReview for every call. Writes k1 twice in t and a secret in u."""
    kdir = keyring_dir(tmp)
    node_app = create_node(NodeConfig(data_dir=tmp / "data", keyring_dir=kdir))
    async with serve(node_app) as node_url, aiohttp.ClientSession() as s:
        app = create_shadow(shadow_config(tmp, node_url, kdir, {"tables": ["t", "u"], **(settings or {})}))
        cfg = parse_security_config(rbac.security_doc(world.namespace))
        secure_app(app, cfg, ApiServer(load_connection(str(world.shard_kubeconfig))), "shadow")
        async with serve(app, tls.install(app, world.tls_dir), port=world.shadow_port):
            sv = app[SHADOW]
            await wait_for_async(lambda: sv.capture is not None and sv.capture.seeds > 0, what="the first seed")
            lsn = 0
            for table, key, value in (("t", "k1", b"first"), ("t", "k1", b"second \xff\x00"), ("u", "s", b"secret"),
                                      ("t", "a%20b%3F", b"spaced")):
                async with s.put(f"{node_url}/v1/tables/{table}/blocks/{key}", data=value) as r:
                    assert r.status == 200, await r.text()
                    lsn = int((await r.json())["lsn"])
            await wait_for_async(lambda: sv.capture is not None and sv.capture.position >= lsn,
                                 what="the shadow to capture the writes")
            yield node_url


async def put_all(node_url: str, table: str, values: dict[str, bytes]) -> None:
    async with aiohttp.ClientSession() as s:
        for key, value in values.items():
            async with s.put(f"{node_url}/v1/tables/{table}/blocks/{key}", data=value) as r:
                assert r.status == 200, await r.text()


def reversion(world: World) -> dict[str, Any]:
    return world.custom.get_namespaced_custom_object(GROUP, VERSION, world.namespace, "reversions", "undo")


# ---- the tests -------------------------------------------------------------------------------------------
async def test_sign_in_with_a_real_token_and_a_bad_token_is_401(world):
    async with browser(world) as b:
        assert (await b.call("GET", "/api/v1/session"))[0] == 401
        status, doc = await b.sign_in(world.tokens["reader"] + "x")
        assert (status, doc["error"]) == (401, "unauthenticated"), doc
        status, doc = await b.sign_in("definitely-not-a-token")
        assert status == 401, doc
        assert (await b.call("GET", "/api/v1/session"))[0] == 401
        status, doc = await b.sign_in(world.tokens["reader"])
        assert status == 200, doc
        assert doc["user"] == f"system:serviceaccount:{world.namespace}:reader"
        assert f"system:serviceaccounts:{world.namespace}" in doc["groups"]
        status, again = await b.call("GET", "/api/v1/session")
        assert status == 200 and again == doc
        assert world.tokens["reader"] not in json.dumps(again)
        (cookie,) = list(b.session.cookie_jar)
        assert cookie.key == "chronoshard_console" and cookie["httponly"] and cookie["samesite"] == "Strict"
        assert cookie.value not in (world.tokens["reader"], doc["csrfToken"])
        # Signing in again gives a new session and ends the one the browser had.
        old = cookie.value
        assert (await b.sign_in(world.tokens["reader"]))[0] == 200
        (cookie,) = list(b.session.cookie_jar)
        assert cookie.value != old
        async with aiohttp.ClientSession(cookies={"chronoshard_console": old}) as s, \
                s.get(world.url + "/api/v1/session") as r:
            assert r.status == 401


async def test_state_changing_requests_need_the_csrf_token_and_change_nothing_without_it(world):
    before = reversion(world)["spec"].get("approve")
    async with browser(world, "approver") as b:
        for csrf in (None, "wrong", b.csrf + "x"):
            status, doc = await b.call("POST", f"/api/v1/namespaces/{world.namespace}/reversions/undo/approve",
                                       {"digest": DIGEST}, csrf=csrf)
            assert (status, doc["error"]) == (403, "csrf"), doc
            status, doc = await b.call("DELETE", "/api/v1/session", csrf=csrf)
            assert (status, doc["error"]) == (403, "csrf"), doc
        assert reversion(world)["spec"].get("approve") == before
        assert (await b.call("GET", "/api/v1/session"))[0] == 200  # still signed in
        assert (await b.call("DELETE", "/api/v1/session"))[0] == 200
        assert (await b.call("GET", "/api/v1/session"))[0] == 401


async def test_data_needs_the_users_rbac_on_the_table(world, tmp_path):
    ns = world.namespace
    base = f"/api/v1/namespaces/{ns}/shardsets/{NAME}/tables"
    async with shard(world, tmp_path), browser(world, "reader") as reader, browser(world, "stranger") as stranger:
        status, doc = await reader.call("GET", f"{base}/t/keys/k1/history")
        assert status == 200, doc
        versions = doc["versions"]
        assert [v["op"] for v in versions] == ["put", "put"] and [v["size"] for v in versions] == [5, 9]
        status, doc = await reader.call("GET", f"{base}/t/keys/k1/value?lsn={versions[0]['lsn']}")
        assert (status, doc["text"], doc["hex"]) == (200, "first", None), doc
        status, doc = await reader.call("GET", f"{base}/t/keys/k1/value?lsn={versions[1]['lsn']}")
        assert status == 200 and doc["text"] is None and "ff 00" in doc["hex"], doc
        async with reader.session.get(world.url + doc["download"]) as r:
            assert r.status == 200 and await r.read() == b"second \xff\x00"
            assert r.headers["Content-Disposition"].startswith("attachment")
        status, doc = await reader.call("GET", f"{base}/t/state")
        assert status == 200 and [(e["key"], e["shard"]) for e in doc["entries"]] == [("a b?", 0), ("k1", 0)], doc
        status, doc = await reader.call("GET", f"{base}/t/diff?from=0")
        assert status == 200 and [e["key"] for e in doc["entries"]] == ["a b?", "k1"], doc
        # A key is one percent-encoded path segment, and stays encoded in the download link.
        status, doc = await reader.call("GET", f"{base}/t/keys/a%20b%3F/history")
        assert status == 200 and len(doc["versions"]) == 1, doc
        status, doc = await reader.call("GET", f"{base}/t/keys/a%20b%3F/value?lsn={doc['versions'][0]['lsn']}")
        assert status == 200 and doc["text"] == "spaced" and "/keys/a%20b%3F/value/raw?" in doc["download"], doc
        async with reader.session.get(world.url + doc["download"]) as r:
            assert r.status == 200 and await r.read() == b"spaced"
        status, doc = await reader.call("GET", f"{base}/t/timeline")
        assert status == 200 and isinstance(doc["windows"], list), doc
        # Table u: the reader has no RBAC on it; the console could read it (its own identity may), and must not.
        for path in ("u/keys/s/history", "u/keys/s/value?lsn=1", "u/keys/s/value/raw?lsn=1", "u/state",
                     "u/diff?from=0", "u/timeline", "u/incidents/0/x"):
            status, doc = await reader.call("GET", f"{base}/{path}")
            assert (status, doc["error"]) == (403, "forbidden"), (path, doc)
            assert "secret" not in json.dumps(doc)
        for path in ("t/keys/k1/history", "t/state"):
            status, doc = await stranger.call("GET", f"{base}/{path}")
            assert (status, doc["error"]) == (403, "forbidden"), (path, doc)
        # The custom resources are read with the user's token: the stranger's own RBAC refuses them.
        assert (await stranger.call("GET", "/api/v1/shardsets"))[0] == 403
        status, doc = await reader.call("GET", f"/api/v1/shardsets?namespace={ns}")
        assert status == 200 and [(i["name"], i["tables"], i["shadowPolicy"]) for i in doc["items"]] == [
            (NAME, ["t", "u"], f"{NAME}-shadow")], doc
        status, doc = await reader.call("GET", f"/api/v1/namespaces/{ns}/shardsets/{NAME}")
        assert status == 200 and [r["name"] for r in doc["reversions"]] == ["undo"], doc


async def test_an_incident_shows_on_the_merged_timeline_and_its_keys_are_listed(world, tmp_path):
    rng = random.Random(3)
    words = ["order", "paid", "shipped", "customer", "amount", "sku", "note"]
    originals = {f"k{i:02}": json.dumps({w: rng.choice(words) for w in rng.sample(words, 4)}).encode() * 4
                 for i in range(60)}
    base = f"/api/v1/namespaces/{world.namespace}/shardsets/{NAME}/tables/t"
    async with shard(world, tmp_path, {"anomaly": {"intervalSeconds": 1}}) as node_url, \
            browser(world, "reader") as b:
        await put_all(node_url, "t", originals)
        await asyncio.sleep(3.5)  # a few quiet windows close before the attack
        attacked = sorted(originals)[10:40]
        await put_all(node_url, "t", {k: os.urandom(256) for k in attacked})

        async def incident() -> dict[str, Any] | None:
            status, doc = await b.call("GET", f"{base}/timeline")
            assert status == 200, doc
            done = [i for i in doc["incidents"] if i.get("state") == "closed"]
            return {**doc, "closed": done[0]} if done else None

        doc = await wait_for_async(incident, timeout=30, what="a closed incident on the console's timeline")
        inc = doc["closed"]
        assert inc["shard"] == 0 and any(w["incident"] == inc["id"] and w["shard"] == 0 for w in doc["windows"])
        starts = [w["start"] for w in doc["windows"]]
        assert starts == sorted(starts)
        status, page = await b.call("GET", f"{base}/incidents/0/{inc['id']}")
        assert status == 200, page
        assert [k["key"] for k in page["keys"]] == attacked[:100] and page["next"] is None
        status, page = await b.call("GET", f"{base}/incidents/0/t.999999")
        assert (status, page["error"]) == (404, "not_found"), page


async def test_approve_patches_for_an_allowed_user_only_and_checks_the_digest(world):
    path = f"/api/v1/namespaces/{world.namespace}/reversions/undo"
    async with browser(world, "reader") as reader, browser(world, "approver") as approver:
        status, doc = await reader.call("GET", path)
        assert (status, doc["canApprove"], doc["digest"]) == (200, False, DIGEST), doc
        status, doc = await approver.call("GET", path)
        assert (status, doc["canApprove"]) == (200, True), doc

        status, doc = await reader.call("POST", path + "/approve", {"digest": DIGEST})
        assert (status, doc["error"]) == (403, "forbidden"), doc
        assert "approve" not in reversion(world)["spec"]

        status, doc = await approver.call("POST", path + "/approve", {"digest": "e" * 64})
        assert (status, doc["error"]) == (409, "digest_mismatch"), doc
        assert "approve" not in reversion(world)["spec"]

        status, doc = await approver.call("POST", path + "/approve", {"digest": DIGEST})
        assert status == 200 and doc["spec"]["approve"] == DIGEST, doc
        assert reversion(world)["spec"]["approve"] == DIGEST


async def test_the_session_ends_when_kubernetes_no_longer_accepts_the_users_token(world, k8s_client):
    core = client.CoreV1Api(k8s_client)
    rbac.service_account(core, world.namespace, "leaver")
    token = rbac.token(core, world.namespace, "leaver", None)
    world.secrets.append(token)
    async with browser(world) as b:
        assert (await b.sign_in(token))[0] == 200
        core.delete_namespaced_service_account("leaver", world.namespace)  # its tokens die with it

        async def refused() -> bool:
            return (await b.call("GET", "/api/v1/shardsets"))[0] == 401

        await wait_for_async(refused, what="the API server to refuse the deleted account's token")
        assert (await b.call("GET", "/api/v1/session"))[0] == 401


async def test_over_tls_the_cookie_is_secure_and_plain_http_is_refused_without_insecure(world, tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "chronoshard.shardnode.console.main", "--host", "127.0.0.1", "--port", str(port),
            "--kubeconfig", str(world.shard_kubeconfig), "--service-account", f"{world.namespace}/console"]
    refused = subprocess.run(argv, capture_output=True, timeout=60)
    assert refused.returncode != 0 and b"--tls-dir" in refused.stderr
    proc = subprocess.Popen([*argv, "--tls-dir", str(world.tls_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ctx = ssl.create_default_context(cafile=str(world.tls_dir / "ca.crt"))
    url = f"https://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                         cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async def ready() -> bool:
                try:
                    async with s.get(url + "/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for_async(ready, what="the console to serve HTTPS")
            async with s.post(url + "/api/v1/session", json={"token": world.tokens["reader"]}) as r:
                assert r.status == 200, await r.text()
                cookie = r.cookies["chronoshard_console"]
                assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict"
                world.secrets.append(cookie.value)
    finally:
        proc.terminate()
        proc.wait(15)


async def test_no_credential_is_in_the_console_log(world, tmp_path):
    # Run after the others (file order): their tokens, cookies and CSRF tokens are all in world.secrets.
    async with shard(world, tmp_path), browser(world, "reader") as b:
        await b.call("GET", f"/api/v1/namespaces/{world.namespace}/shardsets/{NAME}/tables/t/keys/k1/history")
        await b.sign_in(world.tokens["stranger"] + "broken")
    await asyncio.sleep(0.2)
    log = world.console.log_path.read_text(errors="replace")
    assert "signed in: system:serviceaccount:" in log  # the log is written, and at DEBUG
    leaked = [i for i, s in enumerate(world.secrets) if s and s in log]
    assert not leaked, f"credentials {leaked} of {len(world.secrets)} appear in the console's log"
