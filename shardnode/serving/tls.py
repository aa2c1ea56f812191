"""TLS for every shard-pod server and its internal clients, from the mounted ``<shardset>-tls`` Secret.

The directory (``--tls-dir``, /etc/chronoshard/tls in a pod) holds ``tls.crt`` (the pods' certificate, serverAuth
and clientAuth), ``tls.key`` and ``ca.crt`` (the ShardSet's CA). ``server_context`` serves that certificate and
asks for an optional client certificate verified against ``ca.crt``; ``client_context`` verifies a server against
``ca.crt`` and presents the same certificate as the client's. ``CertReloader`` re-reads the files when they change
and loads the new pair into the same contexts, so handshakes after the change use it and connections already open
(and the requests on them) are not touched. A pair that does not load keeps the one in force.

With a replication directory (``--replication-dir``, the mounted ``<shardset>-replication`` ConfigMap) the CA
certificates in its ``peers-ca.crt`` (the other MirrorSet members' CAs) are trusted too, by both contexts, and a
changed file is added like a changed ``ca.crt``; the own CAs are then kept in ``app[OWN_CAS]`` so the authenticator
accepts a peer-issued certificate only as a listed replica (shardnode/auth/peers.py).

``install(app, tls_dir)`` does all of it for one server: the scaffold calls it when ``--tls-dir`` is given; the
process's internal sessions build their connector with ``connector(app)`` and name the pod with
``internal_hostname(url)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from chronoshard.shardnode.auth.peers import OWN_CAS, OwnAuthorities
from cryptography import x509
from cryptography.x509.oid import NameOID
from yarl import URL

log = logging.getLogger("chronoshard.tls")

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"
PEERS_CA_FILE = "peers-ca.crt"
RELOAD_SECONDS = 2.0

# The client context of a server built with install(): what its internal sessions present and verify with.
CLIENT_SSL = web.AppKey("chronoshard_client_ssl", ssl.SSLContext)


def _snapshot(tls_dir: Path) -> Path:
    """The directory to read all three files from: kubelet's current ``..data`` snapshot when there is one, so
    the certificate and key always come from the same update."""
    data = tls_dir / "..data"
    return Path(os.path.realpath(data)) if data.is_symlink() else tls_dir


def _new_context(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def peers_ca(replication_dir: str | Path | None) -> bytes | None:
    """The peer CAs' PEM bundle of ``replication_dir`` (None: no directory, no file, or no certificate in it)."""
    if replication_dir is None:
        return None
    try:
        pem = (_snapshot(Path(replication_dir)) / PEERS_CA_FILE).read_bytes()
    except FileNotFoundError:
        return None
    return pem if b"-----BEGIN CERTIFICATE-----" in pem else None


def _trust_peers(ctx: ssl.SSLContext, replication_dir: str | Path | None) -> None:
    pem = peers_ca(replication_dir)
    if pem is not None:
        ctx.load_verify_locations(cadata=pem.decode("ascii"))


def server_context(tls_dir: str | Path, replication_dir: str | Path | None = None) -> ssl.SSLContext:
    """A server context: TLS 1.2+, the chain from tls.crt/tls.key, client certificates optional and, when sent,
    verified against ca.crt (and the peer CAs of ``replication_dir``); an unverifiable one fails the handshake."""
    snap = _snapshot(Path(tls_dir))
    ctx = _new_context(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(snap / CERT_FILE, snap / KEY_FILE)
    ctx.load_verify_locations(cafile=str(snap / CA_FILE))
    _trust_peers(ctx, replication_dir)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(tls_dir: str | Path, replication_dir: str | Path | None = None) -> ssl.SSLContext:
    """A client context: verifies the server against ca.crt (and the peer CAs of ``replication_dir``, for a mirror
    dialling its source), hostname checked, and presents tls.crt/tls.key."""
    snap = _snapshot(Path(tls_dir))
    ctx = _new_context(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    ctx.load_verify_locations(cafile=str(snap / CA_FILE))
    _trust_peers(ctx, replication_dir)
    ctx.load_cert_chain(snap / CERT_FILE, snap / KEY_FILE)
    return ctx


def describe_certificate(pem: bytes) -> str:
    """Public facts of a PEM certificate for a log line: subject CN, serial, expiry (never key material)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return "unparseable certificate"
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else "?"
    return f"CN={cn} serial={cert.serial_number:x} notAfter={cert.not_valid_after_utc.isoformat()}"


class CertReloader:
    """Keeps ``contexts`` loaded with the current files of ``tls_dir`` (polled every ``interval`` seconds), and
    their trust stores with the peer CAs of ``replication_dir``; ``own`` (if given) learns every own CA loaded."""

    def __init__(self, tls_dir: str | Path, contexts: Sequence[ssl.SSLContext], interval: float = RELOAD_SECONDS,
                 replication_dir: str | Path | None = None, own: OwnAuthorities | None = None) -> None:
        self.tls_dir = Path(tls_dir)
        self.contexts = list(contexts)
        self.interval = interval
        self.replication_dir = replication_dir
        self.own = own
        self.reloads = 0
        self.peer_reloads = 0
        self.load_error: str | None = None
        self._loaded, self._ca = self._digests()[1:]
        self._peers = self._peers_digest()
        self._refused: str | None = None  # the digest of a pair already reported as not loading

    def _digests(self) -> tuple[Path, str, str]:
        snap = _snapshot(self.tls_dir)
        pair = hashlib.sha256((snap / CERT_FILE).read_bytes() + b"\0" + (snap / KEY_FILE).read_bytes()).hexdigest()
        ca = hashlib.sha256((snap / CA_FILE).read_bytes()).hexdigest()
        return snap, pair, ca

    def _peers_digest(self) -> str | None:
        try:
            pem = peers_ca(self.replication_dir)
        except OSError:
            return self._peers  # unreadable now: keep what is loaded, look again at the next poll
        return None if pem is None else hashlib.sha256(pem).hexdigest()

    def poll(self) -> bool:
        """Check the files once; load a changed pair (and a changed CA) into every context. True if loaded.

        Runs on the event loop's thread, in one go, so no handshake sees a context half-loaded; the new pair is
        first loaded into a scratch context, so one that does not load never reaches the live ones.
        """
        self.poll_peers()
        try:
            snap, pair, ca = self._digests()
        except OSError as exc:
            return self._refuse(f"cannot read: {type(exc).__name__}", "unreadable")
        if pair == self._loaded and ca == self._ca:
            return False
        try:
            _new_context(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(snap / CERT_FILE, snap / KEY_FILE)
            if ca != self._ca:
                _new_context(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(snap / CA_FILE))
        except (ssl.SSLError, OSError, ValueError) as exc:
            return self._refuse(getattr(exc, "reason", None) or type(exc).__name__, pair + ca)
        for ctx in self.contexts:
            ctx.load_cert_chain(snap / CERT_FILE, snap / KEY_FILE)
            if ca != self._ca:
                # A CA can only be added to a context's trust store, never removed: both CAs verify from now on.
                ctx.load_verify_locations(cafile=str(snap / CA_FILE))
        if ca != self._ca and self.own is not None:
            self.own.add_pem((snap / CA_FILE).read_bytes())
        self._loaded, self._ca, self._refused, self.load_error = pair, ca, None, None
        self.reloads += 1
        log.info("TLS certificate reloaded from %s: %s", self.tls_dir,
                 describe_certificate((snap / CERT_FILE).read_bytes()))
        return True

    def poll_peers(self) -> bool:
        """Add a changed ``peers-ca.crt`` to every context's trust store (a removed CA stays trusted until the
        process restarts, as for ``ca.crt``). True if loaded."""
        digest = self._peers_digest()
        if digest is None or digest == self._peers:
            return False
        try:
            scratch = _new_context(ssl.PROTOCOL_TLS_CLIENT)
            _trust_peers(scratch, self.replication_dir)
            for ctx in self.contexts:
                _trust_peers(ctx, self.replication_dir)
        except (ssl.SSLError, OSError, ValueError) as exc:
            log.error("peer CAs in %s not loaded (%s)", self.replication_dir,
                      getattr(exc, "reason", None) or type(exc).__name__)
            self._peers = digest  # one line per broken bundle, not one per poll
            return False
        self._peers = digest
        self.peer_reloads += 1
        log.info("peer CA certificates reloaded from %s", self.replication_dir)
        return True

    def _refuse(self, reason: str, digest: str) -> bool:
        self.load_error = reason
        if digest != self._refused:  # one line per new broken pair, not one per poll
            self._refused = digest
            log.error("TLS files in %s not loaded (%s); the certificate in use stays in force", self.tls_dir, reason)
        return False

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.poll()

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """``app.cleanup_ctx.append(reloader.cleanup_ctx)``: poll while the app runs."""
        task = asyncio.create_task(self.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def install(app: web.Application, tls_dir: str | Path, interval: float = RELOAD_SECONDS,
            replication_dir: str | Path | None = None) -> ssl.SSLContext:
    """Set ``app`` up for TLS from ``tls_dir`` (and the peer CAs of ``replication_dir``): returns the server context
    (for ``web.run_app(ssl_context=)``), keeps the client context in ``app[CLIENT_SSL]`` and reloads both while
    the app runs."""
    server, client = server_context(tls_dir, replication_dir), client_context(tls_dir, replication_dir)
    app[CLIENT_SSL] = client
    own = None
    if replication_dir is not None:
        # Peers verify in the handshake too: only the issuer tells their certificates from the own pods'.
        own = app[OWN_CAS] = OwnAuthorities()
        own.add_pem((_snapshot(Path(tls_dir)) / CA_FILE).read_bytes())
    app.cleanup_ctx.append(CertReloader(tls_dir, [server, client], interval, replication_dir, own).cleanup_ctx)
    return server


def connector(app: web.Application, **kw: Any) -> aiohttp.TCPConnector:
    """A connector for the process's internal calls: the client context when TLS is installed, else aiohttp's
    default verification (plain ``http://`` URLs do not use it)."""
    ctx = app.get(CLIENT_SSL)
    return aiohttp.TCPConnector(ssl=ctx if ctx is not None else True, **kw)


def pod_dns_name(env: Mapping[str, str] | None = None) -> str | None:
    """This pod's DNS name ``NAME-i.NAME-headless.NAMESPACE.svc`` from its environment (None outside a pod)."""
    env = os.environ if env is None else env
    pod, namespace = env.get("POD_NAME"), env.get("POD_NAMESPACE")
    if not pod or not namespace or "-" not in pod:
        return None
    shardset = pod.rsplit("-", 1)[0]
    service = env.get("CHRONOSHARD_HEADLESS_SERVICE", f"{shardset}-headless")
    return f"{pod}.{service}.{namespace}.svc"


def internal_hostname(url: str | URL, env: Mapping[str, str] | None = None) -> str | None:
    """The name to check the server's certificate against (aiohttp ``server_hostname``) when an ``https`` URL
    names this pod by IP: the pod's DNS name, which is always in the certificate while its IPs may lag a
    re-issue. None when the URL's own host is to be checked."""
    u = URL(url)
    if u.scheme != "https" or u.host is None:
        return None
    try:
        ipaddress.ip_address(u.host)
    except ValueError:
        return None
    return pod_dns_name(env)


def peer_common_name(transport: asyncio.BaseTransport | None) -> str | None:
    """The subject CN of the verified client certificate on a connection (None when none was sent)."""
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
