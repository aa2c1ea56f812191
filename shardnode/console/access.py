"""What the signed-in user may do, asked of Kubernetes with a SubjectAccessReview (user and groups), the answers
cached briefly: the console calls the shadows with its own identity, so it must never do for a user what
kubectl would not let that user do."""

from __future__ import annotations

import time
from collections.abc import Callable

from chronoshard.shardnode.auth.apiserver import ApiServer
from chronoshard.shardnode.auth.policy import RESOURCE, ReviewAttributes
from chronoshard.shardnode.auth.singleflight import SingleFlight
from chronoshard.shardnode.auth.ttlcache import TTLCache

CACHE_SECONDS = 10.0
CACHE_SIZE = 10_000

AccessKey = tuple[str, tuple[str, ...], str, str, str, str]


def data_attributes(verb: str, table: str) -> ReviewAttributes:
    """``verb`` on ``shardsets/data`` named ``table``: what the shadow route would ask of a direct caller."""
    return ReviewAttributes(verb, f"{RESOURCE}/data", table)


def reversion_attributes(verb: str, name: str) -> ReviewAttributes:
    """``verb`` on the Reversion ``name``."""
    return ReviewAttributes(verb, "reversions", name)


class UserAccess:
    """SubjectAccessReviews for signed-in users; allowed and denied answers alike kept ``ttl`` seconds."""

    def __init__(self, api: ApiServer, *, ttl: float = CACHE_SECONDS, size: int = CACHE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api, self.ttl = api, ttl
        self.cache: TTLCache[AccessKey, bool] = TTLCache(size, clock)
        self.inflight: SingleFlight[AccessKey, bool] = SingleFlight()
        self.reviews = 0  # SubjectAccessReviews sent (tests)

    async def allowed(self, user: str, groups: tuple[str, ...], namespace: str, attrs: ReviewAttributes) -> bool:
        """May ``user`` (in ``groups``) do ``attrs`` in ``namespace``."""
        key: AccessKey = (user, groups, namespace, attrs.verb, attrs.resource, attrs.name)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        return await self.inflight.run(key, lambda: self._ask(key, user, groups, namespace, attrs))

    async def _ask(self, key: AccessKey, user: str, groups: tuple[str, ...], namespace: str,
                   attrs: ReviewAttributes) -> bool:
        self.reviews += 1
        status = await self.api.subject_access_review({"user": user, "groups": list(groups),
                                                       **attrs.spec(namespace)})
        allowed = bool(status.get("allowed")) and not status.get("denied")
        self.cache.put(key, allowed, self.ttl)
        return allowed
