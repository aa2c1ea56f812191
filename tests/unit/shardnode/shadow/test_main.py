"""`chronoshard-shadow`'s flags: the pod contract's spelling, fail-closed security, the bootstrap dispatch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from chronoshard.shardnode.serving.scaffold import parse_process_args
from chronoshard.shardnode.shadow.main import PORT, parser

BIN = Path(sys.executable).parent / "chronoshard-shadow"
BASE = ["--node-url", "https://10.0.0.5:7400", "--data-dir", "/var/lib/chronoshard", "--keyring-dir", "/k"]


def test_the_pod_contracts_flags_parse():
    args = parse_process_args(parser(), [*BASE, "--settings", "/etc/chronoshard/config/shadow.json", "--insecure",
                                         "--kek-dir", "/kek", "--partition-map", "/m.json", "--shard-index", "2"])
    assert args.config == "/etc/chronoshard/config/shadow.json" and args.port == PORT == 7403
    assert (args.node_url, args.data_dir, args.kek_dir, args.shard_index) == (
        "https://10.0.0.5:7400", "/var/lib/chronoshard", "/kek", 2)
    assert parse_process_args(parser(), [*BASE, "--config", "/c.json", "--insecure"]).config == "/c.json"


def test_no_security_flags_refuses_to_start():
    with pytest.raises(SystemExit) as exc:
        parse_process_args(parser(), BASE)
    assert exc.value.code == 2


def test_bootstrap_as_first_argument_runs_the_bootstrap():
    out = subprocess.run([str(BIN), "bootstrap", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--data-dir" in out.stdout and "bootstrap" in out.stdout
    # ... and the server's own flags are not the bootstrap's
    out = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--node-url" in out.stdout
