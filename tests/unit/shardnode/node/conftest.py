"""Fixtures shared by the node's store tests."""

import pytest

from tests.support.stores import open_store, ring


@pytest.fixture
async def store(tmp_path):
    """A real store on a temp dir with keyring version 1, and the holder whose keyring tests may swap."""
    s, holder = open_store(tmp_path, ring(1, (1,)))
    yield s, holder
    s.close()
