"""A rotation of a MirrorSet's active member counts the mirror members' node reports (pure plan helpers)."""

from chronoshard.operator.keyrotation import plan
from chronoshard.operator.keyrotation.plan import ProcessReport


def node(shard, generation, versions, primary=1, blocks=None):
    return ProcessReport(shard, "node", True, generation, primary, frozenset(versions), blocks or {})


def test_a_mirror_member_is_checked_on_its_nodes_only():
    reports = [node(0, 2, {1, 2}), node(1, 2, {1, 2})]
    assert plan.loaded(reports, 2, 2, 2, plan.MEMBER_ROLES).ready
    # With the ShardSet's own roles the missing caches would hold it up.
    assert not plan.loaded(reports, 2, 2, 2).ready


def test_with_members_names_the_member_that_waits_and_is_ready_only_when_all_are():
    own = plan.Readiness(True)
    lagging = plan.loaded([node(0, 1, {1})], 1, 2, 2, plan.MEMBER_ROLES)
    combined = plan.with_members(own, {"west/orders-b": lagging, "east/orders-c": plan.Readiness(True)})
    assert not combined.ready
    assert combined.waiting == ("west/orders-b shard 0 node: has keyring generation 1, needs 2 with version 2",)
    assert plan.with_members(own, {}).ready
    assert plan.with_members(plan.Readiness(False, ("shard 0 cache: no pod",)), {}).waiting == (
        "shard 0 cache: no pod",)


def test_a_version_is_not_retired_while_a_mirror_still_holds_blocks_or_the_version():
    own_done, _ = plan.old_blocks([node(0, 3, {2}, primary=2, blocks={2: 5})], 1, keep=2)
    mirror_old, _ = plan.old_blocks([node(0, 3, {1, 2}, primary=2, blocks={1: 3, 2: 2})], 1, keep=2)
    assert own_done.ready
    combined = plan.with_members(own_done, {"ns/m": mirror_old})
    assert not combined.ready and combined.waiting[0].startswith("ns/m shard 0 node: 3 block(s)")
    still_holds = plan.dropped([node(0, 3, {1, 2}, primary=2)], 1, [1], 3, plan.MEMBER_ROLES)
    assert not still_holds.ready and "still holds version(s) [1]" in still_holds.waiting[0]
    assert plan.dropped([node(0, 3, {2}, primary=2)], 1, [1], 3, plan.MEMBER_ROLES).ready
