"""``chronoshard``: put/get/delete/ls blocks, show the partition map and a ShardSet's status; the past from the
shards' shadows (``history``, ``at``, ``diff``) and Reversions (``restore``, ``approve``). Installed also as
``kubectl-chronoshard``, so ``kubectl chronoshard ...`` runs it as a kubectl plugin.

Where blocks go (first that applies):

* ``--url URL``: one address, e.g. the ShardSet's client Service (``kubectl port-forward svc/orders
  7401``); its cache forwards each key to the owning shard.
* ``--endpoints URL,URL,...``: the shards' cache (or node) URLs by shard index; the client fetches the
  map from them (or ``--map-file``) and routes each key straight to its owner.
* ``--shardset NAME``: the map from the ``NAME-partitions`` ConfigMap via the Kubernetes API, and each shard
  pod's IP from its status (``<podIP>:7401``: inside the cluster, on the local process cluster, and wherever
  pod IPs are routable; TLS checks the pod's DNS name). ``--pod-url-template`` switches to a URL template
  instead, e.g. the pods' DNS names ``{shardset}-{shard}.{shardset}-headless.{namespace}.svc:7401``.

Addresses without a scheme use ``auto`` (HTTPS, or plain HTTP while a pod still answers in plaintext during the
move to TLS). Certificates are verified against ``--ca FILE``, else (with ``--shardset``) the ShardSet's ``NAME-ca``
ConfigMap. Credentials, first found: ``--token``, ``--service-account SA`` (a 10-minute token from the
TokenRequest API with the ShardSet's audience, as ``kubectl create token SA --audience chronoshard.io/NS/NAME``),
``$CHRONOSHARD_TOKEN``, the projected token file (``--token-file``, default
``/var/run/secrets/chronoshard.io/token``), and with ``--shardset`` the kubeconfig's own token (refused unless the
ShardSet sets ``spec.access.acceptKubeconfigTokens``).

``history``/``at``/``diff``, ``anomalies show`` and ``whatif`` go to the shadow beside each shard's cache (same pod
IP, port 7403), routed by the same map: with ``--shardset`` to the pods, with ``--endpoints`` to each given host at
port 7403, or to ``--shadow-endpoints URL,...`` (by shard index) as given. ``restore``, ``approve``,
``anomalies`` (the list), ``mirror status|switchover|failback`` (``cli_mirror``) and ``split``, ``move``, ``merge``,
``reshard status`` (``cli_reshard``: Reshard objects, docs/resharding.md) only talk to the Kubernetes API.

Exit codes: 0 ok, 1 error (``whatif``: the batch would alarm; ``mirror --wait``: the operation was aborted;
``split|move|merge --wait``: the Reshard failed or rolled back), 2 usage, 3 block or object not found, 4 shard or
API unavailable (``mirror``/``split|move|merge --wait``: not finished in time), 5 refused (401/403).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any

from chronoshard.shardnode.client import (
    AsyncClient,
    ChronoshardError,
    ConfigMapMap,
    Credentials,
    Endpoint,
    FileMap,
    Forbidden,
    MapProvider,
    MapUnavailable,
    NodeMap,
    NotFound,
    ShardSetPods,
    TokenSource,
    Transport,
    Unauthenticated,
    Unavailable,
    cli_anomalies,
    cli_history,
    cli_mirror,
    cli_reshard,
    cli_reversion,
    cli_tiered,
    cli_weave,
    discovery,
)
from chronoshard.shardnode.client.cli_tokens import ServiceAccountToken, kubeconfig_token
from chronoshard.shardnode.client.credentials import audience, fixed_source, standard_sources
from chronoshard.shardnode.client.history import SHADOW_PORT, HistoryClient, shadow_endpoint
from chronoshard.shardnode.client.transport import ca_file_source
from chronoshard.shardnode.client.weave import WEAVER_PORT, WeaveClient, weaver_endpoint
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

GROUP, VERSION = "chronoshard.io", "v1alpha1"
POD_URL_TEMPLATE = "{shardset}-{shard}.{shardset}-headless.{namespace}.svc:7401"
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_REFUSED = 1, 2, 3, 4, 5


# --- pure formatting ---------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A kubectl-style plain table: upper-case headers, columns padded with three spaces."""
    cells = [[str(h).upper() for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def map_rows(pmap: PartitionMap) -> list[list[object]]:
    """One row per partition: id, start, end, shard, share of the keyspace in percent."""
    return [[p.id, f"{p.start:016x}", f"{p.end:016x}", p.shard, f"{(p.end - p.start + 1) / 2**64 * 100:.2f}%"]
            for p in sorted(pmap.partitions, key=lambda p: p.start)]


def status_summary(shardset: dict[str, Any], rotations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The facts ``chronoshard status`` shows, from a ShardSet object and its KeyRotation objects."""
    st = shardset.get("status") or {}
    spec = shardset.get("spec") or {}
    shards = st.get("shards") or {}
    pm = st.get("partitionMap") or {}
    conditions = {c.get("type"): c for c in st.get("conditions") or []}
    active = [r for r in rotations
              if (r.get("status") or {}).get("phase") not in (None, "Completed", "Failed", "Waiting")]
    return {
        "name": shardset["metadata"]["name"],
        "namespace": shardset["metadata"].get("namespace"),
        "phase": st.get("phase", "Unknown"),
        "shards": {"desired": shards.get("desired", spec.get("shards")), "ready": shards.get("ready", 0)},
        "keyVersion": st.get("keyVersion"),
        "keyVersions": st.get("keyVersions") or [],
        "partitionEpoch": pm.get("epoch"),
        "partitions": len(pm.get("partitions") or []),
        "conditions": [{"type": t, "status": c.get("status"), "reason": c.get("reason"),
                        "message": c.get("message")} for t, c in conditions.items()],
        "rotations": [
            {"name": r["metadata"]["name"], "phase": (r.get("status") or {}).get("phase", "Pending"),
             "fromVersion": (r.get("status") or {}).get("fromVersion"),
             "toVersion": (r.get("status") or {}).get("toVersion"),
             "shards": (r.get("status") or {}).get("shards") or []}
            for r in rotations
        ],
        "rotationInProgress": bool(active),
    }


def render_status(s: dict[str, Any]) -> str:
    """Human-readable ``chronoshard status`` output."""
    versions = ", ".join(f"v{v.get('id')} ({v.get('state')})" for v in s["keyVersions"]) or "-"
    out = [
        f"ShardSet {s['namespace']}/{s['name']}: {s['phase']}",
        f"Shards:          {s['shards']['ready']}/{s['shards']['desired']} ready",
        f"Key version:     {s['keyVersion'] if s['keyVersion'] is not None else '-'}   (keyring: {versions})",
        f"Partition map:   epoch {s['partitionEpoch'] if s['partitionEpoch'] is not None else '-'}, "
        f"{s['partitions']} partitions",
        f"Rotation:        {'in progress' if s['rotationInProgress'] else 'none in progress'}",
        "",
    ]
    if s["conditions"]:
        out.append(format_table(["condition", "status", "reason", "message"],
                                [[c["type"], c["status"], c["reason"], c["message"]]
                                 for c in s["conditions"]]))
    if s["rotations"]:
        out.append(format_table(["keyrotation", "phase", "from", "to"],
                                [[r["name"], r["phase"], r["fromVersion"], r["toVersion"]]
                                 for r in s["rotations"]]))
        for r in s["rotations"]:
            if r["shards"]:
                out.append(f"{r['name']} per shard:\n" + format_table(
                    ["shard", "rewrapped", "remaining", "old-version blocks", "message"],
                    [[p.get("shard"), p.get("rewrapped"), p.get("remaining"), p.get("oldVersionBlocks"),
                      p.get("message")] for p in r["shards"]]))
    return "\n".join(out)


# --- Kubernetes ----------------------------------------------------------------------------------


def kube_api(args: argparse.Namespace) -> Any:
    """An ApiClient from --kubeconfig/--context (or the in-cluster service account), made once per run."""
    if getattr(args, "_api", None) is None:
        args._api = discovery.kube_client(args.kubeconfig, args.context)
    return args._api


def default_namespace(args: argparse.Namespace) -> str:
    """--namespace, else the kubeconfig context's namespace, else ``default`` (as kubectl)."""
    if args.namespace:
        return str(args.namespace)
    try:
        from kubernetes import config

        contexts, active = config.list_kube_config_contexts(config_file=args.kubeconfig)
        chosen = next((c for c in contexts if c["name"] == args.context), active) if args.context else active
        return str((chosen or {}).get("context", {}).get("namespace") or "default")
    except Exception:
        return "default"


def fetch_status(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Read the ShardSet and the KeyRotations that name it; summarise."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ns = default_namespace(args)
    api = client.CustomObjectsApi(kube_api(args))
    try:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, "shardsets", name)
        listing = api.list_namespaced_custom_object(GROUP, VERSION, ns, "keyrotations")
    except ApiException as exc:
        if exc.status == 404:
            raise NotFoundError(f"ShardSet {ns}/{name} not found") from None
        raise Unavailable(f"kubernetes API ({ns})", f"HTTP {exc.status} {exc.reason}") from None
    if not isinstance(obj, dict) or not isinstance(listing, dict):
        raise Unavailable(f"kubernetes API ({ns})", "answered something other than a JSON object")
    rots: list[dict[str, Any]] = listing["items"]
    mine = [r for r in rots if ((r.get("spec") or {}).get("shardSetRef") or {}).get("name") == name]
    return status_summary(obj, sorted(mine, key=lambda r: r["metadata"]["name"]))


class NotFoundError(ChronoshardError):
    """A Kubernetes object the command needs does not exist."""


# --- client wiring -------------------------------------------------------------------------------


def map_provider(args: argparse.Namespace, transport: Transport | None = None) -> MapProvider:
    """Where the partition map comes from for this invocation (nodes are asked through ``transport``)."""
    if args.map_file:
        return FileMap(args.map_file)
    if args.endpoints:
        return NodeMap(split_urls(args.endpoints), timeout=args.timeout, transport=transport)
    if args.url:
        return NodeMap([args.url], timeout=args.timeout, transport=transport)
    if args.shardset:
        return ConfigMapMap(args.shardset, default_namespace(args), api_client=kube_api(args))
    raise UsageError("say where the ShardSet is: --shardset NAME, --url URL, --endpoints URLS or --map-file")


class UsageError(Exception):
    """Bad combination of flags."""


def split_urls(text: str) -> list[str]:
    """Comma-separated URLs, trimmed."""
    return [u.strip() for u in text.split(",") if u.strip()]


KUBECONFIG_REFUSED = ("the kubeconfig's token is the API server's credential, which a ShardSet refuses unless it "
                      "sets spec.access.acceptKubeconfigTokens: true; use --service-account SA (a token for "
                      "{aud}) or --token")


def credentials(args: argparse.Namespace) -> Credentials:
    """The credential chain of this invocation (module docstring); nothing is asked of the API until used."""
    if args.token and args.service_account:
        raise UsageError("give --token or --service-account, not both")
    if args.service_account and not args.shardset:
        raise UsageError("--service-account needs --shardset NAME: the token's audience is "
                         "chronoshard.io/NAMESPACE/NAME")
    aud = audience(default_namespace(args), args.shardset) if args.shardset else None
    sources: list[TokenSource] = []
    if args.token:
        sources.append(fixed_source("--token", args.token))
    if args.service_account:
        sa = ServiceAccountToken(kube_api(args), default_namespace(args), args.service_account, str(aud))
        sources.append(TokenSource(f"--service-account {args.service_account}", sa))
    sources += standard_sources(args.token_file)
    if args.shardset:
        sources.append(TokenSource("the kubeconfig's own token", lambda: kubeconfig_token(kube_api(args)),
                                   refused_hint=KUBECONFIG_REFUSED.format(aud=aud)))
    how_to = ("Give --token (or $CHRONOSHARD_TOKEN), or --service-account SA with --shardset NAME, or mount a "
              f"projected serviceAccountToken with audience {aud or 'chronoshard.io/NAMESPACE/NAME'}")
    return Credentials(sources, how_to=how_to)


def transport(args: argparse.Namespace) -> Transport:
    """TLS (``--ca``, else the ShardSet's ``NAME-ca`` ConfigMap, else the system's CAs) and the credentials."""
    source, where = None, "no --ca: verified against the system's CAs"
    if args.ca:
        source, where = ca_file_source(args.ca), f"verified against {args.ca}"
    elif args.shardset:
        ns, cm = default_namespace(args), discovery.ca_config_map_name(args.shardset)
        api = kube_api(args)
        source = partial(discovery.shardset_ca, api, args.shardset, ns)
        where = f"verified against ConfigMap {ns}/{cm}, or the system's CAs while it is absent (else give --ca)"
    return Transport(credentials(args), default_scheme=args.scheme, ca_hint=where, ca_source=source)


def make_client(args: argparse.Namespace, tr: Transport) -> AsyncClient:
    """The client for block commands (see the module docstring for the order of precedence)."""
    if args.url:
        return AsyncClient.via_service(args.url, maps=map_provider(args, tr), timeout=args.timeout, transport=tr)
    if args.endpoints:
        return AsyncClient(map_provider(args, tr), split_urls(args.endpoints), timeout=args.timeout, transport=tr)
    if args.shardset:
        ns = default_namespace(args)
        template = args.pod_url_template
        if template:
            def endpoint(shard: int) -> str:
                return template.format(shardset=args.shardset, shard=shard, namespace=ns)

            return AsyncClient(map_provider(args), endpoint, timeout=args.timeout, transport=tr)
        pods = ShardSetPods(args.shardset, ns, api_client=kube_api(args))
        return AsyncClient(map_provider(args), pods.endpoint, timeout=args.timeout, transport=tr,
                           rediscover=pods.refresh)
    raise UsageError("say where the ShardSet is: --shardset NAME, --url URL or --endpoints URLS")


def _by_index(eps: Sequence[Endpoint]) -> Any:
    def pick(shard: int) -> Endpoint:
        if not 0 <= shard < len(eps):
            raise Unavailable(f"shard {shard}", f"no shadow endpoint given ({len(eps)} known)")
        return eps[shard]

    return pick


def history_client(args: argparse.Namespace, tr: Transport) -> HistoryClient:
    """The client of ``history``/``at``/``diff``: the shadows beside the shards, routed by the map."""
    if args.shadow_endpoints:
        eps = [Endpoint.parse(u) for u in split_urls(args.shadow_endpoints)]
        maps = FileMap(args.map_file) if args.map_file else NodeMap(eps, timeout=args.timeout, transport=tr)
        return HistoryClient(maps, _by_index(eps), transport=tr, timeout=args.timeout)
    if args.endpoints:
        eps = [shadow_endpoint(Endpoint.parse(u)) for u in split_urls(args.endpoints)]
        return HistoryClient(map_provider(args, tr), _by_index(eps), transport=tr, timeout=args.timeout)
    if args.shardset:
        ns = default_namespace(args)
        template = args.pod_url_template
        if template:
            def endpoint(shard: int) -> Endpoint:
                return shadow_endpoint(Endpoint.parse(template.format(shardset=args.shardset, shard=shard,
                                                                      namespace=ns)))

            return HistoryClient(map_provider(args), endpoint, transport=tr, timeout=args.timeout)
        pods = ShardSetPods(args.shardset, ns, api_client=kube_api(args), port=SHADOW_PORT)
        return HistoryClient(map_provider(args), pods.endpoint, transport=tr, timeout=args.timeout,
                             rediscover=pods.refresh)
    raise UsageError("history, at and diff go to the shards' shadows: give --shardset NAME, --endpoints URLS "
                     "(the shadows are at port 7403 of the same hosts) or --shadow-endpoints URLS; the client "
                     "Service (--url) reaches caches only")


def weave_client(args: argparse.Namespace, tr: Transport, shardset: str, shards: int) -> WeaveClient:
    """The client of ``weave ls``/``weave state``: the weavers beside the shards of the plan's ShardSet (port 7404
    of --endpoints' hosts, of --pod-url-template's, or of the pods)."""
    if args.endpoints:
        eps = [weaver_endpoint(Endpoint.parse(u)) for u in split_urls(args.endpoints)]
        return WeaveClient(_by_index(eps), len(eps), transport=tr, timeout=args.timeout)
    ns = default_namespace(args)
    if args.pod_url_template:
        template = args.pod_url_template

        def endpoint(shard: int) -> Endpoint:
            return weaver_endpoint(Endpoint.parse(template.format(shardset=shardset, shard=shard, namespace=ns)))

        return WeaveClient(endpoint, shards, transport=tr, timeout=args.timeout)
    pods = ShardSetPods(shardset, ns, api_client=kube_api(args), port=WEAVER_PORT)
    return WeaveClient(pods.endpoint, shards, transport=tr, timeout=args.timeout, rediscover=pods.refresh)


async def weave_command(args: argparse.Namespace, out: IO[str]) -> int:
    """``weave status|whatif`` (the API only) and ``weave ls|state`` (the plan's ShardSet's weavers)."""
    plans = cli_weave.WeavePlans(kube_api(args), default_namespace(args))
    transports: list[Transport] = []

    def factory(shardset: str, shards: int) -> WeaveClient:
        args.shardset = args.shardset or shardset  # its CA and token audience
        transports.append(transport(args))
        return weave_client(args, transports[-1], shardset, shards)

    try:
        return await cli_weave.run(args, plans, factory, out, format_table, asyncio.to_thread)
    finally:
        for tr in transports:
            await tr.close()


async def reversion_command(args: argparse.Namespace, out: IO[str], stdin: IO[bytes]) -> int:
    """``restore``/``approve`` through the Kubernetes API (blocking calls, in a thread)."""
    if args.command == "restore" and not args.shardset:
        raise UsageError("restore needs --shardset NAME: the ShardSet whose blocks are put back")
    revs = cli_reversion.Reversions(kube_api(args), default_namespace(args))
    if args.command == "restore":
        return await asyncio.to_thread(cli_reversion.restore, revs, args, out, format_table)
    return await asyncio.to_thread(cli_reversion.approve, revs, args, out, stdin, format_table)


# --- commands ------------------------------------------------------------------------------------


def read_value(args: argparse.Namespace, stdin: IO[bytes]) -> bytes:
    """The value to put: --value, --file, or standard input."""
    if args.value is not None:
        return str(args.value).encode()
    if args.file:
        return Path(args.file).read_bytes()
    return stdin.read()


async def kube_command(args: argparse.Namespace, out: IO[str]) -> int:
    """``mirror``, ``split|move|merge|reshard`` and ``weave``: MirrorSets, Reshards and WeavePlans through the
    Kubernetes API (``weave ls|state`` also reach the weavers)."""
    if args.command in cli_mirror.COMMANDS:
        sets = cli_mirror.MirrorSets(kube_api(args), default_namespace(args))
        return await asyncio.to_thread(cli_mirror.run, sets, args, out, format_table)
    if args.command in cli_reshard.COMMANDS:
        reshards = cli_reshard.Reshards(kube_api(args), default_namespace(args))
        return await asyncio.to_thread(cli_reshard.run, reshards, args, out, format_table)
    return await weave_command(args, out)


async def run(args: argparse.Namespace, out: IO[str], stdin: IO[bytes], bout: IO[bytes]) -> int:
    """Execute one parsed command; returns the exit code."""
    as_json = args.output == "json"
    if args.command == "status":
        s = await asyncio.to_thread(fetch_status, args, args.name)
        out.write(json.dumps(s, indent=2) + "\n" if as_json else render_status(s))
        return 0
    if args.command in cli_reversion.COMMANDS:
        return await reversion_command(args, out, stdin)
    if args.command in cli_tiered.COMMANDS:
        return await cli_tiered.run(args, lambda: kube_api(args), default_namespace(args), out, format_table)
    if args.command in (*cli_mirror.COMMANDS, *cli_reshard.COMMANDS, *cli_weave.COMMANDS):
        return await kube_command(args, out)
    if args.command in cli_anomalies.COMMANDS:
        cli_anomalies.check(args)
        if args.command == "anomalies" and args.id is None:
            policies = await asyncio.to_thread(cli_anomalies.list_policies, kube_api(args), default_namespace(args))
            return cli_anomalies.list_incidents(args, policies, out, format_table)
    tr = transport(args)
    try:
        if args.command in cli_anomalies.COMMANDS:
            return await cli_anomalies.run(args, history_client(args, tr), out, stdin, format_table)
        if args.command in cli_history.COMMANDS:
            await cli_history.run(args, history_client(args, tr), out, bout, format_table)
            return 0
        if args.command == "map":
            pmap = await map_provider(args, tr).fetch()
            if as_json:
                out.write(pmap.to_json())
            else:
                out.write(f"epoch {pmap.epoch}, {pmap.shards} shards, {len(pmap.partitions)} partitions\n")
                out.write(format_table(["partition", "start", "end", "shard", "share"], map_rows(pmap)))
            return 0
        await block_command(args, make_client(args, tr), out, stdin, bout)
    finally:
        await tr.close()
    return 0


async def block_command(args: argparse.Namespace, client: AsyncClient, out: IO[str], stdin: IO[bytes],
                        bout: IO[bytes]) -> None:
    """put/get/delete/ls through ``client``."""
    as_json = args.output == "json"
    async with client as c:
        if args.command == "put":
            ack = await c.put(args.table, args.key, read_value(args, stdin))
            out.write(json.dumps(ack) + "\n" if as_json else f"stored {args.table}/{args.key}\n")
        elif args.command == "get":
            value = await c.get(args.table, args.key)
            if as_json:
                out.write(json.dumps({"table": args.table, "key": args.key,
                                      "value": base64.b64encode(value).decode()}) + "\n")
            elif args.out:
                Path(args.out).write_bytes(value)
            else:
                out.flush()
                bout.write(value)
                bout.flush()
        elif args.command == "delete":
            existed = await c.delete(args.table, args.key, missing_ok=args.missing_ok)
            if as_json:
                out.write(json.dumps({"deleted": existed}) + "\n")
            else:
                what = "deleted" if existed else "absent (nothing deleted)"
                out.write(f"{args.table}/{args.key} {what}\n")
        elif args.command == "ls":
            items = [b async for b in c.scan(args.table, prefix=args.prefix, limit=args.limit)]
            if as_json:
                out.write(json.dumps([{"key": b.key, "size": b.size, "shard": b.shard} | b.meta
                                      for b in items], indent=2) + "\n")
            else:
                out.write(format_table(["key", "size", "shard", "key-version"],
                                       [[b.key, b.size, b.shard, b.meta.get("keyVersion")] for b in items]))


def program_name(argv0: str | None = None) -> str:
    """``kubectl chronoshard`` when run as the kubectl plugin (``kubectl-chronoshard``), else ``chronoshard``."""
    base = os.path.basename(argv0 if argv0 is not None else sys.argv[0])
    return "kubectl chronoshard" if base.startswith("kubectl-") else "chronoshard"


def _command_flags(sub: argparse.ArgumentParser) -> None:
    """-n/-s/-o after the command too (``kubectl chronoshard restore x -n team``); given there, they win."""
    sub.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace")
    sub.add_argument("-s", "--shardset", default=argparse.SUPPRESS, help="ShardSet name")
    sub.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS, help="output format")


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line."""
    # No abbreviations: the top-level parser would take diff's --to for an abbreviated --token.
    p = argparse.ArgumentParser(prog=prog or program_name(), allow_abbrev=False,
                                description="Use a chronoshard ShardSet: blocks, map, status, history, reversions, "
                                            "mirrors.")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("-n", "--namespace", help="namespace (default: the context's, else 'default')")
    p.add_argument("-s", "--shardset", help="ShardSet name (map from its ConfigMap, shards at their pod IPs)")
    p.add_argument("--url", help="one URL for everything, e.g. the client Service (caches forward)")
    p.add_argument("--endpoints", help="comma-separated cache/node URLs by shard index (direct routing)")
    p.add_argument("--map-file", help="partition map file (map.json) instead of asking nodes or the API")
    p.add_argument("--shadow-endpoints", help="comma-separated shadow URLs by shard index (history, at, diff)")
    p.add_argument("--pod-url-template", default=None,
                   help="with --shardset, reach shard {shard} at this URL instead of its pod IP, e.g. "
                        + POD_URL_TEMPLATE)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    p.add_argument("--token", default=None, help="bearer token (default: $CHRONOSHARD_TOKEN, the token file, "
                                                 "with --shardset the kubeconfig's token)")
    p.add_argument("--service-account", metavar="SA", default=None,
                   help="with --shardset, get a 10-minute token for ServiceAccount SA (in the ShardSet's "
                        "namespace) from the TokenRequest API through the kubeconfig")
    p.add_argument("--token-file", default=None, help="projected token file (default "
                                                      "/var/run/secrets/chronoshard.io/token when present)")
    p.add_argument("--ca", default=None, help="CA certificate (PEM) to verify the shards against (default: "
                                              "with --shardset its NAME-ca ConfigMap)")
    p.add_argument("--scheme", choices=["auto", "https", "http"], default="auto",
                   help="for addresses given without one (default auto: HTTPS, plain HTTP only if answered so)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")
    sub = p.add_subparsers(dest="command", required=True)
    put = sub.add_parser("put", help="store a block (value from --value, --file or stdin)")
    put.add_argument("table")
    put.add_argument("key")
    src = put.add_mutually_exclusive_group()
    src.add_argument("--value", help="the value as text")
    src.add_argument("--file", help="read the value from a file")
    get = sub.add_parser("get", help="print a block's bytes")
    get.add_argument("table")
    get.add_argument("key")
    get.add_argument("--out", help="write the value to a file instead of stdout")
    rm = sub.add_parser("delete", help="delete a block")
    rm.add_argument("table")
    rm.add_argument("key")
    rm.add_argument("--missing-ok", action="store_true", help="succeed if the block does not exist")
    ls = sub.add_parser("ls", help="list a table's blocks across shards, in key order")
    ls.add_argument("table")
    ls.add_argument("--prefix", default="", help="only keys starting with this")
    ls.add_argument("--limit", type=int, default=None, help="at most this many")
    sub.add_parser("map", help="show the partition map")
    st = sub.add_parser("status", help="a ShardSet's shards, key versions and rotations")
    st.add_argument("name")
    cli_history.add_parsers(sub)
    cli_reversion.add_parsers(sub)
    cli_anomalies.add_parsers(sub)
    cli_mirror.add_parsers(sub)
    cli_reshard.add_parsers(sub)
    cli_weave.add_parsers(sub)
    cli_tiered.add_parsers(sub)
    for name in (*cli_history.COMMANDS, *cli_reversion.COMMANDS, *cli_anomalies.COMMANDS):
        _command_flags(sub.choices[name])
    return p


def main(argv: Sequence[str] | None = None, *, out: IO[str] | None = None, stdin: IO[bytes] | None = None,
         bout: IO[bytes] | None = None) -> int:
    """Entry point; returns (and as a script exits with) the exit code."""
    args = parser().parse_args(argv)
    out = out or sys.stdout
    err = sys.stderr
    try:
        code = asyncio.run(run(args, out, stdin or sys.stdin.buffer, bout or sys.stdout.buffer))
    except (UsageError, cli_anomalies.AnomalyUsage, cli_weave.WeaveUsage) as exc:
        err.write(f"chronoshard: {exc}\n")
        code = EXIT_USAGE
    except (Unauthenticated, Forbidden) as exc:
        err.write(f"chronoshard: refused: {exc}\n")
        code = EXIT_REFUSED
    except (NotFound, NotFoundError, cli_reversion.ReversionMissing, cli_mirror.MirrorSetMissing,
            cli_reshard.ReshardMissing, cli_tiered.TokenServiceMissing, cli_weave.WeavePlanMissing) as exc:
        err.write(f"chronoshard: {exc}\n")
        code = EXIT_NOT_FOUND
    except (Unavailable, MapUnavailable) as exc:
        err.write(f"chronoshard: unavailable: {exc}\n")
        code = EXIT_UNAVAILABLE
    except (ChronoshardError, OSError) as exc:
        err.write(f"chronoshard: {exc}\n")
        code = EXIT_ERROR
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
