"""Offline checks of crds/*.yaml: structure, descriptions, conditions shape, CEL hygiene, and that every
field a CRD declares is known to the matching parser (the API-server checks live in tests/integration)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from chronoshard.operator.spec import PARSERS, SpecError

from tests.support.crdcases import GROUP, KINDS, VERSION, load_crds, load_samples, maximal_object, maximal_specs

# Short names of built-in resources (kubectl api-resources on v1.35) that ours must not shadow.
BUILTIN_SHORT_NAMES = {
    "cs", "cm", "ep", "ev", "limits", "ns", "no", "pvc", "pv", "po", "rc", "quota", "sa", "svc", "crd", "crds",
    "ds", "deploy", "rs", "sts", "hpa", "cj", "csr", "eps", "ing", "netpol", "pdb", "pc", "sc", "vac",
}


def _crd(kind: str) -> dict[str, Any]:
    return load_crds()[kind]


def _root(kind: str) -> dict[str, Any]:
    return _crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_one_crd_file_per_kind():
    assert sorted(load_crds()) == sorted(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_names_group_version_scope(kind):
    crd = _crd(kind)
    spec = crd["spec"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{GROUP}"
    assert spec["group"] == GROUP and spec["scope"] == "Namespaced"
    assert [v["name"] for v in spec["versions"]] == [VERSION]
    assert spec["versions"][0]["served"] and spec["versions"][0]["storage"]
    assert "chronoshard" in spec["names"]["categories"]
    shorts = spec["names"]["shortNames"]
    assert shorts and not set(shorts) & BUILTIN_SHORT_NAMES


def test_short_names_are_unique_across_kinds():
    shorts = [s for kind in KINDS for s in _crd(kind)["spec"]["names"]["shortNames"]]
    assert len(shorts) == len(set(shorts))


@pytest.mark.parametrize("kind", KINDS)
def test_status_subresource_and_printer_columns(kind):
    version = _crd(kind)["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Age"] == ".metadata.creationTimestamp"
    assert len(columns) >= 4


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_has_a_type_and_a_description(kind):
    missing = []
    for path, schema in _walk(_root(kind), kind):
        if path == f"{kind}.metadata":
            continue
        if not schema.get("description") and not path.endswith("{}"):
            missing.append(f"{path}: description")
        if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
            missing.append(f"{path}: type")
    assert missing == []


@pytest.mark.parametrize("kind", KINDS)
def test_status_has_standard_conditions_observed_generation_and_phase(kind):
    status = _root(kind)["properties"]["status"]["properties"]
    assert status["phase"]["type"] == "string"
    assert status["observedGeneration"]["type"] == "integer"
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert item["properties"]["observedGeneration"]["type"] == "integer"


@pytest.mark.parametrize("kind", KINDS)
def test_cel_rules_have_messages_and_bounded_inputs(kind):
    for path, schema in _walk(_root(kind)["properties"]["spec"], "spec"):
        for rule in schema.get("x-kubernetes-validations", []):
            assert rule.get("message"), (path, rule)
        if schema.get("type") == "string" and "pattern" in schema:
            assert "maxLength" in schema, path  # keeps regex and CEL cost bounded
        if schema.get("type") == "array":
            assert "maxItems" in schema, path


@pytest.mark.parametrize("kind", KINDS)
def test_thresholds_are_bounded_to_unit_interval(kind):
    for path, schema in _walk(_root(kind)["properties"]["spec"], "spec"):
        name = path.rsplit(".", 1)[-1]
        if schema.get("type") == "number" and ("Threshold" in name or "threshold" == name or "Precision" in name):
            assert (schema.get("minimum"), schema.get("maximum")) == (0, 1), path


@pytest.mark.parametrize("kind", KINDS)
def test_parser_knows_every_field_the_crd_declares(kind):
    # A spec that sets every declared field: a parser missing one would refuse it as an unknown field.
    for spec in maximal_specs(kind):
        PARSERS[kind](spec)


@pytest.mark.parametrize("kind", KINDS)
def test_parser_refuses_a_field_the_crd_does_not_declare(kind):
    obj = maximal_object(kind)
    with pytest.raises(SpecError, match="unknown field"):
        PARSERS[kind]({**obj["spec"], "notAField": 1})


def test_one_sample_per_kind():
    kinds = sorted(obj["kind"] for _, obj in load_samples())
    assert kinds == sorted(KINDS)
    for _, obj in load_samples():
        assert obj["apiVersion"] == f"{GROUP}/{VERSION}"
        assert "namespace" not in obj["metadata"]  # applies to whatever namespace the user picks
