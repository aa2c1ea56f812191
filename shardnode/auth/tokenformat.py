"""The tiered access token (docs/tokens.md, "The token"): its claims, how it is signed and how it is verified.

One module for both sides: the token service signs with ``encode``; nodes, caches and the client verify with
``decode_verified`` (offline: the service's Ed25519 public keys by ``kid``). Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ISSUER_PREFIX = "chronoshard-tokens:"
AUDIENCE = "chronoshard"
TIERS = ("valid", "temporary", "provisional")
VERBS = ("get", "list", "update", "delete")

# The refusal reasons of the contract (401 bodies of nodes and caches).
REASON_EXPIRED = "token_expired"
REASON_REVOKED = "token_revoked"
REASON_INVALID = "token_invalid"
REASON_UNKNOWN_KEY = "unknown_key"
REASON_WRONG_ISSUER = "wrong_issuer"


class TokenError(Exception):
    """A token that must be refused; ``reason`` is one of the contract's reasons (never the token itself)."""

    reason = REASON_INVALID

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason


class TokenExpired(TokenError):
    """``exp`` is past."""

    reason = REASON_EXPIRED


class TokenRevoked(TokenError):
    """The ``jti`` is on the revocation list (raised by the callers that hold the list)."""

    reason = REASON_REVOKED


class TokenInvalid(TokenError):
    """Malformed, bad signature, wrong audience or algorithm, or claims outside the contract."""

    reason = REASON_INVALID


class UnknownKey(TokenError):
    """The header's ``kid`` names no key the verifier holds."""

    reason = REASON_UNKNOWN_KEY


class WrongIssuer(TokenError):
    """``iss`` is not the expected token service."""

    reason = REASON_WRONG_ISSUER


@dataclass(frozen=True)
class Scope:
    """What the token allows: ``tables`` None = every table allowed at issuance; ``keys`` None = every key."""

    verbs: tuple[str, ...] = ("get", "list")
    tables: tuple[str, ...] | None = None
    keys: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The claim's JSON shape."""
        return {
            "tables": None if self.tables is None else list(self.tables),
            "keys": None if self.keys is None else list(self.keys),
            "verbs": list(self.verbs),
        }

    @classmethod
    def from_json(cls, doc: Any) -> Scope:
        """Parse the ``scope`` claim; TokenInvalid when it is not the contract's shape."""
        if not isinstance(doc, dict):
            raise TokenInvalid("scope is not an object")
        verbs = _str_list(doc.get("verbs"), "scope.verbs")
        if verbs is None or any(v not in VERBS for v in verbs):
            raise TokenInvalid("scope.verbs")
        return cls(verbs=verbs, tables=_str_list(doc.get("tables"), "scope.tables"),
                   keys=_str_list(doc.get("keys"), "scope.keys"))

    def allows(self, verb: str, table: str | None = None, key: str | None = None) -> bool:
        """Whether a data access (verb, table, key) is inside this scope."""
        if verb not in self.verbs:
            return False
        if self.tables is not None and (table is None or table not in self.tables):
            return False
        return self.keys is None or (key is not None and key in self.keys)


@dataclass(frozen=True)
class Claims:
    """The claims of a tiered token (docs/tokens.md, "The token")."""

    iss: str
    sub: str
    jti: str
    iat: int
    exp: int
    tier: str
    store: str
    scope: Scope
    ms: str
    aud: str = AUDIENCE
    lsn: dict[str, int] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        """The JWT payload."""
        doc: dict[str, Any] = {
            "iss": self.iss, "sub": self.sub, "aud": self.aud, "jti": self.jti, "iat": self.iat,
            "exp": self.exp, "tier": self.tier, "store": self.store, "scope": self.scope.to_json(), "ms": self.ms,
        }
        if self.lsn is not None:
            doc["lsn"] = dict(self.lsn)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Claims:
        """Parse a payload; TokenInvalid for any claim outside the contract."""
        strings = {name: doc.get(name) for name in ("iss", "sub", "jti", "tier", "store", "ms", "aud")}
        for name, value in strings.items():
            if not isinstance(value, str) or not value:
                raise TokenInvalid(f"claim {name}")
        times = {name: doc.get(name) for name in ("iat", "exp")}
        for name, value in times.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise TokenInvalid(f"claim {name}")
        if strings["tier"] not in TIERS:
            raise TokenInvalid("claim tier")
        return cls(iss=str(strings["iss"]), sub=str(strings["sub"]), jti=str(strings["jti"]),
                   iat=int(times["iat"] or 0), exp=int(times["exp"] or 0), tier=str(strings["tier"]),
                   store=str(strings["store"]), scope=Scope.from_json(doc.get("scope")), ms=str(strings["ms"]),
                   aud=str(strings["aud"]), lsn=_lsn(doc.get("lsn"), str(strings["tier"])))


def issuer_for(mirrorset: str) -> str:
    """The ``iss`` of the token service of ``<namespace>/<mirrorset>``."""
    return ISSUER_PREFIX + mirrorset


def key_id(public_key: Ed25519PublicKey) -> str:
    """The ``kid`` of a key: the first 8 hex digits of sha256 of the raw 32-byte public key."""
    return hashlib.sha256(raw_public_key(public_key)).hexdigest()[:8]


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of an Ed25519 public key."""
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_key_b64(public_key: Ed25519PublicKey) -> str:
    """The key as ``tokens.json`` carries it: standard base64 of the raw 32 bytes."""
    return base64.b64encode(raw_public_key(public_key)).decode("ascii")


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """Parse ``tokens.json``'s ``publicKey``; ValueError when it is not 32 raw bytes in base64."""
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_keys_from_json(keys: Sequence[Mapping[str, Any]]) -> dict[str, Ed25519PublicKey]:
    """``tokens.json``'s ``keys`` list as a map kid -> key; entries that do not parse are left out."""
    out: dict[str, Ed25519PublicKey] = {}
    for entry in keys:
        kid, text = entry.get("kid"), entry.get("publicKey")
        if not isinstance(kid, str) or not isinstance(text, str):
            continue
        try:
            out[kid] = public_key_from_b64(text)
        except ValueError:
            continue
    return out


def encode(claims: Claims, private_key: Ed25519PrivateKey, kid: str) -> str:
    """Sign the claims: a compact JWT with header ``{"alg": "EdDSA", "typ": "JWT", "kid": kid}``."""
    return jwt.encode(claims.to_json(), private_key, algorithm="EdDSA", headers={"kid": kid, "typ": "JWT"})


def decode_unverified_issuer(token: str) -> str | None:
    """The ``iss`` of a JWT-shaped token without verifying it (to pick the authenticator), else None."""
    try:
        doc = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    iss = doc.get("iss") if isinstance(doc, dict) else None
    return iss if isinstance(iss, str) else None


def decode_verified(token: str, public_keys: Mapping[str, Ed25519PublicKey], now: float,
                    audience: str = AUDIENCE, issuer: str | None = None) -> Claims:
    """Verify signature (by ``kid``), audience, issuer (when given) and expiry at ``now``; the claims or TokenError."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalid("malformed") from exc
    if header.get("alg") != "EdDSA":
        raise TokenInvalid("algorithm")
    kid = header.get("kid")
    key = public_keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise UnknownKey(f"kid {kid!r}" if isinstance(kid, str) else "no kid")
    try:
        # Time is checked below against the caller's `now` (PyJWT would use its own clock).
        doc = jwt.decode(token, key, algorithms=["EdDSA"], audience=audience,
                         options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                  "require": ["exp", "iat", "jti", "sub", "iss", "aud"]})
    except jwt.InvalidAudienceError as exc:
        raise TokenInvalid("audience") from exc
    except jwt.PyJWTError as exc:
        raise TokenInvalid("signature or claims") from exc
    claims = Claims.from_json(doc)
    if issuer is not None and claims.iss != issuer:
        raise WrongIssuer(f"issuer {claims.iss!r}")
    if not claims.iss.startswith(ISSUER_PREFIX):
        raise WrongIssuer(f"issuer {claims.iss!r}")
    if now >= claims.exp:
        raise TokenExpired("expired")
    return claims


def _str_list(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenInvalid(name)
    return tuple(value)


def _lsn(value: Any, tier: str) -> dict[str, int] | None:
    if value is None:
        if tier == "provisional":
            raise TokenInvalid("a provisional token carries lsn")
        return None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in value.items()):
        raise TokenInvalid("claim lsn")
    return {str(k): int(v) for k, v in value.items()}


def payload_json(claims: Claims) -> str:
    """The payload as canonical JSON (for logs of claims without the signature; never the token itself)."""
    return json.dumps(claims.to_json(), sort_keys=True, separators=(",", ":"))
