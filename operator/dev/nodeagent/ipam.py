"""Pod IP allocation on loopback (127.0.0.2, 127.0.0.3, ...), persisted so an agent restart keeps IPs."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

# 127.0.0.1 is the node (hostIP); the whole 127.0.0.0/8 is loopback on Linux, so every pod gets its own.
_FIRST = int(ipaddress.IPv4Address("127.0.0.2"))
_LAST = int(ipaddress.IPv4Address("127.255.255.254"))


class IPAllocator:
    """Maps pod UIDs to loopback addresses; the table lives in one JSON file written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_uid: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

    def allocate(self, uid: str) -> str:
        """The pod's IP: the one it already has, else the lowest free address."""
        if uid in self._by_uid:
            return self._by_uid[uid]
        used = {int(ipaddress.IPv4Address(ip)) for ip in self._by_uid.values()}
        for candidate in range(_FIRST, _LAST + 1):
            if candidate not in used:
                ip = str(ipaddress.IPv4Address(candidate))
                self._by_uid[uid] = ip
                self._save()
                return ip
        raise RuntimeError("no free loopback address left for pods")

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
