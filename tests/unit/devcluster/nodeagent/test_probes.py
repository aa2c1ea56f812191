import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from chronoshard.devcluster.nodeagent.probes import (
    ProbeError,
    ProbeSpec,
    ProbeState,
    ProbeWorker,
    parse_probe,
    run_probe,
)

from tests.support.waiting import wait_for


@pytest.fixture()
def server():
    codes = {"/ok": 200, "/redirect": 302, "/bad": 500, "/unavailable": 503}
    seen_headers = []  # (when the request arrived, its headers)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen_headers.append((time.monotonic(), dict(self.headers)))
            if self.path == "/slow":
                time.sleep(1.0)  # what is tested: a server slower than the probe's timeout
            self.send_response(codes.get(self.path, 200))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1], seen_headers
    srv.shutdown()
    srv.server_close()


def spec(port, path="/ok", **kw):
    return ProbeSpec(kind="http", host="127.0.0.1", port=port, path=path, **kw)


def test_http_probe_status_ranges(server):
    port, headers = server
    assert run_probe(spec(port, "/ok"))
    assert run_probe(spec(port, "/redirect"))
    assert not run_probe(spec(port, "/bad"))
    assert not run_probe(spec(port, "/unavailable"))
    assert run_probe(spec(port, "/ok", headers=(("X-Probe", "yes"),)))
    assert headers[-1][1]["X-Probe"] == "yes"


def test_http_probe_timeout_and_refused(server):
    port, _ = server
    assert not run_probe(spec(port, "/slow", timeout=0.2))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert not run_probe(spec(closed))


def test_tcp_probe(server):
    port, _ = server
    assert run_probe(ProbeSpec(kind="tcp", host="127.0.0.1", port=port))


def test_thresholds():
    state = ProbeState(success_threshold=2, failure_threshold=3, initial=False)
    assert state.record(True) is False  # one success is not enough
    assert state.record(True) is True
    assert state.record(False) is True and state.record(False) is True
    assert state.record(True) is True  # a success resets the failure run
    assert [state.record(False) for _ in range(3)] == [True, True, False]
    assert state.failed


def test_parse_probe_named_port_and_defaults():
    container = {"name": "node", "ports": [{"name": "node", "containerPort": 7400}]}
    p = parse_probe({"httpGet": {"path": "/readyz", "port": "node"}, "periodSeconds": 2}, container, "127.0.0.9")
    assert (p.host, p.port, p.path, p.period, p.failure_threshold, p.timeout) == ("127.0.0.9", 7400, "/readyz", 2, 3, 1)
    with pytest.raises(ProbeError, match="does not declare"):
        parse_probe({"httpGet": {"port": "nope"}}, container, "127.0.0.9")
    with pytest.raises(ProbeError, match="unsupported probe"):
        parse_probe({"exec": {"command": ["true"]}}, container, "127.0.0.9")


def test_worker_waits_initial_delay_then_reports_changes(server):
    port, requests = server
    changes = []
    started = time.monotonic()
    worker = ProbeWorker(spec(port, "/ok", period=0.05, initial_delay=0.3), False, changes.append)
    assert worker.result is False
    worker.start()
    wait_for(lambda: changes, timeout=3, what="the first probe result")
    worker.stop()
    assert changes == [True] and worker.result is True
    # The first probe request reached the server only after the initial delay: before it, nothing ran.
    assert requests[0][0] - started >= 0.3
