"""The change-stream routes over HTTP on a real node: strict input handling (4xx JSON, nothing changed), frames
within the response budget, and every node route documented in openapi.yaml."""

import base64

import aiohttp
import pytest
from chronoshard.shardnode.node.server import NodeConfig, create_app
from chronoshard.shardnode.serving.scaffold import load_openapi, route_policies

from tests.support.servers import keyring_dir, serve


@pytest.fixture
async def node(tmp_path):
    app = create_app(NodeConfig(data_dir=tmp_path / "data", keyring_dir=keyring_dir(tmp_path),
                                trim_interval_seconds=3600, max_response_bytes=1000))
    async with serve(app) as url, aiohttp.ClientSession() as s:
        yield url, s, app


async def state(url, s):
    changes = await (await s.get(f"{url}/v1/changes", params={"frames": "true"})).json()
    return changes, await (await s.get(f"{url}/v1/consumers")).json()


@pytest.mark.parametrize("method, path, headers, body, status, code", [
    ("PUT", "/v1/tables/t/blocks/k", {"X-Chronoshard-If-Lsn": "abc"}, b"x", 400, "invalid_header"),
    ("PUT", "/v1/tables/t/blocks/k", {"X-Chronoshard-If-Lsn": "-1"}, b"x", 400, "invalid_header"),
    ("PUT", "/v1/tables/t/blocks/k", {"X-Chronoshard-If-Lsn": "01"}, b"x", 400, "invalid_header"),
    ("PUT", "/v1/tables/t/blocks/k", {"X-Chronoshard-If-Lsn": "1.0"}, b"x", 400, "invalid_header"),
    ("PUT", "/v1/tables/t/blocks/k", {"X-Chronoshard-If-Lsn": ""}, b"x", 400, "invalid_header"),
    ("PUT", "/v1/tables/t/blocks/k", {"X-Chronoshard-If-Lsn": str(2**63)}, b"x", 400, "invalid_header"),
    ("DELETE", "/v1/tables/t/blocks/k", {"X-Chronoshard-If-Lsn": "+1"}, None, 400, "invalid_header"),
    ("PUT", "/v1/tables/t/blocks/k", {"X-Chronoshard-If-Lsn": "5"}, b"x", 412, "precondition_failed"),
    ("PUT", "/v1/consumers/bad%20name", {}, b"{}", 400, "invalid_name"),
    ("PUT", "/v1/consumers/c", {}, b'{"startLsn": -1}', 400, "invalid_body"),
    ("PUT", "/v1/consumers/c", {}, b'{"startLsn": "1"}', 400, "invalid_body"),
    ("PUT", "/v1/consumers/c", {}, b'{"startLsn": true}', 400, "invalid_body"),
    ("PUT", "/v1/consumers/c", {}, b'{"reset": 1}', 400, "invalid_body"),
    ("PUT", "/v1/consumers/c", {}, b'{"other": 1}', 400, "invalid_body"),
    ("PUT", "/v1/consumers/c", {}, b'{"startLsn": 99}', 400, "invalid_lsn"),
    ("PUT", "/v1/consumers/c", {}, b"[]", 400, "invalid_body"),
    ("POST", "/v1/consumers/existing/ack", {}, b"{}", 400, "invalid_body"),
    ("POST", "/v1/consumers/existing/ack", {}, b'{"lsn": 1.5}', 400, "invalid_body"),
    ("POST", "/v1/consumers/existing/ack", {}, b'{"lsn": 2}', 400, "invalid_lsn"),
    ("POST", "/v1/consumers/nobody/ack", {}, b'{"lsn": 0}', 404, "not_found"),
    ("GET", "/v1/consumers/nobody", {}, None, 404, "not_found"),
    ("DELETE", "/v1/consumers/nobody", {}, None, 404, "not_found"),
    ("GET", "/v1/changes?frames=yes", {}, None, 400, "invalid_parameter"),
    ("GET", "/v1/changes?tables=", {}, None, 400, "invalid_parameter"),
    ("GET", "/v1/changes?tables=a,,b", {}, None, 400, "invalid_parameter"),
    ("GET", "/v1/changes?tables=a%20b", {}, None, 400, "invalid_parameter"),
    ("GET", "/v1/changes?consumer=nobody", {}, None, 404, "not_found"),
    ("GET", "/v1/changes?consumer=a/b", {}, None, 400, "invalid_name"),
    ("GET", "/v1/snapshot?tables=-x", {}, None, 400, "invalid_parameter"),
])
async def test_bad_input_is_a_json_4xx_and_changes_nothing(node, method, path, headers, body, status, code):
    url, s, _ = node
    await s.put(f"{url}/v1/tables/t/blocks/k", data=b"kept")
    assert (await s.put(f"{url}/v1/consumers/existing")).status == 201
    before = await state(url, s)
    r = await s.request(method, url + path, data=body, headers=headers)
    assert r.status == status and r.content_type == "application/json"
    err = await r.json()
    assert err["error"] == code and err["message"]
    assert await state(url, s) == before
    assert await (await s.get(f"{url}/v1/tables/t/blocks/k")).read() == b"kept"


async def test_register_answers_201_then_200_and_the_start_is_checked(node):
    url, s, _ = node
    await s.put(f"{url}/v1/tables/t/blocks/a", data=b"1")
    r = await s.put(f"{url}/v1/consumers/c", json={})
    assert r.status == 201 and (await r.json())["registeredLsn"] == 1
    assert (await s.put(f"{url}/v1/consumers/c")).status == 200
    r = await s.put(f"{url}/v1/consumers/d", json={"startLsn": 0})
    assert r.status == 409 and (await r.json()) | {"message": ""} == {"error": "start_unavailable", "message": "",
                                                                       "earliestLsn": 1}
    await s.put(f"{url}/v1/tables/t/blocks/b", data=b"2")
    r = await s.put(f"{url}/v1/consumers/d", json={"startLsn": 1})  # LSN 2 carries its frame: allowed
    assert r.status == 201 and (await r.json())["lagLsn"] == 1
    r = await s.delete(f"{url}/v1/consumers/d")
    assert r.status == 200 and (await r.json())["name"] == "d"


async def test_frames_are_paged_within_the_response_budget(node):
    url, s, _ = node
    await s.put(f"{url}/v1/consumers/c")
    for i in range(5):
        await s.put(f"{url}/v1/tables/t/blocks/k{i}", data=bytes([i]) * 400)  # 435-byte frames, budget 1000
    page = await (await s.get(f"{url}/v1/changes", params={"frames": "true", "limit": "100"})).json()
    assert [c["lsn"] for c in page["changes"]] == [1, 2] and page["next"] == 2
    frames = [base64.b64decode(c["frame"]) for c in page["changes"]]
    assert [len(f) for f in frames] == [435, 435]
    stored = await (await s.get(f"{url}/v1/tables/t/frames/k0")).read()
    assert frames[0] == stored  # exactly the stored bytes
    plain = await (await s.get(f"{url}/v1/changes", params={"limit": "100"})).json()
    assert len(plain["changes"]) == 5 and "frame" not in plain["changes"][0]  # the cache's view is unchanged


async def test_every_node_route_is_in_the_openapi_document(node):
    _, _, app = node
    doc = load_openapi("node")["paths"]
    documented = {(m.upper(), p) for p, item in doc.items() for m in item if m in {"get", "put", "post", "delete"}}
    served = set(route_policies(app))
    assert served <= documented, sorted(served - documented)
    assert {("PUT", "/v1/consumers/{name}"), ("GET", "/v1/snapshot"), ("GET", "/v1/status")} <= served


def test_settings_overlay_the_bounds(tmp_path):
    cfg = NodeConfig(data_dir=tmp_path, keyring_dir=tmp_path)
    assert (cfg.change_log_max_retain, cfg.change_log_max_retain_bytes) == (2_000_000, 1 << 30)
    cfg.apply({"changeLogMaxRetain": 10, "changeLogMaxRetainBytes": 2048})
    assert (cfg.change_log_max_retain, cfg.change_log_max_retain_bytes) == (10, 2048)
    cfg.apply({"changeLogMaxRetain": 0, "changeLogMaxRetainBytes": "big"})
    assert (cfg.change_log_max_retain, cfg.change_log_max_retain_bytes) == (10, 2048)


async def test_a_write_queued_right_after_the_registration_logs_its_frame(tmp_path):
    from chronoshard.shardnode.node import changelog, stream_api
    from chronoshard.shardnode.node.store import put_in_txn

    from tests.support.stores import open_store, ring

    s, holder = open_store(tmp_path, ring(1, (1,)))
    try:
        await s.put("t", "before", b"0")
        # queued back to back: often one group, registration first; the put reads the flag when it runs
        reg = s.submit(stream_api._register_job(s, "c", None, False))
        put = s.submit(lambda c: put_in_txn(c, holder.keyring, "t", "k", b"1", frames=s.frames_enabled))
        reg.result(10)
        lsn = put.result(10).lsn
        (entry,) = await s.read(lambda c: list(changelog.iter_changes(c, lsn - 1, 1, frames=True)))
        assert entry.frame is not None and s.frames_enabled
        await s.write(stream_api._unregister_job(s, "c"))
        assert not s.frames_enabled
        res = await s.put("t", "k", b"2")
        (entry,) = await s.read(lambda c: list(changelog.iter_changes(c, res.lsn - 1, 1, frames=True)))
        assert entry.frame is None
    finally:
        s.close()
