"""Fixtures of the client integration tests: three real shards (node, optionally cache) on 127.0.0.1."""

from __future__ import annotations

import pytest
from chronoshard.shardnode.keyspace.partitioning import initial_map

from .shards import ShardCaches, ShardNodes


@pytest.fixture()
def nodes(tmp_path):
    n = ShardNodes(tmp_path, initial_map(3))
    yield n
    n.stop()


@pytest.fixture()
def caches(nodes):
    c = ShardCaches(nodes)
    yield c
    c.stop()
