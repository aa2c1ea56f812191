"""The role document's validation and transition rules (pure)."""

import pytest
from chronoshard.shardnode.replication.role import (
    DEFAULT,
    Change,
    RoleInvalid,
    StaleTerm,
    TermConflict,
    next_lsn_base,
    parse_role,
    transition,
    write_refusal,
)

PRIMARY = {"term": 4, "role": "primary", "mode": "sync", "mirrors": ["mirror.ns-b.orders-b"], "maxLagSeconds": 5,
           "syncTimeoutSeconds": 10, "holdTimeoutSeconds": 5,
           "lease": {"namespace": "ns-a", "name": "orders-a-0-primary", "durationSeconds": 15}, "lsnFloor": 0,
           "healthSampleSeconds": 2}
MIRROR = {"term": 4, "role": "mirror", "mode": "sync",
          "source": {"url": "https://10.0.0.5:7400", "serverName": "orders-a-0.orders-a-headless.ns-a.svc",
                     "shardSet": "ns-a/orders-a"},
          "consumer": "mirror.ns-b.orders-b", "divergeLsn": None, "healthSampleSeconds": 2}
FENCED = {"term": 5, "role": "fenced", "primaryShardSet": "ns-b/orders-b"}


def role(doc, **changes):
    return parse_role({**doc, **changes})


def test_the_contracts_examples_parse():
    assert role(PRIMARY).mirrors == ("mirror.ns-b.orders-b",)
    m = role(MIRROR)
    assert (m.source_url, m.consumer, m.diverge_lsn, m.source_shardset) == (
        "https://10.0.0.5:7400", "mirror.ns-b.orders-b", None, "ns-a/orders-a")
    assert role(FENCED).primary_shardset == "ns-b/orders-b"
    assert DEFAULT.doc == {"term": 0, "role": "primary"}


@pytest.mark.parametrize("doc", [
    [], {"role": "primary"}, {"term": -1, "role": "primary"}, {"term": True, "role": "primary"},
    {"term": 1, "role": "leader"}, {"term": 1, "role": "primary", "source": {}},
    {**PRIMARY, "mode": "semi"}, {**PRIMARY, "mirrors": ["bad name!"]}, {**PRIMARY, "syncTimeoutSeconds": 0},
    {**PRIMARY, "lease": {"name": "x"}}, {**PRIMARY, "lsnFloor": -3},
    {**MIRROR, "source": {"url": "ftp://x"}}, {**MIRROR, "consumer": ""}, {**MIRROR, "divergeLsn": "7"},
    {**MIRROR, "source": {**MIRROR["source"], "token": "x"}}, {**FENCED, "primaryShardSet": "no-slash"},
    {**FENCED, "mirrors": []},
])
def test_malformed_documents_are_refused(doc):
    with pytest.raises(RoleInvalid):
        parse_role(doc)


def test_lower_term_is_stale():
    with pytest.raises(StaleTerm) as e:
        transition(role(FENCED), role(PRIMARY))
    assert (e.value.term, e.value.current) == (4, 5)


def test_same_document_is_idempotent():
    for doc in (PRIMARY, MIRROR, FENCED):
        assert transition(role(doc), role(doc)) is Change.SAME


def test_same_term_other_role_conflicts():
    with pytest.raises(TermConflict):
        transition(role(MIRROR), role(PRIMARY))
    with pytest.raises(TermConflict):
        transition(role(MIRROR), role(MIRROR, consumer="another"))


def test_same_term_primary_settings_and_moved_source_apply():
    assert transition(role(PRIMARY), role(PRIMARY, mirrors=[])) is Change.UPDATE
    moved = {**MIRROR["source"], "url": "https://10.0.0.9:7400"}
    assert transition(role(MIRROR), role(MIRROR, source=moved)) is Change.UPDATE
    other = {**MIRROR["source"], "shardSet": "ns-a/other"}
    with pytest.raises(TermConflict):
        transition(role(MIRROR), role(MIRROR, source=other))
    # Same source and slot: the mode, the sampling or divergeLsn may change (the rewind already happened).
    assert transition(role(MIRROR), role(MIRROR, mode="async", divergeLsn=9, healthSampleSeconds=5)) is Change.UPDATE


def test_higher_term_transitions():
    assert transition(role(MIRROR), role(PRIMARY, term=5)) is Change.PROMOTE
    assert transition(role(FENCED), role(PRIMARY, term=6)) is Change.PROMOTE
    assert transition(role(PRIMARY), role(FENCED)) is Change.FENCE
    assert transition(role(PRIMARY), role(MIRROR, term=5, divergeLsn=10)) is Change.FOLLOW
    assert transition(role(FENCED), role(MIRROR, term=6)) is Change.FOLLOW
    assert transition(role(PRIMARY), role(PRIMARY, term=5)) is Change.UPDATE
    assert transition(DEFAULT, role(MIRROR)) is Change.FOLLOW


def test_promotion_never_reuses_an_lsn():
    assert next_lsn_base(1200, 1203) == 1203
    assert next_lsn_base(1200, 0) == 1200


def test_only_a_primary_accepts_writes():
    assert write_refusal(role(PRIMARY)) is None
    assert write_refusal(role(MIRROR)) == "not_primary"
    assert write_refusal(role(FENCED)) == "fenced"


def test_a_fenced_node_follows_the_primary_its_fence_named_at_the_same_term():
    follows = {**MIRROR["source"], "shardSet": "ns-b/orders-b"}
    assert transition(role(FENCED), role(MIRROR, term=5, source=follows, divergeLsn=7)) is Change.FOLLOW
    assert transition(role(FENCED, primaryShardSet=None), role(MIRROR, term=5)) is Change.FOLLOW
    with pytest.raises(TermConflict):  # the fence named another primary
        transition(role(FENCED), role(MIRROR, term=5))
    with pytest.raises(TermConflict):  # a fenced node is not made primary again at the fence's term
        transition(role(FENCED), role(PRIMARY, term=5))
