"""`chronoshard-weaver`: sample one shard node's partitions, forecast their splits, weave the snapshots of the
predicted halves from the shadow's history, and serve them on --port (7404). Flags: docs/weaving.md."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from chronoshard.shardnode.serving.scaffold import apply_shard_args, parse_process_args, run, shard_process_parser

from .config import WeaverConfig
from .server import create_app

PORT = 7404


def parser() -> argparse.ArgumentParser:
    """Command-line flags (docs/weaving.md, "The weaver"); each falls back to a CHRONOSHARD_WEAVER_* variable."""
    p = shard_process_parser("chronoshard-weaver", "chronoshard weaver (split forecasts and woven snapshots)",
                             port=PORT, env_prefix="CHRONOSHARD_WEAVER", settings_file="weave.json")
    env = os.environ.get
    node_url = env("CHRONOSHARD_NODE_URL")
    p.add_argument("--node-url", default=node_url, required=not node_url, help="base URL of this shard's node")
    data_dir = env("CHRONOSHARD_WEAVER_DATA_DIR")
    p.add_argument("--data-dir", default=data_dir, required=not data_dir,
                   help="the shard volume: shadow.sqlite3 (read-only) and weave.sqlite3")
    # The pod contract names settings files --settings, as the shadow's; --config is the scaffold's spelling.
    p.add_argument("--settings", dest="config", default=argparse.SUPPRESS, help="weave.json settings file")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_process_args(parser(), sys.argv[1:] if argv is None else argv)
    cfg = WeaverConfig(node_url=args.node_url, data_dir=Path(args.data_dir), keyring_dir=Path(args.keyring_dir),
                       kek_dir=Path(args.kek_dir) if args.kek_dir else None)
    apply_shard_args(cfg, args)
    run(create_app(cfg), args.host, args.port, security=args.security)


if __name__ == "__main__":
    main()
