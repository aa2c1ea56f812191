"""PrefetchPolicy spec parsing: sample, defaults and every invalid case."""

from datetime import timedelta

import pytest
from chronoshard.operator.spec import SpecError, parse_prefetchpolicy
from chronoshard.operator.spec.prefetchpolicy import Budget, Feedback, KeyPrefetch, Training

from tests.support.crdcases import invalid_cases, sample


def test_sample():
    spec = parse_prefetchpolicy(sample("PrefetchPolicy")["spec"])
    assert spec.shardset == "orders"
    assert (spec.model, spec.horizon, spec.score_threshold) == ("auto", timedelta(minutes=5), 0.5)
    assert spec.budget == Budget(bytes_per_second=16 * 2**20, requests_per_second=200, max_inflight=16)
    assert spec.cache_budget_bytes == 128 * 2**20
    assert spec.feedback == Feedback(enabled=True, target_precision=0.6, window=timedelta(minutes=10))
    assert spec.key_prefetch == KeyPrefetch(enabled=True, key_cache_size=64)
    assert spec.training == Training(interval=timedelta(minutes=15), history_window=timedelta(hours=24))


def test_defaults():
    spec = parse_prefetchpolicy({"shardSetRef": {"name": "orders"}})
    assert (spec.model, spec.horizon, spec.score_threshold) == ("auto", timedelta(minutes=5), 0.5)
    assert spec.cache_budget_bytes is None
    assert spec.budget == Budget()
    assert spec.feedback == Feedback()
    assert spec.key_prefetch == KeyPrefetch()
    assert spec.training == Training()


def test_key_prefetch_and_integer_threshold():
    spec = parse_prefetchpolicy({"shardSetRef": {"name": "o"}, "scoreThreshold": 1,
                                 "keyPrefetch": {"enabled": True, "keyCacheSize": 512}})
    assert spec.score_threshold == 1.0
    assert spec.key_prefetch == KeyPrefetch(enabled=True, key_cache_size=512)


def test_kek_secret_ref_is_no_longer_a_policy_field():
    # The KEK belongs to the ShardSet (spec.keyEncryption); the CRD no longer declares it here.
    with pytest.raises(SpecError, match=r"spec\.keyPrefetch\.kekSecretRef: unknown field"):
        parse_prefetchpolicy({"shardSetRef": {"name": "o"}, "keyPrefetch": {"kekSecretRef": {"name": "k"}}})


@pytest.mark.parametrize("case", invalid_cases("PrefetchPolicy"), ids=lambda c: c.id)
def test_invalid_case_is_refused_naming_the_field(case):
    with pytest.raises(SpecError) as err:
        parse_prefetchpolicy(case.obj.get("spec"))
    assert case.field in str(err.value)


def test_there_are_at_least_three_invalid_cases():
    assert len(invalid_cases("PrefetchPolicy")) >= 3
