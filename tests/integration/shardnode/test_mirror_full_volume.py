"""A full volume on the primary: the primary's data directory is a 24 MiB tmpfs mounted inside a user+mount
namespace (``unshare -rm``, no root needed), filled by a file written through ``/proc/<pid>/root``. Writes then fail
with a 5xx and nothing that failed is acknowledged; the node's health reports the capacity and the errors; the
fence still answers with a demotion token (a full disk must not keep a node writable), the mirror reaches it and is
promoted, and every acknowledged write is on the new primary. Freeing space lets the old primary rejoin as a mirror."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.integration.shardnode.procs import BIN, INSECURE, Proc, free_port, http, http_json
from tests.support.kubelet_dir import write_keyring
from tests.support.waiting import wait_for

TMPFS_MIB = 24


def unshare_available() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    return os.system(f"{unshare} --user --map-root-user --mount true >/dev/null 2>&1") == 0


@pytest.fixture
def keyring(tmp_path):
    d = tmp_path / "keyring"
    write_keyring(d, 1, {1: ("primary", os.urandom(32))})
    return d


def tmpfs_node(tmp: Path, keyring: Path) -> Proc:
    """A node whose data directory is a size-limited tmpfs in its own mount namespace."""
    data = tmp / "data"
    data.mkdir(parents=True)
    port = free_port()
    node = [str(BIN / "chronoshard-node"), "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
            "--keyring-dir", str(keyring), *INSECURE]
    script = f'mount -t tmpfs -o size={TMPFS_MIB}m tmpfs "$0" && exec "$@"'
    argv = [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
            str(data), *node]
    return Proc(argv, port, tmp / f"node-{port}.log")


def plain_node(tmp: Path, keyring: Path) -> Proc:
    data = tmp / "data"
    data.mkdir(parents=True)
    port = free_port()
    return Proc([str(BIN / "chronoshard-node"), "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
                 "--keyring-dir", str(keyring), *INSECURE], port, tmp / f"node-{port}.log")


def put_role(url: str, doc: dict) -> dict:
    status, body = http_json("PUT", url + "/v1/replication", doc)
    assert status == 200, body
    return body


def state(url: str) -> dict:
    return http_json("GET", url + "/v1/replication")[1]


def test_a_full_primary_fails_writes_cleanly_and_switches_over_without_loss(tmp_path, keyring):
    assert unshare_available(), "this test needs util-linux unshare (user + mount namespaces)"
    a = tmpfs_node(tmp_path / "a", keyring).start()
    b = plain_node(tmp_path / "b", keyring).start()
    try:
        put_role(a.url, {"term": 1, "role": "primary", "mode": "sync", "mirrors": ["mirror.ns.b"],
                         "syncTimeoutSeconds": 5})
        put_role(b.url, {"term": 1, "role": "mirror", "mode": "sync", "source": {"url": a.url, "shardSet": "ns/a"},
                         "consumer": "mirror.ns.b"})
        wait_for(lambda: state(b.url)["state"] == "streaming", what="the mirror streaming")
        assert a.p is not None
        filler = Path(f"/proc/{a.p.pid}/root") / str(tmp_path / "a" / "data").lstrip("/") / "filler"
        # Leave ~1 MiB: the next writes of 64 KiB blocks run the volume full within a few dozen.
        with open(filler, "wb") as f:
            f.write(b"\0" * ((TMPFS_MIB - 3) << 20))
        acked: dict[str, bytes] = {}
        failures: list[tuple[int, bytes]] = []
        for i in range(400):
            value = os.urandom(64 << 10)
            status, body = http("PUT", f"{a.url}/v1/tables/t/blocks/k{i}", value)
            if status == 200:
                acked[f"k{i}"] = value
            else:
                failures.append((status, body))
                if len(failures) >= 5:
                    break
        assert acked, "some writes fit before the volume was full"
        assert len(failures) >= 5 and all(500 <= s < 600 for s, _ in failures), failures[:3]
        health = http_json("GET", a.url + "/v1/health")[1]
        assert health["capacity"]["fraction"] > 0.9, health["capacity"]
        assert health["requests"]["errors"] >= 5, health["requests"]

        fenced = put_role(a.url, {"term": 2, "role": "fenced", "primaryShardSet": "ns/b"})
        token = fenced["lastLsn"]
        assert http("PUT", f"{a.url}/v1/tables/t/blocks/late", b"x")[0] == 503
        wait_for(lambda: state(b.url)["appliedLsn"] >= token, what="the mirror at the demotion token")
        put_role(b.url, {"term": 2, "role": "primary", "mode": "async", "mirrors": [], "lsnFloor": token})
        for key, value in acked.items():
            status, body = http("GET", f"{b.url}/v1/tables/t/blocks/{key}")
            assert (status, body) == (200, value), f"acknowledged {key} missing on the new primary"
        assert http("PUT", f"{b.url}/v1/tables/t/blocks/after", b"on b")[0] == 200

        filler.unlink()  # space again: the old primary rejoins as a mirror
        put_role(a.url, {"term": 2, "role": "mirror", "mode": "async", "source": {"url": b.url, "shardSet": "ns/b"},
                         "consumer": "mirror.ns.a", "divergeLsn": token})
        wait_for(lambda: (lambda s: s["state"] == "streaming" and s["appliedLsn"] >= state(b.url)["lastLsn"])(
            state(a.url)), what="the old primary caught up as a mirror")
        assert http("GET", f"{a.url}/v1/tables/t/blocks/after")[1] == b"on b"
        assert json.loads(http("GET", f"{a.url}/v1/replication")[1])["role"] == "mirror"
    finally:
        b.stop()
        a.stop()
