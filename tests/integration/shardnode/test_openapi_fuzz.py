"""Schemathesis against the served OpenAPI documents of real node and cache processes: no 5xx, no schema violations.

Three runs: the open processes (--insecure); processes with authentication on (--security-config, reviewing with
the real API server) and no credential, where every guarded answer must be 401 and none 5xx; and the same with a
real TokenRequest token of a ServiceAccount RBAC lets do everything (the operator identity for the admin routes),
which must conform as the open run does.

The operations are generated from the packaged documents (so each is its own test) and the test checks that the
servers serve exactly those documents. Hypothesis drives schemathesis' strategies directly because schemathesis'
pytest plugin does not support this pytest version.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
import requests
import schemathesis
from chronoshard.shardnode.serving.scaffold import load_openapi
from hypothesis import HealthCheck, given, settings
from kubernetes import client

from tests.integration.shardnode.procs import cache, http, node
from tests.support import rbac
from tests.support.kubelet_dir import write_keyring

EXAMPLES = int(os.environ.get("CHRONOSHARD_FUZZ_EXAMPLES", "12"))
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
DOCS = {"node": load_openapi("node"), "cache": load_openapi("cache")}
SCHEMAS = {name: schemathesis.openapi.from_dict(doc) for name, doc in DOCS.items()}
# Only checks about the server's own behaviour: no 5xx, documented status codes, content types and bodies.
CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
          schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance]


# A data route that names no table (a queued write's state): tiered tokens and the pods reach it, an RBAC-allowed
# ServiceAccount token is refused (tests/integration/shardnode/test_auth_endpoints.py, tiered_only).
TIERED_ONLY_PATHS = frozenset({"/v1/queue/{id}"})


def no_long_poll(case) -> None:
    """A long-poll per example would only slow the run down: generated waits become 0."""
    for name in ("wait", "waitSeconds"):
        if case.query and name in case.query:
            case.query[name] = 0


def _has_inputs(name: str, path: str, method: str) -> bool:
    item = DOCS[name]["paths"][path]
    op = item[method.lower()]
    return bool(item.get("parameters") or op.get("parameters") or op.get("requestBody"))


def _operations(name: str) -> list[pytest.param]:
    # Negative cases need something to break: operations without inputs get positive cases only.
    return [pytest.param(name, op, mode, id=f"{name}:{op.label}:{mode.value}")
            for op in (r.ok() for r in SCHEMAS[name].get_all_operations())
            for mode in MODES
            if mode is schemathesis.GenerationMode.POSITIVE or _has_inputs(name, op.path, op.method)]


def lift_fences(base: str, session: requests.Session, path: str) -> None:
    """After fuzzing a fence route: a generated fence holds writes to its ranges for up to 60 s (the cache in front
    of this node included), so lift every one before the next operation's cases."""
    if not path.startswith("/v1/fences"):
        return
    for fence in session.get(base + "/v1/fences", timeout=10).json()["fences"]:
        session.delete(f"{base}/v1/fences/{fence['name']}", timeout=10)


def restore_primary(base: str, session: requests.Session, path: str) -> None:
    """After fuzzing the role document: generated documents can leave the node fenced or a mirror under some term,
    and every write route fuzzed after that would get the role's 503; make it a primary again under a higher term."""
    if path != "/v1/replication" or not base.startswith(("http://", "https://")):
        return
    role = session.get(base + "/v1/replication", timeout=10)
    if role.status_code != 200:  # the cache has no role document
        return
    doc = role.json()
    if doc.get("role") not in (None, "primary"):
        term = int(doc.get("term") or 0) + 1
        answer = session.put(base + "/v1/replication", json={"term": term, "role": "primary"}, timeout=10)
        assert answer.status_code == 200, answer.text


def after_operation(base: str, session: requests.Session, path: str) -> None:
    """Undo what one operation's generated cases may leave behind for the next operations."""
    lift_fences(base, session, path)
    restore_primary(base, session, path)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    keyring = tmp / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    n = node(tmp, keyring).start()
    c = cache(tmp, keyring, n.url).start()
    for k in ("a", "b", "0"):  # a few real blocks so generated reads sometimes hit data
        http("PUT", f"{n.url}/v1/tables/t/blocks/{k}", b"seed")
    try:
        yield {"node": n.url, "cache": c.url}
    finally:
        c.stop()
        n.stop()


@pytest.mark.parametrize("name", ["node", "cache"])
def test_served_document_is_the_packaged_one(servers, name):
    assert requests.get(servers[name] + "/openapi.json", timeout=10).json() == DOCS[name]


@pytest.mark.parametrize("name, operation, mode", _operations("node") + _operations("cache"))
def test_operation_conforms(servers, name, operation, mode):
    base = servers[name]
    session = requests.Session()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        no_long_poll(case)
        case.call_and_validate(base_url=base, session=session, checks=CHECKS, timeout=30)

    try:
        run()
    finally:
        after_operation(base, session, operation.path)


# ---- with authentication on --------------------------------------------------------------------------------
PUBLIC_PATHS = {"/healthz", "/readyz", "/openapi.json"}


@pytest.fixture(scope="module")
def secured(control_plane, k8s_client, tmp_path_factory):
    """A node and a cache with --security-config (plain HTTP: what is fuzzed is the auth layer in front of the
    handlers, TLS is tested on its own), and a token RBAC allows everything on the ShardSet's data."""
    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    tmp = tmp_path_factory.mktemp("fuzz-auth")
    deleg = rbac.delegator(control_plane, core, rb, ns, tmp)
    fuzzer = rbac.service_account(core, ns, "fuzzer")
    rbac.bind_role(rb, ns, "fuzzer", rbac.data_rules(None, ["get", "list", "update", "delete"]))
    metrics_role = rbac.metrics_cluster_role(rb)
    metrics_binding = rbac.bind_cluster_role(rb, metrics_role, ns, "fuzzer")
    token = rbac.token(core, ns, "fuzzer", [rbac.audience(ns)])
    # The fuzzer's ServiceAccount is named an operator identity, so the administrative routes let it in too.
    (tmp / "security.json").write_text(json.dumps(rbac.security_doc(ns, operators=[fuzzer])))
    flags = ("--security-config", str(tmp / "security.json"))
    env = {**os.environ, "KUBECONFIG": str(deleg.kubeconfig)}
    keyring = tmp / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    (tmp / "n").mkdir()
    (tmp / "open").mkdir()
    n = node(tmp / "n", keyring, security=flags, env=env).start()
    # The cache's own node is open: the cache's internal client certificate is not what this run is about.
    upstream = node(tmp / "open", keyring).start()
    c = cache(tmp, keyring, upstream.url, security=flags, env=env).start()
    auth = {"Authorization": f"Bearer {token}"}
    for url in (n.url, c.url):
        for k in ("a", "b", "0"):
            assert requests.put(f"{url}/v1/tables/t/blocks/{k}", data=b"seed", headers=auth, timeout=10).ok
    try:
        yield {"node": n.url, "cache": c.url, "auth": auth, "secrets": [token, deleg.token],
               "logs": [n, upstream, c]}
    finally:
        for proc in (c, upstream, n):
            proc.stop()
        rb.delete_cluster_role_binding(deleg.binding)
        rb.delete_cluster_role_binding(metrics_binding)
        rb.delete_cluster_role(metrics_role)
        core.delete_namespace(ns)


@pytest.mark.parametrize("name, operation, mode", _operations("node") + _operations("cache"))
def test_without_credentials_every_guarded_answer_is_401(secured, name, operation, mode):
    base = secured[name]
    session = requests.Session()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=max(2, EXAMPLES // 3), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        no_long_poll(case)
        response = case.call(base_url=base, session=session, timeout=30)
        assert response.status_code < 500, response.text
        if operation.path not in PUBLIC_PATHS:
            assert response.status_code == 401, (case.path, response.status_code, response.text)
            assert response.json()["error"] == "unauthenticated"

    run()


@pytest.mark.parametrize("name, operation, mode", _operations("node") + _operations("cache"))
def test_with_credentials_operation_conforms(secured, name, operation, mode):
    base = secured[name]
    session = requests.Session()
    session.headers.update(secured["auth"])

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        no_long_poll(case)
        response = case.call_and_validate(base_url=base, session=session, checks=CHECKS, timeout=30)
        if operation.path in TIERED_ONLY_PATHS:  # decided: only tiered tokens and the pods (docs/tokens.md)
            assert response.status_code == 403 and response.json()["reason"] == "admin_only", response.text
        else:
            assert response.status_code not in (401, 403), response.text  # the credential got every request in

    try:
        run()
    finally:
        after_operation(base, session, operation.path)


def test_no_credential_in_the_process_logs(secured):
    """Runs after the fuzzing above (same module): nothing the processes wrote contains a token."""
    for proc in secured["logs"]:
        text = proc.log_path.read_text(errors="replace")
        for secret in secured["secrets"]:
            assert secret not in text
