"""One shard as a pod runs it with security on: ``chronoshard-node`` and ``chronoshard-cache`` on 127.0.0.1 with
``--tls-dir`` (the ShardSet's certificate from the operator's code, kubelet's ``..data`` layout) and
``--security-config`` (security.json), checking tokens and decisions with a real API server through $KUBECONFIG;
or the same two processes with ``--insecure`` (plain HTTP, no authentication) for comparison."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from chronoshard.operator import certs
from chronoshard.shardnode.keyspace.partitioning import PartitionMap, initial_map

from tests.support import tls_files
from tests.support.waiting import wait_for

from .shards import BIN, free_port, publish, stop_all, write_keyring


def security_json(namespace: str, name: str, *, accept_kubeconfig_tokens: bool = False) -> dict[str, object]:
    """security.json for ShardSet ``namespace/name`` (docs/security.md, "Interfaces")."""
    return {"shardSet": {"namespace": namespace, "name": name}, "audience": f"chronoshard.io/{namespace}/{name}",
            "podIdentity": certs.pod_identity(namespace, name), "operatorIdentities": ["chronoshard:operator"],
            "acceptKubeconfigTokens": accept_kubeconfig_tokens, "cacheTTLSeconds": 10, "cacheSize": 10000}


class SecureShard:
    """Node + cache of shard 0 of a one-shard ShardSet; ``cache_url``/``node_url`` are https (or http)."""

    def __init__(self, root: Path, namespace: str, name: str, kubeconfig: Path | None, *, secure: bool = True,
                 pmap: PartitionMap | None = None, log_level: str = "WARNING") -> None:
        self.root, self.namespace, self.name, self.secure = root, namespace, name, secure
        root.mkdir(parents=True, exist_ok=True)
        self.keyring, self.partitions, self.tls = root / "keyring", root / "partitions", root / "tls"
        write_keyring(self.keyring)
        publish(self.partitions, {"map.json": (pmap or initial_map(1)).to_json().encode()})
        ca = certs.new_ca(namespace, name, tls_files.now())
        pair = certs.issue_shard_certificate(ca, namespace, name, 1, ["127.0.0.1"], tls_files.now())
        tls_files.write_tls_dir(self.tls, pair, ca)
        self.ca_pair, self.ca_pem = ca, ca.cert.decode()
        self.ca_file = root / "ca.crt"
        self.ca_file.write_bytes(ca.cert)
        (root / "security.json").write_text(json.dumps(security_json(namespace, name)))
        self.env = dict(os.environ, **({"KUBECONFIG": str(kubeconfig)} if kubeconfig else {}))
        self.env.pop("KUBERNETES_SERVICE_HOST", None)
        scheme = "https" if secure else "http"
        self.node_port, self.cache_port = free_port(), free_port()
        self.node_url = f"{scheme}://127.0.0.1:{self.node_port}"
        self.cache_url = f"{scheme}://127.0.0.1:{self.cache_port}"
        self.log_level = log_level
        self.url, self.port = self.cache_url, self.cache_port
        self.procs: list[subprocess.Popen[bytes]] = []

    def _flags(self) -> list[str]:
        if not self.secure:
            return ["--insecure"]
        return ["--tls-dir", str(self.tls), "--security-config", str(self.root / "security.json")]

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.root / log, "ab") as out:
            proc = subprocess.Popen([*argv, *self._flags(), "--log-level", self.log_level],
                                    stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self.procs.append(proc)
        return proc

    def start(self, cache: bool = True) -> SecureShard:
        """Start the node, then (``cache``) the cache in front of it; return once both answer /readyz.
        ``url`` is the cache's URL, or the node's without a cache."""
        common = ["--keyring-dir", str(self.keyring), "--partition-map", str(self.partitions / "map.json"),
                  "--shard-index", "0", "--host", "127.0.0.1"]
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        node = self._spawn([str(BIN / "chronoshard-node"), "--port", str(self.node_port), "--data-dir", str(data),
                            *common], "node.log")
        self.wait_ready(self.node_url, node)
        self.url, self.port = self.node_url, self.node_port
        if not cache:
            return self
        self.url, self.port = self.cache_url, self.cache_port
        proc = self._spawn([str(BIN / "chronoshard-cache"), "--port", str(self.cache_port), "--node-url",
                             self.node_url, *common], "cache.log")
        self.wait_ready(self.cache_url, proc)
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this ShardSet's CA."""
        return ssl.create_default_context(cadata=self.ca_pem)

    def operator_ssl_context(self) -> ssl.SSLContext:
        """A client context presenting the operator's certificate (CN chronoshard:operator) of this CA."""
        pair = certs.issue_operator_certificate(self.ca_pair, tls_files.now())
        cert, key = self.root / "operator.crt", self.root / "operator.key"
        cert.write_bytes(pair.cert)
        key.write_bytes(pair.key)
        key.chmod(0o600)
        ctx = self.ssl_context()
        ctx.load_cert_chain(cert, key)
        return ctx

    def metrics(self, url: str) -> str:
        """``GET url/metrics`` as the operator (what the operator's probes may read)."""
        ctx = self.operator_ssl_context() if url.startswith("https") else None
        with urllib.request.urlopen(f"{url}/metrics", timeout=5, context=ctx) as r:
            return str(r.read().decode())

    def wait_ready(self, url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        ctx = self.ssl_context() if url.startswith("https") else None

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {self.logs()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2, context=ctx) as r:
                    return r.status == 200
            except (OSError, urllib.error.URLError):
                return False

        wait_for(ready, timeout, interval=0.1, what=f"{url}/readyz")

    def logs(self) -> str:
        """Everything both processes wrote."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        stop_all(self.procs)
        self.procs = []

