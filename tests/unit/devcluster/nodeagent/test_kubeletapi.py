import http.client
import ssl
import time

import pytest
from chronoshard.devcluster.kubeletpki import kubelet_client_pki
from chronoshard.devcluster.nodeagent.kubeletapi import FOLLOW_POLL, KubeletAPI, tail_bytes


def test_tail_bytes():
    data = b"a\nb\nc\n"
    assert tail_bytes(data, None, None) == data
    assert tail_bytes(data, 2, None) == b"b\nc\n"
    assert tail_bytes(data, 0, None) == b""
    assert tail_bytes(data, None, 3) == b"a\nb"


@pytest.fixture()
def api(tmp_path):
    logs = {("ns", "p", "c", False): tmp_path / "1.log", ("ns", "p", "c", True): tmp_path / "0.log"}
    (tmp_path / "0.log").write_bytes(b"previous run\n")
    (tmp_path / "1.log").write_bytes(b"one\ntwo\nthree\n")
    state = {"running": True}

    def locate(ns, pod, container, previous):
        path = logs.get((ns, pod, container, previous))
        return None if path is None else (path, lambda: state["running"])

    server = KubeletAPI(locate, tmp_path / "certs").start()
    yield server, tmp_path, state
    server.stop()


def get(port, path, timeout=5):
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ssl._create_unverified_context())
    conn.request("GET", path)
    return conn, conn.getresponse()


def test_logs_previous_tail_and_not_found(api):
    server, tmp_path, _ = api
    assert (tmp_path / "certs" / "kubelet.key").stat().st_mode & 0o777 == 0o600
    _, resp = get(server.port, "/containerLogs/ns/p/c")
    assert (resp.status, resp.read()) == (200, b"one\ntwo\nthree\n")
    _, resp = get(server.port, "/containerLogs/ns/p/c?tailLines=1")
    assert resp.read() == b"three\n"
    _, resp = get(server.port, "/containerLogs/ns/p/c?previous=true")
    assert resp.read() == b"previous run\n"
    _, resp = get(server.port, "/containerLogs/ns/p/other")
    assert resp.status == 404 and b'container "other"' in resp.read()
    _, resp = get(server.port, "/containerLogs/ns/p/c?tailLines=x")
    assert resp.status == 400


def test_follow_streams_appended_lines_until_the_run_ends(api):
    server, tmp_path, state = api
    _, resp = get(server.port, "/containerLogs/ns/p/c?follow=true&tailLines=1")
    assert resp.readline() == b"three\n"  # the tail comes at once
    # What is tested: the stream stays open across idle polls of a running container (a few poll periods).
    time.sleep(3 * FOLLOW_POLL)
    with open(tmp_path / "1.log", "ab") as fh:
        fh.write(b"four\n")
    assert resp.readline() == b"four\n"  # a line appended later still arrives on the open stream
    state["running"] = False
    assert resp.read() == b""  # and the server ends the chunked stream once the run has ended


def test_with_a_client_ca_only_holders_of_its_certificate_may_read(tmp_path):
    pki = kubelet_client_pki(tmp_path / "pki")
    assert pki["key"].stat().st_mode & 0o777 == 0o600
    (tmp_path / "0.log").write_bytes(b"secret-free but private\n")
    server = KubeletAPI(lambda *a: (tmp_path / "0.log", lambda: False), tmp_path / "certs",
                        client_ca=pki["ca"]).start()
    try:
        anonymous = ssl._create_unverified_context()
        with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
            conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=5, context=anonymous)
            conn.request("GET", "/containerLogs/ns/p/c")
            conn.getresponse().read()
        trusted = ssl._create_unverified_context()
        trusted.load_cert_chain(pki["cert"], pki["key"])
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=5, context=trusted)
        conn.request("GET", "/containerLogs/ns/p/c")
        assert conn.getresponse().read() == b"secret-free but private\n"
    finally:
        server.stop()
    assert kubelet_client_pki(tmp_path / "pki") == pki, "made once, then reused"
