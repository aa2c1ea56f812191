"""``chronoshard token ...`` and ``chronoshard risk`` against a real ``chronoshard-tokens`` process, started with the
tokens-service.json and signing key the operator renders (operator/tokens/), its members' nodes unreachable (so
the store is unavailable and the service issues temporary tokens)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from chronoshard.operator.spec.mirrorset import parse_mirrorset
from chronoshard.operator.tokens import keys, manifests
from chronoshard.shardnode.client import cli

from tests.support.s3 import free_ports
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

OWNER = {"apiVersion": "chronoshard.io/v1alpha1", "kind": "MirrorSet",
         "metadata": {"name": "orders-ms", "namespace": "shop", "uid": "u-1"}}


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture()
def token_service(tmp_path: Path) -> Iterator[str]:
    """A real token service (--insecure: no guard; the CLI's auth path is the client's transport, tested
    elsewhere) whose members' nodes do not answer."""
    (tmp_path / "signing").mkdir()
    (tmp_path / "signing" / "signing.pem").write_bytes(keys.new_signing_key())
    dead_a, dead_b, port = free_ports(3)
    spec = parse_mirrorset({"sourceRef": {"name": "orders"},
                            "mirrors": [{"shardSetRef": {"name": "orders"}, "namespace": "dr"}],
                            "health": {"probeInterval": "1s"}})
    members = [manifests.MemberPods("shop", "orders", {0: "127.0.0.1"}),
               manifests.MemberPods("dr", "orders", {0: "127.0.0.1"})]
    cfg = manifests.service_config(OWNER, spec, members, {"activeShardSet": "shop/orders"})
    # The nodes at ports nothing listens on: the store is unavailable.
    for m, p in zip(cfg["members"], (dead_a, dead_b), strict=True):
        m["shards"][0]["node"] = f"http://127.0.0.1:{p}"
        m["shards"][0]["cache"] = None
    (tmp_path / "tokens-service.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronoshard.shardnode.tokens.main", "--insecure", "--host", "127.0.0.1",
         "--port", str(port), "--config", str(tmp_path / "tokens-service.json"),
         "--signing-dir", str(tmp_path / "signing"), "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "CHRONOSHARD_TOKEN": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), what="the token service ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run(url: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main([*argv, "--tokens-url", url], out=out)
    return code, out.getvalue()


def test_token_lifecycle_through_the_cli(token_service, monkeypatch):
    monkeypatch.delenv("CHRONOSHARD_TOKEN", raising=False)
    url = token_service
    code, text = run(url, "token", "request", "--service-id", "svc-a", "--block", "orders/k1", "-o", "json")
    assert code == 0, text
    issued = json.loads(text)
    # The store's nodes do not answer: the service promises only a temporary token.
    assert issued["tier"] in ("temporary", "valid") and issued["store"] == "shop/orders"
    assert issued["token"].count(".") == 2
    tid = issued["tokenId"]

    # The table output never prints the token itself.
    code, text = run(url, "token", "status", tid)
    assert code == 0 and tid in text and issued["token"] not in text and "tier" in text

    code, text = run(url, "token", "request", "--service-id", "svc-a", "--print-token")
    assert code == 0 and text.strip().count(".") == 2 and "tier" not in text

    code, text = run(url, "token", "list", "--service", "svc-a", "-o", "json")
    listed = json.loads(text)["tokens"]
    assert code == 0 and tid in {t["tokenId"] for t in listed} and len(listed) == 2

    code, text = run(url, "token", "refresh", tid, "-o", "json")
    refreshed = json.loads(text)
    assert code == 0 and refreshed["previous"] == tid and refreshed["tokenId"] != tid

    code, text = run(url, "token", "revoke", refreshed["tokenId"])
    assert code == 0 and f"revoked {refreshed['tokenId']}" in text

    # A revoked token is not renewed: the reason comes back, exit 1.
    code, text = run(url, "token", "refresh", refreshed["tokenId"])
    assert code == 1 and "refresh refused" in text and "revoked" in text

    code, text = run(url, "token", "status", "0" * 32)
    assert code == cli.EXIT_NOT_FOUND

    code, text = run(url, "token", "list", "--state", "revoked", "-o", "json")
    assert [t["tokenId"] for t in json.loads(text)["tokens"]] == [refreshed["tokenId"]]


def test_risk_through_the_cli(token_service):
    url = token_service
    code, text = run(url, "risk", "orders-ms", "-n", "shop", "-o", "json")
    assert code == 0
    doc = json.loads(text)
    assert doc["threshold"] == 0.7 and doc["activeStore"] == "shop/orders"
    code, text = run(url, "risk", "orders-ms", "-n", "shop")
    assert code == 0 and "threshold 0.7" in text and "model" in text
