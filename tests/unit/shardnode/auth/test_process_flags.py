"""The shared security flags: a process with neither --tls-dir nor --security-config refuses to start unless
--insecure; --insecure contradicts --security-config; a broken security.json stops the process."""

from __future__ import annotations

import pytest
from chronoshard.shardnode.serving.scaffold import (
    ProcessSecurity,
    parse_process_args,
    process_parser,
    secure_from_flags,
)


def parse(*argv: str):
    return parse_process_args(process_parser("chronoshard-test", "t", port=1), list(argv))


def test_refuses_without_security_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        parse()
    assert exc.value.code == 2 and "--insecure" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--tls-dir", "/tls")  # TLS alone authenticates nobody


def test_insecure_contradicts_security_config():
    with pytest.raises(SystemExit):
        parse("--insecure", "--security-config", "/s.json")


def test_flags_give_the_process_security(tmp_path):
    args = parse("--tls-dir", "/tls", "--security-config", "/s.json")
    assert args.security.server == "test" and str(args.security.tls_dir) == "/tls" and not args.security.insecure
    assert parse("--insecure").security.insecure


def test_broken_security_config_stops_the_process(tmp_path):
    (tmp_path / "s.json").write_text('{"audience": 1}')
    with pytest.raises(SystemExit) as exc:
        secure_from_flags(None, ProcessSecurity("test", None, tmp_path / "s.json", False))  # type: ignore[arg-type]
    assert exc.value.code == 2
