"""The shards' shadows as the console itself calls them: its own ServiceAccount's token for each ShardSet's
audience (TokenRequest), TLS against the ShardSet's CA (ConfigMap ``NAME-ca``), each key routed to its owner by
the partition map (ConfigMap ``NAME-partitions``), the pods found by their labels; one client per ShardSet.

Everything here reads Kubernetes with the console's own identity: pods and ConfigMaps are plumbing, not data.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any

from chronoshard.shardnode.client.cli_tokens import ServiceAccountToken
from chronoshard.shardnode.client.credentials import Credentials, TokenSource, audience
from chronoshard.shardnode.client.discovery import ConfigMapMap, ShardSetPods, shardset_ca
from chronoshard.shardnode.client.errors import Unavailable
from chronoshard.shardnode.client.history import SHADOW_PORT, HistoryClient
from chronoshard.shardnode.client.transport import Transport
from kubernetes.client.exceptions import ApiException

MAX_SHARDSETS = 256


@dataclass(frozen=True)
class ServiceAccountRef:
    """The console's own ServiceAccount, whose tokens the shadows receive."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> ServiceAccountRef:
        """``NAMESPACE/NAME``."""
        ns, sep, name = text.partition("/")
        if not sep or not ns or not name or "/" in name:
            raise ValueError(f"a ServiceAccount is NAMESPACE/NAME, got {text!r}")
        return cls(ns, name)

    @classmethod
    def from_user(cls, user: str) -> ServiceAccountRef | None:
        """The ServiceAccount a ``system:serviceaccount:NS:NAME`` user name is, else None."""
        parts = user.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"] and parts[2] and parts[3]:
            return cls(parts[2], parts[3])
        return None


class ShardClients:
    """One HistoryClient per ShardSet (built on first use, off the event loop: it reads the API), at most
    MAX_SHARDSETS of them (the least recently used is closed first)."""

    def __init__(self, api_client: Any, account: ServiceAccountRef, *, port: int = SHADOW_PORT,
                 timeout: float = 10.0) -> None:
        self.api_client, self.account, self.port, self.timeout = api_client, account, port, timeout
        self._clients: OrderedDict[tuple[str, str], HistoryClient] = OrderedDict()
        self._lock = asyncio.Lock()

    def _build(self, namespace: str, name: str) -> HistoryClient:
        token = ServiceAccountToken(self.api_client, self.account.namespace, self.account.name,
                                    audience(namespace, name))
        where = f"the console's ServiceAccount {self.account.namespace}/{self.account.name}"
        creds = Credentials([TokenSource(where, token, f"the shadow refused {where}'s token (does the ShardSet's "
                                                      "access allow it? is its audience right?)")])
        transport = Transport(creds, ca_source=partial(shardset_ca, self.api_client, name, namespace),
                              ca_hint=f"CA from ConfigMap {namespace}/{name}-ca")
        pods = ShardSetPods(name, namespace, api_client=self.api_client, port=self.port)
        return HistoryClient(ConfigMapMap(name, namespace, api_client=self.api_client), pods.endpoint,
                             transport=transport, timeout=self.timeout, rediscover=pods.refresh)

    async def get(self, namespace: str, name: str) -> HistoryClient:
        """The client of ShardSet ``namespace/name``; Unavailable when its pods or CA cannot be read."""
        key = (namespace, name)
        async with self._lock:
            client = self._clients.get(key)
            if client is None:
                try:
                    client = await asyncio.to_thread(self._build, namespace, name)
                except ApiException as exc:
                    # Status and reason only: the exception's text carries the API server's whole answer.
                    raise Unavailable(f"the pods of ShardSet {namespace}/{name}",
                                      f"the Kubernetes API answered HTTP {exc.status} {exc.reason}") from None
                self._clients[key] = client
                while len(self._clients) > MAX_SHARDSETS:
                    _, old = self._clients.popitem(last=False)
                    await old.close()
            self._clients.move_to_end(key)
            return client

    async def forget(self, namespace: str, name: str) -> None:
        """Drop a ShardSet's client (its pods or CA could not be read: build it again next time)."""
        async with self._lock:
            client = self._clients.pop((namespace, name), None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        """Close every client (app cleanup)."""
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
