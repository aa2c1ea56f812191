"""``chronoshard-operator``: run the Kopf operator (all namespaces or the listed ones)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import kopf

from .settings import RUNTIME


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of the operator process."""
    p = argparse.ArgumentParser(
        prog="chronoshard-operator",
        description="Run the chronoshard Kubernetes operator (ShardSet, KeyRotation, PrefetchPolicy, ...).",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch only this namespace (repeatable; glob patterns allowed)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch every namespace (the default when no --namespace is given)")
    p.add_argument("-v", "--verbose", action="store_true", help="log more (INFO from every component)")
    p.add_argument("--debug", action="store_true", help="log everything, including Kopf internals")
    p.add_argument("--liveness", metavar="URL", default=None,
                   help="serve Kopf's liveness probe, e.g. http://$(POD_IP):8080/healthz")
    p.add_argument("--metrics-port", type=int, default=9090,
                   help="port for Prometheus metrics (0 turns them off; default 9090)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address for the metrics server (default 127.0.0.1; the chart passes the pod IP)")
    peering = p.add_mutually_exclusive_group()
    peering.add_argument("--peering", metavar="NAME", default="chronoshard",
                         help="Kopf peering object name, so a second operator copy pauses (default chronoshard)")
    peering.add_argument("--standalone", action="store_true", help="no peering: act even if another copy runs")
    p.add_argument("--priority", type=int, default=0, help="peering priority of this copy")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, register the handlers and run until SIGTERM/SIGINT."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    kopf.configure(verbose=args.verbose or args.debug, debug=args.debug)
    clusterwide = not args.namespace
    RUNTIME.clusterwide = clusterwide
    RUNTIME.namespaces = tuple(args.namespace)
    RUNTIME.peering_name = "" if args.standalone else args.peering

    from . import handlers  # noqa: F401 - registers every handler
    from .metrics import start_metrics_server

    if args.metrics_port:
        start_metrics_server(args.metrics_port, args.metrics_host)
    asyncio.run(
        kopf.operator(
            clusterwide=clusterwide,
            namespaces=args.namespace,
            standalone=args.standalone,
            priority=args.priority,
            # Peering is configured in the startup handler as non-mandatory: without Kopf's peering CRDs
            # (a bare kubectl install) the operator warns and runs instead of crashing.
            peering_name=None,
            liveness_endpoint=args.liveness,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
