"""Run a ShardSet's shard processes on 127.0.0.1 the way the pod spec runs them (docs/interfaces.md).

Each shard gets a real ``chronoshard-node`` (its own data dir, the shared keyring and partition-map
volumes in kubelet's ``..data`` layout, ``--shard-index i``) on a free port, and optionally a real
``chronoshard-cache`` in front of it that forwards keys it does not own to the owner's cache.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from chronoshard.shardnode.keyspace.partitioning import PartitionMap

from tests.support.waiting import wait_for

BIN = Path(sys.executable).parent


def stop_all(procs: list[subprocess.Popen[bytes]], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` s (a node may sit out a cache's change-log long-poll)."""
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def publish(volume: Path, files: dict[str, bytes]) -> None:
    """Write files as kubelet updates a Secret/ConfigMap volume: new snapshot, atomic ``..data`` swap."""
    volume.mkdir(parents=True, exist_ok=True)
    snap = volume / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    snap.mkdir()
    for name, data in files.items():
        (snap / name).write_bytes(data)
    tmp = volume / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(snap.name)
    os.replace(tmp, volume / "..data")
    for name in files:
        link = volume / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def write_keyring(volume: Path) -> None:
    manifest = (b'{"format": 1, "generation": 1, "algorithm": "AES-256-GCM", "versions": '
                b'[{"id": 1, "state": "primary", "created": "2026-11-21T10:00:00Z"}]}')
    publish(volume, {"keyring.json": manifest, "v1.key": secrets.token_bytes(32)})


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until ``url``/readyz answers 200; ``timeout`` only bounds a hung start (several cold starts at once on
    two busy cores took over 20 s)."""
    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(ready, timeout, interval=0.1, what=f"{url}/readyz")


class ShardNodes:
    """N ``chronoshard-node`` processes sharing one keyring and one partition-map volume (``own_maps``: one
    map volume per shard, so a test can hand a new map to one shard before another, as a cutover does)."""

    def __init__(self, root: Path, pmap: PartitionMap, count: int | None = None, *, own_maps: bool = False) -> None:
        self.root = root
        self.keyring = root / "keyring"
        self.partitions = root / "partitions"
        self.own_maps, self._latest = own_maps, pmap
        write_keyring(self.keyring)
        self.publish_map(pmap)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        # Every node started before any is waited for: a cold start is mostly imports, which overlap.
        started = [self._spawn() for _ in range(count if count is not None else pmap.shards)]
        for url, proc in started:
            wait_ready(url, proc)

    def publish_map(self, pmap: PartitionMap, shards: list[int] | None = None) -> None:
        """What the operator does: update the partition ConfigMap (kubelet swaps the volume); with ``own_maps``
        only the volumes of ``shards`` (default: every shard started)."""
        if shards is None:
            self._latest = pmap  # what a shard started later mounts
        if not self.own_maps:
            publish(self.partitions, {"map.json": pmap.to_json().encode()})
            return
        for i in range(len(getattr(self, "procs", []))) if shards is None else shards:
            publish(self.map_volume(i), {"map.json": pmap.to_json().encode()})

    def map_volume(self, shard: int) -> Path:
        """The partition-map volume shard ``shard``'s node (and cache) mounts."""
        return self.partitions / f"shard-{shard}" if self.own_maps else self.partitions

    def add(self) -> str:
        """Start the next shard's node; returns its URL once ready."""
        url, proc = self._spawn()
        wait_ready(url, proc)
        return url

    def _spawn(self) -> tuple[str, subprocess.Popen[bytes]]:
        """Start the next shard's node (not waited for); its URL and process."""
        i = len(self.procs)
        port = free_port()
        data = self.root / f"data-{i}"
        data.mkdir()
        if self.own_maps:
            publish(self.map_volume(i), {"map.json": self._latest.to_json().encode()})
        with open(self.root / f"node-{i}.log", "wb") as log:
            proc = subprocess.Popen(
                [str(BIN / "chronoshard-node"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                 "--data-dir", str(data), "--keyring-dir", str(self.keyring),
                 "--partition-map", str(self.map_volume(i) / "map.json"), "--shard-index", str(i),
                 "--log-level", "WARNING"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        self.procs.append(proc)
        self.urls.append(url)
        return url, proc

    def stop(self) -> None:
        stop_all(self.procs)


class ShardCaches:
    """A ``chronoshard-cache`` per shard in front of its node (as in the pod); they forward to each other."""

    def __init__(self, nodes: ShardNodes) -> None:
        ports = [free_port() for _ in nodes.urls]
        self.urls = [f"http://127.0.0.1:{p}" for p in ports]
        # In a pod the peers are the headless-Service DNS names; local processes get explicit URLs.
        env = dict(os.environ, CHRONOSHARD_PEER_URLS=",".join(self.urls))
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, (node_url, port) in enumerate(zip(nodes.urls, ports, strict=True)):
            with open(nodes.root / f"cache-{i}.log", "wb") as log:
                self.procs.append(subprocess.Popen(
                    [str(BIN / "chronoshard-cache"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                     "--node-url", node_url, "--keyring-dir", str(nodes.keyring),
                     "--partition-map", str(nodes.map_volume(i) / "map.json"), "--shard-index", str(i),
                     "--log-level", "WARNING"],
                    stdout=log, stderr=subprocess.STDOUT, env=env))
        for url, proc in zip(self.urls, self.procs, strict=True):
            wait_ready(url, proc)

    def stop(self) -> None:
        stop_all(self.procs)
