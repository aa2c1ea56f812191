"""The shadow's anomaly routes against a real node and a real history: an encrypting overwrite of a table becomes a
closed incident naming exactly the overwritten keys, the incident's plan puts them back and leaves a key written
again since (a conflict) alone, and the what-if scores a batch without writing it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random

from tests.support.shadow import node_and_shadow
from tests.support.waiting import wait_for_async

SETTINGS = {"tables": ["t"], "anomaly": {"intervalSeconds": 1}}


def text(rng: random.Random) -> bytes:
    words = ["order", "paid", "shipped", "customer", "amount", "sku", "note"]
    return json.dumps({w: rng.choice(words) for w in rng.sample(words, 4)}).encode() * 4


async def test_an_incident_is_found_listed_and_reverted_except_a_key_written_again(tmp_path) -> None:
    rng = random.Random(3)
    async with node_and_shadow(tmp_path, SETTINGS) as p:
        originals = {f"k{i:02}": text(rng) for i in range(60)}
        for key, value in originals.items():
            await p.put("t", key, value)
        await p.wait_caught_up()
        await asyncio.sleep(3.5)  # a few quiet windows close before the attack
        attacked = sorted(originals)[10:40]
        for key in attacked:
            await p.put("t", key, os.urandom(256))
        await p.wait_caught_up()

        async def closed_incident() -> dict | None:
            status, body = await p.get("/v1/anomalies")
            assert status == 200
            done = [i for i in body["incidents"] if i["state"] == "closed"]
            return done[0] if done else None

        await wait_for_async(closed_incident, timeout=30, what="a closed incident")
        inc = await closed_incident()
        assert inc is not None and inc["table"] == "t" and inc["keys"] == len(attacked)
        assert inc["kind"] == "encryption" and inc["score"] >= 0.8
        # Half the table's keys: a broad incident (its severity counts the table's keys, counted by the history).
        assert p.shadow.history is not None and p.shadow.history.key_count("t") == len(originals)
        assert inc["severity"] >= 0.5
        status, keys = await p.get(f"/v1/tables/t/anomalies/{inc['id']}/keys")
        assert status == 200 and [k["key"] for k in keys["keys"]] == attacked and keys["next"] is None
        status, timeline = await p.get("/v1/tables/t/anomalies")
        assert status == 200 and any(w["incident"] == inc["id"] for w in timeline["windows"])
        assert [i["id"] for i in timeline["incidents"]] == [inc["id"]]
        status, missing = await p.get("/v1/tables/t/anomalies/t.999999/keys")
        assert status == 404

        # The application writes one attacked key again: the plan must leave it alone.
        rewritten = attacked[0]
        later = text(rng)
        await p.put("t", rewritten, later)
        await p.wait_caught_up()
        status, plan = await p.post("/v1/reversions", {
            "name": "undo", "incident": {"shard": 0, "table": "t", "id": inc["id"]}, "lsn": inc["knownGoodLsn"]})
        assert status == 201, plan
        assert (plan["restore"], plan["create"], plan["delete"]) == (len(attacked) - 1, 0, 0)
        assert plan["excluded"] == 1 and plan["conflicts"] == 1
        status, _ = await p.post("/v1/reversions/undo/run", {"digest": plan["digest"]})
        assert status == 202

        async def completed() -> bool:
            return (await p.get("/v1/reversions/undo"))[1]["phase"] == "completed"

        await wait_for_async(completed, timeout=30, what="the reversion to complete")
        for key, value in originals.items():
            want = later if key == rewritten else value
            assert await p.node_value("t", key) == want, key

        # Another shard's incident plans nothing here; a wrong id is a clear error.
        status, other = await p.post("/v1/reversions", {
            "name": "other", "incident": {"shard": 3, "table": "t", "id": inc["id"]}, "lsn": inc["knownGoodLsn"]})
        assert status == 201 and other["restore"] + other["create"] + other["delete"] == 0


async def test_what_if_scores_a_batch_without_writing_it(tmp_path) -> None:
    rng = random.Random(5)
    async with node_and_shadow(tmp_path, SETTINGS) as p:
        for i in range(40):
            await p.put("t", f"k{i:02}", text(rng))
        await p.wait_caught_up()
        wipe = {"changes": [{"op": "put", "key": f"k{i:02}", "value": base64.b64encode(os.urandom(200)).decode()}
                            for i in range(40)]}
        status, risky = await p.post("/v1/tables/t/whatif", wipe)
        assert status == 200, risky
        assert risky["counts"] == {"create": 0, "overwrite": 40, "delete": 0, "unchanged": 0}
        assert risky["wouldAlarm"] and risky["score"] >= risky["threshold"] and risky["severity"] > 0
        status, calm = await p.post("/v1/tables/t/whatif", {"changes": [
            {"op": "put", "key": "new-1", "text": "hello"}, {"op": "delete", "key": "absent"}]})
        assert status == 200 and not calm["wouldAlarm"]
        assert calm["counts"] == {"create": 1, "overwrite": 0, "delete": 0, "unchanged": 1} and calm["bytes"] == 5
        assert await p.node_value("t", "new-1") is None  # nothing was written
        for bad in ({"changes": []}, {"changes": [{"op": "put", "key": "a"}]},
                    {"changes": [{"op": "move", "key": "a"}]}, {"changes": [{"op": "put", "key": "a", "value": "!"}]},
                    {"changes": [{"op": "delete", "key": "a"}], "extra": 1}):
            status, err = await p.post("/v1/tables/t/whatif", bad)
            assert status == 400 and err["error"] == "invalid_body", bad
