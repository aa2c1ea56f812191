"""`chronoshard-node`: serve one shard's block store on --host:--port."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from chronoshard.shardnode.node.server import NodeConfig, create_app
from chronoshard.shardnode.serving.scaffold import (
    add_keyring_args,
    add_partition_args,
    add_settings_arg,
    load_settings,
    parse_process_args,
    partitioning_from_args,
    process_parser,
    run,
)

from .store import StoreLocked

log = logging.getLogger("chronoshard.node")


def parser() -> argparse.ArgumentParser:
    """Command-line flags (docs/interfaces.md); each falls back to a CHRONOSHARD_NODE_* variable."""
    p = process_parser("chronoshard-node", "chronoshard shard node (encrypted block store)", port=7400,
                       env_prefix="CHRONOSHARD_NODE")
    data_dir = os.environ.get("CHRONOSHARD_NODE_DATA_DIR")
    p.add_argument("--data-dir", default=data_dir, required=not data_dir, help="directory holding the SQLite store")
    add_keyring_args(p)
    add_partition_args(p)
    add_settings_arg(p, "CHRONOSHARD_NODE_CONFIG", "node.json")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_process_args(parser(), argv)
    cfg = NodeConfig(data_dir=Path(args.data_dir), keyring_dir=Path(args.keyring_dir),
                     kek_dir=Path(args.kek_dir) if args.kek_dir else None)
    load_settings(cfg, args.config)
    cfg.partitioning = partitioning_from_args(args)
    try:
        run(create_app(cfg), args.host, args.port)
    except StoreLocked as exc:
        log.error("%s; refusing to start a second node on it", exc)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
