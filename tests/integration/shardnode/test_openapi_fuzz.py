"""Schemathesis against the served OpenAPI documents of real node and cache processes: no 5xx, no schema violations.

The operations are generated from the packaged documents (so each is its own test) and the test checks that the
servers serve exactly those documents. Hypothesis drives schemathesis' strategies directly because schemathesis'
pytest plugin does not support this pytest version.
"""

from __future__ import annotations

import os

import pytest
import requests
import schemathesis
from chronoshard.shardnode.serving.scaffold import load_openapi
from hypothesis import HealthCheck, given, settings

from tests.integration.shardnode.procs import cache, http, node
from tests.support.kubelet_dir import write_keyring

EXAMPLES = int(os.environ.get("CHRONOSHARD_FUZZ_EXAMPLES", "12"))
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
DOCS = {"node": load_openapi("node"), "cache": load_openapi("cache")}
SCHEMAS = {name: schemathesis.openapi.from_dict(doc) for name, doc in DOCS.items()}
# Only checks about the server's own behaviour: no 5xx, documented status codes, content types and bodies.
CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
          schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance]


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
        if case.query and "wait" in case.query:
            case.query["wait"] = 0  # a long-poll per example would only slow the run down
        case.call_and_validate(base_url=base, session=session, checks=CHECKS, timeout=30)

    run()
