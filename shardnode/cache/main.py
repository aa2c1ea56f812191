"""`chronoshard-cache`: the decryption cache in front of one shard node."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aiohttp import web
from chronoshard.shardnode.cache.server import CacheConfig, create_app
from chronoshard.shardnode.serving.http_common import SERVER_LIMITS, load_json_config, setup_logging
from chronoshard.shardnode.serving.routing import PeerURLs, partition_setup


def parser() -> argparse.ArgumentParser:
    """Command-line flags (docs/interfaces.md); each falls back to a CHRONOSHARD_CACHE_* variable."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="chronoshard-cache", description="chronoshard decryption cache")
    p.add_argument("--host", default=env("CHRONOSHARD_CACHE_HOST", env("POD_IP", "127.0.0.1")),
                   help="address to bind (default: $POD_IP or 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(env("CHRONOSHARD_CACHE_PORT", "7401")))
    node_url, keyring_dir = env("CHRONOSHARD_NODE_URL"), env("CHRONOSHARD_KEYRING_DIR")
    p.add_argument("--node-url", default=node_url, required=not node_url, help="base URL of this shard's node")
    p.add_argument("--keyring-dir", default=keyring_dir, required=not keyring_dir,
                   help="mounted keyring Secret directory")
    p.add_argument("--kek-dir", default=env("CHRONOSHARD_KEK_DIR"),
                   help="mounted KEK Secret directory (kek.key); required when the keyring holds v<N>.wrapped")
    p.add_argument("--unwrap-latency-ms", type=float, default=0.0,
                   help="add this delay to every key unwrap, to model a KMS round trip (benchmarks only)")
    p.add_argument("--partition-map", default=env("CHRONOSHARD_PARTITION_MAP"), help="partition map file (map.json)")
    p.add_argument("--shard-index", type=int, default=None,
                   help="this shard's index (default: the ordinal in $POD_NAME)")
    p.add_argument("--config", default=env("CHRONOSHARD_CACHE_CONFIG"), help="cache.json settings file")
    p.add_argument("--budget-bytes", type=int, default=None, help="override the byte budget")
    p.add_argument("--eviction", choices=["lru", "scored"], default=None, help="override the eviction policy")
    p.add_argument("--log-level", default=env("CHRONOSHARD_LOG_LEVEL", "INFO"))
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    if not 0 <= args.unwrap_latency_ms <= 60_000:
        parser().error("--unwrap-latency-ms must be between 0 and 60000")
    cfg = CacheConfig(node_url=args.node_url, keyring_dir=Path(args.keyring_dir),
                      kek_dir=Path(args.kek_dir) if args.kek_dir else None,
                      unwrap_latency_s=args.unwrap_latency_ms / 1000.0)
    cfg.apply(load_json_config(args.config))  # now, because the body size limit is fixed when the app is built
    cfg.settings_path = args.config
    if args.budget_bytes is not None:
        cfg.budget_bytes = args.budget_bytes
    if args.eviction is not None:
        cfg.eviction = args.eviction
    if args.partition_map:
        cfg.partitions, cfg.shard_index = partition_setup(args.partition_map, args.shard_index)
        cfg.peers = PeerURLs.from_env()
    web.run_app(create_app(cfg), host=args.host, port=args.port, access_log=None, print=None, shutdown_timeout=10,
                **SERVER_LIMITS)


if __name__ == "__main__":
    main()
