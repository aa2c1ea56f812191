#!/usr/bin/env python3
"""Write strict JSON schemas for kubeconform from CRD files and/or Kubernetes OpenAPI v3 documents.

kubeconform validates against one JSON schema file per kind; it cannot read CRDs or the API server's
OpenAPI directly, and its default schemas come from the network, which we do not use. So:

- ``--crds PATH`` (file or folder, repeatable): every version of every CRD's ``openAPIV3Schema``.
- ``--openapi FILE`` (repeatable): an OpenAPI v3 document as served by kube-apiserver at
  ``/openapi/v3/apis/<group>/<version>`` (tests fetch them from the pinned envtest server, so
  built-in kinds are checked against exactly the Kubernetes version we pin).

Schemas are made strict (``additionalProperties: false`` wherever the API server would prune or
reject unknown fields), so a misspelt field fails. Output layout, for kubeconform's
``-schema-location``: ``OUT/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json``
(kubeconform's ``Group`` is the part before ``/`` of apiVersion: ``apps``, ``v1`` for the core group).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

LOCATION = "{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
_REF_PREFIX = "#/components/schemas/"
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf"}
_SCHEMA_ONE = {"items", "additionalProperties", "not"}


def _strict(node: Any) -> Any:
    """Copy of an OpenAPI schema node turned into strict JSON schema (draft 2020-12)."""
    if not isinstance(node, dict):
        return node
    # Recurse only through schema-valued keywords: elsewhere a key is data (a property may be
    # called "$ref" or "nullable", as in the CRD schema's own JSONSchemaProps).
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_strict(sub) for sub in value]
        elif key in _SCHEMA_ONE:
            out[key] = [_strict(sub) for sub in value] if isinstance(value, list) else _strict(value)
        else:
            out[key] = value
    if isinstance(out.get("$ref"), str) and out["$ref"].startswith(_REF_PREFIX):
        out["$ref"] = "#/$defs/" + out["$ref"][len(_REF_PREFIX):]
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-embedded-resource"):
        # An embedded object carries its own apiVersion/kind/metadata even when the schema omits them.
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    open_ended = out.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in out
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    return out


def _with_object_meta(schema: dict) -> dict:
    """A CRD's root schema plus the fields every object has (CRDs may leave them out)."""
    schema = copy.deepcopy(schema)
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props.setdefault("metadata", {"type": "object"})
    return schema


def crd_schemas(doc: dict) -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) → strict schema for every version of one CRD document."""
    spec = doc["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    out = {}
    for version in spec["versions"]:
        root = (version.get("schema") or {}).get("openAPIV3Schema")
        if root is None:
            raise ValueError(f"CRD {doc['metadata']['name']} version {version['name']} has no schema")
        out[(group, version["name"], kind)] = _strict(_with_object_meta(root))
    return out


def _reachable(defs: dict[str, Any], root: str) -> set[str]:
    """Names of the component schemas ``root`` refers to, directly or not."""
    seen: set[str] = set()
    stack = [root]
    while stack:
        name = stack.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        todo = [defs[name]]
        while todo:
            node = todo.pop()
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.startswith("#/$defs/"):
                    stack.append(ref[len("#/$defs/"):])
                todo.extend(node.values())
            elif isinstance(node, list):
                todo.extend(node)
    return seen


def openapi_schemas(doc: dict) -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) → standalone strict schema for every kind an OpenAPI v3 document defines."""
    defs = {name: _strict(schema) for name, schema in doc.get("components", {}).get("schemas", {}).items()}
    out = {}
    for name, schema in defs.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            keep = _reachable(defs, name)
            out[(gvk["group"], gvk["version"], gvk["kind"])] = {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$ref": f"#/$defs/{name}",
                "$defs": {n: defs[n] for n in sorted(keep)},
            }
    return out


def schema_path(out_dir: Path, group: str, version: str, kind: str) -> Path:
    """Where kubeconform looks for a kind with ``-schema-location OUT/`` + LOCATION."""
    return out_dir / (group.split("/")[0] if group else version) / f"{kind.lower()}_{version}.json"


def _crd_docs(path: Path) -> list[dict]:
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    docs = []
    for f in files:
        docs.extend(d for d in yaml.safe_load_all(f.read_text()) if d and d.get("kind") == "CustomResourceDefinition")
    return docs


def main(argv: list[str] | None = None) -> int:
    """Write the schemas and print kubeconform's ``-schema-location`` value for them."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--crds", action="append", default=[], type=Path, help="CRD YAML file or folder")
    p.add_argument("--openapi", action="append", default=[], type=Path, help="OpenAPI v3 JSON document")
    args = p.parse_args(argv)
    if not args.crds and not args.openapi:
        p.error("give at least one --crds or --openapi")
    schemas: dict[tuple[str, str, str], dict] = {}
    for path in args.crds:
        for doc in _crd_docs(path):
            schemas.update(crd_schemas(doc))
    for path in args.openapi:
        schemas.update(openapi_schemas(json.loads(path.read_text())))
    for (group, version, kind), schema in schemas.items():
        target = schema_path(args.out, group, version, kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(schema))
    print(f"{args.out}/{LOCATION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
