"""A clearly named TEST container command for e2e pods: an HTTP server on --host/--port.

Serves GET /healthz (200, or 500 while --unhealthy-file exists) and /readyz (200, or 503 while
--unready-file exists),
GET /env/NAME (an environment variable), GET /cwd (the working directory),
GET|PUT /data/NAME (a file under --data-dir).
It stands in for the shard-node servers only in tests that check the node agent itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--unready-file", default="")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--unhealthy-file", default="")
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/healthz":
                sick = args.unhealthy_file and Path(args.unhealthy_file).exists()
                self._reply(500 if sick else 200, b"sick" if sick else b"ok")
            elif url.path == "/readyz":
                unready = args.unready_file and Path(args.unready_file).exists()
                self._reply(503 if unready else 200, b"not ready" if unready else b"ok")
            elif url.path == "/cwd":
                self._reply(200, os.getcwd().encode())
            elif url.path.startswith("/env/"):
                value = os.environ.get(url.path[5:])
                self._reply(404 if value is None else 200, (value or "").encode())
            elif url.path.startswith("/data/") and args.data_dir:
                path = Path(args.data_dir) / url.path[6:]
                self._reply(200, path.read_bytes()) if path.exists() else self._reply(404, b"")
            else:
                self._reply(404, b"")

        def do_PUT(self) -> None:
            url = urlparse(self.path)
            if not (url.path.startswith("/data/") and args.data_dir):
                self._reply(404, b"")
                return
            path = Path(args.data_dir) / url.path[6:]
            path.write_bytes(self.rfile.read(int(self.headers["Content-Length"])))
            self._reply(204, b"")

        def log_message(self, fmt: str, *a: object) -> None:
            sys.stderr.write(f"probe_server: {fmt % a}\n")

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"probe_server listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
