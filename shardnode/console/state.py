"""What the console's handlers share: sessions, the API server (as the console and as the user), the user's
access reviews and the shard clients; kept on the app under ``CONSOLE``."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from chronoshard.shardnode.auth.apiserver import ApiServer

from .access import UserAccess
from .kube import UserKube
from .proxyauth import ProxySettings
from .ratelimit import FailureLimiter
from .sessions import SessionStore
from .shards import ShardClients


@dataclass
class Console:
    """The console process's state; ``secure_cookie``: the session cookie is marked Secure (served over TLS);
    ``proxy``: the auth-proxy mode's settings (None: token sign-in only)."""

    sessions: SessionStore
    api: ApiServer  # TokenReview and SubjectAccessReview, as the console
    access: UserAccess
    kube: UserKube  # custom resources, as the signed-in user
    shards: ShardClients  # the shadows, as the console
    secure_cookie: bool = False
    limiter: FailureLimiter = field(default_factory=FailureLimiter)  # failed sign-ins per client address
    proxy: ProxySettings | None = None

    async def start(self, app: web.Application) -> None:
        """Nothing to open before serving: sessions open on first use."""

    async def shutting_down(self, app: web.Application) -> None:
        """No long polls to release."""

    async def stop(self, app: web.Application) -> None:
        """Close the pooled sessions."""
        await self.shards.close()
        await self.kube.close()
        await self.api.close()


CONSOLE = web.AppKey("chronoshard_console", Console)
