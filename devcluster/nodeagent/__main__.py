"""``python -m chronoshard.devcluster.nodeagent``: run the node agent until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from kubernetes import config

from .agent import NodeAgent
from .ipam import DEFAULT_POD_CIDR


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start the agent, stop it cleanly on SIGTERM (container processes keep running)."""
    parser = argparse.ArgumentParser(prog="chronoshard-nodeagent", description=__doc__)
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--node-name", default="chronoshard-dev")
    parser.add_argument("--backoff-base", type=float, default=10.0, help="first crash-loop back-off, seconds")
    parser.add_argument("--pod-cidr", default=DEFAULT_POD_CIDR,
                        help="pod IPs come from here: auto (a free 127.x.0.0/16) or a range assigned to lo")
    parser.add_argument("--client-ca", type=Path, default=None,
                        help="require log API clients (the API server) to present a certificate from this CA")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not args.kubeconfig.is_file():
        parser.error(f"kubeconfig {args.kubeconfig} does not exist")
    api = config.new_client_from_config(config_file=str(args.kubeconfig))
    agent = NodeAgent(
        api, args.state_dir, node_name=args.node_name, backoff_base=args.backoff_base, pod_cidr=args.pod_cidr,
        client_ca=args.client_ca,
    )
    if args.client_ca is None:
        logging.warning("kubelet log API accepts any local client (no --client-ca)")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: agent.stop())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
