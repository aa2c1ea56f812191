"""Pod IP allocation: 127.0.0.2, 127.0.0.3, ... by default, persisted so an agent restart keeps IPs.

The whole 127.0.0.0/8 is loopback on Linux, so every pod can bind its own address without privileges.
Another range works the same once it is assigned to ``lo`` (e.g. ``ip addr add 10.88.0.1/16 dev lo``,
possible without root inside ``unshare -rn``); unlike loopback addresses, the API server accepts those
in Endpoints/EndpointSlices.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

DEFAULT_POD_CIDR = "127.0.0.0/8"


class IPAllocator:
    """Maps pod UIDs to loopback addresses; the table lives in one JSON file written atomically."""

    def __init__(self, path: Path, pod_cidr: str = DEFAULT_POD_CIDR) -> None:
        self.path = path
        network = ipaddress.IPv4Network(pod_cidr)
        if network.num_addresses < 4:
            raise ValueError(f"pod CIDR {pod_cidr} is too small")
        # .0 is the network, .1 the node (127.0.0.1) or the address put on lo; the last is broadcast.
        self._first = int(network.network_address) + 2
        self._last = int(network.broadcast_address) - 1
        self._by_uid: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

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
        tmp.write_text(json.dumps(self._by_uid, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
