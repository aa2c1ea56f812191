import json

import pytest
from chronoshard.devcluster.nodeagent.ipam import IPAllocator


def test_allocates_distinct_ips_reuses_and_persists(tmp_path):
    path = tmp_path / "ips.json"
    ipam = IPAllocator(path, lock_dir=tmp_path / "locks")
    assert ipam.cidr == "127.0.0.0/16"
    a, b, c = ipam.allocate("a"), ipam.allocate("b"), ipam.allocate("c")
    assert (a, b, c) == ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    assert ipam.allocate("b") == b
    ipam.release("b")
    ipam.close()
    again = IPAllocator(path, lock_dir=tmp_path / "locks")  # a restarted agent reads the same table
    assert again.allocations() == {"a": a, "c": c}
    assert again.allocate("d") == "127.0.0.3", "a released address is handed out again"


def test_concurrent_agents_get_disjoint_ranges_and_a_range_frees_on_close(tmp_path):
    locks = tmp_path / "locks"
    first = IPAllocator(tmp_path / "one.json", lock_dir=locks)
    second = IPAllocator(tmp_path / "two.json", lock_dir=locks)
    assert (first.cidr, second.cidr) == ("127.0.0.0/16", "127.1.0.0/16")
    assert first.allocate("x") == "127.0.0.2" and second.allocate("x") == "127.1.0.2"
    # A restarted agent must get its own range back, not whichever is free.
    with pytest.raises(RuntimeError, match="in use by another"):
        IPAllocator(tmp_path / "one.json", lock_dir=locks)
    first.close()
    assert IPAllocator(tmp_path / "one.json", lock_dir=locks).allocate("x") == "127.0.0.2"
    assert json.loads((tmp_path / "two.json").read_text())["cidr"] == "127.1.0.0/16"


def test_explicit_cidr_exhaustion_and_bad_input(tmp_path):
    locks = tmp_path / "locks"
    ipam = IPAllocator(tmp_path / "ips.json", "10.88.0.0/29", lock_dir=locks)
    got = [ipam.allocate(str(i)) for i in range(5)]
    assert got == ["10.88.0.2", "10.88.0.3", "10.88.0.4", "10.88.0.5", "10.88.0.6"]
    with pytest.raises(RuntimeError, match="no free address"):
        ipam.allocate("one-too-many")
    with pytest.raises(ValueError, match="too small"):
        IPAllocator(tmp_path / "other.json", "10.0.0.0/31", lock_dir=locks)
    ipam.close()
    with pytest.raises(ValueError, match="cannot switch"):
        IPAllocator(tmp_path / "ips.json", "10.99.0.0/16", lock_dir=locks)
