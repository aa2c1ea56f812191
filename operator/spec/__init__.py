"""Parsed, validated models of the chronoshard custom resources' specs (one module per kind).

Each `parse_<kind>(spec)` applies the CRD's defaults and refuses what the CRD schema refuses, raising
`SpecError` whose message names the field; `PARSERS` maps a kind to its parser.
"""

from collections.abc import Callable, Mapping
from typing import Any

from chronoshard.operator.spec.common import SpecError, parse_cpu_millis, parse_duration, parse_quantity
from chronoshard.operator.spec.keyrotation import KeyRotationSpec, parse_keyrotation
from chronoshard.operator.spec.mirrorset import MirrorSetSpec, parse_mirrorset
from chronoshard.operator.spec.prefetchpolicy import PrefetchPolicySpec, parse_prefetchpolicy
from chronoshard.operator.spec.reshard import ReshardSpec, parse_reshard
from chronoshard.operator.spec.reversion import ReversionSpec, parse_reversion
from chronoshard.operator.spec.shadowpolicy import ShadowPolicySpec, parse_shadowpolicy
from chronoshard.operator.spec.shardset import ShardSetSpec, parse_shardset
from chronoshard.operator.spec.weaveplan import WeavePlanSpec, parse_weaveplan

PARSERS: dict[str, Callable[[Mapping[str, Any] | None], object]] = {
    "ShardSet": parse_shardset,
    "KeyRotation": parse_keyrotation,
    "PrefetchPolicy": parse_prefetchpolicy,
    "ShadowPolicy": parse_shadowpolicy,
    "MirrorSet": parse_mirrorset,
    "WeavePlan": parse_weaveplan,
    "Reversion": parse_reversion,
    "Reshard": parse_reshard,
}

__all__ = [
    "PARSERS",
    "KeyRotationSpec",
    "MirrorSetSpec",
    "PrefetchPolicySpec",
    "ReshardSpec",
    "ReversionSpec",
    "ShadowPolicySpec",
    "ShardSetSpec",
    "SpecError",
    "WeavePlanSpec",
    "parse_cpu_millis",
    "parse_duration",
    "parse_keyrotation",
    "parse_mirrorset",
    "parse_prefetchpolicy",
    "parse_quantity",
    "parse_reshard",
    "parse_reversion",
    "parse_shadowpolicy",
    "parse_shardset",
    "parse_weaveplan",
]
