"""The token service's OpenAPI document: every route of the app is documented, nothing else is, each route declares
its access, and the document ships."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.serving.scaffold import load_openapi, route_policies
from chronoshard.shardnode.tokens.server import Settings, create_app
from chronoshard.shardnode.tokens.signing import pem
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parents[4]
METHODS = {"get", "put", "post", "delete"}


def app(tmp: Path):
    (tmp / "signing").mkdir()
    (tmp / "signing" / "signing.pem").write_bytes(pem(Ed25519PrivateKey.generate()))
    return create_app(Settings(config_path=tmp / "missing.json", signing_dir=tmp / "signing", data_dir=tmp / "d"))


def test_every_route_is_documented_and_every_documented_route_exists(tmp_path):
    doc = load_openapi("tokens")
    documented = {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}
    served = set(route_policies(app(tmp_path))) - {("GET", "/openapi.json")}
    assert documented == served


def test_every_route_declares_its_access(tmp_path):
    table = route_policies(app(tmp_path))
    assert all(access is not None for access in table.values())
    assert table[("GET", "/v1/tokens")] is Access.ADMIN and table[("GET", "/v1/status")] is Access.ADMIN
    assert table[("GET", "/v1/revocations")] is Access.REPLICATION  # members' pods pull it
    open_to_callers = [("POST", "/v1/tokens"), ("GET", "/v1/tokens/{id}"), ("POST", "/v1/tokens/{id}/refresh"),
                       ("DELETE", "/v1/tokens/{id}"), ("GET", "/v1/keys"), ("GET", "/v1/risk")]
    assert all(table[k] is Access.AUTHENTICATED for k in open_to_callers)


def test_the_document_ships_in_the_wheel():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "chronoshard.shardnode.tokens"]
    assert any(fnmatch.fnmatch("openapi.yaml", p) for p in patterns)
