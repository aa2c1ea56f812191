"""Change-log retention: trimming keeps the newest entries and readers can tell they missed some."""

import asyncio

from chronoshard.shardnode.node import changelog

from tests.support.servers import keyring_dir, serve
from tests.support.stores import open_store, ring


async def test_trim_keeps_newest_and_lsns_never_repeat(tmp_path):
    s, _ = open_store(tmp_path, ring(1, (1,)))
    try:
        for i in range(10):
            await s.put("t", f"k{i}", b"v")
        assert await s.write(lambda c: changelog.trim(c, 4)) == 6
        assert await s.write(lambda c: changelog.trim(c, 4)) == 0
        assert await s.read(changelog.first_lsn) == 7 and await s.read(changelog.last_lsn) == 10
        assert [e.lsn for e in await s.read(lambda c: changelog.read(c, 0, 100))] == [7, 8, 9, 10]
        await s.write(lambda c: changelog.trim(c, 0))
        assert await s.read(changelog.first_lsn) == 0
        assert (await s.put("t", "k", b"v")).lsn == 11  # AUTOINCREMENT: trimmed LSNs are not reused
    finally:
        s.close()


async def test_changes_endpoint_reports_gap_after_retention(tmp_path):
    import aiohttp
    from chronoshard.shardnode.node.server import NodeConfig, create_app

    app = create_app(NodeConfig(data_dir=tmp_path / "d", keyring_dir=keyring_dir(tmp_path), change_log_retain=3,
                                trim_interval_seconds=0.05))
    async with serve(app) as url, aiohttp.ClientSession() as s:
        for i in range(8):
            await s.put(f"{url}/v1/tables/t/blocks/k{i}", data=b"v")
        for _ in range(100):
            body = await (await s.get(f"{url}/v1/changes", params={"after": "0"})).json()
            if body["firstLsn"] == 6:
                break
            await asyncio.sleep(0.05)
        assert body["gap"] and body["firstLsn"] == 6 and [c["lsn"] for c in body["changes"]] == [6, 7, 8]
        body = await (await s.get(f"{url}/v1/changes", params={"after": "5"})).json()
        assert not body["gap"] and body["lastLsn"] == 8
        m = await (await s.get(f"{url}/metrics")).text()
        assert "chronoshard_node_changelog_trimmed_total 5.0" in m
