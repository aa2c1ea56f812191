"""Pod IP allocation: 127.0.0.2, 127.0.0.3, ... by default, persisted so an agent restart keeps IPs.

The whole 127.0.0.0/8 is loopback on Linux, so every pod can bind its own address without privileges.
Several local clusters may run on one machine (a developer's cluster and the e2e tests' one): each
agent takes a /16 of its own — 127.0.0.0/16 for the first, then 127.1.0.0/16, ... — and holds an
exclusive ``flock`` on a per-range lock file while it runs, so two agents never hand out the same address.
Another range works the same once it is assigned to ``lo`` (e.g. ``ip addr add 10.88.0.1/16 dev lo``,
possible without root inside ``unshare -rn``); unlike loopback addresses, the API server accepts those
in Endpoints/EndpointSlices.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import tempfile
from pathlib import Path
from typing import IO

AUTO = "auto"
DEFAULT_POD_CIDR = AUTO


def default_lock_dir() -> Path:
    """Where range locks live: one directory per user in the machine's temp dir."""
    return Path(tempfile.gettempdir()) / f"chronoshard-dev-ipam-{os.getuid()}"


class IPAllocator:
    """Maps pod UIDs to addresses of one locked range; the table lives in one JSON file written atomically."""

    def __init__(self, path: Path, pod_cidr: str = DEFAULT_POD_CIDR, lock_dir: Path | None = None) -> None:
        self.path = path
        self._lock_dir = lock_dir or default_lock_dir()
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        saved = json.loads(path.read_text()) if path.exists() else {}
        self._by_uid: dict[str, str] = dict(saved.get("pods", {}))
        stored = saved.get("cidr")
        if stored and pod_cidr not in (AUTO, stored):
            raise ValueError(f"state dir uses pod CIDR {stored}; cannot switch to {pod_cidr} (use a new state dir)")
        wanted = stored or pod_cidr
        self._lock: IO[str] | None = None
        if wanted == AUTO:
            for second in range(256):
                if self._try_lock(f"127.{second}.0.0/16"):
                    wanted = f"127.{second}.0.0/16"
                    break
            else:
                raise RuntimeError("every 127.x.0.0/16 pod range is taken by other chronoshard-dev agents")
        elif not self._try_lock(wanted):
            raise RuntimeError(f"pod CIDR {wanted} is in use by another chronoshard-dev agent")
        network = ipaddress.IPv4Network(wanted)
        if network.num_addresses < 4:
            raise ValueError(f"pod CIDR {wanted} is too small")
        self.cidr = str(network)
        # .0 is the network, .1 the node (127.0.0.1) or the address put on lo; the last is broadcast.
        self._first = int(network.network_address) + 2
        self._last = int(network.broadcast_address) - 1
        self._save()

    def _try_lock(self, cidr: str) -> bool:
        # Held open for the agent's lifetime: the flock is the claim on the range.
        handle = open(self._lock_dir / (cidr.replace("/", "_") + ".lock"), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {self.path}\n")
        handle.flush()
        self._lock = handle
        return True

    def close(self) -> None:
        """Release the range (the agent does this by exiting)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def allocate(self, uid: str) -> str:
        """The pod's IP: the one it already has, else the lowest free address."""
        if uid in self._by_uid:
            return self._by_uid[uid]
        used = {int(ipaddress.IPv4Address(ip)) for ip in self._by_uid.values()}
        for candidate in range(self._first, self._last + 1):
            if candidate not in used:
                ip = str(ipaddress.IPv4Address(candidate))
                self._by_uid[uid] = ip
                self._save()
                return ip
        raise RuntimeError("no free address left in the pod CIDR")

    def release(self, uid: str) -> None:
        """Free the pod's IP (no-op if it has none)."""
        if self._by_uid.pop(uid, None) is not None:
            self._save()

    def allocations(self) -> dict[str, str]:
        """A copy of {uid: ip}."""
        return dict(self._by_uid)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cidr": self.cidr, "pods": self._by_uid}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
