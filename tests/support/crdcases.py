"""Loads the CRDs, their samples and the invalid cases; shared by the unit and integration tests."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO / "crds"
SAMPLES_DIR = CRDS_DIR / "samples"
INVALID_DIR = REPO / "tests" / "data" / "invalid"
GROUP = "chronoshard.io"
VERSION = "v1alpha1"
KINDS = ("ShardSet", "KeyRotation", "PrefetchPolicy", "ShadowPolicy", "MirrorSet", "WeavePlan", "Reversion", "Reshard")


@dataclass(frozen=True)
class InvalidCase:
    """An object the API server must refuse; `field` must appear in its error message."""

    path: Path
    obj: dict[str, Any]
    field: str
    why: str
    status: int  # 422 for schema/CEL errors, 400 for unknown fields under strict field validation

    @property
    def id(self) -> str:
        return self.path.stem


@functools.cache  # parsed once per session; callers treat the result as read-only
def load_crds() -> dict[str, dict[str, Any]]:
    """kind → CRD document, from crds/*.yaml."""
    crds = {}
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        crds[doc["spec"]["names"]["kind"]] = doc
    return crds


def plural(kind: str) -> str:
    """The resource name of a kind."""
    return load_crds()[kind]["spec"]["names"]["plural"]


def load_samples() -> list[tuple[Path, dict[str, Any]]]:
    """(path, object) for every sample."""
    return [(p, yaml.safe_load(p.read_text())) for p in sorted(SAMPLES_DIR.glob("*.yaml"))]


def load_invalid_cases() -> list[InvalidCase]:
    """Every invalid case; its header comments (`# field: ...`, `# why: ...`, `# status: ...`) annotate it."""
    cases = []
    for path in sorted(INVALID_DIR.glob("*.yaml")):
        text = path.read_text()
        header = dict(re.findall(r"^# (\w+): (.*)$", text, re.M))
        cases.append(InvalidCase(path=path, obj=yaml.safe_load(text), field=header["field"],
                                 why=header.get("why", ""), status=int(header.get("status", 422))))
    return cases


def sample(kind: str) -> dict[str, Any]:
    """The sample object of a kind."""
    return next(obj for _, obj in load_samples() if obj["kind"] == kind)


def invalid_cases(kind: str) -> list[InvalidCase]:
    """The invalid cases of a kind."""
    return [c for c in load_invalid_cases() if c.obj["kind"] == kind]


def spec_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of a kind's spec."""
    return load_crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


_STRINGS_BY_PATTERN = {
    r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$": "1h",
    r"^(@(yearly|annually|monthly|weekly|daily|hourly)|([0-9*/,?A-Za-z-]+ ){4}[0-9*/,?A-Za-z-]+)$": "@daily",
    r"^https?://[^\s/?#]+(/[^\s?#]*)?$": "http://a",  # an object-storage endpoint
    r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$": "abc",  # a bucket (at least 3 characters)
    r"^[0-9a-f]{16}$": "8000000000000000",  # a keyspace id
}


def maximal(schema: dict[str, Any], name: str = "x") -> Any:
    """A valid value that sets EVERY property the schema declares (defaults where given), so a parser that
    does not know a field of the CRD refuses it as unknown."""
    if "default" in schema and schema.get("type") != "object" and schema.get("type") != "array":
        return schema["default"]
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("x-kubernetes-int-or-string"):
        return "1"  # the smallest non-zero quantity stays below any threshold it is compared with
    kind = schema.get("type")
    if kind == "object":
        if "additionalProperties" in schema:
            return {"k": maximal(schema["additionalProperties"])}
        return {key: maximal(sub, key) for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        items = schema.get("items", {})
        if items.get("type") == "integer" and schema.get("minItems", 1) > 1:  # distinct: a set of ids
            return [items.get("minimum", 0) + i for i in range(schema["minItems"])]
        return [maximal(items, name)]
    return _maximal_scalar(kind, schema, name)


def _maximal_scalar(kind: str | None, schema: dict[str, Any], name: str) -> Any:
    if kind == "integer":
        return schema.get("minimum", 1)
    if kind == "number":
        return schema.get("minimum", 0.5)
    if kind == "boolean":
        return False
    if kind == "string":
        if schema.get("format") == "date-time":
            return "2026-11-22T00:00:00Z"
        if name == "namespace":  # a distinct namespace keeps a mirror from being its own source
            return "other"
        return _STRINGS_BY_PATTERN.get(schema.get("pattern", ""), "a")
    raise AssertionError(f"no maximal value for {schema}")


# Top-level spec fields no valid spec sets together (a CEL rule refuses the pair): each group in turn is the one
# a maximal spec keeps, the others are left out.
EXCLUSIVE: dict[str, tuple[tuple[str, ...], ...]] = {"Reversion": (("keys", "range"), ("incident",), ("partition",))}


# Array fields whose items hold exactly one of their properties (a CEL rule): each variant's list holds one item
# with one of them, so the variants together set every field.
ONE_OF_ITEMS: dict[str, str] = {"Reshard": "steps"}


def maximal_specs(kind: str) -> list[dict[str, Any]]:
    """Specs of `kind` that together set every field of the CRD: one, or one per group of EXCLUSIVE fields (or
    per property of a ONE_OF_ITEMS list's items)."""
    full = maximal(spec_schema(kind))
    if kind in ONE_OF_ITEMS:
        field = ONE_OF_ITEMS[kind]
        return [{**full, field: [{key: value}]} for key, value in full[field][0].items()]
    groups = EXCLUSIVE.get(kind)
    if not groups:
        return [full]
    out = []
    for keep in groups:
        drop = {f for g in groups if g is not keep for f in g}
        out.append({k: v for k, v in full.items() if k not in drop})
    return out


def maximal_object(kind: str, variant: int = 0) -> dict[str, Any]:
    """An object of `kind` whose spec sets every field of the CRD (but those excluded by EXCLUSIVE: see
    maximal_specs and ``variant``)."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": f"max-{kind.lower()}-{variant}"},
            "spec": maximal_specs(kind)[variant]}


def _bad_strings(schema: dict[str, Any]) -> list[Any]:
    bad: list[Any] = [42]
    if "enum" in schema:
        bad.append("bogus")
    if schema.get("pattern", "").startswith("^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"):
        bad += ["1d", "0s", "90m"]
    elif "pattern" in schema:
        bad.append("Not_Valid!")
    if schema.get("format") == "date-time":
        bad.append("2026-11-22")
    if "maxLength" in schema:
        bad.append("a" * (schema["maxLength"] + 1))
    return bad


def _bad_numbers(schema: dict[str, Any], bad: list[Any], step: float) -> list[Any]:
    if "minimum" in schema:
        bad.append(schema["minimum"] - step)
    if "maximum" in schema:
        bad += [schema["maximum"], schema["maximum"] + step]
    return bad


def _bad_objects(schema: dict[str, Any]) -> list[Any]:
    if "additionalProperties" in schema:
        return ["x", {"k": 1}]
    return ["x", [], {}] if schema.get("properties") else ["x"]


def _bad_arrays(schema: dict[str, Any]) -> list[Any]:
    bad: list[Any] = ["x", []]
    if "maxItems" in schema:
        bad.append([maximal(schema["items"])] * (schema["maxItems"] + 1))
    return bad


_BAD_BY_TYPE: dict[str, Callable[[dict[str, Any]], list[Any]]] = {
    "string": _bad_strings,
    "integer": lambda schema: _bad_numbers(schema, [1.5, "1"], 1),
    "number": lambda schema: _bad_numbers(schema, ["0.5", True], 0.1),
    "boolean": lambda schema: ["yes", 1],
    "object": _bad_objects,
    "array": _bad_arrays,
}


def _bad_values(schema: dict[str, Any]) -> list[Any]:
    """Values near or past the edges of what `schema` allows (some are still valid, e.g. "0s")."""
    if schema.get("x-kubernetes-int-or-string"):
        return ["-1", "1.5.5", True]
    by_type = _BAD_BY_TYPE.get(schema.get("type", ""))
    return by_type(schema) if by_type else []


def mutations(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(field path, spec) pairs: the maximal spec of `kind` with one field replaced by an edge value, plus one
    unknown field per object. Parser and API server must agree on every one of them."""
    out: list[tuple[str, dict[str, Any]]] = []
    for base in maximal_specs(kind):
        out += _mutations_of(spec_schema(kind), base)
    return out


def _at(spec: dict[str, Any], keys: list[Any]) -> Any:
    for key in keys:
        spec = spec[key]
    return spec


def _mutations_of(schema: dict[str, Any], base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Mutations of the fields ``base`` sets (top-level fields it leaves out are another variant's)."""
    import copy

    out: list[tuple[str, dict[str, Any]]] = []

    def put(keys: list[Any], value: Any) -> dict[str, Any]:
        spec = copy.deepcopy(base)
        target: Any = spec
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        return spec

    def visit(schema: dict[str, Any], keys: list[Any], dotted: str) -> None:
        for name, sub in schema.get("properties", {}).items():
            if not keys and name not in base:
                continue
            if keys and isinstance(keys[-1], int) and name not in _at(base, keys):
                continue  # a ONE_OF_ITEMS item: the property another variant sets
            path, field = [*keys, name], f"{dotted}.{name}"
            out.extend((field, put(path, bad)) for bad in _bad_values(sub))
            if sub.get("type") == "object" and sub.get("properties"):
                out.append((f"{field}.zzz", put([*path, "zzz"], 1)))
                visit(sub, path, field)
            items = sub.get("items", {})
            if sub.get("type") == "array" and items.get("type") == "object" and items.get("properties"):
                visit(items, [*path, 0], f"{field}[0]")

    visit(schema, [], "spec")
    return out
