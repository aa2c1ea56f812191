"""``chronoshard-console``: the recovery console's server (docs/console.md).

It needs the Kubernetes API as itself (in-cluster, or ``--kubeconfig``): TokenReview and SubjectAccessReview,
pods and ConfigMaps of the ShardSets, and TokenRequests for its own ServiceAccount (``--service-account``; in a
pod, the ServiceAccount the pod runs as). It serves HTTPS with ``--tls-dir``; plain HTTP only with ``--insecure``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from chronoshard.shardnode.auth import jwtclaims
from chronoshard.shardnode.auth.apiserver import ApiServer, load_connection
from chronoshard.shardnode.client.discovery import kube_client
from chronoshard.shardnode.client.history import SHADOW_PORT
from chronoshard.shardnode.serving import tls
from chronoshard.shardnode.serving.http_common import setup_logging

from .access import UserAccess
from .app import create_app
from .kube import UserKube, user_ssl_context
from .proxyauth import GROUP_HEADER, USER_HEADER, load_settings
from .ratelimit import FAILURES_PER_MINUTE, FailureLimiter
from .sessions import MAX_SESSIONS, SESSION_SECONDS, SessionStore
from .shards import ServiceAccountRef, ShardClients
from .state import Console

PORT = 7410
SA_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
ENV_SERVICE_ACCOUNT = "CHRONOSHARD_CONSOLE_SERVICE_ACCOUNT"
log = logging.getLogger("chronoshard.console")


def parser() -> argparse.ArgumentParser:
    """The console's flags."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="chronoshard-console", description="the chronoshard recovery console")
    p.add_argument("--host", default=env("POD_IP", "127.0.0.1"), help="address to bind (default: $POD_IP or "
                   "127.0.0.1)")
    p.add_argument("--port", type=int, default=int(env("CHRONOSHARD_CONSOLE_PORT", str(PORT))))
    p.add_argument("--kubeconfig", default=None, help="the console's own kubeconfig (default: in-cluster, else "
                   "$KUBECONFIG)")
    p.add_argument("--tls-dir", default=None, help="tls.crt and tls.key to serve HTTPS with (reloaded on change)")
    p.add_argument("--insecure", action="store_true", help="serve plain HTTP without --tls-dir (local use only: "
                   "session cookies and tokens then travel in clear)")
    p.add_argument("--service-account", default=env(ENV_SERVICE_ACCOUNT),
                   help="NAMESPACE/NAME of the console's own ServiceAccount, whose tokens the shards receive "
                        "(default in a pod: the pod's own)")
    p.add_argument("--shadow-port", type=int, default=SHADOW_PORT, help="the shards' shadow port")
    p.add_argument("--session-hours", type=float, default=SESSION_SECONDS / 3600)
    p.add_argument("--max-sessions", type=int, default=MAX_SESSIONS)
    p.add_argument("--auth-proxy-ca", default=None, help="PEM CA of the auth proxy's client certificates: enables "
                   "sign-in by the proxy's user/group headers (needs --tls-dir)")
    p.add_argument("--auth-proxy-allowed-names", default="", help="comma-separated CNs the proxy's certificate "
                   "may have (default: any CN the CA signed)")
    p.add_argument("--auth-proxy-user-header", default=USER_HEADER)
    p.add_argument("--auth-proxy-group-header", default=GROUP_HEADER, help="repeated: one group each")
    p.add_argument("--sign-in-failures-per-minute", type=int, default=FAILURES_PER_MINUTE,
                   help="failed sign-ins allowed per client address a minute before 429")
    p.add_argument("--log-level", default=env("CHRONOSHARD_LOG_LEVEL", "INFO"))
    return p


def own_service_account(flag: str | None, token_file: Path = SA_TOKEN_FILE) -> ServiceAccountRef | None:
    """``--service-account``, else the ServiceAccount the pod's own token names (its ``sub``), else None."""
    if flag:
        return ServiceAccountRef.parse(flag)
    try:
        claims = jwtclaims.unverified_claims(token_file.read_text().strip())
    except OSError:
        return None
    sub = (claims or {}).get("sub")
    return ServiceAccountRef.from_user(sub) if isinstance(sub, str) else None


def build_console(args: argparse.Namespace) -> Console:
    """Connect to the API server as the console (blocking: before the loop runs)."""
    account = own_service_account(args.service_account)
    if account is None:
        raise SystemExit("chronoshard-console: give --service-account NAMESPACE/NAME (the console's own "
                         "ServiceAccount; found none in-cluster)")
    connection = load_connection(args.kubeconfig)
    api = ApiServer(connection)
    proxy = None
    if args.auth_proxy_ca is not None:
        proxy = load_settings(args.auth_proxy_ca, args.auth_proxy_allowed_names, args.auth_proxy_user_header,
                              args.auth_proxy_group_header)
    # Impersonation (the console's own connection) only exists in auth-proxy mode.
    kube = UserKube(connection.host, user_ssl_context(connection), connection if proxy is not None else None)
    return Console(sessions=SessionStore(ttl=args.session_hours * 3600, size=args.max_sessions), api=api,
                   access=UserAccess(api), kube=kube,
                   shards=ShardClients(kube_client(args.kubeconfig), account, port=args.shadow_port),
                   secure_cookie=args.tls_dir is not None,
                   limiter=FailureLimiter(limit=args.sign_in_failures_per_minute), proxy=proxy)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the flags, connect, serve until SIGTERM."""
    p = parser()
    args = p.parse_args(argv)
    if args.tls_dir is None and not args.insecure:
        p.error("refusing to serve sign-in over plain HTTP: pass --tls-dir, or --insecure for local use")
    if args.tls_dir is not None and args.insecure:
        p.error("--insecure contradicts --tls-dir")
    if args.auth_proxy_ca is not None and args.tls_dir is None:
        p.error("--auth-proxy-ca needs --tls-dir: the proxy is known by its TLS client certificate")
    setup_logging(args.log_level)
    console = build_console(args)
    app = create_app(console)
    ssl_context = tls.install(app, args.tls_dir) if args.tls_dir is not None else None
    if ssl_context is not None and args.auth_proxy_ca is not None:
        # The handshake then accepts the proxy's certificate; proxyauth checks it was the proxy CA that issued it.
        ssl_context.load_verify_locations(cafile=args.auth_proxy_ca)
        log.info("auth-proxy sign-in on: headers %s/%s from certificates of %s", args.auth_proxy_user_header,
                 args.auth_proxy_group_header, args.auth_proxy_ca)
    if ssl_context is None:
        log.warning("serving the console over plain HTTP (--insecure): tokens and cookies travel in clear")
    log.info("console on %s:%d as ServiceAccount %s/%s", args.host, args.port, console.shards.account.namespace,
             console.shards.account.name)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, shutdown_timeout=10,
                ssl_context=ssl_context)


if __name__ == "__main__":
    main()
