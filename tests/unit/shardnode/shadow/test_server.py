"""The shadow's REST API against a real node and a real history: answers, pagination, strict parameters."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from datetime import UTC, datetime

import pytest

from tests.support.shadow import node_and_shadow


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


async def test_history_at_state_and_diff_answer_from_the_history(tmp_path):
    async with node_and_shadow(tmp_path) as p:
        l1 = await p.put("t", "a", b"one")
        l2 = await p.put("t", "b", b"bee")
        l3 = await p.put("t", "a", b"two")
        l4 = await p.delete("t", "b")
        await p.wait_caught_up()

        status, body = await p.get("/v1/tables/t/history/a")
        assert status == 200 and body["next"] is None
        assert [(v["lsn"], v["op"], v["value"]) for v in body["versions"]] == [
            (l1, "put", b64(b"one")), (l3, "put", b64(b"two"))]
        # pagination by LSN: limit 1 gives next = the last LSN of the page
        status, page = await p.get("/v1/tables/t/history/a", limit=1)
        assert [v["lsn"] for v in page["versions"]] == [l1] and page["next"] == l1
        status, page = await p.get("/v1/tables/t/history/a", limit=1, after=l1)
        assert [v["lsn"] for v in page["versions"]] == [l3]

        status, at = await p.get("/v1/tables/t/at/a", lsn=l2)
        assert status == 200 and (at["lsn"], at["value"], at["exact"]) == (l1, b64(b"one"), True)
        status, gone = await p.get("/v1/tables/t/at/b", lsn=l4)
        assert status == 404 and gone["error"] == "not_found"

        status, st = await p.get("/v1/tables/t/state", lsn=l2, values="true")
        assert st["lsn"] == l2 and st["next"] is None and st["exact"] is True
        assert [(e["key"], e["value"]) for e in st["entries"]] == [("a", b64(b"one")), ("b", b64(b"bee"))]
        status, now = await p.get("/v1/tables/t/state")
        assert now["lsn"] == l4 and [e["key"] for e in now["entries"]] == ["a"] and "value" not in now["entries"][0]
        status, page = await p.get("/v1/tables/t/state", lsn=l2, limit=1)
        assert [e["key"] for e in page["entries"]] == ["a"] and page["next"] == "a"

        status, d = await p.get("/v1/tables/t/diff", fromLsn=l2, toLsn=l4)
        assert status == 200 and {(e["key"], e["change"]) for e in d["entries"]} == {("a", "changed"),
                                                                                     ("b", "deleted")}


async def test_times_are_rfc3339_or_unix_seconds(tmp_path):
    async with node_and_shadow(tmp_path) as p:
        await p.put("t", "k", b"first")
        await p.wait_caught_up()
        between = time.time()
        await asyncio.sleep(0.01)  # the next write's commit time is after `between`
        await p.put("t", "k", b"second")
        await p.wait_caught_up()
        rfc = datetime.fromtimestamp(between, UTC).isoformat().replace("+00:00", "Z")
        for t in (repr(between), rfc):
            status, at = await p.get("/v1/tables/t/at/k", time=t)
            assert status == 200 and at["value"] == b64(b"first"), t
        status, d = await p.get("/v1/tables/t/diff", **{"from": rfc})
        assert [(e["key"], e["change"]) for e in d["entries"]] == [("k", "changed")]


@pytest.mark.parametrize("path, params, code", [
    ("/v1/tables/t/at/k", {}, "invalid_parameter"),
    ("/v1/tables/t/at/k", {"time": "yesterday"}, "invalid_parameter"),
    ("/v1/tables/t/at/k", {"time": "2026-12-02T10:00:00"}, "invalid_parameter"),  # no offset
    ("/v1/tables/t/at/k", {"time": "nan"}, "invalid_parameter"),
    ("/v1/tables/t/at/k", {"time": "-5"}, "invalid_parameter"),
    ("/v1/tables/t/at/k", {"lsn": "-1"}, "invalid_parameter"),
    ("/v1/tables/t/at/k", {"lsn": "1.5"}, "invalid_parameter"),
    ("/v1/tables/t/at/k", {"lsn": "1", "time": "1"}, "invalid_parameter"),
    ("/v1/tables/t/history/k", {"limit": "0"}, "invalid_parameter"),
    ("/v1/tables/t/history/k", {"limit": "1001"}, "invalid_parameter"),
    ("/v1/tables/t/history/k", {"after": "x"}, "invalid_parameter"),
    ("/v1/tables/t/state", {"limit": "abc"}, "invalid_parameter"),
    ("/v1/tables/t/state", {"values": "yes"}, "invalid_parameter"),
    ("/v1/tables/t/state", {"after": "a" * 1025}, "invalid_parameter"),
    ("/v1/tables/t/diff", {}, "invalid_parameter"),
    ("/v1/tables/t/diff", {"fromLsn": "5", "toLsn": "2"}, "invalid_parameter"),
    ("/v1/tables/bad!table/state", {}, "invalid_table"),
])
async def test_bad_parameters_are_400_json_errors(tmp_path, path, params, code):
    async with node_and_shadow(tmp_path) as p:
        await p.put("t", "k", b"v")
        await p.wait_caught_up()
        status, body = await p.get(path, **params)
        assert status == 400 and body["error"] == code and body["message"]


async def test_keys_and_rewrap_answer_in_the_nodes_shapes(tmp_path):
    async with node_and_shadow(tmp_path) as p:
        await p.put("t", "a", b"x")
        await p.put("t", "b", b"y")
        await p.wait_caught_up()
        status, node_keys = await _node_get(p, "/v1/keys")
        status, keys = await p.get("/v1/keys")
        assert status == 200 and set(keys) == set(node_keys) - {"queuedWrites"}  # the node alone queues writes
        assert keys["blocks"] == {"1": 2} and keys["primary"] == node_keys["primary"] == 1
        status, rewrap = await p.get("/v1/rewrap")
        status, node_rewrap = await _node_get(p, "/v1/rewrap")
        assert status == 200 and {"state", "blocks", "remaining"} <= set(rewrap) & set(node_rewrap)
        status, bad = await p.post("/v1/rewrap", {"batchSize": 0})
        assert status == 400 and bad["error"] == "invalid_body"


async def test_status_reports_capture_and_tiers(tmp_path):
    async with node_and_shadow(tmp_path, {"tables": ["t"]}) as p:
        await p.put("t", "a", b"x" * 100)
        await p.wait_caught_up()
        status, st = await p.get("/v1/status")
        assert status == 200 and st["capture"]["state"] == "running" and st["capture"]["lagLsn"] == 0
        assert st["capture"]["tables"] == ["t"] and st["configError"] is None
        assert st["lagLsn"] == 0 and "tiers" in st


async def test_store_calls_run_in_the_reader_pool_not_on_the_event_loop(tmp_path):
    async with node_and_shadow(tmp_path) as p:
        loop_thread = threading.current_thread().name
        name = await p.shadow.read(lambda: threading.current_thread().name)
        assert name.startswith("shadow-read") and name != loop_thread


async def _node_get(p, path):
    async with p.session.get(p.node_url + path) as r:
        return r.status, await r.json()
