"""The token registry, ``tokens.sqlite3`` on the service's volume: every issued token, its state and successor,
and the revocations with a cursor (``GET /v1/revocations``). Survives restarts; expired rows pruned after a day.

Writes are small single-row transactions in WAL mode (no fsync per commit: a process crash loses nothing, only a
power loss could lose the last ones), made on the event loop's thread: they take well under a millisecond.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .predictive import HeldToken
from .tiers import Placement

PRUNE_AFTER_SECONDS = 86400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
  token_id TEXT PRIMARY KEY, service TEXT NOT NULL, scope TEXT NOT NULL, tier TEXT NOT NULL, store TEXT NOT NULL,
  issued_at REAL NOT NULL, expires_at REAL NOT NULL, state TEXT NOT NULL, superseded_by TEXT,
  kid TEXT NOT NULL, lsn TEXT, replacement TEXT, replacement_tier TEXT, replacement_store TEXT, revoked_at REAL,
  delivered INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS tokens_service ON tokens(service, issued_at);
CREATE INDEX IF NOT EXISTS tokens_store ON tokens(store, issued_at);
CREATE TABLE IF NOT EXISTS revocations (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, token_id TEXT NOT NULL, expires_at REAL NOT NULL, revoked_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class TokenRow:
    """One registry row. ``replacement`` is the pre-issued successor's token (a bearer token: only its holder and
    admins ever see it, through TokenStatusCheck)."""

    token_id: str
    service: str
    scope: dict[str, Any]
    tier: str
    store: str
    issued_at: float
    expires_at: float
    state: str
    superseded_by: str | None
    kid: str
    lsn: dict[str, int] | None = None
    replacement: str | None = None
    replacement_tier: str | None = None
    replacement_store: str | None = None
    revoked_at: float | None = None
    delivered: bool = True  # pre-issued tokens: False until a status check hands them out

    def state_at(self, now: float) -> str:
        """The state as reported: an active row past its expiry is ``expired``."""
        return "expired" if self.state == "active" and now >= self.expires_at else self.state

    def scope_key(self) -> str:
        """The scope as canonical JSON."""
        return json.dumps(self.scope, sort_keys=True, separators=(",", ":"))

    def held(self, now: float) -> HeldToken:
        """As the predictive decision sees it."""
        repl = (Placement(self.replacement_tier, self.replacement_store)
                if self.replacement_tier and self.replacement_store else None)
        return HeldToken(self.token_id, self.service, self.scope_key(), self.tier, self.store, self.state_at(now),
                         self.issued_at, self.expires_at, repl, self.delivered)


_COLUMNS = ("token_id, service, scope, tier, store, issued_at, expires_at, state, superseded_by, kid, lsn, "
            "replacement, replacement_tier, replacement_store, revoked_at, delivered")


def _row(r: Sequence[Any]) -> TokenRow:
    return TokenRow(token_id=r[0], service=r[1], scope=json.loads(r[2]), tier=r[3], store=r[4], issued_at=r[5],
                    expires_at=r[6], state=r[7], superseded_by=r[8], kid=r[9],
                    lsn=json.loads(r[10]) if r[10] else None, replacement=r[11], replacement_tier=r[12],
                    replacement_store=r[13], revoked_at=r[14], delivered=bool(r[15]))


class Registry:
    """tokens.sqlite3."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        # No checkpoint inside a request's commit (its fsyncs were the request's p99): checkpoint() runs them from
        # the sampling loop in a worker thread, on a connection of its own.
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.db.executescript(SCHEMA)
        self._checkpointer: sqlite3.Connection | None = None

    def close(self) -> None:
        """Close the connections."""
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.db.close()

    def checkpoint(self) -> None:
        """Move the WAL into the database file (blocking: call it from a worker thread)."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def insert(self, row: TokenRow) -> None:
        """Record a newly issued token."""
        self.db.execute(
            f"INSERT INTO tokens ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (row.token_id, row.service, json.dumps(row.scope, sort_keys=True), row.tier, row.store, row.issued_at,
             row.expires_at, row.state, row.superseded_by, row.kid,
             json.dumps(row.lsn) if row.lsn is not None else None, row.replacement, row.replacement_tier,
             row.replacement_store, row.revoked_at, int(row.delivered)))

    def get(self, token_id: str) -> TokenRow | None:
        """One row."""
        r = self.db.execute(f"SELECT {_COLUMNS} FROM tokens WHERE token_id = ?", (token_id,)).fetchone()
        return _row(r) if r else None

    def supersede(self, old: str, new: str) -> None:
        """The old token was refreshed into ``new``."""
        self.db.execute("UPDATE tokens SET state = 'superseded', superseded_by = ?, replacement = NULL "
                        "WHERE token_id = ? AND state = 'active'", (new, old))

    def set_replacement(self, token_id: str, token: str, tier: str, store: str) -> None:
        """A pre-issued successor for ``token_id`` (TokenStatusCheck hands it out)."""
        self.db.execute("UPDATE tokens SET replacement = ?, replacement_tier = ?, replacement_store = ? "
                        "WHERE token_id = ?", (token, tier, store, token_id))

    def clear_replacement(self, token_id: str) -> None:
        """Withdraw a pre-issued successor (the token's own tier is right again); the successor itself just expires."""
        self.db.execute("UPDATE tokens SET replacement = NULL, replacement_tier = NULL, replacement_store = NULL "
                        "WHERE token_id = ?", (token_id,))

    def mark_delivered(self, token_id: str) -> None:
        """A pre-issued token was handed to its holder."""
        self.db.execute("UPDATE tokens SET delivered = 1 WHERE token_id = ? AND delivered = 0", (token_id,))

    def revoke(self, token_id: str, now: float) -> TokenRow | None:
        """Mark revoked and append to the revocation list (once); the row, or None when unknown."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.get(token_id)
            if row is None:
                return None
            if row.state != "revoked":
                self.db.execute("UPDATE tokens SET state = 'revoked', revoked_at = ?, replacement = NULL "
                                "WHERE token_id = ?", (now, token_id))
                self.db.execute("INSERT INTO revocations (token_id, expires_at, revoked_at) VALUES (?,?,?)",
                                (token_id, row.expires_at, now))
        return self.get(token_id)

    def revocations(self, since: int, now: float, limit: int = 10000) -> tuple[list[dict[str, Any]], int]:
        """Revoked ids not yet expired after cursor ``since``, and the next cursor."""
        rows = self.db.execute("SELECT seq, token_id, expires_at FROM revocations WHERE seq > ? ORDER BY seq "
                               "LIMIT ?", (since, limit)).fetchall()
        cursor = rows[-1][0] if rows else since
        return [{"tokenId": r[1], "expiresAt": r[2]} for r in rows if r[2] > now], int(cursor)

    def active_revocations(self, now: float) -> list[dict[str, Any]]:
        """Every revocation whose token has not expired yet (what a node must hold)."""
        rows = self.db.execute("SELECT token_id, expires_at FROM revocations WHERE expires_at > ? ORDER BY seq",
                               (now,)).fetchall()
        return [{"tokenId": r[0], "expiresAt": r[1]} for r in rows]

    def recent(self, since: float, store: str | None = None) -> list[TokenRow]:
        """Tokens issued or still alive since ``since`` (for one store, or all)."""
        sql = f"SELECT {_COLUMNS} FROM tokens WHERE expires_at >= ?"
        args: list[Any] = [since]
        if store is not None:
            sql += " AND store = ?"
            args.append(store)
        return [_row(r) for r in self.db.execute(sql, args).fetchall()]

    def listing(self, *, service: str | None = None, state: str | None = None, now: float,
             limit: int = 100) -> list[TokenRow]:
        """The registry, newest first, filtered by service and reported state."""
        sql, args = f"SELECT {_COLUMNS} FROM tokens", []
        if service is not None:
            sql += " WHERE service = ?"
            args.append(service)
        sql += " ORDER BY issued_at DESC"
        rows = [_row(r) for r in self.db.execute(sql, args).fetchall()]
        if state is not None:
            rows = [r for r in rows if r.state_at(now) == state]
        return rows[:limit]

    def counts(self, now: float) -> dict[str, dict[str, int]]:
        """Tokens per tier and per reported state."""
        tiers: dict[str, int] = {}
        states: dict[str, int] = {}
        for tier, state, expires in self.db.execute("SELECT tier, state, expires_at FROM tokens"):
            tiers[tier] = tiers.get(tier, 0) + 1
            shown = "expired" if state == "active" and now >= expires else state
            states[shown] = states.get(shown, 0) + 1
        return {"tier": tiers, "state": states}

    def prune(self, now: float) -> int:
        """Drop rows expired more than a day ago (and their revocations)."""
        cut = now - PRUNE_AFTER_SECONDS
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM revocations WHERE expires_at < ?", (cut,))
            n = self.db.execute("DELETE FROM tokens WHERE expires_at < ?", (cut,)).rowcount
        return int(n)
