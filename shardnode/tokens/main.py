"""`chronoshard-tokens`: the token service of one MirrorSet (docs/tokens.md) on --port (7405)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from chronoshard.shardnode.serving.http_common import setup_logging
from chronoshard.shardnode.serving.scaffold import process_parser, process_security, run

from .server import Settings, create_app

PORT = 7405


def parser() -> argparse.ArgumentParser:
    """Command-line flags (docs/tokens.md, "Process, flags and tokens-service.json")."""
    p = process_parser("chronoshard-tokens", "chronoshard token service (tiered access tokens of one MirrorSet)",
                       port=PORT, env_prefix="CHRONOSHARD_TOKENS")
    env = os.environ.get
    config = env("CHRONOSHARD_TOKENS_CONFIG")
    p.add_argument("--config", default=config, required=not config, help="tokens-service.json")
    signing = env("CHRONOSHARD_TOKENS_SIGNING_DIR")
    p.add_argument("--signing-dir", default=signing, required=not signing,
                   help="the mounted <mirrorset>-token-signing Secret (signing.pem, previous.pem)")
    data = env("CHRONOSHARD_TOKENS_DATA_DIR")
    p.add_argument("--data-dir", default=data, required=not data,
                   help="tokens.sqlite3, risk.sqlite3 and model.bin (the service's volume)")
    p.add_argument("--members-ca", default=env("CHRONOSHARD_TOKENS_MEMBERS_CA"),
                   help="PEM bundle of the member ShardSets' CAs: trusted for their nodes and caches (with --tls-dir)")
    return p


def members_ca_dir(members_ca: str | None, data_dir: Path) -> str | None:
    """The scaffold's TLS trusts the ``peers-ca.crt`` of a replication directory (and re-reads it when it changes):
    a directory on the volume whose ``peers-ca.crt`` links to the mounted bundle, so a ConfigMap update is seen."""
    if not members_ca:
        return None
    directory = data_dir / "members-ca"
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "peers-ca.crt"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(members_ca).absolute())
    return str(directory)


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    p = parser()
    args = p.parse_args(argv)
    # Read by the scaffold's process_security: the members' CAs are trusted as a shard trusts its peers'.
    args.replication_dir = members_ca_dir(args.members_ca, Path(args.data_dir))
    args.security = process_security(p, args)
    setup_logging(args.log_level)
    settings = Settings(config_path=Path(args.config), signing_dir=Path(args.signing_dir),
                        data_dir=Path(args.data_dir))
    run(create_app(settings), args.host, args.port, security=args.security, long_request_lines=False)


if __name__ == "__main__":
    main()
