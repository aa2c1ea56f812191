"""`chronoshard-node`: serve one shard's block store on --host:--port."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from chronoshard.shardnode.node.server import NodeConfig, create_app
from chronoshard.shardnode.serving.scaffold import apply_shard_args, parse_process_args, run, shard_process_parser

from .store import StoreLocked

log = logging.getLogger("chronoshard.node")


def parser() -> argparse.ArgumentParser:
    """Command-line flags (docs/interfaces.md); each falls back to a CHRONOSHARD_NODE_* variable."""
    p = shard_process_parser("chronoshard-node", "chronoshard shard node (encrypted block store)", port=7400,
                             env_prefix="CHRONOSHARD_NODE", settings_file="node.json")
    data_dir = os.environ.get("CHRONOSHARD_NODE_DATA_DIR")
    p.add_argument("--data-dir", default=data_dir, required=not data_dir, help="directory holding the SQLite store")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_process_args(parser(), argv)
    cfg = NodeConfig(data_dir=Path(args.data_dir), keyring_dir=Path(args.keyring_dir),
                     kek_dir=Path(args.kek_dir) if args.kek_dir else None)
    apply_shard_args(cfg, args)
    try:
        run(create_app(cfg), args.host, args.port, security=args.security)
    except StoreLocked as exc:
        log.error("%s; refusing to start a second node on it", exc)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
