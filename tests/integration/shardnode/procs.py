"""Run `chronoshard-node` / `chronoshard-cache` as real processes on 127.0.0.1 free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_for

BIN = Path(sys.executable).parent
# Plain HTTP without authentication (the flag every test process without TLS and a security config passes).
INSECURE = ("--insecure",)


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """One blocking request; returns (status, body) for errors too."""
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_json(method: str, url: str, doc: Any = None) -> tuple[int, Any]:
    """A JSON request/answer."""
    status, body = http(method, url, None if doc is None else json.dumps(doc).encode())
    return status, json.loads(body)


class Proc:
    """One server process; stop() is SIGTERM, kill() is SIGKILL (a crash)."""

    def __init__(self, argv: list[str], port: int, log: Path, env: Mapping[str, str] | None = None) -> None:
        self.argv, self.port, self.log_path, self.env = argv, port, log, env
        self.url = f"http://127.0.0.1:{port}"
        self.p: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Proc:
        """Start and wait until /readyz answers 200 (public, so this works with authentication on too).
        ``timeout`` only bounds a hung start: with both cores busy a cold start (imports) took over 20 s."""
        return self.launch().wait_ready(timeout)

    def launch(self) -> Proc:
        """Start the process without waiting for it (``wait_ready`` next): several cold starts overlap."""
        with open(self.log_path, "ab") as log:
            self.p = subprocess.Popen(self.argv, stdout=log, stderr=log,
                                      env=None if self.env is None else dict(self.env))
        return self

    def wait_ready(self, timeout: float = 60) -> Proc:
        """Wait until the launched process's /readyz answers 200 (``timeout`` as for ``start``)."""
        assert self.p is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited {self.p.returncode}: {self.log()}")
            try:
                if http("GET", self.url + "/readyz", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.argv[0]} not ready: {self.log()}")

    def log(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """kill -9."""
        if self.p and self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
            self.p.wait(10)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), SIGKILL if it lingers."""
        if self.p and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def node(tmp: Path, keyring: Path, port: int | None = None, config: dict[str, Any] | None = None, *,
         security: Sequence[str] = INSECURE, env: Mapping[str, str] | None = None) -> Proc:
    """A node process over ``tmp/data`` (not started); ``security``: its security flags (default --insecure)."""
    port = port or free_port()
    argv = [str(BIN / "chronoshard-node"), "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(tmp / "data"), "--keyring-dir", str(keyring), *security]
    if config is not None:
        (tmp / "node.json").write_text(json.dumps(config))
        argv += ["--config", str(tmp / "node.json")]
    return Proc(argv, port, tmp / f"node-{port}.log", env)


def cache(tmp: Path, keyring: Path, node_url: str, *extra: str, security: Sequence[str] = INSECURE,
          env: Mapping[str, str] | None = None) -> Proc:
    """A cache process in front of ``node_url`` (not started); ``security`` as for ``node``."""
    port = free_port()
    argv = [str(BIN / "chronoshard-cache"), "--host", "127.0.0.1", "--port", str(port), "--node-url", node_url,
            "--keyring-dir", str(keyring), *security, *extra]
    return Proc(argv, port, tmp / f"cache-{port}.log", env)


def run_verify(url: str, mode: str = "full") -> dict[str, Any]:
    """Start a verify and wait for its report."""
    status, _ = http_json("POST", url + "/v1/verify", {"mode": mode})
    assert status == 202
    return wait_for(lambda: (lambda b: b["last"] if b["state"] == "done" else None)(
        http_json("GET", url + "/v1/verify")[1]), what=f"the verify on {url} to finish")
