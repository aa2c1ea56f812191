"""security.json (the ``NAME-config`` ConfigMap key): which ShardSet a server belongs to and whom it trusts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SecurityConfigError(ValueError):
    """security.json is missing, not JSON, or has a wrong field."""


@dataclass(frozen=True)
class SecurityConfig:
    """The parsed security.json (docs/security.md, "Interfaces")."""

    namespace: str
    name: str
    audience: str
    pod_identity: str
    operator_identities: tuple[str, ...] = ()
    accept_kubeconfig_tokens: bool = False
    cache_ttl_seconds: float = 10.0
    cache_size: int = 10000
    # Peer MirrorSet members' pod identities (certificate CNs): accepted only as `replica`, for REPLICATION routes.
    replica_identities: tuple[str, ...] = ()


def _str(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise SecurityConfigError(f"{key} must be a non-empty string")
    return value


def _number(doc: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise SecurityConfigError(f"{key} must be a number between {lo:g} and {hi:g}")
    return float(value)


def parse_security_config(doc: Any) -> SecurityConfig:
    """Validate a security.json document."""
    if not isinstance(doc, dict):
        raise SecurityConfigError("security.json must be a JSON object")
    shard_set = doc.get("shardSet")
    if not isinstance(shard_set, dict):
        raise SecurityConfigError("shardSet must be an object with namespace and name")
    operators = doc.get("operatorIdentities", [])
    if not isinstance(operators, list) or not all(isinstance(o, str) and o for o in operators):
        raise SecurityConfigError("operatorIdentities must be a list of non-empty strings")
    replicas = doc.get("replicaIdentities", [])
    if not isinstance(replicas, list) or not all(isinstance(r, str) and r for r in replicas):
        raise SecurityConfigError("replicaIdentities must be a list of non-empty strings")
    accept = doc.get("acceptKubeconfigTokens", False)
    if not isinstance(accept, bool):
        raise SecurityConfigError("acceptKubeconfigTokens must be true or false")
    cfg = SecurityConfig(
        namespace=_str(shard_set, "namespace"), name=_str(shard_set, "name"), audience=_str(doc, "audience"),
        pod_identity=_str(doc, "podIdentity"), operator_identities=tuple(operators),
        accept_kubeconfig_tokens=accept,
        cache_ttl_seconds=_number(doc, "cacheTTLSeconds", 10, 0, 3600),
        cache_size=int(_number(doc, "cacheSize", 10000, 1, 10_000_000)),
        replica_identities=tuple(replicas))
    if set(cfg.replica_identities) & {cfg.pod_identity, *cfg.operator_identities}:
        # A peer's certificate must never pass for this ShardSet's pods or the operator.
        raise SecurityConfigError("replicaIdentities must not name podIdentity or an operator identity")
    return cfg


def load_security_config(path: str | Path) -> SecurityConfig:
    """Read and validate security.json (at start-up, before the event loop runs)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SecurityConfigError(f"{path}: {exc}") from None
    return parse_security_config(doc)
