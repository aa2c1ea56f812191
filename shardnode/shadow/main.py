"""`chronoshard-shadow`: capture one shard node's changes into a time-travel history and serve it on --port
(7403). ``chronoshard-shadow bootstrap ...`` builds a node data dir from a backup instead (shadow/bootstrap.py)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from chronoshard.shardnode.serving.scaffold import apply_shard_args, parse_process_args, run, shard_process_parser

from .config import ShadowConfig
from .server import create_app

PORT = 7403


def parser() -> argparse.ArgumentParser:
    """Command-line flags (docs/shadow-api.md); each falls back to a CHRONOSHARD_SHADOW_* variable."""
    p = shard_process_parser("chronoshard-shadow", "chronoshard shadow (time-travel history of one shard)",
                             port=PORT, env_prefix="CHRONOSHARD_SHADOW", settings_file="shadow.json")
    env = os.environ.get
    node_url = env("CHRONOSHARD_NODE_URL")
    p.add_argument("--node-url", default=node_url, required=not node_url, help="base URL of this shard's node")
    data_dir = env("CHRONOSHARD_SHADOW_DATA_DIR")
    p.add_argument("--data-dir", default=data_dir, required=not data_dir,
                   help="directory holding shadow.sqlite3 (the pod's data volume)")
    # The pod contract names the settings file --settings; --config is the scaffold's spelling of the same.
    p.add_argument("--settings", dest="config", default=argparse.SUPPRESS, help="shadow.json settings file")
    p.add_argument("--objectstore-dir", default=env("CHRONOSHARD_SHADOW_OBJECTSTORE_DIR"),
                   help="the object-storage credentials (files accessKeyId, secretAccessKey); overrides "
                        "shadow.json's cold.credentialsDir")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bootstrap"]:
        # Imported only here: the bootstrap pulls in the object store and the node's store code.
        raise SystemExit(importlib.import_module("chronoshard.shardnode.shadow.bootstrap").main(argv[1:]))
    args = parse_process_args(parser(), argv)
    cfg = ShadowConfig(node_url=args.node_url, data_dir=Path(args.data_dir), keyring_dir=Path(args.keyring_dir),
                       kek_dir=Path(args.kek_dir) if args.kek_dir else None,
                       objectstore_dir=Path(args.objectstore_dir) if args.objectstore_dir else None)
    apply_shard_args(cfg, args)
    run(create_app(cfg), args.host, args.port, security=args.security)


if __name__ == "__main__":
    main()
