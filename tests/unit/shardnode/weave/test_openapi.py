"""The weaver's OpenAPI document: every route of the app is documented, nothing else is, each route declares its
access, and the document ships in the wheel."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.keyspace.partitioning import initial_map
from chronoshard.shardnode.serving.routing import PartitionMapSource
from chronoshard.shardnode.serving.scaffold import Partitioning, load_openapi, route_policies
from chronoshard.shardnode.weave.config import WeaverConfig
from chronoshard.shardnode.weave.server import create_app

from tests.support.servers import keyring_dir

REPO = Path(__file__).resolve().parents[4]
METHODS = {"get", "put", "post", "delete"}


def app(tmp: Path):
    (tmp / "map.json").write_text(initial_map(1).to_json())
    return create_app(WeaverConfig(node_url="http://127.0.0.1:9", data_dir=tmp / "d", keyring_dir=keyring_dir(tmp),
                                   partitioning=Partitioning(PartitionMapSource(tmp / "map.json"), 0)))


def test_every_route_is_documented_and_every_documented_route_exists(tmp_path):
    doc = load_openapi("weave")
    documented = {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}
    assert documented == set(route_policies(app(tmp_path)))


def test_every_route_declares_its_access(tmp_path):
    table = route_policies(app(tmp_path))
    assert all(access is not None for access in table.values())
    own = [k for k in table if k[1].startswith(("/v1/woven", "/v1/rewrap", "/v1/keys", "/v1/status",
                                                 "/v1/partitions/{id}"))]
    assert len(own) == 8 and all(table[k] is Access.ADMIN for k in own)
    assert ("PUT", "/v1/partitions") not in table  # the weaver follows the mounted map, takes no pushes


def test_the_document_ships_in_the_wheel_with_the_console_script():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["chronoshard.shardnode.weave"]
    assert any(fnmatch.fnmatch("openapi.yaml", p) for p in patterns)
    assert project["project"]["scripts"]["chronoshard-weaver"] == "chronoshard.shardnode.weave.main:main"
