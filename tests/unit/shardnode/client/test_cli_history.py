"""``chronoshard history|at|diff`` against real HTTP servers, one per shard, each answering only for the keys its
shard owns (421 otherwise, as the shadow's routing check does), and ``kubectl-chronoshard`` as a kubectl plugin.

The servers are tests/support/shadowstub.py, serving the contract's JSON (issue #14, section C) in memory: two
shards with different owners and a stale map are easy to set up that way. The same commands against the real
`chronoshard-shadow` process are in tests/integration/operator/test_reversion_real_shadow.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from chronoshard.shardnode.client.cli import EXIT_NOT_FOUND, EXIT_USAGE, main, program_name
from chronoshard.shardnode.client.cli_history import at_summary, diff_rows, history_rows, when
from chronoshard.shardnode.client.history import shadow_endpoint
from chronoshard.shardnode.client.transport import Endpoint
from chronoshard.shardnode.keyspace.partitioning import initial_map

from tests.support.servers import serve
from tests.support.shadowstub import StubShadow

M2 = initial_map(2)
T0 = 1764489600.0  # 2025-11-30T08:00:00Z


def run_cli(*argv: str, stdin: bytes = b"") -> tuple[int, str, bytes]:
    out, bout = io.StringIO(), io.BytesIO()
    code = main(list(argv), out=out, stdin=io.BytesIO(stdin), bout=bout)
    return code, out.getvalue(), bout.getvalue()


def _key_on(shard: int, n: int) -> list[str]:
    keys = [k for k in (f"k{i}" for i in range(200)) if M2.shard_of("t", k) == shard]
    return keys[:n]


def _stubs() -> list[StubShadow]:
    stubs = []
    for shard in (0, 1):
        stub = StubShadow(shard=shard, partition_map=M2.to_dict())
        stub.owns = lambda table, key, shard=shard: M2.shard_of(table, key) == shard
        stubs.append(stub)
    return stubs


def test_pure_formatting():
    assert when(T0) == "2025-11-30T08:00:00.000Z" and when(None) == "-"
    assert history_rows([{"lsn": 3, "time": T0, "op": "put", "size": 4, "keyVersion": 2}]) == [
        [3, "2025-11-30T08:00:00.000Z", "put", 4, 2]]
    assert "not exact" in at_summary("t", {"key": "a", "lsn": 1, "time": T0, "size": 1, "exact": False})
    assert diff_rows([{"key": "a", "change": "created", "sizeAfter": 3, "lsnAfter": 9, "shard": 1}]) == [
        ["a", "created", None, 3, None, 9, 1]]


def test_shadow_is_the_same_host_at_port_7403():
    assert shadow_endpoint(Endpoint.parse("https://10.0.0.7:7401")) == Endpoint("10.0.0.7:7403", "https")
    assert shadow_endpoint(Endpoint("10.0.0.7:7401", None, "o-1.o-headless.ns.svc")) == Endpoint(
        "10.0.0.7:7403", None, "o-1.o-headless.ns.svc")
    assert shadow_endpoint(Endpoint.parse("[fd00::5]:7401")).hostport == "[fd00::5]:7403"


async def test_history_at_and_diff_routed_to_the_owning_shards_shadow(tmp_path: Path):
    stubs = _stubs()
    (a,), (b, c) = _key_on(0, 1), _key_on(1, 2)
    stubs[0].write("t", a, b"one", T0)
    stubs[0].write("t", a, b"two", T0 + 60)
    stubs[0].write("t", a, None, T0 + 120)
    stubs[1].write("t", b, b"bee", T0 + 60)
    stubs[1].write("t", c, b"sea", T0)
    stubs[1].write("t", c, b"sea!", T0 + 90)
    map_file = tmp_path / "map.json"
    map_file.write_text(M2.to_json())
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve(s.app())) for s in stubs]
        eps = ",".join(urls)

        def work() -> None:
            base = ("--shadow-endpoints", eps)
            code, out, _ = run_cli(*base, "history", "t", a)
            assert code == 0, out
            lines = out.splitlines()
            assert lines[0].split() == ["LSN", "TIME", "OP", "SIZE", "KEY-VERSION"]
            assert [ln.split()[2] for ln in lines[1:]] == ["put", "put", "delete"]
            code, out, _ = run_cli(*base, "-o", "json", "history", "t", a, "--limit", "2")
            assert [v["value"] for v in json.loads(out)["versions"]] == ["b25l", "dHdv"]  # one, two
            # Between the second write and the delete, by time; the map came from the shadows themselves.
            code, out, raw = run_cli(*base, "at", "t", a, "--time", "2025-11-30T08:01:30Z", "--raw")
            assert (code, raw) == (0, b"two")
            code, out, _ = run_cli(*base, "at", "t", a, "--lsn", "1")
            assert code == 0 and out.startswith(f"t/{a}: lsn 1 written 2025-11-30T08:00:00.000Z (put, 3 bytes, exact)")
            code, out, _ = run_cli(*base, "-o", "json", "at", "t", b, "--time", str(T0 + 61))
            assert json.loads(out)["value"] == "YmVl"
            assert run_cli(*base, "at", "t", a, "--time", str(T0 + 500))[0] == EXIT_NOT_FOUND  # deleted by then
            code, out, _ = run_cli("--map-file", str(map_file), *base, "diff", "t", "--from", str(T0 + 30),
                                   "--to", "2025-11-30T08:05:00Z")
            assert code == 0, out
            rows = [ln.split() for ln in out.splitlines()[1:]]
            want = sorted([[a, "deleted", "0"], [b, "created", "1"], [c, "changed", "1"]])
            assert sorted([r[0], r[1], r[-1]] for r in rows) == want
            assert [r[0] for r in rows] == sorted(r[0] for r in rows)  # merged across shards in key order
            code, out, _ = run_cli(*base, "-o", "json", "diff", "t", "--from", str(T0 + 30), "--to", str(T0 + 300),
                                   "--limit", "1")
            assert len(json.loads(out)["entries"]) == 1

        await asyncio.to_thread(work)
    # Keyed requests went only to the owner (no 421 retries needed), the diff to every shard.
    assert all(p.split("?")[0].split("/")[-1] == a for m, p in stubs[0].requests if "/history/" in p)
    assert not any(f"/{a}" in p for _, p in stubs[1].requests)
    assert any("/diff" in p for _, p in stubs[1].requests)


async def test_a_stale_map_is_refreshed_after_a_421(tmp_path: Path):
    stubs = _stubs()
    (b,) = _key_on(1, 1)
    stubs[1].write("t", b, b"x", T0)
    stale = tmp_path / "stale.json"
    stale.write_text(initial_map(1).to_json())  # everything on shard 0
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve(s.app())) for s in stubs]

        def work() -> None:
            # A map file never changes, so the refresh reads the same stale map: the one retry still goes to
            # shard 0, which refuses again, and the CLI says so (the shadows' own map fixes it without a file).
            code, _, _ = run_cli("--map-file", str(stale), "--shadow-endpoints", ",".join(urls), "history", "t", b)
            assert code == 1
            code, out, _ = run_cli("--shadow-endpoints", ",".join(urls), "history", "t", b)
            assert code == 0 and len(out.splitlines()) == 2

        await asyncio.to_thread(work)
    assert sum(1 for _, p in stubs[0].requests if "/history/" in p) == 2  # first try and the one retry


def test_usage_errors(capsys):
    assert run_cli("--url", "http://127.0.0.1:1", "history", "t", "k")[0] == EXIT_USAGE
    assert "the client Service (--url) reaches caches only" in capsys.readouterr().err
    for bad in (["at", "t", "k"], ["at", "t", "k", "--time", "yesterday"], ["diff", "t", "--from", "1"]):
        with pytest.raises(SystemExit) as exit_:  # argparse's own usage errors
            run_cli("--shadow-endpoints", "http://127.0.0.1:1", *bad)
        assert exit_.value.code == EXIT_USAGE
    assert "neither RFC 3339" in capsys.readouterr().err


def test_kubectl_plugin_name_and_help():
    assert program_name("/usr/local/bin/kubectl-chronoshard") == "kubectl chronoshard"
    assert program_name("chronoshard") == "chronoshard"
    script = Path(sys.executable).with_name("kubectl-chronoshard")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: kubectl chronoshard")
    for command in ("history", "at", "diff", "restore", "approve"):
        assert command in proc.stdout
    sub = subprocess.run([str(script), "restore", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert sub.returncode == 0 and sub.stdout.startswith("usage: kubectl chronoshard restore")
