"""`chronoshard-node`: serve one shard's block store on --host:--port."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from aiohttp import web
from chronoshard.shardnode.node.server import NodeConfig, create_app
from chronoshard.shardnode.serving.http_common import SERVER_LIMITS, load_json_config, setup_logging
from chronoshard.shardnode.serving.routing import partition_setup

from .store import StoreLocked

log = logging.getLogger("chronoshard.node")


def parser() -> argparse.ArgumentParser:
    """Command-line flags (docs/interfaces.md); each falls back to a CHRONOSHARD_NODE_* variable."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="chronoshard-node", description="chronoshard shard node (encrypted block store)")
    p.add_argument("--host", default=env("CHRONOSHARD_NODE_HOST", env("POD_IP", "127.0.0.1")),
                   help="address to bind (default: $POD_IP or 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(env("CHRONOSHARD_NODE_PORT", "7400")))
    data_dir, keyring_dir = env("CHRONOSHARD_NODE_DATA_DIR"), env("CHRONOSHARD_KEYRING_DIR")
    p.add_argument("--data-dir", default=data_dir, required=not data_dir, help="directory holding the SQLite store")
    p.add_argument("--keyring-dir", default=keyring_dir, required=not keyring_dir,
                   help="mounted keyring Secret directory")
    p.add_argument("--kek-dir", default=env("CHRONOSHARD_KEK_DIR"),
                   help="mounted KEK Secret directory (kek.key); required when the keyring holds v<N>.wrapped")
    p.add_argument("--partition-map", default=env("CHRONOSHARD_PARTITION_MAP"), help="partition map file (map.json)")
    p.add_argument("--shard-index", type=int, default=None,
                   help="this shard's index (default: the ordinal in $POD_NAME)")
    p.add_argument("--config", default=env("CHRONOSHARD_NODE_CONFIG"), help="node.json settings file")
    p.add_argument("--log-level", default=env("CHRONOSHARD_LOG_LEVEL", "INFO"))
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    cfg = NodeConfig(data_dir=Path(args.data_dir), keyring_dir=Path(args.keyring_dir),
                     kek_dir=Path(args.kek_dir) if args.kek_dir else None)
    cfg.apply(load_json_config(args.config))  # now, because the body size limit is fixed when the app is built
    cfg.settings_path = args.config
    cfg.partitions, cfg.shard_index = partition_setup(args.partition_map, args.shard_index)
    try:
        _run(cfg, args.host, args.port)
    except StoreLocked as exc:
        log.error("%s; refusing to start a second node on it", exc)
        raise SystemExit(2) from None


def _run(cfg: NodeConfig, host: str, port: int) -> None:
    web.run_app(create_app(cfg), host=host, port=port, access_log=None, print=None, shutdown_timeout=10,
                **SERVER_LIMITS)


if __name__ == "__main__":
    main()
