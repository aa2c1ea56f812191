"""`chronoshard-dev up` starts the recovery console beside the operator: it answers on 127.0.0.1 (the port given
with --console-port, 7410 by default), signs in a ServiceAccount's token with a TokenReview against the local
cluster, refuses a made-up one, and `status` lists it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.e2e.conftest import LocalCluster, dev

pytestmark = pytest.mark.e2e


def _post(console: str, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(console + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_up_starts_the_console_and_it_signs_in_a_service_account(local_cluster: LocalCluster) -> None:
    assert local_cluster.console_port is not None
    console = f"http://127.0.0.1:{local_cluster.console_port}"
    with urllib.request.urlopen(console + "/healthz", timeout=10) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(console + "/", timeout=10) as resp:
        assert resp.status == 200 and b"<html" in resp.read().lower()
    local_cluster.kubectl("create", "serviceaccount", "console-visitor", "-n", "default", check=False)
    token = local_cluster.kubectl("create", "token", "console-visitor", "-n", "default").stdout.strip()
    status, session = _post(console, "/api/v1/session", {"token": token})
    assert status == 200, session
    assert session["user"] == "system:serviceaccount:default:console-visitor" and session["csrfToken"]
    status, refused = _post(console, "/api/v1/session", {"token": "not-a-token"})
    assert status == 401 and "not-a-token" not in json.dumps(refused)
    out = dev(local_cluster.state_dir, "status")
    assert any(line.split()[:2] == ["console", "running"] for line in out.stdout.splitlines()), out.stdout
