"""The slice of kubelet's HTTPS API that ``kubectl logs`` reaches through the API server: container logs.

The API server proxies ``GET /api/v1/namespaces/NS/pods/POD/log`` to
``https://<node InternalIP>:<status.daemonEndpoints.kubeletEndpoint.Port>/containerLogs/NS/POD/CONTAINER``.
It does not verify the kubelet's serving certificate unless told to (our control plane is not), so a
self-signed certificate made at start is enough. Binds 127.0.0.1 only; with ``client_ca`` it requires a
client certificate from that CA (``chronoshard-dev up`` gives the API server one), so other local
processes cannot read the logs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# (namespace, pod, container, previous) -> (log file, still running?) or None when unknown.
LogFound = tuple[Path, Callable[[], bool]] | None
LogLocator = Callable[[str, str, str, bool], LogFound]

FOLLOW_POLL = 0.2
FOLLOW_MAX_SECONDS = 24 * 3600  # a forgotten `kubectl logs -f` does not hold a thread forever


def self_signed(directory: Path, host: str) -> tuple[Path, Path]:
    """Write a fresh self-signed serving certificate and key (0600) for ``host``; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chronoshard-dev-kubelet")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "kubelet.crt", directory / "kubelet.key"
    key_file.touch(mode=0o600)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file


def tail_bytes(data: bytes, lines: int | None, limit: int | None) -> bytes:
    """The last ``lines`` lines of ``data`` (all if None), then at most ``limit`` bytes from its start."""
    if lines is not None:
        if lines <= 0:
            data = b""
        else:
            parts = data.splitlines(keepends=True)
            data = b"".join(parts[-lines:])
    if limit is not None:
        data = data[:limit]
    return data


class KubeletAPI:
    """A TLS server on 127.0.0.1 answering ``/containerLogs`` and ``/healthz``."""

    def __init__(
        self, locate: LogLocator, cert_dir: Path, host: str = "127.0.0.1", port: int = 0, client_ca: Path | None = None
    ) -> None:
        cert, key = self_signed(cert_dir, host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if client_ca is not None:
            # Only the API server (holding a client certificate from this CA) may read logs.
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(client_ca))
        handler = _handler(locate)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="kubelet-api")

    def start(self) -> KubeletAPI:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


def _handler(locate: LogLocator) -> type[BaseHTTPRequestHandler]:
    class Handler(_LogHandler):
        def _locate(self, namespace: str, pod: str, container: str, previous: bool) -> LogFound:
            return locate(namespace, pod, container, previous)

    return Handler


class _LogHandler(BaseHTTPRequestHandler):
    """Answers /healthz and /containerLogs/NS/POD/CONTAINER; a subclass says where the logs are (_locate)."""

    protocol_version = "HTTP/1.1"

    def _locate(self, namespace: str, pod: str, container: str, previous: bool) -> LogFound:
        raise NotImplementedError

    def log_message(self, fmt: str, *args: object) -> None:  # quiet: the agent logs what matters
        return

    def _plain(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            self._plain(200, b"ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._plain(404, b"not found")
            return
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            lines = int(query["tailLines"]) if "tailLines" in query else None
            limit = int(query["limitBytes"]) if "limitBytes" in query else None
        except ValueError:
            self._plain(400, b"tailLines and limitBytes must be integers")
            return
        self._logs(parts[1], parts[2], parts[3], query, lines, limit)

    def _logs(
        self, namespace: str, pod: str, container: str, query: dict[str, str], lines: int | None, limit: int | None
    ) -> None:
        previous = query.get("previous") == "true"
        found = self._locate(namespace, pod, container, previous)
        if found is None:
            what = "previous terminated container" if previous else "container"
            self._plain(404, f'{what} "{container}" in pod "{pod}" not found'.encode())
            return
        path, running = found
        data = path.read_bytes() if path.exists() else b""
        if query.get("follow") != "true" or previous:
            self._plain(200, tail_bytes(data, lines, limit))
            return
        self._follow(path, running, tail_bytes(data, lines, None), len(data))

    def _follow(self, path: Path, running: Callable[[], bool], first: bytes, offset: int) -> None:
        # Chunked, so kubectl shows lines as they are written; ends when the container run ends.
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + FOLLOW_MAX_SECONDS
        try:
            self._chunk(first)
            while time.monotonic() < deadline:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    more = fh.read()
                if more:
                    offset += len(more)
                    self._chunk(more)
                elif not running():
                    break
                else:
                    time.sleep(FOLLOW_POLL)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, FileNotFoundError):
            return

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
