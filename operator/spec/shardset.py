"""ShardSet spec: the model the ShardSet controller builds its children from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chronoshard.operator.naming import APP_VERSION
from chronoshard.operator.spec.common import Fields, SpecError, parse_quantity

DEFAULT_IMAGE = f"ghcr.io/chronoshard/chronoshard:{APP_VERSION}"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
KEY_ALGORITHMS = ("AES-256-GCM",)
EVICTION_POLICIES = ("lru", "scored")
CONTAINERS = ("node", "cache", "predictor")
KEY_PROVIDERS = ("embedded", "none")
SECRET_NAME_PATTERN = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
TABLE_NAME_PATTERN = r"[a-z0-9]([-a-z0-9_]*[a-z0-9])?"
MAX_TABLES = 64
MAX_TOLERATIONS = 32


@dataclass(frozen=True)
class KeyEncryption:
    """How table key versions are stored: wrapped under a KEK (``embedded``) or raw (``none``)."""

    provider: str = "embedded"
    kek_secret: str | None = None  # the user's Secret; None: the operator's ``<shardset>-kek``

    @property
    def wrapped(self) -> bool:
        """True when new keyrings hold wrapped versions and the pods mount the KEK."""
        return self.provider == "embedded"


@dataclass(frozen=True)
class ShardSetSpec:
    """A parsed, defaulted ShardSet spec."""

    shards: int
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    tables: tuple[str, ...] = ("default",)
    table_descriptions: Mapping[str, str] = field(default_factory=dict)
    key_algorithm: str = "AES-256-GCM"
    storage_size: str | int = "1Gi"
    storage_class: str | None = None
    cache_size: str | int = "256Mi"
    cache_size_bytes: int = 256 * 2**20
    eviction_policy: str = "scored"
    # {"node": {"requests": {"cpu": "100m"}, "limits": {...}}, "cache": {}, "predictor": {}}
    resources: Mapping[str, Mapping[str, Mapping[str, str | int]]] = field(default_factory=dict)
    # camelCase keys as in the CRD: labels, annotations, nodeSelector, tolerations, priorityClassName
    pod_template: Mapping[str, Any] = field(default_factory=dict)
    pdb_max_unavailable: int = 1
    key_encryption: KeyEncryption = field(default_factory=KeyEncryption)


def parse_shardset(spec: Mapping[str, Any] | None) -> ShardSetSpec:
    """Validate and default a ShardSet `spec` exactly as the CRD schema does; raise SpecError otherwise."""
    f = Fields.root(spec)
    shards = f.required_integer("shards", minimum=1, maximum=256)
    image = f.string("image", default=DEFAULT_IMAGE, min_length=1, max_length=512)
    pull = f.string("imagePullPolicy", default="IfNotPresent", enum=PULL_POLICIES)
    tables, descriptions = _tables(f)
    key_algorithm = f.string("keyAlgorithm", default="AES-256-GCM", enum=KEY_ALGORITHMS)
    key_encryption = _key_encryption(f.obj("keyEncryption"))

    storage = f.obj("storage")
    storage_size = storage.quantity("size", default="1Gi")
    storage_class = storage.string("storageClassName", min_length=1, max_length=253)
    storage.done()

    cache = f.obj("cache")
    cache_size = cache.quantity("size", default="256Mi")
    eviction = cache.string("evictionPolicy", default="scored", enum=EVICTION_POLICIES)
    cache.done()

    resources = _resources(f.obj("resources"))
    pod_template = _pod_template(f.obj("podTemplate"))

    pdb = f.obj("podDisruptionBudget")
    max_unavailable = pdb.integer("maxUnavailable", default=1, minimum=0)
    pdb.done()
    f.done()

    return ShardSetSpec(
        shards=shards,
        image=image,
        image_pull_policy=pull,
        tables=tables,
        table_descriptions=descriptions,
        key_algorithm=key_algorithm,
        storage_size=storage_size,
        storage_class=storage_class,
        cache_size=cache_size,
        cache_size_bytes=parse_quantity(cache_size, "spec.cache.size"),
        eviction_policy=eviction,
        resources=resources,
        pod_template=pod_template,
        pdb_max_unavailable=max_unavailable,
        key_encryption=key_encryption,
    )


def _key_encryption(f: Fields) -> KeyEncryption:
    provider = f.string("provider", default="embedded", enum=KEY_PROVIDERS)
    ref = f.maybe_obj("kekSecretRef")
    kek_secret: str | None = None
    if ref is not None:
        kek_secret = ref.required_string("name", pattern=SECRET_NAME_PATTERN, max_length=253)
        ref.done()
    f.done()
    if kek_secret is not None and provider != "embedded":
        # The CRD's CEL rule (fieldPath .kekSecretRef) refuses the same combination.
        raise SpecError("spec.keyEncryption.kekSecretRef", "kekSecretRef needs provider embedded")
    return KeyEncryption(provider=provider, kek_secret=kek_secret)


def _tables(f: Fields) -> tuple[tuple[str, ...], dict[str, str]]:
    items = f.array("tables", min_items=1, max_items=MAX_TABLES, default=[{"name": "default"}])
    names: list[str] = []
    descriptions: dict[str, str] = {}
    for i, item in enumerate(items):
        t = Fields(item, f"spec.tables[{i}]")
        name = t.required_string("name", pattern=TABLE_NAME_PATTERN, max_length=63)
        description = t.string("description", max_length=256)
        t.done()
        if name in names:
            # list-map keyed by name: the API server reports the duplicate key as "Duplicate value".
            raise SpecError(f"spec.tables[{i}]", f"Duplicate value: table {name!r}")
        names.append(name)
        if description is not None:
            descriptions[name] = description
    return tuple(names), descriptions


def _resources(f: Fields) -> dict[str, dict[str, dict[str, str | int]]]:
    out: dict[str, dict[str, dict[str, str | int]]] = {}
    for container in CONTAINERS:
        c = f.obj(container)
        shaped: dict[str, dict[str, str | int]] = {}
        for kind in ("requests", "limits"):
            r = c.obj(kind)
            values = {name: r.quantity(name) for name in ("cpu", "memory")}
            r.done()
            present = {k: v for k, v in values.items() if v is not None}
            if present:
                shaped[kind] = present
        c.done()
        out[container] = shaped
    f.done()
    return out


def _pod_template(f: Fields) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("labels", "annotations", "nodeSelector"):
        value = f.string_map(key)
        if value:
            out[key] = value
    tolerations = f.array("tolerations", max_items=MAX_TOLERATIONS)
    for i, item in enumerate(tolerations):
        if not isinstance(item, Mapping):
            raise SpecError(f"spec.podTemplate.tolerations[{i}]", "must be an object")
    if tolerations:
        out["tolerations"] = [dict(t) for t in tolerations]
    priority = f.string("priorityClassName", min_length=1, max_length=253)
    if priority is not None:
        out["priorityClassName"] = priority
    f.done()
    return out
