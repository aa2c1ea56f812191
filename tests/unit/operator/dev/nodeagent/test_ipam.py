import pytest
from chronoshard.operator.dev.nodeagent.ipam import IPAllocator


def test_allocates_distinct_ips_reuses_and_persists(tmp_path):
    path = tmp_path / "ips.json"
    ipam = IPAllocator(path)
    a, b, c = ipam.allocate("a"), ipam.allocate("b"), ipam.allocate("c")
    assert (a, b, c) == ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    assert ipam.allocate("b") == b
    ipam.release("b")
    again = IPAllocator(path)  # a restarted agent reads the same table
    assert again.allocations() == {"a": a, "c": c}
    assert again.allocate("d") == "127.0.0.3", "a released address is handed out again"


def test_other_pod_cidr_and_exhaustion(tmp_path):
    ipam = IPAllocator(tmp_path / "ips.json", "10.88.0.0/29")
    got = [ipam.allocate(str(i)) for i in range(5)]
    assert got == ["10.88.0.2", "10.88.0.3", "10.88.0.4", "10.88.0.5", "10.88.0.6"]
    with pytest.raises(RuntimeError, match="no free address"):
        ipam.allocate("one-too-many")
    with pytest.raises(ValueError, match="too small"):
        IPAllocator(tmp_path / "other.json", "10.0.0.0/31")
