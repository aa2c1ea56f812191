"""Reversions end to end on a real node and shadow: plan, approval by digest, conditional writes, conflicts,
resume after a crash without writing anything twice."""

from __future__ import annotations

from chronoshard.shardnode.serving.changestream import ChangeStreamClient

from tests.support.shadow import Pair, node_and_shadow
from tests.support.waiting import wait_for_async


async def completed(p: Pair, name: str) -> dict:
    async def done():
        status, body = await p.get(f"/v1/reversions/{name}")
        return body if body["phase"] in ("completed", "failed") else None

    return await wait_for_async(done, what=f"reversion {name} to finish")


async def setup_history(p: Pair) -> int:
    """a, b, c at the point; then a changed, b deleted, d created. Returns the point's LSN."""
    await p.put("t", "a", b"a0")
    await p.put("t", "b", b"b0")
    point = await p.put("t", "c", b"c0")
    await p.put("t", "a", b"a1")
    await p.delete("t", "b")
    await p.put("t", "d", b"d1")
    await p.put("u", "x", b"other table")
    await p.wait_caught_up()
    return point


async def test_plan_approve_and_run_to_the_point(tmp_path):
    async with node_and_shadow(tmp_path) as p:
        point = await setup_history(p)
        req = {"name": "ns.undo", "tables": ["t"], "lsn": point}
        status, plan = await p.post("/v1/reversions", req)
        assert status == 201, plan
        assert (plan["restore"], plan["create"], plan["delete"], plan["bytes"]) == (1, 1, 1, 4)
        assert plan["phase"] == "planned" and plan["point"] == {"lsn": point, "time": None}
        assert [(i["key"], i["action"]) for i in plan["sample"]] == [("a", "restore"), ("b", "create"),
                                                                     ("d", "delete")]
        assert len(plan["digest"]) == 64 and plan["conflicts"] == 0
        status, again = await p.post("/v1/reversions", req)
        assert status == 200 and again["digest"] == plan["digest"]
        status, other = await p.post("/v1/reversions", {**req, "lsn": point - 1})
        assert status == 409 and other["error"] == "plan_exists"

        status, refused = await p.post("/v1/reversions/ns.undo/run", {"digest": "0" * 64})
        assert status == 409 and refused["error"] == "digest_mismatch"
        assert await p.node_value("t", "a") == b"a1"  # nothing ran
        status, started = await p.post("/v1/reversions/ns.undo/run", {"digest": plan["digest"]})
        assert status == 202
        done = await completed(p, "ns.undo")
        assert (done["phase"], done["done"], done["skipped"], done["remaining"]) == ("completed", 3, 0, 0)
        assert [await p.node_value("t", k) for k in "abcd"] == [b"a0", b"b0", b"c0", None]
        assert await p.node_value("u", "x") == b"other table"  # another table: untouched
        # The reversion's writes are ordinary writes: logged and captured, themselves revertible.
        await p.wait_caught_up()
        assert [v["op"] for v in (await p.get("/v1/tables/t/history/d"))[1]["versions"]] == ["put", "delete"]
        status, rerun = await p.post("/v1/reversions/ns.undo/run", {"digest": plan["digest"]})
        assert status == 202 and rerun["done"] == 3  # a completed run is not run again
        status, gone = await p.get("/v1/reversions/nope")
        assert status == 404


async def test_keys_written_after_the_plan_are_conflicts_not_overwritten_unless_asked(tmp_path):
    async with node_and_shadow(tmp_path) as p:
        point = await setup_history(p)
        _, plan = await p.post("/v1/reversions", {"name": "keep", "tables": ["t"], "lsn": point})
        _, over = await p.post("/v1/reversions", {"name": "over", "keys": ["a"], "lsn": point,
                                                  "overwriteLater": True})
        later = await p.put("t", "a", b"written after the plan")
        await p.wait_caught_up()
        _, seen = await p.get("/v1/reversions/keep")
        assert seen["conflicts"] == 1  # the capture saw the later write before anything ran
        await p.post("/v1/reversions/keep/run", {"digest": plan["digest"]})
        done = await completed(p, "keep")
        assert (done["done"], done["skipped"], done["conflicts"]) == (2, 1, 1)
        assert await p.node_value("t", "a") == b"written after the plan"
        assert await p.node_value("t", "b") == b"b0"
        await p.post("/v1/reversions/over/run", {"digest": over["digest"]})
        done = await completed(p, "over")
        assert (done["done"], done["conflicts"]) == (1, 1)
        assert await p.node_value("t", "a") == b"a0"
        await p.wait_caught_up()
        versions = (await p.get("/v1/tables/t/history/a"))[1]["versions"]
        assert [v["lsn"] for v in versions if v["lsn"] > later] and versions[-1]["value"] == "YTA="


async def test_a_crash_after_the_writes_resumes_without_writing_twice_or_counting_conflicts(tmp_path):
    async with node_and_shadow(tmp_path) as p:
        point = await setup_history(p)
        _, plan = await p.post("/v1/reversions", {"name": "r", "tables": ["t"], "lsn": point})
        sh = p.shadow
        store = sh.plans
        assert store is not None
        # What a run does before a crash: mark the batch in flight, send its writes... and die there.
        store.set_phase("r", "running")
        batch, _ = store.next_batch("r", 2)
        client = ChangeStreamClient(p.node_url, p.session)
        for _, item, _ in batch:
            value = sh.store.value_at(item.table, item.key, lsn=item.target_lsn).value
            assert await client.put_if(item.table, item.key, value, item.expected_lsn) is not None
        await p.wait_caught_up()
        await sh.runs.resume()  # the next start resumes every running plan
        done = await completed(p, "r")
        assert (done["done"], done["skipped"], done["conflicts"]) == (3, 0, 0)
        await p.wait_caught_up()
        for key in ("a", "b"):
            versions = (await p.get(f"/v1/tables/t/history/{key}"))[1]["versions"]
            assert len([v for v in versions if v["lsn"] > plan["planLsn"]]) == 1, key  # written once
        assert [await p.node_value("t", k) for k in "abcd"] == [b"a0", b"b0", b"c0", None]


async def test_ranges_include_both_ends_and_keys_lists_name_keys(tmp_path):
    async with node_and_shadow(tmp_path) as p:
        point = await setup_history(p)
        _, ranged = await p.post("/v1/reversions", {"name": "rg", "tables": ["t"], "lsn": point,
                                                    "range": {"start": "b", "end": "d"}})
        assert [(i["key"], i["action"]) for i in ranged["sample"]] == [("b", "create"), ("d", "delete")]
        _, keyed = await p.post("/v1/reversions", {"name": "ks", "lsn": point, "keys": ["a", "zz"]})
        assert [(i["table"], i["key"]) for i in keyed["sample"]] == [("t", "a")]  # every table's a, zz


async def test_bad_requests_change_nothing(tmp_path):
    async with node_and_shadow(tmp_path, {"reversion": {"maxBlocks": 2}}) as p:
        point = await setup_history(p)
        for body, code in [({}, "invalid_body"), ({"name": "x"}, "invalid_body"),
                           ({"name": "x", "lsn": 1, "time": 1}, "invalid_body"),
                           ({"name": "bad/name", "lsn": 1}, "invalid_body"),
                           ({"name": "x", "lsn": 1, "keys": ["a"], "range": {"start": "a"}}, "invalid_body"),
                           ({"name": "x", "lsn": 1, "range": {"start": "b", "end": "a"}}, "invalid_body"),
                           ({"name": "x", "lsn": 1, "surprise": True}, "invalid_body"),
                           ({"name": "x", "lsn": 10**9}, "point_ahead"),
                           ({"name": "x", "tables": ["t"], "lsn": point}, "plan_too_large")]:
            status, err = await p.post("/v1/reversions", body)
            assert status == 400 and err["error"] == code, (body, err)
        assert (await p.get("/v1/reversions/x"))[0] == 404  # nothing was stored
        status, err = await p.post("/v1/reversions/x/run", {"digest": 5})
        assert status == 400
        status, body = await p.post("/v1/reversions", {"name": "x", "keys": ["a"], "time": "2000-01-01T00:00:00Z"})
        assert status == 201 and body["point"]["lsn"] == 0  # before the history: the empty state
        assert [(i["key"], i["action"]) for i in body["sample"]] == [("a", "delete")]


async def test_a_key_absent_at_the_plan_then_written_and_deleted_again_is_a_conflict(tmp_path):
    # b is absent when planned (the plan re-creates it); a writer then puts and deletes it: the node's "absent"
    # precondition would let the reversion write over that change, the history check does not.
    async with node_and_shadow(tmp_path) as p:
        point = await setup_history(p)
        _, plan = await p.post("/v1/reversions", {"name": "aba", "keys": ["b"], "lsn": point})
        assert [(i["key"], i["action"]) for i in plan["sample"]] == [("b", "create")]
        await p.put("t", "b", b"written after the plan")
        await p.delete("t", "b")
        await p.post("/v1/reversions/aba/run", {"digest": plan["digest"]})
        done = await completed(p, "aba")
        assert (done["done"], done["skipped"], done["conflicts"]) == (0, 1, 1)
        assert await p.node_value("t", "b") is None
