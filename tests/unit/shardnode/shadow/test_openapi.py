"""The shadow's OpenAPI document: every route of the app is documented, nothing else is, and it ships."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.keyspace.partitioning import initial_map
from chronoshard.shardnode.serving.http_common import TABLE_RE
from chronoshard.shardnode.serving.routing import PartitionMapSource
from chronoshard.shardnode.serving.scaffold import Partitioning, load_openapi, route_policies
from chronoshard.shardnode.shadow.config import ShadowConfig
from chronoshard.shardnode.shadow.reversion import NAME_RE
from chronoshard.shardnode.shadow.server import create_app

from tests.support.servers import keyring_dir

REPO = Path(__file__).resolve().parents[4]
METHODS = {"get", "put", "post", "delete"}


def app(tmp: Path):
    (tmp / "map.json").write_text(initial_map(1).to_json())
    return create_app(ShadowConfig(node_url="http://127.0.0.1:9", data_dir=tmp / "d", keyring_dir=keyring_dir(tmp),
                                   partitioning=Partitioning(PartitionMapSource(tmp / "map.json"), 0)))


def test_every_route_is_documented_and_every_documented_route_exists(tmp_path):
    doc = load_openapi("shadow")
    documented = {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}
    served = set(route_policies(app(tmp_path)))
    assert documented == served


def test_every_route_declares_its_access(tmp_path):
    table = route_policies(app(tmp_path))
    assert all(access is not None for access in table.values())
    assert table[("GET", "/v1/tables/{table}/history/{key}")] is Access.DATA_GET
    assert table[("GET", "/v1/tables/{table}/at/{key}")] is Access.DATA_GET
    assert table[("GET", "/v1/tables/{table}/state")] is Access.DATA_LIST
    assert table[("GET", "/v1/tables/{table}/diff")] is Access.DATA_LIST
    admin = [k for k in table if k[1].startswith(("/v1/reversions", "/v1/rewrap", "/v1/keys", "/v1/status"))]
    assert len(admin) == 8 and all(table[k] is Access.ADMIN for k in admin)


def test_documented_patterns_are_the_servers():
    doc = load_openapi("shadow")
    assert doc["components"]["parameters"]["table"]["schema"]["pattern"] == f"^{TABLE_RE.pattern}$"
    assert doc["components"]["schemas"]["Name"]["pattern"] == f"^{NAME_RE.pattern}$"
    assert doc["components"]["parameters"]["limit"]["schema"]["maximum"] == 1000


def test_the_document_ships_in_the_wheel():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "chronoshard.shardnode.shadow"]
    assert any(fnmatch.fnmatch("openapi.yaml", p) for p in patterns)
