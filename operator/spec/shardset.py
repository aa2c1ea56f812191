"""ShardSet spec: the model the ShardSet controller builds its children from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chronoshard.operator.naming import APP_VERSION
from chronoshard.operator.spec.common import NAME_PATTERN, Fields, SpecError, parse_quantity
from chronoshard.operator.spec.shadowpolicy import ColdStorage, parse_cold_storage

DEFAULT_IMAGE = f"ghcr.io/chronoshard/chronoshard:{APP_VERSION}"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
KEY_ALGORITHMS = ("AES-256-GCM",)
EVICTION_POLICIES = ("lru", "scored")
CONTAINERS = ("node", "cache", "predictor", "shadow")
KEY_PROVIDERS = ("embedded", "none")
SECRET_NAME_PATTERN = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
TABLE_NAME_PATTERN = r"[a-z0-9]([-a-z0-9_]*[a-z0-9])?"
MAX_TABLES = 64
MAX_TOLERATIONS = 32
ISSUER_KINDS = ("Issuer", "ClusterIssuer")
ISSUER_GROUPS = ("cert-manager.io",)
MAX_PEERS = 32
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
# spec.access.clients when unset: every pod of the ShardSet's namespace (a NetworkPolicy peer).
ALL_PODS_OF_NAMESPACE: tuple[Mapping[str, Any], ...] = ({"podSelector": {}},)


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
class IssuerRef:
    """A cert-manager issuer that signs the pods' certificate instead of the operator's own CA."""

    name: str
    kind: str = "Issuer"
    group: str = "cert-manager.io"


@dataclass(frozen=True)
class Access:
    """Who may reach the pods over the network and how tokens are accepted (``spec.access``).

    ``clients`` and ``monitoring`` are NetworkPolicy peers (``podSelector`` / ``namespaceSelector``).
    """

    clients: tuple[Mapping[str, Any], ...] = ALL_PODS_OF_NAMESPACE
    monitoring: tuple[Mapping[str, Any], ...] = ()
    accept_kubeconfig_tokens: bool = False


@dataclass(frozen=True)
class FromShadow:
    """``spec.bootstrap.fromShadow``: fill new shard volumes from a ShadowPolicy's object-storage backup."""

    cold_storage: ColdStorage
    source_name: str
    keyring_secret: str
    source_namespace: str | None = None  # None: the ShardSet's own namespace
    point_in_time: datetime | None = None  # None: the newest point the backup holds
    kek_secret: str | None = None


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
    issuer_ref: IssuerRef | None = None  # spec.tls.issuerRef: cert-manager instead of the operator's CA
    access: Access = field(default_factory=Access)
    from_shadow: FromShadow | None = None  # spec.bootstrap.fromShadow
    rebalance: bool = False  # spec.partitioning.rebalance (docs/resharding.md)
    rebalance_grace_period: str = "5m"  # spec.partitioning.gracePeriod, as written (it goes into the Reshard)


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
    issuer_ref = _tls(f.obj("tls"))
    access = _access(f.obj("access"))
    from_shadow = _bootstrap(f.maybe_obj("bootstrap"), key_encryption)
    partitioning = f.obj("partitioning")
    rebalance = partitioning.boolean("rebalance", default=False)
    partitioning.duration("gracePeriod", default="5m")  # validated; kept as written for the rebalance Reshard
    grace = str(partitioning.data.get("gracePeriod") or "5m")
    partitioning.done()
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
        issuer_ref=issuer_ref,
        access=access,
        from_shadow=from_shadow,
        rebalance=rebalance,
        rebalance_grace_period=grace,
    )


def _secret_ref(f: Fields, key: str) -> str:
    ref = f.obj(key)
    name = ref.required_string("name", pattern=SECRET_NAME_PATTERN, max_length=253)
    ref.done()
    return name


def _bootstrap(f: Fields | None, key_encryption: KeyEncryption) -> FromShadow | None:
    if f is None:
        return None
    s = f.maybe_obj("fromShadow")
    f.done()
    if s is None:
        return None
    for key in ("coldStorage", "source", "keyringSecret"):
        if not s.has(key):
            raise SpecError(s.sub(key), "Required value")
    cold = parse_cold_storage(s.obj("coldStorage"))
    src = s.obj("source")
    source_ns = src.string("namespace", pattern=NAME_PATTERN, max_length=63)
    source_name = src.required_string("name", pattern=NAME_PATTERN, max_length=63)
    src.done()
    point = s.date_time("pointInTime")
    keyring = _secret_ref(s, "keyringSecret")
    kek = _secret_ref(s, "kekSecret") if s.has("kekSecret") else None
    s.done()
    # The CRD's CEL rules on spec (fieldPath .bootstrap.fromShadow.kekSecret) refuse the same.
    if kek is not None and not key_encryption.wrapped:
        raise SpecError(s.sub("kekSecret"), "bootstrap.fromShadow.kekSecret needs keyEncryption.provider embedded")
    if kek is not None and key_encryption.kek_secret not in (None, kek):
        raise SpecError(s.sub("kekSecret"), "bootstrap.fromShadow.kekSecret and keyEncryption.kekSecretRef must "
                                            "name the same Secret")
    return FromShadow(cold_storage=cold, source_name=source_name, keyring_secret=keyring,
                      source_namespace=source_ns, point_in_time=point, kek_secret=kek)


def _tls(f: Fields) -> IssuerRef | None:
    ref = f.maybe_obj("issuerRef")
    f.done()
    if ref is None:
        return None
    name = ref.required_string("name", min_length=1, max_length=253)
    kind = ref.string("kind", default="Issuer", enum=ISSUER_KINDS)
    group = ref.string("group", default="cert-manager.io", enum=ISSUER_GROUPS)
    ref.done()
    return IssuerRef(name=name, kind=kind, group=group)


def _label_selector(f: Fields) -> dict[str, Any]:
    out: dict[str, Any] = {}
    labels = f.string_map("matchLabels")
    if labels:
        out["matchLabels"] = labels
    expressions = []
    for i, item in enumerate(f.array("matchExpressions", max_items=MAX_PEERS)):
        e = Fields(item, f"{f.path}.matchExpressions[{i}]")
        key = e.required_string("key", min_length=1, max_length=317)
        op = e.required_string("operator", enum=SELECTOR_OPERATORS)
        values = e.array("values", max_items=64)
        for j, v in enumerate(values):
            if not isinstance(v, str):
                raise SpecError(f"{e.path}.values[{j}]", "must be a string")
        e.done()
        expressions.append({"key": key, "operator": op, **({"values": list(values)} if values else {})})
    if expressions:
        out["matchExpressions"] = expressions
    f.done()
    return out


def _peers(f: Fields, key: str) -> tuple[dict[str, Any], ...]:
    peers = []
    for i, item in enumerate(f.array(key, max_items=MAX_PEERS)):
        p = Fields(item, f"{f.sub(key)}[{i}]")
        peer = {name: _label_selector(p.obj(name)) for name in ("podSelector", "namespaceSelector")
                if p.has(name)}
        p.done()
        if not peer:
            # The CRD's CEL rule refuses the same: a peer must select something.
            raise SpecError(p.path, "a peer needs podSelector or namespaceSelector")
        peers.append(peer)
    return tuple(peers)


def _access(f: Fields) -> Access:
    clients = _peers(f, "clients") if f.has("clients") else ALL_PODS_OF_NAMESPACE
    monitoring = _peers(f, "monitoring")
    accept = f.boolean("acceptKubeconfigTokens", default=False)
    f.done()
    return Access(clients=clients, monitoring=monitoring, accept_kubeconfig_tokens=accept)


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
