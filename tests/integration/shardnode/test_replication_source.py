"""The primary's side of mirroring against real `chronoshard-node` processes (docs/mirroring.md): a sync write is
answered only once a listed mirror slot acknowledged its LSN (the acknowledgement driven here with the
ChangeStreamClient, as a mirror's replicator sends it), else 503 sync_timeout with the committed LSN; in async mode
writes are held while the mirror lags more than maxLagSeconds, resumed by its ack or refused with 503 mirror_lag;
`GET /v1/health` and its history, which outlives a restart."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from chronoshard.shardnode.serving.changestream import ChangeStreamClient

from tests.integration.shardnode.procs import Proc, http, http_json, node
from tests.support.servers import keyring_dir
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

MIRROR = "mirror.ns-b.orders-b"


def stream(url: str, call: str, *args: Any) -> Any:
    """One ChangeStreamClient call (register, ack, ...) on a session of its own."""
    async def run() -> Any:
        async with aiohttp.ClientSession() as session:
            return await getattr(ChangeStreamClient(url, session), call)(*args)
    return asyncio.run(run())


def set_role(url: str, doc: dict[str, Any]) -> dict[str, Any]:
    status, body = http_json("PUT", url + "/v1/replication", doc)
    assert status == 200, body
    return body


def primary(term: int = 1, **doc: Any) -> dict[str, Any]:
    return {"term": term, "role": "primary", "mirrors": [MIRROR], **doc}


def put(url: str, key: str, value: bytes = b"v") -> tuple[int, dict[str, Any]]:
    status, body = http("PUT", f"{url}/v1/tables/t/blocks/{key}", value, timeout=60)
    return status, json.loads(body)


class Background:
    """A request running in a thread: the answer is read once it came."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.result: Any = None
        self.thread = threading.Thread(target=lambda: setattr(self, "result", fn(*args)))
        self.thread.start()

    def answer(self) -> Any:
        self.thread.join(60)
        assert not self.thread.is_alive()
        return self.result


def metrics(url: str) -> str:
    status, body = http("GET", url + "/metrics")
    assert status == 200
    return body.decode()


def last_lsn(url: str) -> int:
    return int(http_json("GET", url + "/v1/status")[1]["lastLsn"])


@pytest.fixture
def source(tmp_path: Path) -> Any:
    proc = node(tmp_path, keyring_dir(tmp_path)).start()
    yield proc
    proc.stop()


def test_a_sync_write_is_answered_once_a_listed_mirror_acked_it(source: Proc):
    url = source.url
    stream(url, "register", MIRROR)
    stream(url, "register", "shadow.x")  # another consumer: its acks do not count
    set_role(url, primary(mode="sync", syncTimeoutSeconds=60))
    pending = Background(put, url, "a", b"one")
    # The write commits (its LSN is in the log) but is not answered: no mirror has acknowledged it yet.
    lsn = wait_for(lambda: last_lsn(url) or None, what="the sync write to commit")
    stream(url, "ack", "shadow.x", lsn)
    assert pending.thread.is_alive()
    # The lag pass lists the mirror's slot (every 250 ms).
    wait_for(lambda: [m["consumer"] for m in http_json("GET", url + "/v1/replication")[1]["mirrors"]] == [MIRROR],
             what="the mirror slot in GET /v1/replication")
    assert pending.thread.is_alive()
    stream(url, "ack", MIRROR, lsn)
    status, body = pending.answer()
    assert (status, body["lsn"]) == (200, lsn)
    # Deletes wait the same way.
    pending = Background(lambda: http("DELETE", f"{url}/v1/tables/t/blocks/a", timeout=60))
    lsn = wait_for(lambda: last_lsn(url) if last_lsn(url) > lsn else None, what="the sync delete to commit")
    assert pending.thread.is_alive()
    stream(url, "ack", MIRROR, lsn)
    assert pending.answer()[0] == 200


def test_a_sync_write_no_mirror_acks_is_503_but_committed(source: Proc):
    url = source.url
    stream(url, "register", MIRROR)
    set_role(url, primary(mode="sync", syncTimeoutSeconds=0.3))
    status, body = put(url, "a", b"kept")
    assert (status, body["error"], body["committed"]) == (503, "sync_timeout", True)
    assert http("GET", f"{url}/v1/tables/t/blocks/a") == (200, b"kept")  # committed on the primary
    assert body["lsn"] == last_lsn(url)
    # No listed slot at all (the mirror's slot was dropped): held like a timeout.
    stream(url, "unregister", MIRROR)
    status, body = put(url, "b")
    assert (status, body["error"]) == (503, "sync_timeout")
    assert "chronoshard_node_sync_timeouts_total 2.0" in metrics(url)
    # Once the mirror's slot is back and acks, sync writes are answered again.
    stream(url, "register", MIRROR)
    set_role(url, primary(mode="sync", syncTimeoutSeconds=60))
    pending = Background(put, url, "c")
    lsn = wait_for(lambda: last_lsn(url) if last_lsn(url) > body["lsn"] else None, what="the write to commit")
    stream(url, "ack", MIRROR, lsn)
    assert pending.answer()[0] == 200


def test_async_writes_are_held_while_the_mirror_lags(source: Proc):
    url = source.url
    stream(url, "register", MIRROR)
    set_role(url, primary(mode="async", maxLagSeconds=0.3, holdTimeoutSeconds=0.3))
    status, body = put(url, "a")
    assert status == 200  # async: answered on the primary's commit
    # The mirror does not ack: its oldest unacknowledged change ages past maxLagSeconds.
    wait_for(lambda: http_json("GET", url + "/v1/replication")[1]["writes"]["reason"] == "mirror_lag",
             what="the lag to exceed maxLagSeconds")
    status, refused = put(url, "b")
    assert (status, refused["error"]) == (503, "mirror_lag") and refused["lagSeconds"] > 0.3
    scraped = metrics(url)
    assert "chronoshard_node_mirror_lag_refusals_total 1.0" in scraped and "chronoshard_node_writes_held 1.0" in scraped
    # A held write goes through once the mirror catches up (a longer hold, same term: the settings apply).
    set_role(url, primary(mode="async", maxLagSeconds=0.3, holdTimeoutSeconds=60))
    pending = Background(put, url, "c")
    wait_for(lambda: http_json("GET", url + "/v1/replication")[1]["writes"]["reason"] == "mirror_lag",
             what="the role update")
    assert pending.thread.is_alive()
    stream(url, "ack", MIRROR, last_lsn(url))
    status, done = pending.answer()
    assert status == 200 and done["lsn"] == last_lsn(url)


def test_health_and_its_history_across_a_restart(tmp_path: Path):
    proc = node(tmp_path, keyring_dir(tmp_path)).start()
    try:
        url = proc.url
        stream(url, "register", MIRROR)
        set_role(url, primary(mode="sync", syncTimeoutSeconds=0.2, healthSampleSeconds=0.2))
        assert put(url, "a")[0] == 503  # a 5xx answer (sync_timeout)
        set_role(url, primary(mode="async", healthSampleSeconds=0.2))
        for key in ("b", "c"):
            assert put(url, key)[0] == 200
        assert http("GET", f"{url}/v1/tables/t/blocks/zz")[0] == 404
        status, now = http_json("GET", url + "/v1/health")
        assert status == 200 and now["restarts"] == 0 and now["uptimeSeconds"] > 0
        assert now["requests"]["total"] >= 4 and now["requests"]["errors"] >= 1
        assert now["requests"]["windowSeconds"] == 60 and 0 < now["requests"]["errorRate"] < 1
        assert now["writeLatencyMs"]["p50"] > 0 and now["writeLatencyMs"]["p99"] >= now["writeLatencyMs"]["p50"]
        assert 0 < now["capacity"]["usedBytes"] <= now["capacity"]["totalBytes"]
        assert now["replication"]["role"] == "primary" and now["replication"]["appliedLsn"] == last_lsn(url)
        # The mirror slot acked nothing of the three writes (as of the lag pass, every 250 ms).
        wait_for(lambda: http_json("GET", url + "/v1/health")[1]["replication"]["lagLsn"] == 3,
                 what="the mirror's lag in the health sample")
        before = wait_for(lambda: (lambda s: s if len(s) >= 3 else None)(
            http_json("GET", url + "/v1/health/history")[1]["samples"]), what="three stored samples")
        times = [s["time"] for s in before]
        assert times == sorted(times)
        proc.stop()
        proc.start()
        assert http_json("GET", url + "/v1/health")[1]["restarts"] == 1
        after = http_json("GET", url + "/v1/health/history?limit=10000")[1]["samples"]
        assert [s["time"] for s in after[:len(before)]] == times  # kept on the volume
        page = http_json("GET", f"{url}/v1/health/history?since={times[0]}&limit=1")[1]["samples"]
        assert [s["time"] for s in page] == [times[1]]
        assert (tmp_path / "data" / "health.sqlite3").exists()
    finally:
        proc.stop()


def test_sync_writes_with_a_real_mirror_and_without_it(tmp_path: Path):
    """A mirror node replicating from the primary acknowledges through its slot: sync writes are answered and are
    on the mirror when they are; with the mirror killed, they time out (committed on the primary)."""
    keyring = keyring_dir(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = node(tmp_path / "a", keyring).start()
    b = node(tmp_path / "b", keyring).start()
    try:
        set_role(b.url, {"term": 1, "role": "mirror", "mode": "sync", "consumer": MIRROR,
                         "source": {"url": a.url, "shardSet": "ns-a/orders-a"}})
        wait_for(lambda: any(s["name"] == MIRROR for s in http_json("GET", a.url + "/v1/consumers")[1]["consumers"]),
                 what="the mirror's slot on the primary")
        set_role(a.url, primary(mode="sync", syncTimeoutSeconds=30))
        for i in range(5):
            status, body = put(a.url, f"k{i}", f"v{i}".encode())
            assert status == 200, body
            # Acknowledged only once the mirror acked it: the mirror has applied that LSN.
            applied = http_json("GET", b.url + "/v1/replication")[1]["appliedLsn"]
            assert applied >= body["lsn"]
        b.kill()
        set_role(a.url, primary(mode="sync", syncTimeoutSeconds=0.5))
        status, body = put(a.url, "late")
        assert (status, body["error"], body["committed"]) == (503, "sync_timeout", True)
    finally:
        b.stop()
        a.stop()


def test_role_refusals_are_not_counted_as_the_nodes_errors(tmp_path: Path):
    """A fenced old primary that clients still write to is doing its job: its 503 fenced answers must not make its
    health look bad (the MirrorSet's health monitor reads errorRate)."""
    proc = node(tmp_path, keyring_dir(tmp_path)).start()
    try:
        url = proc.url
        set_role(url, primary(mode="async"))
        assert put(url, "a")[0] == 200
        set_role(url, {"term": 2, "role": "fenced", "primaryShardSet": "ns/b"})
        for key in ("b", "c", "d"):
            assert put(url, key)[0] == 503
        requests = http_json("GET", url + "/v1/health")[1]["requests"]
        assert requests["total"] >= 4 and requests["errors"] == 0, requests
    finally:
        proc.stop()
