"""`chronoshard-cache`: the decryption cache in front of one shard node."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from chronoshard.shardnode.cache.server import CacheConfig, create_app
from chronoshard.shardnode.serving.scaffold import apply_shard_args, parse_process_args, run, shard_process_parser


def parser() -> argparse.ArgumentParser:
    """Command-line flags (docs/interfaces.md); each falls back to a CHRONOSHARD_CACHE_* variable."""
    p = shard_process_parser("chronoshard-cache", "chronoshard decryption cache", port=7401,
                             env_prefix="CHRONOSHARD_CACHE", settings_file="cache.json")
    node_url = os.environ.get("CHRONOSHARD_NODE_URL")
    p.add_argument("--node-url", default=node_url, required=not node_url, help="base URL of this shard's node")
    p.add_argument("--unwrap-latency-ms", type=float, default=0.0,
                   help="add this delay to every key unwrap, to model a KMS round trip (benchmarks only)")
    p.add_argument("--budget-bytes", type=int, default=None, help="override the byte budget")
    p.add_argument("--eviction", choices=["lru", "scored"], default=None, help="override the eviction policy")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    p = parser()
    args = parse_process_args(p, argv)
    if not 0 <= args.unwrap_latency_ms <= 60_000:
        p.error("--unwrap-latency-ms must be between 0 and 60000")
    cfg = CacheConfig(node_url=args.node_url, keyring_dir=Path(args.keyring_dir),
                      kek_dir=Path(args.kek_dir) if args.kek_dir else None,
                      unwrap_latency_s=args.unwrap_latency_ms / 1000.0)
    # A cache forwards a request for another shard's key to that shard's cache.
    apply_shard_args(cfg, args, forward=True)
    if args.budget_bytes is not None:
        cfg.budget_bytes = args.budget_bytes
    if args.eviction is not None:
        cfg.eviction = args.eviction
    run(create_app(cfg), args.host, args.port, security=args.security)


if __name__ == "__main__":
    main()
