"""The seven CRDs against the real kube-apiserver: samples accepted, invalid cases refused BY THE SERVER with a
message naming the field, defaults applied by the server, and the operator's spec parsing agreeing with the
schema on every object (the single source of truth check for hand-written CRDs)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml
from chronoshard.operator.spec import PARSERS, SpecError
from kubernetes import client

from tests.support.crdcases import (
    GROUP,
    KINDS,
    REPO,
    VERSION,
    load_crds,
    load_invalid_cases,
    load_samples,
    maximal_specs,
    mutations,
    plural,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

REF = {"shardSetRef": {"name": "orders"}}
# Valid objects at the edges of the schema (minimal specs, boundary values, equal durations, quoted "off"):
# with the samples and invalid cases they make the set on which parser and server must agree.
EDGE_VALID: list[tuple[str, dict[str, Any]]] = [
    ("ShardSet", {"shards": 1}),
    ("ShardSet", {"shards": 256, "storage": {"size": 1073741824}, "tables": [{"name": "a_b"}, {"name": "0"}],
                  "podDisruptionBudget": {"maxUnavailable": 0}}),
    ("ShardSet", {"shards": 1, "keyEncryption": {"provider": "none"}}),
    ("ShardSet", {"shards": 1, "keyEncryption": {"kekSecretRef": {"name": "byo-kek.v1"}}}),
    ("KeyRotation", {**REF, "threat": {"reason": "suspected-compromise"}, "transitionPeriod": "0s"}),
    ("KeyRotation", {**REF, "schedule": "@weekly", "historyLimit": 100, "suspend": True}),
    ("PrefetchPolicy", REF),
    ("PrefetchPolicy", {**REF, "scoreThreshold": 0, "horizon": "10m", "feedback": {"window": "10m"},
                        "training": {"interval": "1h", "historyWindow": "1h"}}),
    ("ShadowPolicy", REF),
    ("ShadowPolicy", {**REF, "reversion": {"mode": "off"}, "snapshot": {"interval": "1h"},
                      "retention": {"hot": "1h", "warm": "60m", "cold": "3600s"}}),
    ("ShadowPolicy", {**REF, "compression": {"codec": "none"}, "snapshot": {"fullEvery": 1000},
                      "coldStorage": {"endpoint": "http://seaweedfs.storage:8333/", "bucket": "a.b-c",
                                      "prefix": "p/q.r", "credentialsSecret": {"name": "creds"}}}),
    ("ShadowPolicy", {**REF, "compression": {"level": 19, "dictionary": False},
                      "coldStorage": {"endpoint": "https://s3.amazonaws.com", "bucket": "abc", "region": "eu-west-1",
                                      "forcePathStyle": False, "credentialsSecret": {"name": "creds"}}}),
    ("ShardSet", {"shards": 1, "bootstrap": {"fromShadow": {
        "coldStorage": {"endpoint": "http://seaweedfs:8333", "bucket": "backups", "credentialsSecret": {"name": "c"}},
        "source": {"name": "orders"}, "keyringSecret": {"name": "orders-keyring-copy"}}}}),
    ("ShardSet", {"shards": 1, "keyEncryption": {"kekSecretRef": {"name": "kek"}}, "bootstrap": {"fromShadow": {
        "coldStorage": {"endpoint": "http://seaweedfs:8333", "bucket": "backups", "credentialsSecret": {"name": "c"}},
        "source": {"namespace": "prod", "name": "orders"}, "pointInTime": "2026-12-01T10:00:00Z",
        "keyringSecret": {"name": "k"}, "kekSecret": {"name": "kek"}}}}),
    ("MirrorSet", {"sourceRef": {"name": "orders"}, "mirrors": [{"shardSetRef": {"name": "m"}}]}),
    ("MirrorSet", {"sourceRef": {"name": "orders"},
                   "mirrors": [{"shardSetRef": {"name": "orders"}, "namespace": "w"},
                               {"shardSetRef": {"name": "orders"}, "namespace": "e"}]}),
    ("WeavePlan", REF),
    ("WeavePlan", {**REF, "confidenceThreshold": 1, "interval": "24h", "predictionWindow": "24h"}),
    ("WeavePlan", {**REF, "split": {"sizeThreshold": "1Gi", "minPartitionSize": "1023Mi"}}),
    # Every field the CRD declares set at once.
    *((kind, spec) for kind in KINDS for spec in maximal_specs(kind)),
]


def _api(k8s_client) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_client)


def _create(k8s_client, namespace: str, obj: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    """Create with strict field validation (as kubectl does), so unknown fields are refused, not dropped."""
    kwargs: dict[str, Any] = {"field_validation": "Strict"}
    if dry_run:
        kwargs["dry_run"] = "All"
    return _api(k8s_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural(obj["kind"]), obj, **kwargs
    )


def _server_verdict(k8s_client, namespace: str, obj: dict[str, Any]) -> tuple[bool, int, str]:
    try:
        _create(k8s_client, namespace, obj, dry_run=True)
        return True, 201, ""
    except client.ApiException as exc:
        return False, exc.status, json.loads(exc.body).get("message", "")


def _parser_verdict(obj: dict[str, Any]) -> tuple[bool, str]:
    try:
        PARSERS[obj["kind"]](obj.get("spec"))
        return True, ""
    except SpecError as exc:
        return False, str(exc)


def _obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}


def test_all_seven_crds_are_served_with_category_and_short_names(control_plane):
    crds = load_crds()
    assert sorted(crds) == sorted(KINDS)
    out = control_plane.kubectl("api-resources", f"--api-group={GROUP}", "--categories=chronoshard",
                                "-o", "wide").stdout
    for kind, crd in crds.items():
        line = next((ln for ln in out.splitlines() if f" {kind} " in f" {ln} "), None)
        assert line is not None, (kind, out)
        for short in crd["spec"]["names"]["shortNames"]:
            assert short in line.split()[1].split(","), (kind, line)
        assert "true" in line.split()  # namespaced


@pytest.mark.parametrize("path_obj", load_samples(), ids=lambda po: po[0].stem)
def test_sample_is_accepted_and_parses_the_same_before_and_after_server_defaulting(k8s_client, namespace, path_obj):
    _, obj = path_obj
    stored = _create(k8s_client, namespace, obj)
    assert stored["metadata"]["name"] == obj["metadata"]["name"]
    parse = PARSERS[obj["kind"]]
    # The server applied its defaults to stored["spec"]; the parser applied its own to obj["spec"]: equal
    # models mean both sides default alike.
    assert parse(stored["spec"]) == parse(obj["spec"])


@pytest.mark.parametrize("case", load_invalid_cases(), ids=lambda c: c.id)
def test_invalid_case_is_refused_by_the_api_server_naming_the_field(k8s_client, namespace, case):
    with pytest.raises(client.ApiException) as err:
        _create(k8s_client, namespace, case.obj)
    message = json.loads(err.value.body).get("message", "")
    assert err.value.status == case.status, message
    assert case.field in message, message
    # Nothing was created.
    items = _api(k8s_client).list_namespaced_custom_object(GROUP, VERSION, namespace, plural(case.obj["kind"]))
    assert items["items"] == []


def test_parser_accepts_exactly_what_the_api_server_accepts(k8s_client, namespace):
    objects = [obj for _, obj in load_samples()]
    objects += [c.obj for c in load_invalid_cases()]
    objects += [_obj(kind, f"edge-{i}", spec) for i, (kind, spec) in enumerate(EDGE_VALID)]
    disagreements = []
    for obj in objects:
        server_ok, status, server_msg = _server_verdict(k8s_client, namespace, obj)
        parser_ok, parser_msg = _parser_verdict(obj)
        if server_ok != parser_ok:
            disagreements.append((obj["kind"], obj["metadata"]["name"], server_msg or "accepted",
                                  parser_msg or "accepted"))
    assert disagreements == []
    assert len(objects) >= len(KINDS) * 5


def test_parser_and_server_agree_on_every_single_field_mutation(k8s_client, namespace):
    # Each job is the every-field spec with ONE field set to an edge value (wrong type, out of range, bad
    # pattern, too long, empty/oversized list, unknown key, or a still-valid edge such as "0s").
    jobs = [_obj(kind, f"mut-{i}", spec) for kind in KINDS for i, (_, spec) in enumerate(mutations(kind))]

    def verdicts(obj: dict[str, Any]) -> tuple[dict[str, Any], tuple[bool, int, str]]:
        return obj, _server_verdict(k8s_client, namespace, obj)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(verdicts, jobs))
    disagreements = []
    for obj, (server_ok, _, server_msg) in results:
        try:
            PARSERS[obj["kind"]](obj["spec"])
            parser_ok, field = True, ""
        except SpecError as exc:
            parser_ok, field = False, exc.field_path
        # Same verdict, and when refused the parser names a field the server also names.
        if server_ok != parser_ok or (not parser_ok and field not in server_msg):
            disagreements.append((obj["kind"], json.dumps(obj["spec"])[:200], server_msg or "accepted", field))
    assert disagreements == []
    accepted = sum(1 for _, (ok, _, _) in results if ok)
    assert len(results) > 300 and 20 < accepted < len(results) - 300


@pytest.mark.parametrize(("kind", "spec"), EDGE_VALID, ids=[f"{k}-{i}" for i, (k, _) in enumerate(EDGE_VALID)])
def test_server_defaults_match_parser_defaults(k8s_client, namespace, kind, spec):
    stored = _create(k8s_client, namespace, _obj(kind, "edge", spec))
    parse = PARSERS[kind]
    assert parse(stored["spec"]) == parse(spec)


# ShardSet spec.keyEncryption objects the server must refuse, with the field its message must name.
KEY_ENCRYPTION_INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("provider-kms", {"provider": "kms"}, "spec.keyEncryption.provider"),
    ("ref-with-none", {"provider": "none", "kekSecretRef": {"name": "k"}}, "spec.keyEncryption.kekSecretRef"),
    ("ref-no-name", {"kekSecretRef": {}}, "spec.keyEncryption.kekSecretRef.name"),
    ("ref-name-upper", {"kekSecretRef": {"name": "My_Kek"}}, "spec.keyEncryption.kekSecretRef.name"),
    ("not-object", "embedded", "spec.keyEncryption"),
]


@pytest.mark.parametrize(("case", "key_encryption", "field"), KEY_ENCRYPTION_INVALID,
                         ids=[c[0] for c in KEY_ENCRYPTION_INVALID])
def test_bad_key_encryption_is_refused_by_the_server_and_the_parser_naming_the_field(
        k8s_client, namespace, case, key_encryption, field):
    obj = _obj("ShardSet", f"ke-{case}", {"shards": 1, "keyEncryption": key_encryption})
    with pytest.raises(client.ApiException) as err:
        _create(k8s_client, namespace, obj)
    message = json.loads(err.value.body).get("message", "")
    assert err.value.status == 422 and field in message, message
    with pytest.raises(SpecError) as perr:
        PARSERS["ShardSet"](obj["spec"])
    assert perr.value.field_path == field
    assert _api(k8s_client).list_namespaced_custom_object(GROUP, VERSION, namespace, "shardsets")["items"] == []


def test_key_encryption_defaults_to_embedded_and_cannot_change(k8s_client, namespace):
    stored = _create(k8s_client, namespace, _obj("ShardSet", "ke", {"shards": 1}))
    assert stored["spec"]["keyEncryption"] == {"provider": "embedded"}
    for change in ({"provider": "none"}, {"kekSecretRef": {"name": "other"}}):
        with pytest.raises(client.ApiException) as err:
            _api(k8s_client).patch_namespaced_custom_object(GROUP, VERSION, namespace, "shardsets", "ke",
                                                            {"spec": {"keyEncryption": change}})
        assert err.value.status == 422
        assert "keyEncryption is immutable" in json.loads(err.value.body)["message"]
    # Other fields still change, and the defaulted keyEncryption does not count as a change.
    _api(k8s_client).patch_namespaced_custom_object(GROUP, VERSION, namespace, "shardsets", "ke",
                                                    {"spec": {"shards": 2}})


def test_minimal_shardset_gets_defaults_from_the_server(k8s_client, namespace):
    stored = _create(k8s_client, namespace, _obj("ShardSet", "tiny", {"shards": 2}))
    spec = stored["spec"]
    assert spec["image"] == "ghcr.io/chronoshard/chronoshard:" + (REPO / "VERSION").read_text().strip()
    assert spec["imagePullPolicy"] == "IfNotPresent"
    assert spec["storage"] == {"size": "1Gi"}
    assert spec["cache"] == {"size": "256Mi", "evictionPolicy": "scored"}
    assert spec["tables"] == [{"name": "default"}]
    assert spec["keyAlgorithm"] == "AES-256-GCM"
    assert spec["keyEncryption"] == {"provider": "embedded"}
    assert spec["podDisruptionBudget"] == {"maxUnavailable": 1}


def test_kubectl_get_chronoshard_lists_every_kind(control_plane, namespace):
    control_plane.kubectl("apply", "-n", namespace, "-f", str(load_samples()[0][0].parent))
    names = control_plane.kubectl("get", "chronoshard", "-n", namespace, "-o", "name").stdout.split()
    kinds = {n.split("/")[0].split(".")[0] for n in names}
    assert kinds == {load_crds()[k]["spec"]["names"]["singular"] for k in KINDS}


def test_printer_columns_show_status_written_through_the_status_subresource(k8s_client, control_plane, namespace):
    _create(k8s_client, namespace, _obj("ShardSet", "cols", {"shards": 3}))
    status = {
        "phase": "Provisioning",
        "observedGeneration": 1,
        "readyShards": "2/3",
        "keyVersion": 4,
        "shards": {"desired": 3, "ready": 2},
        "conditions": [{"type": "Ready", "status": "False", "reason": "ShardsNotReady",
                        "message": "2 of 3 shards ready", "lastTransitionTime": "2026-11-22T00:00:00Z",
                        "observedGeneration": 1}],
    }
    expected = ["cols", "3", "2/3", "4", "Provisioning"]

    def columns() -> list[str] | None:
        # The session's in-process operator may write this ShardSet's status between our patch and read.
        _api(k8s_client).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "shardsets", "cols", {"status": status})
        out = control_plane.kubectl("get", "shset", "cols", "-n", namespace, "--no-headers").stdout.split()
        return out if out[:5] == expected else None

    out = wait_for(columns, timeout=30, interval=0.2, what="kubectl's columns from the patched status")
    assert out[:5] == expected, out
    # A condition outside the standard shape is refused by the status schema.
    bad = {"status": {"conditions": [{**status["conditions"][0], "status": "Maybe"}]}}
    with pytest.raises(client.ApiException) as err:
        _api(k8s_client).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "shardsets", "cols", bad)
    assert err.value.status == 422
    assert "status.conditions[0].status" in json.loads(err.value.body)["message"]


def test_shardset_scale_subresource_is_bounded_by_the_schema(control_plane, k8s_client, namespace):
    _create(k8s_client, namespace, _obj("ShardSet", "scaled", {"shards": 1}))
    control_plane.kubectl("scale", "-n", namespace, "shardset/scaled", "--replicas=4")
    got = _api(k8s_client).get_namespaced_custom_object(GROUP, VERSION, namespace, "shardsets", "scaled")
    assert got["spec"]["shards"] == 4
    proc = control_plane.kubectl("scale", "-n", namespace, "shardset/scaled", "--replicas=300", check=False)
    assert proc.returncode != 0 and "spec.shards" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("kind", "spec", "field", "changed"),
    [
        ("KeyRotation", {**REF, "trigger": "a"}, "shardSetRef", {"shardSetRef": {"name": "other"}}),
        ("MirrorSet", {"sourceRef": {"name": "a"}, "mirrors": [{"shardSetRef": {"name": "b"}}]}, "sourceRef",
         {"sourceRef": {"name": "c"}}),
        ("ShardSet", {"shards": 1}, "keyAlgorithm", None),
    ],
)
def test_transition_rules_refuse_changing_immutable_fields(k8s_client, namespace, kind, spec, field, changed):
    _create(k8s_client, namespace, _obj(kind, "immut", spec))
    # keyAlgorithm has a single allowed value, so only the rule's presence on the live CRD can be checked.
    if changed is None:
        schema = load_crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        rules = schema["properties"]["spec"]["properties"][field]["x-kubernetes-validations"]
        assert {"rule": "self == oldSelf", "message": f"{field} is immutable"} in rules
        return
    with pytest.raises(client.ApiException) as err:
        _api(k8s_client).patch_namespaced_custom_object(GROUP, VERSION, namespace, plural(kind), "immut",
                                                        {"spec": changed})
    assert err.value.status == 422
    assert f"{field} is immutable" in json.loads(err.value.body)["message"]


BOOTSTRAP = {"fromShadow": {
    "coldStorage": {"endpoint": "http://seaweedfs:8333", "bucket": "backups", "credentialsSecret": {"name": "c"}},
    "source": {"name": "orders"}, "keyringSecret": {"name": "orders-keyring-copy"}}}


def test_bootstrap_is_set_at_creation_only(k8s_client, namespace):
    _create(k8s_client, namespace, _obj("ShardSet", "restored", {"shards": 1, "bootstrap": BOOTSTRAP}))
    _create(k8s_client, namespace, _obj("ShardSet", "fresh", {"shards": 1}))
    patch = _api(k8s_client).patch_namespaced_custom_object
    changed = {"fromShadow": {**BOOTSTRAP["fromShadow"], "pointInTime": "2026-12-01T10:00:00Z"}}
    refusals = [
        ("restored", {"spec": {"bootstrap": changed}}, "bootstrap is immutable"),
        ("restored", {"spec": {"bootstrap": None}}, "bootstrap can only be set when the ShardSet is created"),
        ("fresh", {"spec": {"bootstrap": BOOTSTRAP}}, "bootstrap can only be set when the ShardSet is created"),
    ]
    for name, body, message in refusals:
        with pytest.raises(client.ApiException) as err:
            patch(GROUP, VERSION, namespace, "shardsets", name, body)
        assert err.value.status == 422 and message in json.loads(err.value.body)["message"], err.value.body
    # Other fields of a bootstrapped ShardSet still change.
    patch(GROUP, VERSION, namespace, "shardsets", "restored", {"spec": {"shards": 2}})


def test_samples_apply_with_kubectl_as_they_are(control_plane, namespace):
    for path, obj in load_samples():
        out = control_plane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path)).stdout
        assert obj["metadata"]["name"] in out
        assert yaml.safe_load(path.read_text())["apiVersion"] == f"{GROUP}/{VERSION}"


REVERSION = {"shardSetRef": {"name": "orders"}, "tables": ["orders"], "keys": ["a", "b"],
             "pointInTime": "2026-11-30T09:00:00Z"}


def test_reversion_spec_is_fixed_after_planning_except_approve(k8s_client, namespace):
    _create(k8s_client, namespace, _obj("Reversion", "rev", REVERSION))
    api = _api(k8s_client)
    # As the controller leaves it once planned.
    api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "reversions", "rev", {"status": {
        "phase": "AwaitingApproval", "digest": "ab" * 32, "shortDigest": "ab" * 6, "plan": {"keys": 2}}})
    changes = [{"pointInTime": "2026-11-30T08:00:00Z"}, {"keys": ["a"]}, {"tables": None},
               {"range": {"start": "a", "end": "z"}}, {"overwriteLaterWrites": True},
               {"shardSetRef": {"name": "other"}}]
    for change in changes:
        with pytest.raises(client.ApiException) as err:
            api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "rev", {"spec": change})
        assert err.value.status == 422, change
        assert "immutable once created, except approve" in json.loads(err.value.body)["message"], change
    stored = api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "rev",
                                                {"spec": {"approve": "ab" * 32}})
    assert stored["spec"] == {**REVERSION, "overwriteLaterWrites": False, "approve": "ab" * 32}


def test_reversion_printer_columns(k8s_client, control_plane, namespace):
    _create(k8s_client, namespace, _obj("Reversion", "cols", REVERSION))
    status = {"phase": "Running", "shortDigest": "0123456789ab", "plan": {"keys": 40},
              "progress": {"summary": "12/40", "done": 12, "skipped": 0, "conflicts": 0, "remaining": 28}}
    expected = ["cols", "orders", "Running", "40", "12/40", "0123456789ab"]

    def columns() -> list[str] | None:
        # The session's in-process operator (started by earlier tests, all namespaces) writes its own status for
        # this Reversion now and then; patch and read again until the read saw ours. A wrong jsonPath never matches.
        _api(k8s_client).patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "reversions", "cols",
                                                               {"status": status})
        out = control_plane.kubectl("get", "rev", "cols", "-n", namespace, "--no-headers").stdout.split()
        return out if out[:6] == expected else None

    out = wait_for(columns, timeout=30, interval=0.2, what="kubectl's columns from the patched status")
    assert out[:6] == expected, out


MIRRORSET_STATUS = {
    "phase": "Replicating", "observedGeneration": 1, "term": 4, "activeShardSet": "ns-b/orders-b",
    "activeSource": "orders-b",
    "conditions": [{"type": "Ready", "status": "True", "reason": "Replicating", "message": "every copy streams",
                    "lastTransitionTime": "2026-12-07T00:00:00Z", "observedGeneration": 1}],
    "shards": [{"shard": 0, "primary": "ns-b/orders-b", "copies": [
        {"shardSet": "ns-b/orders-b", "role": "primary", "health": "healthy", "reasons": [], "state": "idle",
         "appliedLSN": 12, "lastLSN": 12, "lagLSN": 0, "lagSeconds": 0.0, "latencyMs": 1.5, "errorRate": 0.0,
         "capacity": 0.1, "restarts": 1},
        {"shardSet": "ns-a/orders-a", "role": "mirror", "health": "degraded", "reasons": ["latency 310ms > 250ms"],
         "state": "streaming", "appliedLSN": 10, "lastLSN": 10, "lagLSN": 2, "lagSeconds": 0.5, "latencyMs": 310.0,
         "errorRate": 0.01, "capacity": 0.2, "restarts": 0,
         "consistentAt": {"lsn": 9, "time": "2026-12-07T00:01:00Z"}}]}],
    "mirrors": [{"name": "orders-a", "namespace": "ns-a", "healthy": False, "lagSeconds": 0.5, "appliedLSN": 10}],
    "operation": {"kind": "switchover", "step": "CatchingUp", "term": 5, "from": "ns-b/orders-b",
                  "to": "ns-a/orders-a", "reason": "requested", "startedAt": "2026-12-07T00:02:00Z",
                  "tokens": {"0": 12}, "promotedAt": {"0": 12}},
    "lastOperation": {"kind": "failover", "from": "ns-a/orders-a", "to": "ns-b/orders-b", "term": 4,
                      "startedAt": "2026-12-07T00:00:00Z", "finishedAt": "2026-12-07T00:00:05Z",
                      "outcome": "Succeeded", "message": "shard 0 unavailable", "heldSeconds": 4.5},
    "lostWrites": [{"shard": 0, "shardSet": "ns-a/orders-a", "fromLSN": 8, "toLSN": 10, "count": 2,
                    "confirmed": True, "term": 4, "time": "2026-12-07T00:00:05Z"}],
    "failovers": 1, "lastFailoverTime": "2026-12-07T00:00:05Z",
    "lastSwitchoverRequest": "ns-a/orders-a", "lastFailbackRequest": "t1",
}


def test_mirrorset_status_keeps_every_contract_field_and_shows_active_and_term(k8s_client, control_plane, namespace):
    _create(k8s_client, namespace, _obj("MirrorSet", "cols", {"sourceRef": {"name": "orders-a"},
                                                               "mirrors": [{"shardSetRef": {"name": "orders-b"}}]}))
    expected = ["cols", "orders-b", "4", "Replicating"]

    def columns() -> list[str] | None:
        # A running operator may write its own status between our patch and read: patch until the read sees ours.
        stored = _api(k8s_client).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "mirrorsets", "cols", {"status": MIRRORSET_STATUS})
        # A field the schema does not declare would be pruned from the stored object. (The merge patch keeps what
        # the operator wrote besides, e.g. the token service's status: only our fields are compared.)
        assert {k: stored["status"].get(k) for k in MIRRORSET_STATUS} == MIRRORSET_STATUS
        out = control_plane.kubectl("get", "mirs", "cols", "-n", namespace, "--no-headers").stdout.split()
        return out if out[:4] == expected else None

    out = wait_for(columns, timeout=30, interval=0.2, what="kubectl's columns from the patched status")
    assert out[:4] == expected, out
    header = control_plane.kubectl("get", "mirs", "cols", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "ACTIVE", "TERM", "PHASE", "AGE"]
