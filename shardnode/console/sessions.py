"""Signed-in browser sessions, in memory only: a random id (the cookie) to the user, their groups, their bearer
token and a CSRF token; each expires, and the store is bounded (the least recently used goes first)."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

SESSION_SECONDS = 8 * 3600.0
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Session:
    """One signed-in user; ``token`` is their Kubernetes bearer token (never logged, never shown); ``proxied``:
    signed in by the auth proxy (no token: the console impersonates them, and only while the proxy names them)."""

    user: str
    groups: tuple[str, ...]
    token: str = field(repr=False)
    csrf: str = field(repr=False)
    expires: float  # on the store's clock
    proxied: bool = False

    def csrf_matches(self, sent: str | None) -> bool:
        """The header's value equals this session's CSRF token (compared in constant time)."""
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


class SessionStore:
    """Session id → Session; ids are 256 random bits; an entry lives ``ttl`` seconds, at most ``size`` of them."""

    def __init__(self, *, ttl: float = SESSION_SECONDS, size: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1 or ttl <= 0:
            raise ValueError("a session store needs size >= 1 and ttl > 0")
        self.ttl, self.size, self.clock = ttl, size, clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: str, groups: tuple[str, ...], token: str, *, proxied: bool = False
               ) -> tuple[str, Session]:
        """A new session for a reviewed token (or a proxied user); its id and the session."""
        sid = secrets.token_urlsafe(32)
        session = Session(user, groups, token, secrets.token_urlsafe(32), self.clock() + self.ttl, proxied)
        self._sessions[sid] = session
        self._drop_expired()
        while len(self._sessions) > self.size:
            self._sessions.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session of ``sid`` (an expired one is dropped and None returned)."""
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if self.clock() >= session.expires:
            del self._sessions[sid]
            return None
        self._sessions.move_to_end(sid)
        return session

    def delete(self, sid: str | None) -> bool:
        """Sign out: forget the session; True if there was one."""
        return sid is not None and self._sessions.pop(sid, None) is not None

    def _drop_expired(self) -> None:
        now = self.clock()
        for sid in [s for s, v in self._sessions.items() if now >= v.expires]:
            del self._sessions[sid]

    def __len__(self) -> int:
        return len(self._sessions)
