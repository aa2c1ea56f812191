"""Where the client's bearer token comes from, in order: explicit, ``$CHRONOSHARD_TOKEN``, a projected token file.

A ``Credentials`` object is a chain of labelled sources; the first that yields a non-empty token wins, and its
label (never the token) is what error messages name. The token file is re-read when it changes on disk: the
kubelet rewrites a projected ServiceAccount token (by swapping the volume's ``..data`` link) long before it expires.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ENV_TOKEN = "CHRONOSHARD_TOKEN"
DEFAULT_TOKEN_FILE = Path("/var/run/secrets/chronoshard.io/token")

TokenGetter = Callable[[], "str | None | Awaitable[str | None]"]


def audience(namespace: str, shardset: str) -> str:
    """The token audience a ShardSet's servers accept (docs/security.md)."""
    return f"chronoshard.io/{namespace}/{shardset}"


@dataclass(frozen=True)
class TokenSource:
    """One place a token may come from; ``label`` names it in messages (``$CHRONOSHARD_TOKEN``, a path, ...)."""

    label: str
    get: TokenGetter
    refused_hint: str = ""  # said after a 401 to a token from here (what to use instead)

    def __repr__(self) -> str:
        return f"TokenSource({self.label!r})"  # the getter may close over a token: never show it


class TokenFile:
    """A token file, read again whenever its inode, size or modification time changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self._token: str | None = None

    def __call__(self) -> str | None:
        """The file's token, or None while the file does not exist or is empty."""
        try:
            st = self.path.stat()  # follows the ..data symlink, so a kubelet swap shows as a new inode
        except OSError:
            self._seen, self._token = None, None
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._seen:
            try:
                self._token = self.path.read_text().strip() or None
            except OSError:
                return None
            self._seen = stamp
        return self._token


class Credentials:
    """A chain of token sources; ``bearer()`` gives the first token found and remembers where it came from."""

    def __init__(self, sources: Sequence[TokenSource], *, how_to: str = "") -> None:
        self.sources = tuple(sources)
        self.how_to = how_to
        self.last_source: str | None = None

    @classmethod
    def default(cls, *, token: str | None = None, token_provider: TokenGetter | None = None,
                token_file: str | Path | None = None, environ: Mapping[str, str] | None = None,
                audience: str | None = None) -> Credentials:
        """Explicit ``token``/``token_provider``, else ``$CHRONOSHARD_TOKEN``, else the (default) token file."""
        if token is not None and token_provider is not None:
            raise ValueError("give token or token_provider, not both")
        sources: list[TokenSource] = []
        if token is not None:
            sources.append(fixed_source("the token= argument", token))
        if token_provider is not None:
            sources.append(TokenSource("the token_provider= callable", token_provider))
        return cls(sources + standard_sources(token_file, environ), how_to=how_to_hint(audience))

    async def bearer(self) -> str | None:
        """The first non-empty token of the chain (None if there is none); sets ``last_source``."""
        for src in self.sources:
            value = src.get()
            if inspect.isawaitable(value):
                value = await value
            if value:
                self.last_source = src.label
                return value
        self.last_source = None
        return None

    def explain_refusal(self) -> str:
        """What to tell the user after a 401: what was sent (by source, never the token) or what is missing."""
        used = next((s for s in self.sources if s.label == self.last_source), None)
        if used is not None:
            return used.refused_hint or (f"The token from {used.label} was refused (expired, or not for this "
                                         "ShardSet's audience?)")
        looked = ", ".join(s.label for s in self.sources) or "nowhere"
        return f"No credential was sent: none found in {looked}. {self.how_to}".rstrip()

    def __repr__(self) -> str:
        return f"Credentials({[s.label for s in self.sources]!r})"


def fixed_source(label: str, token: str) -> TokenSource:
    """A source that always gives ``token`` (an argument or a flag)."""
    fixed = token.strip()
    return TokenSource(label, lambda: fixed or None)


def standard_sources(token_file: str | Path | None = None,
                     environ: Mapping[str, str] | None = None) -> list[TokenSource]:
    """``$CHRONOSHARD_TOKEN`` (read now) and the token file (``token_file`` or the default path, read per use)."""
    env = os.environ if environ is None else environ
    sources = [fixed_source(f"${ENV_TOKEN}", env[ENV_TOKEN])] if env.get(ENV_TOKEN, "").strip() else []
    path = Path(token_file) if token_file is not None else DEFAULT_TOKEN_FILE
    return sources + [TokenSource(f"the token file {path}", TokenFile(path))]


def how_to_hint(aud: str | None = None) -> str:
    """How to provide a token (the audience filled in when known)."""
    aud_text = aud or "chronoshard.io/NAMESPACE/SHARDSET"
    return (f"Pass token=/token_provider=, set ${ENV_TOKEN}, or mount a projected serviceAccountToken with "
            f"audience {aud_text} at {DEFAULT_TOKEN_FILE}")
