"""Schemathesis against the console process (real API server, signed in as a real ServiceAccount): every operation
of the packaged OpenAPI document answers with a documented status and body, never a 5xx other than 502 (the shard
is not running here: a documented "shard unreachable"), and the served document is the packaged one."""

from __future__ import annotations

import os

import pytest
import requests
import schemathesis
from chronoshard.shardnode.serving.scaffold import load_openapi
from hypothesis import HealthCheck, given, settings

from tests.integration.console.test_console_server import world

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]
__all__ = ["world"]  # the module-scoped fixture: a console process, its ServiceAccounts and a ShardSet

EXAMPLES = int(os.environ.get("CHRONOSHARD_FUZZ_EXAMPLES", "8"))
DOC = load_openapi("console")
SCHEMA = schemathesis.openapi.from_dict(DOC)
CHECKS = [schemathesis.checks.status_code_conformance, schemathesis.checks.content_type_conformance,
          schemathesis.checks.response_schema_conformance]
OPERATIONS = [pytest.param(op, id=op.label) for op in (r.ok() for r in SCHEMA.get_all_operations())]


@pytest.fixture(scope="module")
def signed_in(world) -> requests.Session:
    s = requests.Session()
    r = s.post(world.url + "/api/v1/session", json={"token": world.tokens["reader"]}, timeout=30)
    assert r.status_code == 200, r.text
    s.headers["X-CSRF-Token"] = r.json()["csrfToken"]
    world.secrets.extend([r.json()["csrfToken"], *s.cookies.values()])
    return s


def test_served_document_is_the_packaged_one(world):
    assert requests.get(world.url + "/openapi.json", timeout=10).json() == DOC


@pytest.mark.parametrize("operation", OPERATIONS)
def test_operation_conforms(world, signed_in, operation):
    if operation.method.upper() == "DELETE" and operation.path == "/api/v1/session":
        pytest.skip("signing out would end the session the other operations use")

    @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(base_url=world.url, session=signed_in, timeout=30)
        assert response.status_code < 500 or response.status_code == 502, (case.path, response.text)
        case.validate_response(response, checks=CHECKS)

    run()
