"""ShardSet status from observed children (pure)."""

from chronoshard.operator.keyring import KeyringManifest, KeyVersionInfo
from chronoshard.operator.shardset.status import Observed, shardset_status

KEYRING = KeyringManifest(2, "AES-256-GCM", (KeyVersionInfo(1, "decrypt-only", ""), KeyVersionInfo(2, "primary", "")))


def sts(ready, replicas=3, updated=None, gen=1, observed=1):
    return {"metadata": {"generation": gen}, "spec": {"replicas": replicas},
            "status": {"readyReplicas": ready, "replicas": replicas,
                       "updatedReplicas": replicas if updated is None else updated, "observedGeneration": observed}}


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_all_ready_is_ready():
    st = shardset_status(Observed(4, 3, sts(3), KEYRING, {"epoch": 1, "partitions": []}), None)
    assert st["phase"] == "Ready" and st["readyShards"] == "3/3"
    assert cond(st, "Ready")["status"] == "True"
    assert cond(st, "Progressing")["status"] == "False"
    assert cond(st, "Degraded")["status"] == "False"
    assert st["observedGeneration"] == 4
    assert st["keyVersion"] == 2
    assert st["keyVersions"] == [{"id": 1, "state": "decrypt-only", "wrapped": False},
                                 {"id": 2, "state": "primary", "wrapped": False}]


def test_partially_ready_is_progressing():
    st = shardset_status(Observed(1, 3, sts(1), KEYRING, None), None)
    assert st["phase"] == "Progressing"
    assert cond(st, "Ready")["status"] == "False"
    assert "1/3" in cond(st, "Ready")["message"]


def test_stale_statefulset_status_is_not_ready():
    st = shardset_status(Observed(1, 3, sts(3, gen=2, observed=1), KEYRING, None), None)
    assert cond(st, "Ready")["status"] == "False"


def test_problems_make_it_degraded_with_all_messages():
    st = shardset_status(Observed(1, 3, None, None, None, problems=[("InvalidImage", "bad image"),
                                                                    ("StorageClassNotFound", "no sc")]), None)
    assert st["phase"] == "Degraded"
    c = cond(st, "Degraded")
    assert c["reason"] == "InvalidImage" and "bad image" in c["message"] and "no sc" in c["message"]
    assert "keyVersion" not in st


def test_transition_time_kept_when_status_unchanged():
    first = shardset_status(Observed(1, 3, sts(3), KEYRING, None), None)
    again = shardset_status(Observed(1, 3, sts(3), KEYRING, None), first)
    assert cond(first, "Ready")["lastTransitionTime"] == cond(again, "Ready")["lastTransitionTime"]


def test_key_versions_say_which_are_wrapped():
    st = shardset_status(Observed(1, 3, sts(3), KEYRING, None, wrapped_versions=(2,)), None)
    assert [(v["id"], v["wrapped"]) for v in st["keyVersions"]] == [(1, False), (2, True)]
