"""``chronoshard token request|status|refresh|revoke|list`` and ``chronoshard risk MIRRORSET``: a MirrorSet's token
service (docs/tokens.md) through its REST API. (``cli_tokens`` is another thing: ServiceAccount tokens.)

Where the service is: ``--tokens-url URL`` (``--tokens-server-name`` the name its certificate holds, default the
Service's), else ``--mirrorset MS`` (``risk`` takes it as its argument): the service's pod IP found through the
Kubernetes API, verified against ConfigMap ``<ms>-tokens-ca`` under ``<ms>-tokens.<ns>.svc``. Credentials: ``--token``,
``$CHRONOSHARD_TOKEN``, the token file, else the kubeconfig's own token (the service accepts kubeconfig tokens).
A token printed by ``request`` is a secret: it is written only to standard output, never to an error message.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import IO, Any
from urllib.parse import quote

from chronoshard.shardnode.client.credentials import Credentials, TokenSource, fixed_source, standard_sources
from chronoshard.shardnode.client.errors import ChronoshardError, Forbidden, Unauthenticated, Unavailable
from chronoshard.shardnode.client.transport import Endpoint, Transport, ca_file_source

COMMANDS = ("token", "risk")
PORT = 7405
# Names the operator gives a MirrorSet's token service (operator/naming.py; the client never imports the operator).
SERVICE_SUFFIX, CA_SUFFIX = "-tokens", "-tokens-ca"
EXIT_REFUSED_REFRESH = 1

Table = Callable[[Sequence[str], Sequence[Sequence[object]]], str]
ApiFactory = Callable[[], Any]


class TokenServiceMissing(ChronoshardError):
    """No token service address: neither --tokens-url nor a MirrorSet whose service has a pod."""


class RefreshRefused(ChronoshardError):
    """TokenRefresh answered 409: neither an upgrade nor a renewal is allowed (the reason says why)."""


# --- pure ------------------------------------------------------------------------------------------------------


def server_name(namespace: str, mirrorset: str) -> str:
    """The name the service's certificate holds: its Service's DNS name."""
    return f"{mirrorset}{SERVICE_SUFFIX}.{namespace}.svc"


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /v1/tokens`` body (PredictiveTokenRequest) from the flags."""
    body: dict[str, Any] = {}
    if args.service_id:
        body["serviceId"] = args.service_id
    if args.block:
        if "/" not in args.block:
            raise ValueError("--block is TABLE/KEY")
        body["dataBlockId"] = args.block
    if args.table:
        body["table"] = args.table
    if args.verbs:
        body["verbs"] = [v.strip() for v in args.verbs.split(",") if v.strip()]
    return body


def when(seconds: Any) -> str:
    """A UNIX time as ``YYYY-MM-DDTHH:MM:SSZ`` (``-`` when absent)."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _risk_text(risk: Any) -> str:
    if not isinstance(risk, Mapping) or not risk:
        return "-"
    ordered = sorted(risk.items(), key=lambda i: float(i[0]))
    return " ".join(f"{int(float(w)) // 60}m={float(p):.2f}" for w, p in ordered)


def render_token(body: Mapping[str, Any]) -> str:
    """A token answer (request, refresh) without the token itself."""
    lines = [f"token {body.get('tokenId')}: tier {body.get('tier')} on {body.get('store')}, expires "
             f"{when(body.get('expiresAt'))}"]
    if body.get("lsn"):
        lines.append(f"  consistent up to LSNs {json.dumps(body['lsn'], sort_keys=True)}")
    if body.get("risk"):
        lines.append(f"  risk of the active store: {_risk_text(body['risk'])}")
    if body.get("action"):
        lines.append(f"  {body['action']} (replaces {body.get('previous')})")
    return "\n".join(lines) + "\n"


def render_status(body: Mapping[str, Any]) -> str:
    """A TokenStatusCheck answer (a replacement is named, never printed)."""
    rep = body.get("replacement")
    text = (f"token {body.get('tokenId')}: {body.get('state')}, tier {body.get('tier')} on {body.get('store')}, "
            f"expires {when(body.get('expiresAt'))}; recommended tier {body.get('recommendedTier')}\n")
    if isinstance(rep, Mapping):
        text += (f"  replacement ready: {rep.get('tokenId')} ({rep.get('tier')} on {rep.get('store')}); "
                 "take it with chronoshard token status --print-replacement\n")
    return text


def token_rows(body: Mapping[str, Any]) -> list[list[object]]:
    """``GET /v1/tokens`` as table rows."""
    return [[t.get("tokenId"), t.get("service"), t.get("tier"), t.get("store"), t.get("state"),
             when(t.get("expiresAt"))] for t in body.get("tokens") or [] if isinstance(t, Mapping)]


def risk_rows(body: Mapping[str, Any]) -> list[list[object]]:
    """``GET /v1/risk`` as rows: each member, then each of its copies indented."""
    rows: list[list[object]] = []
    for m in body.get("members") or []:
        if not isinstance(m, Mapping):
            continue
        drivers = ", ".join(str(d) for d in (m.get("drivers") or [])[:3])
        rows.append([m.get("store"), _risk_text(m.get("risk")), m.get("source"), drivers or "-"])
        for c in m.get("copies") or []:
            if isinstance(c, Mapping):
                cd = ", ".join(str(d) for d in (c.get("drivers") or [])[:3])
                rows.append([f"  {c.get('copy', c.get('shard'))}", _risk_text(c.get("risk")), c.get("source"),
                             cd or "-"])
    return rows


def render_risk(body: Mapping[str, Any], table: Table) -> str:
    """The risk document: threshold, model, a table per member and copy."""
    model = body.get("model") or {}
    head = (f"active store {body.get('activeStore')}, threshold {body.get('threshold')}; model "
            f"{'trained' if model.get('trained') else 'untrained'} ({model.get('source', '-')}, "
            f"{model.get('samples', 0)} samples)\n")
    return head + table(["store / copy", "risk", "source", "drivers"], risk_rows(body))


# --- I/O -------------------------------------------------------------------------------------------------------


def credentials(args: argparse.Namespace, api: ApiFactory) -> Credentials:
    """--token, $CHRONOSHARD_TOKEN, the token file, else the kubeconfig's token."""
    from chronoshard.shardnode.client.cli_tokens import kubeconfig_token

    sources: list[TokenSource] = [fixed_source("--token", args.token)] if args.token else []
    sources += standard_sources(args.token_file)
    if not args.tokens_url:
        sources.append(TokenSource("the kubeconfig's own token", lambda: kubeconfig_token(api())))
    return Credentials(sources, how_to="Give --token (or $CHRONOSHARD_TOKEN) or use a kubeconfig with a token")


def _service_ca(api: ApiFactory, namespace: str, mirrorset: str) -> str | None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        cm = client.CoreV1Api(api()).read_namespaced_config_map(f"{mirrorset}{CA_SUFFIX}", namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise Unavailable(f"ConfigMap {namespace}/{mirrorset}{CA_SUFFIX}", f"HTTP {exc.status}") from None
    return (cm.data or {}).get("ca.crt") or None


def _service_ip(api: ApiFactory, namespace: str, mirrorset: str) -> str:
    from kubernetes import client

    selector = f"app.kubernetes.io/instance={mirrorset}{SERVICE_SUFFIX},app.kubernetes.io/component=tokens"
    for pod in client.CoreV1Api(api()).list_namespaced_pod(namespace, label_selector=selector).items:
        if pod.status and pod.status.pod_ip and not (pod.metadata and pod.metadata.deletion_timestamp):
            return str(pod.status.pod_ip)
    raise TokenServiceMissing(f"MirrorSet {namespace}/{mirrorset}: its token service has no running pod yet "
                              f"(StatefulSet {mirrorset}{SERVICE_SUFFIX})")


def locate(args: argparse.Namespace, api: ApiFactory, namespace: str) -> tuple[Endpoint, Transport]:
    """The service's endpoint and a transport for it (module docstring). Blocking (Kubernetes API)."""
    mirrorset = getattr(args, "mirrorset_name", None) or args.mirrorset
    creds = credentials(args, api)
    if args.tokens_url:
        name = args.tokens_server_name or (server_name(namespace, mirrorset) if mirrorset else None)
        source = ca_file_source(args.ca) if args.ca else None
        return Endpoint.parse(args.tokens_url, name), Transport(creds, ca_source=source,
                                                                 ca_hint=f"--ca {args.ca}" if args.ca else "")
    if not mirrorset:
        raise TokenServiceMissing("give --mirrorset MS (or --tokens-url URL): the token service to ask")
    ip = _service_ip(api, namespace, mirrorset)
    host = f"[{ip}]" if ":" in ip else ip
    source = ca_file_source(args.ca) if args.ca else partial(_service_ca, api, namespace, mirrorset)
    return (Endpoint(f"{host}:{PORT}", "https", server_name(namespace, mirrorset)),
            Transport(creds, ca_source=source, ca_hint=f"ConfigMap {namespace}/{mirrorset}{CA_SUFFIX}"))


async def call(tr: Transport, ep: Endpoint, method: str, path: str, body: Mapping[str, Any] | None = None,
               params: Mapping[str, str] | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """One REST call; the JSON answer, or the client's error for a refusal."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else None
    status, raw = await tr.request(method, ep, path, headers=headers, body=data, params=params, timeout=timeout)
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    message = str(doc.get("message") or doc.get("error") or f"HTTP {status}")
    where = f"{ep}{path}"
    if status == 401:
        raise Unauthenticated(message, tr.credentials.explain_refusal(), where)
    if status == 403:
        raise Forbidden(message, where)
    if status == 404:
        raise TokenServiceMissing(f"{where}: {message}")
    if status == 409 and doc.get("error") == "refresh_refused":
        raise RefreshRefused(f"refresh refused: {doc.get('reason') or message}")
    if status >= 400:
        raise Unavailable(where, message, status)
    return doc


async def _token(args: argparse.Namespace, tr: Transport, ep: Endpoint, out: IO[str], table: Table) -> int:
    sub, as_json, tid = args.token_command, args.output == "json", quote(str(getattr(args, "id", "") or ""), "")
    if sub == "request":
        doc = await call(tr, ep, "POST", "/v1/tokens", request_body(args), timeout=args.timeout)
    elif sub == "status":
        doc = await call(tr, ep, "GET", f"/v1/tokens/{tid}", timeout=args.timeout)
        if args.print_replacement:
            rep = doc.get("replacement") or {}
            out.write(f"{rep['token']}\n" if rep.get("token") else "")
            return 0 if rep.get("token") else 1
    elif sub == "refresh":
        doc = await call(tr, ep, "POST", f"/v1/tokens/{tid}/refresh", {}, timeout=args.timeout)
    elif sub == "revoke":
        doc = await call(tr, ep, "DELETE", f"/v1/tokens/{tid}", timeout=args.timeout)
    else:
        params = {k: str(v) for k, v in (("service", args.service), ("state", args.state), ("limit", args.limit))
                  if v is not None}
        doc = await call(tr, ep, "GET", "/v1/tokens", params=params, timeout=args.timeout)
    if getattr(args, "print_token", False):
        out.write(f"{doc.get('token', '')}\n")
    elif as_json:
        out.write(json.dumps(doc, indent=2) + "\n")
    elif sub in ("request", "refresh"):
        out.write(render_token(doc))
    elif sub == "status":
        out.write(render_status(doc))
    elif sub == "revoke":
        out.write(f"revoked {doc.get('tokenId')}: pushed to {doc.get('pushedTo')} node(s)/cache(s), "
                  f"{doc.get('pending')} pending\n")
    else:
        out.write(table(["token", "service", "tier", "store", "state", "expires"], token_rows(doc)))
    return 0


async def run(args: argparse.Namespace, api: ApiFactory, namespace: str, out: IO[str], table: Table) -> int:
    """Execute ``token ...`` or ``risk MS``."""
    import asyncio

    if args.command == "risk":
        args.mirrorset_name = args.name
    ep, tr = await asyncio.to_thread(locate, args, api, namespace)
    try:
        if args.command == "risk":
            doc = await call(tr, ep, "GET", "/v1/risk", timeout=args.timeout)
            out.write(json.dumps(doc, indent=2) + "\n" if args.output == "json" else render_risk(doc, table))
            return 0
        try:
            return await _token(args, tr, ep, out, table)
        except RefreshRefused as exc:
            out.write(f"{exc}\n")
            return EXIT_REFUSED_REFRESH
    finally:
        await tr.close()


def add_parsers(sub: Any) -> None:
    """``token request|status|refresh|revoke|list`` and ``risk MIRRORSET`` (``sub``: the CLI's subparsers)."""
    t = sub.add_parser("token", help="tiered access tokens of a MirrorSet's token service (docs/tokens.md)")
    tsub = t.add_subparsers(dest="token_command", required=True)
    req = tsub.add_parser("request", help="PredictiveTokenRequest: a token whose tier fits the store's health")
    req.add_argument("--service-id", help="the service the token is for (default: the caller)")
    req.add_argument("--block", metavar="TABLE/KEY", help="a token for one block (dataBlockId)")
    req.add_argument("--table", help="a token for one table")
    req.add_argument("--verbs", help="comma-separated: get,list,update,delete (default: the service's)")
    req.add_argument("--print-token", action="store_true", help="print only the token (for CHRONOSHARD_TOKEN)")
    st = tsub.add_parser("status", help="TokenStatusCheck: state, tier, recommended tier, a pre-issued replacement")
    st.add_argument("id")
    st.add_argument("--print-replacement", action="store_true",
                    help="print only the pre-issued replacement token (exit 1 when there is none)")
    rf = tsub.add_parser("refresh", help="TokenRefresh: upgrade or renew (exit 1 with the reason when refused)")
    rf.add_argument("id")
    rf.add_argument("--print-token", action="store_true", help="print only the new token")
    rv = tsub.add_parser("revoke", help="revoke a token (pushed to every node and cache)")
    rv.add_argument("id")
    ls = tsub.add_parser("list", help="the registry (admin)")
    ls.add_argument("--service", help="only this service's tokens")
    ls.add_argument("--state", choices=["active", "expired", "revoked", "superseded"], help="only this state")
    ls.add_argument("--limit", type=int, default=None, help="at most this many")
    r = sub.add_parser("risk", help="a MirrorSet's predicted unavailability per member and copy")
    r.add_argument("name", help="the MirrorSet")
    for p in (req, st, rf, rv, ls, r):
        p.add_argument("-m", "--mirrorset", default=None, help="the MirrorSet whose token service to ask")
        p.add_argument("--tokens-url", default=None, help="the token service's URL instead (e.g. in the cluster "
                                                          "https://MS-tokens.NS.svc:7405)")
        p.add_argument("--tokens-server-name", default=None, help="with --tokens-url, the name its certificate "
                                                                  "holds (default MS-tokens.NS.svc)")
        p.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace")
        p.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS,
                       help="output format")
